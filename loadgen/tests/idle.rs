//! Idle tunnels: opened, held, closed; with --proxy-pid, the proxy's RSS.

use crate::common::*;

#[test]
fn holds_200_tunnels_through_coresocks_and_reads_its_rss() {
    let _serial = serial();
    let proxy = coresocks(&[]);
    let json = TempFile::new("idle.json");
    let run = loadgen(&[
        "idle",
        "--proxy",
        &proxy.arg(),
        "--tunnels",
        "200",
        "--duration",
        "1.5",
        "--proxy-pid",
        &proxy.pid().to_string(),
        "--json",
        json.arg(),
    ]);
    run.assert_ok();
    let r = json.json();
    assert_eq!(r["scenario"], "idle");
    assert_eq!(u64_at(&r, "/result/tunnels"), 200);
    assert_eq!(u64_at(&r, "/result/opened"), 200, "{}", run.stdout);
    assert_eq!(u64_at(&r, "/result/failed"), 0);
    assert_eq!(u64_at(&r, "/result/closed_by_peer"), 0);
    assert_eq!(u64_at(&r, "/errors/total"), 0);
    assert!(f64_at(&r, "/result/open_seconds") > 0.0);
    assert!(u64_at(&r, "/result/nofile_limit") >= 200);
    // Each tunnel echoed once through the proxy.
    assert_eq!(u64_at(&r, "/target/echo_connections"), 200);
    let p = &r["proxy_process"];
    assert_eq!(p["sampled"], "tunnels");
    assert!(u64_at(p, "/rss_start_bytes") > 0, "{p}");
    assert!(u64_at(p, "/rss_end_bytes") > 0, "{p}");
    assert!(p["rss_growth_per_tunnel_bytes"].is_number(), "{p}");
    assert!(p["rss_growth_bytes"].is_number());
    // Measured around the opening: from before the first connect to 1 s
    // after the last.
    assert!(f64_at(p, "/seconds") >= 1.0);
    assert!(run.stdout.contains("200 opened of 200"), "{}", run.stdout);
    assert!(run.stdout.contains("per tunnel"), "{}", run.stdout);
}

#[test]
fn direct_idle_tunnels_reach_the_echo() {
    let _serial = serial();
    let json = TempFile::new("idle.json");
    loadgen(&[
        "idle",
        "--direct",
        "--tunnels",
        "50",
        "--duration",
        "0.3",
        "--json",
        json.arg(),
    ])
    .assert_ok();
    let r = json.json();
    assert_eq!(u64_at(&r, "/result/opened"), 50);
    assert_eq!(u64_at(&r, "/target/echo_connections"), 50);
    assert!(r["proxy_process"].is_null());
    assert_eq!(r["series_unit"], "open_tunnels");
}

#[test]
fn more_tunnels_than_fit_fail_clearly() {
    // More than any ephemeral port range (or descriptor limit) holds.
    loadgen(&["idle", "--direct", "--tunnels", "1000000"])
        .assert_clean_error("1000000 tunnels need");
}

#[test]
fn a_short_hold_with_proxy_pid_is_refused() {
    let pid = std::process::id().to_string();
    loadgen(&[
        "idle",
        "--direct",
        "--tunnels",
        "1",
        "--duration",
        "1",
        "--proxy-pid",
        &pid,
    ])
    .assert_clean_error("at least 1.5s");
}
