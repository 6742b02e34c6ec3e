//! `task: prepare`: the recipe's deterministic prefix over every item, in
//! parallel, with what fails reported (the on-disk cache keeps the results
//! when the recipe names one; `dino-run cache warm` fills it ahead).

use std::path::Path;
use std::time::Instant;

use dino3d_pipeline::exec::Pipeline;
use dino3d_pipeline::recipe::Plan;
use rayon::prelude::*;

use crate::error::Result;
use crate::progress::Progress;

/// What `prepare` did.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// Each item's image and its prepared shape `(C, X, Y, Z)`, or why it
    /// failed, in manifest order.
    pub items: Vec<(String, Result<[usize; 4], String>)>,
    /// Seconds the preparation took.
    pub seconds: f64,
}

impl Report {
    /// The failures' messages.
    pub fn failures(&self) -> Vec<&String> {
        self.items
            .iter()
            .filter_map(|(_, r)| r.as_ref().err())
            .collect()
    }
}

/// Prepares every item of the recipe's manifest.
///
/// # Errors
/// The manifest cannot be read (items that fail are reported, not errors).
pub fn run(plan: &Plan, recipe: &Path, progress: &dyn Progress) -> Result<Report> {
    let (manifest, entries) = crate::data::plan_entries(plan, recipe)?;
    let pipeline = Pipeline::new(plan);
    let bar = progress.bar(entries.len() as u64, "volumes");
    let start = Instant::now();
    let items = entries
        .par_iter()
        .map(|e| {
            let r = pipeline
                .prepare(e, &manifest)
                .map(|s| s.images.first().map_or([0; 4], |(_, i)| i.shape))
                .map_err(|err| err.to_string());
            bar.inc(1);
            (e.image.clone(), r)
        })
        .collect();
    drop(bar);
    Ok(Report {
        items,
        seconds: start.elapsed().as_secs_f64(),
    })
}
