//! The SVG chart of a run: throughput per second of the measured window on the left, the
//! latency percentiles on the right (log scale, as latencies span orders of magnitude).

use hdrhistogram::Histogram;
use plotters::prelude::*;
use std::io;
use std::path::Path;

/// Percentiles drawn for each latency histogram.
const QUANTILES: [(f64, &str); 5] = [
    (0.50, "p50"),
    (0.90, "p90"),
    (0.99, "p99"),
    (0.999, "p999"),
    (1.0, "max"),
];

/// Writes the chart of `timeline` ([sends, deliveries] per second) and of each named
/// latency histogram (microseconds) to `path`.
pub fn write(
    path: &Path,
    title: &str,
    timeline: &[[u64; 2]],
    latencies: &[(&str, &Histogram<u64>)],
) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    draw(path, title, timeline, latencies).map_err(|e| io::Error::other(e.to_string()))
}

fn draw(
    path: &Path,
    title: &str,
    timeline: &[[u64; 2]],
    latencies: &[(&str, &Histogram<u64>)],
) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::new(path, (1100, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 18))?;
    let (left, right) = root.split_horizontally(620);

    // The last whole second is the right edge.
    let seconds = timeline.len().saturating_sub(1).max(1) as u32;
    let top = timeline
        .iter()
        .flat_map(|s| s.iter().copied())
        .max()
        .unwrap_or(1)
        .max(1) as f64
        * 1.1;
    let mut chart = ChartBuilder::on(&left)
        .caption("throughput (per second)", ("sans-serif", 15))
        .margin(12)
        .x_label_area_size(32)
        .y_label_area_size(70)
        .build_cartesian_2d(0u32..seconds, 0f64..top)?;
    chart
        .configure_mesh()
        .x_desc("second of the measured window")
        .y_label_formatter(&|v| format_count(*v))
        .draw()?;
    for (column, name, color) in [(0, "sends", BLUE), (1, "deliveries", RED)] {
        chart
            .draw_series(LineSeries::new(
                timeline
                    .iter()
                    .enumerate()
                    .map(|(s, v)| (s as u32, v[column] as f64)),
                color.stroke_width(2),
            ))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;

    let max_us = latencies
        .iter()
        .map(|(_, h)| h.max())
        .max()
        .unwrap_or(1)
        .max(10) as f64;
    let mut chart = ChartBuilder::on(&right)
        .caption("latency (µs, log scale)", ("sans-serif", 15))
        .margin(12)
        .x_label_area_size(32)
        .y_label_area_size(60)
        .build_cartesian_2d(
            0u32..QUANTILES.len() as u32 - 1,
            (1f64..max_us * 2.0).log_scale(),
        )?;
    chart
        .configure_mesh()
        .x_labels(QUANTILES.len())
        .x_label_formatter(&|i| {
            QUANTILES
                .get(*i as usize)
                .map_or(String::new(), |q| q.1.to_owned())
        })
        .y_label_formatter(&|v| format_count(*v))
        .draw()?;
    for ((name, h), color) in latencies.iter().zip([BLUE, RED, GREEN, MAGENTA]) {
        chart
            .draw_series(LineSeries::new(
                QUANTILES
                    .iter()
                    .enumerate()
                    .map(|(i, (q, _))| (i as u32, h.value_at_quantile(*q).max(1) as f64)),
                color.stroke_width(2),
            ))?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// 1234567 → "1.2M": axis labels stay short.
fn format_count(v: f64) -> String {
    match v {
        v if v >= 1e6 => format!("{:.1}M", v / 1e6),
        v if v >= 1e3 => format!("{:.0}k", v / 1e3),
        v => format!("{v:.0}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chart_is_an_svg_with_both_panels() {
        let mut h = crate::report::latency_histogram();
        for us in [100, 200, 5000] {
            h.record(us).unwrap();
        }
        let path = std::env::temp_dir().join(format!("ruyi-chart-{}.svg", std::process::id()));
        write(&path, "test", &[[10, 20], [15, 30]], &[("SENDACK", &h)]).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        assert!(svg.starts_with("<svg"));
        assert!(svg.contains("throughput") && svg.contains("latency") && svg.contains("p99"));
    }
}
