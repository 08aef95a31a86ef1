//! The network-namespace labs that run the real proxy and loadgen together,
//! driven by their own test scripts (root, iproute2, nftables, python3;
//! skipped without root, a failure when `CORESOCKS_NETNS_REQUIRED` is set,
//! as in CI). Each script builds its namespaces, checks what it measured,
//! and checks that nothing is left behind, also after injected failures.

use std::path::{Path, PathBuf};
use std::process::Command;

#[path = "../../tests/common/root.rs"]
mod root;

use root::root_or_skip;

use crate::common::*;

/// Runs a lab's test script with this build's binaries; returns stdout.
fn run_script(script: &str, env: &[(&str, PathBuf)]) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let path = root.join(script);
    let out = Command::new("bash")
        .arg(&path)
        .envs(env.iter().map(|(k, v)| (*k, v.as_os_str())))
        .output()
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{script} failed\n{stdout}\n{stderr}");
    stdout
}

/// Two coresocks behind an L4 balancer (nftables here; this kernel has no
/// IPVS): a connection loop through the virtual address while each
/// instance is drained and upgraded in turn must see zero failures.
#[test]
fn scale_out_behind_a_balancer_drains_and_upgrades_without_a_failure() {
    if !root_or_skip("the scale-out lab") {
        return;
    }
    let _serial = serial();
    let bin_dir = coresocks_bin().parent().unwrap().to_path_buf();
    let out = run_script("deploy/l4/test.sh", &[("CS_LB_BIN", bin_dir)]);
    assert!(out.contains(" checks, 0 failed"), "{out}");
}

/// The bench lab of the tuning kit (`tuning/netns-bench.sh`): client,
/// proxy and target namespaces over multi-queue veths, tbf, the userspace
/// delay/loss forwarder; loadgen through the proxy with one command; and
/// idempotent setup and a teardown that leaves nothing, also after a
/// failure injected during setup.
#[test]
fn the_bench_lab_sets_up_measures_through_the_proxy_and_cleans_up() {
    if !root_or_skip("the bench lab") {
        return;
    }
    let _serial = serial();
    let out = run_script(
        "tuning/tests/lab.sh",
        &[
            ("CORESOCKS_BIN", coresocks_bin()),
            ("LOADGEN_BIN", loadgen_bin()),
        ],
    );
    assert!(out.contains("checks passed"), "{out}");
}
