#!/usr/bin/env bash
# A benchmark lab that never leaves the machine: client, proxy and target
# each in a network namespace of their own, joined by multi-queue veth
# pairs, optionally rate limited (tbf) and, on the proxy<->target leg,
# delayed and lossy through a userspace forwarder (tuning/impair.py; this
# kernel has no netem). Needs root, iproute2 and python3. Design, addresses
# and a picture: tuning/README.md, "A network path in namespaces".
#
#   tuning/netns-bench.sh up [UP OPTIONS]   # tears down leftovers first
#   tuning/netns-bench.sh down              # removes everything, always
#   tuning/netns-bench.sh status            # exit 0 when the lab is up
#   tuning/netns-bench.sh ping NS ADDR [N]  # ICMP RTTs (ms) from a namespace
#   tuning/netns-bench.sh run [UP OPTIONS] [RUN OPTIONS] -- LOADGEN ARGS
#
# UP OPTIONS
#   --queues N      tx and rx queues of every veth (default 4)
#   --rate RATE     tbf on every endpoint's egress, e.g. 1gbit (default: none)
#   --burst SIZE    tbf burst (default 256kb)
#   --delay D       one-way delay proxy<->target (and on the direct path), e.g. 5ms
#   --loss P        loss per frame on those paths, e.g. 0.1% (default 0)
#   --seed N        seed of the forwarder's loss draws (default 1)
#   --limit N       frames the forwarder holds per direction (default 20000)
#   --gso-max BYTES gso_max_size of the links into the forwarder (default:
#                   the kernel's 64 KiB; 1500: no GSO, so a loss is one packet)
#   --wan           use the forwarder even without delay or loss
#   --wan-cpu CPUS  CPU of the forwarder (default 2 with 3 or more CPUs, else 0)
#   --wan-rt PRIO   run it SCHED_FIFO at PRIO (default 0: normal scheduling)
#   --no-direct     no direct client<->target path (then `--direct` baselines fail)
#   --rps CPUS      steer the proxy's received packets (RPS on both of its
#                   veths' rx queues) to these CPUs, e.g. 1: its softirq work
#                   (and a sockmap redirect) then runs there, not on the
#                   sender's CPU as a veth delivers by default
#
# RUN OPTIONS (run does `up` first unless a lab with the same UP OPTIONS is
# up; a lab it brought up it takes down again unless --keep)
#   --proxy-args 'ARGS'  extra coresocks flags (split on spaces)
#   --proxy-cpu CPUS     taskset for coresocks (default 1; it runs --cores all)
#   --load-cpu CPUS      taskset for loadgen (default 0)
#   --serve-cpu CPUS     taskset for `loadgen serve` (default: --load-cpu)
#   --json FILE          loadgen's JSON result (compare's too)
#   --no-proxy-pid       do not pass loadgen --proxy-pid (idle needs --duration >= 1.5s with it)
#   --keep               leave the lab up afterwards
#
# LOADGEN ARGS: a scenario and its options (throughput, cps, latency, udp,
# idle) or `compare [...] SCENARIO [...]`. run adds what the lab fixes:
# --proxy 10.201.1.1:1080 (compare: --proxy coresocks=...), --proxy-pid,
# --target 10.201.2.2:9000 and --json, unless the arguments already name
# them; a scenario with --direct gets no proxy and goes over the direct path.
#
#   tuning/netns-bench.sh run --rate 1gbit --delay 5ms --loss 0.1% --json tp.json \
#       -- throughput --streams 4 --duration 5
#   tuning/netns-bench.sh run --delay 2ms -- compare --direct --rounds 3 cps --concurrency 8
#
# Environment: CORESOCKS_BIN, LOADGEN_BIN (default target/release/...),
# LAB_STATE (pids and config, default /run/coresocks-lab; removed by down),
# LAB_LOGS (logs, forwarder counters, proxy metrics; default
# /tmp/coresocks-lab; kept), LAB_FAIL_AT=STEP (tests: make the `up` step
# STEP fail: ns, links, addr, tbf, forwarder, verify; or proxy, serve in run).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
CORESOCKS_BIN=${CORESOCKS_BIN:-$repo/target/release/coresocks}
LOADGEN_BIN=${LOADGEN_BIN:-$repo/target/release/loadgen}
STATE=${LAB_STATE:-/run/coresocks-lab}
LOGS=${LAB_LOGS:-/tmp/coresocks-lab}
IMPAIR=$here/impair.py

