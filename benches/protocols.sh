#!/usr/bin/env bash
# One coresocks serving SOCKS5, SOCKS4a and HTTP CONNECT on one port,
# measured in each protocol side by side (loadgen compare, interleaved
# rounds): connection rate, 64-byte ping-pong and 1-stream bulk, beside
# direct. Proxy on PROXY_CPU (--cores 1), loadgen and its targets on
# LOAD_CPU, loopback only, every run bounded in time.
#
#   benches/protocols.sh
#
# Env: ROUNDS (3), DURATION (3s), PROXY_CPU (1), LOAD_CPU (0), OUT
#      (bench-out/protocols)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3} DURATION=${DURATION:-3s} PROXY_CPU=${PROXY_CPU:-1}
LOAD_CPU=${LOAD_CPU:-0} OUT=${OUT:-bench-out/protocols}
bin=target/release
[ -x "$bin/coresocks" ] && [ -x "$bin/loadgen" ] || cargo build --release --bins -q
mkdir -p "$OUT"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
taskset -c "$PROXY_CPU" "$bin/coresocks" --listen "127.0.0.1:$port" --cores 1 \
  --allow 127.0.0.0/8 --protocols socks5,socks4,http-connect --access-log off --log-level warn &
proxy=$!
trap 'kill -INT $proxy 2>/dev/null; wait $proxy 2>/dev/null || true' EXIT
sleep 0.5
p=127.0.0.1:$port
compare() { # name scenario-args...
  local name=$1
  shift
  echo "## $name"
  taskset -c "$LOAD_CPU" "$bin/loadgen" compare --direct \
    --proxy "socks5=$p" --proxy "socks4a=socks4a://$p" --proxy "http-connect=http://$p" \
    --proxy-pid "socks5=$proxy" --proxy-pid "socks4a=$proxy" --proxy-pid "http-connect=$proxy" \
    --rounds "$ROUNDS" --json "$OUT/$name.json" "$@" --duration "$DURATION" 2>/dev/null
}
compare cps cps
compare pingpong latency --closed-loop --connections 8 --size 64
compare throughput throughput
