#!/usr/bin/env bash
# Builds kube-apiserver, kube-controller-manager and kubectl of a current Kubernetes release
# from the Go module proxy into $PICOLET_CACHE/k8s/$K8S_VERSION/bin (default
# ~/.cache/picolet/k8s/v1.37.2/bin), reused when present. This is the release the tests, the
# demo and the benchmarks use (testplane's DEFAULT_RELEASE, which a test keeps equal to the
# default here); `--bin-dir` prints the directory and builds nothing.
#
# k8s.io/kubernetes is not meant to be required as a module: its go.mod points every staging
# module (k8s.io/api, apimachinery, apiserver, client-go, …) at ./staging/src. A wrapper module
# requires it and replaces each staging module by its published v0.X.Y. The module carries its
# generated code (openapi, zz_generated), so no code generation runs, unlike the v1.20 tree.
# Needs Go >= the release's `go` line (1.26.0 for v1.37.2) and jq.
set -euo pipefail
K8S_VERSION=${K8S_VERSION:-v1.37.2}
CACHE=${PICOLET_CACHE:-$HOME/.cache/picolet}
OUT=$CACHE/k8s/$K8S_VERSION/bin
WRAP=$CACHE/k8s/$K8S_VERSION/wrap
if [[ ${1:-} == --bin-dir ]]; then echo "$OUT"; exit 0; fi
GO=${GO:-$(command -v go || echo /usr/local/go/bin/go)}
[[ -x $GO ]] || { echo "control plane $K8S_VERSION: needs Go 1.26 (not found; set GO=)" >&2; exit 1; }
export GOFLAGS="-mod=mod -buildvcs=false" CGO_ENABLED=0
bins=(kube-apiserver kube-controller-manager kubectl)
version_of() {  # kubectl has no --version
  if [[ $1 == kubectl ]]; then "$OUT/kubectl" version --client 2>/dev/null | head -1
  else "$OUT/$1" --version 2>/dev/null; fi
}

cached=1
for b in "${bins[@]}"; do
  [[ -x $OUT/$b ]] && version_of "$b" | grep -q "$K8S_VERSION" || cached=0
done
if ((cached)); then echo "control plane $K8S_VERSION: cached in $OUT"; exit 0; fi

started=$SECONDS
gomod=$("$GO" list -m -json "k8s.io/kubernetes@$K8S_VERSION" | jq -r .GoMod)
need_go=$(awk '$1 == "go" { print $2; exit }' "$gomod")
staging=v0.${K8S_VERSION#v1.}
mkdir -p "$WRAP" "$OUT"
cd "$WRAP"
rm -f go.mod go.sum
"$GO" mod init picolet.local/control-plane >/dev/null 2>&1
"$GO" mod edit -go="$need_go" -require="k8s.io/kubernetes@$K8S_VERSION"
grep -E '^godebug ' "$gomod" | while read -r _ kv; do "$GO" mod edit -godebug="$kv"; done
"$GO" mod edit -json "$gomod" \
  | jq -r '.Replace[] | select(.New.Path | startswith("./staging/")) | .Old.Path' \
  | while read -r m; do "$GO" mod edit -replace="$m=$m@$staging"; done
{
  printf '//go:build tools\n\npackage tools\n\nimport (\n'
  for b in "${bins[@]}"; do printf '\t_ "k8s.io/kubernetes/cmd/%s"\n' "$b"; done
  printf ')\n'
} > tools.go
"$GO" mod tidy
echo "control plane $K8S_VERSION: modules resolved in $((SECONDS - started)) s"

# The version variables upstream's hack/lib/version.sh sets (the API server parses its own).
minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
ld=
for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
  ld+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
  ld+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
done
built=$SECONDS
pkgs=(); for b in "${bins[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$b"); done
"$GO" build -trimpath -tags selinux,notest,grpcnotrace -ldflags "all=$ld -s -w" -o "$OUT/" "${pkgs[@]}"
for b in "${bins[@]}"; do echo "$b: $(version_of "$b")"; done
echo "control plane $K8S_VERSION: built into $OUT in $((SECONDS - built)) s (total $((SECONDS - started)) s)"
