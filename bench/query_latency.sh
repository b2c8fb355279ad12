#!/usr/bin/env bash
# Merged (batch ⊕ live) range-read latency through the client library against a real runneld:
# loads 24 h of 10 s points for HOSTS hosts ending now, with small log segments and generations so
# that most of each series is compacted into LMDB and its newest part is live, waits until the
# batch layer stopped advancing, then runs runnel-query-latency from a separate process: one
# series (host=h0), 24 h at 1 m step, p50/p99/p99.9 next to a Unix-socket round trip.
# Usage: bench/query_latency.sh [BUILD_DIR]   (builds nothing; knobs: HOSTS, ITERATIONS, RUNNER:
# a command prefix for the client, e.g. "perf record -g -o FILE"; STEP_NS: the query's step,
# default 60 s; 1000000000 reads the 1 s width, whose blocks are keyed time-major)
set -euo pipefail
build=${1:-./build-release}
hosts=${HOSTS:-50}
iterations=${ITERATIONS:-20000}
step_ns=${STEP_NS:-60000000000}
runneld=$build/daemon/runneld
runnelctl=$build/client/runnelctl
bench=$build/bench/runnel-query-latency
for b in "$runneld" "$runnelctl" "$bench"; do [[ -x $b ]] || { echo "query_latency: missing $b" >&2; exit 1; }; done
tmp=$(mktemp -d "${TMPDIR:-/tmp}/runnel-querylat.XXXXXX")
shm=runnel-querylat-$$
pid=""
cleanup() {
  if [[ -n $pid ]]; then kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true; fi
  rm -rf "$tmp" /dev/shm/"$shm".*
}
trap cleanup EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat >"$tmp/runneld.toml" <<TOML
[log]
segment_bytes = 2097152
[ring]
generation_bytes = 262144
[batch]
interval_ms = 200
TOML
"$runneld" --config "$tmp/runneld.toml" --data-dir "$tmp/data" --shm-name "$shm" \
  --listen "tcp://127.0.0.1:$port" 2>"$tmp/runneld.log" &
pid=$!
# Prints "FROM_NS TO_NS POINTS_PER_HOST": the loaded range, 24 h of whole minutes ending now.
range=$(python3 - "$port" "$hosts" <<'PY'
import socket, sys, time
port, hosts = int(sys.argv[1]), int(sys.argv[2])
for _ in range(500):
    try:
        s = socket.create_connection(("127.0.0.1", port)); break
    except OSError:
        time.sleep(0.01)
minute = 60 * 10**9
to = time.time_ns() // minute * minute
start = to - 24 * 60 * minute
points = 24 * 360
buf = []
for t in range(points):
    ts = start + t * 10 * 10**9
    for h in range(hosts):
        buf.append(b"cpu,host=h%d,region=r%d usage_user=%d.25 %d\n" % (h, h % 10, (t * 7 + h) % 100, ts))
    if len(buf) >= 100000:
        s.sendall(b"".join(buf)); buf = []
s.sendall(b"".join(buf)); s.shutdown(socket.SHUT_WR); s.recv(1)
print(start, to, points)
PY
)
read -r from_ns to_ns per_host <<<"$range"
expected=$((per_host * hosts))
stat() { "$runnelctl" --shm-name "$shm" stats --json | python3 -c "import json,sys; print(json.load(sys.stdin)[\"$1\"])"; }
for _ in $(seq 1 1500); do
  [[ $(stat speed_records) -ge $expected ]] && break
  sleep 0.02
done
# The batch layer is done once batch_records_absorbed stopped moving for 3 s.
last=-1
for _ in $(seq 1 120); do
  now=$(stat batch_records_absorbed)
  [[ $now == "$last" && $now -gt 0 ]] && break
  last=$now
  sleep 3
done
echo "runneld holds $(stat speed_records) of $expected points, $(stat batch_records_absorbed) absorbed by the" \
  "batch layer; $hosts hosts x $per_host points (24 h at 10 s); querying from pid $$ (runneld is pid $pid)"
${RUNNER:-} "$bench" --shm-name "$shm" --host h0 --from-ns "$from_ns" --to-ns "$to_ns" --step-ns "$step_ns" \
  --iterations "$iterations" --expect-count "$per_host"
