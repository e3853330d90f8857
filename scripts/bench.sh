#!/usr/bin/env bash
# Prints picolet's figures against a real control plane on 127.0.0.1 (three virtual Picos):
# API requests and bytes per node per minute, ConfigMap-to-memory latency with watch and with
# polling, and host agent RSS and CPU per node. Takes about 17 minutes (a 10-minute steady window). Extra arguments go to
# the bench binary (see `target/release/bench --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/control-plane/build-current.sh
cargo build --release -q -p picolet -p testplane
exec target/release/bench --picolet target/release/picolet "$@"
