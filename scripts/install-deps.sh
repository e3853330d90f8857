#!/usr/bin/env bash
# Installs every Debian package the host tests and the control plane need. Idempotent.
# Used by .ci/run and by a newcomer on a fresh Debian (bookworm) machine.
set -euo pipefail
need=(etcd-server golang-1.19-go rsync jq golang-github-modern-go-reflect2-dev dpkg-dev
      openssl curl ca-certificates python3 python3-pip)
missing=()
for p in "${need[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
