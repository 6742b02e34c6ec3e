//! A recipe's items, as every task reads them: the manifest it names
//! (filtered by `data.min_axis`, as 3DINO does), with what was dropped or
//! unreadable logged.

use std::path::{Path, PathBuf};

use dino3d_pipeline::exec::{Items, plan_items};
use dino3d_pipeline::manifest::ManifestEntry;
use dino3d_pipeline::recipe::Plan;

use crate::error::Result;

/// The manifest a plan names (relative to the recipe's folder) and its kept
/// entries; what was dropped or unreadable is logged.
///
/// # Errors
/// No manifest, an unreadable one, or no item left.
pub fn plan_entries(plan: &Plan, recipe: &Path) -> Result<(PathBuf, Vec<ManifestEntry>)> {
    let items = plan_items(plan, recipe)?;
    log_items(&items);
    Ok((items.manifest, items.entries))
}

/// Logs the items a recipe's data dropped (`data.min_axis`) or could not read.
pub fn log_items(items: &Items) {
    for r in &items.rejects {
        tracing::warn!("skipped {}: {}", r.file, r.reason);
    }
    if items.dropped_by_min_axis > 0 {
        tracing::info!(
            "{} of {} items dropped by data.min_axis",
            items.dropped_by_min_axis,
            items.dropped_by_min_axis + items.entries.len()
        );
    }
}
