//! Latency histograms (hdrhistogram, one per core, merged at the end; each
//! also kept per second of the run), the per-core live counters and the
//! per-second series.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

/// Highest latency a histogram holds: anything longer is clamped to it.
const MAX_NS: u64 = 60_000_000_000;

/// A latency histogram in nanoseconds, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    // Constant, valid bounds: this only fails on a bug, never on input.
    Histogram::new_with_bounds(1, MAX_NS, 3).expect("constant histogram bounds are valid")
}

pub fn record(hist: &mut Histogram<u64>, d: Duration) {
    hist.saturating_record((d.as_nanos() as u64).clamp(1, MAX_NS));
}

pub fn merge(into: &mut Histogram<u64>, from: &Histogram<u64>) {
    // Same bounds everywhere, so add() cannot fail; clamping keeps it so.
    if into.add(from).is_err() {
        for v in from.iter_recorded() {
            into.saturating_record_n(v.value_iterated_to().min(MAX_NS), v.count_at_value());
        }
    }
}

/// Length of one interval of a [`Recorder`]: the series' sampling period.
pub const INTERVAL: Duration = Duration::from_secs(1);

/// One latency measure of a run: the histogram of the whole run and one per
/// second since the load started (interval k holds what completed in
/// [k s, k+1 s)), for the per-interval percentiles and the HdrHistogram
/// interval log.
#[derive(Debug, Clone)]
pub struct Recorder {
    pub total: Histogram<u64>,
    pub intervals: Vec<Histogram<u64>>,
    start: Instant,
}

impl Recorder {
    /// `start`: when the load started (the series' zero).
    pub fn new(start: Instant) -> Recorder {
        Recorder {
            total: new_histogram(),
            intervals: Vec::new(),
            start,
        }
    }

    /// Records a latency of `d` for an event that completed at `at`.
    pub fn record(&mut self, at: Instant, d: Duration) {
        record(&mut self.total, d);
        let k =
            (at.saturating_duration_since(self.start).as_nanos() / INTERVAL.as_nanos()) as usize;
        while self.intervals.len() <= k {
            self.intervals.push(new_histogram());
        }
        record(&mut self.intervals[k], d);
    }

    /// Adds another core's recorder of the same measure.
    pub fn merge(&mut self, other: &Recorder) {
        merge(&mut self.total, &other.total);
        while self.intervals.len() < other.intervals.len() {
            self.intervals.push(new_histogram());
        }
        for (into, from) in self.intervals.iter_mut().zip(&other.intervals) {
            merge(into, from);
        }
    }
}

/// Merges a core's recorder into the run's (the first one is taken as is).
pub fn merge_into(run: &mut Option<Recorder>, core: &Recorder) {
    match run {
        Some(r) => r.merge(core),
        None => *run = Some(core.clone()),
    }
}

/// The whole run's percentiles of a merged recorder (zeros when no core
/// recorded anything).
pub fn percentiles(run: &Option<Recorder>) -> Percentiles {
    run.as_ref()
        .map_or_else(Percentiles::default, |r| Percentiles::of(&r.total))
}

/// Percentiles of a histogram, in microseconds.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct Percentiles {
    pub count: u64,
    pub min_us: f64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p99_9_us: f64,
    pub p99_99_us: f64,
    pub max_us: f64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        let us = |ns: u64| ns as f64 / 1e3;
        Percentiles {
            count: h.len(),
            min_us: us(h.min()),
            mean_us: h.mean() / 1e3,
            p50_us: us(h.value_at_quantile(0.50)),
            p90_us: us(h.value_at_quantile(0.90)),
            p99_us: us(h.value_at_quantile(0.99)),
            p99_9_us: us(h.value_at_quantile(0.999)),
            p99_99_us: us(h.value_at_quantile(0.9999)),
            max_us: us(h.max()),
        }
    }
}

/// Counters one core publishes for the live line and the series. Only the
/// owning core writes (plain load + store, no locked instruction); the main
/// thread reads once a second. Padded so cores never share a cache line.
#[repr(align(128))]
#[derive(Default)]
pub struct LiveCounters {
    /// Throughput: bytes acknowledged by the target (up); cps: connections
    /// completed; latency: responses received.
    pub primary: AtomicU64,
    /// Throughput: bytes received from the target (down).
    pub secondary: AtomicU64,
    pub errors: AtomicU64,
}

impl LiveCounters {
    fn bump(counter: &AtomicU64, n: u64) {
        counter.store(counter.load(Ordering::Relaxed) + n, Ordering::Relaxed);
    }

    pub fn add_primary(&self, n: u64) {
        Self::bump(&self.primary, n);
    }

    pub fn add_secondary(&self, n: u64) {
        Self::bump(&self.secondary, n);
    }

    pub fn add_errors(&self, n: u64) {
        Self::bump(&self.errors, n);
    }

    pub fn snapshot(&self) -> [u64; 3] {
        [
            self.primary.load(Ordering::Relaxed),
            self.secondary.load(Ordering::Relaxed),
            self.errors.load(Ordering::Relaxed),
        ]
    }
}

/// One interval of the per-second series (raw counts; the report turns them
/// into the scenario's unit).
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// End of the interval, seconds since the load started.
    pub t_s: f64,
    pub dt_s: f64,
    /// Some of the interval lies in the warmup.
    pub warmup: bool,
    pub primary: u64,
    pub secondary: u64,
    pub errors: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_known_values() {
        let mut h = new_histogram();
        for us in 1..=1000u64 {
            record(&mut h, Duration::from_micros(us));
        }
        let p = Percentiles::of(&h);
        assert_eq!(p.count, 1000);
        assert!((p.p50_us - 500.0).abs() < 1.0, "{p:?}");
        assert!((p.p99_us - 990.0).abs() < 1.0, "{p:?}");
        assert!((p.max_us - 1000.0).abs() < 1.0, "{p:?}");
        let mut other = new_histogram();
        record(&mut other, Duration::from_secs(120));
        merge(&mut h, &other);
        assert_eq!(h.len(), 1001);
        assert!(Percentiles::of(&h).max_us >= 59e6);
    }

    #[test]
    fn recorder_keeps_each_second_apart() {
        let start = Instant::now();
        let mut a = Recorder::new(start);
        a.record(
            start + Duration::from_millis(100),
            Duration::from_micros(10),
        );
        a.record(
            start + Duration::from_millis(2_500),
            Duration::from_micros(30),
        );
        let mut b = Recorder::new(start);
        b.record(
            start + Duration::from_millis(2_900),
            Duration::from_micros(50),
        );
        b.record(
            start + Duration::from_millis(3_100),
            Duration::from_micros(70),
        );
        a.merge(&b);
        assert_eq!(a.total.len(), 4);
        let counts: Vec<u64> = a.intervals.iter().map(|h| h.len()).collect();
        assert_eq!(counts, [1, 0, 2, 1]);
        assert!((Percentiles::of(&a.intervals[2]).max_us - 50.0).abs() < 0.1);
    }

    #[test]
    fn empty_histogram_gives_zeros() {
        assert_eq!(Percentiles::of(&new_histogram()), Percentiles::default());
    }
}
