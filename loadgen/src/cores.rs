//! Which CPUs get an executor: `--cores 0`, `--cores 0,1`, `--cores 2-3`
//! (CPU ids, as `taskset -c` writes them), `--cores count:2` (the first two
//! CPUs loadgen may run on) or `--cores all`.
//!
//! A bare number is a CPU id, not a count, so that `--cores 1` means the same
//! CPU as `taskset -c 1`.

use std::str::FromStr;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CoreSpec {
    All,
    Count(usize),
    List(Vec<usize>),
}

impl CoreSpec {
    /// Resolves the spec against the CPUs this process may run on.
    pub fn select(&self, allowed: &[usize]) -> Result<Vec<usize>, String> {
        match self {
            CoreSpec::All => Ok(allowed.to_vec()),
            CoreSpec::Count(n) if *n > allowed.len() => Err(format!(
                "asked for {n} cores but loadgen may run on {} ({})",
                allowed.len(),
                list(allowed)
            )),
            CoreSpec::Count(n) => Ok(allowed[..*n].to_vec()),
            CoreSpec::List(ids) => match ids.iter().find(|id| !allowed.contains(id)) {
                Some(bad) => Err(format!(
                    "CPU {bad} is not one loadgen may run on ({}; see taskset)",
                    list(allowed)
                )),
                None => Ok(ids.clone()),
            },
        }
    }
}

/// The default: the first CPU of the affinity mask, so that
/// `taskset -c 3 loadgen ...` runs on CPU 3 without more flags.
pub fn default_cores(allowed: &[usize]) -> Vec<usize> {
    allowed.iter().take(1).copied().collect()
}

fn list(cpus: &[usize]) -> String {
    let ids: Vec<String> = cpus.iter().map(|c| c.to_string()).collect();
    format!("CPUs {}", ids.join(","))
}

impl FromStr for CoreSpec {
    type Err = String;

    fn from_str(text: &str) -> Result<CoreSpec, String> {
        let text = text.trim();
        if text.eq_ignore_ascii_case("all") {
            return Ok(CoreSpec::All);
        }
        if let Some(count) = text.strip_prefix("count:") {
            return match count.trim().parse::<usize>() {
                Ok(n) if n >= 1 => Ok(CoreSpec::Count(n)),
                _ => Err(format!("{text:?}: count:N needs N >= 1")),
            };
        }
        let mut ids = Vec::new();
        for part in text.split(',') {
            let part = part.trim();
            let bad = || {
                format!("{part:?} in {text:?} is not a CPU id or range (use 0, 0,1, 2-3, count:N or all)")
            };
            match part.split_once('-') {
                Some((a, b)) => {
                    let a: usize = a.trim().parse().map_err(|_| bad())?;
                    let b: usize = b.trim().parse().map_err(|_| bad())?;
                    if a > b || b - a > 4096 {
                        return Err(bad());
                    }
                    ids.extend(a..=b);
                }
                None => ids.push(part.parse().map_err(|_| bad())?),
            }
        }
        ids.sort_unstable();
        ids.dedup();
        Ok(CoreSpec::List(ids))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses() {
        assert_eq!("0".parse(), Ok(CoreSpec::List(vec![0])));
        assert_eq!("1,0".parse(), Ok(CoreSpec::List(vec![0, 1])));
        assert_eq!("2-4".parse(), Ok(CoreSpec::List(vec![2, 3, 4])));
        assert_eq!("count:2".parse(), Ok(CoreSpec::Count(2)));
        assert_eq!("all".parse(), Ok(CoreSpec::All));
        assert!("count:0".parse::<CoreSpec>().is_err());
        assert!("x".parse::<CoreSpec>().is_err());
        assert!("3-1".parse::<CoreSpec>().is_err());
    }

    #[test]
    fn selects() {
        let allowed = [0, 1];
        assert_eq!(CoreSpec::Count(1).select(&allowed), Ok(vec![0]));
        assert!(CoreSpec::Count(3).select(&allowed).is_err());
        assert!(CoreSpec::List(vec![5]).select(&allowed).is_err());
        assert_eq!(CoreSpec::All.select(&allowed), Ok(vec![0, 1]));
        assert_eq!(default_cores(&[3, 4]), vec![3]);
    }
}
