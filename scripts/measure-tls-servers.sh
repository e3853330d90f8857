#!/usr/bin/env bash
# Measures the TLS server candidates for the Pico's kubelet port (README, "TLS on the device's
# kubelet port"): mbedtls 2.28 (Debian's source, built with arm-none-eabi-gcc for the
# Cortex-M0+ with the smallest configuration that serves the port) for flash and static RAM,
# and the same code on the host, serving a real openssl client with a client certificate,
# for the heap the handshake needs. picolet's own server is measured by scripts/firmware.sh.
# Not part of the test suite; needs gcc-arm-none-eabi, libnewlib-arm-none-eabi, openssl and a
# deb-src line (scripts/control-plane/build.sh adds one).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
eval_dir=$here/tools/tls-server-eval
work=${PICOLET_CACHE:-$HOME/.cache/picolet}/tls-eval
mkdir -p "$work"
cd "$work"
if [[ ! -d mbedtls ]]; then
  apt-get source --download-only mbedtls >/dev/null
  tar xzf mbedtls_*.orig.tar.gz && mv Mbed-TLS-mbedtls-* mbedtls
fi
M=$work/mbedtls
flags=(-Os -ffunction-sections -fdata-sections "-DMBEDTLS_CONFIG_FILE=\"mbedtls_config.h\"" -I"$eval_dir" -I"$M/include")
arm=(arm-none-eabi-gcc -mcpu=cortex-m0plus -mthumb --specs=nano.specs --specs=nosys.specs -Wl,--gc-sections)

size_of() { arm-none-eabi-size -A "$1" | awk '$1==".text"||$1==".rodata"||$1==".init"||$1==".fini"||$1==".data"{f+=$2} $1==".data"||$1==".bss"{r+=$2} END {print f, r}'; }
echo 'int main(void){return 0;}' > empty.c
"${arm[@]}" -Os empty.c -o empty.elf
read -r base_flash base_ram < <(size_of empty.elf)
for in_len in 16384 4096; do
  "${arm[@]}" "${flags[@]}" -DPICOLET_IN_CONTENT_LEN=$in_len -DPICOLET_HEAP_BYTES=0 "$M"/library/*.c \
    "$eval_dir/server.c" "$eval_dir/target_main.c" -o mbed-$in_len.elf 2>/dev/null
  read -r flash ram < <(size_of mbed-$in_len.elf)
  echo "mbedtls-2.28 thumbv6m flash_bytes $((flash - base_flash)) static_ram_bytes $((ram - base_ram)) (in_content_len $in_len, heap arena not included)"
done

# Heap: one real handshake with a client certificate, on the host.
openssl ecparam -name prime256v1 -genkey -noout -out ca.key 2>/dev/null
openssl req -x509 -new -key ca.key -subj /CN=eval-ca -days 2 -out ca.pem 2>/dev/null
for who in server client; do
  openssl ecparam -name prime256v1 -genkey -noout -out $who.key 2>/dev/null
  openssl req -new -key $who.key -subj "/CN=$who/O=eval" -out $who.csr 2>/dev/null
  openssl x509 -req -in $who.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 -out $who.pem 2>/dev/null
done
openssl x509 -in ca.pem -outform DER -out ca.der
openssl x509 -in server.pem -outform DER -out server.der
openssl ec -in server.key -outform DER -out server.key.der 2>/dev/null
for in_len in 16384 4096; do
  gcc "${flags[@]}" -DPICOLET_MEASURE_HEAP -DPICOLET_IN_CONTENT_LEN=$in_len -DPICOLET_HEAP_BYTES=65536 \
    "$M"/library/*.c "$eval_dir/server.c" "$eval_dir/host_main.c" -o mbed-host-$in_len 2>/dev/null
  port=$((20000 + RANDOM % 20000))
  ./mbed-host-$in_len $port ca.der server.der server.key.der > host-$in_len.out &
  pid=$!
  for _ in $(seq 50); do grep -q listening host-$in_len.out 2>/dev/null && break; sleep 0.1; done
  printf 'GET /healthz HTTP/1.1\r\n\r\n' | timeout 10 openssl s_client -quiet -connect 127.0.0.1:$port \
    -CAfile ca.pem -cert client.pem -key client.key -tls1_2 >/dev/null 2>&1 || true
  wait $pid || true
  peak=$(awk '/heap_peak/ {print $4}' host-$in_len.out)
  result=$(awk '/heap_peak/ {print $2}' host-$in_len.out)
  echo "mbedtls-2.28 x86_64 handshake_result $result heap_peak_bytes $peak (in_content_len $in_len; 64-bit pointers, so an upper bound for the RP2040)"
done

# picolet's own server: the firmware with the TLS kubelet port against the same firmware built
# with `kubelet-plain-http` (no TLS server, no serving certificate, no authorization).
cd "$here"
budget() {
  PICOLET_FIRMWARE_CONFIG=none scripts/firmware-cargo.sh build --release --bin picolet-serial "$@" >/dev/null 2>&1
  cargo run -q --release -p firmware-budget -- firmware/target/thumbv6m-none-eabi/release/picolet-serial \
    | awk '/flash/ {f=$2} /static RAM/ {r=$3} END {print f, r}'
}
read -r tls_flash tls_ram < <(budget)
read -r plain_flash plain_ram < <(budget --features kubelet-plain-http)
awk -v a="$tls_flash" -v b="$plain_flash" -v c="$tls_ram" -v d="$plain_ram" 'BEGIN {
  printf "picolet tls_server thumbv6m flash_kib +%.1f static_ram_kib +%.1f (picolet-serial with the TLS kubelet port vs kubelet-plain-http; record buffers 4+2 KiB, certificate copies and handshake state included; no heap)\n", a-b, c-d }'
