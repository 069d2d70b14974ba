#!/usr/bin/env bash
# Builds the helm binary the chart tests and `make helm-lint` use, from the Go module proxy,
# into a cache outside the clone keyed by version, and reuses it when present. Prints the
# binary's path.
#
#   test/helm/build-helm.sh      # build if missing (about 2 minutes), print the path
#
# The ldflags are those of helm's own Makefile: without them helm believes the cluster is
# Kubernetes 1.20 when templating and reports version "v3.x-unreleased".
set -euo pipefail

HELM_VERSION=${HELM_VERSION:-v3.22.0}
# helm v3.22 is built against the v0.37 Kubernetes modules, i.e. Kubernetes 1.37.
HELM_K8S_MINOR=${HELM_K8S_MINOR:-37}
CACHE=${KUBE_TEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/khook}/helm-${HELM_VERSION}

if [ -x "$CACHE/helm" ] && [ -f "$CACHE/.ldflags-1" ]; then
  echo "$CACHE/helm"
  exit 0
fi
echo "building helm $HELM_VERSION into $CACHE" >&2
mkdir -p "$CACHE"
ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
for pkg in pkg/chartutil pkg/lint/rules; do
  ldflags+=" -X helm.sh/helm/v3/$pkg.k8sVersionMajor=1 -X helm.sh/helm/v3/$pkg.k8sVersionMinor=$HELM_K8S_MINOR"
done
GOFLAGS=-mod=mod GOBIN="$CACHE/.bin" go install -trimpath -ldflags "$ldflags" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
mv "$CACHE/.bin/helm" "$CACHE/helm"
rmdir "$CACHE/.bin"
touch "$CACHE/.ldflags-1"
echo "$CACHE/helm"
