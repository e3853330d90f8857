#!/usr/bin/env bash
# The main job on an embedded default: starts a throwaway local control plane (real
# kube-apiserver + kube-controller-manager), enrols and runs a virtual Pico, shows it Ready in
# `kubectl get nodes`, and shows a ConfigMap reaching its 1 KB memory region.
# PICOLET_DEMO_KEEP=1 keeps everything running until Ctrl-C; PICOLET_KUBELET_PORT picks the port.
# Everything runs in a network namespace of its own (scripts/in-netns.sh), where the virtual
# Pico has a non-loopback address the API server agrees to proxy to; the machine's network is
# not touched.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ ${PICOLET_IN_NETNS:-} != 1 ]]; then
  scripts/install-deps.sh
  scripts/control-plane/build-current.sh
  cargo build --release -q -p picolet -p testplane
  exec scripts/in-netns.sh "$0" "$@"
fi

state=$PWD/.picolet/demo
rm -rf "$state" && mkdir -p "$state"
port=${PICOLET_KUBELET_PORT:-10250}
KUBECTL=$(scripts/control-plane/build-current.sh --bin-dir)/kubectl
node_ip=$PICOLET_NETNS_IP
export KUBECONFIG=$state/plane/admin.kubeconfig
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
say() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }

target/release/testplane up --state-dir "$state/plane" > "$state/plane.log" 2>&1 &
pids+=($!)
for _ in $(seq 120); do [[ -f $state/plane/ready ]] && break; sleep 0.5; done
[[ -f $state/plane/ready ]] || { cat "$state/plane.log"; exit 1; }
echo "control plane: $(cat "$state/plane/ready")  (KUBECONFIG=$KUBECONFIG)"

say picolet enrol --node-name pico-node-1
target/release/picolet enrol --node-name pico-node-1 --out "$state/credentials/pico-node-1"

say picolet run --credentials .picolet/demo/credentials/pico-node-1 --node-ip "$node_ip" --kubelet-port "$port" "&"
target/release/picolet run --credentials "$state/credentials/pico-node-1" --node-ip "$node_ip" \
  --kubelet-port "$port" > "$state/agent.log" 2>&1 &
pids+=($!)
"$KUBECTL" wait --for=condition=Ready node/pico-node-1 --timeout=60s >/dev/null

say picolet approve --node-name pico-node-1 "  # the node's kubelet-serving CSR"
target/release/picolet approve --node-name pico-node-1 --wait 30
say kubectl get csr
"$KUBECTL" get csr

say kubectl get nodes -o wide
"$KUBECTL" get nodes -o wide
say "kubectl get nodes pico-node-1 -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].status}'"
"$KUBECTL" get nodes pico-node-1 -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}'; echo

say kubectl create configmap pico-config --from-literal=memory_values="0=0x42,1=0x43,2=0xFF"
"$KUBECTL" create configmap pico-config --from-literal=memory_values="0=0x42,1=0x43,2=0xFF"
for _ in $(seq 50); do
  "$KUBECTL" get --raw /api/v1/nodes/pico-node-1/proxy/memory | grep -q '^0000: 42 43 ff' && break
  sleep 0.2
done
say kubectl get --raw /api/v1/nodes/pico-node-1/proxy/memory "| head -3"
"$KUBECTL" get --raw /api/v1/nodes/pico-node-1/proxy/memory | head -3

say kubectl patch configmap pico-config --type merge -p "'{\"data\":{\"memory_values\":\"0=0xAA,1=0xBB,10=0xCC\"}}'"
"$KUBECTL" patch configmap pico-config --type merge -p '{"data":{"memory_values":"0=0xAA,1=0xBB,10=0xCC"}}'
sleep 1
"$KUBECTL" get --raw /api/v1/nodes/pico-node-1/proxy/memory | head -2

say kubectl get events
"$KUBECTL" get events
say "kubectl get node pico-node-1 -o jsonpath='{.metadata.annotations}'"
"$KUBECTL" get node pico-node-1 -o jsonpath='{.metadata.annotations}'; echo

if [[ ${PICOLET_DEMO_KEEP:-0} == 1 ]]; then
  enter=(nsenter --target $$ --net)
  [[ $(id -u) == 0 ]] || enter=(nsenter --target $$ --user --net --preserve-credentials)
  echo; echo "Running in its own network namespace. From another terminal, try:"
  echo "  ${enter[*]} env KUBECONFIG=$KUBECONFIG $KUBECTL describe node pico-node-1"
  echo "(Ctrl-C stops everything)"
  wait
fi
