#!/usr/bin/env bash
# The hot-path check, side by side in one run: 64-byte ping-pong (closed
# loop, round trips/s) and open-loop latency, connection rate, UDP at a
# fixed rate and 1-stream bulk (with the proxy's CPU per GiB), direct vs
# coresocks (each engine; default options) vs coresocks with
# `--event-ring off` (glommio's waits); then the reschedule IPIs on the
# proxy's CPU while each serves the same ping-pong, per 1,000 relayed
# messages. Proxy on PROXY_CPU, load on LOAD_CPU, loopback only, every
# load bounded in time.
#
#   benches/hot-path.sh
#
# Env: ROUNDS (3), DURATION (5s), PROXY_CPU (1), LOAD_CPU (0), OUT
#      (bench-out), UDP_RATE (20000), BASELINE=/path/to/old/coresocks
#      (another build: a column of its own and a row in the IPI table).
# Needs perf (Debian linux-perf) for the IPI table; skipped without it.
# Last, 1-stream bulk again with clients and servers that are not ours
# (benches/bulk-independent.sh: curl from nginx, iperf3 through
# proxychains4), beside loadgen's figure above: loadgen shares the proxy's
# event design and once hid a bulk regression. Skipped when curl, nginx,
# iperf3 or proxychains4 is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
export ROUNDS=${ROUNDS:-3} DURATION=${DURATION:-5s} PROXY_CPU=${PROXY_CPU:-1}
export LOAD_CPU=${LOAD_CPU:-0} OUT=${OUT:-bench-out} PEERS=0
export VARIANTS="ring-off:--event-ring off"
benches/compare.sh pingpong latency cps udp throughput

bin=target/release
independent_bulk() {
  local variants=("coresocks=$bin/coresocks" "ring-off=$bin/coresocks --event-ring off")
  [ -n "${BASELINE:-}" ] && variants+=("baseline=$BASELINE")
  if command -v nginx >/dev/null && command -v iperf3 >/dev/null && command -v proxychains4 >/dev/null; then
    JSON="$OUT/bulk-independent.json" benches/bulk-independent.sh "${variants[@]}"
  else
    echo "nginx, iperf3 or proxychains4 not found: no independent bulk probe"
  fi
}
# Reschedule IPIs on the proxy's CPU while each variant serves ping-pong.
ipi_table() {
  free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
  echo "## reschedule IPIs on CPU $PROXY_CPU during 64-byte ping-pong (closed loop, 8 tunnels, ${DURATION})"
  echo "| path | round trips/s | IPIs/s | IPIs per 1,000 relayed messages |"
  echo "|---|---:|---:|---:|"
  secs=${DURATION%s}
  # Counts the IPIs on the proxy's CPU while loadgen runs ping-pong through
  # `path` (--direct, or --proxy ADDR); a round trip is two relayed messages.
  count_ipis() { # label path...
    local label=$1 load ipis trips
    shift
    taskset -c "$LOAD_CPU" "$bin/loadgen" latency --closed-loop "$@" \
      --connections 8 --size 64 --warmup 1s --duration "$DURATION" >"$OUT/ipi-load.txt" &
    load=$!
    sleep 1.2
    ipis=$(perf stat -x, -e irq_vectors:reschedule_entry -C "$PROXY_CPU" sleep "$((secs - 1))" 2>&1 |
      awk -F, '/reschedule_entry/{print $1}')
    wait "$load"
    trips=$(awk '/^rate/{print $2}' "$OUT/ipi-load.txt")
    awk -v l="$label" -v i="$ipis" -v s="$((secs - 1))" -v t="$trips" \
      'BEGIN { printf "| %s | %d | %d | %.2f |\n", l, t, i / s, (t > 0 ? 1000 * i / s / (2 * t) : 0) }'
  }
  count_ipis "direct (nothing on CPU $PROXY_CPU)" --direct
  variants=("default:$bin/coresocks --allow 127.0.0.0/8" "ring-off:$bin/coresocks --allow 127.0.0.0/8 --event-ring off")
  [ -n "${BASELINE:-}" ] && variants+=("baseline:$BASELINE --allow 127.0.0.0/8")
  for variant in "${variants[@]}"; do
    port=$(free_port)
    # shellcheck disable=SC2086 # the command and its flags are meant to split
    taskset -c "$PROXY_CPU" ${variant#*:} --listen "127.0.0.1:$port" --cores 1 \
      --access-log off --log-level warn 2>/dev/null &
    pid=$!
    sleep 0.5
    count_ipis "coresocks ${variant%%:*}" --proxy "127.0.0.1:$port"
    kill -INT "$pid"; wait "$pid" || true
  done
}
if command -v perf >/dev/null; then ipi_table; else echo "perf not found: no IPI count"; fi
independent_bulk
