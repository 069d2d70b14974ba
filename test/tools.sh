#!/usr/bin/env bash
# Builds, or finds in the cache outside the clone, every tool `make test` and `make lint` run:
# kube-apiserver and etcd, helm, promtool, the Compose v2 and buildx plugins, and
# golangci-lint, each from the Go module proxy, and Debian's busybox-static (installed with
# apt-get when missing). The builds run
# side by side, because on a cold machine much of each is waiting on module downloads. Prints
# the variables the tests read, for `eval`, and each build's time on stderr.
#
#   eval "$(test/tools.sh)"
set -euo pipefail
cd "$(dirname "$0")"

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

# start NAME SCRIPT: runs SCRIPT in the background, keeping its output and its duration.
start() {
  local name=$1 script=$2
  (
    began=$SECONDS
    status=0
    "$script" >"$out/$name" 2>"$out/$name.log" || status=$?
    echo "$status $((SECONDS - began))" >"$out/$name.done"
  ) &
}
start kube kube/build-assets.sh
start helm helm/build-helm.sh
start docker docker/build-plugins.sh
start promtool promtool/build-promtool.sh
start lint lint/build-golangci-lint.sh
start busybox busybox/find-busybox.sh
wait

failed=0
for name in kube helm docker promtool lint busybox; do
  read -r status took <"$out/$name.done"
  if [ -s "$out/$name.log" ]; then
    sed "s/^/tools: $name: /" "$out/$name.log" >&2
  fi
  if [ "$status" -ne 0 ]; then
    echo "tools: $name failed (exit $status) after ${took}s" >&2
    failed=1
  else
    echo "tools: $name ready in ${took}s" >&2
  fi
done
[ "$failed" -eq 0 ] || exit 1

printf 'export KUBE_TEST_ASSETS=%q HELM=%q DOCKER_PLUGINS=%q PROMTOOL=%q GOLANGCI_LINT=%q BUSYBOX=%q\n' \
  "$(cat "$out/kube")" "$(cat "$out/helm")" "$(cat "$out/docker")" "$(cat "$out/promtool")" "$(cat "$out/lint")" "$(cat "$out/busybox")"