# Namespaces, interfaces and addresses (see tuning/README.md).
NS_C=cs-client NS_P=cs-proxy NS_T=cs-target NS_W=cs-wan
ALL_NS=("$NS_C" "$NS_P" "$NS_T" "$NS_W")
C_IP=10.201.1.2     # cs-client c-proxy
P_CIP=10.201.1.1    # cs-proxy  p-client: the proxy listens here
P_TIP=10.201.2.1    # cs-proxy  p-target: the proxy's egress
T_IP=10.201.2.2     # cs-target t-proxy: loadgen serve listens here
T_DIP=10.201.3.1    # cs-target t-direct
C_DIP=10.201.3.2    # cs-client c-direct (route to T_IP/32 only)
PROXY_PORT=1080 METRICS_PORT=9108 SERVE_PORT=9000
# Every link name the lab uses (also swept from the root namespace, with
# the old two-namespace script's cs-host).
LINK_NAMES=(c-proxy p-client p-target t-proxy c-direct t-direct
  w-proxy w-target w-cdirect w-tdirect cs-host)

log() { echo "netns-bench: $*" >&2; }
die() { log "$*"; exit 1; }
fail_point() { [ "${LAB_FAIL_AT:-}" != "$1" ] || die "injected failure at step '$1' (LAB_FAIL_AT)"; }
nsx() { local ns=$1; shift; ip netns exec "$ns" "$@"; }
ns_exists() { [ -e "/var/run/netns/$1" ]; }

# --- processes ------------------------------------------------------------

