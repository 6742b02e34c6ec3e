//! The kNN probe (`dino-run probe RECIPE`): does pretraining help? Frozen
//! patch features of the trained teacher and of the same architecture at its
//! random initialisation, each classified with a weighted kNN ([`knn`]) on
//! held-out regions of the bundled atlases ([`data`]): tissue class on MNI152
//! (grey / white / other, from the 2009a probability maps) and Brodmann area
//! on Colin27. Training tokens come from one hemisphere, test tokens from the
//! other; tokens straddling the midline are left out.

pub mod data;
pub mod knn;

use std::path::{Path, PathBuf};

use dino3d_model::ViT3d;
use dino3d_model::candle_core::{Device, Tensor};
use dino3d_pipeline::layout::to_z_fastest;
use dino3d_pipeline::recipe::Plan;
use dino3d_pipeline::transforms::crop_foreground::crop;
use serde::Serialize;

use crate::backbone::{newest_weights, random_backbone};
use crate::error::{Result, bail};
use crate::pretrain::config::PretrainConfig;
use crate::progress::Progress;
use data::LabelledVolume;
use knn::Scores;

/// The probe's settings (the command line's flags).
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    /// Teacher weights to probe (None: the newest checkpoint of the recipe's
    /// output folder).
    pub weights: Option<PathBuf>,
    /// Neighbours of the kNN.
    pub k: usize,
    /// Voxel size (mm) the volumes are resized to.
    pub mm: f64,
    /// Token-grid offsets are tried every this many voxels.
    pub stride: usize,
    /// The bundled data folder.
    pub data: PathBuf,
}

impl Options {
    /// DINO's kNN: 20 neighbours.
    pub const K: usize = 20;
    /// What the demo's 64³ global crops saw: about 2.4 mm voxels.
    pub const MM: f64 = 2.4;
    /// Offsets every 4 voxels.
    pub const STRIDE: usize = 4;
    /// The bundled data folder, from the repository's root.
    pub const DATA: &'static str = "data";
}

impl Default for Options {
    fn default() -> Self {
        Self {
            weights: None,
            k: Self::K,
            mm: Self::MM,
            stride: Self::STRIDE,
            data: PathBuf::from(Self::DATA),
        }
    }
}

/// One probe's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeResult {
    /// Which atlas and labels.
    pub task: String,
    /// Training tokens.
    pub train_tokens: usize,
    /// Test tokens.
    pub test_tokens: usize,
    /// Classes.
    pub classes: usize,
    /// The trained teacher's scores.
    pub pretrained: Scores,
    /// The random initialisation's scores.
    pub random_init: Scores,
}

/// What the probe found.
#[derive(Debug, Clone)]
pub struct Report {
    /// The weights probed.
    pub weights: PathBuf,
    /// The recipe's output folder (where `probe.json` goes).
    pub out: PathBuf,
    /// One result per atlas.
    pub results: Vec<ProbeResult>,
}

/// Reads a probe volume at a voxel size.
type LoadAtlas = fn(&Path, f64) -> Result<LabelledVolume>;

/// Probes the newest teacher of a pretraining recipe (or `o.weights`)
/// against the run's random initialisation.
///
/// # Errors
/// No checkpoint, unreadable atlases, a model failure.
pub fn run(
    plan: &Plan,
    t: &PretrainConfig,
    recipe: &Path,
    o: &Options,
    progress: &dyn Progress,
    device: &Device,
) -> Result<Report> {
    let cfg = crate::pretrain::setup::ssl_config(t, plan)?.backbone;
    let out = crate::pretrain::output_dir(t, recipe);
    let weights = match &o.weights {
        Some(w) => w.clone(),
        None => newest_weights(&out)?,
    };
    let trained = crate::backbone::load(&weights, &t.arch, device)?;
    let random = random_backbone(&cfg, plan.seed, device)?;
    progress.note(&format!(
        "probing {} against the random initialisation (seed {})",
        weights.display(),
        plan.seed
    ));
    let mut results = Vec::new();
    let atlases: [(&str, LoadAtlas); 2] = [
        ("MNI152 tissue (grey/white/other)", data::mni_tissue),
        ("Colin27 Brodmann area", data::colin_brodmann),
    ];
    for (name, load) in atlases {
        let vol = load(&o.data, o.mm)?;
        let p = cfg.patch_size;
        let tr = tokens(&trained, &vol, p, o.stride)?;
        let rd = tokens(&random, &vol, p, o.stride)?;
        let (a_train, a_test) = split(tr, vol.image.shape[1], p);
        let (b_train, b_test) = split(rd, vol.image.shape[1], p);
        if a_train.is_empty() || a_test.is_empty() {
            bail!("{name}: no tokens on one side of the midline");
        }
        let n = vol.classes.len();
        results.push(ProbeResult {
            task: name.into(),
            train_tokens: a_train.len(),
            test_tokens: a_test.len(),
            classes: n,
            pretrained: knn::knn(&a_train, &a_test, o.k, n),
            random_init: knn::knn(&b_train, &b_test, o.k, n),
        });
    }
    Ok(Report {
        weights,
        out,
        results,
    })
}

