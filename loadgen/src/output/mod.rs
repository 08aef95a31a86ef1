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
        let files = plot_run(dir, report.scenario, &[(report.path.name.clone(), report)])?;
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

/// Writes `<prefix>-latency.svg` (every measure of every report, when any
/// has one) and `<prefix>-timeline.svg`, one line per labelled report.
pub fn plot_run(
    dir: &Path,
    prefix: &str,
    reports: &[(String, &Report)],
) -> Result<Vec<std::path::PathBuf>, LoadgenError> {
    hdr::create_dir(dir)?;
    let mut files = Vec::new();
    let Some((_, first)) = reports.first() else {
        return Ok(files);
    };
    let many_measures = first.latencies.len() > 1;
    let spectrum: Vec<plot::SpectrumLine> = reports
        .iter()
        .flat_map(|(label, r)| {
            r.latencies
                .iter()
                .map(move |(measure, rec)| plot::SpectrumLine {
                    label: if many_measures {
                        format!("{label} {measure}")
                    } else {
                        label.clone()
                    },
                    histogram: &rec.total,
                })
        })
        .collect();
    if !spectrum.is_empty() {
        let path = dir.join(format!("{prefix}-percentiles.svg"));
        plot::spectrum(
            &path,
            &format!("{prefix}: latency by percentile"),
            &spectrum,
        )?;
        files.push(path);
    }
    let lines: Vec<plot::TimelineLine> = reports
        .iter()
        .map(|(label, r)| plot::TimelineLine {
            label: label.clone(),
            points: &r.series,
        })
        .collect();
    let path = dir.join(format!("{prefix}-timeline.svg"));
    let measure = first.latencies.first().map(|(m, _)| *m);
    plot::timeline(
        &path,
        &format!("{prefix}: over time"),
        first.series_unit,
        measure,
        &lines,
    )?;
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
