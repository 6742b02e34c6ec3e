//! `dino-run probe RECIPE`: does pretraining help? Frozen patch features of
//! the trained teacher and of the same architecture at its random
//! initialisation, each classified with a weighted kNN on held-out regions:
//! tissue class on MNI152 (grey / white / other, from the 2009a probability
//! maps) and Brodmann area on Colin27. Training tokens come from one
//! hemisphere, test tokens from the other; tokens straddling the midline are
//! left out.

pub(crate) mod data;
mod knn;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;
use dino3d_model::candle_core::{DType, Device, Tensor};
use dino3d_model::init::seeded_var_builder;
use dino3d_model::{ViT3d, ViT3dConfig};
use serde::Serialize;

use crate::run_cmd::{Overrides, load_plan};
use data::LabelledVolume;
use knn::Scores;

/// Arguments of `probe`.
#[derive(Debug, Args)]
pub(crate) struct ProbeArgs {
    /// The pretraining recipe (its model, seed and output folder).
    recipe: PathBuf,
    #[command(flatten)]
    overrides: Overrides,
    /// Teacher weights to probe (default: the newest checkpoint of the
    /// recipe's output folder).
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Neighbours of the kNN.
    #[arg(long, default_value_t = 20)]
    k: usize,
    /// Voxel size (mm) the volumes are resized to (default: what the
    /// global crops saw, about 2.4 mm for the demo's 64³ crops).
    #[arg(long, default_value_t = 2.4)]
    mm: f64,
    /// Token-grid offsets are tried every this many voxels (denser = more
    /// tokens).
    #[arg(long, default_value_t = 4)]
    stride: usize,
    /// The bundled data folder.
    #[arg(long, default_value = "data")]
    data: PathBuf,
}

/// One probe's outcome.
#[derive(Debug, Serialize)]
struct ProbeResult {
    task: String,
    train_tokens: usize,
    test_tokens: usize,
    classes: usize,
    pretrained: Scores,
    random_init: Scores,
}

pub(crate) fn run(args: &ProbeArgs) -> anyhow::Result<ExitCode> {
    let plan = load_plan(&args.recipe, &args.overrides)?;
    let t = plan
        .training
        .clone()
        .context("the recipe has no training sections")?;
    let cfg = crate::train::setup::ssl_config(&t, &plan)?.backbone;
    let device = Device::Cpu;
    let out = crate::train::output_dir(&plan, &args.recipe);
    let weights = match &args.weights {
        Some(w) => w.clone(),
        None => newest_weights(&out)?,
    };
    let trained = crate::backbone::load(&weights, &t.arch, &device)?;
    let random = random_backbone(&cfg, plan.seed, &device)?;
    eprintln!(
        "probing {} against the random initialisation (seed {})",
        weights.display(),
        plan.seed
    );
    let mut results = Vec::new();
    let tasks: [(&str, LoadTask); 2] = [
        ("MNI152 tissue (grey/white/other)", data::mni_tissue),
        ("Colin27 Brodmann area", data::colin_brodmann),
    ];
    for (name, load) in tasks {
        let vol = load(&args.data, args.mm)?;
        let p = cfg.patch_size;
        let tr = tokens(&trained, &vol, p, args.stride)?;
        let rd = tokens(&random, &vol, p, args.stride)?;
        let (a_train, a_test) = split(tr, vol.image.shape[1], p);
        let (b_train, b_test) = split(rd, vol.image.shape[1], p);
        if a_train.is_empty() || a_test.is_empty() {
            bail!("{name}: no tokens on one side of the midline");
        }
        let n = vol.classes.len();
        let r = ProbeResult {
            task: name.into(),
            train_tokens: a_train.len(),
            test_tokens: a_test.len(),
            classes: n,
            pretrained: knn::knn(&a_train, &a_test, args.k, n),
            random_init: knn::knn(&b_train, &b_test, args.k, n),
        };
        println!(
            "{name}: {} train / {} test tokens; kNN (k={}) accuracy {:.3} pretrained vs {:.3} random init; balanced {:.3} vs {:.3}",
            r.train_tokens,
            r.test_tokens,
            args.k,
            r.pretrained.accuracy,
            r.random_init.accuracy,
            r.pretrained.balanced_accuracy,
            r.random_init.balanced_accuracy
        );
        results.push(r);
    }
    std::fs::create_dir_all(&out)?;
    let json = out.join("probe.json");
    std::fs::write(
        &json,
        serde_json::to_vec_pretty(&serde_json::json!({
            "weights": weights.display().to_string(),
            "k": args.k,
            "mm": args.mm,
            "results": results,
        }))?,
    )?;
    println!("-> {}", json.display());
    Ok(ExitCode::SUCCESS)
}

