#!/usr/bin/env python3
"""What a domain CONNECT adds over an IP CONNECT: the time from sending the
CONNECT request to reading the reply, for `localhost` (resolved by the
proxy, off its core) and for 127.0.0.1, through one SOCKS5 proxy, in
alternating order. A client of its own (plain sockets), so that the number
does not come from loadgen.

    benches/resolve-latency.py PROXY_PORT [COUNT]

The target is a local TCP listener this script opens (the proxy must allow
127.0.0.0/8, e.g. `coresocks --allow 127.0.0.0/8`). Prints p50 and p99 in
microseconds for each form and the p50 difference.
"""
import socket
import struct
import sys
import time


def connect_via(proxy_port, request):
    s = socket.create_connection(("127.0.0.1", proxy_port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.sendall(b"\x05\x01\x00")
    if s.recv(2) != b"\x05\x00":
        raise SystemExit("the proxy refused the no-auth method")
    start = time.perf_counter_ns()
    s.sendall(request)
    reply = b""
    while len(reply) < 10:
        chunk = s.recv(10 - len(reply))
        if not chunk:
            raise SystemExit("the proxy closed before its reply")
        reply += chunk
    took = time.perf_counter_ns() - start
    if reply[1] != 0:
        raise SystemExit(f"CONNECT failed with reply code {reply[1]}")
    s.close()
    return took / 1000


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


def main():
    proxy_port = int(sys.argv[1])
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
    target = socket.socket()
    target.bind(("127.0.0.1", 0))
    target.listen(4096)
    port = target.getsockname()[1]
    by_name = b"\x05\x01\x00\x03" + bytes([9]) + b"localhost" + struct.pack(">H", port)
    by_ip = b"\x05\x01\x00\x01" + socket.inet_aton("127.0.0.1") + struct.pack(">H", port)
    times = {"domain": [], "ip": []}
    for i in range(count):
        for form, request in (("domain", by_name), ("ip", by_ip)):
            times[form].append(connect_via(proxy_port, request))
            conn, _ = target.accept()
            conn.close()
    for form in ("ip", "domain"):
        print(f"{form:6} CONNECT to reply: p50 {percentile(times[form], 0.5):.0f} us, "
              f"p99 {percentile(times[form], 0.99):.0f} us ({count} each)")
    added = percentile(times["domain"], 0.5) - percentile(times["ip"], 0.5)
    print(f"a domain CONNECT adds {added:.0f} us at p50")


if __name__ == "__main__":
    main()
