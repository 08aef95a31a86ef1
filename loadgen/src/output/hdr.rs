//! HdrHistogram files, in the formats the usual HdrHistogram tools read:
//!
//! - an interval log (`.hlog`): one compressed histogram per measure per
//!   second of the run, tagged with the measure's name (HistogramLogAnalyzer,
//!   HdrHistogramVisualizer, `HistogramLogProcessor -tag NAME`);
//! - a percentile distribution (`.hgrm`) of the whole run per measure, the
//!   text `outputPercentileDistribution` prints, which the HdrHistogram
//!   plotter (hdrhistogram.github.io/HdrHistogram/plotFiles.html) reads.
//!
//! loadgen records nanoseconds; the `.hgrm` values are in milliseconds (the
//! plotter's unit), and the log's max-value divisor says the same.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};
use hdrhistogram::serialization::V2DeflateSerializer;
use hdrhistogram::Histogram;

use super::{create_dir, output_error};
use crate::error::LoadgenError;
use crate::stats::{Recorder, INTERVAL};

/// Nanoseconds per millisecond: the unit of the outputs.
const NS_PER_MS: f64 = 1e6;
/// Steps per halving of the distance to 100%, as the Java tools print.
const TICKS_PER_HALF_DISTANCE: u32 = 5;

/// Writes `<prefix>.hlog` with every measure's intervals and
/// `<prefix>-<measure>.hgrm` for each; returns the files written.
pub fn write(
    dir: &Path,
    prefix: &str,
    started_unix_s: f64,
    measures: &[(&'static str, Recorder)],
) -> Result<Vec<PathBuf>, LoadgenError> {
    if measures.is_empty() {
        return Ok(Vec::new());
    }
    create_dir(dir)?;
    let mut written = Vec::new();
    let log_path = dir.join(format!("{prefix}.hlog"));
    let log = interval_log(started_unix_s, measures)
        .map_err(|e| output_error(&log_path, std::io::Error::other(e)))?;
    std::fs::write(&log_path, log).map_err(|e| output_error(&log_path, e))?;
    written.push(log_path);
    written.extend(write_distributions(dir, prefix, measures)?);
    Ok(written)
}

/// `<prefix>-<measure>.hgrm` for each measure: its whole distribution.
pub fn write_distributions(
    dir: &Path,
    prefix: &str,
    measures: &[(&'static str, Recorder)],
) -> Result<Vec<PathBuf>, LoadgenError> {
    measures
        .iter()
        .map(|(name, recorder)| {
            let path = dir.join(format!("{prefix}-{name}.hgrm"));
            std::fs::write(&path, percentile_distribution(&recorder.total))
                .map_err(|e| output_error(&path, e))?;
            Ok(path)
        })
        .collect()
}

/// The interval log: each measure's per-second histograms, timestamps
/// relative to the run's start (the log's StartTime and BaseTime).
fn interval_log(
    started_unix_s: f64,
    measures: &[(&'static str, Recorder)],
) -> Result<Vec<u8>, String> {
    let started = UNIX_EPOCH + Duration::from_secs_f64(started_unix_s.max(0.0));
    let mut out = Vec::new();
    let mut serializer = V2DeflateSerializer::new();
    let mut builder = IntervalLogWriterBuilder::new();
    builder
        .add_comment("loadgen latency log: values in nanoseconds, one interval per second")
        .with_start_time(started)
        .with_base_time(started)
        .with_max_value_divisor(NS_PER_MS);
    let mut writer = builder
        .begin_log_with(&mut out, &mut serializer)
        .map_err(|e| e.to_string())?;
    // Interval by interval, every measure of one second together, as a
    // log written live would be.
    let longest = measures
        .iter()
        .map(|(_, r)| r.intervals.len())
        .max()
        .unwrap_or(0);
    for k in 0..longest {
        for (name, recorder) in measures {
            let Some(h) = recorder.intervals.get(k).filter(|h| !h.is_empty()) else {
                continue;
            };
            writer
                .write_histogram(h, INTERVAL * k as u32, INTERVAL, Tag::new(name))
                .map_err(|e| e.to_string())?;
        }
    }
    Ok(out)
}

/// `outputPercentileDistribution` of the Java HdrHistogram, in
/// milliseconds.
pub fn percentile_distribution(h: &Histogram<u64>) -> String {
    let ms = |ns: f64| ns / NS_PER_MS;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    let mut total = 0u64;
    if !h.is_empty() {
        for v in h.iter_quantiles(TICKS_PER_HALF_DISTANCE) {
            total += v.count_since_last_iteration();
            let q = v.quantile_iterated_to();
            let value = ms(h.highest_equivalent(v.value_iterated_to()) as f64);
            if q < 1.0 {
                let _ = writeln!(
                    out,
                    "{value:12.6} {q:2.12} {total:10} {:14.2}",
                    1.0 / (1.0 - q)
                );
            } else {
                let _ = writeln!(out, "{value:12.6} {q:2.12} {total:10}");
            }
        }
    }
    let (mean, stdev, max) = if h.is_empty() {
        (0.0, 0.0, 0.0)
    } else {
        (ms(h.mean()), ms(h.stdev()), ms(h.max() as f64))
    };
    let _ = writeln!(
        out,
        "#[Mean    = {mean:12.6}, StdDeviation   = {stdev:12.6}]"
    );
    let _ = writeln!(
        out,
        "#[Max     = {max:12.6}, Total count    = {:12}]",
        h.len()
    );
    let _ = writeln!(
        out,
        "#[Buckets = {:12}, SubBuckets     = {:12}]",
        h.buckets(),
        h.distinct_values()
    );
    out
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use base64::engine::general_purpose::STANDARD as BASE64;
    use base64::Engine as _;
    use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
    use hdrhistogram::serialization::Deserializer;

    use super::*;

    fn recorder() -> Recorder {
        let start = Instant::now();
        let mut r = Recorder::new(start);
        for i in 0..1000u64 {
            let at = start + Duration::from_millis(i * 3);
            r.record(at, Duration::from_micros(10 + i));
        }
        r
    }

    #[test]
    fn interval_log_holds_every_count_under_its_tag() {
        let r = recorder();
        let log = interval_log(1_700_000_000.0, &[("latency", r.clone())]).unwrap();
        let mut counts = Vec::new();
        let mut deserializer = Deserializer::new();
        for entry in IntervalLogIterator::new(&log) {
            if let LogEntry::Interval(i) = entry.unwrap() {
                assert_eq!(i.tag().map(|t| t.as_str()), Some("latency"));
                assert_eq!(i.duration(), INTERVAL);
                let bytes = BASE64.decode(i.encoded_histogram()).unwrap();
                let h: Histogram<u64> = deserializer.deserialize(&mut &bytes[..]).unwrap();
                counts.push(h.len());
            }
        }
        let expected: Vec<u64> = r.intervals.iter().map(|h| h.len()).collect();
        assert_eq!(counts, expected);
        assert_eq!(counts.iter().sum::<u64>(), 1000);
    }

    #[test]
    fn percentile_distribution_ends_at_the_total_count() {
        let r = recorder();
        let text = percentile_distribution(&r.total);
        let rows: Vec<Vec<&str>> = text
            .lines()
            .skip(2)
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| l.split_whitespace().collect())
            .collect();
        let last = rows.last().unwrap();
        assert_eq!(last[2], "1000");
        assert_eq!(last[1].parse::<f64>().unwrap(), 1.0);
        // p50 of 10..1009 µs, in ms.
        let p50 = rows
            .iter()
            .find(|r| r[1].parse::<f64>().unwrap() >= 0.5)
            .unwrap();
        assert!(
            (p50[0].parse::<f64>().unwrap() - 0.510).abs() < 0.002,
            "{p50:?}"
        );
        assert!(text.contains("Total count    =         1000"));
    }
}
