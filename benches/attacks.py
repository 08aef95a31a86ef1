#!/usr/bin/env python3
"""One client address against everybody else: the three attacks of
issue 24, each from 127.0.0.2 against a proxy with default flags, while an
honest `curl --socks5-hostname` loop from 127.0.0.1 fetches a page from a
local HTTP server by name (`localhost`, so each fetch also resolves).

  benches/attacks.py [--binary target/release/coresocks] [--hold 20]
                     [--only udp|passwords|metrics] [--proxy-cpu 1]
                     [--extra-flags "--auth-cache 0s"]

Attacks:
  udp        UDP associations opened 100 at a time, up to 5,000, held for
             --hold seconds, then closed
  passwords  2,000 wrong-password logins over 200 concurrent connections
             against an Argon2-hashed user (honest clients log in as that
             user with the right password)
  metrics    2,000 idle TCP connections to the metrics endpoint, held for
             --hold seconds, while a scraper (curl, 10 s timeout, as
             Prometheus's default) scrapes once a second

For each: the honest fetches served before, during and after, their time
to first byte (p50, p99), and the proxy's descriptors, RSS and CPU. Only
loopback; every load stops by itself.
"""

import argparse
import http.server
import os
import re
import shlex
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

ATTACKER = "127.0.0.2"
HONEST = "127.0.0.1"


def fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_mib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_s(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values, p):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p / 100))]


