#!/usr/bin/env bash
# Where the connection rate goes between direct and the proxy: interleaved
# rounds of `loadgen cps` (FIN close) at a low and a high concurrency, for
#   direct        client and target on LOAD_CPU (no hand-over between CPUs)
#   direct-split  client on LOAD_CPU, target on PROXY_CPU (hand-overs, no proxy)
#   coresocks     client and target on LOAD_CPU, proxy (--cores 1) on PROXY_CPU
# with the idle share of each CPU during the window (from /proc/stat). With
# HALT_POLL="0 200000" the whole table repeats per value of the guest's
# cpuidle-haltpoll window (/sys/module/haltpoll/parameters/guest_halt_poll_ns,
# a KVM guest's knob; restored at the end).
#
#   benches/cps-wakeups.sh
#
# Env: ROUNDS (3), DURATION (3s), CONCURRENCY ("4 16"), PROXY_CPU (1),
#      LOAD_CPU (0), HALT_POLL (unset: leave it as it is).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3} DURATION=${DURATION:-3s} CONCURRENCY=${CONCURRENCY:-4 16}
PROXY_CPU=${PROXY_CPU:-1} LOAD_CPU=${LOAD_CPU:-0}
bin=target/release
knob=/sys/module/haltpoll/parameters/guest_halt_poll_ns
[ -x "$bin/coresocks" ] && [ -x "$bin/loadgen" ] || cargo build --release --bins -q
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
taskset -c "$PROXY_CPU" "$bin/coresocks" --listen "127.0.0.1:$port" --cores 1 \
  --allow 127.0.0.0/8 --access-log off --log-level warn &
proxy=$!
original=$(cat "$knob" 2>/dev/null || true)
cleanup() { kill -INT "$proxy" 2>/dev/null; wait "$proxy" 2>/dev/null || true
  [ -n "$original" ] && echo "$original" >"$knob" 2>/dev/null || true; }
trap cleanup EXIT
sleep 0.5

idle() { awk -v c="cpu$1" '$1 == c { print $5 + $6 }' /proc/stat; }
run() { # path concurrency -> "conn/s idle%(load cpu) idle%(proxy cpu)"
  local args i0 i1 j0 j1 rate secs=${DURATION%s}
  case $1 in
    direct) args=(--direct --cores "$LOAD_CPU-$LOAD_CPU" --target-cores "$LOAD_CPU-$LOAD_CPU") ;;
    direct-split) args=(--direct --cores "$LOAD_CPU-$LOAD_CPU" --target-cores "$PROXY_CPU-$PROXY_CPU") ;;
    coresocks) args=(--proxy "127.0.0.1:$port" --cores "$LOAD_CPU-$LOAD_CPU") ;;
  esac
  i0=$(idle "$LOAD_CPU") i1=$(idle "$PROXY_CPU")
  rate=$("$bin/loadgen" cps "${args[@]}" --concurrency "$2" --warmup 0s \
    --duration "$DURATION" --quiet | awk '/^conn\/s/{print $2}')
  j0=$(idle "$LOAD_CPU") j1=$(idle "$PROXY_CPU")
  # /proc/stat counts in USER_HZ (100/s)
  awk -v r="$rate" -v a=$((j0 - i0)) -v b=$((j1 - i1)) -v s="$secs" \
    'BEGIN { printf "%d %.0f %.0f\n", r, a / s, b / s }'
}
median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

for poll in ${HALT_POLL:-keep}; do
  [ "$poll" != keep ] && echo "$poll" >"$knob"
  echo "## cps, FIN close; guest_halt_poll_ns $(cat "$knob" 2>/dev/null || echo n/a); medians of $ROUNDS rounds of $DURATION"
  echo "| concurrency | path | conn/s | x direct | idle % CPU $LOAD_CPU | idle % CPU $PROXY_CPU |"
  echo "|---:|---|---:|---:|---:|---:|"
  for c in $CONCURRENCY; do
    declare -A rates=() idle0=() idle1=()
    for ((r = 1; r <= ROUNDS; r++)); do
      for p in direct direct-split coresocks; do
        read -r rate a b < <(run "$p" "$c")
        rates[$p]+="$rate " idle0[$p]+="$a " idle1[$p]+="$b "
      done
    done
    d=$(tr ' ' '\n' <<<"${rates[direct]}" | grep . | median)
    for p in direct direct-split coresocks; do
      m=$(tr ' ' '\n' <<<"${rates[$p]}" | grep . | median)
      awk -v c="$c" -v p="$p" -v m="$m" -v d="$d" \
        -v a="$(tr ' ' '\n' <<<"${idle0[$p]}" | grep . | median)" \
        -v b="$(tr ' ' '\n' <<<"${idle1[$p]}" | grep . | median)" \
        'BEGIN { printf "| %s | %s | %d | %.2f | %d | %d |\n", c, p, m, m / d, a, b }'
    done
    unset rates idle0 idle1
  done
done
