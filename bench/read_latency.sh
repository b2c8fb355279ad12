#!/usr/bin/env bash
# Client read latency against a real runneld: loads 2 h of 10 s points for 100 hosts (default
# view), then runs runnel-read-latency from a separate process. Usage: read_latency.sh [BUILD_DIR]
set -euo pipefail
build=${1:-./build-release}
[[ -d $build ]] || build=./build
runneld=$build/daemon/runneld
runnelctl=$build/client/runnelctl
reader=$build/bench/runnel-read-latency
for b in "$runneld" "$runnelctl" "$reader"; do [[ -x $b ]] || { echo "read_latency: missing $b" >&2; exit 1; }; done
tmp=$(mktemp -d /tmp/runnel-readlat.XXXXXX)
shm=runnel-readlat-$$
pid=""
cleanup() {
  [[ -n $pid ]] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
  rm -rf "$tmp" /dev/shm/"$shm".*
}
trap cleanup EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$runneld" --data-dir "$tmp/data" --shm-name "$shm" --listen "tcp://127.0.0.1:$port" 2>"$tmp/runneld.log" &
pid=$!
python3 - "$port" <<'PY'
import socket, sys, time
port = int(sys.argv[1])
for _ in range(500):
    try:
        s = socket.create_connection(("127.0.0.1", port)); break
    except OSError:
        time.sleep(0.01)
start = 1700000000 * 10**9
lines = []
for t in range(720):           # 2 h at 10 s
    for h in range(100):
        lines.append(b"cpu,host=h%d usage_user=%d.25 %d\n" % (h, (t * 7 + h) % 100, start + t * 10 * 10**9))
s.sendall(b"".join(lines)); s.shutdown(socket.SHUT_WR); s.recv(1)
PY
expected=72000
for _ in $(seq 1 500); do
  got=$("$runnelctl" --shm-name "$shm" stats --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["speed_records"])')
  [[ $got -ge $expected ]] && break
  sleep 0.02
done
echo "runneld holds $got points; reading from pid $$ (runneld is pid $pid)"
"$reader" --shm-name "$shm"
