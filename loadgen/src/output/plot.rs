//! SVG plots (plotters): the latency percentile spectrum, and the run's
//! rate and p99 over time. A single run draws its own paths; `compare`
//! overlays one line per path in the same plots.

use std::path::Path;

use hdrhistogram::Histogram;
use plotters::prelude::*;

use crate::error::LoadgenError;
use crate::output::output_error;
use crate::result::SeriesPoint;

const SIZE: (u32, u32) = (960, 600);
/// The spectrum's right edge: 99.999 %.
const NINES_SHOWN: f64 = 5.0;

/// One line of the spectrum: a label and its histogram (nanoseconds).
pub struct SpectrumLine<'a> {
    pub label: String,
    pub histogram: &'a Histogram<u64>,
}

/// One path's series over time.
pub struct TimelineLine<'a> {
    pub label: String,
    pub points: &'a [SeriesPoint],
}

/// The latency by percentile, x in "nines" (0 = 0 %, 1 = 90 %, 2 = 99 %,
/// ...), as HdrHistogram's plotter draws it.
pub fn spectrum(path: &Path, title: &str, lines: &[SpectrumLine]) -> Result<(), LoadgenError> {
    let curves: Vec<(String, Vec<(f64, f64)>)> = lines
        .iter()
        .map(|l| (l.label.clone(), spectrum_points(l.histogram)))
        .collect();
    let y_max = curves
        .iter()
        .flat_map(|(_, pts)| pts.iter().map(|p| p.1))
        .fold(0.0, f64::max)
        .max(1.0)
        * 1.05;
    draw(path, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, ("sans-serif", 22))
            .margin(16)
            .x_label_area_size(44)
            .y_label_area_size(72)
            .build_cartesian_2d(0.0..NINES_SHOWN, 0.0..y_max)?;
        chart
            .configure_mesh()
            .x_labels(NINES_SHOWN as usize + 1)
            .x_label_formatter(&|x| percentile_label(*x))
            .x_desc("percentile")
            .y_desc("latency (µs)")
            .draw()?;
        for (i, (label, pts)) in curves.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            chart
                .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))?
                .label(label.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
        Ok(())
    })
}

/// The series' value (the scenario's unit) over time on top, and the p99
/// of `measure` per interval below (when the scenario measures latency).
pub fn timeline(
    path: &Path,
    title: &str,
    unit: &str,
    measure: Option<&str>,
    lines: &[TimelineLine],
) -> Result<(), LoadgenError> {
    let t_max = lines
        .iter()
        .flat_map(|l| l.points.iter().map(|p| p.t_s))
        .fold(0.0, f64::max)
        .max(1.0);
    let v_max = lines
        .iter()
        .flat_map(|l| l.points.iter().map(|p| p.value))
        .fold(0.0, f64::max)
        .max(1e-9)
        * 1.1;
    let p99 = |p: &SeriesPoint| measure.and_then(|m| p.percentiles.get(m)).map(|q| q.p99_us);
    let p99_max = lines
        .iter()
        .flat_map(|l| l.points.iter().filter_map(p99))
        .fold(0.0, f64::max);
    let with_latency = measure.is_some() && p99_max > 0.0;
    draw(path, |root| {
        let (top, bottom) = if with_latency {
            root.split_vertically(SIZE.1 / 2)
        } else {
            (root.clone(), root.clone())
        };
        let mut rate = ChartBuilder::on(&top)
            .caption(title, ("sans-serif", 22))
            .margin(16)
            .x_label_area_size(36)
            .y_label_area_size(72)
            .build_cartesian_2d(0.0..t_max, 0.0..v_max)?;
        rate.configure_mesh()
            .x_desc("seconds since the load started")
            .y_desc(unit.replace('_', " "))
            .draw()?;
        for (i, l) in lines.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            rate.draw_series(LineSeries::new(
                l.points.iter().map(|p| (p.t_s, p.value)),
                color.stroke_width(2),
            ))?
            .label(l.label.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        }
        rate.configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
        if with_latency {
            let mut lat = ChartBuilder::on(&bottom)
                .margin(16)
                .x_label_area_size(36)
                .y_label_area_size(72)
                .build_cartesian_2d(0.0..t_max, 0.0..p99_max * 1.1)?;
            lat.configure_mesh()
                .x_desc("seconds since the load started")
                .y_desc(format!("{} p99 (µs)", measure.unwrap_or("")))
                .draw()?;
            for (i, l) in lines.iter().enumerate() {
                let color = Palette99::pick(i).to_rgba();
                lat.draw_series(LineSeries::new(
                    l.points.iter().filter_map(|p| p99(p).map(|v| (p.t_s, v))),
                    color.stroke_width(2),
                ))?;
            }
        }
        Ok(())
    })
}

type Area<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;
type DrawResult = Result<(), Box<dyn std::error::Error + 'static>>;

fn draw(path: &Path, body: impl FnOnce(&Area) -> DrawResult) -> Result<(), LoadgenError> {
    let fail =
        |e: Box<dyn std::error::Error>| output_error(path, std::io::Error::other(e.to_string()));
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(e.into()))?;
    body(&root).map_err(fail)?;
    root.present().map_err(|e| fail(e.into()))
}

/// The spectrum's points: (nines, µs), up to the last recorded value.
fn spectrum_points(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    if h.is_empty() {
        return Vec::new();
    }
    let mut pts: Vec<(f64, f64)> = h
        .iter_quantiles(5)
        .map(|v| {
            let q = v.quantile_iterated_to().min(1.0 - 10f64.powf(-NINES_SHOWN));
            (
                nines(q),
                h.highest_equivalent(v.value_iterated_to()) as f64 / 1e3,
            )
        })
        .collect();
    pts.dedup_by(|a, b| a.0 == b.0);
    pts
}

fn nines(q: f64) -> f64 {
    -(1.0 - q).log10()
}

fn percentile_label(x: f64) -> String {
    let p = 100.0 * (1.0 - 10f64.powf(-x));
    match x.round() as i64 {
        0 => "0%".to_owned(),
        n if (x - n as f64).abs() < 1e-9 => format!("{p:.*}%", (n - 2).max(0) as usize),
        _ => format!("{p:.3}%"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_axis_labels() {
        assert_eq!(percentile_label(0.0), "0%");
        assert_eq!(percentile_label(1.0), "90%");
        assert_eq!(percentile_label(2.0), "99%");
        assert_eq!(percentile_label(3.0), "99.9%");
        assert_eq!(percentile_label(5.0), "99.999%");
        assert!((nines(0.99) - 2.0).abs() < 1e-9);
    }
}
