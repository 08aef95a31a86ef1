//! `loadgen diff A.json B.json`: what differs between two results. First
//! the settings (the machine block: kernel, CPUs, the sysctls and NIC
//! settings the tuning kit touches; the scenario's parameters; the path),
//! then every figure both have, with its change and whether that is better.
//! Works on a run's JSON and on a `compare`'s (per path, its medians).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde_json::Value;

use crate::cli::DiffArgs;
use crate::error::LoadgenError;

/// Changes smaller than this (relative) are shown as "same".
const NOISE: f64 = 0.005;

pub fn run(args: &DiffArgs) -> Result<(), LoadgenError> {
    let before = load(&args.before)?;
    let after = load(&args.after)?;
    print!("{}", diff(&before, &after)?);
    Ok(())
}

/// One result file, read.
struct Doc {
    name: String,
    kind: Kind,
    value: Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Run,
    Compare,
}

fn load(path: &Path) -> Result<Doc, LoadgenError> {
    let input = |reason: String| LoadgenError::Input {
        path: path.display().to_string(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| input(e.to_string()))?;
    let value: Value = serde_json::from_str(&text).map_err(|e| input(format!("not JSON: {e}")))?;
    let kind = match value.get("schema").and_then(Value::as_str) {
        Some("loadgen-result-v1") => Kind::Run,
        Some("loadgen-compare-v1") => Kind::Compare,
        other => {
            return Err(input(format!(
                "schema {other:?} is neither a loadgen run (loadgen-result-v1) nor a compare (loadgen-compare-v1)"
            )))
        }
    };
    if value.get("metrics").is_none() {
        return Err(input(
            "it has no \"metrics\" block: it was written by an older loadgen; run it again".into(),
        ));
    }
    Ok(Doc {
        name: path.display().to_string(),
        kind,
        value,
    })
}

/// A figure: its value and which way is better.
type Figures = BTreeMap<String, (f64, bool)>;

fn figures(doc: &Doc) -> Figures {
    let v = &doc.value;
    let mut out = Figures::new();
    match doc.kind {
        Kind::Run => {
            for m in v["metrics"].as_array().into_iter().flatten() {
                if let (Some(name), Some(value)) = (m["name"].as_str(), m["value"].as_f64()) {
                    let higher = m["higher_is_better"].as_bool().unwrap_or(true);
                    out.insert(name.to_owned(), (value, higher));
                }
            }
        }
        Kind::Compare => {
            let higher: BTreeMap<&str, bool> = v["metrics"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|m| Some((m["name"].as_str()?, m["higher_is_better"].as_bool()?)))
                .collect();
            for s in v["summary"].as_array().into_iter().flatten() {
                let path = s["name"].as_str().unwrap_or("?");
                for (metric, value) in s["median"].as_object().into_iter().flatten() {
                    if let Some(value) = value.as_f64() {
                        let better = higher.get(metric.as_str()).copied().unwrap_or(true);
                        out.insert(format!("{path}: {metric}"), (value, better));
                    }
                }
            }
        }
    }
    out
}

/// Every leaf of a JSON value as `a.b.c` = text.
fn flatten(prefix: &str, v: &Value, out: &mut BTreeMap<String, String>) {
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, child, out);
            }
        }
        Value::String(s) => {
            out.insert(prefix.to_owned(), s.clone());
        }
        other => {
            out.insert(prefix.to_owned(), other.to_string());
        }
    }
}

fn settings(doc: &Doc) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    flatten("machine", &doc.value["machine"], &mut out);
    flatten("parameters", &doc.value["parameters"], &mut out);
    let scenario = doc.value["scenario"].as_str().unwrap_or("");
    out.insert("scenario".into(), scenario.into());
    match doc.kind {
        Kind::Run => flatten("path", &doc.value["path"], &mut out),
        Kind::Compare => {
            out.insert("rounds".into(), doc.value["rounds"].to_string());
        }
    }
    out
}

