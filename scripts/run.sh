#!/bin/sh
# Quick start 1: install what is missing, build Release, run runneld in the foreground on the
# embedded defaults (data in ./runnel-data). Extra arguments go to runneld.
set -eu
cd "$(dirname "$0")/.."
sh scripts/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DRUNNEL_BENCH=ON >/dev/null
cmake --build build -j2
exec ./build/daemon/runneld "$@"
