//! PNG plots: the training history, and (for `sample`) correlators with error bars.
//! Text uses the embedded DejaVu Sans, so no system fonts are needed.

use crate::files::temp_path;
use anyhow::{Result, anyhow};
use plotters::prelude::*;
use std::path::Path;
use std::sync::Once;

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            dejavu::sans::regular(),
        );
    });
}

/// One panel: a title and (x, y) points, optionally with symmetric error bars.
pub struct Panel<'a> {
    pub title: &'a str,
    pub x_label: &'a str,
    pub points: Vec<(f64, f64)>,
    pub errors: Option<Vec<f64>>,
    /// A horizontal reference line (e.g. an exact value) with its label.
    pub reference: Option<(f64, &'a str)>,
}

fn range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.08).max(1e-9 + lo.abs() * 1e-3);
    (lo - pad, hi + pad)
}

/// Draw panels in a grid (`cols` wide) into a PNG written atomically.
pub fn panels(path: &Path, cols: usize, panels: &[Panel]) -> Result<()> {
    register_font();
    let rows = panels.len().div_ceil(cols);
    let (w, h) = (480 * cols as u32, 340 * rows as u32);
    // Drawn to a temporary file and renamed, so a kill never leaves half a picture.
    let tmp = temp_path(path).with_extension("png");
    {
        let root = BitMapBackend::new(&tmp, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow!("plot: {e}"))?;
        let areas = root.split_evenly((rows, cols));
        for (area, p) in areas.iter().zip(panels) {
            let (x0, x1) = range(p.points.iter().map(|q| q.0));
            let errs = p.errors.clone().unwrap_or_default();
            let ys = p.points.iter().enumerate().flat_map(|(i, q)| {
                let e = errs.get(i).copied().unwrap_or(0.0);
                [q.1 - e, q.1 + e]
            });
            let (y0, y1) = range(ys.chain(p.reference.iter().map(|r| r.0)));
            let mut chart = ChartBuilder::on(area)
                .caption(p.title, ("sans-serif", 18))
                .margin(10)
                .x_label_area_size(36)
                .y_label_area_size(64)
                .build_cartesian_2d(x0..x1, y0..y1)
                .map_err(|e| anyhow!("plot: {e}"))?;
            chart
                .configure_mesh()
                .x_desc(p.x_label)
                .label_style(("sans-serif", 13))
                .draw()
                .map_err(|e| anyhow!("plot: {e}"))?;
            if let Some((y, label)) = p.reference {
                chart
                    .draw_series(LineSeries::new([(x0, y), (x1, y)], RED.stroke_width(1)))
                    .map_err(|e| anyhow!("plot: {e}"))?
                    .label(label)
                    .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], RED));
                chart
                    .configure_series_labels()
                    .label_font(("sans-serif", 13))
                    .background_style(WHITE.mix(0.8))
                    .draw()
                    .map_err(|e| anyhow!("plot: {e}"))?;
            }
            let blue = RGBColor(31, 119, 180);
            if let Some(errs) = &p.errors {
                chart
                    .draw_series(p.points.iter().zip(errs).map(|(&(x, y), &e)| {
                        ErrorBar::new_vertical(x, y - e, y, y + e, blue.filled(), 6)
                    }))
                    .map_err(|e| anyhow!("plot: {e}"))?;
            } else {
                chart
                    .draw_series(LineSeries::new(
                        p.points.iter().copied(),
                        blue.stroke_width(2),
                    ))
                    .map_err(|e| anyhow!("plot: {e}"))?;
            }
            chart
                .draw_series(
                    p.points
                        .iter()
                        .map(|&(x, y)| Circle::new((x, y), 3, blue.filled())),
                )
                .map_err(|e| anyhow!("plot: {e}"))?;
        }
        root.present().map_err(|e| anyhow!("plot: {e}"))?;
    }
    std::fs::rename(&tmp, path).map_err(|e| anyhow!("cannot write {}: {e}", path.display()))
}
