//! What a run leaves behind for people to look at: HdrHistogram files that
//! hold the counts that were measured, SVG plots, per-interval percentiles
//! in JSON, the machine block, loadgen's and the system's CPU, progress
//! lines on a non-terminal stderr, `--rate`, and `loadgen diff`.

use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
use hdrhistogram::serialization::Deserializer;
use hdrhistogram::Histogram;

use crate::common::*;

/// A temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let file = TempFile::new(tag);
        let path = file.0.clone();
        drop(file);
        TempDir(path)
    }

    fn arg(&self) -> &str {
        self.0.to_str().expect("temp paths are UTF-8")
    }

    fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// The last TotalCount of a `.hgrm` percentile distribution.
fn hgrm_total(path: &Path) -> u64 {
    let text = read(path);
    assert!(
        text.starts_with(&format!("{:>12} {:>14}", "Value", "Percentile")),
        "{text}"
    );
    let last = text
        .lines()
        .skip(2)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .last()
        .unwrap_or_else(|| panic!("no rows in {}", path.display()));
    let fields: Vec<&str> = last.split_whitespace().collect();
    assert_eq!(fields[1].parse::<f64>().unwrap(), 1.0, "{last}");
    fields[2].parse().unwrap()
}

/// (tag, count) of every interval histogram of a `.hlog`.
fn hlog_counts(path: &Path) -> Vec<(String, u64)> {
    let bytes = std::fs::read(path).unwrap();
    let mut deserializer = Deserializer::new();
    IntervalLogIterator::new(&bytes)
        .filter_map(|e| match e.unwrap() {
            LogEntry::Interval(i) => {
                let raw = BASE64.decode(i.encoded_histogram()).unwrap();
                let h: Histogram<u64> = deserializer.deserialize(&mut &raw[..]).unwrap();
                Some((i.tag().unwrap().as_str().to_owned(), h.len()))
            }
            _ => None,
        })
        .collect()
}

/// An SVG document with at least one drawn line and each label.
fn assert_svg(path: &Path, labels: &[&str]) {
    let text = read(path);
    assert!(
        text.starts_with("<svg") && text.trim_end().ends_with("</svg>"),
        "{}",
        path.display()
    );
    assert!(text.contains("<polyline"), "no line in {}", path.display());
    for label in labels {
        assert!(text.contains(label), "{} lacks {label:?}", path.display());
    }
}

#[test]
fn latency_histograms_plots_and_per_interval_percentiles_hold_the_measured_counts() {
    let _serial = serial();
    let json = TempFile::new("latency.json");
    let hist = TempDir::new("hist");
    let plots = TempDir::new("plots");
    let run = loadgen(&[
        "latency",
        "--direct",
        "--connections",
        "2",
        "--rate",
        "2000",
        "--duration",
        "3",
        "--warmup",
        "0",
        "--json",
        json.arg(),
        "--histograms",
        hist.arg(),
        "--plots",
        plots.arg(),
    ]);
    run.assert_ok();
    let r = json.json();
    let count = u64_at(&r, "/result/latency/count");
    assert_eq!(count, 6000, "{r:#}");

    assert_eq!(hgrm_total(&hist.file("latency-latency.hgrm")), count);
    let intervals = hlog_counts(&hist.file("latency.hlog"));
    assert!(intervals.len() >= 3, "{intervals:?}");
    assert!(intervals.iter().all(|(tag, _)| tag == "latency"));
    assert_eq!(intervals.iter().map(|(_, n)| n).sum::<u64>(), count);

    // The series carries each second's percentiles; their counts add up.
    let series = r["series"].as_array().unwrap();
    let per_interval: u64 = series
        .iter()
        .filter_map(|p| p["percentiles"]["latency"]["count"].as_u64())
        .sum();
    assert_eq!(per_interval, count, "{series:#?}");
    assert!(series.iter().any(|p| p["percentiles"]["latency"]["p99_us"]
        .as_f64()
        .unwrap_or(0.0)
        > 0.0));

    assert_svg(&plots.file("latency-percentiles.svg"), &["direct", "99.9%"]);
    assert_svg(&plots.file("latency-timeline.svg"), &["direct", "p99"]);
    assert!(run.stderr.contains("latency.hlog"), "{}", run.stderr);
}

