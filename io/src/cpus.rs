use std::fmt;
use std::str::FromStr;

use serde::Deserialize;

/// Which CPUs get an executor.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum CoreSpec {
    /// Every CPU in the process's affinity mask.
    #[default]
    All,
    /// The first N CPUs of the affinity mask.
    Count(usize),
    /// These CPU ids.
    List(Vec<usize>),
}

impl CoreSpec {
    /// Resolves the spec against the CPUs this process may run on.
    pub fn select(&self, allowed: &[usize]) -> Result<Vec<usize>, String> {
        match self {
            CoreSpec::All => Ok(allowed.to_vec()),
            CoreSpec::Count(n) if *n == 0 => Err("a core count must be at least 1".into()),
            CoreSpec::Count(n) if *n > allowed.len() => Err(format!(
                "asked for {n} cores but this process may run on {} ({:?})",
                allowed.len(),
                allowed
            )),
            CoreSpec::Count(n) => Ok(allowed[..*n].to_vec()),
            CoreSpec::List(ids) => {
                if let Some(bad) = ids.iter().find(|id| !allowed.contains(id)) {
                    return Err(format!(
                        "CPU {bad} is not in this process's affinity mask {allowed:?}"
                    ));
                }
                Ok(ids.clone())
            }
        }
    }
}

impl FromStr for CoreSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<CoreSpec, String> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("all") {
            return Ok(CoreSpec::All);
        }
        let s = s.strip_prefix("count:").unwrap_or(s);
        if !s.contains([',', '-']) {
            return s
                .parse()
                .map(CoreSpec::Count)
                .map_err(|_| format!("{s:?} is not \"all\", a count or a CPU list like 0,2-3"));
        }
        let mut ids = Vec::new();
        for part in s.split(',') {
            let part = part.trim();
            let bad = || format!("{part:?} in {s:?} is not a CPU id or range like 2-3");
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

impl TryFrom<String> for CoreSpec {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl fmt::Display for CoreSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CoreSpec::All => f.write_str("all"),
            CoreSpec::Count(n) => write!(f, "{n}"),
            CoreSpec::List(ids) => write!(f, "{ids:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_all_count_and_lists() {
        let cases: &[(&str, CoreSpec)] = &[
            ("all", CoreSpec::All),
            ("2", CoreSpec::Count(2)),
            ("0,2-3", CoreSpec::List(vec![0, 2, 3])),
            ("3-3,1", CoreSpec::List(vec![1, 3])),
            ("3-3", CoreSpec::List(vec![3])),
            ("count:4", CoreSpec::Count(4)),
        ];
        for (text, want) in cases {
            assert_eq!(&text.parse::<CoreSpec>().unwrap(), want, "{text}");
        }
    }

    #[test]
    fn rejects_malformed_specs() {
        for text in ["", "x", "3-1", "1,,2", "-1", "0-99999"] {
            assert!(text.parse::<CoreSpec>().is_err(), "{text}");
        }
    }

    #[test]
    fn selects_against_affinity_mask() {
        let allowed = [0, 1, 4];
        assert_eq!(CoreSpec::All.select(&allowed).unwrap(), vec![0, 1, 4]);
        assert_eq!(CoreSpec::Count(2).select(&allowed).unwrap(), vec![0, 1]);
        assert!(CoreSpec::Count(4).select(&allowed).is_err());
        assert!(CoreSpec::Count(0).select(&allowed).is_err());
        assert!(CoreSpec::List(vec![2]).select(&allowed).is_err());
    }
}