/// The newest teacher in an output folder: the last resumable checkpoint
/// (its `teacher.*` tensors), else the last `eval/training_*` file.
pub(crate) fn newest_weights(out: &Path) -> anyhow::Result<PathBuf> {
    let root = out.join("checkpoints");
    let mut best: Option<(usize, PathBuf)> = None;
    for dir in [root, out.join("eval")] {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let (it, file) = if let Some(n) = name.strip_prefix("iter_") {
                (n.parse::<usize>().ok(), e.path().join("state.safetensors"))
            } else if let Some(n) = name.strip_prefix("training_") {
                (
                    n.parse::<usize>().ok().map(|i| i + 1),
                    e.path().join("teacher_checkpoint.safetensors"),
                )
            } else {
                continue;
            };
            if let Some(it) = it
                && file.exists()
                && best.as_ref().is_none_or(|(b, _)| it > *b)
            {
                best = Some((it, file));
            }
        }
    }
    best.map(|(_, p)| p).with_context(|| {
        format!(
            "no checkpoint in {}: pretrain first (dino-run RECIPE) or pass --weights",
            out.display()
        )
    })
}

fn candle_nn_varmap() -> dino3d_model::candle_nn::VarMap {
    dino3d_model::candle_nn::VarMap::new()
}

/// The student's initial backbone of a run with `seed` (same names, same
/// streams), i.e. the teacher before any training.
pub(crate) fn random_backbone(
    cfg: &ViT3dConfig,
    seed: u64,
    device: &Device,
) -> anyhow::Result<ViT3d> {
    let vm = candle_nn_varmap();
    let vb = seeded_var_builder(&vm, seed, DType::F32, device);
    Ok(ViT3d::new(cfg.clone(), vb.pp("backbone"))?)
}

/// A token: its features, majority label, and its centre's x (voxels).
type Token = (Vec<f32>, u16, f64);

/// Features and label.
type Example = (Vec<f32>, u16);

/// Reads a probe volume at a voxel size.
type LoadTask = fn(&Path, f64) -> anyhow::Result<LabelledVolume>;

/// Patch features of every token position on shifted grids: for each offset
/// (multiples of `stride` below the patch size, per axis) the largest
/// patch-aligned box from that offset goes through the backbone. Tokens
/// whose patch is less than half labelled are dropped.
fn tokens(
    vit: &ViT3d,
    vol: &LabelledVolume,
    p: usize,
    stride: usize,
) -> anyhow::Result<Vec<Token>> {
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
                let input = model_input(&vol.image, start, [n[0] * p, n[1] * p, n[2] * p])?;
                let feats = vit.forward(&input)?.patch_norm.squeeze(0)?;
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

/// The box `[start, start + size)` of `img` as the model's `(1, 1, X, Y, Z)`
/// input with z fastest.
fn model_input(
    img: &dino3d_pipeline::transforms::Image,
    start: [usize; 3],
    size: [usize; 3],
) -> anyhow::Result<Tensor> {
    let mut v = Vec::with_capacity(size.iter().product());
    for i in 0..size[0] {
        for j in 0..size[1] {
            for k in 0..size[2] {
                v.push(img.data[img.index(0, start[0] + i, start[1] + j, start[2] + k)]);
            }
        }
    }
    Ok(Tensor::from_vec(
        v,
        (1, 1, size[0], size[1], size[2]),
        &Device::Cpu,
    )?)
}
