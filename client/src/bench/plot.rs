//! Latency against throughput, one point per load level, as an SVG file.

use std::path::Path;

use anyhow::{Result, anyhow};
use plotters::prelude::*;

use super::report::Report;

pub fn write_svg(report: &Report, path: &Path) -> Result<()> {
    let points = &report.points;
    let max_x = points.iter().map(|p| p.throughput).fold(1.0, f64::max) * 1.1;
    let max_y = points.iter().map(|p| p.latency_ms_p99).fold(0.1, f64::max) * 1.15;
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "{} — {} ({}, batch {})",
                report.url, report.model, report.format, report.batch_size
            ),
            ("sans-serif", 20),
        )
        .margin(20)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..max_x, 0.0..max_y)
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_desc("throughput (requests/s)")
        .y_desc("latency (ms)")
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    for (name, color, get) in [
        (
            "p50",
            BLUE,
            (|p: &super::Point| p.latency_ms_p50) as fn(&super::Point) -> f64,
        ),
        ("p99", RED, |p: &super::Point| p.latency_ms_p99),
    ] {
        let series: Vec<(f64, f64)> = points.iter().map(|p| (p.throughput, get(p))).collect();
        chart
            .draw_series(LineSeries::new(series.clone(), color.stroke_width(2)))
            .map_err(|e| anyhow!("{e}"))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        chart
            .draw_series(series.iter().map(|&(x, y)| Circle::new((x, y), 4, color.filled())))
            .map_err(|e| anyhow!("{e}"))?;
    }
    chart
        .draw_series(points.iter().map(|p| {
            Text::new(
                p.label(),
                (p.throughput, p.latency_ms_p99),
                ("sans-serif", 13).into_font(),
            )
        }))
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow!("{e}"))?;
    Ok(())
}
