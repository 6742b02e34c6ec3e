//! Frozen features of volumes: the normed [CLS] token, the mean patch token
//! and optionally every patch token of a backbone, for `dino-run embed` and
//! `task: embed` (whose Parquet table the binary writes).
//!
//! A volume becomes the model's input one of three ways ([`Prep`]): 3DINO's
//! evaluation preprocessing, the stored voxels, or a recipe's deterministic
//! pipeline.

pub mod config;

use std::path::{Path, PathBuf};

use dino3d_model::ViT3d;
use dino3d_model::candle_core::{Device, Tensor};
use dino3d_pipeline::exec::Pipeline;
use dino3d_pipeline::manifest::ManifestEntry;
use dino3d_pipeline::recipe::Plan;
use rayon::prelude::*;

use crate::backbone::model_input;
use crate::error::{Result, ensure};
use config::EmbedConfig;

/// A volume's embeddings.
#[derive(Debug, Clone, PartialEq)]
pub struct Embedding {
    /// The normed [CLS] token.
    pub cls: Vec<f32>,
    /// The mean of the normed patch tokens.
    pub patch_mean: Vec<f32>,
    /// The token grid.
    pub grid: [usize; 3],
    /// `N x E` tokens (last grid axis fastest), when the patch grid is kept.
    pub patch: Option<Vec<Vec<f32>>>,
}

/// How a volume becomes the model's input.
pub enum Prep<'a> {
    /// 3DINO's evaluation preprocessing (`embed` without `--raw`).
    Eval,
    /// The stored voxels.
    Raw,
    /// A recipe's deterministic pipeline, then an optional resize to `size`³.
    Recipe {
        /// The recipe's pipeline.
        pipeline: &'a Pipeline,
        /// Resize cube (0: none).
        size: usize,
    },
}

/// The model's input for `volume`: its stored voxels (`raw`, sizes must be
/// multiples of the patch) or 3DINO's evaluation preprocessing.
///
/// # Errors
/// A volume the preprocessing cannot crop, or a candle failure.
pub fn model_input_for(vit: &ViT3d, volume: &dino3d_pipeline::Volume, raw: bool) -> Result<Tensor> {
    let device = vit.device();
    if raw {
        model_input(&volume.to_f32(), volume.shape, device)
    } else {
        let p = crate::visualize::prepare::prepare(volume, 0, vit.config().patch_size)?;
        model_input(&p.image.data, p.image.shape, device)
    }
}

/// Embeds one entry (resolved against `manifest`'s folder): read, prepare,
/// forward.
///
/// # Errors
/// An unreadable volume, a preparation failure, a model failure.
pub fn embed(
    vit: &ViT3d,
    entry: &ManifestEntry,
    manifest: &Path,
    prep: &Prep,
    patch_grid: bool,
) -> Result<Embedding> {
    let x = match prep {
        Prep::Eval | Prep::Raw => {
            let volume = dino3d_pipeline::formats::read_volume(entry.resolve(manifest))?;
            model_input_for(vit, &volume, matches!(prep, Prep::Raw))?
        }
        Prep::Recipe { pipeline, size } => {
            let img = crate::linear_probe::features::prepare(pipeline, entry, manifest, *size)?;
            let p = vit.config().patch_size;
            ensure!(
                img.shape[1..].iter().all(|s| s % p == 0),
                "the prepared image is {:?}: its sizes must be multiples of the patch size {p} (set embed.image_size or add a Resize step)",
                &img.shape[1..]
            );
            model_input(&img.data, img.shape, vit.device())?
        }
    };
    let out = vit.infer(&x)?;
    let patch = out.patch_norm.squeeze(0)?;
    Ok(Embedding {
        cls: out.cls_norm.squeeze(0)?.to_vec1()?,
        patch_mean: patch.mean(0)?.to_vec1()?,
        grid: out.grid,
        patch: if patch_grid {
            Some(patch.to_vec2()?)
        } else {
            None
        },
    })
}

/// Embeds `entries` in parallel, one volume per thread (reading and
/// preprocessing dominate; the forward passes use candle's own threads).
pub fn embed_all(
    vit: &ViT3d,
    entries: &[ManifestEntry],
    manifest: &Path,
    prep: &Prep,
    patch_grid: bool,
) -> Vec<Result<Embedding>> {
    entries
        .par_iter()
        .map(|e| embed(vit, e, manifest, prep, patch_grid))
        .collect()
}

/// What `task: embed` embeds, opened.
pub struct Job {
    /// The backbone.
    pub vit: ViT3d,
    /// Its weights file.
    pub weights: PathBuf,
    /// The manifest entries resolve against.
    pub manifest: PathBuf,
    /// The recipe's items (filtered by `data.min_axis`).
    pub entries: Vec<ManifestEntry>,
    /// The recipe's pipeline.
    pub pipeline: Pipeline,
    /// The Parquet file to write.
    pub out: PathBuf,
}

/// Opens `task: embed`: the backbone the `embed:` section names, on
/// `device`, and the recipe's items.
///
/// # Errors
/// Missing weights, a backbone that does not fit, an unreadable manifest.
pub fn open(plan: &Plan, e: &EmbedConfig, recipe: &Path, device: &Device) -> Result<Job> {
    let base = recipe.parent().unwrap_or(Path::new(""));
    let weights = crate::backbone::resolve_weights(&base.join(&e.pretrained_weights))?;
    let vit = crate::backbone::load(&weights, &e.arch, device)?;
    let (manifest, entries) = crate::data::plan_entries(plan, recipe)?;
    if plan.prefix_len < plan.steps.len() {
        tracing::warn!(
            "{} random step(s) after the deterministic prefix are not applied",
            plan.steps.len() - plan.prefix_len
        );
    }
    Ok(Job {
        vit,
        weights,
        manifest,
        entries,
        pipeline: Pipeline::new(plan),
        out: base.join(&e.out),
    })
}
