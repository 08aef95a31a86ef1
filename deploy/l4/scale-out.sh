#!/usr/bin/env bash
# Scale-out demonstration: two coresocks instances behind a Linux L4
# virtual service, in network namespaces this script creates, each
# advertising its own address for UDP ASSOCIATE. A connection loop runs
# through the virtual address while each instance in turn is drained
# (weight 0), upgraded in place (--upgrade-socket) and put back; the loop
# must see zero failures. Needs root, iproute2, nft (or ipvsadm), curl, jq,
# python3, taskset. Design and measured numbers: deploy/l4/README.md.
#
#   deploy/l4/scale-out.sh [run] [--balancer nft|ipvs] [--keep] [--duration S]
#   deploy/l4/scale-out.sh down      # kill what it started, delete the namespaces
#   deploy/l4/scale-out.sh status    # what exists now (exit 0 when it is up)
#
# run (the default) tears down leftovers, sets everything up, checks UDP
# ASSOCIATE through the VIP, runs the loop with the drain/upgrade sequence,
# prints a summary and tears down again (unless --keep). Exit status 0 only
# when the loop had no failure and both instances accepted connections.
#
#   --balancer nft|ipvs  nft: nat prerouting DNAT over a numgen map of the
#                        live backends; ipvs: ipvsadm, wrr, NAT (masq) mode.
#                        Default: ipvs when /proc/net/ip_vs exists and
#                        ipvsadm is installed, else nft
#   --keep               leave it all up after run (then: down)
#   --duration S         length of the connection loop in seconds (default 10)
#
# Environment:
#   CS_LB_BIN          directory with coresocks and loadgen (default: target/release)
#   CS_LB_UPGRADE_BIN  coresocks binary to upgrade to (default: the same one)
#   CS_LB_DIR          state: logs, pids, upgrade sockets, JSON (default /tmp/cs-lb)
#   CS_LB_FAIL_AT      test hook: make this step fail (netns, balancer,
#                      targets, start-a, start-b, udp-check, loop, drain-a,
#                      upgrade-a, drain-b, upgrade-b)
#
# Topology (10.203.0.0/16, all inside the namespaces):
#   cs-lb-client 10.203.1.2 --- 10.203.1.1 cs-lb (VIP 10.203.0.10, targets 10.203.9.1:9000)
#                                10.203.2.1 --- 10.203.2.2 cs-lb-a (coresocks A)
#                                10.203.3.1 --- 10.203.3.2 cs-lb-b (coresocks B)
set -euo pipefail
shopt -s inherit_errexit

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN=${CS_LB_BIN:-$ROOT/target/release}
CORESOCKS=$BIN/coresocks
LOADGEN=$BIN/loadgen
UPGRADE_BIN=${CS_LB_UPGRADE_BIN:-$CORESOCKS}
DIR=${CS_LB_DIR:-/tmp/cs-lb}

NS_CLIENT=cs-lb-client NS_LB=cs-lb NS_A=cs-lb-a NS_B=cs-lb-b
ALL_NS=("$NS_CLIENT" "$NS_LB" "$NS_A" "$NS_B")
VIP=10.203.0.10 CLIENT=10.203.1.2 TGT=10.203.9.1 TGT_NET=10.203.9.0/24
declare -A ADDR=([a]=10.203.2.2 [b]=10.203.3.2) NS=([a]=$NS_A [b]=$NS_B)
declare -A CPU=([a]=0 [b]=1) WEIGHT=([a]=1 [b]=1) PID=() GEN=([a]=0 [b]=0)
NCPU=$(nproc)
cpu() { echo $(($1 % NCPU)); }

log() { printf '%s %s\n' "$(date +%T.%3N)" "$*"; }
die() { log "error: $*" >&2; exit 1; }
failpoint() { [[ ${CS_LB_FAIL_AT:-} != "$1" ]] || die "injected failure at step '$1' (CS_LB_FAIL_AT)"; }
now_ms() { echo $(($(date +%s%N) / 1000000)); }
nsx() { local ns=$1; shift; ip netns exec "$ns" "$@"; }

