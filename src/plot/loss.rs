//! The pretraining loss curve as a PNG: total loss and each term against
//! the iteration.

use std::path::Path;

use anyhow::anyhow;
use plotters::prelude::*;

use dino3d_tasks::pretrain::metrics::Record;

use super::register_font;

/// A curve: its name, how to read it off a record, its colour.
type Series = (&'static str, fn(&Record) -> f64, RGBColor);

/// Draws `records` into `path` (PNG, 960×540); written atomically.
pub(crate) fn loss_curve(records: &[Record], path: &Path) -> anyhow::Result<()> {
    if records.is_empty() {
        return Ok(());
    }
    register_font();
    let series: [Series; 5] = [
        ("total", |r| r.loss, BLACK),
        ("DINO local", |r| r.dino_local, RGBColor(31, 119, 180)),
        ("DINO global", |r| r.dino_global, RGBColor(255, 127, 14)),
        ("iBOT", |r| r.ibot, RGBColor(44, 160, 44)),
        ("KoLeo", |r| r.koleo, RGBColor(214, 39, 40)),
    ];
    let x_max = records.last().map_or(1, |r| r.iteration + 1) as f64;
    let x_min = records.first().map_or(0, |r| r.iteration) as f64;
    let (mut y_min, mut y_max) = (f64::INFINITY, f64::NEG_INFINITY);
    for r in records {
        for (_, f, _) in &series {
            let v = f(r);
            if v.is_finite() {
                y_min = y_min.min(v);
                y_max = y_max.max(v);
            }
        }
    }
    if !y_min.is_finite() {
        return Ok(());
    }
    let pad = ((y_max - y_min) * 0.05).max(1e-3);
    // The encoder picks the format from the extension: keep `.png`.
    let name = path
        .file_name()
        .map_or("loss.png".into(), |n| n.to_string_lossy());
    let tmp = path.with_file_name(format!(".{name}.tmp.png"));
    {
        let root = BitMapBackend::new(&tmp, (960, 540)).into_drawing_area();
        let e = |err: &dyn std::fmt::Display| anyhow!("drawing {}: {err}", path.display());
        root.fill(&WHITE).map_err(|x| e(&x))?;
        let mut chart = ChartBuilder::on(&root)
            .caption("dino3d pretraining loss", ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(x_min..x_max.max(x_min + 1.0), (y_min - pad)..(y_max + pad))
            .map_err(|x| e(&x))?;
        chart
            .configure_mesh()
            .x_desc("iteration")
            .y_desc("loss")
            .label_style(("sans-serif", 14))
            .draw()
            .map_err(|x| e(&x))?;
        for (name, f, color) in series {
            chart
                .draw_series(LineSeries::new(
                    records.iter().map(|r| (r.iteration as f64, f(r))),
                    color.stroke_width(2),
                ))
                .map_err(|x| e(&x))?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .draw()
            .map_err(|x| e(&x))?;
        root.present().map_err(|x| e(&x))?;
    }
    std::fs::rename(&tmp, path)?;
    Ok(())
}
