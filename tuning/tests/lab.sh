#!/usr/bin/env bash
# Test of tuning/netns-bench.sh and tuning/impair.py: builds the lab, checks
# its namespaces, links, queues, addresses, isolation and the forwarder's
# delay, runs short loadgen loads through it, and checks that down, a
# second up over a half-built lab, and a failure injected during up all
# leave nothing behind. Needs root, iproute2, python3 and built binaries
# (CORESOCKS_BIN, LOADGEN_BIN; default target/release/...). About 30 s.
# Prints each check; exits non-zero on the first failure (after cleaning up).
#
#   tuning/tests/lab.sh
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
lab=$here/../netns-bench.sh
export LAB_STATE=${LAB_STATE:-/run/coresocks-lab}
export LAB_LOGS=${LAB_LOGS:-/tmp/coresocks-lab}
tmp=$(mktemp -d /tmp/lab-test.XXXXXX)
DELAY_MS=2
checks=0 started=$SECONDS

cleanup() {
  local rc=$?
  "$lab" down >/dev/null 2>&1 || true
  [ -n "${stray:-}" ] && kill "$stray" 2>/dev/null
  if [ "$rc" = 0 ]; then rm -rf "$tmp"; else echo "lab test: FAILED (rc $rc); outputs in $tmp" >&2; fi
  exit "$rc"
}
trap cleanup EXIT

pass() { checks=$((checks + 1)); echo "ok   $*"; }
fail() { echo "FAIL $*" >&2; exit 1; }
check() { # description command...
  local what=$1; shift
  if "$@"; then pass "$what"; else fail "$what"; fi
}
jq_py() { # file expression (Python, `d` is the document): prints the value
  python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$1" "$2"
}
json_true() { [ "$(jq_py "$1" "$2")" = True ]; }
not() { ! "$@"; }
quiet() { "$@" >/dev/null 2>&1; }
gone() { # pid: no such process, or only a zombie
  local st
  st=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1) || return 0
  [ -z "$st" ] || [ "$st" = Z ]
}

# Nothing of the lab exists: none of its namespaces (other cs-* ones are
# not ours to judge), no process of ours.
leftovers() {
  local out=""
  out+=$(ip netns list | awk '{print $1}' | grep -xE 'cs-(client|proxy|target|wan)' || true)
  # Processes whose arguments name the lab's addresses or the forwarder.
  local p
  for p in /proc/[0-9]*; do
    [ "${p#/proc/}" = $$ ] && continue
    if { tr '\0' ' ' <"$p/cmdline"; } 2>/dev/null | grep -qE '10\.201\.[123]\.|impair\.py'; then
      out+=" pid ${p#/proc/}: $({ tr '\0' ' ' <"$p/cmdline"; } 2>/dev/null)"
    fi
  done
  for l in c-proxy p-client p-target t-proxy c-direct t-direct w-proxy w-target; do
    ip link show "$l" >/dev/null 2>&1 && out+=" root-ns link $l"
  done
  [ -d "$LAB_STATE" ] && out+=" state dir $LAB_STATE"
  echo "$out"
}
clean() { local l; l=$(leftovers); [ -z "$l" ] || { echo "  left: $l" >&2; return 1; }; }

ns_has_queues() { # ns dev n
  ip -n "$1" -d link show "$2" | grep -q "numtxqueues $3 numrxqueues $3" &&
    [ "$(ip netns exec "$1" ls "/sys/class/net/$2/queues" | grep -c '^tx-')" = "$3" ]
}
ns_has_addr() { ip -n "$1" -4 -o addr show dev "$2" | grep -q " $3 "; }
has_tbf() { tc -n "$1" qdisc show dev "$2" | grep -q '^qdisc tbf'; }
tcp_connect() { # ns addr port [bind-device] [timeout]: 0 when something answered (connected or refused)
  ip netns exec "$1" python3 - "$2" "$3" "${4:-}" "${5:-1}" <<'EOF'
import socket, sys
addr, port, dev, timeout = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
s = socket.socket()
if dev:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, dev.encode())
s.settimeout(timeout)
try:
    s.connect((addr, port))
except ConnectionRefusedError:
    sys.exit(0)
