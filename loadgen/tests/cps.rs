//! Connection rate: loadgen's counts match the target's.

use crate::common::*;

/// `loadgen cps ARGS` for one second with no warmup, its JSON in `json`.
fn cps_for_a_second(json: &TempFile, args: &[&str]) {
    let mut all = vec![
        "cps",
        "--duration",
        "1",
        "--warmup",
        "0",
        "--json",
        json.arg(),
    ];
    all.extend_from_slice(args);
    loadgen(&all).assert_ok();
}

/// On loadgen's own event ring (the default) and on glommio's sockets
/// (`--glommio-io`), client and target alike.
#[test]
fn direct_connections_match_the_targets_accepts() {
    let _serial = serial();
    for (io, flags) in [("event-ring", &[][..]), ("glommio", &["--glommio-io"][..])] {
        let counters = TempFile::new("serve.json");
        let target = serve(&counters, flags);
        let json = TempFile::new("cps.json");
        let target_arg = target.arg();
        let mut args = vec!["--direct", "--concurrency", "2", "--target", &target_arg];
        args.extend_from_slice(flags);
        cps_for_a_second(&json, &args);
        target.stop();
        let r = json.json();
        let served = counters.json();
        assert_eq!(
            r.pointer("/parameters/io").and_then(|v| v.as_str()),
            Some(io)
        );
        let ok = u64_at(&r, "/result/connections_ok_total");
        assert!(ok > 0, "{io}");
        assert_eq!(u64_at(&r, "/errors/total"), 0, "{io}");
        assert_eq!(u64_at(&r, "/result/attempts_total"), ok, "{io}");
        assert_eq!(ok, u64_at(&served, "/counters/echo_connections"), "{io}");
        // Plus the one check made before the load.
        assert_eq!(u64_at(&served, "/counters/hello_connections"), 1, "{io}");
        assert_eq!(u64_at(&served, "/counters/accepted"), ok + 1, "{io}");
        // With no warmup, the window holds them all.
        assert_eq!(u64_at(&r, "/result/connections"), ok, "{io}");
    }
}

/// Both ways of closing (`--close`): with a FIN, every echo connection
/// the proxy opened ends with a FIN too (coresocks passes the client's
/// end of stream on); with a RST, none does (coresocks passes the reset
/// on).
#[test]
fn through_coresocks_connections_match_the_targets_accepts() {
    let _serial = serial();
    let proxy = coresocks(&[]);
    for close in ["fin", "rst"] {
        let json = TempFile::new("cps.json");
        cps_for_a_second(&json, &["--proxy", &proxy.arg(), "--close", close]);
        let r = json.json();
        let ok = u64_at(&r, "/result/connections_ok_total");
        assert!(ok > 0, "{close}");
        assert_eq!(u64_at(&r, "/errors/total"), 0, "{close}");
        assert_eq!(ok, u64_at(&r, "/target/echo_connections"), "{close}");
        assert_eq!(u64_at(&r, "/result/handshake/count"), ok, "{close}");
        assert_eq!(u64_at(&r, "/result/first_byte/count"), ok, "{close}");
        assert!(
            f64_at(&r, "/result/first_byte/p50_us") >= f64_at(&r, "/result/handshake/min_us"),
            "{close}"
        );
        assert_eq!(r["result"]["close"], close);
        let fins = u64_at(&r, "/target/echo_ended_with_fin");
        match close {
            // The last few FINs (one per loop: 4) may still be on their
            // way through the proxy when the target stops counting.
            "fin" => assert!(
                fins <= ok && fins + 4 >= ok,
                "every FIN passed on: {fins} of {ok}"
            ),
            _ => assert_eq!(fins, 0, "every reset passed on"),
        }
    }
}
