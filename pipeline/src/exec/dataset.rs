//! A recipe's data, opened once: the items its manifest names (a manifest
//! file, or a folder scanned on the fly), one [`Pipeline`], and where the
//! prepared samples come from (the recipe's on-disk cache, memory, or
//! nothing kept). Every task builds its loader from one of these, so the
//! pipeline that fills the cache is the pipeline that cuts the views.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use dino3d_cache::{CacheDir, Codec};

use crate::error::{Error, Result};
use crate::manifest::{
    ManifestEntry, PathStyle, Reject, ScanOptions, discover, read_manifest, scan,
};
use crate::recipe::Plan;

use super::cached::CacheSource;
use super::loader::{DirectSource, MemorySource, PreparedSource};
use super::runner::Pipeline;

/// The items of a recipe's manifest.
#[derive(Debug, Clone)]
pub struct Items {
    /// The manifest file items are relative to (for a scanned folder, a
    /// notional `manifest.json` inside it).
    pub manifest: PathBuf,
    /// The items kept.
    pub entries: Vec<ManifestEntry>,
    /// Items dropped by `data.min_axis` (3DINO keeps an item iff its
    /// smallest spatial axis is larger).
    pub dropped_by_min_axis: usize,
    /// Files of a scanned folder that could not be read, with why.
    pub rejects: Vec<Reject>,
}

/// The items a plan's `data.manifest` names (relative to the folder of the
/// recipe at `recipe`), filtered by `data.min_axis`.
///
/// # Errors
/// No manifest named, an unreadable manifest, or no item left.
pub fn plan_items(plan: &Plan, recipe: &Path) -> Result<Items> {
    let Some(m) = &plan.manifest else {
        return Err(Error::manifest(recipe, "the recipe names no data.manifest"));
    };
    let manifest = recipe.parent().unwrap_or(Path::new("")).join(m);
    let (entries, rejects) = if manifest.is_dir() {
        scan_folder(&manifest)?
    } else {
        (read_manifest(&manifest)?, Vec::new())
    };
    let total = entries.len();
    let kept: Vec<ManifestEntry> = entries
        .into_iter()
        .filter(|e| match (plan.min_axis, e.min_spatial_axis()) {
            (Some(min), Some(axis)) => axis > min,
            _ => true,
        })
        .collect();
    if kept.is_empty() {
        return Err(Error::manifest(
            &manifest,
            format!(
                "no items left (of {total}) for {}{}",
                recipe.display(),
                if plan.min_axis.is_some() {
                    " after data.min_axis"
                } else {
                    ""
                }
            ),
        ));
    }
    // Entries of a scanned folder are relative to a manifest inside it.
    let manifest = if manifest.is_dir() {
        manifest.join("manifest.json")
    } else {
        manifest
    };
    Ok(Items {
        manifest,
        dropped_by_min_axis: total - kept.len(),
        entries: kept,
        rejects,
    })
}

/// A folder named as `data.manifest`: scanned in memory (headers only) into
/// entries relative to a notional manifest inside it.
fn scan_folder(dir: &Path) -> Result<(Vec<ManifestEntry>, Vec<Reject>)> {
    let files = discover(&[dir.display().to_string()])?;
    let opts = ScanOptions {
        min_axis: None,
        path_style: PathStyle::RelativeToManifest,
        manifest_path: Some(dir.join("manifest.json")),
    };
    let result = scan(&files, &opts, &|_| {});
    Ok((
        result.records.iter().map(|r| r.to_entry()).collect(),
        result.rejects,
    ))
}

/// The cache folder a plan names (`cache.dir`, relative to the recipe's
/// folder), with the recipe's codec and chunk shape for new entries.
///
/// # Errors
/// When the folder cannot be created.
pub fn plan_cache_dir(plan: &Plan, recipe: &Path) -> Result<Option<CacheDir>> {
    let Some(dir) = &plan.cache_dir else {
        return Ok(None);
    };
    let root = recipe.parent().unwrap_or(Path::new("")).join(dir);
    let mut dir = CacheDir::new(&root).map_err(|source| Error::Cache {
        path: recipe.to_path_buf(),
        source: Box::new(source),
    })?;
    if let Some(codec) = plan.cache_codec.as_deref().and_then(Codec::from_name) {
        dir = dir.with_codec(codec);
    }
    if let Some(edges) = plan.cache_chunk {
        dir = dir.with_chunk(edges);
    }
    Ok(Some(dir))
}

/// Where prepared (prefix) samples are kept between uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Keep {
    /// In the recipe's on-disk cache, when it names one (`cache.dir`).
    pub disk: bool,
    /// With `disk`: serve samples uncached when the folder cannot be
    /// written, instead of failing at open ([`Dataset::unwritable`] says so).
    pub allow_uncached: bool,
    /// Otherwise in memory, prepared once per item (MONAI's
    /// `CacheDataset`); neither: every use reads and prepares the item again.
    pub memory: bool,
}

/// A recipe's items, its one pipeline and its source of prepared samples.
pub struct Dataset {
    /// The items.
    pub items: Items,
    /// The compiled pipeline (prefix, tail and views).
    pub pipeline: Arc<Pipeline>,
    /// Prepared samples for the loader.
    pub source: Arc<dyn PreparedSource>,
    /// The on-disk cache behind `source`, if that is where samples are kept.
    pub cache: Option<Arc<CacheSource>>,
    /// Why the cache folder cannot be written, when `allow_uncached` let the
    /// data open anyway (samples are then served uncached): for the banner
    /// and the logs.
    pub unwritable: Option<String>,
}

impl Dataset {
    /// Opens the data of `plan` (the recipe at `recipe`), keeping prepared
    /// samples as `keep` says.
    ///
    /// # Errors
    /// As [`plan_items`] and [`plan_cache_dir`].
    pub fn open(plan: &Plan, recipe: &Path, keep: Keep) -> Result<Dataset> {
        let items = plan_items(plan, recipe)?;
        let pipeline = Arc::new(Pipeline::new(plan));
        let dir = if keep.disk {
            plan_cache_dir(plan, recipe)?
        } else {
            None
        };
        let mut unwritable = None;
        if let Some(dir) = &dir
            && let Err(e) = dir.check_writable()
        {
            let err = Error::CacheUnwritable {
                dir: dir.root().to_path_buf(),
                source: Box::new(e),
            };
            if !keep.allow_uncached {
                return Err(err);
            }
            unwritable = Some(err.to_string());
        }
        let entries = items.entries.clone();
        let (source, cache): (Arc<dyn PreparedSource>, _) = match dir {
            Some(dir) => {
                let cache = Arc::new(CacheSource::new(
                    pipeline.clone(),
                    entries,
                    &items.manifest,
                    dir,
                    keep.allow_uncached,
                ));
                (cache.clone(), Some(cache))
            }
            None => {
                let direct = DirectSource::new(pipeline.clone(), entries, &items.manifest);
                if keep.memory {
                    (Arc::new(MemorySource::new(direct)), None)
                } else {
                    (Arc::new(direct), None)
                }
            }
        };
        Ok(Dataset {
            items,
            pipeline,
            source,
            cache,
            unwritable,
        })
    }
}
