#!/usr/bin/env bash
# 1-stream bulk through the proxy, measured by clients and servers that are
# not ours, beside direct: `curl` downloading a large file from a local
# `nginx` (sendfile), and `iperf3 -R` (download) through `proxychains4`.
# loadgen shares the proxy's event design and once hid a bulk regression of
# the proxy's; this probe cannot.
#
#   benches/bulk-independent.sh [VARIANT...]
#
# Each VARIANT is "NAME=COMMAND ARGS" (a coresocks-like SOCKS5 server that
# takes --listen ADDR); with none: "coresocks=target/release/coresocks".
# The proxy runs with --cores 1 pinned to PROXY_CPU, curl/iperf3/nginx on
# LOAD_CPU, loopback only. Rounds are interleaved (direct, each variant,
# repeat); the table gives the median Gbit/s, the ratio to direct's median
# and the proxy's CPU seconds (user + system, from /proc) per GiB moved.
#
# Env: ROUNDS (3), SIZE_MIB (2048, the curl file), IPERF_SECS (4),
#      PROXY_CPU (1), LOAD_CPU (0), JSON=FILE (also write the medians as
#      JSON). The served file, nginx's and proxychains4's configuration and
#      the raw outputs live in a scratch directory removed at exit (the file
#      alone is SIZE_MIB), so a results directory never holds them.
# Needs curl, nginx, iperf3, proxychains4 (Debian packages of those names).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
SIZE_MIB=${SIZE_MIB:-2048}
IPERF_SECS=${IPERF_SECS:-4}
PROXY_CPU=${PROXY_CPU:-1}
LOAD_CPU=${LOAD_CPU:-0}
for tool in curl nginx iperf3 proxychains4; do
  command -v "$tool" >/dev/null || {
    echo "bulk-independent: $tool not found (apt-get install curl nginx iperf3 proxychains4)" >&2
    exit 1
  }
