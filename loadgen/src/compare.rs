//! `loadgen compare`: the same scenario against several paths, interleaved
//! (round 1: A B C, round 2: A B C, ...) so that slow drifts of the machine
//! (heat, other load, page cache) spread over every path instead of
//! favouring whichever ran first. Prints medians and ratios as a markdown
//! table.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::cli::{CompareArgs, CompareScenario};
use crate::error::LoadgenError;
use crate::output::{announce, hdr, markdown, plot_paths, write_json, PlotPath};
use crate::result::{Machine, Metric, Report};
use crate::scenario::{self, PathChoice};
use crate::stats::{self, Recorder};

#[derive(Debug, Serialize)]
struct CompareReport {
    schema: &'static str,
    scenario: &'static str,
    rounds: u32,
    /// Path names in the order each round runs them.
    order: Vec<String>,
    /// The scenario's parameters (as in a single run's JSON).
    parameters: serde_json::Value,
    machine: Machine,
    /// The metric the ratio columns of the table use.
    headline: &'static str,
    /// Every metric of the table, and which way is better (for `diff`).
    metrics: Vec<MetricName>,
    /// Every run, in the order it ran.
    runs: Vec<RunRecord>,
    summary: Vec<Summary>,
    markdown: String,
}

#[derive(Debug, Serialize)]
struct MetricName {
    name: &'static str,
    higher_is_better: bool,
}

#[derive(Debug, Serialize)]
struct RunRecord {
    /// 1-based position in the sequence of runs.
    index: usize,
    round: u32,
    name: String,
    metrics: BTreeMap<&'static str, f64>,
    errors: u64,
}

#[derive(Debug, Serialize)]
struct Summary {
    name: String,
    median: BTreeMap<&'static str, f64>,
    /// median / the direct path's median, per metric (absent without --direct).
    ratio_to_direct: Option<BTreeMap<&'static str, f64>>,
    /// median / the first proxy's median, per metric.
    ratio_to_first_proxy: Option<BTreeMap<&'static str, f64>>,
}

fn scenario_name(s: &CompareScenario) -> &'static str {
    match s {
        CompareScenario::Throughput(_) => "throughput",
        CompareScenario::Cps(_) => "cps",
        CompareScenario::Latency(_) => "latency",
        CompareScenario::Udp(_) => "udp",
        CompareScenario::Idle(_) => "idle",
    }
}

