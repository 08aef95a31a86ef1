#!/usr/bin/env bash
# shellcheck disable=SC2016 # checks given as eval strings expand $out and $rc when they run
# Checks tuning/apply.sh end to end inside a network namespace of its own:
# dry run, --apply, a refused second --apply, --revert, and that the host
# namespace is never touched. Needs root; nothing leaves the machine.
#
#   sudo tuning/tests/apply-revert.sh
#
# The scratch profile holds only sysctls that are per network namespace
# (checked on Linux 6.18 by changing each in a throwaway namespace and reading
# the host's value), a key that exists nowhere, and interface settings for a
# veth pair created inside the namespace. Prints one line per check; exits 1
# if any check fails, 2 if it cannot run.
set -uo pipefail
export LC_ALL=C
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
apply=$(cd "$here/.." && pwd)/apply.sh

[ "$EUID" -eq 0 ] || { echo "apply-revert.sh: needs root (it creates a network namespace)" >&2; exit 2; }
command -v ip >/dev/null || { echo "apply-revert.sh: needs ip (iproute2)" >&2; exit 2; }

ns=cs-tune-test-$$ ns2=cs-tune-test2-$$
tmp=$(mktemp -d /tmp/cs-tune-test.XXXXXX)
cleanup() {
  ip netns del "$ns" 2>/dev/null
  ip netns del "$ns2" 2>/dev/null
  rm -rf -- "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP
chmod 755 "$tmp"

pass=0 fail=0
ok() { pass=$((pass + 1)); echo "ok   - $*"; }
no() { fail=$((fail + 1)); echo "FAIL - $*"; }
check() { local what=$1; shift; if "$@"; then ok "$what"; else no "$what"; return 1; fi; }
one_line() { [ -n "$out" ] && [ "$(wc -l <<<"$out")" -eq 1 ]; }
show_out() { printf '%s\n' "$out" | sed 's/^/    | /'; }
norm() { local -a w; read -ra w <<<"$1"; printf '%s' "${w[*]}"; }
path_of() { echo "/proc/sys/${1//.//}"; }

# Per-netns sysctls the profile changes, and global ones that must stay put.
ns_keys=(net.core.somaxconn net.ipv4.tcp_tw_reuse net.ipv4.ip_local_port_range
  net.ipv4.tcp_fin_timeout net.ipv4.ip_local_reserved_ports net.ipv4.tcp_rmem
  net.ipv4.tcp_max_syn_backlog)
host_keys=("${ns_keys[@]}" net.core.rps_sock_flow_entries net.core.busy_poll
  net.core.busy_read net.core.netdev_max_backlog)

host_snapshot() { # the host's values of every watched key and queue file
  local k f
  for k in "${host_keys[@]}"; do printf '%s=%s\n' "$k" "$(cat "$(path_of "$k")" 2>&1)"; done
  for f in /sys/class/net/*/queues/*/rps_cpus /sys/class/net/*/queues/*/rps_flow_cnt /sys/class/net/*/queues/*/xps_cpus; do
    [ -e "$f" ] && printf '%s=%s\n' "$f" "$(cat "$f" 2>&1)"
  done
}
ns_snapshot() { # NS: all its net.* sysctls, raw, plus the veth queue files
  ip netns exec "$1" bash -c '
    for f in $(find /proc/sys/net -type f -perm -0400 2>/dev/null | sort); do
      v=$(<"$f") 2>/dev/null && printf "%s=%s\n" "$f" "$v"
    done
    for f in /sys/class/net/ct*/queues/*/rps_cpus /sys/class/net/ct*/queues/*/rps_flow_cnt /sys/class/net/ct*/queues/*/xps_cpus; do
      [ -e "$f" ] && printf "%s=%s\n" "$f" "$(cat "$f" 2>&1)"
    done'
}
ns_read() { ip netns exec "$ns" cat "$(path_of "$1")"; }
run() { # args for apply.sh inside the namespace -> $out, $rc
  out=$(ip netns exec "$ns" env ${eth_env:+"$eth_env"} bash "$apply" "$@" 2>&1)
  rc=$?
}
host_untouched() { host_snapshot >"$tmp/host.now"; cmp -s "$tmp/host.before" "$tmp/host.now"; }
changed_keys() { # two ns snapshots -> the paths whose value differs
  diff <(sort "$1") <(sort "$2") | sed -n 's/^[<>] \([^=]*\)=.*/\1/p' | sort -u
}

host_snapshot >"$tmp/host.before"

echo "# network namespace $ns with veth ct0/ct1 (2 rx and 2 tx queues)"
ip netns add "$ns" || { echo "apply-revert.sh: cannot create a network namespace" >&2; exit 2; }
ip -n "$ns" link set lo up
ip -n "$ns" link add ct0 numtxqueues 2 numrxqueues 2 type veth peer name ct1 numtxqueues 2 numrxqueues 2 ||
  { echo "apply-revert.sh: cannot create a veth pair" >&2; exit 2; }
ip -n "$ns" link set ct0 up
ip -n "$ns" link set ct1 up

# Proposals that differ from what the namespace starts with.
declare -A orig_raw=()
for k in "${ns_keys[@]}"; do orig_raw[$k]=$(ns_read "$k"); done
somax=$(("${orig_raw[net.core.somaxconn]}" + 1000))
twr=1; [ "${orig_raw[net.ipv4.tcp_tw_reuse]}" = 1 ] && twr=0
range="20000 50000"; [ "$(norm "${orig_raw[net.ipv4.ip_local_port_range]}")" = "$range" ] && range="20001 50001"
rmem="4096 87380 8388608"; [ "$(norm "${orig_raw[net.ipv4.tcp_rmem]}")" = "$rmem" ] && rmem="4096 87381 8388608"
synb=$(("${orig_raw[net.ipv4.tcp_max_syn_backlog]}" + 100))
fin=${orig_raw[net.ipv4.tcp_fin_timeout]}

have_ethtool=no gro_orig='' gro_new=''
if command -v ethtool >/dev/null; then
  have_ethtool=yes
  gro_orig=$(ip netns exec "$ns" ethtool -k ct0 | sed -n 's/^generic-receive-offload: \([a-z]*\).*/\1/p')
  gro_new=on; [ "$gro_orig" = on ] && gro_new=off
fi
# rfs writes net.core.rps_sock_flow_entries, a global sysctl: only when the
# namespace cannot see it (then it is skipped and only the veth queues change).
use_rfs=no
ip netns exec "$ns" test -e /proc/sys/net/core/rps_sock_flow_entries || use_rfs=yes

profile=$tmp/profile.conf
{
  echo "# scratch profile for apply-revert.sh: per-netns sysctls and a veth only"
  echo "sysctl net.core.somaxconn $somax   # test: exact set"
  echo "sysctl net.ipv4.tcp_tw_reuse $twr"
  echo "sysctl net.ipv4.ip_local_port_range $range   # multi-value"
  echo "sysctl net.ipv4.tcp_rmem $rmem   # multi-value, tab separated in /proc"
  echo "sysctl-min net.ipv4.tcp_max_syn_backlog $synb"
  echo "sysctl net.ipv4.tcp_fin_timeout $fin   # already so: unchanged"
  echo "sysctl net.ipv4.coresocks_no_such_key 1   # exists nowhere: skipped"
  echo "reserve-ports"
  echo "rlimit nofile 1048576"
  echo "ethtool-offload gro ${gro_new:-on}"
  echo "ethtool-ring rx 4096"
  echo "ethtool-coalesce rx-usecs 0"
  echo "rps"
  echo "xps"
  [ $use_rfs = yes ] && echo "rfs 4096"
  echo "irq-affinity"
} >"$profile"
chmod 644 "$profile"
state=$tmp/state/applied
# shellcheck disable=SC2054 # 1080,9090 is one argument
common=(--profile-file "$profile" --interface ct0 --ports 1080,9090 --state "$state")

ns_snapshot "$ns" >"$tmp/ns.orig"
nvals=$(wc -l <"$tmp/ns.orig")
check "snapshot of the namespace holds its net.* sysctls and veth queues ($nvals values)" [ "$nvals" -gt 100 ]

echo "# dry run"
eth_env=''
run "${common[@]}"
check "dry run exits 0" [ "$rc" -eq 0 ]
expect_line() { grep -qF -- "$1" <<<"$out" || { echo "    missing: $1"; return 1; }; }
dry_ok=yes
expect_line "net.core.somaxconn: ${orig_raw[net.core.somaxconn]} -> $somax" || dry_ok=no
expect_line "net.ipv4.tcp_tw_reuse: ${orig_raw[net.ipv4.tcp_tw_reuse]} -> $twr" || dry_ok=no
expect_line "net.ipv4.ip_local_port_range: $(norm "${orig_raw[net.ipv4.ip_local_port_range]}") -> $range" || dry_ok=no
expect_line "net.ipv4.tcp_rmem: $(norm "${orig_raw[net.ipv4.tcp_rmem]}") -> $rmem" || dry_ok=no
expect_line "net.ipv4.tcp_max_syn_backlog: ${orig_raw[net.ipv4.tcp_max_syn_backlog]} -> $synb" || dry_ok=no
expect_line "net.ipv4.ip_local_reserved_ports: \"\" -> 1080,9090" || dry_ok=no
expect_line "ct0 rx-0 rps_cpus: 0 -> " || dry_ok=no
expect_line "ct0 rx-1 rps_cpus: 0 -> " || dry_ok=no
expect_line "ct0 tx-0 xps_cpus: " || dry_ok=no
expect_line "ct0 tx-1 xps_cpus: " || dry_ok=no
if [ $use_rfs = yes ]; then
  expect_line "net.core.rps_sock_flow_entries: skipped, not on this kernel" || dry_ok=no
  expect_line "ct0 rx-0 rps_flow_cnt: 0 -> 2048" || dry_ok=no
fi
check "dry run prints 'name: current -> proposed' for each change" [ $dry_ok = yes ]
check "dry run prints the profile line's reason" expect_line "-> $somax  # test: exact set"
check "dry run marks an equal value (unchanged)" expect_line "net.ipv4.tcp_fin_timeout: $fin -> $fin (unchanged)"
check "dry run skips a sysctl unknown to this kernel" expect_line "net.ipv4.coresocks_no_such_key: skipped, not on this kernel"
check "dry run gives rlimit as (advice)" grep -qE '^rlimit nofile: .* -> 1048576 \(advice\) .*LimitNOFILE=1048576' <<<"$out"
check "dry run says veth has no IRQs and skips" expect_line "ct0 irq-affinity: skipped, ct0 has no device IRQs"
if [ $have_ethtool = yes ]; then
  check "dry run shows the veth's GRO change" expect_line "ct0 offload gro: $gro_orig -> $gro_new"
  check "dry run lists the ring setting (veth: unsupported, or a change)" grep -qE '^ct0 ring rx: (skipped|[0-9]+ -> )' <<<"$out"
else
  check "dry run says ethtool not installed" expect_line "ct0 offload gro: skipped, ethtool not installed"
fi
nchange=$(sed -n 's/^dry run: \([0-9]*\) to change.*/\1/p' <<<"$out")
check "dry run counts its changes (${nchange:-?})" [ "${nchange:-0}" -gt 0 ]
ns_snapshot "$ns" >"$tmp/ns.now"
check "dry run changes nothing in the namespace" cmp -s "$tmp/ns.orig" "$tmp/ns.now"
check "dry run writes no state file" [ ! -e "$state" ]
check "host namespace untouched after the dry run" host_untouched
[ $fail -eq 0 ] || show_out

echo "# ethtool missing"
eth_env=ETHTOOL=/nonexistent/ethtool
run "${common[@]}"
eth_env=''
check "interface ethtool settings say 'ethtool not installed'" expect_line "ct0 offload gro: skipped, ethtool not installed"

echo "# --apply"
run "${common[@]}" --apply
check "--apply exits 0" [ "$rc" -eq 0 ] || show_out
ns_snapshot "$ns" >"$tmp/ns.applied"
p=/proc/sys/net
want=$(printf '%s\n' "$p/core/somaxconn" "$p/ipv4/ip_local_port_range" "$p/ipv4/ip_local_reserved_ports" \
  "$p/ipv4/tcp_max_syn_backlog" "$p/ipv4/tcp_rmem" "$p/ipv4/tcp_tw_reuse" \
  /sys/class/net/ct0/queues/rx-0/rps_cpus /sys/class/net/ct0/queues/rx-1/rps_cpus \
  /sys/class/net/ct0/queues/tx-0/xps_cpus /sys/class/net/ct0/queues/tx-1/xps_cpus)
[ $use_rfs = yes ] && want+=$'\n'/sys/class/net/ct0/queues/rx-0/rps_flow_cnt$'\n'/sys/class/net/ct0/queues/rx-1/rps_flow_cnt
want=$(sort <<<"$want")
got=$(changed_keys "$tmp/ns.orig" "$tmp/ns.applied")
check "--apply changed exactly the profile's settings ($(wc -l <<<"$want") files)" [ "$got" = "$want" ] ||
  diff <(echo "$want") <(echo "$got") | sed 's/^/    /'
vals_ok=yes
[ "$(ns_read net.core.somaxconn)" = "$somax" ] || vals_ok=no
[ "$(ns_read net.ipv4.tcp_tw_reuse)" = "$twr" ] || vals_ok=no
[ "$(norm "$(ns_read net.ipv4.ip_local_port_range)")" = "$range" ] || vals_ok=no
[ "$(norm "$(ns_read net.ipv4.tcp_rmem)")" = "$rmem" ] || vals_ok=no
[ "$(ns_read net.ipv4.tcp_max_syn_backlog)" = "$synb" ] || vals_ok=no
[ "$(ns_read net.ipv4.ip_local_reserved_ports)" = "1080,9090" ] || vals_ok=no
[ "$(ns_read net.ipv4.tcp_fin_timeout)" = "$fin" ] || vals_ok=no
check "sysctls now hold the proposed values (multi-value compared whitespace-normalised)" [ $vals_ok = yes ]
check "xps maps tx-0 and tx-1 to different CPUs" [ "$(ip netns exec "$ns" cat /sys/class/net/ct0/queues/tx-0/xps_cpus)" != \
  "$(ip netns exec "$ns" cat /sys/class/net/ct0/queues/tx-1/xps_cpus)" ]
if [ $have_ethtool = yes ]; then
  check "GRO is now $gro_new" [ "$(ip netns exec "$ns" ethtool -k ct0 | sed -n 's/^generic-receive-offload: \([a-z]*\).*/\1/p')" = "$gro_new" ]
fi
check "the state file exists" [ -f "$state" ]
nrec=$(grep -cE '^(file|ethtool-[A-Z])\|' "$state" 2>/dev/null)
check "the state file holds one record per change ($nrec of $nchange)" [ "${nrec:-0}" = "$nchange" ]
check "the state file records the original somaxconn" grep -qxF "file|$p/core/somaxconn|net.core.somaxconn|${orig_raw[net.core.somaxconn]}" "$state"
check "the state file records tcp_rmem byte for byte" grep -qxF "file|$p/ipv4/tcp_rmem|net.ipv4.tcp_rmem|${orig_raw[net.ipv4.tcp_rmem]}" "$state"
check "the state file does not record the unchanged tcp_fin_timeout" bash -c "! grep -q tcp_fin_timeout '$state'"
check "the state file names its network namespace" grep -qxF "netns|$(ip netns exec "$ns" readlink /proc/self/ns/net)" "$state"
check "host namespace untouched after --apply" host_untouched

run "${common[@]}"
check "a dry run after --apply shows every change as (unchanged) (0 to change)" grep -q '^dry run: 0 to change' <<<"$out"
check "and notes the applied state file" grep -q "^note: $state exists" <<<"$out"

echo "# second --apply"
cp -- "$state" "$tmp/state.copy"
run "${common[@]}" --apply
check "a second --apply exits 3" [ "$rc" -eq 3 ]
check "with one line naming the state file" eval 'one_line && grep -q "^apply.sh: state file $state exists" <<<"$out"' || show_out
ns_snapshot "$ns" >"$tmp/ns.now"
check "and changes nothing" cmp -s "$tmp/ns.applied" "$tmp/ns.now"
check "and leaves the state file as it was" cmp -s "$state" "$tmp/state.copy"

echo "# a state file from an earlier boot"
sed 's/^boot|.*/boot|00000000-0000-0000-0000-000000000000/' "$state" >"$tmp/state.stale"
check "the state file records the boot" grep -qxF "boot|$(cat /proc/sys/kernel/random/boot_id)" "$state"
run --revert --state "$tmp/state.stale"
check "--revert of an earlier boot's state exits 3 with one line" eval '[ "$rc" -eq 3 ] && one_line && grep -q "earlier boot" <<<"$out"' || show_out
run "${common[@]:0:6}" --state "$tmp/state.stale" --apply
check "--apply over an earlier boot's state exits 3 with one line" eval '[ "$rc" -eq 3 ] && one_line && grep -q "earlier boot" <<<"$out"' || show_out
ns_snapshot "$ns" >"$tmp/ns.now"
check "and neither changes anything" cmp -s "$tmp/ns.applied" "$tmp/ns.now"

echo "# --revert in another network namespace"
ip netns add "$ns2"
ns_snapshot "$ns2" >"$tmp/ns2.before"
out=$(ip netns exec "$ns2" bash "$apply" --revert --state "$tmp/state.copy" 2>&1); rc=$?
check "--revert of another namespace's state exits 3 with one line" eval '[ "$rc" -eq 3 ] && one_line' || show_out
ns_snapshot "$ns2" >"$tmp/ns2.now"
check "and changes nothing there" cmp -s "$tmp/ns2.before" "$tmp/ns2.now"
check "and keeps the state file" [ -f "$tmp/state.copy" ]

echo "# --revert"
run --revert --state "$state"
check "--revert exits 0" [ "$rc" -eq 0 ] || show_out
ns_snapshot "$ns" >"$tmp/ns.reverted"
check "every net.* sysctl and veth queue file is back byte for byte" cmp -s "$tmp/ns.orig" "$tmp/ns.reverted" ||
  diff "$tmp/ns.orig" "$tmp/ns.reverted" | sed 's/^/    /'
raw_ok=yes
for k in "${ns_keys[@]}"; do [ "$(ns_read "$k")" = "${orig_raw[$k]}" ] || { raw_ok=no; echo "    $k differs"; }; done
check "the profile's sysctls read exactly as before (tcp_rmem with its tabs)" [ $raw_ok = yes ]
if [ $have_ethtool = yes ]; then
  check "GRO is $gro_orig again" [ "$(ip netns exec "$ns" ethtool -k ct0 | sed -n 's/^generic-receive-offload: \([a-z]*\).*/\1/p')" = "$gro_orig" ]
fi
check "the state file is gone" [ ! -e "$state" ]
check "host namespace untouched after --revert" host_untouched
run --revert --state "$state"
check "--revert without a state file exits 3 with one line" eval '[ "$rc" -eq 3 ] && one_line' || show_out

echo "# errors"
run --profile-file "$profile" --interface nosuch0 --ports 1080,9090 --state "$state"
check "a missing interface exits 2" [ "$rc" -eq 2 ]
check "with one line listing the interfaces" eval 'one_line && grep -qE "^apply\.sh: no interface nosuch0 \(ip link shows: lo, .*ct0" <<<"$out"' || show_out
if command -v setpriv >/dev/null && setpriv --reuid=65534 --regid=65534 --clear-groups test -r "$apply"; then
  out=$(ip netns exec "$ns" setpriv --reuid=65534 --regid=65534 --clear-groups bash "$apply" "${common[@]}" --apply 2>&1); rc=$?
  check "--apply as a non-root user exits 3 with one line" eval '[ "$rc" -eq 3 ] && one_line' || show_out
else
  echo "skip - non-root check (no setpriv, or apply.sh unreadable to nobody)"
fi
run --profile no-such-profile
check "an unknown profile exits 2" [ "$rc" -eq 2 ]
printf 'sysctl\n' >"$tmp/bad.conf"
run --profile-file "$tmp/bad.conf"
check "a malformed profile line exits 2 naming file:line" eval '[ "$rc" -eq 2 ] && grep -q "bad.conf:1:" <<<"$out"' 
run --help
check "--help exits 0" [ "$rc" -eq 0 ]
ns_snapshot "$ns" >"$tmp/ns.now"
check "the error cases changed nothing" cmp -s "$tmp/ns.orig" "$tmp/ns.now"
check "host namespace untouched at the end" host_untouched

echo "# $pass passed, $fail failed"
[ $fail -eq 0 ]