done
variants=("$@")
[ ${#variants[@]} -gt 0 ] || variants=("coresocks=target/release/coresocks")

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
pids=()
work=$(mktemp -d "${TMPDIR:-/tmp}/bulk-independent.XXXXXX")
chmod 755 "$work" # nginx's worker runs as another user
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  # What a proxy or nginx complained of is all that outlives the scratch.
  for f in "$work"/*.log "$work"/nginx.err; do
    [ -s "$f" ] && { echo "--- $(basename "$f")" && cat "$f"; } >&2
  done
  rm -rf "$work"
}
trap cleanup EXIT

# nginx serving one file of SIZE_MIB.
web=$work/www
mkdir -p "$web"
[ "$(stat -c %s "$web/big" 2>/dev/null || echo 0)" = $((SIZE_MIB << 20)) ] ||
  head -c $((SIZE_MIB << 20)) /dev/zero >"$web/big"
nginx_port=$(free_port)
cat >"$work/nginx.conf" <<CONF
daemon off;
worker_processes 1;
pid $work/nginx.pid;
error_log $work/nginx.err;
events { worker_connections 64; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  server { listen 127.0.0.1:$nginx_port; root $web; }
}
CONF
taskset -c "$LOAD_CPU" nginx -c "$work/nginx.conf" -p "$work" &
pids+=($!)
iperf_port=$(free_port)
taskset -c "$LOAD_CPU" iperf3 -s -B 127.0.0.1 -p "$iperf_port" >/dev/null 2>&1 &
pids+=($!)
sleep 0.5

# Starts each variant on its own port, pinned; remembers its pid and port.
declare -A vpid vport
for v in "${variants[@]}"; do
  name=${v%%=*}
  port=$(free_port)
  # shellcheck disable=SC2086 # the command and its flags are meant to split
  taskset -c "$PROXY_CPU" ${v#*=} --listen "127.0.0.1:$port" --cores 1 --allow 127.0.0.0/8 \
    --access-log off --log-level warn 2>"$work/$name.log" &
  vpid[$name]=$!
  vport[$name]=$port
  pids+=($!)
done
sleep 0.5

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)

# One measurement: prints "GBITS CPU_S_PER_GIB" (CPU "-" for direct).
measure() { # tool name
  local tool=$1 name=$2 before after gbits bytes
  local pid=${vpid[$name]:-}
  [ -n "$pid" ] && before=$(cpu_ticks "$pid")
  case $tool in
    curl)
      local proxy=()
      [ -n "$pid" ] && proxy=(--socks5-hostname "127.0.0.1:${vport[$name]}")
      read -r bytes secs < <(taskset -c "$LOAD_CPU" curl -sf -o /dev/null "${proxy[@]}" \
        -w '%{size_download} %{time_total}\n' "http://127.0.0.1:$nginx_port/big" || echo 0 0)
      [ "$bytes" = $((SIZE_MIB << 20)) ] || {
        echo "bulk-independent: curl through $name got $bytes of $((SIZE_MIB << 20)) bytes" >&2
        exit 1
      }
      gbits=$(awk -v b="$bytes" -v s="$secs" 'BEGIN { printf "%.2f", b * 8 / s / 1e9 }')
      ;;
    iperf3)
      local pre=()
      if [ -n "$pid" ]; then
        cat >"$work/proxychains.conf" <<CONF
strict_chain
quiet_mode
[ProxyList]
socks5 127.0.0.1 ${vport[$name]}
CONF
        pre=(proxychains4 -q -f "$work/proxychains.conf")
      fi
      taskset -c "$LOAD_CPU" "${pre[@]}" iperf3 -c 127.0.0.1 -p "$iperf_port" -R -t "$IPERF_SECS" \
        -J >"$work/iperf.json"
      read -r gbits bytes < <(python3 -c '
import json, sys
e = json.load(open(sys.argv[1]))["end"]["sum_received"]
print("%.2f %d" % (e["bits_per_second"] / 1e9, e["bytes"]))' "$work/iperf.json")
      ;;
  esac
  if [ -n "$pid" ]; then
    after=$(cpu_ticks "$pid")
    awk -v g="$gbits" -v t=$((after - before)) -v hz="$hz" -v b="$bytes" \
      'BEGIN { printf "%s %.2f\n", g, t / hz / (b / 1073741824) }'
  else
    echo "$gbits -"
  fi
}

# One fetch first, so that every measured round reads a warm page cache.
curl -sf -o /dev/null "http://127.0.0.1:$nginx_port/big" ||
  { echo "bulk-independent: nginx does not serve the file" >&2 && exit 1; }

names=(direct)
for v in "${variants[@]}"; do names+=("${v%%=*}"); done
declare -A results
for tool in curl iperf3; do
  for _ in $(seq "$ROUNDS"); do
    for name in "${names[@]}"; do
      results[$tool/$name]+="$(measure "$tool" "$name");"
    done
  done
done

median() { sort -n | awk '{ a[NR] = $1 } END { print (NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2) }'; }
echo "## 1-stream bulk, independent clients: median of $ROUNDS interleaved rounds"
echo "proxy on CPU $PROXY_CPU (--cores 1), curl/iperf3/nginx on CPU $LOAD_CPU; CPU = proxy user+system s per GiB"
echo
echo "| client | $(printf '%s | ' "${names[@]}")"
echo "|---|$(printf -- '---:|%.0s' "${names[@]}")"
json="{"
for tool in curl iperf3; do
  direct=$(tr ';' '\n' <<<"${results[$tool/direct]}" | awk 'NF{print $1}' | median)
  row="| $tool |"
  for name in "${names[@]}"; do
    g=$(tr ';' '\n' <<<"${results[$tool/$name]}" | awk 'NF{print $1}' | median)
    if [ "$name" = direct ]; then
      row+=" $g Gbit/s |"
    else
      c=$(tr ';' '\n' <<<"${results[$tool/$name]}" | awk 'NF{print $2}' | median)
      row+=" $g ($(awk -v g="$g" -v d="$direct" 'BEGIN { printf "%.2fx", g / d }'), $c s/GiB) |"
      json+="\"$tool/$name\":{\"gbits\":$g,\"x_direct\":$(awk -v g="$g" -v d="$direct" 'BEGIN { printf "%.3f", g / d }'),\"cpu_s_per_gib\":$c},"
    fi
  done
  json+="\"$tool/direct\":{\"gbits\":$direct},"
  echo "$row"
done
echo
echo "raw rounds (Gbit/s CPU):"
for k in "${!results[@]}"; do echo "  $k: ${results[$k]}"; done | sort
[ -n "${JSON:-}" ] && echo "${json%,}}" >"$JSON"
exit 0
