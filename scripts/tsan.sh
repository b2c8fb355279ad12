#!/bin/sh
# The in-process concurrency tests under ThreadSanitizer: live tables (readers racing with a
# writer and with eviction), the ring stress test, the series dictionary and the speed path
# (oneTBB workers folding a real ring into real live tables while readers copy entries).
# Builds only those tests in build-tsan. Usage: scripts/tsan.sh [extra ctest args]
set -eu
cd "$(dirname "$0")/.."
tests="live_table_test ring_stress_test series_dictionary_test speed_path_test"
cmake -S . -B build-tsan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DRUNNEL_TSAN=ON -DRUNNEL_BENCH=OFF >/dev/null
# shellcheck disable=SC2086
cmake --build build-tsan -j2 --target $tests
# halt_on_error: a report fails the test; second_deadlock_stack: both stacks of a lock cycle;
# the suppressions cover only oneTBB-internal frames (see the file).
export TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1:suppressions=$PWD/scripts/tsan.supp:${TSAN_OPTIONS:-}"
ctest --test-dir build-tsan --output-on-failure --timeout 900 \
  -R '^(LiveTableTest|RingStressTest|SeriesDictionaryTest|SpeedPathTest)\.' "$@"
