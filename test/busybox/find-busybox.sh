#!/usr/bin/env bash
# Finds a static busybox, the shell of the stand-in Go image TestDockerfile builds, and
# installs Debian's busybox-static when there is none: as root with apt-get, or with a sudo
# that needs no password. Prints the binary's path.
#
#   test/busybox/find-busybox.sh
set -euo pipefail

if path=$(command -v busybox); then
  echo "$path"
  exit 0
fi
apt=(apt-get install -y -qq --no-install-recommends busybox-static)
if [ "$(id -u)" -eq 0 ]; then
  echo "installing Debian's busybox-static" >&2
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive "${apt[@]}" >&2
elif sudo -n true 2>/dev/null; then
  echo "installing Debian's busybox-static (sudo)" >&2
  sudo -n env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
  sudo -n env DEBIAN_FRONTEND=noninteractive "${apt[@]}" >&2
else
  echo "busybox not found and cannot install it: run 'sudo apt-get install busybox-static' (Debian, Ubuntu)" >&2
  exit 1
fi
command -v busybox
