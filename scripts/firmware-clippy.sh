#!/usr/bin/env bash
# clippy -D warnings on the firmware workspace (all binaries, thumbv6m). With the rustup target
# this is plain `cargo clippy`; on Debian's rustc-web it is that toolchain's own clippy-driver
# (package rust-web-clippy) as cargo's workspace wrapper, core built from source as for builds.
set -euo pipefail
cd "$(dirname "$0")/../firmware"
export PICOLET_FIRMWARE_CONFIG=${PICOLET_FIRMWARE_CONFIG:-none}
if rustup target list --installed 2>/dev/null | grep -qx thumbv6m-none-eabi; then
  exec cargo clippy --release --bins -- -D warnings
fi
[[ -x /usr/bin/clippy-driver ]] || { echo "need rust-web-clippy (scripts/install-deps.sh)" >&2; exit 1; }
CLIPPY_ARGS="-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__" \
  RUSTC_WORKSPACE_WRAPPER=/usr/bin/clippy-driver RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1 \
  exec cargo check --release --bins -Z build-std=core,alloc
