#!/usr/bin/env bash
# Builds the Docker CLI plugins the engine tests use, Compose v2 (`docker compose`) and
# buildx (`docker build` with BuildKit), from the Go module proxy into a cache outside the
# clone keyed by version, and reuses them when present. Prints the directory that holds
# them; the tests point a private DOCKER_CONFIG's cli-plugins at it.
#
#   test/docker/build-plugins.sh     # build if missing (about 4 minutes), print the directory
#
# Debian's docker.io ships neither plugin (only the Python docker-compose v1), and no
# registry is reachable to download them. The versions are those known to build here.
set -euo pipefail

COMPOSE_VERSION=${COMPOSE_VERSION:-v2.40.3}
BUILDX_VERSION=${BUILDX_VERSION:-v0.29.1}
CACHE=${KUBE_TEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/khook}/docker-plugins-compose-${COMPOSE_VERSION}-buildx-${BUILDX_VERSION}

if [ -x "$CACHE/docker-compose" ] && [ -x "$CACHE/docker-buildx" ]; then
  echo "$CACHE"
  exit 0
fi
mkdir -p "$CACHE"
work=$(mktemp -d)
trap 'chmod -R u+w "$work"; rm -rf "$work"' EXIT

# build MODULE VERSION PACKAGE OUTPUT LDFLAGS: builds inside the module's own tree, so that
# its go.mod (replace directives included) decides every dependency, as its release does.
build() {
  local module=$1 version=$2 pkg=$3 out=$4 ldflags=$5 dir
  echo "building $module@$version into $CACHE" >&2
  dir=$(go mod download -json "$module@$version" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  cp -r "$dir" "$work/src-$out"
  chmod -R u+w "$work/src-$out"
  (cd "$work/src-$out" && CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath -ldflags "-s -w $ldflags" -o "$CACHE/.$out" "$pkg")
  mv "$CACHE/.$out" "$CACHE/$out"
}

if [ ! -x "$CACHE/docker-compose" ]; then
  build github.com/docker/compose/v2 "$COMPOSE_VERSION" ./cmd docker-compose \
    "-X github.com/docker/compose/v2/internal.Version=$COMPOSE_VERSION"
fi
if [ ! -x "$CACHE/docker-buildx" ]; then
  build github.com/docker/buildx "$BUILDX_VERSION" ./cmd/buildx docker-buildx \
    "-X github.com/docker/buildx/version.Version=$BUILDX_VERSION -X github.com/docker/buildx/version.Package=github.com/docker/buildx"
fi
echo "$CACHE"