#[test]
fn the_result_records_the_machine_settings_and_the_cpu_spent_around_the_load() {
    let _serial = serial();
    let json = TempFile::new("cps.json");
    let run = loadgen(&[
        "cps",
        "--direct",
        "--duration",
        "2",
        "--warmup",
        "0",
        "--json",
        json.arg(),
    ]);
    run.assert_ok();
    let r = json.json();
    let somaxconn = std::fs::read_to_string("/proc/sys/net/core/somaxconn").unwrap();
    assert_eq!(
        r["machine"]["sysctls"]["net.core.somaxconn"].as_str(),
        Some(somaxconn.trim()),
        "{:#}",
        r["machine"]
    );
    assert!(r["machine"]["interfaces"].is_object());
    assert!(
        f64_at(&r, "/loadgen_process/cpu_s") > 0.0,
        "{:#}",
        r["loadgen_process"]
    );
    assert!(f64_at(&r, "/system/seconds") > 1.5, "{:#}", r["system"]);
    assert!(r["system"]["softirq_cpu_s_by_cpu"]
        .as_array()
        .is_some_and(|a| !a.is_empty()));
    assert!(r["system"]["tcp_segments_out"]
        .as_u64()
        .is_some_and(|n| n > 0));
    let metrics: Vec<&str> = r["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(metrics[0], "conn/s", "{metrics:?}");
    assert!(metrics.contains(&"loadgen CPU cores"), "{metrics:?}");
    // stderr is a pipe here, not a terminal: one progress line a second.
    let progress = run
        .stderr
        .lines()
        .filter(|l| l.starts_with("loadgen: ["))
        .count();
    assert!(progress >= 2, "{}", run.stderr);
    assert!(!run.stderr.contains('\r'), "{:?}", run.stderr);

    let quiet = loadgen(&[
        "cps",
        "--direct",
        "--duration",
        "1",
        "--warmup",
        "0",
        "--quiet",
    ]);
    quiet.assert_ok();
    assert!(quiet.stderr.is_empty(), "{}", quiet.stderr);
}

#[test]
fn rate_paces_throughput_and_diff_explains_the_difference() {
    let _serial = serial();
    let slow = TempFile::new("slow.json");
    let fast = TempFile::new("fast.json");
    let run = |rate: &str, json: &TempFile| {
        loadgen(&[
            "throughput",
            "--direct",
            "--streams",
            "2",
            "--rate",
            rate,
            "--duration",
            "2",
            "--warmup",
            "0",
            "--json",
            json.arg(),
        ])
        .assert_ok();
        json.json()
    };
    let a = run("200m", &slow);
    let b = run("400m", &fast);
    // Pacing never runs ahead of the rate (a slow machine may only fall
    // behind it): at most one 256 KiB write per stream beyond it.
    for (r, bits) in [(&a, 200e6), (&b, 400e6)] {
        let bytes = u64_at(r, "/result/bytes_up") as f64;
        let ceiling = bits / 8.0 * f64_at(r, "/result/seconds_up") + 2.0 * 256.0 * 1024.0;
        assert!(
            bytes > 0.0 && bytes <= ceiling,
            "{bytes} bytes > {ceiling}\n{:#}",
            r["result"]
        );
        assert_eq!(f64_at(r, "/result/rate_bits_s"), bits);
        assert!(r["result"]["per_stream"][0]["retransmits"]
            .as_u64()
            .is_some());
    }

    let diff = loadgen(&["diff", slow.arg(), fast.arg()]);
    diff.assert_ok();
    let out = &diff.stdout;
    assert!(
        out.lines()
            .any(|l| l.contains("parameters.rate_bits_s")
                && l.contains("200000000.0 -> 400000000.0")),
        "{out}"
    );
    let gbit = out
        .lines()
        .find(|l| l.trim_start().starts_with("Gbit/s "))
        .unwrap_or_else(|| panic!("{out}"));
    // Twice the rate, so about twice the throughput: better.
    assert!(gbit.ends_with("better"), "{gbit}");
    let change: f64 = gbit
        .split_whitespace()
        .find(|w| w.ends_with('%'))
        .unwrap()
        .trim_end_matches('%')
        .parse()
        .unwrap();
    assert!(change > 0.0, "{gbit}");
    assert!(!out.contains("machine.kernel"), "{out}");

    // A file that is not a loadgen result: one clear line.
    let other = TempFile::new("other.json");
    std::fs::write(&other.0, r#"{"schema": "something-else"}"#).unwrap();
    loadgen(&["diff", slow.arg(), other.arg()]).assert_clean_error("neither a loadgen run");
}

#[test]
fn compare_overlays_every_path_and_merges_its_rounds() {
    let _serial = serial();
    let proxy = coresocks(&[]);
    let json = TempFile::new("compare.json");
    let hist = TempDir::new("chist");
    let plots = TempDir::new("cplots");
    let proxy_arg = format!("coresocks={}", proxy.arg());
    loadgen(&[
        "compare",
        "--direct",
        "--proxy",
        &proxy_arg,
        "--rounds",
        "2",
        "--gap",
        "0s",
        "--json",
        json.arg(),
        "--histograms",
        hist.arg(),
        "--plots",
        plots.arg(),
        "udp",
        "--rate",
        "1000",
        "--duration",
        "1",
        "--warmup",
        "0",
        "--quiet",
    ])
    .assert_ok();
    let r = json.json();
    assert!(r["metrics"].as_array().is_some_and(|m| !m.is_empty()));
    // `loadgen table` draws the same table again from the saved file.
    let table = loadgen(&["table", json.arg()]);
    table.assert_ok();
    let saved = r["markdown"].as_str().unwrap();
    assert!(saved.starts_with("| path | pps (median of 2)"), "{saved}");
    assert!(
        table.stdout.contains(saved),
        "{}\n---\n{saved}",
        table.stdout
    );
    // `diff` of a compare against itself: per path and metric, all same.
    let diff = loadgen(&["diff", json.arg(), json.arg()]);
    diff.assert_ok();
    assert!(
        diff.stdout.contains("none (same machine settings"),
        "{}",
        diff.stdout
    );
    for path in ["direct: pps", "coresocks: pps"] {
        let line = diff
            .stdout
            .lines()
            .find(|l| l.trim_start().starts_with(path))
            .unwrap_or_else(|| panic!("no {path} in\n{}", diff.stdout));
        assert!(line.ends_with("same"), "{line}");
    }
    for path in ["direct", "coresocks"] {
        let rounds: Vec<u64> = (1..=2)
            .map(|round| hgrm_total(&hist.file(&format!("{path}-round{round}-latency.hgrm"))))
            .collect();
        assert!(rounds.iter().all(|&n| n > 0), "{rounds:?}");
        assert_eq!(
            hgrm_total(&hist.file(&format!("{path}-latency.hgrm"))),
            rounds.iter().sum::<u64>()
        );
        let log: u64 = hlog_counts(&hist.file(&format!("{path}-round1.hlog")))
            .iter()
            .map(|(_, n)| n)
            .sum();
        assert_eq!(log, rounds[0]);
    }
    assert_svg(
        &plots.file("compare-udp-percentiles.svg"),
        &["direct", "coresocks"],
    );
    assert_svg(
        &plots.file("compare-udp-timeline.svg"),
        &["direct", "coresocks"],
    );
}

/// The saved results behind README's tables stay readable: `loadgen table`
/// draws every one of them (what `benches/tables.sh` runs).
#[test]
fn every_saved_result_behind_the_readme_draws_its_table() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("benches/results");
    let mut files: Vec<PathBuf> = Vec::new();
    let mut dirs = vec![root];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "json")
                // Independent probes (curl, iperf3) save their own shape.
                && !path.to_string_lossy().ends_with("-independent.json")
            {
                files.push(path);
            }
        }
    }
    assert!(files.len() >= 5, "{files:?}");
    for file in files {
        let run = loadgen(&["table", file.to_str().unwrap()]);
        run.assert_ok();
        assert!(
            run.stdout.contains("|---|"),
            "{}: {}",
            file.display(),
            run.stdout
        );
    }
}
