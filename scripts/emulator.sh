#!/usr/bin/env bash
# Runs the real picolet-serial firmware in the RP2040 emulator (rp2040js) against a throwaway
# control plane, checks it end to end, and prints the figures the README quotes: TLS handshake
# time, busy cycles per heartbeat, ConfigMap-to-memory latency, stack high-water mark, peak RAM.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/control-plane/build-current.sh
cargo test -q -p picolet --test emulator_e2e -- --include-ignored --nocapture 2>&1 \
  | grep -v 'has been running for over'
