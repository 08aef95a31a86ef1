//! How results are shown and saved: the table on stdout, the JSON document,
//! HdrHistogram files, SVG plots, and the difference of two results.

pub mod diff;
pub mod hdr;
pub mod markdown;
pub mod plot;
pub mod table;

use std::path::Path;

use serde::Serialize;

use crate::cli::OutputArgs;
use crate::error::LoadgenError;
use crate::result::Report;
use crate::stats::Recorder;

/// Makes an output directory (and its parents).
pub fn create_dir(dir: &Path) -> Result<(), LoadgenError> {
    std::fs::create_dir_all(dir).map_err(|e| output_error(dir, e))
}

/// A failed write of an output file, naming it.
pub fn output_error(path: &Path, source: std::io::Error) -> LoadgenError {
    LoadgenError::Output {
        path: path.display().to_string(),
        source,
    }
}

/// Saves one run as `out` asks: JSON, HdrHistogram files, plots. Says on
/// stderr which files it wrote besides the JSON.
pub fn save_run(report: &Report, out: &OutputArgs) -> Result<(), LoadgenError> {
    if let Some(path) = &out.json {
        write_json(&report_json(report), path)?;
    }
    if let Some(dir) = &out.histograms {
        let files = hdr::write(
            dir,
            report.scenario,
            report.started_unix_s,
            &report.latencies,
        )?;
        announce("histograms", &files, report.latencies.is_empty());
    }
    if let Some(dir) = &out.plots {
        let path = PlotPath {
            label: report.path.name.clone(),
            measures: &report.latencies,
            run: report,
        };
        let files = plot_paths(dir, report.scenario, "", &[path])?;
        announce("plots", &files, false);
    }
    Ok(())
}

/// A run's JSON document: the report, plus its headline numbers as
/// `metrics` (what `compare` puts side by side and `diff` compares).
pub fn report_json(report: &Report) -> serde_json::Value {
    let mut doc = serde_json::to_value(report).unwrap_or_default();
    if let Some(obj) = doc.as_object_mut() {
        obj.insert(
            "metrics".into(),
            serde_json::to_value(report.headline_metrics()).unwrap_or_default(),
        );
    }
    doc
}

/// One path of a set of plots: its latency measures (the spectrum) and
/// the run whose series the timeline draws.
pub struct PlotPath<'a> {
    pub label: String,
    pub measures: &'a [(&'static str, Recorder)],
    pub run: &'a Report,
}

/// Writes `<prefix>-percentiles.svg` (every measure of every path, when any
/// has one) and `<prefix>-timeline.svg`, one line per path; `note` ends
/// both titles (what was merged or chosen).
pub fn plot_paths(
    dir: &Path,
    prefix: &str,
    note: &str,
    paths: &[PlotPath],
) -> Result<Vec<std::path::PathBuf>, LoadgenError> {
    create_dir(dir)?;
    let mut files = Vec::new();
    let Some(first) = paths.first() else {
        return Ok(files);
    };
    let scenario = first.run.scenario;
    let many_measures = paths.iter().any(|p| p.measures.len() > 1);
    let spectrum: Vec<plot::SpectrumLine> = paths
        .iter()
        .flat_map(|p| {
            p.measures
                .iter()
                .map(move |(measure, rec)| plot::SpectrumLine {
                    label: if many_measures {
                        format!("{} {measure}", p.label)
                    } else {
                        p.label.clone()
                    },
                    histogram: &rec.total,
                })
        })
        .collect();
    if !spectrum.is_empty() {
        let path = dir.join(format!("{prefix}-percentiles.svg"));
        plot::spectrum(
            &path,
            &format!("{scenario}: latency by percentile{note}"),
            &spectrum,
        )?;
        files.push(path);
    }
    let lines: Vec<plot::TimelineLine> = paths
        .iter()
        .map(|p| plot::TimelineLine {
            label: p.label.clone(),
            points: &p.run.series,
        })
        .collect();
    let path = dir.join(format!("{prefix}-timeline.svg"));
    let measure = first.run.latencies.first().map(|(m, _)| *m);
    let title = format!("{scenario}: over time{note}");
    plot::timeline(&path, &title, first.run.series_unit, measure, &lines)?;
    files.push(path);
    Ok(files)
}

/// One line on stderr: what was written where.
pub fn announce(what: &str, files: &[std::path::PathBuf], nothing_measured: bool) {
    if nothing_measured {
        eprintln!("loadgen: no {what} written: this scenario measures no latency");
        return;
    }
    let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    eprintln!("loadgen: {what}: {}", names.join(", "));
}

pub fn write_json<T: Serialize>(value: &T, path: &Path) -> Result<(), LoadgenError> {
    let err = |source: std::io::Error| LoadgenError::Output {
        path: path.display().to_string(),
        source,
    };
    let mut text = serde_json::to_string_pretty(value).map_err(|e| err(e.into()))?;
    text.push('\n');
    std::fs::write(path, text).map_err(err)
}