fn diff(a: &Doc, b: &Doc) -> Result<String, LoadgenError> {
    if a.kind != b.kind {
        return Err(LoadgenError::Usage(format!(
            "{} is a {} and {} a {}: diff compares two runs or two compares",
            a.name,
            kind_name(a.kind),
            b.name,
            kind_name(b.kind)
        )));
    }
    let mut out = String::new();
    let _ = writeln!(out, "A: {}\nB: {}", a.name, b.name);
    let (sa, sb) = (settings(a), settings(b));
    let mut changed: Vec<(String, String, String)> = Vec::new();
    for key in sa.keys().chain(sb.keys().filter(|k| !sa.contains_key(*k))) {
        // When each run started and on which host are not settings.
        if key.ends_with("started_unix_s") {
            continue;
        }
        let (x, y) = (sa.get(key), sb.get(key));
        if x != y {
            let show = |v: Option<&String>| v.cloned().unwrap_or_else(|| "(absent)".into());
            changed.push((key.clone(), show(x), show(y)));
        }
    }
    let _ = writeln!(out, "\nsettings that differ:");
    if changed.is_empty() {
        let _ = writeln!(out, "  none (same machine settings and parameters)");
    }
    let width = changed.iter().map(|c| c.0.len()).max().unwrap_or(0);
    for (key, x, y) in &changed {
        let _ = writeln!(out, "  {key:width$}  {x} -> {y}");
    }
    let (fa, fb) = (figures(a), figures(b));
    let rows: Vec<(&String, f64, f64, bool)> = fa
        .iter()
        .filter_map(|(k, &(x, higher))| fb.get(k).map(|&(y, _)| (k, x, y, higher)))
        .collect();
    let _ = writeln!(out, "\nfigures (A -> B, change, for B):");
    let width = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    for (name, x, y, higher) in &rows {
        let change = if *x == 0.0 {
            None
        } else {
            Some((y - x) / x.abs())
        };
        let verdict = match change {
            Some(c) if c.abs() < NOISE => "same",
            None if x == y => "same",
            _ if (y > x) == *higher => "better",
            _ => "worse",
        };
        let pct = change.map_or_else(|| "n/a".to_owned(), |c| format!("{:+.1}%", c * 100.0));
        let _ = writeln!(
            out,
            "  {name:width$}  {:>12} -> {:<12} {pct:>8}  {verdict}",
            number(*x),
            number(*y)
        );
    }
    let only: Vec<&String> = fa
        .keys()
        .filter(|k| !fb.contains_key(*k))
        .chain(fb.keys().filter(|k| !fa.contains_key(*k)))
        .collect();
    if !only.is_empty() {
        let names: Vec<&str> = only.iter().map(|s| s.as_str()).collect();
        let _ = writeln!(out, "  (in only one of them: {})", names.join(", "));
    }
    Ok(out)
}

fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::Run => "run",
        Kind::Compare => "compare",
    }
}

fn number(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn run_doc(somaxconn: &str, gbit: f64, p99: f64) -> Doc {
        Doc {
            name: "x.json".into(),
            kind: Kind::Run,
            value: json!({
                "schema": "loadgen-result-v1",
                "scenario": "throughput",
                "path": {"name": "p"},
                "parameters": {"streams": 1},
                "machine": {"kernel": "6.18", "sysctls": {"net.core.somaxconn": somaxconn}},
                "metrics": [
                    {"name": "Gbit/s", "value": gbit, "higher_is_better": true},
                    {"name": "p99 µs", "value": p99, "higher_is_better": false},
                ],
            }),
        }
    }

    #[test]
    fn shows_changed_settings_and_the_direction_of_each_change() {
        let text = diff(
            &run_doc("4096", 10.0, 100.0),
            &run_doc("65535", 12.0, 150.0),
        )
        .unwrap();
        assert!(
            text.contains("machine.sysctls.net.core.somaxconn  4096 -> 65535"),
            "{text}"
        );
        assert!(!text.contains("machine.kernel"), "{text}");
        let line = |name: &str| {
            text.lines()
                .find(|l| l.trim_start().starts_with(name))
                .unwrap()
                .to_owned()
        };
        assert!(
            line("Gbit/s").contains("+20.0%") && line("Gbit/s").ends_with("better"),
            "{text}"
        );
        assert!(
            line("p99 µs").contains("+50.0%") && line("p99 µs").ends_with("worse"),
            "{text}"
        );
        let same = diff(&run_doc("1", 10.0, 100.0), &run_doc("1", 10.01, 100.0)).unwrap();
        assert!(same.contains("none (same machine settings"), "{same}");
        assert!(
            same.lines()
                .any(|l| l.contains("Gbit/s") && l.ends_with("same")),
            "{same}"
        );
    }

    #[test]
    fn refuses_a_run_against_a_compare() {
        let mut c = run_doc("1", 1.0, 1.0);
        c.kind = Kind::Compare;
        assert!(diff(&run_doc("1", 1.0, 1.0), &c).is_err());
    }
}
