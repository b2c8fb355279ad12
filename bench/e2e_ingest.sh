#!/usr/bin/env bash
# e2e_ingest.sh: the "ingest end to end" benchmark. Sends workload W1 with runnel-loadgen into
# runnel-sink (baseline) and into runneld until every event is in the durable log; prints a table.
# Usage: bench/e2e_ingest.sh [BUILD_DIR] [EVENTS]   (builds nothing; see bench/README.md)
set -euo pipefail

build_dir=${1:-}
if [[ -z $build_dir ]]; then
  for d in ./build-release ./build; do
    if [[ -x $d/bench/runnel-loadgen ]]; then build_dir=$d; break; fi
  done
  build_dir=${build_dir:-./build-release}
fi
events=${2:-20000000}
connections=${CONNECTIONS:-4}
batch_bytes=${BATCH_BYTES:-1048576}
timeout_s=${TIMEOUT_S:-120}  # from loadgen start until log_records must reach EVENTS
poll_ms=${POLL_MS:-5}        # resolution of the end-to-end end time
stall_s=${STALL_S:-15}       # give up when log_records has not moved for this long
fsync=${FSYNC:-interval}
speed=${SPEED:-on}           # off: ingest and log only ([speed] enabled = false)
batch=${BATCH:-off}          # on: the batch layer compacts sealed segments during the run
segment_bytes=${SEGMENT_BYTES:-268435456}  # [log] segment_bytes: smaller seals (and compacts) sooner
split=${SPLIT:-interleaved}  # runnel-loadgen --split: contiguous sends each connection a time range
# More keys for runneld's [daemon], [ring], [speed] and [batch] tables, e.g.
# RING_TOML='generation_bytes = 67108864', DAEMON_TOML='cpu_scheduling = "other"'.
daemon_toml=${DAEMON_TOML:-}
ring_toml=${RING_TOML:-}
speed_toml=${SPEED_TOML:-}
batch_toml=${BATCH_TOML:-}
# The goal on a 2-core box, generator included: 3 M/s for ingest alone, 2 M/s with the speed path.
target_eps=${TARGET_EPS:-$([[ ${SPEED:-on} == off ]] && echo 3000000 || echo 2000000)}

loadgen=$build_dir/bench/runnel-loadgen
sink=$build_dir/bench/runnel-sink
runneld=$build_dir/daemon/runneld
runnelctl=$build_dir/client/runnelctl
for bin in "$loadgen" "$sink"; do
  [[ -x $bin ]] || { echo "e2e_ingest: $bin not found (build with -DRUNNEL_BENCH=ON)" >&2; exit 2; }
done

tmp=$(mktemp -d "${TMPDIR:-/tmp}/runnel-e2e.XXXXXX")
shm_name=runnel-e2e-$$-$RANDOM
children=()

