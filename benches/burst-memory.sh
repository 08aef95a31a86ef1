#!/usr/bin/env bash
# Memory a burst leaves behind: one coresocks core takes a burst (N idle
# tunnels, then a short many-stream throughput run), then idles; its
# anonymous RSS is printed before, and IDLE seconds after the burst, with
# the largest mappings. Loopback only; the load stops by itself.
#
#   benches/burst-memory.sh [coresocks args...]    # e.g. --relay copy
#
# Env: BIN (target/release; `cargo build --release` first when unset),
#      TUNNELS (3000), STREAMS (64), IDLE (12 s), PROXY_CPU (1), LOAD_CPU (0).
set -euo pipefail
cd "$(dirname "$0")/.."
TUNNELS=${TUNNELS:-3000}
STREAMS=${STREAMS:-64}
IDLE=${IDLE:-12}
PROXY_CPU=${PROXY_CPU:-1}
LOAD_CPU=${LOAD_CPU:-0}
if [ -z "${BIN:-}" ]; then
  cargo build --release -q -p coresocks -p loadgen
  BIN=target/release
fi
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
taskset -c "$PROXY_CPU" "$BIN/coresocks" --listen "127.0.0.1:$port" --cores 1 --allow 127.0.0.0/8 \
  --access-log off --log-level warn "$@" 2>/dev/null &
pid=$!
trap 'kill "$pid" 2>/dev/null || true' EXIT
sleep 1
anon() { awk '/^Anonymous:/{printf "%.1f MiB", $2/1024}' "/proc/$pid/smaps_rollup"; }
echo "before the burst:        $(anon)"
load() { taskset -c "$LOAD_CPU" "$BIN/loadgen" "$@" --proxy "127.0.0.1:$port" >/dev/null; }
load idle --tunnels "$TUNNELS" --duration 2
load throughput --streams "$STREAMS" --duration 3
echo "right after the burst:   $(anon)"
sleep "$IDLE"
echo "${IDLE} s after the burst: $(anon)"
echo "largest mappings (RSS KiB, range, file):"
awk '/^[0-9a-f]+-[0-9a-f]+ /{name=$6; range=$1} /^Rss:/{ if ($2 > 500) print "  " $2, range, name }' \
  "/proc/$pid/smaps" | sort -rn | head -5
kill -INT "$pid"
wait "$pid" || true
