#!/usr/bin/env bash
# What access rules cost a connection-rate benchmark: coresocks with one
# loopback allow (--allow 127.0.0.0/8) beside coresocks whose request must
# pass N rules that do not match (client networks, users, destination
# networks, domains, port ranges) before the last one allows loopback, and
# a direct connection; loadgen cps in interleaved rounds, medians and
# ratios. Proxies pinned to PROXY_CPU, loadgen and its targets to LOAD_CPU.
#
#   benches/policy-cps.sh            # N=100
#   RULES=1000 ROUNDS=5 benches/policy-cps.sh
set -euo pipefail
cd "$(dirname "$0")/.."
RULES=${RULES:-100}
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-4s}
PROXY_CPU=${PROXY_CPU:-1}
LOAD_CPU=${LOAD_CPU:-0}
OUT=${OUT:-bench-out}
mkdir -p "$OUT"

cargo build --release -q -p coresocks -p loadgen
bin=target/release
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

rules="$OUT/rules-$RULES.toml"
: >"$rules"
for ((i = 0; i < RULES; i++)); do
  cat >>"$rules" <<RULE
[[rule]]
action = "$([ $((i % 2)) = 0 ] && echo deny || echo allow)"
clients = ["10.$((i / 256 % 256)).$((i % 256)).0/24"]
to = ["172.$((16 + i / 256 % 16)).$((i % 256)).0/24", ".zone$i.example"]
ports = ["$((1000 + i))-$((1010 + i))"]

RULE
done
printf '[[rule]]\naction = "allow"\nto = ["127.0.0.0/8"]\n' >>"$rules"

common=(--cores 1 --access-log off --log-level warn)
port_a=$(free_port)
taskset -c "$PROXY_CPU" "$bin/coresocks" --listen "127.0.0.1:$port_a" "${common[@]}" \
  --allow 127.0.0.0/8 &
pids+=($!); pid_a=$!
port_b=$(free_port)
taskset -c "$PROXY_CPU" "$bin/coresocks" --listen "127.0.0.1:$port_b" "${common[@]}" \
  --config "$rules" &
pids+=($!); pid_b=$!
sleep 1

echo "## cps, coresocks with 1 rule vs $((RULES + 1)) rules, $ROUNDS rounds of $DURATION"
taskset -c "$LOAD_CPU" "$bin/loadgen" compare --direct \
  --proxy "rules-1=127.0.0.1:$port_a" --proxy "rules-$((RULES + 1))=127.0.0.1:$port_b" \
  --proxy-pid "rules-1=$pid_a" --proxy-pid "rules-$((RULES + 1))=$pid_b" \
  --rounds "$ROUNDS" --json "$OUT/policy-cps-$RULES.json" cps --duration "$DURATION" --warmup 1s
