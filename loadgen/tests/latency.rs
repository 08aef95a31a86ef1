//! Open-loop latency: a stall of the target must show in the percentiles.

use crate::common::*;

#[test]
fn a_stall_in_the_target_shows_in_the_tail() {
    let _serial = serial();
    let counters = TempFile::new("serve.json");
    // The echo target freezes its core for 200 ms once, after 300 reads
    // (about 0.3 s into the run at 1000 req/s).
    let target = serve(&counters, &["--pause-after", "300", "--pause", "200ms"]);
    let json = TempFile::new("latency.json");
    loadgen(&[
        "latency",
        "--direct",
        "--target",
        &target.arg(),
        "--connections",
        "4",
        "--rate",
        "1000",
        "--duration",
        "2",
        "--warmup",
        "0",
        "--json",
        json.arg(),
    ])
    .assert_ok();
    target.stop();
    let r = json.json();
    // 200 ms of a 2 s run: about 10% of the requests were scheduled during
    // the stall. Measured from their intended send times they waited up to
    // 200 ms, so p99 must be far above a loopback round trip. A closed loop
    // would have sent only 4 requests during the stall and kept p99 low.
    let p99 = f64_at(&r, "/result/latency/p99_us");
    let max = f64_at(&r, "/result/latency/max_us");
    assert!(
        p99 >= 100_000.0,
        "p99 {p99} µs does not show the 200 ms stall\n{r:#}"
    );
    assert!(max >= 150_000.0, "max {max} µs");
    let requests = u64_at(&r, "/result/requests_in_window");
    assert_eq!(requests, 2000);
    assert_eq!(u64_at(&r, "/result/latency/count"), requests);
    assert_eq!(u64_at(&r, "/result/lost"), 0);
}

#[test]
fn reports_every_percentile_and_the_achieved_rate() {
    let _serial = serial();
    let json = TempFile::new("latency.json");
    let run = loadgen(&[
        "latency",
        "--direct",
        "--connections",
        "2",
        "--rate",
        "500",
        "--size",
        "100",
        "--duration",
        "1",
        "--warmup",
        "0.2",
        "--json",
        json.arg(),
    ]);
    run.assert_ok();
    for label in ["p50", "p90", "p99", "p99.9", "p99.99", "max", "achieved"] {
        assert!(
            run.stdout.contains(label),
            "table lacks {label}:\n{}",
            run.stdout
        );
    }
    let r = json.json();
    let l = &r["result"]["latency"];
    for key in [
        "count",
        "min_us",
        "mean_us",
        "p50_us",
        "p90_us",
        "p99_us",
        "p99_9_us",
        "p99_99_us",
        "max_us",
    ] {
        assert!(l[key].is_number(), "latency.{key} missing: {l}");
    }
    assert!(f64_at(&r, "/result/achieved_rate") > 0.0);
    assert_eq!(u64_at(&r, "/result/requests_in_window"), 500);
    // The echo saw every request byte of the run (warmup included).
    assert!(u64_at(&r, "/target/echo_bytes") >= 500 * 100);
}
