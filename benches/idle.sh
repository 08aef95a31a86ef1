#!/usr/bin/env bash
# Memory per idle tunnel: a fresh proxy process holds N idle tunnels
# (loadgen idle, targets in a separate `loadgen serve` process), and the
# growth of the proxy's RSS (all its processes, for forking proxies) is
# divided by N. Proxy on PROXY_CPU, load on LOAD_CPU, loopback only.
#
#   benches/idle.sh [N]        # default 9000
#
# Env: PROXY_CPU (1), LOAD_CPU (0), PEERS=0 to skip dante/microsocks.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-9000}
PROXY_CPU=${PROXY_CPU:-1}
LOAD_CPU=${LOAD_CPU:-0}
PEERS=${PEERS:-1}
cargo build --release -q -p coresocks -p loadgen
bin=target/release
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
rss_kib() { # sum of VmRSS over processes whose command line matches $1
  local total=0 p r
  for p in $(pgrep -f "$1"); do
    r=$(awk '/^VmRSS/ {print $2}' "/proc/$p/status" 2>/dev/null || true)
    total=$((total + ${r:-0}))
  done
  echo "$total"
}

measure() { # name pattern -- command (listening on $port)
  local name=$1 pattern=$2; shift 3
  local tport; tport=$(free_port)
  taskset -c "$LOAD_CPU" "$bin/loadgen" serve --listen "127.0.0.1:$tport" >/dev/null 2>&1 &
  local serve=$!
  taskset -c "$PROXY_CPU" "$@" >/dev/null 2>&1 &
  local proxy=$!
  sleep 1
  local before; before=$(rss_kib "$pattern")
  taskset -c "$LOAD_CPU" "$bin/loadgen" idle --proxy "127.0.0.1:$port" --target "127.0.0.1:$tport" \
    --tunnels "$N" --duration 3s >"/tmp/idle-$name.txt" 2>&1 &
  local load=$!
  sleep 2.5 # tunnels open in well under 2 s; loadgen holds them 3 s
  local after; after=$(rss_kib "$pattern")
  wait "$load" || true
  local opened; opened=$(grep -o '[0-9]* opened' "/tmp/idle-$name.txt" || echo "0 opened")
  awk -v n="$name" -v o="$opened" -v b="$before" -v a="$after" -v t="$N" \
    'BEGIN { printf "| %s | %s | %d KiB -> %d KiB | %.2f KiB |\n", n, o, b, a, (a - b) / t }' 
  kill "$proxy" "$serve" 2>/dev/null || true
  pkill -f "$pattern" 2>/dev/null || true
  wait 2>/dev/null || true
}

echo "| proxy | tunnels | proxy RSS | per tunnel |"
echo "|---|---|---|---:|"
for relay in copy auto splice; do
  port=$(free_port)
  measure "coresocks-$relay" "coresocks --listen 127.0.0.1:$port" -- "$bin/coresocks" \
    --listen "127.0.0.1:$port" --cores 1 --allow 127.0.0.0/8 --relay "$relay" --access-log off --log-level warn \
    --max-tunnels-per-core $((N + 100))
done
if [ "$PEERS" = 1 ] && command -v microsocks >/dev/null && command -v danted >/dev/null; then
  port=$(free_port)
  measure microsocks "microsocks -i 127.0.0.1 -p $port" -- microsocks -i 127.0.0.1 -p "$port"
  port=$(free_port)
  conf=$(mktemp)
  cat >"$conf" <<CONF
logoutput: /dev/null
internal: 127.0.0.1 port = $port
external: 127.0.0.1
clientmethod: none
socksmethod: none
user.privileged: root
user.unprivileged: nobody
client pass { from: 127.0.0.0/8 to: 0.0.0.0/0 }
socks pass { from: 127.0.0.0/8 to: 0.0.0.0/0 }
CONF
  measure dante "danted" -- danted -f "$conf" -N 1
  rm -f "$conf"
fi
