//! Tests that cannot run here (no root, a tool missing): skip with a line
//! saying so, or fail when `CORESOCKS_NETNS_REQUIRED` is set, as in CI,
//! where a skip would hide a missing test. Shared by the proxy's and
//! loadgen's test suites.

pub fn root_or_skip(what: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    skip(&format!("{what} needs root"));
    false
}

/// Says why a test does not run; a failure where skips are not allowed.
pub fn skip(why: &str) {
    if std::env::var_os("CORESOCKS_NETNS_REQUIRED").is_some_and(|v| v != "0") {
        panic!("{why} (and CORESOCKS_NETNS_REQUIRED is set: CI runs every test)");
    }
    println!("skipped: {why}");
}
