//! An experiment's outputs: a CSV of its samples, an SVG plot of its t-visibility curves, and
//! the summary rows printed on stdout.

use std::path::Path;

use plotters::prelude::*;

use crate::staleness::{Read, Second};
use crate::visibility::{curve, time_to_visible, Sample};

/// Slices of the offset range the curves are estimated over.
pub const BINS: usize = 40;

/// One line of the summary: a set of samples and its time-to-visible quantiles.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    /// `edge N` or `all edges`.
    pub label: String,
    /// Samples behind it.
    pub samples: usize,
    /// The t-visibility curve.
    pub curve: Vec<(f64, Option<f64>)>,
    /// Time by which 50%, 99% and 99.9% of reads see the write, in ms (`None`: not within
    /// the offsets measured).
    pub p50: Option<f64>,
    /// See `p50`.
    pub p99: Option<f64>,
    /// See `p50`.
    pub p999: Option<f64>,
}

/// A row per reading edge, then one for all of them.
pub fn summarize(samples: &[Sample], edges: usize, max_ms: f64) -> Vec<Row> {
    let row = |label: String, chosen: Vec<&Sample>| {
        let curve = curve(&chosen, max_ms, BINS);
        Row {
            label,
            samples: chosen.len(),
            p50: time_to_visible(&curve, 0.5),
            p99: time_to_visible(&curve, 0.99),
            p999: time_to_visible(&curve, 0.999),
            curve,
        }
    };
    let mut rows: Vec<Row> = (1..edges)
        .map(|edge| {
            row(
                format!("edge {edge}"),
                samples.iter().filter(|s| s.edge == edge).collect(),
            )
        })
        .collect();
    rows.push(row("all edges".into(), samples.iter().collect()));
    rows
}

/// The summary as a table.
pub fn table(rows: &[Row]) -> String {
    let ms = |v: Option<f64>| {
        v.map_or_else(
            || "> range".to_owned(),
            |v| {
                if v < 10.0 {
                    format!("{v:.1}")
                } else {
                    format!("{v:.0}")
                }
            },
        )
    };
    let mut out = format!(
        "{:<12} {:>8} {:>10} {:>10} {:>10}\n",
        "", "samples", "p50 ms", "p99 ms", "p99.9 ms"
    );
    for row in rows {
        out.push_str(&format!(
            "{:<12} {:>8} {:>10} {:>10} {:>10}\n",
            row.label,
            row.samples,
            ms(row.p50),
            ms(row.p99),
            ms(row.p999)
        ));
    }
    out
}

/// Writes every sample as CSV: key, edge, offset_ms, visible.
pub fn write_csv(path: &Path, samples: &[Sample]) -> Result<(), csv::Error> {
    let mut out = csv::Writer::from_path(path)?;
    out.write_record(["key", "edge", "offset_ms", "visible"])?;
    for s in samples {
        out.write_record([
            s.key.as_str(),
            &s.edge.to_string(),
            &format!("{:.1}", s.offset_ms),
            if s.visible { "1" } else { "0" },
        ])?;
    }
    out.flush()?;
    Ok(())
}

/// Plots each row's t-visibility curve: probability a read sees the write against the time
/// since its acknowledgement.
pub fn plot_svg(path: &Path, title: &str, rows: &[Row], max_ms: f64) -> Result<(), String> {
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(56)
        .build_cartesian_2d(0f64..max_ms, 0f64..1.02f64)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("ms after the write was acknowledged")
        .y_desc("P(read returns the write)")
        .draw()
        .map_err(|e| e.to_string())?;
    for (i, row) in rows.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let points: Vec<(f64, f64)> = row
            .curve
            .iter()
            .filter_map(|(t, p)| p.map(|p| (*t, p)))
            .collect();
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(row.label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}

/// Writes every judged read of a staleness run as CSV: at_ms, edge, versions_behind, stale_ms.
pub fn write_reads_csv(path: &Path, reads: &[Read]) -> Result<(), csv::Error> {
    let mut out = csv::Writer::from_path(path)?;
    out.write_record(["at_ms", "edge", "versions_behind", "stale_ms"])?;
    for r in reads {
        out.write_record([
            r.at_ms.to_string(),
            r.edge.to_string(),
            r.versions_behind.to_string(),
            r.stale_ms.to_string(),
        ])?;
    }
    out.flush()?;
    Ok(())
}

/// Plots the fraction of stale reads per second over the run.
pub fn plot_staleness_svg(path: &Path, title: &str, seconds: &[Second]) -> Result<(), String> {
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let end = seconds.len().max(1) as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(56)
        .build_cartesian_2d(0f64..end, 0f64..1.02f64)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("seconds into the run")
        .y_desc("fraction of reads that were stale")
        .draw()
        .map_err(|e| e.to_string())?;
    let points: Vec<(f64, f64)> = seconds
        .iter()
        .filter(|s| s.reads > 0)
        .map(|s| (s.second as f64 + 0.5, s.stale_fraction))
        .collect();
    chart
        .draw_series(LineSeries::new(points, RED.stroke_width(2)))
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_are_written() {
        let samples: Vec<Sample> = (0..200)
            .map(|i| Sample {
                key: format!("k{i}"),
                edge: 1 + i % 2,
                offset_ms: i as f64 * 5.0,
                visible: i >= 40,
            })
            .collect();
        let rows = summarize(&samples, 3, 1000.0);
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[2].samples, 200);
        let p50 = rows[2].p50.unwrap();
        assert!((200.0..=250.0).contains(&p50), "{p50}");
        assert!(table(&rows).contains("all edges"));
        let dir = tempfile::tempdir().unwrap();
        write_csv(&dir.path().join("s.csv"), &samples).unwrap();
        let csv = std::fs::read_to_string(dir.path().join("s.csv")).unwrap();
        assert_eq!(csv.lines().count(), 201);
        plot_svg(&dir.path().join("p.svg"), "t", &rows, 1000.0).unwrap();
        let svg = std::fs::read_to_string(dir.path().join("p.svg")).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("all edges"));
    }
}
