//! A real third-party client: curl through the proxy to a local HTTP server.

use crate::common::*;

#[test]
fn curl_socks5_with_local_resolution() {
    let web = http_server("127.0.0.1:0");
    let proxy = Proxy::start(&[]);
    let (ok, body, err) = curl(&[
        "--socks5",
        &proxy.addr.to_string(),
        &format!("http://127.0.0.1:{}/ipv4", web.addr.port()),
    ]);
    assert!(ok, "{err}");
    assert_eq!(body, "hello from /ipv4\n");
}

#[test]
fn curl_socks5_hostname_resolved_by_the_proxy() {
    let web = http_server("127.0.0.1:0");
    let proxy = Proxy::start(&[]);
    let (ok, body, err) = curl(&[
        "--socks5-hostname",
        &proxy.addr.to_string(),
        &format!("http://localhost:{}/by-name", web.addr.port()),
    ]);
    assert!(ok, "{err}");
    assert_eq!(body, "hello from /by-name\n");
    proxy.wait_for_log(&["target=localhost:", "reply=succeeded"]);
}

#[test]
fn curl_to_ipv6_target() {
    let web = http_server("[::1]:0");
    let proxy = Proxy::start(&[]);
    let (ok, body, err) = curl(&[
        "--socks5-hostname",
        &proxy.addr.to_string(),
        &format!("http://[::1]:{}/v6", web.addr.port()),
    ]);
    assert!(ok, "{err}");
    assert_eq!(body, "hello from /v6\n");
}

#[test]
fn curl_with_username_and_password() {
    let web = http_server("127.0.0.1:0");
    let users = std::env::temp_dir().join(format!("coresocks-curl-users-{}", std::process::id()));
    std::fs::write(&users, "carol:correct horse\n").unwrap();
    let proxy = Proxy::start(&["--users", users.to_str().unwrap()]);
    std::fs::remove_file(&users).unwrap();
    let url = format!("http://localhost:{}/auth", web.addr.port());
    for flag in ["--socks5", "--socks5-hostname"] {
        let (ok, body, err) = curl(&[
            flag,
            &proxy.addr.to_string(),
            "--proxy-user",
            "carol:correct horse",
            &url,
        ]);
        assert!(ok, "{flag}: {err}");
        assert_eq!(body, "hello from /auth\n");
    }
    let (ok, _, _) = curl(&[
        "--socks5-hostname",
        &proxy.addr.to_string(),
        "--proxy-user",
        "carol:wrong",
        &url,
    ]);
    assert!(!ok, "a wrong password must fail");
    let (ok, _, _) = curl(&["--socks5-hostname", &proxy.addr.to_string(), &url]);
    assert!(!ok, "no credentials must fail");
    proxy.wait_for_log(&["user=carol", "end=auth-failed"]);
}

#[test]
fn curl_sees_refused_target_as_a_socks_error() {
    let proxy = Proxy::start(&[]);
    let (ok, _, err) = curl(&[
        "--socks5-hostname",
        &proxy.addr.to_string(),
        &format!("http://127.0.0.1:{}/", closed_port().port()),
    ]);
    assert!(!ok);
    assert!(err.to_lowercase().contains("socks"), "{err}");
}
