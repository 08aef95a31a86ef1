#!/usr/bin/env bash
# Builds a two-namespace test bed joined by a veth pair, so a proxy and its
# target talk over a (virtual) network instead of loopback, optionally rate
# limited. Needs root. Addresses are private to the namespaces this script
# creates; nothing leaves the machine.
#
#   tuning/netns-bench.sh up [RATE]   # e.g. RATE=1gbit; default: no limit
#   tuning/netns-bench.sh down
#
# After `up`: run targets with `ip netns exec cs-target loadgen serve ...`
# on 10.200.0.2, and the proxy on the host side (10.200.0.1) or in its own
# namespace.
set -euo pipefail
ns=cs-target
case "${1:-}" in
up)
  ip netns add "$ns"
  ip link add cs-host type veth peer name cs-peer
  ip link set cs-peer netns "$ns"
  ip addr add 10.200.0.1/30 dev cs-host
  ip link set cs-host up
  ip netns exec "$ns" ip addr add 10.200.0.2/30 dev cs-peer
  ip netns exec "$ns" ip link set cs-peer up
  ip netns exec "$ns" ip link set lo up
  if [ -n "${2:-}" ]; then
    tc qdisc add dev cs-host root tbf rate "$2" burst 256kb latency 50ms
    ip netns exec "$ns" tc qdisc add dev cs-peer root tbf rate "$2" burst 256kb latency 50ms
  fi
  echo "target namespace $ns at 10.200.0.2, host side 10.200.0.1"
  ;;
down)
  ip link del cs-host 2>/dev/null || true
  ip netns del "$ns" 2>/dev/null || true
  ;;
*)
  echo "usage: $0 up [RATE] | down" >&2
  exit 2
  ;;
esac