/// A token: its features, majority label, and its centre's x (voxels).
type Token = (Vec<f32>, u16, f64);

/// Features and label.
type Example = (Vec<f32>, u16);

/// Patch features of every token position on shifted grids: for each offset
/// (multiples of `stride` below the patch size, per axis) the largest
/// patch-aligned box from that offset goes through the backbone. Tokens
/// whose patch is less than half labelled are dropped.
fn tokens(vit: &ViT3d, vol: &LabelledVolume, p: usize, stride: usize) -> Result<Vec<Token>> {
    let [_, x, y, z] = vol.image.shape;
    let offsets: Vec<usize> = (0..p).step_by(stride.max(1)).collect();
    let mut out = Vec::new();
    for &ox in &offsets {
        for &oy in &offsets {
            for &oz in &offsets {
                let n = [
                    (x - ox.min(x)) / p,
                    (y - oy.min(y)) / p,
                    (z - oz.min(z)) / p,
                ];
                if n.contains(&0) {
                    continue;
                }
                let start = [ox, oy, oz];
                let size = [n[0] * p, n[1] * p, n[2] * p];
                let input = model_input(&vol.image, start, size, vit.device())?;
                let feats = vit.infer(&input)?.patch_norm.squeeze(0)?;
                let feats: Vec<Vec<f32>> = feats.to_vec2()?;
                for (t, f) in feats.into_iter().enumerate() {
                    // Token order: last grid axis fastest.
                    let (i, j, k) = (t / (n[1] * n[2]), (t / n[2]) % n[1], t % n[2]);
                    let lo = [ox + i * p, oy + j * p, oz + k * p];
                    if let Some(label) = majority(vol, lo, p) {
                        out.push((f, label, lo[0] as f64 + p as f64 / 2.0));
                    }
                }
            }
        }
    }
    Ok(out)
}

/// The most frequent label in the patch at `lo`, if at least half of its
/// voxels are labelled.
fn majority(vol: &LabelledVolume, lo: [usize; 3], p: usize) -> Option<u16> {
    let mut counts = vec![0usize; vol.classes.len()];
    let mut labelled = 0;
    for k in lo[2]..lo[2] + p {
        for j in lo[1]..lo[1] + p {
            for i in lo[0]..lo[0] + p {
                if let Some(l) = vol.labels[vol.image.index(0, i, j, k)] {
                    counts[l as usize] += 1;
                    labelled += 1;
                }
            }
        }
    }
    if 2 * labelled < p * p * p {
        return None;
    }
    (0..counts.len())
        .max_by_key(|&c| counts[c])
        .map(|c| c as u16)
}

/// Train on tokens wholly left of the midline, test on those wholly right.
fn split(tokens: Vec<Token>, x: usize, p: usize) -> (Vec<Example>, Vec<Example>) {
    let mid = x as f64 / 2.0;
    let half = p as f64 / 2.0;
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for (f, l, cx) in tokens {
        if cx + half <= mid {
            train.push((f, l));
        } else if cx - half >= mid {
            test.push((f, l));
        }
    }
    (train, test)
}

/// Channel 0 of the box `[start, start + size)` of `img` as the model's
/// `(1, 1, X, Y, Z)` input with z fastest.
fn model_input(
    img: &dino3d_pipeline::transforms::Image,
    start: [usize; 3],
    size: [usize; 3],
    device: &Device,
) -> Result<Tensor> {
    let end = [0, 1, 2].map(|a| start[a] + size[a]);
    let cut = crop(img, start, end);
    let n: usize = size.iter().product();
    let shape = [1, size[0], size[1], size[2]];
    Ok(Tensor::from_vec(
        to_z_fastest(&cut.data[..n], shape),
        (1, 1, size[0], size[1], size[2]),
        device,
    )?)
}
