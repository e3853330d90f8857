#!/usr/bin/env bash
# Builds kube-apiserver and kube-controller-manager v1.20.2 from Debian's own `kubernetes`
# source package (no registry ships these binaries), and fetches kubectl 1.20.2 from Debian's
# `kubernetes-client` without installing it. The binaries land in $PICOLET_CACHE/k8s/v1.20.2/bin
# (default ~/.cache/picolet/...) and are reused when present: the build takes ~5 min on 2 cores.
# v1.20.2 is the oldest release picolet supports; the tests use it with
# PICOLET_K8S_BIN=that directory (the default is build-current.sh's release).
set -euo pipefail
CACHE=${PICOLET_CACHE:-$HOME/.cache/picolet}
OUT=$CACHE/k8s/v1.20.2/bin
SRC_VERSION=1.20.5+really1.20.2-1.1+deb12u1
mkdir -p "$OUT"

if [[ -x $OUT/kube-apiserver && -x $OUT/kube-controller-manager && -x $OUT/kubectl ]]; then
  echo "control plane: cached in $OUT"
  exit 0
fi

export DEBIAN_FRONTEND=noninteractive
if ! grep -rqs '^Types: deb-src' /etc/apt/sources.list.d/ && ! grep -qs '^deb-src' /etc/apt/sources.list; then
  cat > /etc/apt/sources.list.d/picolet-deb-src.sources <<SRC
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  apt-get update -qq
fi

work=$CACHE/k8s/work
mkdir -p "$work"

if [[ ! -x $OUT/kubectl ]]; then
  (cd "$work" && rm -f kubernetes-client_*.deb && apt-get download -qq kubernetes-client \
    && rm -rf kc && dpkg-deb -x kubernetes-client_*.deb kc && cp kc/usr/bin/kubectl "$OUT/kubectl")
fi

if [[ -x $OUT/kube-apiserver && -x $OUT/kube-controller-manager ]]; then exit 0; fi

cd "$work"
if [[ ! -d src ]]; then
  apt-get source -qq --download-only "kubernetes=$SRC_VERSION"
  orig=$(ls kubernetes_*.orig.tar.* | head -n1)
  rm -rf src.tmp && mkdir src.tmp && tar -xf "$orig" -C src.tmp --strip-components=1
  mv src.tmp src
fi
cd src
# The vendored reflect2 v1.0.1 segfaults under Go >= 1.18 on the first map encode; Debian's
# 1.0.2 copy does not.
if [[ ! -f .picolet-reflect2-fixed ]]; then
  rm -rf vendor/github.com/modern-go/reflect2
  cp -r /usr/share/gocode/src/github.com/modern-go/reflect2 vendor/github.com/modern-go/reflect2
  rm -f vendor/github.com/modern-go/reflect2/go.mod
  touch .picolet-reflect2-fixed
fi
env -u GOPATH -u GO111MODULE -u GOCACHE \
  PATH="/usr/lib/go-1.19/bin:$PATH" GOPROXY=off GOFLAGS= \
  KUBE_GIT_VERSION=v1.20.2 KUBE_GIT_TREE_STATE=clean \
  KUBE_GIT_COMMIT=faecb196815e248d3ecfb03c680a4507229c2a56 \
  make WHAT="cmd/kube-apiserver cmd/kube-controller-manager"
cp _output/bin/kube-apiserver _output/bin/kube-controller-manager "$OUT/"
echo "control plane: built into $OUT"