# Stops whatever child is still running (TERM, then KILL after 5 s), removes temp dir and shm.
cleanup() {
  local pid i
  for pid in "${children[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${children[@]}"; do
    for ((i = 0; i < 50; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  rm -rf "$tmp"
  rm -f /dev/shm/"$shm_name"*
}
trap cleanup EXIT
trap 'exit 130' INT TERM

die() { echo "e2e_ingest: $*" >&2; exit 1; }
# The huge= option of the tmpfs behind /dev/shm (README "Tuning"): advise gives runneld's shared
# memory huge pages, which changes the speed path's cost.
shm_huge() {
  local opt
  opt=$(findmnt -no OPTIONS /dev/shm 2>/dev/null | tr ',' '\n' | sed -n 's/^huge=//p' | head -1)
  echo "${opt:-never}"
}
now_ns() { date +%s%N; }
# Value of KEY in a "key=value ..." line as printed by runnel-loadgen / runnel-sink.
kv() { grep -o "\b$1=[^ ]*" "$2" | head -1 | cut -d= -f2; }
# Integer value of KEY in a JSON object on stdin (flat keys only; no jq needed).
json_int() { tr -d '\n' | sed -n "s/.*\"$1\"[[:space:]]*:[[:space:]]*\([0-9]*\).*/\1/p"; }
# Waits for child PID to exit within SECONDS; returns its exit status, or dies on timeout.
# A reaped child leaves the cleanup list, so cleanup never signals a recycled pid.
wait_bounded() {
  local pid=$1 seconds=$2 what=$3 i rc=0 kept=() c
  for ((i = 0; i < seconds * 10; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$pid" 2>/dev/null && die "$what still running after ${seconds}s"
  wait "$pid" || rc=$?
  for c in "${children[@]}"; do [[ $c == "$pid" ]] || kept+=("$c"); done
  children=("${kept[@]}")
  return "$rc"
}
# A TCP port no socket on this host uses (listening or not), read from /proc/net/tcp{,6}.
free_port() {
  local used=" " f addr p i
  for f in /proc/net/tcp /proc/net/tcp6; do
    [[ -r $f ]] || continue
    while read -r _ addr _; do
      [[ $addr == *:* ]] && used+="$((16#${addr##*:})) "
    done < <(tail -n +2 "$f")
  done
  for ((i = 0; i < 100; i++)); do
    p=$((20000 + RANDOM % 40000))
    [[ $used == *" $p "* ]] || { echo "$p"; return 0; }
  done
  return 1
}
# utime+stime of PID in clock ticks (fields 14 and 15 of /proc/PID/stat, after the comm).
cpu_ticks() {
  local stat rest
  read -r stat <"/proc/$1/stat"
  rest=${stat##*) }
  read -r -a f <<<"$rest"
  echo $((f[11] + f[12]))
}
loadgen_args=(--connections "$connections" --events "$events" --batch-bytes "$batch_bytes" --split "$split")
# events/s over [START_NS, END_NS]
rate() { awk -v n="$events" -v a="$1" -v b="$2" 'BEGIN { printf "%.0f", n / ((b - a) / 1e9) }'; }

# (a) Baseline: the same generator into a receiver that only counts bytes and lines.
"$sink" --port-file "$tmp/sink.port" --lines "$events" >"$tmp/sink.out" 2>"$tmp/sink.err" &
sink_pid=$!
children+=("$sink_pid")
for ((i = 0; i < 100; i++)); do [[ -s $tmp/sink.port ]] && break; sleep 0.1; done
[[ -s $tmp/sink.port ]] || die "runnel-sink did not start: $(cat "$tmp/sink.err")"
# In the background so that a signal to this script is handled at once.
"$loadgen" "${loadgen_args[@]}" --target "tcp://127.0.0.1:$(cat "$tmp/sink.port")" \
  >"$tmp/base_loadgen.out" &
children+=("$!")
wait_bounded "$!" "$timeout_s" runnel-loadgen || die "loadgen into runnel-sink failed"
wait_bounded "$sink_pid" "$timeout_s" runnel-sink || die "runnel-sink failed: $(cat "$tmp/sink.out")"
base_start=$(kv start_unix_ns "$tmp/base_loadgen.out")
base_eps=$(rate "$base_start" "$(kv end_unix_ns "$tmp/sink.out")")
bytes=$(kv bytes "$tmp/base_loadgen.out")

print_row() { printf '%-34s %s\n' "$1" "$2"; }
echo
echo "runnel e2e ingest, workload W1: $events events ($bytes bytes), $connections connections," \
  "batch $batch_bytes B, $(nproc) cores"
print_row "baseline events/s (loadgen->sink)" "$base_eps"

if [[ ! -x $runneld || ! -x $runnelctl ]]; then
  print_row "runneld" "not found: $runneld / $runnelctl"
  exit 1
fi

# (b) runneld: from loadgen start until every event is in the durable log.
port=$(free_port) || die "no free TCP port found"
mkdir -p "$tmp/data"
cat >"$tmp/runneld.toml" <<EOF
[daemon]
$daemon_toml

[log]
fsync = "$fsync"
fsync_interval_ms = 1000
segment_bytes = $segment_bytes

[ingest]
listen = ["tcp://127.0.0.1:$port"]

[ring]
$ring_toml

[speed]
enabled = $([[ $speed == off ]] && echo false || echo true)
$speed_toml

[batch]
enabled = $([[ $batch == on ]] && echo true || echo false)
$batch_toml
EOF
"$runneld" --config "$tmp/runneld.toml" --data-dir "$tmp/data" --shm-name "$shm_name" \
  --listen "tcp://127.0.0.1:$port" 2>"$tmp/runneld.log" &
runneld_pid=$!
children+=("$runneld_pid")
ctl_stats() { "$runnelctl" --shm-name "$shm_name" stats --json 2>/dev/null; }
# Ready once its shm answers; bounded, and it must not have died meanwhile.
for ((i = 0; i < 300; i++)); do
  ctl_stats >/dev/null && break
  kill -0 "$runneld_pid" 2>/dev/null || die "runneld exited at start-up: $(tail -5 "$tmp/runneld.log")"
  sleep 0.1
done
ctl_stats >/dev/null || die "runneld not ready after 30s (runnelctl stats fails)"

clk_tck=$(getconf CLK_TCK)
cpu_before=$(cpu_ticks "$runneld_pid")
# One runnelctl waits for the end inside its own process (reading the stats block every POLL_MS)
# and stamps the moment: a shell loop of runnelctl, date and sed per poll took ~0.3 cores of the
# two this benchmark measures. With the speed path running, an event is through once it is both
# logged and folded into the live tables.
until_args=(--until "log_records>=$events")
[[ $speed == off ]] || until_args+=(--until "speed_records>=$events")
"$runnelctl" --shm-name "$shm_name" stats --json "${until_args[@]}" --timeout "$timeout_s" \
  --stall "$stall_s" --poll-ms "$poll_ms" >"$tmp/until.json" 2>"$tmp/until.err" &
waiter_pid=$!
children+=("$waiter_pid")
"$loadgen" "${loadgen_args[@]}" --target "tcp://127.0.0.1:$port" >"$tmp/loadgen.out" &
loadgen_pid=$!
children+=("$loadgen_pid")
# Its --timeout bounds the wait; a plain `wait` (not wait_bounded's polling) costs no CPU.
waited=0
wait "$waiter_pid" || waited=$?
children=("$runneld_pid" "$loadgen_pid")
stats=$(cat "$tmp/until.json")
if ((waited != 0)); then
  kill -0 "$loadgen_pid" 2>/dev/null || wait_bounded "$loadgen_pid" 1 runnel-loadgen ||
    die "loadgen into runneld failed; $(cat "$tmp/until.err"); runneld log: $(tail -3 "$tmp/runneld.log")"
  die "$(cat "$tmp/until.err"); stats: $stats; runneld log: $(tail -3 "$tmp/runneld.log")"
fi
done_ns=$(json_int until_met_ns <<<"$stats")
log_records=$(json_int log_records <<<"$stats")
speed_records=$(json_int speed_records <<<"$stats")
# Sampled before SIGTERM so shutdown work is not counted.
cpu_after=$(cpu_ticks "$runneld_pid")
hwm_kib=$(awk '/^VmHWM:/ { print $2 }' "/proc/$runneld_pid/status")
wait_bounded "$loadgen_pid" 30 runnel-loadgen || die "loadgen into runneld failed"

stop_begin=$(now_ns)
kill -TERM "$runneld_pid"
stop_rc=0
wait_bounded "$runneld_pid" 30 "runneld after SIGTERM" || stop_rc=$?
stop_s=$(awk -v a="$stop_begin" -v b="$(now_ns)" 'BEGIN { printf "%.2f", (b - a) / 1e9 }')

e2e_start=$(kv start_unix_ns "$tmp/loadgen.out")
e2e_eps=$(rate "$e2e_start" "$done_ns")
print_row "runneld events/s (e2e, logged + live)" "$e2e_eps"
print_row "ratio runneld/baseline" "$(awk -v a="$e2e_eps" -v b="$base_eps" 'BEGIN { printf "%.3f", a / b }')"
print_row "runneld CPU s per 1M events" \
  "$(awk -v t=$((cpu_after - cpu_before)) -v hz="$clk_tck" -v n="$events" \
    'BEGIN { printf "%.3f", t / hz / (n / 1e6) }')"
print_row "runneld peak RSS MiB" "$(awk -v k="$hwm_kib" 'BEGIN { printf "%.1f", k / 1024 }')"
echo
echo "notes: loadgen send-only events/s: baseline $(kv events_per_s "$tmp/base_loadgen.out")," \
  "runneld $(kv events_per_s "$tmp/loadgen.out"); end time resolution ${poll_ms} ms;" \
  "fsync=$fsync speed=$speed batch=$batch segment_bytes=$segment_bytes split=$split" \
  "shm_huge=$(shm_huge)"
echo "       runneld: points_accepted=$(json_int points_accepted <<<"$stats")" \
  "log_records=$log_records speed_records=${speed_records:-n/a}" \
  "speed_overflow_updates=$(json_int speed_overflow_updates <<<"$stats")" \
  "speed_late_updates=$(json_int speed_late_updates <<<"$stats")" \
  "speed_forced_evictions=$(json_int speed_forced_evictions <<<"$stats")" \
  "speed_batches=$(json_int speed_batches <<<"$stats")" \
  "parse_errors_total=$(json_int parse_errors_total <<<"$stats")" \
  "stopped in ${stop_s}s with status $stop_rc"
echo "       batch at that moment: batch_records_absorbed=$(json_int batch_records_absorbed <<<"$stats")" \
  "batch_steps=$(json_int batch_steps <<<"$stats") batch_lag_bytes=$(json_int batch_lag_bytes <<<"$stats")" \
  "log_segments_rolled=$(json_int log_segments_rolled <<<"$stats") batch_errors=$(json_int batch_errors <<<"$stats")"
if ((e2e_eps >= target_eps)); then verdict=met; else verdict=missed; fi
echo "       target >= $target_eps events/s: $verdict"
