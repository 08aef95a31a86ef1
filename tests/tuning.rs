//! The tuning kit's apply/revert (`tuning/apply.sh`), driven by its own
//! test script: a scratch profile of per-namespace sysctls and a veth in a
//! network namespace the script creates, dry run, apply, refusals, and a
//! revert that restores every value byte for byte, with the host's values
//! checked after every step. Needs root (skipped without it, a failure
//! when `CORESOCKS_NETNS_REQUIRED` is set, as in CI).

use std::path::Path;
use std::process::Command;

use crate::common::root::root_or_skip;

#[test]
fn apply_then_revert_restores_exactly_what_it_changed() {
    if !root_or_skip("the tuning kit's apply/revert test") {
        return;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tuning/tests/apply-revert.sh");
    let out = Command::new("bash")
        .arg(&script)
        .output()
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{}\n{stdout}\n{stderr}",
        script.display()
    );
    let summary = stdout
        .lines()
        .rev()
        .find(|l| l.contains("passed"))
        .unwrap_or_else(|| panic!("no summary line:\n{stdout}"));
    assert!(summary.contains(" 0 failed"), "{summary}\n{stdout}");
}
