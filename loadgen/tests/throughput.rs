//! Throughput counts bytes the target received, exactly.

use crate::common::*;

fn run_throughput(path: &[&str], extra: &[&str]) -> serde_json::Value {
    let json = TempFile::new("throughput.json");
    let mut args = vec!["throughput", "--warmup", "0", "--json", json.arg()];
    if !extra.contains(&"--duration") {
        args.extend_from_slice(&["--duration", "1"]);
    }
    args.extend_from_slice(path);
    args.extend_from_slice(extra);
    loadgen(&args).assert_ok();
    json.json()
}

#[test]
fn direct_up_counts_the_bytes_the_target_received() {
    let _serial = serial();
    let r = run_throughput(&["--direct"], &["--streams", "2"]);
    let counted = u64_at(&r, "/result/bytes_up");
    assert!(counted > 0);
    // With no warmup, every acknowledged byte is in the window.
    assert_eq!(counted, u64_at(&r, "/target/bytes_received"));
    assert_eq!(u64_at(&r, "/result/streams_without_final_ack"), 0);
    assert_eq!(u64_at(&r, "/errors/total"), 0);
    let per_stream: u64 = r["result"]["per_stream"]
        .as_array()
        .expect("per_stream")
        .iter()
        .map(|s| s["bytes_up"].as_u64().expect("bytes_up"))
        .sum();
    assert_eq!(per_stream, counted);
}

#[test]
fn direct_up_to_an_external_target_matches_its_counters() {
    let _serial = serial();
    let counters = TempFile::new("serve.json");
    let target = serve(&counters, &[]);
    let r = run_throughput(&["--direct", "--target", &target.arg()], &[]);
    target.stop();
    let served = counters.json();
    assert_eq!(
        u64_at(&r, "/result/bytes_up"),
        u64_at(&served, "/counters/bytes_received")
    );
    assert_eq!(u64_at(&served, "/counters/sink_connections"), 1);
    assert!(r["target"].is_null(), "no own targets with --target");
}

#[test]
fn through_coresocks_up_counts_the_bytes_the_target_received() {
    let _serial = serial();
    let proxy = coresocks(&[]);
    let r = run_throughput(&["--proxy", &proxy.arg()], &["--streams", "2"]);
    assert!(u64_at(&r, "/result/bytes_up") > 0);
    assert_eq!(
        u64_at(&r, "/result/bytes_up"),
        u64_at(&r, "/target/bytes_received")
    );
    assert_eq!(u64_at(&r, "/result/streams_without_final_ack"), 0);
    assert_eq!(r["path"]["mode"], "proxy");
}

#[test]
fn through_coresocks_both_ways_counts_both_directions() {
    let _serial = serial();
    let proxy = coresocks(&[]);
    let r = run_throughput(
        &["--proxy", &proxy.arg()],
        &["--direction", "both", "--duration", "2"],
    );
    let up = u64_at(&r, "/result/bytes_up");
    let down = u64_at(&r, "/result/bytes_down");
    assert!(up > 0, "up {up}");
    assert_eq!(up, u64_at(&r, "/target/bytes_received"));
    // Down counts only the window, which a machine that stalled loadgen
    // past its start may have missed (the report says so); the target sent
    // at least that much either way.
    let late = f64_at(&r, "/result/start_late_s");
    assert!(down > 0 || late > 0.2, "down {down}, started {late} s late");
    assert!(down <= u64_at(&r, "/target/bytes_sent"));
}

#[test]
fn direct_down_counts_what_loadgen_received() {
    let _serial = serial();
    let r = run_throughput(&["--direct"], &["--direction", "down"]);
    let down = u64_at(&r, "/result/bytes_down");
    let late = f64_at(&r, "/result/start_late_s");
    assert!(down > 0 || late > 0.2, "down {down}, started {late} s late");
    assert!(down <= u64_at(&r, "/target/bytes_sent"));
    assert_eq!(u64_at(&r, "/result/bytes_up"), 0);
    assert_eq!(f64_at(&r, "/result/seconds_down"), 1.0);
}

#[test]
fn proxy_pid_reports_the_proxy_cpu_time() {
    let _serial = serial();
    let proxy = coresocks(&[]);
    let pid = proxy.pid().to_string();
    let r = run_throughput(
        &["--proxy", &proxy.arg()],
        &["--proxy-pid", &pid, "--direction", "both"],
    );
    let p = &r["proxy_process"];
    assert_eq!(u64_at(p, "/pid"), proxy.pid() as u64);
    assert_eq!(p["sampled"], "window");
    assert!(f64_at(p, "/cpu_s") > 0.0, "{p}");
    assert!(f64_at(p, "/cpu_s_per_gib") > 0.0, "{p}");
    assert!(u64_at(p, "/rss_end_bytes") > 0);
    // The samples are taken at the window's ends by a thread a loaded
    // machine may delay, so only check what the figures must agree on:
    // the window is the 1 s measurement (not the process's lifetime) and
    // cpu_cores is cpu_s over it.
    let seconds = f64_at(p, "/seconds");
    assert!(seconds > 0.5 && seconds < 5.0, "{p}");
    assert!(
        (f64_at(p, "/cpu_cores") - f64_at(p, "/cpu_s") / seconds).abs() < 1e-9,
        "{p}"
    );
    assert!(p["rss_growth_per_tunnel_bytes"].is_null());
}

#[test]
fn proxy_pid_of_no_process_is_refused() {
    // Beyond pid_max: never a live process.
    loadgen(&["throughput", "--direct", "--proxy-pid", "4294967295"])
        .assert_clean_error("--proxy-pid 4294967295");
}
