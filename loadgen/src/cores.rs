//! Which CPUs get an executor: the same `--cores` syntax as coresocks
//! (`coresocks_io::cpus::CoreSpec`), with a different default.

pub use coresocks_io::cpus::CoreSpec;

/// The default: the first CPU of the affinity mask, so that
/// `taskset -c 3 loadgen ...` runs on CPU 3 without more flags.
pub fn default_cores(allowed: &[usize]) -> Vec<usize> {
    allowed.iter().take(1).copied().collect()
}