class Page(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"honest page\n" * 100
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class Proxy:
    def __init__(self, binary, flags, cpu):
        cmd = [binary, "--listen", "127.0.0.1:0", "--allow", "127.0.0.0/8",
               "--allow", "::1", "--metrics", "127.0.0.1:0", "--access-log", "off"] + flags
        if cpu is not None:
            cmd = ["taskset", "-c", str(cpu)] + cmd
        self.cmd = cmd
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
        self.log = []
        self.addr = self.metrics = None
        ready = threading.Event()

        def read():
            for line in self.proc.stderr:
                self.log.append(line.rstrip())
                m = re.search(r"metrics on http://([0-9.:]+)/", line)
                if m:
                    self.metrics = m.group(1)
                m = re.search(r" ready on ([0-9.:]+)", line)
                if m:
                    self.addr = m.group(1)
                    ready.set()

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(20):
            sys.exit("proxy did not start:\n" + "\n".join(self.log))
        self.pid = self.proc.pid
        self.host, self.port = self.addr.rsplit(":", 1)

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


class Honest:
    """curl from 127.0.0.1 through the proxy, in a loop, tagged by phase."""

    def __init__(self, proxy, page_port, creds):
        self.phase = "before"
        self.results = []  # (phase, ok, ttfb_s)
        self.stop = False
        who = f"{creds}@" if creds else ""
        self.cmd = ["curl", "-s", "-o", "/dev/null", "--max-time", "10",
                    "--interface", HONEST, "-w", "%{http_code} %{time_starttransfer}",
                    "--socks5-hostname", f"{who}{proxy.addr}",
                    f"http://localhost:{page_port}/"]
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.stop:
            phase = self.phase
            out = subprocess.run(self.cmd, capture_output=True, text=True).stdout.split()
            ok = len(out) == 2 and out[0] == "200"
            self.results.append((phase, ok, float(out[1]) if ok else None))
            time.sleep(0.2)

    def summary(self, phase):
        rows = [r for r in self.results if r[0] == phase]
        served = [r[2] * 1000 for r in rows if r[1]]
        return len(served), len(rows), pct(served, 50), pct(served, 99)

    def finish(self):
        self.stop = True
        self.thread.join()


def from_attacker(addr):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind((ATTACKER, 0))
    s.settimeout(30)
    s.connect(addr)
    return s


def recv_exact(s, n):
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return buf


def udp_attack(proxy, hold, report):
    addr = (proxy.host, int(proxy.port))
    held, refused, failed, peak = [], 0, 0, 0
    request = b"\x05\x01\x00" + b"\x05\x03\x00\x01" + bytes(4) + struct.pack(">H", 0)
    started = time.time()
    for _ in range(50):
        batch = []
        for _ in range(100):
            try:
                s = from_attacker(addr)
                s.sendall(request)
                batch.append(s)
            except OSError:
                failed += 1
        for s in batch:
            try:
                reply = recv_exact(s, 2 + 10)
                if reply[3] == 0:
                    held.append(s)
                else:
                    refused += 1
                    s.close()
            except (OSError, ConnectionError):
                failed += 1
                s.close()
        peak = max(peak, fds(proxy.pid))
    report["opened"] = f"{len(held)} held, {refused} refused, {failed} failed in {time.time() - started:.1f} s"
    end = time.time() + hold
    while time.time() < end:
        peak = max(peak, fds(proxy.pid))
        time.sleep(0.5)
    report["peak fds"] = peak
    for s in held:
        s.close()


def password_attack(proxy, hold, report):
    addr = (proxy.host, int(proxy.port))
    user, guess = b"alice", b"guess"
    login = b"\x05\x01\x02" + b"\x01" + bytes([len(user)]) + user + bytes([len(guess)]) + guess
    remaining = [2000]
    lock = threading.Lock()
    outcomes = {"refused": 0, "accepted": 0, "error": 0}

    def worker():
        while True:
            with lock:
                if remaining[0] == 0:
                    return
                remaining[0] -= 1
            try:
                s = from_attacker(addr)
                s.sendall(login)
                reply = recv_exact(s, 4)
                key = "refused" if reply[3] != 0 else "accepted"
            except (OSError, ConnectionError):
                key = "error"
            with lock:
                outcomes[key] += 1
            s.close()

    cpu0, t0 = cpu_s(proxy.pid), time.time()
    threads = [threading.Thread(target=worker) for _ in range(200)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.time() - t0
    report["attempts"] = f"2000 in {took:.1f} s: {outcomes}"
    report["proxy CPU during"] = f"{cpu_s(proxy.pid) - cpu0:.2f} s ({(cpu_s(proxy.pid) - cpu0) / took * 100:.0f}%)"
    time.sleep(max(0.0, hold - took))


def metrics_attack(proxy, hold, report):
    host, port = proxy.metrics.rsplit(":", 1)
    idle = []
    for _ in range(2000):
        try:
            idle.append(from_attacker((host, int(port))))
        except OSError:
            break
    scrapes, ok = [], 0
    end = time.time() + hold
    while time.time() < end:
        t = time.time()
        out = subprocess.run(["curl", "-s", "-o", "/dev/null", "--max-time", "10", "-w", "%{http_code}",
                              f"http://{proxy.metrics}/metrics"], capture_output=True, text=True).stdout
        scrapes.append(time.time() - t)
        ok += out == "200"
        time.sleep(max(0.0, 1 - (time.time() - t)))
    report["idle connections"] = len(idle)
    report["scrapes"] = f"{ok}/{len(scrapes)} answered, p50 {pct(scrapes, 50) * 1000:.1f} ms, max {max(scrapes) * 1000:.1f} ms"
    for s in idle:
        s.close()


def run(name, attack, args, page_port):
    flags = shlex.split(args.extra_flags)
    creds = None
    users = None
    if name == "passwords":
        hashed = subprocess.run([args.binary, "hash-password"], input="wonderland\n",
                                capture_output=True, text=True, check=True).stdout.strip()
        users = tempfile.NamedTemporaryFile("w", delete=False, prefix="attack-users")
        users.write(f"alice:{hashed}\n")
        users.close()
        os.chmod(users.name, 0o600)
        flags += ["--users", users.name]
        creds = "alice:wonderland"
    proxy = Proxy(args.binary, flags, args.proxy_cpu)
    time.sleep(0.5)
    report = {"flags": " ".join(flags) or "(defaults)"}
    honest = Honest(proxy, page_port, creds)
    time.sleep(5)
    fds0, rss0 = fds(proxy.pid), rss_mib(proxy.pid)
    honest.phase = "during"
    attack(proxy, args.hold, report)
    honest.phase = "after"
    time.sleep(5)
    honest.finish()
    time.sleep(1)
    report["fds before/after"] = f"{fds0} / {fds(proxy.pid)}"
    report["RSS MiB before/after"] = f"{rss0:.1f} / {rss_mib(proxy.pid):.1f}"
    emfile = sum("out of file descriptors" in l or "EMFILE" in l or "Too many open files" in l for l in proxy.log)
    report["EMFILE lines in the log"] = emfile
    share = [l for l in proxy.log if "holds its share" in l]
    if share:
        report["log"] = share[0].split("WARN ", 1)[-1][:200]
    proxy.stop()
    if users:
        os.unlink(users.name)
    print(f"\n## {name}: {report.pop('flags')}\n")
    print("| honest fetches | served | TTFB p50 ms | p99 ms |\n|---|---:|---:|---:|")
    for phase in ("before", "during", "after"):
        served, total, p50, p99 = honest.summary(phase)
        print(f"| {phase} | {served}/{total} | {p50:.1f} | {p99:.1f} |")
    print()
    for k, v in report.items():
        print(f"- {k}: {v}")
    sys.stdout.flush()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", default="target/release/coresocks")
    ap.add_argument("--hold", type=float, default=20)
    ap.add_argument("--only", choices=["udp", "passwords", "metrics"])
    ap.add_argument("--proxy-cpu", type=int, default=None)
    ap.add_argument("--extra-flags", default="")
    args = ap.parse_args()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    page_port = server.server_address[1]
    print(f"# attacks.py: {' '.join(sys.argv[1:]) or '(defaults)'}; RLIMIT_NOFILE {os.popen('ulimit -n').read().strip()}; "
          f"{os.cpu_count()} CPUs")
    attacks = {"udp": udp_attack, "passwords": password_attack, "metrics": metrics_attack}
    for name, attack in attacks.items():
        if args.only in (None, name):
            run(name, attack, args, page_port)
    server.shutdown()


if __name__ == "__main__":
    main()
