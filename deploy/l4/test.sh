#!/usr/bin/env bash
# Test of deploy/l4/scale-out.sh (nft balancer): a full run must pass with
# zero loop failures, both instances serving and both upgraded (new PIDs),
# and leave nothing behind; then failures injected mid-setup and mid-loop
# (CS_LB_FAIL_AT) must fail the run and clean up too. Needs root. About
# 25 s; every step is bounded.
#
#   deploy/l4/test.sh        # CS_LB_BIN=/dir/with/coresocks+loadgen to choose binaries
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
SCRIPT=$HERE/scale-out.sh
export CS_LB_BIN=${CS_LB_BIN:-$(cd "$HERE/../.." && pwd)/target/release}
CS_LB_DIR=$(mktemp -d /tmp/cs-lb-test.XXXXXX)
export CS_LB_DIR
OUT=$CS_LB_DIR/out
fails=0 checks=0
trap '"$SCRIPT" down >/dev/null 2>&1 || true; rm -rf "$CS_LB_DIR"' EXIT

check() { # DESCRIPTION CMD...
  local d=$1
  shift
  checks=$((checks + 1))
  if "$@"; then
    echo "ok   $d"
  else
    echo "FAIL $d"
    fails=$((fails + 1))
  fi
}
field() { grep -m1 "$1" "$OUT" | grep -o "$2=[^ ]*" | head -1 | cut -d= -f2; }

no_namespaces() { ! ip netns list | grep -q '^cs-lb'; }
no_processes() { # none of the PIDs the run started, and no process naming its state directory
  local p left=0
  if [[ -f $CS_LB_DIR/pids.last ]]; then
    while read -r p name; do
      if [[ -e /proc/$p ]] && ! grep -q '^State:.*Z' "/proc/$p/status" 2>/dev/null; then
        echo "     left: pid $p ($name)"
        left=1
      fi
    done <"$CS_LB_DIR/pids.last"
  fi
  for p in /proc/[0-9]*; do
    [[ ${p#/proc/} != "$$" ]] || continue
    if tr '\0' ' ' <"$p/cmdline" 2>/dev/null | grep -qF -- "$CS_LB_DIR/"; then
      echo "     left: ${p#/proc/} $(tr '\0' ' ' <"$p/cmdline" | cut -c1-100)"
      left=1
    fi
  done
  ((!left))
}
no_links() { ! ip -o link show | grep -q 'cslb'; }
leftovers() { # WHEN
  check "$1: no cs-lb* namespaces" no_namespaces
  check "$1: no leftover processes" no_processes
  check "$1: no leftover links" no_links
}
run_script() { # EXPECTED-EXIT (0 or nonzero) ARGS... ; output in $OUT
  local want=$1 rc=0
  shift
  rm -f "$CS_LB_DIR/pids.last"
  timeout 60 "$SCRIPT" "$@" >"$OUT" 2>&1 || rc=$?
  sed 's/^/     | /' "$OUT"
  if [[ $want == 0 ]]; then
    check "scale-out.sh $* exits 0 (got $rc)" test "$rc" -eq 0
  else
    check "scale-out.sh $* fails (got $rc)" test "$rc" -ne 0 -a "$rc" -ne 124
  fi
}

t0=$(date +%s)
check "bash -n scale-out.sh" bash -n "$SCRIPT"
check "bash -n test.sh" bash -n "$0"
if command -v shellcheck >/dev/null; then
  check "shellcheck scale-out.sh test.sh" shellcheck "$SCRIPT" "$0"
else
  echo "skip shellcheck (not installed)"
fi
[[ $EUID -eq 0 ]] || { echo "FAIL needs root"; exit 1; }

echo "== run --balancer nft"
run_script 0 run --balancer nft
check "summary line printed" grep -q '^summary: balancer=nft ' "$OUT"
check "loop had zero failures" test "$(field '^summary:' failures)" = 0
if [[ "$(field '^summary:' failures)" != 0 ]]; then
  # The next run clears these logs: show what they say about the failure.
  for f in "$CS_LB_DIR"/*.log; do
    echo "     --- $(basename "$f"): warnings and errors"
    grep -iE 'warn|error|refus|reset' "$f" | tail -20 | sed 's/^/     /' || true
  done
fi
check "loop completed connections" test "$(field '^summary:' connections)" -gt 0
for n in a b; do
  acc=$(field "^instance $n " accepted)
  check "instance $n accepted connections ($acc)" test "${acc:-0}" -gt 0
  after=$(grep -m1 "^instance $n " "$OUT" | sed -n 's/.*after \([0-9]*\)).*/\1/p')
  check "instance $n served after its upgrade ($after)" test "${after:-0}" -gt 0
  pids=$(grep -m1 "^instance $n " "$OUT" | sed -n 's/.* pid \([0-9]*\) -> \([0-9]*\) .*/\1 \2/p')
  read -r old new <<<"${pids:-x x}"
  check "instance $n upgraded: pid $old -> $new" test "$old" != "$new" -a "$old" != x
  check "instance $n drain time printed ($(field "^instance $n " drain_ms) ms)" test -n "$(field "^instance $n " drain_ms)"
done
check "UDP ASSOCIATE replies named both instances" \
  bash -c "grep -q 'BND 10.203.2.2:.* instance a' '$OUT' && grep -q 'BND 10.203.3.2:.* instance b' '$OUT'"
check "result: PASS" grep -q '^result: PASS' "$OUT"
leftovers "after run"

echo "== failure injected mid-setup (CS_LB_FAIL_AT=start-b)"
CS_LB_FAIL_AT=start-b run_script 1 run --balancer nft
check "it names the injected step" grep -q "injected failure at step 'start-b'" "$OUT"
check "instance a had been started" grep -q 'coresocks a generation 1' "$OUT"
leftovers "after failed setup"

echo "== failure injected while the loop runs (CS_LB_FAIL_AT=upgrade-a)"
CS_LB_FAIL_AT=upgrade-a run_script 1 run --balancer nft
check "it names the injected step" grep -q "injected failure at step 'upgrade-a'" "$OUT"
check "the loop had been started" grep -q 'connection loop:' "$OUT"
leftovers "after failure mid-loop"

if [[ ! -e /proc/net/ip_vs ]]; then
  echo "== --balancer ipvs on a kernel without IPVS"
  run_script 1 run --balancer ipvs
  check "it says why" grep -q 'no IPVS in this kernel' "$OUT"
  leftovers "after refused ipvs"
fi

echo "== $checks checks, $fails failed, $(($(date +%s) - t0)) s"
((fails == 0))
