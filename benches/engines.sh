#!/usr/bin/env bash
# The relay engines side by side: copy, splice, auto and sockmap (the
# kernel relays; needs root), and direct, in one run:
#   1. on loopback (benches/compare.sh): 1-stream and 8-stream bulk
#      (Gbit/s, the proxy's CPU s/GiB and every CPU's: sockmap's work is
#      in softirqs and kworkers, not the proxy's process), 64-byte
#      ping-pong (round trips/s, p99), connections/s;
#   2. memory per idle tunnel: the proxy's RSS and the kernel's
#      unreclaimable slab (SUnreclaim: sockets, sockmap's psocks and map
#      entries), IDLE_TUNNELS tunnels held open per engine;
#   3. in the namespace lab (tuning/netns-bench.sh) with RPS steering the
#      proxy's received packets to PROXY_CPU: on loopback a segment is
#      received in the sender's softirq, so sockmap's redirect (and the
#      kworker that sends it on) runs on the client's or target's CPU, which
#      flatters it (free CPU) or punishes it (a CPU loadgen already fills).
#      Skipped without root.
# Proxy on PROXY_CPU, load on LOAD_CPU; every load bounded in time.
#
#   benches/engines.sh
#
# Env: ROUNDS (3), DURATION (4s), PROXY_CPU (1), LOAD_CPU (0), IDLE_TUNNELS
#      (3000), OUT (bench-out/engines). Results: markdown on stdout, loadgen
#      JSON in $OUT (loopback-*.json, netns-ENGINE-*.json), idle-memory.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
export ROUNDS=${ROUNDS:-3} DURATION=${DURATION:-4s} PROXY_CPU=${PROXY_CPU:-1}
export LOAD_CPU=${LOAD_CPU:-0} OUT=${OUT:-bench-out/engines} PEERS=0
IDLE_TUNNELS=${IDLE_TUNNELS:-3000}
mkdir -p "$OUT"
cargo build --release -q -p coresocks -p loadgen
bin=target/release
ulimit -n 65536 2>/dev/null || true

echo "# 1. loopback"
OUT="$OUT/loopback" benches/compare.sh throughput pingpong cps
OUT="$OUT/loopback" STREAMS=8 benches/compare.sh throughput

echo "# 2. memory per idle tunnel ($IDLE_TUNNELS tunnels)"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
slab_kib() { awk '/^SUnreclaim:/{print $2}' /proc/meminfo; }
engines=(copy splice auto)
[ "$(id -u)" = 0 ] && engines+=(sockmap)
{
  echo "| engine | proxy RSS per tunnel, KiB | kernel slab per tunnel, KiB |"
  echo "|---|---:|---:|"
  for engine in "${engines[@]}"; do
    port=$(free_port)
    taskset -c "$PROXY_CPU" "$bin/coresocks" --listen "127.0.0.1:$port" --cores 1 --allow 127.0.0.0/8 \
      --relay "$engine" --access-log off --log-level warn 2>/dev/null &
    pid=$!
    sleep 0.5
    before=$(slab_kib)
    taskset -c "$LOAD_CPU" "$bin/loadgen" idle --proxy "127.0.0.1:$port" --proxy-pid "$pid" \
      --tunnels "$IDLE_TUNNELS" --duration 6s --warmup 0s --quiet --json "$OUT/idle-$engine.json" >/dev/null &
    load=$!
    # Sampled while the tunnels are held (opening takes well under 3 s).
    sleep 4
    during=$(slab_kib)
    wait "$load"
    kill -INT "$pid"; wait "$pid" || true
    rss=$(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print("%.2f" % (r["proxy_process"]["rss_growth_per_tunnel_bytes"]/1024))' "$OUT/idle-$engine.json")
    awk -v e="$engine" -v r="$rss" -v a="$before" -v b="$during" -v n="$IDLE_TUNNELS" \
      'BEGIN { printf "| %s | %s | %.2f |\n", e, r, (b - a) / n }'
  done
} | tee "$OUT/idle-memory.txt"
echo "(the slab counts both ends' sockets, the target's and loadgen's too, and"
echo "whatever else the machine allocated meanwhile: compare engines, not totals)"

if [ "$(id -u)" != 0 ]; then
  echo "not root: no namespace lab"
  exit 0
fi
echo "# 3. namespace lab, RPS to CPU $PROXY_CPU"
tuning/netns-bench.sh up --rps "$PROXY_CPU" >/dev/null
trap 'tuning/netns-bench.sh down >/dev/null 2>&1 || true' EXIT
lab() { # engine json loadgen-args...
  local engine=$1 json=$2
  shift 2
  tuning/netns-bench.sh run --rps "$PROXY_CPU" --keep --proxy-cpu "$PROXY_CPU" --load-cpu "$LOAD_CPU" \
    --proxy-args "--relay $engine --access-log off" --json "$OUT/$json" -- \
    compare --direct --rounds "$ROUNDS" "$@" --duration "$DURATION" --warmup 1s | grep '^|'
}
for engine in "${engines[@]}"; do
  echo "## $engine"
  lab "$engine" "netns-$engine-throughput-1.json" throughput --streams 1 --direction down
  lab "$engine" "netns-$engine-throughput-8.json" throughput --streams 8 --direction down
  lab "$engine" "netns-$engine-pingpong.json" latency --closed-loop --connections 8 --size 64
  lab "$engine" "netns-$engine-cps.json" cps
done
