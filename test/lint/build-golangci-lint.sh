#!/usr/bin/env bash
# Builds the golangci-lint binary `make lint` runs, from the Go module proxy, into a cache
# outside the clone keyed by version, and reuses it when present. Prints the binary's path.
#
#   test/lint/build-golangci-lint.sh      # build if missing (a few minutes), print the path
set -euo pipefail

GOLANGCI_LINT_VERSION=${GOLANGCI_LINT_VERSION:-v2.15.0}
CACHE=${KUBE_TEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/khook}/golangci-lint-${GOLANGCI_LINT_VERSION}

if [ -x "$CACHE/golangci-lint" ]; then
  echo "$CACHE/golangci-lint"
  exit 0
fi
echo "building golangci-lint $GOLANGCI_LINT_VERSION into $CACHE" >&2
mkdir -p "$CACHE"
GOFLAGS=-mod=mod GOBIN="$CACHE/.bin" go install -trimpath \
  "github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$GOLANGCI_LINT_VERSION"
mv "$CACHE/.bin/golangci-lint" "$CACHE/golangci-lint"
rmdir "$CACHE/.bin"
echo "$CACHE/golangci-lint"
