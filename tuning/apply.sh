#!/usr/bin/env bash
# tuning/apply.sh: show, apply and revert a coresocks tuning profile.
#
#   tuning/apply.sh --profile throughput --interface eth0 --ports 1080,9090
#   tuning/apply.sh --profile throughput --interface eth0 --ports 1080,9090 --apply
#   tuning/apply.sh --revert
#
# Options:
#   --profile NAME       tuning/profiles/NAME.conf: throughput, latency, many-connections
#   --profile-file FILE  a profile of your own (format: top of any tuning/profiles/*.conf)
#   --interface IF       the NIC for ethtool, rps/xps/rfs and irq-affinity lines;
#                        without it those lines are skipped
#   --ports LIST         the proxy's own listen/metrics ports (1080,9090) for reserve-ports
#   --cpus LIST          CPUs for rps, xps and irq-affinity (coresocks' --cores, e.g. 2-15);
#                        overrides the profile line's list; default: all online CPUs
#   --apply              change what differs, saving first the original value of exactly
#                        what it changes to the state file
#   --revert             restore what the state file recorded, then remove it
#   --state FILE         the state file (default /var/lib/coresocks-tune/state)
#   -h, --help           this text
#
# The default is a dry run: it changes nothing and prints, for every setting,
#   name: current -> proposed                 (would change)
#   name: current -> proposed (unchanged)
#   name: current -> proposed (advice) ...    (never changed by this script)
#   name: skipped, why                        (unknown sysctl, unsupported, ...)
# each followed by the profile line's reason (`  # why`).
#
# Exit codes:
#   0  done: dry run printed, changes applied (or none needed), state reverted
#   1  a change, a restore or the state file write failed; what succeeded stays
#      done, and the state file keeps exactly what still needs restoring
#   2  usage: bad option, unknown profile, malformed profile line, no such interface
#   3  refused: --apply/--revert without root, --apply over an existing state
#      file, --revert without one, or a state file of another network
#      namespace or an earlier boot
#
# Settings last until reboot; to keep them, run --apply at boot with
# --state /run/coresocks-tune/state (see tuning/README.md).
#
# Uses bash, coreutils, grep/sed/awk, iproute2 (ip), procps (pgrep) and ethtool
# when installed. ETHTOOL=PATH names another ethtool binary (the tests use it).
set -uo pipefail
export LC_ALL=C
prog=apply.sh
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ETHTOOL=${ETHTOOL:-ethtool}
default_state=/var/lib/coresocks-tune/state

die() { local code=$1; shift; printf '%s: %s\n' "$prog" "$*" >&2; exit "$code"; }
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; }

