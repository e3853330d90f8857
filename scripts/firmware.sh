#!/usr/bin/env bash
# Builds the Pico W firmwares (thumbv6m-none-eabi, release) and turns them into UF2 files in
# firmware/out/: test-blink.uf2 now, picolet.uf2 once the agent firmware lands.
#
# Toolchain: with `rustup target add thumbv6m-none-eabi` (the normal way on a user machine) a
# plain cargo build is used. Without it (no rustup target can be downloaded on some machines),
# Debian's rustc-web + rust-web-src build core with `-Z build-std` (RUSTC_BOOTSTRAP=1 must be in
# cargo's own environment).
set -euo pipefail
cd "$(dirname "$0")/../firmware"
bins=(test-blink)
args=(build --release)
for b in "${bins[@]}"; do args+=(--bin "$b"); done
if rustup target list --installed 2>/dev/null | grep -qx thumbv6m-none-eabi; then
  cargo "${args[@]}"
else
  [[ -x /usr/bin/rustc ]] || { echo "need 'rustup target add thumbv6m-none-eabi', or Debian's rustc-web + rust-web-src + rust-web-llvm + lld-22 (scripts/install-deps.sh)" >&2; exit 1; }
  RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1 cargo "${args[@]}" -Z build-std=core,alloc
fi
if ! command -v elf2uf2-rs >/dev/null; then
  cargo install --locked --no-default-features elf2uf2-rs@2.2.0
fi
mkdir -p out
for b in "${bins[@]}"; do
  elf=target/thumbv6m-none-eabi/release/$b
  cp "$elf" "out/$b.elf"
  elf2uf2-rs "out/$b.elf" "out/$b.uf2" >/dev/null
  echo "firmware/out/$b.uf2 ($(stat -c %s "out/$b.uf2") bytes)"
done
cd ..
elfs=(); for b in "${bins[@]}"; do elfs+=("firmware/out/$b.elf"); done
cargo run -q --release -p firmware-budget -- "${elfs[@]}"
