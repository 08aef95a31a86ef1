//! compare runs the paths interleaved and reports medians and ratios.

use crate::common::*;

#[test]
fn runs_interleave_and_ratios_are_reported() {
    let _serial = serial();
    let proxy = coresocks(&[]);
    let json = TempFile::new("compare.json");
    let run = loadgen(&[
        "compare",
        "--direct",
        "--proxy",
        &format!("cs={}", proxy.arg()),
        "--proxy",
        &format!("again={}", proxy.arg()),
        "--rounds",
        "2",
        "--gap",
        "0",
        "--json",
        json.arg(),
        "throughput",
        "--duration",
        "0.3",
        "--warmup",
        "0",
    ]);
    run.assert_ok();
    let r = json.json();
    let runs = r["runs"].as_array().expect("runs");
    let order: Vec<(u64, &str)> = runs
        .iter()
        .map(|x| (x["round"].as_u64().unwrap(), x["name"].as_str().unwrap()))
        .collect();
    assert_eq!(
        order,
        [
            (1, "direct"),
            (1, "cs"),
            (1, "again"),
            (2, "direct"),
            (2, "cs"),
            (2, "again")
        ]
    );
    let indexes: Vec<u64> = runs.iter().map(|x| x["index"].as_u64().unwrap()).collect();
    assert_eq!(indexes, [1, 2, 3, 4, 5, 6]);
    assert_eq!(r["order"], serde_json::json!(["direct", "cs", "again"]));
    assert_eq!(r["headline"], "Gbit/s");

    let summary = r["summary"].as_array().expect("summary");
    assert_eq!(summary.len(), 3);
    let find = |name: &str| summary.iter().find(|s| s["name"] == name).expect(name);
    // Each path against itself is 1 exactly.
    assert_eq!(f64_at(find("direct"), "/ratio_to_direct/Gbit~1s"), 1.0);
    assert_eq!(f64_at(find("cs"), "/ratio_to_first_proxy/Gbit~1s"), 1.0);
    for s in summary {
        let median = f64_at(s, "/median/Gbit~1s");
        assert!(median > 0.0);
        let to_direct = f64_at(s, "/ratio_to_direct/Gbit~1s");
        let direct = f64_at(find("direct"), "/median/Gbit~1s");
        assert!((to_direct - median / direct).abs() < 1e-9);
    }
    // The markdown table: a header, a rule, one row per path.
    let table: Vec<&str> = run.stdout.lines().filter(|l| l.starts_with('|')).collect();
    assert_eq!(table.len(), 5, "{}", run.stdout);
    assert!(
        table[0].contains("x direct") && table[0].contains("x cs"),
        "{}",
        table[0]
    );
    assert!(table[2].starts_with("| direct |"));
    assert_eq!(r["markdown"].as_str().unwrap(), run.stdout);
    // Progress goes to stderr, in the same order.
    let progress: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.starts_with("run "))
        .collect();
    assert_eq!(progress.len(), 6);
    assert!(progress[3].ends_with(": direct"), "{}", progress[3]);
}

#[test]
fn needs_a_path() {
    let run = loadgen(&["compare", "--rounds", "1", "cps"]);
    run.assert_clean_error("at least one --proxy");
}

/// One proxy measured in each protocol it serves, the protocol given as
/// the address's scheme; a proxy that does not serve one fails its runs
/// without stopping the others.
#[test]
fn one_proxy_in_three_protocols_side_by_side() {
    let _serial = serial();
    let proxy = coresocks(&["--protocols", "socks5,socks4,http-connect"]);
    let json = TempFile::new("compare-protocols.json");
    let run = loadgen(&[
        "compare",
        "--proxy",
        &format!("socks5={}", proxy.arg()),
        "--proxy",
        &format!("socks4a=socks4a://{}", proxy.arg()),
        "--proxy",
        &format!("http=http://{}", proxy.arg()),
        "--rounds",
        "1",
        "--gap",
        "0",
        "--json",
        json.arg(),
        "cps",
        "--duration",
        "0.3",
        "--warmup",
        "0",
    ]);
    run.assert_ok();
    let r = json.json();
    for s in r["summary"].as_array().expect("summary") {
        assert!(f64_at(s, "/median/conn~1s") > 0.0, "{s}");
        assert_eq!(f64_at(s, "/median/errors"), 0.0, "{s}");
    }
    // A socks5-only proxy answers neither: every connection fails.
    let plain = coresocks(&[]);
    let failed = loadgen(&[
        "cps",
        "--proxy",
        &format!("http://{}", plain.arg()),
        "--duration",
        "0.3",
        "--warmup",
        "0",
    ]);
    assert!(
        !failed.stdout.contains("errors        0"),
        "{}",
        failed.stdout
    );
}
