//! Connection rate: loadgen's counts match the target's.

use crate::common::*;

#[test]
fn direct_connections_match_the_targets_accepts() {
    let _serial = serial();
    let counters = TempFile::new("serve.json");
    let target = serve(&counters, &[]);
    let json = TempFile::new("cps.json");
    loadgen(&[
        "cps",
        "--direct",
        "--target",
        &target.arg(),
        "--concurrency",
        "2",
        "--duration",
        "1",
        "--warmup",
        "0",
        "--json",
        json.arg(),
    ])
    .assert_ok();
    target.stop();
    let r = json.json();
    let served = counters.json();
    let ok = u64_at(&r, "/result/connections_ok_total");
    assert!(ok > 0);
    assert_eq!(u64_at(&r, "/errors/total"), 0);
    assert_eq!(u64_at(&r, "/result/attempts_total"), ok);
    assert_eq!(ok, u64_at(&served, "/counters/echo_connections"));
    // Plus the one check made before the load.
    assert_eq!(u64_at(&served, "/counters/hello_connections"), 1);
    assert_eq!(u64_at(&served, "/counters/accepted"), ok + 1);
    // With no warmup, the window holds them all.
    assert_eq!(u64_at(&r, "/result/connections"), ok);
}

#[test]
fn through_coresocks_connections_match_the_targets_accepts() {
    let _serial = serial();
    let proxy = coresocks(&[]);
    let json = TempFile::new("cps.json");
    loadgen(&[
        "cps",
        "--proxy",
        &proxy.arg(),
        "--duration",
        "1",
        "--warmup",
        "0",
        "--json",
        json.arg(),
    ])
    .assert_ok();
    let r = json.json();
    let ok = u64_at(&r, "/result/connections_ok_total");
    assert!(ok > 0);
    assert_eq!(u64_at(&r, "/errors/total"), 0);
    assert_eq!(ok, u64_at(&r, "/target/echo_connections"));
    assert_eq!(u64_at(&r, "/result/handshake/count"), ok);
    assert_eq!(u64_at(&r, "/result/first_byte/count"), ok);
    assert!(f64_at(&r, "/result/first_byte/p50_us") >= f64_at(&r, "/result/handshake/min_us"));
    assert_eq!(r["result"]["close"], "rst");
}