# Processes: every one runs in one of our namespaces and names $DIR on its
# command line; "$DIR/pids" lists them, so down only ever kills its own.
SPAWNED=''
spawn() { # NAME NS CPU CMD... (background, log in $DIR/NAME.log)
  local name=$1 ns=$2 c=$3
  shift 3
  ip netns exec "$ns" taskset -c "$c" "$@" >"$DIR/$name.log" 2>&1 &
  SPAWNED=$!
  echo "$SPAWNED $name" >>"$DIR/pids"
}
alive() { [[ -r /proc/$1/status ]] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null; }
ours() { alive "$1" && tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -qF -- "$DIR"; }

wait_log() { # FILE PATTERN PID TIMEOUT_S
  local t=$(($(now_ms) + $4 * 1000))
  until grep -q -- "$2" "$1" 2>/dev/null; do
    alive "$3" || { tail -5 "$1" >&2 || true; die "process $3 exited before '$2' (log $1)"; }
    (($(now_ms) < t)) || die "no '$2' in $1 within $4 s"
    sleep 0.05
  done
}

teardown() {
  local pids=() p ns
  for ns in "${ALL_NS[@]}"; do
    [[ -e /run/netns/$ns ]] && mapfile -t -O "${#pids[@]}" pids < <(ip netns pids "$ns" 2>/dev/null)
  done
  if [[ -f $DIR/pids ]]; then
    while read -r p _; do ours "$p" && pids+=("$p"); done <"$DIR/pids"
  fi
  if ((${#pids[@]})); then
    kill -TERM "${pids[@]}" 2>/dev/null || true
    for _ in $(seq 50); do
      local left=0
      for p in "${pids[@]}"; do alive "$p" && left=1; done
      ((left)) || break
      sleep 0.1
    done
    for p in "${pids[@]}"; do alive "$p" && kill -KILL "$p" 2>/dev/null; done
    wait 2>/dev/null || true
  fi
  for ns in "${ALL_NS[@]}"; do
    [[ -e /run/netns/$ns ]] && ip netns del "$ns"
  done
  # the veths are created inside the namespaces and die with them; any
  # left in this namespace by an interrupted run go too
  for p in $(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | sed 's/@.*//' | grep '^cslb' || true); do
    ip link del "$p" 2>/dev/null || true
  done
  rm -f "$DIR"/*.upgrade.sock
  if [[ -f $DIR/pids ]]; then mv -f "$DIR/pids" "$DIR/pids.last"; fi
}

# ---- balancer ----------------------------------------------------------
choose_balancer() {
  if [[ -z $BALANCER ]]; then
    if [[ -e /proc/net/ip_vs ]] && command -v ipvsadm >/dev/null; then
      BALANCER=ipvs
      echo "balancer: ipvs (/proc/net/ip_vs exists and ipvsadm is installed)"
    else
      BALANCER=nft
      echo "balancer: nft ($([[ -e /proc/net/ip_vs ]] && echo "ipvsadm not installed" || echo "no IPVS in this kernel: /proc/net/ip_vs absent"))"
    fi
  else
    echo "balancer: $BALANCER (--balancer)"
  fi
  case $BALANCER in
  nft) command -v nft >/dev/null || die "nft not installed" ;;
  ipvs)
    [[ -e /proc/net/ip_vs ]] || modprobe ip_vs 2>/dev/null || true
    [[ -e /proc/net/ip_vs ]] || die "--balancer ipvs: no IPVS in this kernel (/proc/net/ip_vs absent)"
    command -v ipvsadm >/dev/null || die "--balancer ipvs: ipvsadm not installed"
    ;;
  *) die "--balancer: nft or ipvs, not '$BALANCER'" ;;
  esac
}

lb_setup() {
  case $BALANCER in
  nft)
    nsx "$NS_LB" nft -f - <<EOF
table ip cs_lb {
  chain prerouting { type nat hook prerouting priority dstnat; policy accept; }
  chain postrouting { type nat hook postrouting priority srcnat; policy accept; }
}
EOF
    lb_apply
    ;;
  ipvs)
    nsx "$NS_LB" ipvsadm -A -t "$VIP:1080" -s wrr
    nsx "$NS_LB" ipvsadm -a -t "$VIP:1080" -r "${ADDR[a]}:1080" -m -w "${WEIGHT[a]}"
    nsx "$NS_LB" ipvsadm -a -t "$VIP:1080" -r "${ADDR[b]}:1080" -m -w "${WEIGHT[b]}"
    ;;
  esac
}

# nft: one map entry per unit of weight, numgen inc round-robins over them;
# the chain is replaced in one transaction. Established connections keep
# their backend through conntrack, only new ones see the new map.
lb_apply() {
  local elems=() i=0 n w
  for n in a b; do
    for ((w = 0; w < WEIGHT[$n]; w++)); do elems+=("$i : ${ADDR[$n]}") && i=$((i + 1)); done
  done
  ((i)) || die "no backend with a weight above 0"
  local IFS=,
  nsx "$NS_LB" nft -f - <<EOF
flush chain ip cs_lb prerouting
add rule ip cs_lb prerouting ip daddr $VIP tcp dport 1080 counter dnat to numgen inc mod $i map { ${elems[*]} }
EOF
}

set_weight() { # INSTANCE WEIGHT
  WEIGHT[$1]=$2
  case $BALANCER in
  nft) lb_apply ;;
  ipvs) nsx "$NS_LB" ipvsadm -e -t "$VIP:1080" -r "${ADDR[$1]}:1080" -m -w "$2" ;;
  esac
  log "weight of $1 (${ADDR[$1]}) = $2"
}

lb_show() {
  case $BALANCER in
  nft) nsx "$NS_LB" nft list table ip cs_lb ;;
  ipvs) nsx "$NS_LB" ipvsadm -Ln ;;
  esac
}

# ---- namespaces ----------------------------------------------------------
net_up() {
  local ns
  for ns in "${ALL_NS[@]}"; do
    ip netns add "$ns"
    nsx "$ns" ip link set lo up
  done
  ip link add cslbc0 netns "$NS_CLIENT" type veth peer name cslbc1 netns "$NS_LB"
  ip link add cslba0 netns "$NS_A" type veth peer name cslba1 netns "$NS_LB"
  ip link add cslbb0 netns "$NS_B" type veth peer name cslbb1 netns "$NS_LB"
  nsx "$NS_CLIENT" ip addr add "$CLIENT/24" dev cslbc0
  nsx "$NS_LB" ip addr add 10.203.1.1/24 dev cslbc1
  nsx "$NS_LB" ip addr add 10.203.2.1/24 dev cslba1
  nsx "$NS_LB" ip addr add 10.203.3.1/24 dev cslbb1
  nsx "$NS_LB" ip addr add "$VIP/32" dev lo
  nsx "$NS_LB" ip addr add "$TGT/32" dev lo
  nsx "$NS_A" ip addr add "${ADDR[a]}/24" dev cslba0
  nsx "$NS_B" ip addr add "${ADDR[b]}/24" dev cslbb0
  nsx "$NS_CLIENT" ip link set cslbc0 up
  nsx "$NS_A" ip link set cslba0 up
  nsx "$NS_B" ip link set cslbb0 up
  for ns in cslbc1 cslba1 cslbb1; do nsx "$NS_LB" ip link set "$ns" up; done
  # everything goes through cs-lb: NAT replies must pass it to be un-NATed
  nsx "$NS_CLIENT" ip route add default via 10.203.1.1
  nsx "$NS_A" ip route add default via 10.203.2.1
  nsx "$NS_B" ip route add default via 10.203.3.1
  nsx "$NS_LB" sysctl -qw net.ipv4.ip_forward=1
}

# ---- instances -----------------------------------------------------------
start_instance() { # a|b  (a new generation; with the upgrade socket it takes over)
  local n=$1 bin=$2
  GEN[$n]=$((GEN[$n] + 1))
  spawn "$n-${GEN[$n]}" "${NS[$n]}" "$(cpu "${CPU[$n]}")" "$bin" --cores 1 \
    --listen "${ADDR[$n]}:1080" --allow "$TGT_NET" --udp-advertise "${ADDR[$n]}" \
    --metrics "${ADDR[$n]}:9108" --upgrade-socket "$DIR/$n.upgrade.sock" \
    --shutdown-grace 5s --access-log off
  PID[$n]=$SPAWNED
  wait_log "$DIR/$n-${GEN[$n]}.log" 'coresocks ready on' "$SPAWNED" 10
  log "coresocks $n generation ${GEN[$n]}: pid $SPAWNED ready on ${ADDR[$n]}:1080"
}

metrics() { nsx "$NS_LB" curl -sf --max-time 2 "http://${ADDR[$1]}:9108/metrics" || die "cannot scrape $1's metrics"; }
metric_sum() { # INSTANCE NAME: the metric summed over cores (and labels)
  local m
  m=$(metrics "$1")
  awk -v n="$2" 'index($0, n "{") == 1 { s += $NF } END { printf "%d\n", s }' <<<"$m"
}

udp_check() {
  log "UDP ASSOCIATE through the VIP: the reply must name an instance (not the VIP), and its relay must echo"
  nsx "$NS_CLIENT" python3 - "$VIP" "$TGT" 9000 "$DIR" "a=${ADDR[a]}" "b=${ADDR[b]}" <<'PY'
import socket, struct, sys
vip, tgt, tport = sys.argv[1], sys.argv[2], int(sys.argv[3])
by_addr = {kv.split("=")[1]: kv.split("=")[0] for kv in sys.argv[5:]}
def recvn(s, n):
    b = b""
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c:
            sys.exit(f"udp check: proxy closed the control connection")
        b += c
    return b
seen = set()
for i in range(4):
    t = socket.create_connection((vip, 1080), timeout=3)
    t.sendall(b"\x05\x01\x00")
    if recvn(t, 2) != b"\x05\x00":
        sys.exit("udp check: greeting refused")
    t.sendall(b"\x05\x03\x00\x01" + bytes(6))  # UDP ASSOCIATE, client address unknown (0.0.0.0:0)
    ver, rep, _, atyp = recvn(t, 4)
    if rep != 0 or atyp != 1:
        sys.exit(f"udp check: reply {rep:#04x}, address type {atyp}")
    addr = socket.inet_ntoa(recvn(t, 4))
    port = struct.unpack(">H", recvn(t, 2))[0]
    name = by_addr.get(addr)
    if addr == vip or name is None:
        sys.exit(f"udp check: BND.ADDR {addr} is not an instance's own address")
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.settimeout(3)
    head = b"\x00\x00\x00\x01" + socket.inet_aton(tgt) + struct.pack(">H", tport)
    payload = b"cs-lb udp check %d" % i
    u.sendto(head + payload, (addr, port))
    try:
        data, src = u.recvfrom(65535)
    except socket.timeout:
        sys.exit(f"udp check: no echo through the relay {addr}:{port}")
    if src != (addr, port) or data != head + payload:
        sys.exit(f"udp check: bad answer from {src}: {data!r}")
    print(f"  association {i + 1}: BND {addr}:{port} = instance {name}; datagram echoed by {tgt}:{tport} through it")
    seen.add(name)
    u.close()
    t.close()
if seen != set(by_addr.values()):
    sys.exit(f"udp check: only instance(s) {sorted(seen)} answered")
PY
  log "loadgen udp through the VIP (2 associations, 1 s)"
  nsx "$NS_CLIENT" "$LOADGEN" udp --proxy "$VIP:1080" --target "$TGT:9000" --associations 2 \
    --rate 400 --duration 1s --warmup 0 --timeout 1s --quiet --json "$DIR/udp.json" >"$DIR/udp.log" 2>&1 ||
    { cat "$DIR/udp.log" >&2; die "loadgen udp through the VIP failed"; }
  jq -r '"  loadgen udp: sent \(.result.sent), received \(.result.received), lost \(.result.lost), errors \(.errors.total)"' "$DIR/udp.json"
  jq -e '.result.received > 0 and .errors.total == 0' "$DIR/udp.json" >/dev/null || die "loadgen udp: no echo, or errors"
}

declare -A DRAIN_MS=() ACTIVE_AT_DRAIN=() OLD_PID=() ACC_OLD=() BASE=()
drain_upgrade() { # a|b
  local n=$1 t0 t1 act old
  failpoint "drain-$n"
  ACTIVE_AT_DRAIN[$n]=$(metric_sum "$n" coresocks_connections_active)
  t0=$(now_ms)
  set_weight "$n" 0
  # wait for the connections the balancer gave it earlier to finish
  while :; do
    act=$(metric_sum "$n" coresocks_connections_active)
    ((act > 0)) || break
    (($(now_ms) - t0 < 30000)) || { log "warning: $n still has $act connections after 30 s; upgrading anyway (the old process drains them)"; break; }
    sleep 0.02
  done
  t1=$(now_ms)
  DRAIN_MS[$n]=$((t1 - t0))
  log "$n drained in ${DRAIN_MS[$n]} ms (${ACTIVE_AT_DRAIN[$n]} open when drained, $(metric_sum "$n" coresocks_tunnels_open) tunnels open now)"
  ACC_OLD[$n]=$(metric_sum "$n" coresocks_connections_accepted_total)
  failpoint "upgrade-$n"
  old=${PID[$n]}
  OLD_PID[$n]=$old
  start_instance "$n" "$UPGRADE_BIN"
  t0=$(now_ms)
  while alive "$old"; do
    (($(now_ms) - t0 < 10000)) || die "old $n (pid $old) did not exit within 10 s of the upgrade"
    sleep 0.02
  done
  wait "$old" 2>/dev/null || true
  grep -q 'took over the listeners' "$DIR/$n-$((GEN[$n] - 1)).log" || die "old $n never logged the takeover"
  log "upgraded $n: pid $old -> ${PID[$n]} (old one gone after $(($(now_ms) - t0)) ms)"
  set_weight "$n" 1
}

# ---- commands ------------------------------------------------------------
status() {
  local ns up=0 p
  for ns in "${ALL_NS[@]}"; do
    [[ -e /run/netns/$ns ]] || continue
    up=1
    echo "== $ns"
    nsx "$ns" ip -br addr show
    for p in $(ip netns pids "$ns"); do echo "  pid $p: $(tr '\0' ' ' <"/proc/$p/cmdline" | cut -c1-160)"; done
  done
  if ((up)); then
    if nsx "$NS_LB" nft list table ip cs_lb >/dev/null 2>&1; then
      BALANCER=nft
      lb_show
    elif command -v ipvsadm >/dev/null && nsx "$NS_LB" ipvsadm -Ln 2>/dev/null | grep -q "$VIP"; then
      BALANCER=ipvs
      lb_show
    fi
  else
    echo "nothing up (no cs-lb* namespaces)"
  fi
  ((up))
}

KEEP=0
on_exit() {
  local rc=$?
  trap - EXIT INT TERM
  if ((rc != 0 || !KEEP)); then
    ((rc == 0)) || log "cleaning up after failure (exit $rc)" >&2
    teardown
  else
    log "left up (--keep): $0 status / $0 down"
  fi
  exit "$rc"
}

run() {
  [[ $EUID -eq 0 ]] || die "needs root (network namespaces)"
  for b in "$CORESOCKS" "$LOADGEN" "$UPGRADE_BIN"; do [[ -x $b ]] || die "no executable $b (CS_LB_BIN)"; done
  for c in ip curl jq python3 taskset; do command -v "$c" >/dev/null || die "$c not installed"; done
  choose_balancer
  mkdir -p "$DIR"
  teardown
  rm -f "$DIR"/*.log "$DIR"/*.json
  trap on_exit EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM

  failpoint netns
  net_up
  failpoint balancer
  lb_setup
  failpoint targets
  spawn serve "$NS_LB" "$(cpu 0)" "$LOADGEN" serve --listen "$TGT:9000" --json "$DIR/serve.json"
  local serve=$SPAWNED
  until nsx "$NS_LB" bash -c "exec 3<>/dev/tcp/$TGT/9000" 2>/dev/null; do
    alive "$serve" || { cat "$DIR/serve.log" >&2; die "loadgen serve exited"; }
    sleep 0.05
  done
  failpoint start-a
  start_instance a "$CORESOCKS"
  failpoint start-b
  start_instance b "$CORESOCKS"
  failpoint udp-check
  udp_check

  local n
  for n in a b; do BASE[$n]=$(metric_sum "$n" coresocks_connections_accepted_total); done
  failpoint loop
  log "connection loop: loadgen cps through $VIP:1080 for ${DURATION} s"
  spawn loop "$NS_CLIENT" "$(cpu 1)" "$LOADGEN" cps --proxy "$VIP:1080" --target "$TGT:9000" \
    --duration "${DURATION}s" --warmup 0 --json "$DIR/loop.json" --quiet
  local loop=$SPAWNED t_loop
  t_loop=$(now_ms)
  sleep "$(awk -v d="$DURATION" 'BEGIN { print d * 0.2 }')"
  drain_upgrade a
  sleep "$(awk -v d="$DURATION" 'BEGIN { print d * 0.2 }')"
  drain_upgrade b
  alive "$loop" || log "warning: the loop ended before b was back; make --duration longer"
  local rc=0
  wait "$loop" || rc=$?
  log "loop finished after $(($(now_ms) - t_loop)) ms (loadgen exit $rc)"
  [[ -s $DIR/loop.json ]] || { cat "$DIR/loop.log" >&2; die "loadgen cps wrote no result"; }

  local conns attempts fails causes bad=0
  conns=$(jq -r '.result.connections' "$DIR/loop.json")
  attempts=$(jq -r '.result.attempts_total' "$DIR/loop.json")
  fails=$(jq -r '.errors.total' "$DIR/loop.json")
  causes=$(jq -r '[.errors.by_cause | to_entries[] | "\(.key) \(.value)"] | join(", ")' "$DIR/loop.json")
  echo
  echo "summary: balancer=$BALANCER connections=$conns attempts=$attempts failures=$fails${causes:+ ($causes)}"
  local sum=0
  for n in a b; do
    local before after total
    before=$((ACC_OLD[$n] - BASE[$n]))
    after=$(metric_sum "$n" coresocks_connections_accepted_total)
    total=$((before + after))
    sum=$((sum + total))
    echo "instance $n ${ADDR[$n]}: accepted=$total (before upgrade $before, after $after) pid ${OLD_PID[$n]} -> ${PID[$n]} drain_ms=${DRAIN_MS[$n]} open_at_drain=${ACTIVE_AT_DRAIN[$n]}"
    ((total > 0)) || { echo "FAIL: instance $n accepted no connection of the loop"; bad=1; }
    [[ ${OLD_PID[$n]} != "${PID[$n]}" ]] || { echo "FAIL: instance $n was not upgraded"; bad=1; }
  done
  echo "instances together accepted $sum (the loop's attempts plus its path check)"
  ((fails == 0)) || { echo "FAIL: the loop had $fails failures"; bad=1; }
  ((rc == 0)) || { echo "FAIL: loadgen exited $rc"; bad=1; }
  ((conns > 0)) || { echo "FAIL: no connection completed"; bad=1; }
  if ((bad)); then
    echo "result: FAIL (logs in $DIR)"
    exit 1
  fi
  echo "result: PASS"
}

CMD=run BALANCER='' DURATION=10
while (($#)); do
  case $1 in
  run | down | status) CMD=$1 ;;
  --balancer) BALANCER=${2:?--balancer needs nft or ipvs} && shift ;;
  --balancer=*) BALANCER=${1#*=} ;;
  --keep) KEEP=1 ;;
  --duration) DURATION=${2:?--duration needs seconds} && shift ;;
  -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' && exit 0 ;;
  *) die "unknown argument '$1' (see --help)" ;;
  esac
  shift
done
if ! [[ $DURATION =~ ^[0-9]+$ ]] || ((DURATION < 4)); then die "--duration: whole seconds, at least 4"; fi

case $CMD in
run) run ;;
down)
  teardown
  log "down: no cs-lb* namespaces, none of its processes"
  ;;
status) status ;;
esac
