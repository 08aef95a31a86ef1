#!/usr/bin/env bash
# The cost of GSSAPI protection (RFC 1961) per GiB: one tunnel through
# coresocks at clear, integrity and confidentiality, up and down, beside
# the same proxy without authentication. A throw-away Kerberos realm on
# loopback (as the tests make it) issues loadgen's ticket; the proxy runs
# one core on PROXY_CPU, loadgen and its targets on LOAD_CPU.
#
#   benches/gssapi.sh                 # ROUNDS=3 DURATION=3s
#
# Prints Gbit/s and the proxy's CPU seconds per GiB relayed (the median of
# ROUNDS runs each). Needs krb5-kdc, krb5-admin-server, krb5-user.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-3s}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
cargo build --release -q -p coresocks -p loadgen
bin=$PWD/target/release
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

realm=CORESOCKS.BENCH
dir=$(mktemp -d /tmp/coresocks-gssapi-bench.XXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT
kdc_port=$(free_port)
cat >"$dir/krb5.conf" <<EOF
[libdefaults]
  default_realm = $realm
  dns_lookup_kdc = false
  dns_lookup_realm = false
  dns_canonicalize_hostname = false
  rdns = false
[realms]
  $realm = {
    kdc = 127.0.0.1:$kdc_port
  }
EOF
cat >"$dir/kdc.conf" <<EOF
[kdcdefaults]
  kdc_listen = 127.0.0.1:$kdc_port
  kdc_tcp_listen = 127.0.0.1:$kdc_port
[realms]
  $realm = {
    database_name = $dir/principal
    key_stash_file = $dir/stash
  }
EOF
export KRB5_CONFIG=$dir/krb5.conf KRB5_KDC_PROFILE=$dir/kdc.conf KRB5CCNAME=FILE:$dir/ccache KRB5RCACHEDIR=$dir
kdb5_util create -s -r "$realm" -P bench-master >/dev/null
kadmin.local -q "addprinc -randkey rcmd/127.0.0.1" >/dev/null 2>&1
kadmin.local -q "ktadd -k $dir/proxy.keytab rcmd/127.0.0.1" >/dev/null 2>&1
kadmin.local -q "addprinc -pw bench-password bench" >/dev/null 2>&1
krb5kdc -n &
pids+=($!)
sleep 0.5
echo bench-password | kinit bench >/dev/null

port=$(free_port)
taskset -c "$PROXY_CPU" "$bin/coresocks" --cores 1 --listen "127.0.0.1:$port" --allow 127.0.0.0/8 \
  --gssapi-keytab "$dir/proxy.keytab" --gssapi-protection clear --access-log off --log-level warn &
proxy=$!
pids+=($proxy)
port2=$(free_port)
taskset -c "$PROXY_CPU" "$bin/coresocks" --cores 1 --listen "127.0.0.1:$port2" --allow 127.0.0.0/8 \
  --access-log off --log-level warn &
plain=$!
pids+=($plain)
sleep 1

run() { # label port pid direction [--gssapi LEVEL]
  local label=$1 p=$2 pid=$3 dir_=$4
  shift 4
  local gbit=() cpu=()
  for _ in $(seq "$ROUNDS"); do
    taskset -c "$LOAD_CPU" "$bin/loadgen" throughput --proxy "127.0.0.1:$p" --direction "$dir_" \
      --duration "$DURATION" --warmup 1s --proxy-pid "$pid" --json "$dir/out.json" "$@" >/dev/null
    read -r g c < <(python3 -c '
import json, sys
d = json.load(open(sys.argv[1]))
r = d["result"]
print("%.2f %.2f" % (r["gbit_s_up"] + r["gbit_s_down"], d["proxy_process"]["cpu_s_per_gib"]))' "$dir/out.json")
    gbit+=("$g")
    cpu+=("$c")
  done
  median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
  echo "| $label | $dir_ | $(median "${gbit[@]}") | $(median "${cpu[@]}") |"
}

echo "| path | direction | Gbit/s | proxy CPU s/GiB |"
echo "|---|---|---:|---:|"
for d in up down; do
  run "no auth" "$port2" "$plain" "$d"
  run "GSSAPI clear" "$port" "$proxy" "$d" --gssapi clear
  run "GSSAPI integrity" "$port" "$proxy" "$d" --gssapi integrity
  run "GSSAPI confidentiality" "$port" "$proxy" "$d" --gssapi confidentiality
done
