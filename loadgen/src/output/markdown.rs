//! Markdown tables drawn from saved result files: `compare` prints its own
//! with this, and `loadgen table` draws them again from the JSON, so the
//! tables in a README can be remade from the files behind them
//! (`benches/tables.sh`).

use std::fmt::Write as _;
use std::path::PathBuf;

use serde_json::Value;

use crate::error::LoadgenError;

/// Numbers as the tables show them: whole above 100, two decimals below.
pub fn format_value(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// `loadgen table FILE...`: each compare's table, each run's headline
/// numbers, under a heading naming the file.
pub fn run(files: &[PathBuf]) -> Result<(), LoadgenError> {
    for (i, path) in files.iter().enumerate() {
        let input = |reason: String| LoadgenError::Input {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| input(e.to_string()))?;
        let doc: Value =
            serde_json::from_str(&text).map_err(|e| input(format!("not JSON: {e}")))?;
        let table = match doc["schema"].as_str() {
            Some("loadgen-compare-v1") => compare_table(&doc),
            Some("loadgen-result-v1") => run_table(&doc),
            other => return Err(input(format!("schema {other:?} is not a loadgen result"))),
        };
        if i > 0 {
            println!();
        }
        println!("{}: {}\n", path.display(), describe(&doc));
        print!("{table}");
    }
    Ok(())
}

/// What the file measured, in a few words.
fn describe(doc: &Value) -> String {
    let scenario = doc["scenario"].as_str().unwrap_or("?");
    let mut params: Vec<String> = doc["parameters"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, v)| !v.is_null() && !k.ends_with("cores") && !k.ends_with("_s"))
        .map(|(k, v)| format!("{k}={}", v.to_string().trim_matches('"')))
        .collect();
    params.sort();
    match doc["rounds"].as_u64() {
        Some(r) => format!("{scenario} {}, {r} rounds, medians", params.join(" ")),
        None => format!("{scenario} {}", params.join(" ")),
    }
}

/// One run: its metrics as a two-column table.
fn run_table(doc: &Value) -> String {
    let mut out = String::from("| metric | value |\n|---|---:|\n");
    for m in doc["metrics"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "| {} | {} |",
            m["name"].as_str().unwrap_or("?"),
            format_value(m["value"].as_f64().unwrap_or(0.0))
        );
    }
    out
}

/// A compare: a row per path with each metric's median, then the
/// headline's ratio to direct and to the first proxy.
pub fn compare_table(doc: &Value) -> String {
    let metrics: Vec<(&str, bool)> = doc["metrics"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| Some((m["name"].as_str()?, m["higher_is_better"].as_bool()?)))
        .collect();
    let headline = doc["headline"].as_str().unwrap_or("");
    let rounds = doc["rounds"].as_u64().unwrap_or(0);
    let order: Vec<&str> = doc["order"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let direct = order.contains(&"direct");
    let first_proxy = order.iter().find(|n| **n != "direct");
    let mut header = vec!["path".to_owned()];
    header.extend(
        metrics
            .iter()
            .map(|(m, _)| format!("{m} (median of {rounds})")),
    );
    if direct {
        header.push(format!("{headline} x direct"));
    }
    if let Some(p) = first_proxy {
        header.push(format!("{headline} x {p}"));
    }
    let mut out = String::new();
    let _ = writeln!(out, "| {} |", header.join(" | "));
    let _ = writeln!(
        out,
        "|{}",
        (0..header.len())
            .map(|i| if i == 0 { "---|" } else { "---:|" })
            .collect::<String>()
    );
    for s in doc["summary"].as_array().into_iter().flatten() {
        let mut cells = vec![s["name"].as_str().unwrap_or("?").to_owned()];
        cells.extend(metrics.iter().map(|(m, _)| {
            s["median"][m]
                .as_f64()
                .map_or_else(|| "-".to_owned(), format_value)
        }));
        for (key, present) in [
            ("ratio_to_direct", direct),
            ("ratio_to_first_proxy", first_proxy.is_some()),
        ] {
            if present {
                let r = s[key][headline].as_f64().unwrap_or(0.0);
                cells.push(format!("{r:.2}"));
            }
        }
        let _ = writeln!(out, "| {} |", cells.join(" | "));
    }
    let better: Vec<String> = metrics
        .iter()
        .map(|(m, higher)| {
            let way = if *higher {
                "higher is better"
            } else {
                "lower is better"
            };
            format!("{m}: {way}")
        })
        .collect();
    let _ = writeln!(
        out,
        "\nRatios are the median of {headline} divided by the reference's median. {}.",
        better.join("; ")
    );
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_compare_table_from_its_json() {
        let doc = json!({
            "schema": "loadgen-compare-v1",
            "rounds": 3,
            "order": ["direct", "cs"],
            "headline": "conn/s",
            "metrics": [
                {"name": "conn/s", "higher_is_better": true},
                {"name": "proxy CPU s", "higher_is_better": false},
            ],
            "summary": [
                {"name": "direct", "median": {"conn/s": 10000.0},
                 "ratio_to_direct": {"conn/s": 1.0}, "ratio_to_first_proxy": {"conn/s": 2.0}},
                {"name": "cs", "median": {"conn/s": 5000.0, "proxy CPU s": 1.234},
                 "ratio_to_direct": {"conn/s": 0.5}, "ratio_to_first_proxy": {"conn/s": 1.0}},
            ],
        });
        let t = compare_table(&doc);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0],
            "| path | conn/s (median of 3) | proxy CPU s (median of 3) | conn/s x direct | conn/s x cs |"
        );
        assert_eq!(lines[1], "|---|---:|---:|---:|---:|");
        assert_eq!(lines[2], "| direct | 10000 | - | 1.00 | 2.00 |");
        assert_eq!(lines[3], "| cs | 5000 | 1.23 | 0.50 | 1.00 |");
        assert!(t.contains("proxy CPU s: lower is better"));
    }
}