except OSError as e:
    print(f"  connect {addr}:{port}{' via ' + dev if dev else ''}: {e}", file=sys.stderr)
    sys.exit(1)
sys.exit(0)
EOF
}
min_rtt() { "$lab" ping "$1" "$2" "${3:-5}" | tr ' ' '\n' | sort -n | head -1; }
ge() { python3 -c 'import sys; sys.exit(0 if float(sys.argv[1]) >= float(sys.argv[2]) else 1)' "$1" "$2"; }
lt() { python3 -c 'import sys; sys.exit(0 if float(sys.argv[1]) < float(sys.argv[2]) else 1)' "$1" "$2"; }

[ "$(id -u)" = 0 ] || fail "needs root"

echo "== clean slate"
"$lab" down 2>/dev/null
check "down on nothing leaves nothing" clean

echo "== run brings the lab up (4 queues, 2gbit, ${DELAY_MS}ms delay, loss 0) and keeps it"
"$lab" run --queues 4 --rate 2gbit --delay "${DELAY_MS}ms" --loss 0 --keep --json "$tmp/tp.json" \
  -- throughput --streams 2 --duration 1 --warmup 200ms >"$tmp/tp.out" 2>&1 || { cat "$tmp/tp.out"; fail "run throughput"; }
check "throughput JSON: schema, proxied, bytes_up > 0, no errors" json_true "$tmp/tp.json" \
  'd["schema"] == "loadgen-result-v1" and d["path"]["mode"] == "proxy" and d["result"]["bytes_up"] > 0 and d["errors"]["total"] == 0'
tp_delay=$(jq_py "$tmp/tp.json" 'round(d["result"]["gbit_s_total"], 3)')
check "status says up" quiet "$lab" status

echo "== namespaces, links, queues, addresses"
for ns in cs-client cs-proxy cs-target cs-wan; do
  check "namespace $ns exists" test -e "/var/run/netns/$ns"
done
for nd in cs-client:c-proxy cs-client:c-direct cs-proxy:p-client cs-proxy:p-target \
  cs-target:t-proxy cs-target:t-direct cs-wan:w-proxy cs-wan:w-target cs-wan:w-cdirect cs-wan:w-tdirect; do
  check "${nd%%:*} ${nd#*:} has 4 tx and 4 rx queues" ns_has_queues "${nd%%:*}" "${nd#*:}" 4
done
check "cs-client c-proxy 10.201.1.2/30" ns_has_addr cs-client c-proxy 10.201.1.2/30
check "cs-proxy p-client 10.201.1.1/30" ns_has_addr cs-proxy p-client 10.201.1.1/30
check "cs-proxy p-target 10.201.2.1/30" ns_has_addr cs-proxy p-target 10.201.2.1/30
check "cs-target t-proxy 10.201.2.2/30" ns_has_addr cs-target t-proxy 10.201.2.2/30
check "cs-client c-direct 10.201.3.2/30" ns_has_addr cs-client c-direct 10.201.3.2/30
check "cs-target t-direct 10.201.3.1/30" ns_has_addr cs-target t-direct 10.201.3.1/30
for nd in cs-client:c-proxy cs-proxy:p-client cs-proxy:p-target cs-target:t-proxy cs-client:c-direct cs-target:t-direct; do
  check "${nd%%:*} ${nd#*:} has tbf" has_tbf "${nd%%:*}" "${nd#*:}"
done
fpid=$(cut -d' ' -f1 "$LAB_STATE/impair.pid")
check "forwarder (pid $fpid) runs in cs-wan" grep -qx "$fpid" <(ip netns pids cs-wan)

echo "== isolation: the client reaches the target only through the proxy or the direct path"
check "client's route to 10.201.2.2 is the direct link" \
  bash -c 'ip -n cs-client route get 10.201.2.2 | grep -q "dev c-direct"'
check "client has no route to the proxy's egress 10.201.2.1" \
  not quiet ip -n cs-client route get 10.201.2.1
check "client cannot reach 10.201.2.2 over the proxy link (no route)" \
  not quiet tcp_connect cs-client 10.201.2.2 9 c-proxy 1
ip -n cs-client route add 10.201.2.0/30 via 10.201.1.1 dev c-proxy metric 50
check "with a route via the proxy, the proxy does not forward (ip_forward 0)" \
  not quiet tcp_connect cs-client 10.201.2.2 9 c-proxy 1
