//! `curves.png`: the training loss and the validation Dice against the
//! iteration (two panels).

use std::path::Path;

use anyhow::anyhow;
use plotters::prelude::*;

/// Draws both curves into `path` (PNG, 960×540).
pub(crate) fn curves(
    loss: &[(usize, f64)],
    dice: &[(usize, f64)],
    path: &Path,
) -> anyhow::Result<()> {
    if loss.is_empty() {
        return Ok(());
    }
    super::register_font();
    let e = |err: &dyn std::fmt::Display| anyhow!("drawing {}: {err}", path.display());
    let root = BitMapBackend::new(path, (960, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let (left, right) = root.split_horizontally(480);
    let x_max = loss.last().map_or(1, |p| p.0 + 1) as f64;
    let panels = [
        (left, "training loss (DiceCE)", loss, BLACK),
        (right, "validation mean Dice", dice, RGBColor(31, 119, 180)),
    ];
    for (area, title, points, colour) in &panels {
        let (points, colour): (&[(usize, f64)], RGBColor) = (points, *colour);
        let finite = points.iter().map(|p| p.1).filter(|v| v.is_finite());
        let (lo, hi) = finite.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        });
        let (lo, hi) = if lo.is_finite() { (lo, hi) } else { (0.0, 1.0) };
        let pad = ((hi - lo) * 0.05).max(1e-3);
        let mut chart = ChartBuilder::on(area)
            .caption(*title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(0.0..x_max, (lo - pad)..(hi + pad))
            .map_err(|x| e(&x))?;
        chart
            .configure_mesh()
            .x_desc("iteration")
            .label_style(("sans-serif", 13))
            .draw()
            .map_err(|x| e(&x))?;
        chart
            .draw_series(LineSeries::new(
                points.iter().map(|&(i, v)| (i as f64, v)),
                &colour,
            ))
            .map_err(|x| e(&x))?;
        chart
            .draw_series(
                points
                    .iter()
                    .map(|&(i, v)| Circle::new((i as f64, v), 2, colour.filled())),
            )
            .map_err(|x| e(&x))?;
    }
    root.present().map_err(|x| e(&x))?;
    Ok(())
}
