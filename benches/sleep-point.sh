#!/usr/bin/env bash
# The checks of "one sleep point per core" that benches/hot-path.sh does
# not make, side by side in one run:
#  1. loadgen's open-loop scenarios in their default mode against
#     --glommio-io (direct, so only loadgen's own waking is measured), and
#     against independent tools: sockperf's under-load UDP latency and
#     iperf3's bulk, direct;
#  2. the proxy's CPU when idle (10 s) and at 1,000 requests/s, default
#     against --event-ring off;
#  3. what a domain CONNECT adds over an IP CONNECT (benches/resolve-latency.py).
# Proxy on PROXY_CPU, load on LOAD_CPU, loopback only, bounded in time.
#
#   benches/sleep-point.sh
#
# Env: ROUNDS (3), PROXY_CPU (1), LOAD_CPU (0), BIN (target/release).
# Needs sockperf and iperf3 (Debian packages) for the independent rows.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
PROXY_CPU=${PROXY_CPU:-1}
LOAD_CPU=${LOAD_CPU:-0}
BIN=${BIN:-target/release}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
lg() { taskset -c "$LOAD_CPU" "$BIN/loadgen" "$@" --quiet 2>/dev/null; }
# The value after KEY on loadgen's "latency µs" line.
pct() { awk -v k="$1" '/^latency/ { for (i = 1; i < NF; i++) if ($i == k) { print $(i + 1); exit } }'; }

echo "## 1. loadgen's open loop, direct: default (own ring) vs --glommio-io, p50 / p99 us"
for round in $(seq "$ROUNDS"); do
  for io in default --glommio-io; do
    flags=()
    [ "$io" = default ] || flags=("$io")
    tcp=$(lg latency --direct --rate 20000 --duration 3s "${flags[@]}")
    udp=$(lg udp --direct --rate 20000 --duration 3s "${flags[@]}")
    echo "round $round $io: tcp 20k/s p50 $(pct p50 <<<"$tcp") p99 $(pct p99 <<<"$tcp");" \
      "udp 20k/s p50 $(pct p50 <<<"$udp") p99 $(pct p99 <<<"$udp")"
  done
done
if command -v sockperf >/dev/null; then
  port=$(free_port)
  taskset -c "$LOAD_CPU" sockperf server -i 127.0.0.1 -p "$port" >/dev/null 2>&1 &
  pids+=($!)
  sleep 0.5
  for round in $(seq "$ROUNDS"); do
    echo "round $round sockperf under-load UDP 64 B at 20,000/s, direct:"
    taskset -c "$LOAD_CPU" sockperf under-load -i 127.0.0.1 -p "$port" -m 64 --mps 20000 -t 3 2>&1 |
      grep -E 'avg-latency|percentile 50.000|percentile 99.000' | sed 's/^/  /'
  done
fi
if command -v iperf3 >/dev/null; then
  port=$(free_port)
  taskset -c "$LOAD_CPU" iperf3 -s -B 127.0.0.1 -p "$port" >/dev/null 2>&1 &
  pids+=($!)
  sleep 0.5
  for round in $(seq "$ROUNDS"); do
    ip=$(taskset -c "$LOAD_CPU" iperf3 -c 127.0.0.1 -p "$port" -t 3 -J |
      python3 -c 'import json,sys; print("%.2f" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"] / 1e9))')
    lgt=$(lg throughput --direct --duration 3s | awk '/^Gbit\/s total/ { print $3 }')
    echo "round $round 1-stream bulk direct: iperf3 $ip Gbit/s, loadgen $lgt Gbit/s"
  done
fi

echo
echo "## 2. proxy CPU: idle for 10 s, and at 1,000 requests/s (8 tunnels, 5 s)"
ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
for variant in "default:" "ring-off:--event-ring off"; do
  port=$(free_port)
  # shellcheck disable=SC2086 # the flags are meant to split
  taskset -c "$PROXY_CPU" "$BIN/coresocks" --listen "127.0.0.1:$port" --cores 1 --allow 127.0.0.0/8 \
    --access-log off --log-level warn ${variant#*:} &
  pid=$!
  pids+=($pid)
  sleep 1
  before=$(ticks "$pid")
  sleep 10
  idle=$(($(ticks "$pid") - before))
  before=$(ticks "$pid")
  lg latency --proxy "127.0.0.1:$port" --rate 1000 --warmup 0s --duration 5s >/dev/null
  busy=$(($(ticks "$pid") - before))
  awk -v v="${variant%%:*}" -v i="$idle" -v b="$busy" -v hz="$hz" 'BEGIN {
    printf "%s: idle %.2f%% of a CPU; at 1,000 req/s %.2f%% of a CPU\n", v, 100 * i / hz / 10, 100 * b / hz / 5 }'
  kill -INT "$pid"
  wait "$pid" || true
done

echo
echo "## 3. domain CONNECT against IP CONNECT (resolver's answer through the ring)"
port=$(free_port)
taskset -c "$PROXY_CPU" "$BIN/coresocks" --listen "127.0.0.1:$port" --cores 1 --allow 127.0.0.0/8 \
  --access-log off --log-level warn &
pid=$!
pids+=($pid)
sleep 1
taskset -c "$LOAD_CPU" python3 benches/resolve-latency.py "$port" 2000
