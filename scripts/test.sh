#!/usr/bin/env bash
# Runs every test picolet has, on a fresh Debian machine: installs what is missing, builds the
# real control planes (cached), then formatting, lints, the thumbv6m build of the core, the
# strict schema check of every object sent, unit tests, and the end-to-end suite against the
# real kube-apiserver + kube-controller-manager of the current release, then the node's own
# end-to-end tests again on the oldest supported release (v1.20.2). The tests run in a network
# namespace of their own (scripts/in-netns.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
# Each step's wall time is printed when the next begins (and at the end), for CI's budget.
started=$SECONDS; last=$SECONDS; current=
step() {
  [[ -n $current ]] && printf '==> %s took %d s\n' "$current" $((SECONDS - last))
  current=$*; last=$SECONDS
  printf '\n==> %s\n' "$*"
}
finish() { [[ -n $current ]] && printf '==> %s took %d s (total %d s)\n' "$current" $((SECONDS - last)) $((SECONDS - started)); }

step "dependencies"
scripts/install-deps.sh
scripts/control-plane/build-current.sh
scripts/control-plane/build.sh

step "format and lints"
cargo fmt --all --check
cargo clippy --workspace --all-targets -q -- -D warnings

step "picolet-core for thumbv6m-none-eabi"
scripts/check-core-thumbv6m.sh

step "firmware: format, clippy, thumbv6m build, UF2, RAM and flash budgets"
cargo fmt --manifest-path firmware/Cargo.toml --check
scripts/firmware-clippy.sh
scripts/firmware.sh --ci-config
# The explicit plain-HTTP kubelet port still builds.
PICOLET_FIRMWARE_CONFIG=none scripts/firmware-cargo.sh build --release --bin picolet-serial \
  --features kubelet-plain-http
# Without a configuration the agent firmware must not build, and must say why.
if out=$(PICOLET_FIRMWARE_CONFIG=/nonexistent/config.toml \
    scripts/firmware-cargo.sh build --release --bin picolet 2>&1); then
  echo "the picolet firmware built without a configuration" >&2; exit 1
fi
grep -q "copy config_local.toml.template to config_local.toml" <<<"$out" \
  || { echo "missing configuration did not give the expected error:" >&2; echo "$out" | tail -5 >&2; exit 1; }
echo "missing firmware configuration: clear build error, as expected"

step "objects against strict Kubernetes schemas"
scripts/validate-objects.sh

step "build the tests (outside the namespace, where the registries are)"
tests=(--workspace --lib --bins --tests --examples)
cargo test "${tests[@]}" --no-run -q

log=$(mktemp)
trap 'rm -f "$log"' EXIT
threads=${PICOLET_TEST_THREADS:-3}
set +e
step "unit, host and end-to-end tests on $(scripts/control-plane/build-current.sh --bin-dir | grep -oE 'v1\.[0-9.]+') (e2e: real control plane per test)"
scripts/in-netns.sh cargo test "${tests[@]}" --no-fail-fast -- --include-ignored --test-threads "$threads" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
step "the node's end-to-end tests on the oldest supported release, v1.20.2"
v120=${PICOLET_CACHE:-$HOME/.cache/picolet}/k8s/v1.20.2/bin
PICOLET_K8S_BIN=$v120 scripts/in-netns.sh cargo test -p picolet --test e2e --no-fail-fast -- --include-ignored \
  --test-threads "$threads" 2>&1 | tee -a "$log"
oldest=${PIPESTATUS[0]}
((status != 0)) || status=$oldest
set -e
passed=$(grep -oE '^test result: .* ([0-9]+) passed' "$log" | grep -oE '[0-9]+ passed' | awk '{s+=$1} END {print s+0}')
failed=$(grep -oE '[0-9]+ failed;' "$log" | awk '{s+=$1} END {print s+0}')
finish
echo
echo "picolet: $passed passed, $failed failed"
exit "$status"
