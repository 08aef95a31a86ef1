//! Third-party SOCKS5 clients beyond curl: PySocks (Python), which speaks
//! UDP ASSOCIATE. `.ci/run` installs it (`pip install PySocks`).

use std::process::Command;

use crate::common::*;

const PYSOCKS_UDP: &str = r#"
import socket, sys, threading
import socks
proxy_port, family = int(sys.argv[1]), sys.argv[2]
# PySocks speaks UDP from IPv4 sockets only; the target may be IPv6.
af, host = (socket.AF_INET6, '::1') if family == '6' else (socket.AF_INET, '127.0.0.1')
echo = socket.socket(af, socket.SOCK_DGRAM)
echo.bind((host, 0))
def serve():
    while True:
        data, addr = echo.recvfrom(65535)
        echo.sendto(data, addr)
threading.Thread(target=serve, daemon=True).start()
s = socks.socksocket(socket.AF_INET, socket.SOCK_DGRAM)
s.set_proxy(socks.SOCKS5, '127.0.0.1', proxy_port)
s.settimeout(5)
for size in (1, 1400, 60000):
    payload = bytes(i % 251 for i in range(size))
    s.sendto(payload, echo.getsockname()[:2])
    data, addr = s.recvfrom(65535)
    assert data == payload, f'payload of {size} bytes came back wrong'
    assert addr[1] == echo.getsockname()[1], addr
print('ok')
"#;

fn pysocks_udp(proxy: &Proxy, family: &str) {
    let out = Command::new("python3")
        .args(["-c", PYSOCKS_UDP, &proxy.addr.port().to_string(), family])
        .output()
        .expect("python3 must be installed");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("No module named 'socks'"),
        "PySocks is missing: python3 -m pip install PySocks"
    );
    assert!(out.status.success(), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
}

#[test]
fn pysocks_udp_associate_over_ipv4() {
    let proxy = Proxy::start(&[]);
    pysocks_udp(&proxy, "4");
    proxy.wait_for_log(&["cmd=udp-associate", "datagrams_up=3 datagrams_down=3"]);
}

#[test]
fn pysocks_udp_associate_to_ipv6_target() {
    let proxy = Proxy::start(&[]);
    pysocks_udp(&proxy, "6");
}
