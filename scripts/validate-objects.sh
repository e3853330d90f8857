#!/usr/bin/env bash
# Checks every kind of object picolet sends against the strict JSON schemas of Kubernetes
# 1.25 to 1.37 (PyPI kubernetes-validate, offline). The v1.20 test server drops unknown fields
# silently, so this is where a wrong field name is caught.
set -euo pipefail
cd "$(dirname "$0")/.."
validate=${PICOLET_CACHE:-$HOME/.cache/picolet}/venv/bin/kubernetes-validate
[[ -x $validate ]] || { echo "run scripts/install-deps.sh first" >&2; exit 1; }
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
cargo run -q -p picolet-core --example emit_objects -- "$out"
for v in 1.25.0 1.28.0 1.31.0 1.34.0 1.37.0; do
  "$validate" --strict --quiet -k "$v" "$out"/*.json
  echo "objects valid for Kubernetes $v (strict)"
done