# Pid files hold "PID STARTTIME", so a recycled pid is never killed.
start_time() { [ -r "/proc/$1/stat" ] && sed 's/.*) //' "/proc/$1/stat" | cut -d' ' -f20; }
alive() { # pid: exists and is not a zombie
  local st
  st=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1) || return 1
  [ -n "$st" ] && [ "$st" != Z ]
}
pid_record() { echo "$1 $(start_time "$1")" >"$STATE/$2.pid"; }
pid_of() { # name -> pid when its file names a live process we started
  local f=$STATE/$1.pid pid st
  [ -r "$f" ] || return 1
  read -r pid st <"$f" || return 1
  [ -n "$pid" ] && alive "$pid" && [ "$(start_time "$pid")" = "$st" ] && echo "$pid"
}
stop_pids() { # pids...: TERM, up to 3 s, then KILL
  local p n
  [ $# -gt 0 ] || return 0
  kill -TERM "$@" 2>/dev/null || true
  for ((n = 0; n < 30; n++)); do
    local left=()
    for p in "$@"; do alive "$p" && left+=("$p"); done
    [ ${#left[@]} -gt 0 ] || return 0
    sleep 0.1
    set -- "${left[@]}"
  done
  kill -KILL "$@" 2>/dev/null || true
  for ((n = 0; n < 20; n++)); do
    local p2 any=0
    for p2 in "$@"; do alive "$p2" && any=1; done
    [ $any = 1 ] || return 0
    sleep 0.1
  done
}
reap() { # pids: collect those that are our children (no bare `wait`: the forwarder may be one)
  local p
  for p in "$@"; do wait "$p" 2>/dev/null || true; done
}
stop_named() { # pid file names...
  local name pids=()
  for name in "$@"; do
    local p
    p=$(pid_of "$name") && pids+=("$p")
  done
  stop_pids "${pids[@]}"
  for name in "$@"; do rm -f "$STATE/$name.pid"; done
  reap "${pids[@]}"
}

# --- teardown -------------------------------------------------------------

teardown() {
  # Processes first: a process in a namespace keeps it (and its veths)
  # alive after `ip netns del`. Those the pid files name, then anything
  # still inside one of the lab's namespaces.
  local name pids=() ns
  if [ -d "$STATE" ]; then
    for f in "$STATE"/*.pid; do
      [ -e "$f" ] || continue
      name=$(basename "$f" .pid)
      local p
      p=$(pid_of "$name") && pids+=("$p")
    done
  fi
  for ns in "${ALL_NS[@]}"; do
    ns_exists "$ns" || continue
    local p
    for p in $(ip netns pids "$ns" 2>/dev/null); do pids+=("$p"); done
  done
  stop_pids "${pids[@]}"
  for ns in "${ALL_NS[@]}"; do
    ns_exists "$ns" && { ip netns del "$ns" 2>/dev/null || true; }
  done
  for name in "${LINK_NAMES[@]}"; do
    ip link show "$name" >/dev/null 2>&1 && { ip link del "$name" 2>/dev/null || true; }
  done
  rm -rf "$STATE"
  reap "${pids[@]}"
}

# --- up -------------------------------------------------------------------

Q=4 RATE='' BURST=256kb DELAY=0 LOSS=0 SEED=1 LIMIT=20000 WAN=0 DIRECT=1 GSO_MAX='' WAN_RT=0 RPS=''
# The forwarder gets a CPU of its own where there is one beside the
# proxy's (1) and loadgen's (0).
WAN_CPU=0
[ "$(nproc)" -lt 3 ] || WAN_CPU=2
up_opts_given=0
UP_SHIFT=0
parse_up_opt() { # one up option at $1 (value at $2): sets its global and UP_SHIFT (0: not one)
  UP_SHIFT=2
  case "$1" in
  --queues | --rate | --burst | --delay | --loss | --seed | --limit | --wan-cpu | --wan-rt | --gso-max | --rps)
    [ $# -ge 2 ] || die "$1 needs a value" ;;
  esac
  case "$1" in
  --queues) Q=$2 ;;
  --rate) RATE=$2 ;;
  --burst) BURST=$2 ;;
  --delay) DELAY=$2 ;;
  --loss) LOSS=$2 ;;
  --seed) SEED=$2 ;;
  --limit) LIMIT=$2 ;;
  --wan-cpu) WAN_CPU=$2 ;;
  --gso-max) GSO_MAX=$2 ;;
  --rps) RPS=$2 ;;
  --wan-rt) WAN_RT=$2 ;;
  --wan) WAN=1; UP_SHIFT=1 ;;
  --no-direct) DIRECT=0; UP_SHIFT=1 ;;
  *) UP_SHIFT=0 ;;
  esac
}
is_zero() { [[ $1 =~ ^0*(\.0*)?(us|ms|s|%)?$ ]]; }
validate_up() {
  { [[ $Q =~ ^[0-9]+$ ]] && [ "$Q" -ge 1 ] && [ "$Q" -le 64 ]; } || die "--queues $Q: want 1 to 64"
  [[ $DELAY =~ ^[0-9]*\.?[0-9]+(us|ms|s)?$ ]] || die "--delay $DELAY: want e.g. 5ms, 200us, 0.01s"
  [[ $LOSS =~ ^[0-9]*\.?[0-9]+%?$ ]] || die "--loss $LOSS: want e.g. 0.1% or 0.001"
  [[ $SEED =~ ^[0-9]+$ ]] || die "--seed $SEED: want an integer"
  [[ $LIMIT =~ ^[0-9]+$ ]] || die "--limit $LIMIT: want an integer"
  [[ -z $GSO_MAX || $GSO_MAX =~ ^[0-9]+$ ]] || die "--gso-max $GSO_MAX: want bytes, e.g. 1500"
  { [[ $WAN_RT =~ ^[0-9]+$ ]] && [ "$WAN_RT" -le 99 ]; } || die "--wan-rt $WAN_RT: want 0 (off) to 99"
  [[ -z $RATE || $RATE =~ ^[0-9.]+[a-zA-Z]*$ ]] || die "--rate $RATE: want e.g. 1gbit"
  [[ -z $RPS || $RPS =~ ^[0-9]+(,[0-9]+)*$ ]] || die "--rps $RPS: want CPU ids, e.g. 1 or 1,3"
  if ! is_zero "$DELAY" || ! is_zero "$LOSS"; then WAN=1; fi
  if [ "$WAN" = 1 ] && ! command -v python3 >/dev/null; then die "the forwarder needs python3"; fi
  return 0
}
config_line() { echo "queues=$Q rate=${RATE:-none} burst=$BURST delay=$DELAY loss=$LOSS seed=$SEED limit=$LIMIT wan=$WAN wan_cpu=$WAN_CPU wan_rt=$WAN_RT direct=$DIRECT gso_max=${GSO_MAX:-default} rps=${RPS:-off}"; }

rps_steer() { # ns dev: every rx queue's rps_cpus to the --rps CPUs
  local mask=0 cpu q
  for cpu in ${RPS//,/ }; do mask=$((mask | (1 << cpu))); done
  for q in $(nsx "$1" sh -c "ls -d /sys/class/net/$2/queues/rx-*"); do
    nsx "$1" sh -c "printf %x $mask > $q/rps_cpus"
  done
}

veth() { # ns_a name_a ns_b name_b
  ip -n "$1" link add "$2" numtxqueues "$Q" numrxqueues "$Q" type veth \
    peer name "$4" numtxqueues "$Q" numrxqueues "$Q" netns "$3"
}
addr() { # ns dev cidr
  ip -n "$1" addr add "$3" dev "$2"
  ip -n "$1" link set "$2" up
}
tbf() { # ns dev
  tc -n "$1" qdisc replace dev "$2" root tbf rate "$RATE" burst "$BURST" latency 50ms
}
wait_started() { # tries pid command...: until command succeeds; fails at once when pid exits
  local n=$1 pid=$2; shift 2
  while ! "$@" 2>/dev/null; do
    alive "$pid" || return 1
    n=$((n - 1))
    [ "$n" -gt 0 ] || return 1
    sleep 0.1
  done
}
reachable() { # ns addr: a TCP connect answered (refused counts: the host is there)
  # Several tries of 1 s: with --loss a SYN or its answer may be dropped.
  nsx "$1" python3 - "$2" <<'EOF'
import socket, sys
for attempt in range(10):
    s = socket.socket()
    s.settimeout(1)
    try:
        s.connect((sys.argv[1], 9))
        sys.exit(0)
    except ConnectionRefusedError:
        sys.exit(0)
    except OSError as e:
        err = e
    finally:
        s.close()
print(f"{sys.argv[1]}: {err}", file=sys.stderr)
sys.exit(1)
EOF
}

building=0
build() {
  mkdir -p "$STATE" "$LOGS"
  config_line >"$STATE/config"
  local ns
  local nss=("$NS_C" "$NS_P" "$NS_T")
  [ "$WAN" = 1 ] && nss+=("$NS_W")
  for ns in "${nss[@]}"; do
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    # No forwarding anywhere (the client reaches the target only through
    # the proxy's sockets), no IPv6 chatter on the links.
    nsx "$ns" sysctl -qw net.ipv4.ip_forward=0 net.ipv6.conf.all.disable_ipv6=1 \
      net.ipv6.conf.default.disable_ipv6=1 net.ipv4.ip_local_port_range="1024 65535" \
      net.ipv4.tcp_tw_reuse=1
  done
  fail_point ns

  veth "$NS_C" c-proxy "$NS_P" p-client
  if [ "$WAN" = 1 ]; then
    veth "$NS_P" p-target "$NS_W" w-proxy
    veth "$NS_W" w-target "$NS_T" t-proxy
  else
    veth "$NS_P" p-target "$NS_T" t-proxy
  fi
  if [ "$DIRECT" = 1 ]; then
    if [ "$WAN" = 1 ]; then
      veth "$NS_C" c-direct "$NS_W" w-cdirect
      veth "$NS_W" w-tdirect "$NS_T" t-direct
    else
      veth "$NS_C" c-direct "$NS_T" t-direct
    fi
  fi
  fail_point links

  addr "$NS_C" c-proxy "$C_IP/30"
  addr "$NS_P" p-client "$P_CIP/30"
  addr "$NS_P" p-target "$P_TIP/30"
  addr "$NS_T" t-proxy "$T_IP/30"
  if [ "$DIRECT" = 1 ]; then
    addr "$NS_C" c-direct "$C_DIP/30"
    addr "$NS_T" t-direct "$T_DIP/30"
    # Only the target's own address, only through the direct link: the
    # baseline reaches the same --target as the proxy does.
    ip -n "$NS_C" route add "$T_IP/32" via "$T_DIP" dev c-direct
  fi
  if [ "$WAN" = 1 ]; then
    local dev
    for dev in w-proxy w-target $([ "$DIRECT" = 1 ] && echo w-cdirect w-tdirect); do
      ip -n "$NS_W" link set "$dev" promisc on up
    done
  fi
  fail_point addr

  if [ -n "$RATE" ]; then
    tbf "$NS_C" c-proxy
    tbf "$NS_P" p-client
    tbf "$NS_P" p-target
    tbf "$NS_T" t-proxy
    if [ "$DIRECT" = 1 ]; then
      tbf "$NS_C" c-direct
      tbf "$NS_T" t-direct
    fi
  fi
  if [ -n "$GSO_MAX" ]; then
    # Smaller (or no) GSO frames on the links into the impaired paths: a
    # dropped frame is then fewer wire packets (see README).
    ip -n "$NS_P" link set dev p-target gso_max_size "$GSO_MAX"
    ip -n "$NS_T" link set dev t-proxy gso_max_size "$GSO_MAX"
    if [ "$DIRECT" = 1 ]; then
      ip -n "$NS_C" link set dev c-direct gso_max_size "$GSO_MAX"
      ip -n "$NS_T" link set dev t-direct gso_max_size "$GSO_MAX"
    fi
  fi
  fail_point tbf
  if [ -n "$RPS" ]; then
    rps_steer "$NS_P" p-client
    rps_steer "$NS_P" p-target
  fi

  if [ "$WAN" = 1 ]; then
    local pairs=(--pair w-proxy:w-target)
    [ "$DIRECT" = 1 ] && pairs+=(--pair w-cdirect:w-tdirect)
    rm -f "$STATE/impair.ready"
    # setsid: the forwarder outlives this script (and a terminal's ^C);
    # it exits by itself once its interfaces are gone.
    # --wan-rt: SCHED_FIFO, so a frame due is sent even while loadgen keeps
    # the same CPU busy; off by default, since at high packet rates it then
    # starves loadgen (RT throttling leaves others only 5% of the CPU).
    local rt=()
    [ "$WAN_RT" = 0 ] || ! chrt -f "$WAN_RT" true 2>/dev/null || rt=(chrt -f "$WAN_RT")
    setsid ip netns exec "$NS_W" taskset -c "$WAN_CPU" "${rt[@]}" python3 -u "$IMPAIR" "${pairs[@]}" \
      --delay "$DELAY" --loss "$LOSS" --seed "$SEED" --limit "$LIMIT" \
      --stats "$LOGS/impair-stats.json" --pidfile "$STATE/impair.ready" \
      </dev/null >"$LOGS/impair.log" 2>&1 &
    pid_record $! impair
    if ! wait_started 50 "$(cut -d' ' -f1 "$STATE/impair.pid")" test -s "$STATE/impair.ready"; then
      cat "$LOGS/impair.log" >&2 || true
      die "the forwarder did not start (log: $LOGS/impair.log)"
    fi
    local fpid
    read -r fpid <"$STATE/impair.ready"
    [ "$fpid" = "$(cut -d' ' -f1 "$STATE/impair.pid")" ] || pid_record "$fpid" impair-child
  fi
  fail_point forwarder

  reachable "$NS_C" "$P_CIP" || die "client -> proxy ($P_CIP) does not answer"
  reachable "$NS_P" "$T_IP" || die "proxy -> target ($T_IP) does not answer"
  if [ "$DIRECT" = 1 ]; then reachable "$NS_C" "$T_IP" || die "client -> target over the direct path does not answer"; fi
  fail_point verify
  echo up >"$STATE/ok"
}

cmd_up() {
  validate_up
  teardown
  building=1
  build
  building=0
  log "up: $(config_line)"
  log "proxy listens on $P_CIP (cs-proxy), target $T_IP (cs-target), client $C_IP (cs-client)$([ "$DIRECT" = 1 ] && echo ", direct path $C_DIP -> $T_IP")"
}

lab_is_up() { # the lab of the current config is complete
  [ -f "$STATE/ok" ] && [ -f "$STATE/config" ] || return 1
  local ns
  for ns in "$NS_C" "$NS_P" "$NS_T"; do ns_exists "$ns" || return 1; done
  if grep -q 'wan=1' "$STATE/config"; then
    ns_exists "$NS_W" && pid_of impair >/dev/null || return 1
  fi
}

# The forwarder's counters, fresh: SIGUSR1 makes it rewrite them.
impair_snapshot() { # dest
  local pid gen i f=$LOGS/impair-stats.json
  pid=$(pid_of impair-child || pid_of impair) || return 1
  gen=$(stats_generation "$f")
  kill -USR1 "$pid" 2>/dev/null || return 1
  for ((i = 0; i < 40; i++)); do
    if [ "$(stats_generation "$f")" != "$gen" ]; then cp "$f" "$1"; return 0; fi
    sleep 0.05
  done
  return 1
}
stats_generation() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["generation"])' "$1" 2>/dev/null || echo 0; }
impair_rates() { # before after: what the forwarder did between two snapshots
  python3 - "$1" "$2" <<'EOF'
import json, sys
a, b = (json.load(open(f)) for f in sys.argv[1:3])
dt = b["seconds"] - a["seconds"]
for name, cb in b["directions"].items():
    ca = a["directions"][name]
    d = {k: cb[k] - ca[k] for k in cb}
    if d["frames_in"] < dt:  # under one frame a second: idle (ARP and such)
        continue
    late = d["late_us_sum"] / d["frames_out"] if d["frames_out"] else 0
    print(f"  {name}: {d['frames_in'] / dt:.0f} frames/s ({d['segments_in'] / dt:.0f} wire packets/s, "
          f"{d['bytes_in'] * 8 / dt / 1e9:.2f} Gbit/s), dropped {d['dropped_loss']} (loss) "
          f"{d['dropped_limit']} (limit) {d['dropped_rcvbuf']} (receive buffer), "
          f"{d['send_errors']} send errors, {late:.0f} us late on average")
print(f"  over {dt:.1f} s")
EOF
}

# --- status ---------------------------------------------------------------

cmd_status() {
  local ns any=0 state
  for ns in "${ALL_NS[@]}"; do ns_exists "$ns" && any=1; done
  if lab_is_up; then state=up; elif [ $any = 1 ] || [ -d "$STATE" ]; then state=partial; else state=down; fi
  echo "lab: $state"
  [ -f "$STATE/config" ] && echo "config: $(cat "$STATE/config")"
  for ns in "${ALL_NS[@]}"; do
    ns_exists "$ns" || continue
    echo "namespace $ns:"
    local dev
    for dev in $(ip -n "$ns" -o link show | awk -F': ' '{print $2}' | cut -d@ -f1); do
      [ "$dev" = lo ] && continue
      local q a qd
      q=$(ip -n "$ns" -d link show "$dev" | grep -o 'numtxqueues [0-9]* numrxqueues [0-9]*' || true)
      a=$(ip -n "$ns" -4 -o addr show dev "$dev" | awk '{print $4}' | tr '\n' ' ')
      qd=$(tc -n "$ns" qdisc show dev "$dev" | awk '$2=="tbf"{print "tbf", $0}' | grep -o 'rate [^ ]* burst [^ ]*' || true)
      echo "  $dev: ${a:-no address} ($q)${qd:+ $qd} $(ip -n "$ns" -o link show "$dev" | grep -o 'state [A-Z]*')"
    done
    local pids
    pids=$(ip netns pids "$ns" 2>/dev/null | tr '\n' ' ')
    [ -n "$pids" ] && echo "  processes: $pids"
  done
  local name p
  for name in impair proxy serve; do
    if p=$(pid_of "$name"); then echo "$name: pid $p"; fi
  done
  if [ -f "$LOGS/impair-stats.json" ] && pid_of impair >/dev/null; then
    python3 - "$LOGS/impair-stats.json" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
for name, c in d["directions"].items():
    print(f"  {name}: {c['frames_in']} frames in ({c['gso_frames']} GSO, largest {c['max_frame']} B; "
          f"{c['segments_in']} wire packets), {c['frames_out']} out, dropped {c['dropped_loss']} (loss) "
          f"{c['dropped_limit']} (limit) {c['dropped_rcvbuf']} (receive buffer), {c['send_errors']} send errors")
EOF
  fi
  [ "$state" = up ]
}

# --- ping -----------------------------------------------------------------

cmd_ping() { # ns addr [count]: prints one RTT in ms per answer
  [ $# -ge 2 ] || die "usage: ping NS ADDR [COUNT]"
  ns_exists "$1" || die "no namespace $1"
  nsx "$1" python3 - "$2" "${3:-5}" <<'EOF'
import os, socket, struct, sys, time
dst, count = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
s.settimeout(1)
def csum(b):
    t = sum(struct.unpack(f"!{len(b) // 2}H", b))
    t = (t >> 16) + (t & 0xFFFF)
    return ~(t + (t >> 16)) & 0xFFFF
ident, got = os.getpid() & 0xFFFF, []
for seq in range(count):
    p = struct.pack("!BBHHH", 8, 0, 0, ident, seq) + b"cs-lab!!"
    p = p[:2] + struct.pack("!H", csum(p)) + p[4:]
    t = time.monotonic()
    s.sendto(p, (dst, 0))
    try:
        while True:
            d = s.recv(2048)
            ihl = (d[0] & 15) * 4
            typ, _, _, i, sq = struct.unpack("!BBHHH", d[ihl:ihl + 8])
            if typ == 0 and i == ident and sq == seq:
                got.append((time.monotonic() - t) * 1e3)
                break
    except socket.timeout:
        pass
    time.sleep(0.02)
print(" ".join(f"{r:.3f}" for r in got))
sys.exit(0 if got else 1)
EOF
}

# --- run ------------------------------------------------------------------

running=0 run_owns_lab=0 keep=0
stop_run() {
  [ "$running" = 1 ] || return 0
  running=0
  stop_named loadgen proxy serve
}

contains() { # word args...: whether word is among args
  local w=$1 a; shift
  for a in "$@"; do [ "$a" = "$w" ] && return 0; done
  return 1
}

cmd_run() {
  local proxy_args="" proxy_cpu=1 load_cpu=0 serve_cpu="" json="" proxy_pid_opt=1
  while [ $# -gt 0 ]; do
    [ "$1" = -- ] && { shift; break; }
    parse_up_opt "$@"
    if [ "$UP_SHIFT" != 0 ]; then
      up_opts_given=1
      shift "$UP_SHIFT"
      continue
    fi
    case "$1" in
    --proxy-args) proxy_args=$2; shift 2 ;;
    --proxy-cpu) proxy_cpu=$2; shift 2 ;;
    --load-cpu) load_cpu=$2; shift 2 ;;
    --serve-cpu) serve_cpu=$2; shift 2 ;;
    --json) json=$2; shift 2 ;;
    --no-proxy-pid) proxy_pid_opt=0; shift ;;
    --keep) keep=1; shift ;;
    *) die "run: unknown option $1 (loadgen's arguments go after --)" ;;
    esac
  done
  [ $# -gt 0 ] || die "run: no loadgen arguments (after --)"
  serve_cpu=${serve_cpu:-$load_cpu}
  [ -x "$CORESOCKS_BIN" ] || die "no coresocks binary at $CORESOCKS_BIN (CORESOCKS_BIN)"
  [ -x "$LOADGEN_BIN" ] || die "no loadgen binary at $LOADGEN_BIN (LOADGEN_BIN)"
  [ -z "$json" ] || json=$(cd "$(dirname "$json")" && pwd)/$(basename "$json")

  # The lab: reuse one that is up with the same options (or any, when run
  # got no up options); else bring one up and own it.
  validate_up
  if lab_is_up && { [ "$up_opts_given" = 0 ] || [ "$(cat "$STATE/config")" = "$(config_line)" ]; }; then
    log "using the lab that is up: $(cat "$STATE/config")"
  else
    run_owns_lab=1
    cmd_up
  fi
  local direct_ok
  direct_ok=$(grep -o 'direct=[01]' "$STATE/config" | cut -d= -f2)

  # The targets, then the proxy.
  running=1
  mkdir -p "$LOGS"
  ip netns exec "$NS_T" taskset -c "$serve_cpu" "$LOADGEN_BIN" serve --listen "$T_IP:$SERVE_PORT" \
    </dev/null >"$LOGS/serve.log" 2>&1 &
  pid_record $! serve
  fail_point serve
  local spid
  spid=$(cut -d' ' -f1 "$STATE/serve.pid")
  serve_ready() { grep -q 'ready on' "$LOGS/serve.log"; }
  wait_started 50 "$spid" serve_ready || { cat "$LOGS/serve.log" >&2; die "loadgen serve did not start"; }

  local pargs=() extra=()
  read -ra extra <<<"$proxy_args"
  pargs=(--listen "$P_CIP:$PROXY_PORT" --allow 10.201.2.0/24)
  contains --cores "${extra[@]}" || pargs+=(--cores all)
  contains --metrics "${extra[@]}" || pargs+=(--metrics "$P_CIP:$METRICS_PORT")
  contains --access-log "${extra[@]}" || pargs+=(--access-log off)
  contains --log-level "${extra[@]}" || pargs+=(--log-level warn)
  contains --shutdown-grace "${extra[@]}" || pargs+=(--shutdown-grace 1s)
  ip netns exec "$NS_P" taskset -c "$proxy_cpu" "$CORESOCKS_BIN" "${pargs[@]}" "${extra[@]}" \
    </dev/null >"$LOGS/proxy.log" 2>&1 &
  local ppid=$!
  pid_record "$ppid" proxy
  fail_point proxy
  listening() { [ -n "$(nsx "$NS_P" ss -Hltn "sport = :$PROXY_PORT")" ]; }
  wait_started 50 "$ppid" listening || { cat "$LOGS/proxy.log" >&2; die "coresocks did not start listening on $P_CIP:$PROXY_PORT"; }

  # loadgen's arguments, with what the lab fixes added.
  local args=("$@") out=() i scen=-1
  local scenarios=" throughput cps latency udp idle "
  if [ "${args[0]}" = compare ]; then
    out=(compare)
    contains --proxy "${args[@]}" || {
      out+=(--proxy "coresocks=$P_CIP:$PROXY_PORT")
      [ "$proxy_pid_opt" = 0 ] || contains --proxy-pid "${args[@]}" || out+=(--proxy-pid "coresocks=$ppid")
    }
    [ -z "$json" ] || out+=(--json "$json")
    for ((i = 1; i < ${#args[@]}; i++)); do
      if [ "$scen" = -1 ] && [[ $scenarios == *" ${args[i]} "* ]]; then
        scen=$i
        out+=("${args[i]}")
        contains --target "${args[@]:i}" || out+=(--target "$T_IP:$SERVE_PORT")
      else
        out+=("${args[i]}")
      fi
    done
    [ "$scen" != -1 ] || die "run: compare needs a scenario (throughput, cps, latency, udp, idle)"
  elif [[ $scenarios == *" ${args[0]} "* ]]; then
    out=("${args[0]}")
    if ! contains --direct "${args[@]}"; then
      contains --proxy "${args[@]}" || out+=(--proxy "$P_CIP:$PROXY_PORT")
      [ "$proxy_pid_opt" = 0 ] || contains --proxy-pid "${args[@]}" || out+=(--proxy-pid "$ppid")
    fi
    contains --target "${args[@]}" || out+=(--target "$T_IP:$SERVE_PORT")
    [ -z "$json" ] || out+=(--json "$json")
    out+=("${args[@]:1}")
  else
    die "run: '${args[0]}' is not a loadgen scenario (throughput, cps, latency, udp, idle, compare)"
  fi
  if contains --direct "${args[@]}" && [ "$direct_ok" != 1 ]; then
    die "run: --direct needs the direct path (this lab was brought up with --no-direct)"
  fi

  local wan_before=$STATE/impair-before.json wan_after=$STATE/impair-after.json
  rm -f "$wan_before" "$wan_after"
  impair_snapshot "$wan_before" || true
  log "loadgen ${out[*]}"
  # In the background with a wait, so that a signal to this script is
  # handled at once (on_exit stops loadgen, the proxy and the targets).
  local rc=0
  ip netns exec "$NS_C" taskset -c "$load_cpu" "$LOADGEN_BIN" "${out[@]}" </dev/null &
  pid_record $! loadgen
  wait $! || rc=$?
  rm -f "$STATE/loadgen.pid"

  # Afterwards: the proxy's metrics and the forwarder's counters.
  nsx "$NS_P" python3 -c "import urllib.request,sys; sys.stdout.write(urllib.request.urlopen('http://$P_CIP:$METRICS_PORT/metrics', timeout=2).read().decode())" \
    >"$LOGS/proxy-metrics.txt" 2>/dev/null || true
  if [ -f "$wan_before" ] && impair_snapshot "$wan_after"; then
    log "forwarder (delay $(grep -o 'delay=[^ ]*' "$STATE/config" | cut -d= -f2), loss $(grep -o 'loss=[^ ]*' "$STATE/config" | cut -d= -f2)) during the run:"
    impair_rates "$wan_before" "$wan_after" >&2 || true
  fi
  stop_run
  log "loadgen exited with $rc; logs in $LOGS"
  return "$rc"
}

on_exit() {
  local rc=$?
  trap - EXIT INT TERM
  stop_run
  if [ "$building" = 1 ]; then
    log "up failed: removing what it built"
    teardown
  elif [ "$run_owns_lab" = 1 ] && [ "$keep" = 0 ]; then
    teardown
  fi
  exit "$rc"
}

main() {
  [ "$(id -u)" = 0 ] || die "needs root (network namespaces)"
  local cmd=${1:-help}
  [ $# -gt 0 ] && shift
  trap on_exit EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  case "$cmd" in
  up)
    while [ $# -gt 0 ]; do
      parse_up_opt "$@"
      [ "$UP_SHIFT" != 0 ] || die "up: unknown option $1"
      shift "$UP_SHIFT"
    done
    cmd_up
    ;;
  down) teardown; log "down" ;;
  status) cmd_status ;;
  ping) cmd_ping "$@" ;;
  run) cmd_run "$@" ;;
  help | -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' ;;
  *) die "unknown command $cmd (up, down, status, ping, run, help)" ;;
  esac
}

main "$@"