ip -n cs-client route del 10.201.2.0/30 via 10.201.1.1 dev c-proxy metric 50
check "proxy ns forwarding is off" test "$(ip netns exec cs-proxy cat /proc/sys/net/ipv4/ip_forward)" = 0
check "client reaches 10.201.2.2 over the direct path" tcp_connect cs-client 10.201.2.2 9

echo "== delay"
rtt_pt=$(min_rtt cs-proxy 10.201.2.2 5)
check "RTT proxy -> target ${rtt_pt} ms >= 2 x ${DELAY_MS} ms" ge "$rtt_pt" $((2 * DELAY_MS))
rtt_cd=$(min_rtt cs-client 10.201.2.2 3)
check "RTT client -> target over the direct path ${rtt_cd} ms >= 2 x ${DELAY_MS} ms" ge "$rtt_cd" $((2 * DELAY_MS))
rtt_cp=$(min_rtt cs-client 10.201.1.1 3)
check "RTT client -> proxy ${rtt_cp} ms < ${DELAY_MS} ms (not impaired)" lt "$rtt_cp" "$DELAY_MS"

echo "== cps and compare through the delayed lab"
"$lab" run --json "$tmp/cps.json" -- cps --concurrency 4 --duration 1 --warmup 200ms >"$tmp/cps.out" 2>&1 ||
  { cat "$tmp/cps.out"; fail "run cps"; }
check "cps JSON: connections > 0, no errors" json_true "$tmp/cps.json" \
  'd["scenario"] == "cps" and d["result"]["connections"] > 0 and d["errors"]["total"] == 0'
cps_delay=$(jq_py "$tmp/cps.json" 'round(d["result"]["connections_per_s"])')
check "the lab that run found stays up" quiet "$lab" status
"$lab" run --json "$tmp/cmp.json" -- compare --direct --rounds 1 --gap 0s throughput --duration 1 --warmup 200ms \
  >"$tmp/cmp.out" 2>&1 || { cat "$tmp/cmp.out"; fail "run compare"; }
check "compare JSON: direct and coresocks both moved data without errors" json_true "$tmp/cmp.json" \
  'sorted(r["name"] for r in d["runs"]) == ["coresocks", "direct"] and all(r["metrics"]["Gbit/s"] > 0 and r["errors"] == 0 for r in d["runs"])'
sleep 1.1 # the forwarder rewrites its counters every second
st=$LAB_LOGS/impair-stats.json
check "forwarder carried 64 KiB GSO frames proxy -> target" json_true "$st" \
  'd["directions"]["w-proxy->w-target"]["gso_frames"] > 0 and d["directions"]["w-proxy->w-target"]["max_frame"] > 9000'
check "forwarder carried the direct path" json_true "$st" 'd["directions"]["w-cdirect->w-tdirect"]["frames_in"] > 0'
check "forwarder: no send errors, no drops (loss 0)" json_true "$st" \
  'all(c["send_errors"] == 0 and c["dropped_loss"] == 0 and c["dropped_limit"] == 0 for c in d["directions"].values())'
frames=$(jq_py "$st" 'sum(c["frames_in"] for c in d["directions"].values())')
late_us=$(jq_py "$st" 'round(sum(c["late_us_sum"] for c in d["directions"].values()) / max(1, sum(c["frames_out"] for c in d["directions"].values())))')
fpid=$(cut -d' ' -f1 "$LAB_STATE/impair.pid")
ip netns del cs-target
for _ in $(seq 30); do gone "$fpid" && break; sleep 0.1; done
check "deleting cs-target (its veths) makes the forwarder exit by itself" gone "$fpid"

echo "== down"
"$lab" down
check "down leaves no namespace, link, process or state" clean
check "status says not up" not quiet "$lab" status

