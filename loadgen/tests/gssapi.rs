//! GSSAPI (RFC 1961) through coresocks, with a ticket from a throw-away
//! KDC on loopback: protected throughput counts exactly what the target
//! got, and scenarios that cannot wrap their data say so.

use crate::common::*;

// Shared with the proxy's suite, which uses all of it.
#[allow(dead_code)]
#[path = "../../tests/common/kdc.rs"]
mod kdc;

fn gss_proxy() -> Daemon {
    let k = kdc::kdc();
    coresocks(&[
        "--gssapi-keytab",
        k.keytab_arg(),
        "--gssapi-protection",
        "clear",
    ])
}

#[test]
fn protected_throughput_counts_what_the_target_received_at_every_level() {
    let _serial = serial();
    let proxy = gss_proxy();
    for level in ["clear", "integrity", "confidentiality"] {
        let json = TempFile::new("gss-throughput.json");
        loadgen(&[
            "throughput",
            "--proxy",
            &proxy.arg(),
            "--gssapi",
            level,
            "--direction",
            "both",
            "--warmup",
            "0",
            "--duration",
            "1",
            "--json",
            json.arg(),
        ])
        .assert_ok();
        let r = json.json();
        let up = u64_at(&r, "/result/bytes_up");
        assert!(up > 0, "{level}: up {up}");
        assert_eq!(up, u64_at(&r, "/target/bytes_received"), "{level}");
        assert_eq!(u64_at(&r, "/errors/total"), 0, "{level}");
        assert!(u64_at(&r, "/result/bytes_down") <= u64_at(&r, "/target/bytes_sent"));
        assert_eq!(r["path"]["auth"], true);
    }
}

#[test]
fn scenarios_that_cannot_wrap_refuse_protection_and_take_clear() {
    let _serial = serial();
    let proxy = gss_proxy();
    loadgen(&[
        "cps",
        "--proxy",
        &proxy.arg(),
        "--gssapi",
        "integrity",
        "--duration",
        "1",
    ])
    .assert_clean_error("cps does not relay GSSAPI-protected data");
    let json = TempFile::new("gss-cps.json");
    loadgen(&[
        "cps",
        "--proxy",
        &proxy.arg(),
        "--gssapi",
        "clear",
        "--warmup",
        "0",
        "--duration",
        "1",
        "--json",
        json.arg(),
    ])
    .assert_ok();
    let r = json.json();
    assert!(u64_at(&r, "/result/connections") > 0, "{r}");
    assert_eq!(u64_at(&r, "/errors/total"), 0);
}
