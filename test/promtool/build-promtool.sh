#!/usr/bin/env bash
# Builds promtool, which checks and unit-tests the chart's alert rules, from the Go module
# proxy into a cache outside the clone keyed by version, and reuses it when present. Prints
# the binary's path. A promtool already on the PATH is not used: the rules are tested against
# the version named here, whatever the machine has.
#
#   test/promtool/build-promtool.sh   # build if missing (a few minutes cold), print the path
set -euo pipefail

PROMETHEUS_VERSION=${PROMETHEUS_VERSION:-v0.316.0}
# The tests only check and unit-test rules: the service discovery plugins (every cloud's SDK,
# most of promtool's build) are left out with Prometheus's own build tag.
CACHE=${KUBE_TEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/khook}/promtool-${PROMETHEUS_VERSION}-nosd

if [ -x "$CACHE/promtool" ]; then
  echo "$CACHE/promtool"
  exit 0
fi
echo "building promtool $PROMETHEUS_VERSION into $CACHE" >&2
mkdir -p "$CACHE"
GOFLAGS=-mod=mod GOBIN="$CACHE/.bin" go install -trimpath -ldflags "-s -w" -tags remove_all_sd \
  "github.com/prometheus/prometheus/cmd/promtool@$PROMETHEUS_VERSION"
mv "$CACHE/.bin/promtool" "$CACHE/promtool"
rmdir "$CACHE/.bin"
echo "$CACHE/promtool"