# ---------------------------------------------------------------- options
profile='' profile_file='' iface='' ports='' cpus_opt='' mode=dry state=$default_state
need() { [ "$2" -ge 2 ] || die 2 "$1 needs a value (see --help)"; }
while [ $# -gt 0 ]; do
  case $1 in
    --profile) need "$1" $#; profile=$2; shift 2 ;;
    --profile=*) profile=${1#*=}; shift ;;
    --profile-file) need "$1" $#; profile_file=$2; shift 2 ;;
    --profile-file=*) profile_file=${1#*=}; shift ;;
    --interface) need "$1" $#; iface=$2; shift 2 ;;
    --interface=*) iface=${1#*=}; shift ;;
    --ports) need "$1" $#; ports=$2; shift 2 ;;
    --ports=*) ports=${1#*=}; shift ;;
    --cpus) need "$1" $#; cpus_opt=$2; shift 2 ;;
    --cpus=*) cpus_opt=${1#*=}; shift ;;
    --state) need "$1" $#; state=$2; shift 2 ;;
    --state=*) state=${1#*=}; shift ;;
    --apply|--revert)
      want=${1#--}
      [ "$mode" = dry ] || [ "$mode" = "$want" ] || die 2 "--apply and --revert exclude each other"
      mode=$want; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die 2 "unknown option '$1' (see --help)" ;;
  esac
done
[ -n "$state" ] || die 2 "--state needs a file name"

netns_id() { readlink /proc/self/ns/net 2>/dev/null || echo unknown; }
boot_id() { cat /proc/sys/kernel/random/boot_id 2>/dev/null || echo unknown; }
state_boot() { sed -n 's/^boot|//p' "$state" 2>/dev/null | head -n 1; }
stale_state() { # the state file was written before the last reboot
  local b
  b=$(state_boot)
  [ -n "$b" ] && [ "$b" != "$(boot_id)" ]
}

# ---------------------------------------------------------------- helpers
norm() { local -a w; read -ra w <<<"$1"; printf '%s' "${w[*]}"; }
show() { local v; v=$(norm "$1"); if [ -n "$v" ]; then printf '%s' "$v"; else printf '""'; fi; }

# "0-2,5" -> "0 1 2 5"; fails on bad syntax.
cpulist_expand() {
  local part lo hi c
  local -a parts acc=()
  [[ $1 =~ ^[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*$ ]] || return 1
  IFS=, read -ra parts <<<"$1"
  for part in "${parts[@]}"; do
    lo=$((10#${part%-*})) hi=$((10#${part#*-}))
    ((lo <= hi)) || return 1
    for ((c = lo; c <= hi; c++)); do acc+=("$c"); done
  done
  printf '%s' "${acc[*]}"
}
cpulist_same() {
  local a b
  a=$(cpulist_expand "$(norm "$1")" | tr ' ' '\n' | sort -nu | tr '\n' ' ') || return 1
  b=$(cpulist_expand "$(norm "$2")" | tr ' ' '\n' | sort -nu | tr '\n' ' ') || return 1
  [ "$a" = "$b" ]
}
# CPU numbers -> hex mask as the kernel writes it (comma every 32 bits).
cpus_to_mask() {
  local c i max=0 s=
  local -a nib=()
  for c in "$@"; do ((c > max)) && max=$c; done
  for ((i = 0; i <= max / 4; i++)); do nib[i]=0; done
  for c in "$@"; do ((nib[c / 4] |= 1 << (c % 4))); done
  for ((i = max / 4; i >= 0; i--)); do
    s+=$(printf '%x' "${nib[i]}")
    ((i > 0 && i % 8 == 0)) && s+=,
  done
  printf '%s' "$s"
}
mask_norm() {
  local m=${1//,/}
  m=$(norm "${m,,}")
  while [[ $m == 0* ]]; do m=${m#0}; done
  printf '%s' "${m:-0}"
}
# a >= b for non-negative decimal numbers of any length
num_ge() {
  local a=$1 b=$2
  while [[ ${#a} -gt 1 && $a == 0* ]]; do a=${a#0}; done
  while [[ ${#b} -gt 1 && $b == 0* ]]; do b=${b#0}; done
  if ((${#a} != ${#b})); then ((${#a} > ${#b})); return; fi
  [[ $a > $b || $a == "$b" ]]
}
pow2_ceil() { local n=$1 p=1; while ((p < n)); do ((p <<= 1)); done; printf '%s' "$p"; }
# comma lists of ports and ranges -> the kernel's form: sorted, merged (1080-1082,2000)
ports_merge() {
  local list item
  local -a items
  for list in "$@"; do
    list=$(norm "$list")
    [ -n "$list" ] || continue
    IFS=, read -ra items <<<"$list"
    for item in "${items[@]}"; do printf '%d %d\n' "$((10#${item%-*}))" "$((10#${item#*-}))"; done
  done | sort -n -k1,1 -k2,2 | awk '
    function r(a, b) { return a == b ? a : a "-" b }
    n && $1 <= hi + 1 { if ($2 > hi) hi = $2; next }
    { if (n) s = s (s == "" ? "" : ",") r(lo, hi); lo = $1; hi = $2; n = 1 }
    END { if (n) s = s (s == "" ? "" : ",") r(lo, hi); print s }'
}
# write a value to a /proc or /sys file; prints the error text on failure
write_file() {
  local err
  if err=$( { printf '%s\n' "$2" >"$1"; } 2>&1); then return 0; fi
  printf '%s' "${err##*: }"
  return 1
}

have_ethtool() { command -v "$ETHTOOL" >/dev/null 2>&1; }
declare -A ETH_OUT=() ETH_RC=()
eth_query() { # -k|-g|-c: cached output of ethtool OPT IF
  if [ -z "${ETH_RC[$1]:-}" ]; then
    ETH_OUT[$1]=$("$ETHTOOL" "$1" "$iface" 2>&1)
    ETH_RC[$1]=$?
  fi
  [ "${ETH_RC[$1]}" -eq 0 ]
}
feat_long() {
  case $1 in
    sg) echo scatter-gather ;; tso) echo tcp-segmentation-offload ;;
    gso) echo generic-segmentation-offload ;; gro) echo generic-receive-offload ;;
    lro) echo large-receive-offload ;; rx) echo rx-checksumming ;; tx) echo tx-checksumming ;;
    rxvlan) echo rx-vlan-offload ;; txvlan) echo tx-vlan-offload ;;
    ntuple) echo ntuple-filters ;; rxhash) echo receive-hashing ;; *) echo "$1" ;;
  esac
}
ring_key() {
  case $1 in
    rx) echo RX ;; tx) echo TX ;; rx-mini) echo "RX Mini" ;; rx-jumbo) echo "RX Jumbo" ;;
    rx-buf-len) echo "RX Buf Len" ;; cqe-size) echo "CQE Size" ;; *) return 1 ;;
  esac
}
ring_value() { # KEY max|cur
  printf '%s\n' "${ETH_OUT[-g]}" | awk -v key="$1" -v want="$2" '
    /^Pre-set maximums:/ { s = "max"; next }
    /^Current hardware settings:/ { s = "cur"; next }
    s == want { k = $0; sub(/:.*/, "", k); v = $0; sub(/^[^:]*:[ \t]*/, "", v); if (k == key) { print v; exit } }'
}

