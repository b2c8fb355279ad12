#!/usr/bin/env bash
# e2e_batch.sh: end-to-end ingest (workload W1, log + live tables) with and without the batch
# layer compacting during the run. Runs bench/e2e_ingest.sh twice: BATCH=off, then BATCH=on with
# small log segments (SEGMENT_BYTES, default 64 MiB) so that segments seal, and are compacted
# into LMDB, while events arrive. Prints both rates and on/off (target >= 0.8). PAIRS=N
# (default 1) runs N off/on pairs in turn and judges the median ratio: the machines are shared,
# and one pair can be off by 10%.
# Usage: bench/e2e_batch.sh [BUILD_DIR] [EVENTS]   (builds nothing; knobs as e2e_ingest.sh)
set -euo pipefail
here=$(dirname "$0")
build_dir=${1:-./build-release}
events=${2:-20000000}
segment_bytes=${SEGMENT_BYTES:-67108864}
export TIMEOUT_S=${TIMEOUT_S:-600}  # each run; the speed path may be far below its target
tmp=$(mktemp -d "${TMPDIR:-/tmp}/runnel-e2e-batch.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

run() {  # run NAME ENV...: one e2e_ingest.sh run, its output kept in $tmp/NAME.out
  local name=$1
  shift
  echo "== $name"
  env "$@" "$here/e2e_ingest.sh" "$build_dir" "$events" | tee "$tmp/$name.out"
}
# "runneld events/s (e2e, logged + live)   N" -> N; likewise the same run's baseline.
eps() { sed -n 's/^runneld events\/s ([^)]*) *\([0-9]*\)$/\1/p' "$tmp/$1.out"; }
base() { sed -n 's/^baseline events\/s (loadgen->sink) *\([0-9]*\)$/\1/p' "$tmp/$1.out"; }

pairs=${PAIRS:-1}
ratios=()
for ((k = 1; k <= pairs; k++)); do
  run "off$k" BATCH=off
  run "on$k" BATCH=on SEGMENT_BYTES="$segment_bytes"
  off=$(eps "off$k")
  on=$(eps "on$k")
  [[ -n $off && -n $on ]] || { echo "e2e_batch: a run did not report its rate" >&2; exit 1; }
  ratios+=("$(awk -v a="$on" -v b="$off" 'BEGIN { printf "%.3f", a / b }')")
  echo
  echo "runnel e2e ingest with and without compaction, W1, $events events (pair $k of $pairs)"
  printf '%-44s %s\n' "events/s, batch layer off" "$off (baseline of that run: $(base "off$k"))"
  printf '%-44s %s\n' "events/s, batch on, segments of $segment_bytes B" \
    "$on (baseline of that run: $(base "on$k"))"
  printf '%-44s %s\n' "ratio on/off" "${ratios[-1]}"
done
ratio=$(printf '%s\n' "${ratios[@]}" | sort -n | awk '{ r[NR] = $1 } END { print r[int((NR + 1) / 2)] }')
if ((pairs > 1)); then printf '%-44s %s (of %s)\n' "median ratio on/off" "$ratio" "${ratios[*]}"; fi
awk -v r="$ratio" 'BEGIN { exit !(r >= 0.8) }' && verdict=met || verdict=missed
echo "target: with compaction within 20% of without (ratio >= 0.8): $verdict"
