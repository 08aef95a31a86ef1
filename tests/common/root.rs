//! Tests that need root: whether to run, or skip with a line saying so
//! (a failure when `CORESOCKS_NETNS_REQUIRED` is set, as in CI, where a
//! skip would hide a missing test). Shared by the proxy's and loadgen's
//! test suites.

pub fn root_or_skip(what: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var_os("CORESOCKS_NETNS_REQUIRED").is_some_and(|v| v != "0") {
        panic!("{what} needs root (and CORESOCKS_NETNS_REQUIRED is set)");
    }
    println!("skipped: {what} needs root");
    false
}