eth_current() { # -K|-G|-C PARAM: the interface's current value, empty when unknown
  case $1 in
    -K) eth_query -k && printf '%s\n' "${ETH_OUT[-k]}" | awk -v f="$(feat_long "$2")" '{ sub(/^[ \t]+/, "") } index($0, f ": ") == 1 { split(substr($0, length(f) + 3), v, " "); print v[1]; exit }' ;;
    -G) eth_query -g && ring_value "$(ring_key "$2")" cur ;;
    -C)
      eth_query -c || return 0
      case $2 in
        adaptive-rx) printf '%s\n' "${ETH_OUT[-c]}" | sed -n 's/^Adaptive RX: *\([^ ]*\).*/\1/p' ;;
        adaptive-tx) printf '%s\n' "${ETH_OUT[-c]}" | sed -n 's/^Adaptive RX:.*TX: *\([^ ]*\).*/\1/p' ;;
        *) printf '%s\n' "${ETH_OUT[-c]}" | awk -v k="$2" 'index($0, k ": ") == 1 { print substr($0, length(k) + 3); exit }' ;;
      esac ;;
  esac
}

# ---------------------------------------------------------------- validation
if [ "$mode" != dry ] && [ "$EUID" -ne 0 ]; then
  die 3 "--$mode needs root (it writes /proc/sys, /sys and NIC settings); the dry run does not"
fi

