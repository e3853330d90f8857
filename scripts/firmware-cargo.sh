#!/usr/bin/env bash
# Runs cargo for the firmware workspace with whichever thumbv6m toolchain this machine has:
# rustup's target (`rustup target add thumbv6m-none-eabi`), or else Debian's rustc-web +
# rust-web-src building core from source (-Z build-std; RUSTC_BOOTSTRAP=1 must be in cargo's
# own environment). Usage: scripts/firmware-cargo.sh build --release --bin picolet
set -euo pipefail
cd "$(dirname "$0")/../firmware"
if rustup target list --installed 2>/dev/null | grep -qx thumbv6m-none-eabi; then
  exec cargo "$@"
fi
[[ -x /usr/bin/rustc ]] || { echo "need 'rustup target add thumbv6m-none-eabi', or Debian's rustc-web + rust-web-src + rust-web-llvm + lld-22 (scripts/install-deps.sh)" >&2; exit 1; }
RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1 exec cargo "$@" -Z build-std=core,alloc