echo "== up over a half-built lab (2 queues, no delay, no direct path)"
ip netns add cs-client
ip netns add cs-proxy
ip -n cs-client link add c-proxy type veth peer name p-client netns cs-proxy
ip netns add cs-wan
ip netns exec cs-proxy sleep 300 &
stray=$!
mkdir -p "$LAB_STATE" && echo "999999 0" >"$LAB_STATE/proxy.pid"
"$lab" up --queues 2 --no-direct >"$tmp/up2.out" 2>&1 || { cat "$tmp/up2.out"; fail "up over a half-built lab"; }
check "up over a half-built lab succeeds and the lab is up" quiet "$lab" status
check "the stray process in cs-proxy is gone" gone "$stray"
wait "$stray" 2>/dev/null || true
stray=
check "no cs-wan without delay or loss" test ! -e /var/run/netns/cs-wan
check "cs-proxy p-target has 2 queues" ns_has_queues cs-proxy p-target 2
check "cs-target t-proxy 10.201.2.2/30 (veth straight from the proxy)" ns_has_addr cs-target t-proxy 10.201.2.2/30
check "without the direct path the client has no route to the target" \
  not quiet tcp_connect cs-client 10.201.2.2 9 '' 1
"$lab" down
check "down again leaves nothing" clean

echo "== run owns the lab it brings up"
"$lab" run --queues 2 --json "$tmp/plain.json" -- throughput --streams 2 --duration 1 --warmup 200ms \
  >"$tmp/plain.out" 2>&1 || { cat "$tmp/plain.out"; fail "run without delay"; }
check "plain throughput JSON: bytes_up > 0, no errors" json_true "$tmp/plain.json" \
  'd["result"]["bytes_up"] > 0 and d["errors"]["total"] == 0'
tp_plain=$(jq_py "$tmp/plain.json" 'round(d["result"]["gbit_s_total"], 3)')
check "run without --keep took its lab down" clean

echo "== loss"
"$lab" up --delay 1ms --loss 20% --seed 3 --no-direct >"$tmp/loss.out" 2>&1 || { cat "$tmp/loss.out"; fail "up with loss"; }
# 1000 datagrams proxy -> target (a closed port: nothing answers but ICMP).
ip netns exec cs-proxy python3 -c '
import socket, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(1000):
    s.sendto(b"x" * 32, ("10.201.2.2", 9))
    if i % 100 == 99: time.sleep(0.002)
'
pid=$(cut -d' ' -f1 "$LAB_STATE/impair.pid"); kill -USR1 "$pid"; sleep 0.3
check "20% loss drops 120..280 of 1000+ frames proxy -> target" json_true "$LAB_LOGS/impair-stats.json" \
  '(lambda c: c["frames_in"] >= 1000 and 120 <= c["dropped_loss"] <= 280 + (c["frames_in"] - 1000) // 4)(d["directions"]["w-proxy->w-target"])'
loss_seen=$(jq_py "$LAB_LOGS/impair-stats.json" '"%d of %d" % (d["directions"]["w-proxy->w-target"]["dropped_loss"], d["directions"]["w-proxy->w-target"]["frames_in"])')
"$lab" down
check "down after the loss run leaves nothing" clean

echo "== failures leave nothing behind"
for step in links verify; do
  if LAB_FAIL_AT=$step "$lab" up --delay 1ms >"$tmp/fail-$step.out" 2>&1; then fail "up with LAB_FAIL_AT=$step succeeded"; fi
  grep -q "injected failure at step '$step'" "$tmp/fail-$step.out" || { cat "$tmp/fail-$step.out"; fail "no injected failure at $step"; }
  check "failure at up step '$step' (forwarder $([ $step = verify ] && echo running || echo not started)) leaves nothing" clean
done
if "$lab" run --proxy-args '--no-such-flag' -- cps --duration 200ms >"$tmp/fail-run.out" 2>&1; then fail "run with a bad proxy flag succeeded"; fi
check "a proxy that fails to start in run leaves nothing" clean

echo "lab test: $checks checks passed in $((SECONDS - started)) s"
echo "  throughput through the proxy: ${tp_plain} Gbit/s plain (no rate limit, no forwarder); ${tp_delay} Gbit/s with tbf 2gbit + ${DELAY_MS} ms each way"
echo "  cps through the proxy with ${DELAY_MS} ms each way on proxy<->target: ${cps_delay}/s"
echo "  20% loss: dropped ${loss_seen} frames"
echo "  RTT proxy->target ${rtt_pt} ms, client->target direct ${rtt_cd} ms, client->proxy ${rtt_cp} ms; forwarder frames ${frames}, sent ${late_us} us after their due time on average"