# ================================================================ revert
if [ "$mode" = revert ]; then
  [ -e "$state" ] || die 3 "no state file $state: nothing to revert"
  [ -r "$state" ] || die 3 "cannot read state file $state"
  stale_state && die 3 "state file $state is from an earlier boot: what it would undo is gone already; remove it"
  here_ns=$(netns_id)
  rec=()
  while IFS= read -r line || [ -n "$line" ]; do
    case $line in
      '#'* | '') continue ;;
      boot\|*) ;;
      netns\|*)
        [ "${line#netns|}" = "$here_ns" ] ||
          die 3 "state file $state belongs to network namespace ${line#netns|}, this is $here_ns (run --revert there, e.g. under ip netns exec)" ;;
      file\|* | ethtool-*\|*) rec+=("$line") ;;
      *) die 3 "state file $state: unknown record '${line%%|*}' (not written by this script?)" ;;
    esac
  done <"$state"
  failed=() restored=0
  for ((i = ${#rec[@]} - 1; i >= 0; i--)); do
    line=${rec[i]}
    kind=${line%%|*} rest=${line#*|}
    target=${rest%%|*} rest=${rest#*|}
    param=${rest%%|*} value=${rest#*|}
    case $kind in
      file)
        label=$param cur=$(cat "$target" 2>/dev/null) || cur='?'
        if err=$(write_file "$target" "$value"); then
          back=$(cat "$target" 2>/dev/null)
          if [ "$back" = "$value" ]; then
            echo "$label: $(show "$cur") -> $(show "$value") (restored)"
          else
            echo "$label: $(show "$cur") -> $(show "$value") (restored; reads back $(show "$back"))"
          fi
          restored=$((restored + 1))
        else
          echo "$label: $(show "$cur") -> $(show "$value") (failed: $err)"
          failed=("$line" "${failed[@]}")
        fi
        ;;
      ethtool-*)
        opt=${kind#ethtool} label="$target ${param}"
        case $opt in -K) label="$target offload $param" ;; -G) label="$target ring $param" ;; -C) label="$target coalesce $param" ;; esac
        iface=$target ETH_RC=()
        cur=$(have_ethtool && eth_current "$opt" "$param")
        if out=$("$ETHTOOL" "$opt" "$target" "$param" "$value" 2>&1); then
          echo "$label: ${cur:-?} -> $value (restored)"
          restored=$((restored + 1))
        else
          echo "$label: ${cur:-?} -> $value (failed: $(printf '%s' "$out" | tail -n 1))"
          failed=("$line" "${failed[@]}")
        fi
        ;;
    esac
  done
  if [ ${#failed[@]} -eq 0 ]; then
    rm -f -- "$state" || die 1 "restored $restored settings but cannot remove $state"
    echo "reverted $restored settings; removed $state"
    exit 0
  fi
  {
    echo "# coresocks-tune state v1: what apply.sh --revert could not restore yet"
    echo "boot|$(boot_id)"
    echo "netns|$here_ns"
    printf '%s\n' "${failed[@]}"
  } >"$state.tmp.$$" && mv -f -- "$state.tmp.$$" "$state"
  echo "reverted $restored settings; ${#failed[@]} failed and stay in $state (fix and run --revert again)" >&2
  exit 1
fi

# ================================================================ load the profile
if [ -n "$profile" ] && [ -n "$profile_file" ]; then die 2 "give --profile or --profile-file, not both"; fi
if [ -n "$profile" ]; then
  profile_file=$here/profiles/$profile.conf
  if [[ $profile == */* ]] || [ ! -f "$profile_file" ]; then
    have=''
    for f in "$here"/profiles/*.conf; do [ -e "$f" ] && { f=${f##*/}; have+=" ${f%.conf}"; }; done
    die 2 "no profile '$profile' (have:${have:- none})"
  fi
elif [ -z "$profile_file" ]; then
  die 2 "give --profile NAME (throughput, latency, many-connections) or --profile-file FILE"
fi
[ -r "$profile_file" ] || die 2 "cannot read profile $profile_file"

if [ -n "$iface" ]; then
  if [[ $iface == */* ]] || [[ $iface == . ]] || [[ $iface == .. ]] || ! ip link show dev "$iface" >/dev/null 2>&1; then
    names=$(ip -o link show 2>/dev/null | awk -F': ' '{ sub(/@.*/, "", $2); print $2 }' | paste -sd, - | sed 's/,/, /g')
    die 2 "no interface $iface (ip link shows: ${names:-nothing})"
  fi
fi
if [ -n "$ports" ]; then
  [[ $ports =~ ^[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*$ ]] || die 2 "--ports $ports: want a comma list of ports or ranges, e.g. 1080,9090"
  IFS=, read -ra _p <<<"$ports"
  for p in "${_p[@]}"; do
    lo=$((10#${p%-*})) hi=$((10#${p#*-}))
    ((lo >= 1 && hi <= 65535 && lo <= hi)) || die 2 "--ports $ports: $p is not a port or range within 1-65535"
  done
fi
online=$(cat /sys/devices/system/cpu/online 2>/dev/null) || online=0
online_cpus=$(cpulist_expand "$online") || online_cpus=0
if [ -n "$cpus_opt" ]; then
  opt_cpus=$(cpulist_expand "$cpus_opt") || die 2 "--cpus $cpus_opt: want a CPU list, e.g. 2-15 or 0,2,4"
  for c in $opt_cpus; do
    [[ " $online_cpus " == *" $c "* ]] || die 2 "--cpus $cpus_opt: CPU $c is not online (online: $online)"
  done
fi

if [ "$mode" = apply ] && [ -e "$state" ] && stale_state; then
  die 3 "state file $state is from an earlier boot (its changes are gone); remove it, then --apply again"
fi
if [ "$mode" = apply ] && [ -e "$state" ]; then
  die 3 "state file $state exists: a profile is already applied; run --revert first (or --state FILE for another one)"
fi

# Parse and check every line before looking at the system.
L_NO=() L_DIR=() L_ARGS=() L_WHY=()
n=0
bad() { die 2 "$profile_file:$n: $*"; }
isnum() { [[ $1 =~ ^[0-9]+$ ]]; }
while IFS= read -r raw || [ -n "$raw" ]; do
  n=$((n + 1))
  body=${raw%%#*} why=
  [[ $raw == *#* ]] && why=$(norm "${raw#*#}")
  read -ra w <<<"$body"
  [ ${#w[@]} -gt 0 ] || continue
  d=${w[0]}
  a=("${w[@]:1}")
  case $d in
    sysctl) [ ${#a[@]} -ge 2 ] || bad "sysctl KEY VALUE..." ;;
    sysctl-min)
      [ ${#a[@]} -ge 2 ] || bad "sysctl-min KEY NUMBER..."
      for x in "${a[@]:1}"; do isnum "$x" || bad "sysctl-min takes numbers, not '$x'"; done ;;
    netdev_max_backlog | busy-poll | rfs)
      if ! { [ ${#a[@]} -eq 1 ] && isnum "${a[0]}"; }; then bad "$d NUMBER"; fi ;;
    reserve-ports) [ ${#a[@]} -eq 0 ] || bad "reserve-ports takes no value (the ports come from --ports)" ;;
    rlimit)
      if ! { [ ${#a[@]} -eq 2 ] && [[ ${a[0]} == nofile || ${a[0]} == memlock ]] &&
        { isnum "${a[1]}" || [ "${a[1]}" = infinity ]; }; }; then bad "rlimit nofile|memlock NUMBER|infinity"; fi ;;
    rps | xps | irq-affinity)
      [ ${#a[@]} -le 1 ] || bad "$d [CPULIST]"
      if [ ${#a[@]} -eq 1 ]; then cpulist_expand "${a[0]}" >/dev/null || bad "$d: bad CPU list '${a[0]}'"; fi ;;
    ethtool-offload) if ! { [ ${#a[@]} -eq 2 ] && [[ ${a[1]} == on || ${a[1]} == off ]]; }; then bad "ethtool-offload FEATURE on|off"; fi ;;
    ethtool-ring) if ! { [ ${#a[@]} -eq 2 ] && isnum "${a[1]}"; }; then bad "ethtool-ring rx|tx|rx-mini|rx-jumbo NUMBER"; fi ;;
    ethtool-coalesce) [ ${#a[@]} -eq 2 ] || bad "ethtool-coalesce PARAM VALUE" ;;
    *) bad "unknown setting '$d'" ;;
  esac
  L_NO+=("$n") L_DIR+=("$d") L_ARGS+=("${a[*]}") L_WHY+=("$why")
done <"$profile_file"

# ================================================================ plan
# One item per setting: what it is, its current and proposed value, and its
# status: change, same, skip or advice.
I_KIND=() I_TARGET=() I_LABEL=() I_CUR=() I_NEW=() I_ST=() I_NOTE=() I_WHY=()
why=
add() { # kind target label cur new status note
  I_KIND+=("$1") I_TARGET+=("$2") I_LABEL+=("$3") I_CUR+=("$4") I_NEW+=("$5") I_ST+=("$6") I_NOTE+=("${7:-}") I_WHY+=("$why")
  why=
}
skip() { add skip - "$1" "" "" skip "$2"; }

# file_item PATH LABEL PROPOSED [plain|mask|cpulist|ports] [NOTE-IF-UNCHANGED]
file_item() {
  local path=$1 label=$2 new=$3 how=${4:-plain} samenote=${5:-} cur same=no
  if [ ! -e "$path" ]; then
    if [[ $path == /proc/sys/* ]]; then skip "$label" "not on this kernel (or not in this network namespace)"
    else skip "$label" "no $path"; fi
    return
  fi
  if ! cur=$(cat "$path" 2>&1); then
    skip "$label" "cannot read $path: ${cur##*: }$([ "$EUID" -ne 0 ] && echo ' (try as root)')"
    return
  fi
  case $how in
    plain) [ "$(norm "$cur")" = "$(norm "$new")" ] && same=yes ;;
    mask) [ "$(mask_norm "$cur")" = "$(mask_norm "$new")" ] && same=yes ;;
    cpulist) cpulist_same "$cur" "$new" && same=yes ;;
    ports) [ "$(ports_merge "$cur")" = "$(ports_merge "$new")" ] && same=yes ;;
  esac
  if [ $same = yes ]; then
    add file "$path" "$label" "$cur" "$new" same "$samenote"
  elif [[ $cur == *$'\n'* ]]; then
    skip "$label" "value spans several lines; not handled"
  elif [ "$EUID" -eq 0 ] && [ ! -w "$path" ]; then
    skip "$label" "read-only here"
  else
    add file "$path" "$label" "$cur" "$new" change
  fi
}
sysctl_path() { if [[ $1 == */* ]]; then echo "/proc/sys/$1"; else echo "/proc/sys/${1//.//}"; fi; }
sysctl_set() { file_item "$(sysctl_path "$1")" "$1" "$2"; }
sysctl_min() { # raise each field to at least the profile's; never lower
  local key=$1 want=$2 path cur i
  local -a cf wf res=()
  path=$(sysctl_path "$key")
  if [ ! -r "$path" ]; then file_item "$path" "$key" "$want"; return; fi
  cur=$(cat "$path" 2>/dev/null)
  read -ra cf <<<"$cur"
  read -ra wf <<<"$want"
  if [ ${#cf[@]} -ne ${#wf[@]} ]; then skip "$key" "has ${#cf[@]} fields here, the profile gives ${#wf[@]}"; return; fi
  for ((i = 0; i < ${#wf[@]}; i++)); do
    if [[ ${cf[i]} =~ ^[0-9]+$ ]] && num_ge "${cf[i]}" "${wf[i]}"; then res+=("${cf[i]}"); else res+=("${wf[i]}"); fi
  done
  if [ "${res[*]}" = "$(norm "$cur")" ] && [ "${res[*]}" != "$(norm "$want")" ]; then
    file_item "$path" "$key" "${res[*]}" plain "already above $want"
  else
    file_item "$path" "$key" "${res[*]}"
  fi
}

cpus_for() { # the line's CPU list, overridden by --cpus; default all online
  if [ -n "$cpus_opt" ]; then echo "$opt_cpus"
  elif [ -n "$1" ]; then cpulist_expand "$1"
  else echo "$online_cpus"; fi
}
queues() { # rx|tx -> queue directories in order
  local i=0
  while [ -d "/sys/class/net/$iface/queues/$1-$i" ]; do echo "/sys/class/net/$iface/queues/$1-$i"; i=$((i + 1)); done
}
ethtool_item() { # -K|-G|-C PARAM VALUE
  local opt=$1 param=$2 new=$3 what label cur line max note=
  case $opt in -K) what=offload ;; -G) what=ring ;; -C) what=coalesce ;; esac
  label="$iface $what $param"
  have_ethtool || { skip "$label" "ethtool not installed"; return; }
  case $opt in
    -K)
      eth_query -k || { skip "$label" "ethtool -k $iface failed: $(printf '%s' "${ETH_OUT[-k]}" | tail -n 1)"; return; }
      line=$(printf '%s\n' "${ETH_OUT[-k]}" | awk -v f="$(feat_long "$param")" '{ sub(/^[ \t]+/, "") } index($0, f ": ") == 1 { print substr($0, length(f) + 3); exit }')
      [ -n "$line" ] || { skip "$label" "no such feature on $iface"; return; }
      cur=${line%% *}
      if [ "$cur" != "$new" ] && [[ $line == *"[fixed]"* ]]; then skip "$label" "$cur, fixed by the driver"; return; fi
      ;;
    -G)
      eth_query -g || { skip "$label" "ring settings not supported by $iface's driver"; return; }
      key=$(ring_key "$param") || { skip "$label" "unknown ring parameter (rx, tx, rx-mini, rx-jumbo)"; return; }
      cur=$(ring_value "$key" cur)
      [[ $cur =~ ^[0-9]+$ ]] || { skip "$label" "not supported by $iface's driver"; return; }
      max=$(ring_value "$key" max)
      if [[ $max =~ ^[0-9]+$ ]] && ((new > max)); then note="the driver's maximum; the profile asks $new" new=$max; fi
      ;;
    -C)
      eth_query -c || { skip "$label" "coalescing settings not supported by $iface's driver"; return; }
      case $param in
        adaptive-rx | adaptive-tx)
          line=$(printf '%s\n' "${ETH_OUT[-c]}" | grep -m1 '^Adaptive RX:')
          if [ "$param" = adaptive-rx ]; then cur=$(sed -n 's/^Adaptive RX: *\([^ ]*\).*/\1/p' <<<"$line")
          else cur=$(sed -n 's/.*TX: *\([^ ]*\).*/\1/p' <<<"$line"); fi ;;
        *) cur=$(printf '%s\n' "${ETH_OUT[-c]}" | awk -v k="$param" 'index($0, k ": ") == 1 { print substr($0, length(k) + 3); exit }') ;;
      esac
      if [ -z "$cur" ] || [ "$cur" = n/a ]; then skip "$label" "not supported by $iface's driver"; return; fi
      ;;
  esac
  if [ "$cur" = "$new" ]; then add "ethtool$opt" "$iface|$param" "$label" "$cur" "$new" same "$note"
  else add "ethtool$opt" "$iface|$param" "$label" "$cur" "$new" change "$note"; fi
}

irq_items() { # CPULIST-or-empty
  local dev=/sys/class/net/$iface/device msi='' irq name idx pos=0 cpu
  local -a cpus irqs names=() idxs=()
  read -ra cpus <<<"$(cpus_for "$1")"
  if [ -d "$dev/msi_irqs" ]; then msi=$dev/msi_irqs
  elif [ -d "$dev/../msi_irqs" ] && [ "$(basename "$(readlink -f "$dev/subsystem")")" = virtio ]; then msi=$dev/../msi_irqs
  fi
  if [ -z "$msi" ]; then
    if [ -e "$dev" ]; then skip "$iface irq-affinity" "no MSI IRQs listed for $iface; set /proc/irq/N/smp_affinity_list by hand"
    else skip "$iface irq-affinity" "$iface has no device IRQs (virtual interface)"; fi
    return
  fi
  mapfile -t irqs < <(for f in "$msi"/*; do [ -e "$f" ] && echo "${f##*/}"; done | sort -n)
  local matched=0
  for irq in "${irqs[@]}"; do
    name=$(awk -v i="$irq:" '$1 == i { print $NF; exit }' /proc/interrupts)
    if [[ ${name,,} =~ (txrx|rxtx|rx|tx|input|output|comp|queue)[-_.]?([0-9]+) ]]; then
      names+=("$name") idxs+=("${BASH_REMATCH[2]}") matched=$((matched + 1))
    else
      names+=("$name") idxs+=("")
    fi
  done
  [ ${#irqs[@]} -gt 0 ] || { skip "$iface irq-affinity" "no MSI IRQs listed for $iface"; return; }
  for ((i = 0; i < ${#irqs[@]}; i++)); do
    irq=${irqs[i]}
    if ((matched > 0)); then
      [ -n "${idxs[i]}" ] || continue # a non-queue vector (config, admin, mailbox): leave it
      idx=$((10#${idxs[i]}))
    else
      idx=$pos pos=$((pos + 1))
    fi
    cpu=${cpus[idx % ${#cpus[@]}]}
    file_item "/proc/irq/$irq/smp_affinity_list" "irq $irq (${names[i]:-?}) smp_affinity_list" "$cpu" cpulist
  done
  if ((matched == 0)); then I_NOTE[${#I_NOTE[@]} - 1]="IRQ names show no queue numbers; all MSI vectors assigned in order"; fi
  if command -v pgrep >/dev/null 2>&1 && pgrep -x irqbalance >/dev/null 2>&1; then
    add advice - "irqbalance" "running" "stopped" advice "it moves these IRQs back: systemctl disable --now irqbalance, or IRQBALANCE_BANNED_CPULIST=$(IFS=,; echo "${cpus[*]}")"
  fi
}

rlimit_item() { # nofile|memlock N
  local what=$1 n=$2 cur pid key unit opt
  case $what in
    nofile) key="Max open files" unit=LimitNOFILE opt="ulimit -n" ;;
    memlock) key="Max locked memory" unit=LimitMEMLOCK opt="ulimit -l (KiB)" ;;
  esac
  pid=$(pgrep -o -x coresocks 2>/dev/null)
  if [ -n "$pid" ] && [ -r "/proc/$pid/limits" ]; then
    cur="$(awk -v k="$key" 'index($0, k) == 1 { $0 = substr($0, length(k) + 1); print $1; exit }' "/proc/$pid/limits") (running coresocks, pid $pid)"
  elif [ "$what" = nofile ]; then cur="$(ulimit -Sn)/$(ulimit -Hn) (this shell, soft/hard)"
  else cur="$(ulimit -Sl)/$(ulimit -Hl) KiB (this shell, soft/hard)"; fi
  add advice - "rlimit $what" "$cur" "$n" advice "set $unit=$n in the systemd unit (packaging/coresocks.service) or $opt before starting coresocks; this script changes no process limits"
}

for ((li = 0; li < ${#L_DIR[@]}; li++)); do
  d=${L_DIR[li]} why=${L_WHY[li]}
  read -ra a <<<"${L_ARGS[li]}"
  case $d in
    sysctl) sysctl_set "${a[0]}" "${a[*]:1}" ;;
    sysctl-min) sysctl_min "${a[0]}" "${a[*]:1}" ;;
    netdev_max_backlog) sysctl_min net.core.netdev_max_backlog "${a[0]}" ;;
    busy-poll) sysctl_set net.core.busy_poll "${a[0]}"; sysctl_set net.core.busy_read "${a[0]}" ;;
    reserve-ports)
      if [ -z "$ports" ]; then skip net.ipv4.ip_local_reserved_ports "needs --ports (the proxy's listen and metrics ports)"
      else
        p=/proc/sys/net/ipv4/ip_local_reserved_ports
        cur=$(cat "$p" 2>/dev/null)
        file_item "$p" net.ipv4.ip_local_reserved_ports "$(ports_merge "$cur" "$ports")" ports
      fi ;;
    rlimit) rlimit_item "${a[0]}" "${a[1]}" ;;
    rfs)
      total=$(pow2_ceil "${a[0]}")
      sysctl_set net.core.rps_sock_flow_entries "$total"
      if [ -z "$iface" ]; then skip "rfs rps_flow_cnt" "needs --interface"
      else
        mapfile -t qs < <(queues rx)
        if [ ${#qs[@]} -eq 0 ]; then skip "$iface rps_flow_cnt" "$iface shows no rx queues"
        else
          per=$(pow2_ceil $(((total + ${#qs[@]} - 1) / ${#qs[@]})))
          for q in "${qs[@]}"; do file_item "$q/rps_flow_cnt" "$iface ${q##*/} rps_flow_cnt" "$per"; done
        fi
      fi ;;
    rps | xps)
      if [ -z "$iface" ]; then skip "$d" "needs --interface"; continue; fi
      read -ra cpus <<<"$(cpus_for "${a[0]:-}")"
      if [ "$d" = rps ]; then
        mapfile -t qs < <(queues rx)
        mask=$(cpus_to_mask "${cpus[@]}")
        for q in "${qs[@]}"; do file_item "$q/rps_cpus" "$iface ${q##*/} rps_cpus" "$mask" mask; done
      else
        mapfile -t qs < <(queues tx)
        if [ ${#qs[@]} -eq 1 ]; then skip "$iface xps" "$iface has one tx queue: nothing to map"; continue; fi
        for ((qi = 0; qi < ${#qs[@]}; qi++)); do
          q=${qs[qi]}
          file_item "$q/xps_cpus" "$iface ${q##*/} xps_cpus" "$(cpus_to_mask "${cpus[qi % ${#cpus[@]}]}")" mask
        done
      fi
      [ ${#qs[@]} -gt 0 ] || skip "$iface $d" "$iface shows no queues" ;;
    irq-affinity)
      if [ -z "$iface" ]; then skip irq-affinity "needs --interface"; else irq_items "${a[0]:-}"; fi ;;
    ethtool-offload | ethtool-ring | ethtool-coalesce)
      if [ -z "$iface" ]; then skip "$d ${a[0]}" "needs --interface"; continue; fi
      case $d in ethtool-offload) o=-K ;; ethtool-ring) o=-G ;; ethtool-coalesce) o=-C ;; esac
      ethtool_item "$o" "${a[0]}" "${a[1]}" ;;
  esac
done

# ================================================================ report / apply
line_of() { # index [result]
  local i=$1 result=${2:-} s
  case ${I_ST[i]} in
    skip) s="${I_LABEL[i]}: skipped, ${I_NOTE[i]}" ;;
    *)
      s="${I_LABEL[i]}: $(show "${I_CUR[i]}") -> $(show "${I_NEW[i]}")"
      case ${I_ST[i]} in
        same) s+=" (unchanged${I_NOTE[i]:+, ${I_NOTE[i]}})" ;;
        advice) s+=" (advice) ${I_NOTE[i]}" ;;
        change) [ -n "${I_NOTE[i]}" ] && s+=" (${I_NOTE[i]})" ;;
      esac
      [ -n "$result" ] && s+=" ($result)" ;;
  esac
  [ -n "${I_WHY[i]}" ] && s+="  # ${I_WHY[i]}"
  printf '%s\n' "$s"
}
count() { local st=$1 i c=0; for ((i = 0; i < ${#I_ST[@]}; i++)); do [ "${I_ST[i]}" = "$st" ] && c=$((c + 1)); done; echo $c; }
nchange=$(count change) nsame=$(count same) nskip=$(count skip) nadvice=$(count advice)
echo "profile $profile_file${iface:+, interface $iface}${ports:+, ports $ports}${cpus_opt:+, cpus $cpus_opt}"

revert_hint="$0 --revert"
[ "$state" = "$default_state" ] || revert_hint+=" --state $state"

if [ "$mode" = dry ]; then
  if [ -e "$state" ]; then
    if stale_state; then echo "note: $state is from an earlier boot; remove it before --apply"
    else echo "note: $state exists: an applied profile's values are in place (undo: $revert_hint)"; fi
  fi
  for ((i = 0; i < ${#I_ST[@]}; i++)); do line_of "$i"; done
  echo "dry run: $nchange to change, $nsame unchanged, $nskip skipped, $nadvice advice; nothing changed (add --apply to apply)"
  exit 0
fi

# --apply
if [ "$nchange" -eq 0 ]; then
  for ((i = 0; i < ${#I_ST[@]}; i++)); do line_of "$i"; done
  echo "nothing to change ($nsame unchanged, $nskip skipped, $nadvice advice); no state file written"
  exit 0
fi
record() { # index -> state record with the original value
  local i=$1
  case ${I_KIND[i]} in
    file) printf 'file|%s|%s|%s\n' "${I_TARGET[i]}" "${I_LABEL[i]//|//}" "${I_CUR[i]}" ;;
    ethtool-*) printf '%s|%s|%s\n' "${I_KIND[i]}" "${I_TARGET[i]}" "${I_CUR[i]}" ;;
  esac
}
write_state() { # indexes of the records to keep
  local tmp="$state.tmp.$$" i
  {
    echo "# coresocks-tune state v1: original values of what apply.sh changed"
    echo "# profile $profile_file, $(date -u +%Y-%m-%dT%H:%M:%SZ); undo with: $revert_hint"
    echo "boot|$(boot_id)"
    echo "netns|$(netns_id)"
    for i in "$@"; do record "$i"; done
  } >"$tmp" 2>/dev/null && mv -f -- "$tmp" "$state" 2>/dev/null
}
todo=()
for ((i = 0; i < ${#I_ST[@]}; i++)); do [ "${I_ST[i]}" = change ] && todo+=("$i"); done
mkdir -p -- "$(dirname -- "$state")" 2>/dev/null
write_state "${todo[@]}" || die 1 "cannot write state file $state; nothing changed"

done_ok=() nfail=0
for ((i = 0; i < ${#I_ST[@]}; i++)); do
  if [ "${I_ST[i]}" != change ]; then line_of "$i"; continue; fi
  case ${I_KIND[i]} in
    file)
      if err=$(write_file "${I_TARGET[i]}" "${I_NEW[i]}"); then
        done_ok+=("$i")
        back=$(cat "${I_TARGET[i]}" 2>/dev/null)
        if [ "$(norm "$back")" = "$(norm "${I_NEW[i]}")" ]; then line_of "$i" applied
        else line_of "$i" "applied; reads back $(show "$back")"; fi
      else
        nfail=$((nfail + 1)); line_of "$i" "failed: $err"
      fi ;;
    ethtool-*)
      t=${I_TARGET[i]}
      if out=$("$ETHTOOL" "${I_KIND[i]#ethtool}" "${t%%|*}" "${t#*|}" "${I_NEW[i]}" 2>&1); then
        done_ok+=("$i"); line_of "$i" applied
      else
        nfail=$((nfail + 1)); line_of "$i" "failed: $(printf '%s' "$out" | tail -n 1)"
      fi ;;
  esac
done

if [ ${#done_ok[@]} -eq 0 ]; then
  rm -f -- "$state"
  echo "applied nothing: all $nfail changes failed; no state file kept" >&2
  exit 1
fi
write_state "${done_ok[@]}" || die 1 "applied ${#done_ok[@]} changes but cannot rewrite $state (it lists ${#todo[@]}, --revert restores them all)"
echo "applied ${#done_ok[@]} of $nchange changes ($nsame unchanged, $nskip skipped, $nadvice advice); originals saved in $state (undo: $revert_hint)"
if [ "$nfail" -gt 0 ]; then echo "$nfail changes failed (see above)" >&2; exit 1; fi
exit 0
