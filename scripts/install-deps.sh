#!/usr/bin/env bash
# Installs every Debian package picolet's tests, demo and thumbv6m build need, the Python
# schema checker in a virtualenv under the cache, and the RP2040 emulator's npm packages
# (emulator/package-lock.json). Idempotent; uses sudo when not root.
set -euo pipefail
SUDO=; [[ $(id -u) == 0 ]] || SUDO=sudo
need=(etcd-server golang-1.19-go rsync jq golang-github-modern-go-reflect2-dev dpkg-dev iproute2
      openssl curl ca-certificates python3 python3-venv
      rustc-web rust-web-src rust-web-llvm rust-web-clippy lld-22)
missing=()
for p in "${need[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
CACHE=${PICOLET_CACHE:-$HOME/.cache/picolet}
if [[ ! -x $CACHE/venv/bin/kubernetes-validate ]]; then
  python3 -m venv "$CACHE/venv"
  "$CACHE/venv/bin/pip" install -q kubernetes-validate==1.37.0
fi
# Node.js for the RP2040 emulator: Debian's, unless a Node.js with npm is already installed.
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "installing: nodejs npm"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi
emulator=$(dirname "$0")/../emulator
if [[ ! -f $emulator/node_modules/rp2040js/package.json ]] \
    || [[ $emulator/package-lock.json -nt $emulator/node_modules/.package-lock.json ]]; then
  npm ci --prefix "$emulator" --no-audit --no-fund --silent
fi
