//! The clients people point at an egress proxy, unmodified, against the
//! real binary serving SOCKS5, SOCKS4/4a and HTTP CONNECT on one port:
//! curl, ncat, proxychains4 running a program that knows nothing of
//! proxies, PySocks, git over `https_proxy`, and headless Chromium. Each
//! tool is installed by `scripts/test`; a missing one skips here and fails
//! under CI. README's "Clients" table lists the same commands.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::common::root;
use crate::common::*;

const ALL: &[&str] = &["--protocols", "socks5,socks4,http-connect"];

/// Whether `tool` runs here; a skip (a failure under CI) when not.
fn have(tool: &str, package: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        root::skip(&format!("{tool} is missing (apt-get install {package})"));
    }
    found
}

/// A directory of files for the tests' web servers, removed on drop.
struct Site(PathBuf);

impl Site {
    /// A page whose text is written by its script, styled by its style
    /// sheet, with an image: three sub-resources that must all load.
    fn new(stem: &str) -> Site {
        let dir = std::env::temp_dir().join(format!("coresocks-{stem}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let files: [(&str, &[u8]); 4] = [
            (
                "page.html",
                b"<!doctype html><html><head><link rel=\"stylesheet\" href=\"/style.css\">\
                  <script src=\"/app.js\"></script></head>\
                  <body><p id=\"out\">waiting</p><img id=\"img\" src=\"/pixel.gif\"></body></html>",
            ),
            (
                "app.js",
                b"window.addEventListener('load', () => { const img = document.getElementById('img'); \
                  document.getElementById('out').textContent = 'loaded: ' + \
                  getComputedStyle(document.body).color + ' ' + img.naturalWidth + 'x' + img.naturalHeight; });",
            ),
            ("style.css", b"body { color: rgb(1, 2, 3) }"),
            ("pixel.gif", b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff\x21\xf9\x04\x01\x00\x00\x00\x00\x2c\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02\x44\x01\x00\x3b"),
        ];
        for (name, body) in files {
            std::fs::write(dir.join(name), body).unwrap();
        }
        Site(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const HTTPS_SERVER: &str = r#"
import http.server, os, ssl, sys
os.chdir(sys.argv[1])
class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Quiet)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[2], sys.argv[3])
server.socket = ctx.wrap_socket(server.socket, server_side=True)
print(server.server_address[1], flush=True)
server.serve_forever()
"#;

/// A static HTTPS server on 127.0.0.1 over `dir`, with a self-signed
/// certificate, run through `wrapper` (a network namespace, or nothing).
struct HttpsServer {
    child: Child,
    port: u16,
}

impl HttpsServer {
    fn start(dir: &Path, wrapper: &[&str]) -> HttpsServer {
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        let made = Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .args(["-subj", "/CN=127.0.0.1", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stderr(Stdio::null())
            .status()
            .expect("openssl must be installed");
        assert!(made.success());
        let mut cmd = match wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg("python3");
                c
            }
            None => Command::new("python3"),
        };
        let mut child = cmd
            .args(["-c", HTTPS_SERVER])
            .arg(dir)
            .arg(&cert)
            .arg(&key)
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line.trim().parse().expect("the server's port");
        HttpsServer { child, port }
    }
}

impl Drop for HttpsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn users_file() -> TempPath {
    let users = TempPath::new("clients-users");
    std::fs::write(&users.0, "alice:wonderland\n").unwrap();
    std::fs::set_permissions(&users.0, std::fs::Permissions::from_mode(0o600)).unwrap();
    users
}

#[test]
fn curl_speaks_socks4_socks4a_and_http_connect() {
    let web = http_server("127.0.0.1:0");
    let port = web.target().port();
    let proxy = Proxy::start(ALL);
    let p = proxy.addr.to_string();
    let http = format!("http://{p}");
    for (flags, url) in [
        (
            vec!["--socks4", p.as_str()],
            format!("http://127.0.0.1:{port}/socks4"),
        ),
        (
            vec!["--socks4a", p.as_str()],
            format!("http://localhost:{port}/socks4a"),
        ),
        // -p: a tunnel (CONNECT) even for an http:// URL.
        (
            vec!["--proxy", http.as_str(), "-p"],
            format!("http://127.0.0.1:{port}/http"),
        ),
    ] {
        let mut args = flags.clone();
        args.push(&url);
        let (ok, out, err) = curl(&args);
        assert!(ok, "curl {args:?}: {err}");
        assert!(out.starts_with("hello from /"), "{out}");
    }
    proxy.wait_for_log(&["proto=socks4", "target=localhost:"]);
    proxy.wait_for_log(&["proto=http-connect", "reply=succeeded"]);
    // With users: the credentials ride in Proxy-Authorization.
    let users = users_file();
    let proxy = Proxy::start(&[ALL, &["--users", users.arg()]].concat());
    let http = format!("http://{}", proxy.addr);
    let url = format!("http://127.0.0.1:{port}/authorized");
    let (ok, out, err) = curl(&[
        "--proxy",
        &http,
        "-p",
        "--proxy-user",
        "alice:wonderland",
        &url,
    ]);
    assert!(ok && out.contains("/authorized"), "{err}");
    let (ok, _, err) = curl(&["--proxy", &http, "-p", &url]);
    assert!(!ok && err.contains("407"), "no credentials: {err}");
    proxy.wait_for_log(&["user=alice", "auth=basic", "proto=http-connect"]);
}

#[test]
fn ncat_speaks_socks4_socks5_and_http() {
    if !have("ncat", "ncat") {
        return;
    }
    let echo = echo_server("127.0.0.1:0");
    let proxy = Proxy::start(ALL);
    for kind in ["socks4", "socks5", "http"] {
        let mut ncat = Command::new("ncat");
        ncat.args(["--proxy", &proxy.addr.to_string(), "--proxy-type", kind])
            .args(["127.0.0.1", &echo.target().port().to_string()]);
        let out = output_with_input(&mut ncat, format!("through {kind}\n").as_bytes());
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("through {kind}\n"),
            "ncat --proxy-type {kind}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for proto in ["socks4", "socks5", "http-connect"] {
        proxy.wait_for_log(&[&format!("proto={proto}"), "reply=succeeded"]);
    }
}

#[test]
fn proxychains4_runs_an_unmodified_program_over_socks4_and_http() {
    if !have("proxychains4", "proxychains4") {
        return;
    }
    let web = http_server("127.0.0.1:0");
    let proxy = Proxy::start(ALL);
    for kind in ["socks4", "http"] {
        let conf = TempPath::new(&format!("proxychains-{kind}.conf"));
        let ip = proxy.addr.ip();
        let port = proxy.addr.port();
        std::fs::write(
            &conf.0,
            format!("strict_chain\ntcp_read_time_out 15000\ntcp_connect_time_out 8000\n[ProxyList]\n{kind} {ip} {port}\n"),
        )
        .unwrap();
        let url = format!("http://127.0.0.1:{}/{kind}", web.target().port());
        // curl without any proxy flag: proxychains4 redirects its connect().
        let out = Command::new("proxychains4")
            .args([
                "-q",
                "-f",
                conf.arg(),
                "curl",
                "--silent",
                "--max-time",
                "20",
                &url,
            ])
            .env_remove("http_proxy")
            .env_remove("all_proxy")
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("hello from /{kind}\n"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    proxy.wait_for_log(&["proto=socks4", "reply=succeeded"]);
    proxy.wait_for_log(&["proto=http-connect", "reply=succeeded"]);
}

const PYSOCKS_TCP: &str = r#"
import socket, sys
import socks
proxy_port, echo_port = int(sys.argv[1]), int(sys.argv[2])
for kind, name in ((socks.SOCKS4, 'socks4'), (socks.HTTP, 'http')):
    s = socks.socksocket()
    s.set_proxy(kind, '127.0.0.1', proxy_port)
    s.settimeout(5)
    s.connect(('127.0.0.1', echo_port))
    s.sendall(name.encode())
    assert s.recv(100) == name.encode(), name
    s.close()
print('ok')
"#;

#[test]
fn pysocks_speaks_socks4_and_http() {
    let echo = echo_server("127.0.0.1:0");
    let proxy = Proxy::start(ALL);
    let out = Command::new("python3")
        .args(["-c", PYSOCKS_TCP])
        .arg(proxy.addr.port().to_string())
        .arg(echo.target().port().to_string())
        .output()
        .expect("python3");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
    proxy.wait_for_log(&["proto=socks4", "reply=succeeded"]);
    proxy.wait_for_log(&["proto=http-connect", "reply=succeeded"]);
}

/// Runs git in `dir` with `args`; panics with its output on failure.
fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .args(["-c", "user.name=t", "-c", "user.email=t@example.invalid"])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn git_ls_remote_goes_through_https_proxy() {
    if !have("git", "git") || !have("openssl", "openssl") {
        return;
    }
    let site = Site::new("git");
    let work = site.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    git(&work, &["init", "-q", "-b", "main"]);
    std::fs::write(work.join("README"), "through the proxy\n").unwrap();
    git(&work, &["add", "README"]);
    git(&work, &["commit", "-q", "-m", "one"]);
    // A "dumb" HTTP repository: static files a plain web server can serve.
    git(site.path(), &["clone", "-q", "--bare", "work", "repo.git"]);
    git(&site.path().join("repo.git"), &["update-server-info"]);
    let server = HttpsServer::start(site.path(), &[]);
    let proxy = Proxy::start(ALL);
    let out = Command::new("git")
        .args(["-c", "http.sslVerify=false", "ls-remote"])
        .arg(format!("https://127.0.0.1:{}/repo.git", server.port))
        .env("https_proxy", format!("http://{}", proxy.addr))
        .env_remove("no_proxy")
        .env_remove("NO_PROXY")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.contains("refs/heads/main"),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    proxy.wait_for_log(&[
        "proto=http-connect",
        &format!("target=127.0.0.1:{}", server.port),
        "reply=succeeded",
    ]);
}

/// A network namespace with only its loopback up, removed on drop: what
/// runs in it can reach nothing but itself (Chromium's own background
/// requests, which go through the proxy too, resolve nowhere).
struct Isolated(String);

impl Isolated {
    fn new() -> Option<Isolated> {
        if !root::root_or_skip("a network namespace for Chromium") || !have("ip", "iproute2") {
            return None;
        }
        let name = format!("coresocks-clients-{}", std::process::id());
        let ip = |args: &[&str]| {
            Command::new("ip")
                .args(args)
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        let _ = ip(&["netns", "del", &name]);
        assert!(ip(&["netns", "add", &name]), "ip netns add");
        let ns = Isolated(name);
        assert!(ip(&["-n", &ns.0, "link", "set", "lo", "up"]));
        Some(ns)
    }

    fn wrapper(&self) -> [&str; 4] {
        ["ip", "netns", "exec", &self.0]
    }
}

impl Drop for Isolated {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[test]
fn headless_chromium_loads_a_page_through_socks5_and_http_connect() {
    if !have("chromium", "chromium") || !have("openssl", "openssl") {
        return;
    }
    let Some(ns) = Isolated::new() else {
        return;
    };
    let site = Site::new("chromium");
    let server = HttpsServer::start(site.path(), &ns.wrapper());
    let proxy = Proxy::start_in(&ns.wrapper(), ALL);
    let profile = site.path().join("profile");
    for scheme in ["socks5", "http"] {
        let out = Command::new("ip")
            .args(ns.wrapper()[1..].iter())
            .arg("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
            ])
            .args([
                "--disable-background-networking",
                "--disable-component-update",
            ])
            .args(["--ignore-certificate-errors", "--virtual-time-budget=5000"])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(format!("--proxy-server={scheme}://{}", proxy.addr))
            // Chromium sends loopback direct unless told otherwise.
            .arg("--proxy-bypass-list=<-loopback>")
            .arg("--dump-dom")
            .arg(format!("https://127.0.0.1:{}/page.html", server.port))
            .stderr(Stdio::null())
            .output()
            .unwrap();
        let dom = String::from_utf8_lossy(&out.stdout);
        assert!(
            dom.contains("loaded: rgb(1, 2, 3) 1x1"),
            "{scheme}: the script, the style sheet and the image all came through: {dom}"
        );
    }
    let target = format!("target=127.0.0.1:{}", server.port);
    proxy.wait_for_log(&["proto=socks5", &target, "reply=succeeded"]);
    proxy.wait_for_log(&["proto=http-connect", &target, "reply=succeeded"]);
}
