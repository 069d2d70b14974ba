#!/usr/bin/env bash
# Builds the Docker CLI plugin the engine tests use, Compose v2 (`docker compose`), from the
# Go module proxy into a cache outside the clone keyed by version, and reuses it when
# present. Prints the directory that holds it; the tests point a private DOCKER_CONFIG's
# cli-plugins at it.
#
#   test/docker/build-plugins.sh     # build if missing (about 3 minutes), print the directory
#
# Debian's docker.io does not ship it (only the Python docker-compose v1), and no registry
# is reachable to download it. The version is one known to build here. The buildx plugin is
# not needed: the Dockerfile test uses the engine's built-in BuildKit (DOCKER_BUILDKIT=1),
# and Compose builds with its own copy of buildx's builder when the plugin is absent.
set -euo pipefail

COMPOSE_VERSION=${COMPOSE_VERSION:-v2.40.3}
CACHE=${KUBE_TEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/khook}/docker-plugins-compose-${COMPOSE_VERSION}

if [ -x "$CACHE/docker-compose" ]; then
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

build github.com/docker/compose/v2 "$COMPOSE_VERSION" ./cmd docker-compose \
  "-X github.com/docker/compose/v2/internal.Version=$COMPOSE_VERSION"
echo "$CACHE"
