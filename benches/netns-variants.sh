#!/usr/bin/env bash
# One proxy setting before and after, in the tuning kit's network-namespace
# lab: brings the lab up (tuning/netns-bench.sh up LAB OPTIONS), starts one
# coresocks per variant in cs-proxy (each its own port, the same base
# flags plus the variant's), one `loadgen serve` in cs-target, and runs
# `loadgen compare` from cs-client over every variant, interleaved round by
# round; the compare's JSON goes to OUT, its table to stdout. The lab is
# taken down at the end, whatever happens. Needs root.
#
#   benches/netns-variants.sh OUT.json 'LAB OPTIONS' 'NAME=FLAGS' ... -- COMPARE ARGS
#
#   benches/netns-variants.sh benches/results/steering-cps.json '--queues 2' \
#       'hash=' 'incoming-cpu=--listen-steering incoming-cpu' \
#       -- --rounds 3 cps --cores 0,1 --concurrency 4 --duration 3
#
# Environment: CORESOCKS_BIN, LOADGEN_BIN (default target/release/...),
# PROXY_CPUS (taskset for every proxy, default all CPUs), SERVE_CPUS
# (default all), LOAD_CPUS (taskset for loadgen, default all).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
CORESOCKS_BIN=${CORESOCKS_BIN:-$repo/target/release/coresocks}
LOADGEN_BIN=${LOADGEN_BIN:-$repo/target/release/loadgen}
all=$(taskset -pc $$ | sed 's/.*: //')
PROXY_CPUS=${PROXY_CPUS:-$all} SERVE_CPUS=${SERVE_CPUS:-$all} LOAD_CPUS=${LOAD_CPUS:-$all}

[ $# -ge 4 ] || { sed -n '2,17p' "$0" >&2; exit 2; }
out=$1 lab=$2
shift 2
variants=()
while [ $# -gt 0 ] && [ "$1" != -- ]; do variants+=("$1"); shift; done
[ "${1:-}" = -- ] || { echo "netns-variants: no -- before the compare arguments" >&2; exit 2; }
shift

# The lab's addresses (tuning/README.md, "A network path in namespaces").
proxy_ip=10.201.1.1 target=10.201.2.2:9000
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  "$repo/tuning/netns-bench.sh" down >/dev/null 2>&1 || true
}
trap cleanup EXIT
# shellcheck disable=SC2086 # the lab options are words
"$repo/tuning/netns-bench.sh" up $lab >/dev/null

logs=$(mktemp -d)
ip netns exec cs-target taskset -c "$SERVE_CPUS" "$LOADGEN_BIN" serve --listen "$target" \
  --cores all >"$logs/serve.log" 2>&1 &
pids+=($!)
proxies=() port=1080
for v in "${variants[@]}"; do
  name=${v%%=*} flags=${v#*=}
  # shellcheck disable=SC2086 # the variant's flags are words
  ip netns exec cs-proxy taskset -c "$PROXY_CPUS" "$CORESOCKS_BIN" --listen "$proxy_ip:$port" \
    --cores all --allow 10.201.2.0/24 --access-log off $flags >"$logs/$name.log" 2>&1 &
  pids+=($!)
  proxies+=(--proxy "$name=$proxy_ip:$port" --proxy-pid "$name=$!")
  port=$((port + 1))
done
for _ in $(seq 100); do
  ready=$( (grep -l "ready" "$logs"/*.log 2>/dev/null || true) | wc -l)
  [ "$ready" -ge $((${#variants[@]} + 1)) ] && break
  sleep 0.1
done
[ "$ready" -ge $((${#variants[@]} + 1)) ] || { tail -n 5 "$logs"/*.log >&2; exit 1; }
for v in "${variants[@]}"; do grep -h "sockets:" "$logs/${v%%=*}.log" >&2 || true; done

# compare's options, then the scenario with the lab's target.
compare_opts=() scenario=()
while [ $# -gt 0 ]; do
  case $1 in
  throughput | cps | latency | udp | idle) scenario=("$@"); break ;;
  *) compare_opts+=("$1"); shift ;;
  esac
done
ip netns exec cs-client taskset -c "$LOAD_CPUS" "$LOADGEN_BIN" compare "${proxies[@]}" \
  "${compare_opts[@]}" --json "$out" "${scenario[@]}" --target "$target" --quiet
