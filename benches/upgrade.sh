#!/usr/bin/env bash
# Connections lost across a restart: loadgen's connection loop (cps, 4
# loops, 6 s) through coresocks, swapped for a new process 2 s in, once
# with --upgrade-socket (the new one takes the listeners over) and once as
# a plain restart (SIGTERM, then start). Proxy on PROXY_CPU, load on
# LOAD_CPU, loopback only.
#
#   benches/upgrade.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
cargo build --release -q -p coresocks -p loadgen
bin=$PWD/target/release
dir=$(mktemp -d /tmp/coresocks-upgrade-bench.XXXX)
trap 'pkill -f "$dir" 2>/dev/null || true; rm -rf "$dir"' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

proxy() { # port extra-args...
  local port=$1
  shift
  taskset -c "$PROXY_CPU" "$bin/coresocks" --cores 1 --listen "127.0.0.1:$port" \
    --allow 127.0.0.0/8 --access-log off --log-level warn "$@" &
}

run() { # mode
  local mode=$1 port extra=()
  port=$(free_port)
  [ "$mode" = upgrade ] && extra=(--upgrade-socket "$dir/upgrade.sock")
  proxy "$port" "${extra[@]}"
  local old=$!
  sleep 1
  taskset -c "$LOAD_CPU" "$bin/loadgen" cps --proxy "127.0.0.1:$port" --duration 6s --warmup 0 \
    --concurrency 4 --json "$dir/$mode.json" >/dev/null 2>&1 &
  local load=$!
  sleep 2
  local t0 t1
  t0=$(date +%s%N)
  if [ "$mode" = restart ]; then
    kill -TERM "$old"
    wait "$old" || true
  fi
  proxy "$port" "${extra[@]}"
  local new=$!
  wait "$old" 2>/dev/null || true
  t1=$(date +%s%N)
  wait "$load" || true
  kill "$new"
  wait "$new" 2>/dev/null || true
  python3 - "$dir/$mode.json" "$mode" $(((t1 - t0) / 1000000)) <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
r, e = d["result"], d["errors"]
causes = ", ".join(f"{k} {v}" for k, v in e["by_cause"].items()) or "-"
print(f"| {sys.argv[2]} | {r['attempts_total']} | {e['total']} ({causes}) | {sys.argv[3]} ms |")
PY
}

echo "| swap | connections tried | failed | old process gone after |"
echo "|---|---:|---:|---:|"
run upgrade
run restart
