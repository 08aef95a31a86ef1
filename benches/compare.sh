#!/usr/bin/env bash
# Side-by-side benchmark: coresocks (each relay engine), dante and
# microsocks, and a direct connection, measured by loadgen in interleaved
# rounds. Every proxy runs pinned to one core (PROXY_CPU), loadgen and its
# targets to another (LOAD_CPU). Traffic stays on loopback.
#
#   benches/compare.sh [SCENARIO...]     # default: throughput cps latency
#   (scenarios: throughput cps latency pingpong udp idle; pingpong is
#   closed-loop 64-byte round trips over 8 tunnels, latency the same
#   messages open-loop at 20,000/s)
#
# Env: ROUNDS (3), DURATION (5s), PROXY_CPU (1), LOAD_CPU (0), OUT (bench-out),
#      STREAMS (1, throughput), UDP_SIZE (64), UDP_RATE (20000), IDLE_TUNNELS (3000),
#      PEERS=0 to skip dante/microsocks (Debian packages dante-server, microsocks),
#      VARIANTS="ring-off:--event-ring off" (extra coresocks flag sets),
#      BASELINE=/path/to/old/coresocks (another build, side by side).
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
  taskset -c "$PROXY_CPU" "$bin/coresocks" --listen "127.0.0.1:$port" --cores 1 --allow 127.0.0.0/8 \
    --relay "$relay" --access-log off --log-level warn "$@" 2>"$OUT/$name.log" &
  pids+=($!)
  proxies+=(--proxy "$name=127.0.0.1:$port")
  pid_args+=("$name=$!")
}
start_coresocks coresocks-copy copy
start_coresocks coresocks-splice splice
start_coresocks coresocks-auto auto
# The kernel relay needs root (CAP_BPF): without it that proxy would run
# auto under sockmap's name, so it is left out.
if [ "$(id -u)" = 0 ] && [ "${SOCKMAP:-1}" = 1 ]; then start_coresocks coresocks-sockmap sockmap; fi
# Before/after in one run: each VARIANTS entry "NAME:ARGS" (separated by
# ";") adds coresocks-NAME, relay auto, with those extra flags; BASELINE
# (the path of another coresocks binary, e.g. an older build) adds
# "baseline" with relay auto.
IFS=';' read -ra variants <<<"${VARIANTS:-}"
for v in "${variants[@]}"; do
  # shellcheck disable=SC2086 # the flags are meant to split
  [ -n "$v" ] && start_coresocks "coresocks-${v%%:*}" auto ${v#*:}
done
if [ -n "${BASELINE:-}" ]; then
  port=$(free_port)
  taskset -c "$PROXY_CPU" "$BASELINE" --listen "127.0.0.1:$port" --cores 1 --allow 127.0.0.0/8 \
    --relay auto --access-log off --log-level warn 2>"$OUT/baseline.log" &
  pids+=($!); proxies+=(--proxy "baseline=127.0.0.1:$port"); pid_args+=("baseline=$!")
fi

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
# --proxy-pid NAME=PID for every process we can attribute CPU to (dante
# forks workers, so its own pid would undercount).
pid_flags=()
for p in "${pid_args[@]}"; do pid_flags+=(--proxy-pid "$p"); done
sleep 1

for s in "${scenarios[@]}"; do
  case $s in
    throughput) args=(throughput --streams "${STREAMS:-1}" --direction down) ;;
    cps) args=(cps) ;;
    latency) args=(latency --connections 8 --rate 20000 --size 64) ;;
    pingpong) args=(latency --closed-loop --connections 8 --size 64) ;;
    udp) args=(udp --size "${UDP_SIZE:-64}" --rate "${UDP_RATE:-20000}") ;;
    idle) args=(idle --tunnels "${IDLE_TUNNELS:-3000}") ;;
    *) echo "unknown scenario $s" >&2; exit 2 ;;
  esac
  echo "## $s (${args[*]}), $ROUNDS rounds of $DURATION"
  paths=("${proxies[@]}")
  pflags=("${pid_flags[@]}")
  # UDP does not go through the relay engines (one coresocks engine
  # suffices; variants and the baseline stay), and microsocks has no UDP
  # ASSOCIATE.
  if [ "$s" = udp ]; then
    paths=(); pflags=()
    for ((i = 0; i < ${#proxies[@]}; i += 2)); do
      case ${proxies[i+1]} in microsocks=* | coresocks-splice=* | coresocks-auto=* | coresocks-sockmap=*) ;; *) paths+=("${proxies[i]}" "${proxies[i+1]}") ;; esac
    done
    for ((i = 0; i < ${#pid_flags[@]}; i += 2)); do
      case ${pid_flags[i+1]} in microsocks=* | coresocks-splice=* | coresocks-auto=* | coresocks-sockmap=*) ;; *) pflags+=("${pid_flags[i]}" "${pid_flags[i+1]}") ;; esac
    done
  fi
  taskset -c "$LOAD_CPU" "$bin/loadgen" compare --direct "${paths[@]}" "${pflags[@]}" \
    --rounds "$ROUNDS" --json "$OUT/$s-${STREAMS:-1}-${UDP_SIZE:-64}.json" \
    "${args[@]}" --duration "$DURATION" --warmup 1s
  echo
done
