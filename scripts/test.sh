#!/bin/sh
# Quick start 2: install what is missing, build with AddressSanitizer + UndefinedBehaviorSanitizer
# and run the whole suite with ctest.
set -eu
cd "$(dirname "$0")/.."
sh scripts/install-deps.sh
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DRUNNEL_SANITIZE=ON -DRUNNEL_BENCH=OFF >/dev/null
cmake --build build-asan -j2
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:${ASAN_OPTIONS:-}"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:${UBSAN_OPTIONS:-}"
ctest --test-dir build-asan --output-on-failure -j2 --timeout 600
