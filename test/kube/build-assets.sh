#!/usr/bin/env bash
# Builds the kube-apiserver and etcd binaries the Kubernetes integration tests run, from the
# Go module proxy, into a cache outside the clone keyed by version, and reuses them when
# present. Prints the cache directory (use it as KUBE_TEST_ASSETS).
#
#   test/kube/build-assets.sh            # build if missing, print the directory
#
# k8s.io/kubernetes cannot be `go install`ed (its go.mod replaces the staging modules with
# local paths), so a throwaway module requires it and replaces each staging module with its
# published release. Building takes about 10 minutes on 2 cores the first time; the two
# binaries build side by side.
set -euo pipefail

KUBE_VERSION=${KUBE_VERSION:-v1.37.2}
STAGING_VERSION=${STAGING_VERSION:-v0.${KUBE_VERSION#v1.}}
ETCD_VERSION=${ETCD_VERSION:-v3.7.3}
CACHE=${KUBE_TEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/khook}/kube-${KUBE_VERSION}-etcd-${ETCD_VERSION}

if [ -x "$CACHE/kube-apiserver" ] && [ -x "$CACHE/etcd" ]; then
  echo "$CACHE"
  exit 0
fi
mkdir -p "$CACHE"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export GOFLAGS=-mod=mod

build_apiserver() {
  echo "building kube-apiserver $KUBE_VERSION into $CACHE (about 10 minutes)" >&2
  mkdir -p "$work/kube"
  cd "$work/kube"
  go mod init khook.test/kube-assets >/dev/null 2>&1
  go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" >/dev/null
  gomod=$(go env GOMODCACHE)/cache/download/k8s.io/kubernetes/@v/$KUBE_VERSION.mod
  {
    echo "require k8s.io/kubernetes $KUBE_VERSION"
    grep -E '^\s*k8s\.io/[a-z0-9-]+ => \./staging/' "$gomod" |
      awk -v v="$STAGING_VERSION" '{print "replace " $1 " => " $1 " " v}'
  } >>go.mod
  cat >main.go <<'GO'
package main

import _ "k8s.io/kubernetes/cmd/kube-apiserver/app"

func main() {}
GO
  go mod tidy >/dev/null
  minor=${KUBE_VERSION#v1.}; minor=${minor%%.*}
  ldflags="-X k8s.io/component-base/version.gitVersion=$KUBE_VERSION"
  ldflags+=" -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor"
  ldflags+=" -X k8s.io/component-base/version.gitTreeState=clean"
  ldflags+=" -X k8s.io/component-base/version.buildDate=1970-01-01T00:00:00Z"
  go build -trimpath -ldflags "$ldflags" -o "$CACHE/kube-apiserver.tmp" k8s.io/kubernetes/cmd/kube-apiserver
  mv "$CACHE/kube-apiserver.tmp" "$CACHE/kube-apiserver"
}

build_etcd() {
  echo "building etcd $ETCD_VERSION into $CACHE" >&2
  mkdir -p "$work/etcd"
  cd "$work/etcd"
  go mod init khook.test/etcd-assets >/dev/null 2>&1
  echo "require go.etcd.io/etcd/server/v3 $ETCD_VERSION" >>go.mod
  cat >main.go <<'GO'
package main

import _ "go.etcd.io/etcd/server/v3/etcdmain"

func main() {}
GO
  go mod tidy >/dev/null
  go build -trimpath -o "$CACHE/etcd.tmp" go.etcd.io/etcd/server/v3
  mv "$CACHE/etcd.tmp" "$CACHE/etcd"
}

# The two build side by side: each spends part of its time waiting on module downloads.
pids=()
if [ ! -x "$CACHE/kube-apiserver" ]; then
  build_apiserver &
  pids+=($!)
fi
if [ ! -x "$CACHE/etcd" ]; then
  build_etcd &
  pids+=($!)
fi
for pid in "${pids[@]}"; do
  wait "$pid"
done
echo "$CACHE"
