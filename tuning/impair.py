#!/usr/bin/env python3
"""Userspace stand-in for netem: an L2 bridge that delays and drops frames.

This kernel has no netem qdisc, so tuning/netns-bench.sh puts this
forwarder in a namespace of its own (cs-wan) between two veth ends and lets
it copy every frame from one to the other, in both directions:

    impair.py --pair w-proxy:w-target [--pair w-cdirect:w-tdirect] \
              [--delay 5ms] [--loss 0.1%] [--seed 1] [--limit 20000] \
              [--stats FILE] [--pidfile FILE]

Each frame is held for --delay (one way; a round trip through the
forwarder pays it twice) and dropped with probability --loss, drawn from a
random generator per direction seeded from --seed (the same seed, the same
drops for the same frame sequence). A direction holding --limit frames
drops new ones (netem's `limit`). Frames are bridged unchanged (ARP
included), so both sides of a pair stay on one IP subnet.

Large frames: the TCP stacks at either end hand veth 64 KiB GSO frames
(and CHECKSUM_PARTIAL ones) that AF_PACKET cannot send back as plain
frames (EMSGSIZE past the MTU, and unfinished checksums). The sockets
therefore use PACKET_VNET_HDR: each frame is read with the kernel's
virtio-net header (GSO type and size, checksum offsets) in front of it and
sent with the same header, so the next veth gets the same GSO frame and
segments or checksums it as it would have without us. Nothing needs
ethtool, and a 64 KiB frame costs one read and one write.

Loop: select() on the sockets with a timeout until the earliest due frame
(microsecond precision, 1 ns timer slack), drain each readable socket
without blocking, then send every due frame; a deque per direction (the
delay is constant, so due times are in arrival order). The delay runs
from the kernel's arrival stamp (SO_TIMESTAMPNS), so time a frame waited
in our receive buffer counts. Frames are never sent early; how late they
go (late_us_sum / frames_out) says whether the forwarder keeps up.

Drops are counted by cause: dropped_loss (--loss), dropped_limit
(--limit), dropped_rcvbuf (the kernel, our --rcvbuf was full), and
send_errors (the next hop refused). segments_in counts wire packets (a
GSO frame is several).

It exits on SIGTERM/SIGINT, and by itself when one of its interfaces
disappears (its namespace or a peer namespace was deleted), so it dies
with the lab. --stats is rewritten (JSON) every second, at once on
SIGUSR1, and at exit.
"""

import argparse
import collections
import errno
import json
import os
import random
import select
import signal
import socket
import struct
import sys
import time

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_VNET_HDR = 15
PACKET_QDISC_BYPASS = 20
PACKET_IGNORE_OUTGOING = 23
PACKET_STATISTICS = 6
SO_TIMESTAMPNS = 35  # also SCM_TIMESTAMPNS
TS_CMSG_SPACE = socket.CMSG_SPACE(16)  # struct timespec
VNET_HDR_LEN = 10  # struct virtio_net_hdr
GSO_NONE = 0
GSO_UDP_L4 = 5
BUF_SIZE = 256 * 1024  # > 64 KiB GSO frames (and then some)
BATCH = 512  # most frames read from one socket per wakeup


def parse_duration(s):
    s = s.strip()
    for suffix, mult in (("us", 1e-6), ("ms", 1e-3), ("s", 1.0)):
        if s.endswith(suffix):
            return float(s[: -len(suffix)]) * mult
    return float(s)  # seconds


def parse_loss(s):
    s = s.strip()
    p = float(s[:-1]) / 100.0 if s.endswith("%") else float(s)
    if not 0.0 <= p <= 1.0:
        raise argparse.ArgumentTypeError(f"loss {s} is not between 0 and 100%")
    return p


def open_sock(ifname, rcvbuf, stamp):
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    s.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
    # Frames we send out of this interface would otherwise come back to us
    # as PACKET_OUTGOING copies.
    s.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
    # A veth has no queue (noqueue): skip the qdisc layer.
    try:
        s.setsockopt(SOL_PACKET, PACKET_QDISC_BYPASS, 1)
    except OSError:
        pass
    # The receive buffer is a queue in front of ours: frames wait there
    # while we are busy, and past it the kernel drops them (counted as
    # dropped_rcvbuf). A large one would hide an overloaded forwarder as
    # extra delay; a small one drops bursts of GSO frames.
    for opt, force, size in ((socket.SO_RCVBUF, 33, rcvbuf), (socket.SO_SNDBUF, 32, 8 << 20)):
        try:
            s.setsockopt(socket.SOL_SOCKET, force, size)  # SO_*BUFFORCE
        except OSError:
            s.setsockopt(socket.SOL_SOCKET, opt, size)
    if stamp:
        # The kernel's arrival time of each frame: the delay runs from
        # there, so time spent waiting in our receive buffer is part of it.
        s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    s.bind((ifname, ETH_P_ALL))
    s.setblocking(False)
    return s


