#!/bin/sh
# Installs the Debian 12 packages runnel builds, tests and runs with (only the missing ones).
set -eu
PKGS="build-essential cmake pkg-config ccache git python3 liburing-dev libboost-dev liblmdb-dev lmdb-utils
libtbb-dev libspdlog-dev libfmt-dev libtomlplusplus-dev libcli11-dev libxxhash-dev libsystemd-dev
libgtest-dev libgmock-dev libbenchmark-dev nlohmann-json3-dev systemd"
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "install-deps: installing:$missing"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # shellcheck disable=SC2086
  apt-get install -y -qq --no-install-recommends $missing
fi