pub fn run(args: &CompareArgs) -> Result<(), LoadgenError> {
    if args.proxies.is_empty() && !args.direct {
        return Err(LoadgenError::Usage(
            "compare needs at least one --proxy NAME=HOST:PORT (and usually --direct)".into(),
        ));
    }
    let mut paths = Vec::new();
    if args.direct {
        paths.push(PathChoice::direct());
    }
    for (name, addr) in &args.proxies {
        if name == "direct" || paths.iter().any(|p: &PathChoice| &p.name == name) {
            return Err(LoadgenError::Usage(format!(
                "proxy name {name:?} is used twice (or is \"direct\")"
            )));
        }
        paths.push(PathChoice::proxy(name, addr, &args.auth)?);
    }
    if args.scenario.run_args().proxy_pid.is_some() {
        return Err(LoadgenError::Usage(
            "in compare, give each proxy's process as --proxy-pid NAME=PID before the scenario name"
                .into(),
        ));
    }
    for (name, pid) in &args.proxy_pids {
        match paths
            .iter_mut()
            .find(|p| &p.name == name && p.proxy.is_some())
        {
            Some(p) if p.proxy_pid.is_none() => p.proxy_pid = Some(*pid),
            Some(_) => {
                return Err(LoadgenError::Usage(format!(
                    "--proxy-pid gives {name:?} twice"
                )))
            }
            None => {
                return Err(LoadgenError::Usage(format!(
                    "--proxy-pid {name}={pid}: no --proxy named {name:?}"
                )))
            }
        }
    }
    let first_proxy = paths
        .iter()
        .find(|p| p.proxy.is_some())
        .map(|p| p.name.clone());

    let mut runs: Vec<RunRecord> = Vec::new();
    let mut parameters = serde_json::Value::Null;
    let mut metric_names: Vec<(&'static str, bool)> = Vec::new();
    // Whole reports, only for the histogram and plot outputs.
    let keep = args.out.histograms.is_some() || args.out.plots.is_some();
    let mut kept: Vec<(u32, Report)> = Vec::new();
    let total = args.rounds as usize * paths.len();
    for round in 1..=args.rounds {
        for path in &paths {
            if !runs.is_empty() && !args.gap.is_zero() {
                std::thread::sleep(args.gap);
            }
            eprintln!(
                "run {}/{total} (round {round}/{}): {}",
                runs.len() + 1,
                args.rounds,
                path.name
            );
            let report = scenario::run(&args.scenario, path)?;
            let metrics = report.headline_metrics();
            if runs.is_empty() {
                parameters = report.parameters.clone();
            }
            // Every metric any run had, in the order first seen (the proxy
            // process's only come with --proxy-pid).
            for m in &metrics {
                if !metric_names.iter().any(|(n, _)| *n == m.name) {
                    metric_names.push((m.name, m.higher_is_better));
                }
            }
            eprintln!("  {}", describe_metrics(&metrics));
            runs.push(RunRecord {
                index: runs.len() + 1,
                round,
                name: path.name.clone(),
                metrics: metrics.iter().map(|m| (m.name, m.value)).collect(),
                errors: report.errors.total,
            });
            if keep {
                kept.push((round, report));
            }
        }
    }
    save_distributions(args, &paths, &kept)?;

    let medians: Vec<(String, BTreeMap<&'static str, f64>)> = paths
        .iter()
        .map(|p| {
            let mine: Vec<&RunRecord> = runs.iter().filter(|r| r.name == p.name).collect();
            // A metric no run of this path had is left out (not 0).
            let median = metric_names
                .iter()
                .filter_map(|(m, _)| {
                    let values: Vec<f64> = mine
                        .iter()
                        .filter_map(|r| r.metrics.get(m).copied())
                        .collect();
                    (!values.is_empty()).then(|| (*m, median(values)))
                })
                .collect();
            (p.name.clone(), median)
        })
        .collect();
    let reference = |name: &Option<String>| {
        name.as_ref()
            .and_then(|n| medians.iter().find(|(m, _)| m == n))
            .map(|(_, v)| v.clone())
    };
    let direct_ref = reference(&args.direct.then(|| "direct".to_owned()));
    let proxy_ref = reference(&first_proxy);
    let ratios = |mine: &BTreeMap<&'static str, f64>,
                  base: &Option<BTreeMap<&'static str, f64>>| {
        base.as_ref().map(|b| {
            mine.iter()
                .filter_map(|(k, v)| b.get(k).map(|base| (*k, ratio(*v, *base))))
                .collect::<BTreeMap<_, _>>()
        })
    };
    let summary: Vec<Summary> = medians
        .iter()
        .map(|(name, median)| Summary {
            name: name.clone(),
            ratio_to_direct: ratios(median, &direct_ref),
            ratio_to_first_proxy: ratios(median, &proxy_ref),
            median: median.clone(),
        })
        .collect();

    let headline = metric_names.first().map(|(m, _)| *m).unwrap_or("");
    let report = CompareReport {
        schema: "loadgen-compare-v1",
        scenario: scenario_name(&args.scenario),
        rounds: args.rounds,
        order: paths.iter().map(|p| p.name.clone()).collect(),
        parameters,
        machine: Machine::current(),
        headline,
        metrics: metric_names
            .iter()
            .map(|&(name, higher_is_better)| MetricName {
                name,
                higher_is_better,
            })
            .collect(),
        runs,
        summary,
        markdown: String::new(),
    };
    // The table is drawn from the JSON document itself, as `loadgen table`
    // draws it again later from the saved file.
    let mut doc = serde_json::to_value(&report).unwrap_or_default();
    let markdown = markdown::compare_table(&doc);
    print!("{markdown}");
    if let Some(path) = &args.out.json {
        doc["markdown"] = serde_json::Value::String(markdown);
        write_json(&doc, path)?;
    }
    Ok(())
}

/// `--histograms`: each run's HdrHistogram files (`<path>-round<r>.*`) and
/// each path's distribution over all its rounds (`<path>-<measure>.hgrm`).
/// `--plots`: one spectrum with every path's rounds merged, and one
/// timeline with every path's first round.
fn save_distributions(
    args: &CompareArgs,
    paths: &[PathChoice],
    kept: &[(u32, Report)],
) -> Result<(), LoadgenError> {
    let merged: Vec<(String, Vec<(&'static str, Recorder)>)> = paths
        .iter()
        .map(|p| {
            let mut measures: Vec<(&'static str, Option<Recorder>)> = Vec::new();
            for (_, r) in kept.iter().filter(|(_, r)| r.path.name == p.name) {
                for (name, rec) in &r.latencies {
                    match measures.iter_mut().find(|(n, _)| n == name) {
                        Some((_, into)) => stats::merge_into(into, rec),
                        None => measures.push((name, Some(rec.clone()))),
                    }
                }
            }
            let measures = measures
                .into_iter()
                .filter_map(|(n, r)| r.map(|r| (n, r)))
                .collect();
            (p.name.clone(), measures)
        })
        .collect();
    let nothing = merged.iter().all(|(_, m)| m.is_empty());
    if let Some(dir) = &args.out.histograms {
        let mut files = Vec::new();
        for (round, r) in kept {
            let prefix = format!("{}-round{round}", r.path.name);
            files.extend(hdr::write(dir, &prefix, r.started_unix_s, &r.latencies)?);
        }
        for (name, measures) in &merged {
            files.extend(hdr::write_distributions(dir, name, measures)?);
        }
        announce("histograms", &files, nothing);
    }
    if let Some(dir) = &args.out.plots {
        // Each path's rounds merged for the spectrum, its first round for
        // the timeline.
        let plotted: Vec<PlotPath> = merged
            .iter()
            .filter_map(|(name, measures)| {
                let (_, run) = kept.iter().find(|(_, r)| &r.path.name == name)?;
                Some(PlotPath {
                    label: name.clone(),
                    measures,
                    run,
                })
            })
            .collect();
        let prefix = format!("compare-{}", scenario_name(&args.scenario));
        let note = format!(" ({} rounds merged; timeline: round 1)", args.rounds);
        let files = plot_paths(dir, &prefix, &note, &plotted)?;
        announce("plots", &files, false);
    }
    Ok(())
}

fn describe_metrics(metrics: &[Metric]) -> String {
    metrics
        .iter()
        .map(|m| format!("{} {}", m.name, markdown::format_value(m.value)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

fn ratio(value: f64, base: f64) -> f64 {
    if base == 0.0 {
        0.0
    } else {
        value / base
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(vec![]), 0.0);
        assert_eq!(ratio(5.0, 0.0), 0.0);
        assert_eq!(ratio(5.0, 10.0), 0.5);
    }
}