def segments(buf, size):
    """Wire packets in a GSO frame (buf: virtio-net header, then the frame
    of `size` bytes): the payload after the L4 header over gso_size."""
    flags, gso_type, _, gso_size, csum_start, _ = struct.unpack_from("<BBHHHH", buf)
    if gso_size == 0:
        return 1
    l4 = VNET_HDR_LEN + csum_start  # the L4 header (the checksum starts there)
    if not flags & 1 or l4 + 13 > VNET_HDR_LEN + size:  # no VIRTIO_NET_HDR_F_NEEDS_CSUM
        return max(1, -(-size // gso_size))
    hdr = 8 if gso_type == GSO_UDP_L4 else (buf[l4 + 12] >> 4) * 4
    return max(1, -(-(size - csum_start - hdr) // gso_size))


class Direction:
    def __init__(self, name, src, dst, rng):
        self.name = name
        self.src = src  # (ifname, socket)
        self.dst = dst
        self.rng = rng
        self.queue = collections.deque()
        self.c = dict(
            frames_in=0, segments_in=0, bytes_in=0, gso_frames=0, max_frame=0,
            dropped_loss=0, dropped_limit=0, send_errors=0,
            frames_out=0, bytes_out=0, max_queue=0,
            dropped_rcvbuf=0, late_us_max=0, late_us_sum=0,
        )


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pair", action="append", required=True,
                    help="IFACE_A:IFACE_B, bridged both ways (repeatable)")
    ap.add_argument("--delay", type=parse_duration, default=0.0,
                    help="one-way delay per frame: 5ms, 200us, 0.01 (s)")
    ap.add_argument("--loss", type=parse_loss, default=0.0,
                    help="drop probability per frame: 0.1%% or 0.001")
    ap.add_argument("--seed", type=int, default=1,
                    help="seed of the loss generators (one per direction)")
    ap.add_argument("--limit", type=int, default=20000,
                    help="most frames held per direction; more are dropped")
    ap.add_argument("--rcvbuf", type=int, default=4 << 20,
                    help="receive buffer per interface in bytes (frames past it are dropped)")
    ap.add_argument("--stats", help="write counters here (JSON) every second")
    ap.add_argument("--pidfile", help="write our pid here once ready")
    a = ap.parse_args()

    # Wake up when asked: the default 50 us timer slack would add to every
    # frame's delay.
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(29, 1, 0, 0, 0)  # PR_SET_TIMERSLACK, 1 ns
    except (OSError, AttributeError):
        pass

    # Signals wake the select through this pipe: SIGTERM/SIGINT stop,
    # SIGUSR1 writes --stats at once (netns-bench.sh reads rates that way).
    stop = []
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    signal.signal(signal.SIGUSR1, lambda *_: None)

    socks = {}
    dirs = []
    by_fd = {}
    for i, pair in enumerate(a.pair):
        left, _, right = pair.partition(":")
        if not left or not right:
            ap.error(f"--pair {pair}: want IFACE_A:IFACE_B")
        for name in (left, right):
            if name in socks:
                ap.error(f"--pair {pair}: {name} is in another pair already")
            socks[name] = open_sock(name, a.rcvbuf, a.delay > 0)
        l, r = (left, socks[left]), (right, socks[right])
        for j, (src, dst) in enumerate(((l, r), (r, l))):
            d = Direction(f"{src[0]}->{dst[0]}", src, dst,
                          random.Random(a.seed * 1000 + 2 * i + j))
            dirs.append(d)
            by_fd[src[1].fileno()] = d

    delay, loss, limit = a.delay, a.loss, a.limit
    buf = bytearray(BUF_SIZE)
    view = memoryview(buf)
    fds = list(by_fd) + [wake_r]
    generation = [0]
    started = time.monotonic()
    next_check = started + 1.0

    def kernel_drops():
        # tp_drops: frames the kernel dropped because our receive buffer
        # was full; counters reset on each read.
        for d in dirs:
            _, drops = struct.unpack("II", d.src[1].getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))
            d.c["dropped_rcvbuf"] += drops

    def write_stats(final=False):
        kernel_drops()
        if not a.stats:
            return
        generation[0] += 1
        doc = dict(
            generation=generation[0], pid=os.getpid(), delay_s=delay, loss=loss, seed=a.seed,
            limit=limit, seconds=round(time.monotonic() - started, 3),
            final=final, directions={d.name: d.c for d in dirs},
        )
        tmp = a.stats + ".tmp"
        with open(tmp, "w") as f:
            json.dump(doc, f, indent=1)
        os.replace(tmp, a.stats)

    if a.pidfile:
        with open(a.pidfile + ".tmp", "w") as f:
            f.write(f"{os.getpid()}\n")
        os.replace(a.pidfile + ".tmp", a.pidfile)
    print(f"impair: pid {os.getpid()}, pairs {a.pair}, delay {delay * 1e3:g} ms, "
          f"loss {loss * 100:g}%, seed {a.seed}", file=sys.stderr, flush=True)
    write_stats()

    def send(d, frame):
        try:
            d.dst[1].send(frame)
        except OSError as e:
            if e.errno in (errno.ENXIO, errno.ENODEV):
                raise
            d.c["send_errors"] += 1  # ENOBUFS/EAGAIN: the next hop is full
            return
        d.c["frames_out"] += 1
        d.c["bytes_out"] += len(frame) - VNET_HDR_LEN

    monotonic = time.monotonic
    try:
        while not stop:
            timeout = 1.0
            if delay:
                now = monotonic()
                for d in dirs:
                    if d.queue:
                        timeout = min(timeout, max(0.0, d.queue[0][0] - now))
            try:
                readable, _, _ = select.select(fds, [], [], timeout)
            except InterruptedError:
                continue
            now = monotonic()
            # Arrival stamps are CLOCK_REALTIME; the queue runs on the
            # monotonic clock.
            mono_minus_real = now - time.time() + delay
            for fd in readable:
                if fd == wake_r:
                    try:
                        os.read(wake_r, 64)
                    except BlockingIOError:
                        pass
                    write_stats()
                    continue
                d = by_fd[fd]
                sock = d.src[1]
                c = d.c
                q = d.queue
                for _ in range(BATCH):
                    try:
                        if delay:
                            n, anc, _, _ = sock.recvmsg_into([buf], TS_CMSG_SPACE)
                            if anc:
                                sec, nsec = struct.unpack("qq", anc[0][2])
                                due = sec + nsec * 1e-9 + mono_minus_real
                            else:
                                due = now + delay
                        else:
                            n = sock.recv_into(buf)
                    except BlockingIOError:
                        break
                    except OSError as e:
                        if e.errno == errno.ENETDOWN:
                            break  # link went down; the watchdog decides
                        raise
                    size = n - VNET_HDR_LEN
                    c["frames_in"] += 1
                    c["bytes_in"] += size
                    if size > c["max_frame"]:
                        c["max_frame"] = size
                    if buf[1] == GSO_NONE:
                        c["segments_in"] += 1
                    else:
                        c["gso_frames"] += 1
                        c["segments_in"] += segments(buf, size)
                    if loss and d.rng.random() < loss:
                        c["dropped_loss"] += 1
                        continue
                    if not delay:
                        send(d, view[:n])
                        continue
                    if len(q) >= limit:
                        c["dropped_limit"] += 1
                        continue
                    q.append((due, bytes(view[:n])))
                    if len(q) > c["max_queue"]:
                        c["max_queue"] = len(q)
            if delay:
                now = monotonic()
                for d in dirs:
                    q = d.queue
                    if not q or q[0][0] > now:
                        continue
                    c = d.c
                    late = int((now - q[0][0]) * 1e6)  # the oldest due frame's
                    if late > c["late_us_max"]:
                        c["late_us_max"] = late
                    while q and q[0][0] <= now:
                        due_at, frame = q.popleft()
                        c["late_us_sum"] += int((now - due_at) * 1e6)
                        send(d, frame)
            if now >= next_check:
                next_check = now + 1.0
                for name in socks:
                    socket.if_nametoindex(name)  # OSError once it is gone
                write_stats()
    except OSError as e:
        print(f"impair: exiting: {e}", file=sys.stderr, flush=True)
    write_stats(final=True)
    if a.pidfile:
        try:
            os.unlink(a.pidfile)
        except OSError:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
