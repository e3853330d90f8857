#!/usr/bin/env bash
# Builds the Pico W firmwares (thumbv6m-none-eabi, release) and turns them into UF2 files in
# firmware/out/ (picolet.uf2, test-blink.uf2), then checks their RAM and flash budgets.
#
# Toolchain: see scripts/firmware-cargo.sh (rustup target, or Debian rustc-web with build-std).
#
# The picolet firmware needs firmware/config_local.toml (see config_local.toml.template) or
# PICOLET_FIRMWARE_CONFIG. `--ci-config` instead generates a throwaway configuration with
# openssl-made credentials, only to prove the build: that UF2 joins no network.
set -euo pipefail
cd "$(dirname "$0")/../firmware"
bins=(test-blink picolet picolet-serial)
if [[ ${1:-} == --ci-config ]]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  mkdir -p "$tmp/creds"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
    -subj /CN=throwaway-ca -keyout "$tmp/creds/ca.key" -out "$tmp/creds/ca.crt" 2>/dev/null
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
    -subj "/O=system:nodes/CN=system:node:pico-node-1" -keyout "$tmp/creds/client.key" -out "$tmp/creds/client.crt" 2>/dev/null
  printf 'node_name = "pico-node-1"\nserver = "https://192.0.2.1:6443"\ntls_server_name = "kubernetes"\n' > "$tmp/creds/node.toml"
  printf 'wifi_ssid = "throwaway"\nwifi_password = "throwaway-password"\napi_server = "192.0.2.1:6443"\ncredentials = "%s"\n' "$tmp/creds" > "$tmp/config.toml"
  export PICOLET_FIRMWARE_CONFIG=$tmp/config.toml
fi
args=(build --release)
for b in "${bins[@]}"; do args+=(--bin "$b"); done
log=$(mktemp)
../scripts/firmware-cargo.sh "${args[@]}" 2>&1 | tee "$log"
# Warnings fail the build here (RUSTFLAGS=-Dwarnings would replace the linker flags).
if grep -q '^warning' "$log"; then rm -f "$log"; echo "firmware: compiler warnings (see above)" >&2; exit 1; fi
rm -f "$log"
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
