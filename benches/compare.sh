#!/usr/bin/env bash
# Side-by-side benchmark: coresocks (each relay engine), dante and
# microsocks, and a direct connection, measured by loadgen in interleaved
# rounds. Every proxy runs pinned to one core (PROXY_CPU), loadgen and its
# targets to another (LOAD_CPU). Traffic stays on loopback.
#
#   benches/compare.sh [SCENARIO...]     # default: throughput cps latency
#
# Env: ROUNDS (3), DURATION (5s), PROXY_CPU (1), LOAD_CPU (0), OUT (bench-out),
#      PEERS=0 to skip dante/microsocks (Debian packages dante-server, microsocks).
# Results: markdown tables on stdout, JSON per scenario in $OUT/.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5s}
PROXY_CPU=${PROXY_CPU:-1}
LOAD_CPU=${LOAD_CPU:-0}
OUT=${OUT:-bench-out}
PEERS=${PEERS:-1}
scenarios=("$@")
[ ${#scenarios[@]} -gt 0 ] || scenarios=(throughput cps latency)
mkdir -p "$OUT"

cargo build --release -q -p coresocks -p loadgen
bin=target/release
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
ulimit -n 65536 2>/dev/null || true

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

proxies=()
pid_args=()
start_coresocks() { # name relay [extra args]
  local name=$1 relay=$2; shift 2
  local port; port=$(free_port)
  taskset -c "$PROXY_CPU" "$bin/coresocks" --listen "127.0.0.1:$port" --cores 1 \
    --relay "$relay" --access-log off --log-level warn "$@" 2>"$OUT/$name.log" &
  pids+=($!)
  proxies+=(--proxy "$name=127.0.0.1:$port")
  pid_args+=("$name=$!")
}
start_coresocks coresocks-copy copy
start_coresocks coresocks-splice splice
start_coresocks coresocks-auto auto

if [ "$PEERS" = 1 ] && command -v danted >/dev/null && command -v microsocks >/dev/null; then
  port=$(free_port)
  taskset -c "$PROXY_CPU" microsocks -i 127.0.0.1 -p "$port" >"$OUT/microsocks.log" 2>&1 &
  pids+=($!); proxies+=(--proxy "microsocks=127.0.0.1:$port"); pid_args+=("microsocks=$!")
  port=$(free_port)
  cat >"$OUT/danted.conf" <<CONF
logoutput: $OUT/danted.log
internal: 127.0.0.1 port = $port
external: 127.0.0.1
clientmethod: none
socksmethod: none
user.privileged: root
user.unprivileged: nobody
client pass { from: 127.0.0.0/8 to: 0.0.0.0/0 }
socks pass { from: 127.0.0.0/8 to: 0.0.0.0/0 }
CONF
  taskset -c "$PROXY_CPU" danted -f "$OUT/danted.conf" -N 1 &
  pids+=($!); proxies+=(--proxy "dante=127.0.0.1:$port")
fi
sleep 1

for s in "${scenarios[@]}"; do
  case $s in
    throughput) args=(throughput --streams "${STREAMS:-1}" --direction down) ;;
    cps) args=(cps) ;;
    latency) args=(latency --connections 8 --rate 20000 --size 64) ;;
    udp) args=(udp --size "${UDP_SIZE:-64}" --rate 50000) ;;
    *) echo "unknown scenario $s" >&2; exit 2 ;;
  esac
  echo "## $s (${args[*]}), $ROUNDS rounds of $DURATION"
  taskset -c "$LOAD_CPU" "$bin/loadgen" compare --direct "${proxies[@]}" \
    --rounds "$ROUNDS" --json "$OUT/$s.json" \
    "${args[@]}" --cores "$LOAD_CPU" --duration "$DURATION" --warmup 1s
  echo
done
