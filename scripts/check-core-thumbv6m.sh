#!/usr/bin/env bash
# Builds picolet-core for the RP2040 (thumbv6m-none-eabi, no heap, no std), proving the core
# stays portable. Uses rustup's target when installed, otherwise Debian's rustc-web + rust-web-src
# with build-std (no rustup target can be downloaded on some machines).
set -euo pipefail
cd "$(dirname "$0")/.."
target_dir=${CARGO_TARGET_DIR:-target}/thumbv6m
if rustup target list --installed 2>/dev/null | grep -qx thumbv6m-none-eabi; then
  cargo build --release -p picolet-core --target thumbv6m-none-eabi --target-dir "$target_dir"
else
  [[ -x /usr/bin/rustc ]] || { echo "need Debian rustc-web + rust-web-src (apt-get install rustc-web rust-web-src) or 'rustup target add thumbv6m-none-eabi'" >&2; exit 1; }
  RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1 cargo build --release -p picolet-core \
    --target thumbv6m-none-eabi -Z build-std=core --target-dir "$target_dir"
fi
echo "picolet-core builds for thumbv6m-none-eabi"
