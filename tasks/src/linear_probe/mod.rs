//! `task: linear_probe`: 3DINO's frozen linear probe (`linear3d.py`, spec
//! §4.3) on a classification datalist.
//!
//! Every volume of the datalist goes once through the recipe's deterministic
//! pipeline prefix, an optional resize to `probe.image_size`³ and the frozen
//! backbone; the [CLS] tokens of the last blocks and the mean patch token
//! are kept ([`features`]). The grid of linear classifiers (n_last_blocks ×
//! avgpool × learning rates, [`grid`]) trains on those cached features; the
//! best_val snapshot and the classifier with the best validation accuracy
//! are chosen on validation alone, then applied to the test split: accuracy,
//! macro one-vs-rest AUC, confusion matrix ([`metrics`]), and the test logits.
//!
//! Unlike `linear3d.py`, training samples are not augmented (features are
//! computed once), and shuffles use dino3d's own seeded generator.
//! [`atlas_crops`] cuts the bundled example's data.

pub mod atlas_crops;
pub mod config;
pub(crate) mod features;
pub mod grid;
pub(crate) mod metrics;

use std::path::{Path, PathBuf};

use dino3d_model::ViT3d;
use dino3d_pipeline::exec::Pipeline;
use dino3d_pipeline::recipe::Plan;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{Context, Result, bail};
use crate::progress::Progress;
use config::LinearProbeConfig;
use features::Features;
use grid::{Matrix, Split, TrainConfig};

/// A classification datalist (the `classes` names are optional).
#[derive(Debug, Deserialize)]
struct ClsDatalist {
    #[serde(default)]
    training: Vec<dino3d_pipeline::manifest::DatalistItem>,
    #[serde(default)]
    validation: Vec<dino3d_pipeline::manifest::DatalistItem>,
    #[serde(default)]
    test: Vec<dino3d_pipeline::manifest::DatalistItem>,
    #[serde(default)]
    classes: Vec<String>,
}

/// An image and its class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// The image, as the datalist names it.
    pub image: String,
    /// Its class.
    pub label: usize,
}

const SPLITS: [&str; 3] = ["training", "validation", "test"];

fn items(list: &[dino3d_pipeline::manifest::DatalistItem], split: &str) -> Result<Vec<Item>> {
    list.iter()
        .map(|it| {
            let label = match &it.label {
                serde_json::Value::Number(n) => n.as_u64(),
                serde_json::Value::String(s) => s.trim().parse().ok(),
                _ => None,
            };
            let label = label.with_context(|| {
                format!(
                    "{split} item {}: label {} is not a class number (0, 1, ...)",
                    it.image, it.label
                )
            })?;
            Ok(Item {
                image: it.image.clone(),
                label: label as usize,
            })
        })
        .collect()
}

/// Features of one backbone for every kept item of the three splits.
type SplitFeatures = [Vec<(usize, Features)>; 3];

/// One backbone's probe result (`results.json`).
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// The chosen classifier's name.
    pub best_classifier: String,
    /// Its `n_last_blocks`.
    pub n_last_blocks: usize,
    /// Its `avgpool`.
    pub avgpool: bool,
    /// Its scaled learning rate.
    pub learning_rate: f64,
    /// The iteration of the best_val snapshot.
    pub best_val_iteration: usize,
    /// Its validation accuracy.
    pub val_accuracy: f64,
    /// Its test accuracy.
    pub test_accuracy: f64,
    /// Macro one-vs-rest test AUC.
    pub test_auc_macro_ovr: Option<f64>,
    /// One-vs-rest test AUC per class.
    pub test_auc_per_class: Vec<Option<f64>>,
    /// `m[true][predicted]` on the test split.
    pub confusion_matrix: Vec<Vec<u64>>,
    /// The file of the test logits.
    pub test_logits: String,
    /// Every classifier's validation accuracy.
    pub val_accuracy_by_classifier: serde_json::Map<String, serde_json::Value>,
    /// Validation during training.
    pub history: Vec<grid::EvalPoint>,
}

/// The chosen classifier's test logits.
#[derive(Debug, Clone, PartialEq)]
pub struct TestLogits {
    /// The classifier's name.
    pub classifier: String,
    /// Test images, in order.
    pub images: Vec<String>,
    /// Their classes.
    pub targets: Vec<usize>,
    /// Their logits.
    pub logits: Vec<Vec<f32>>,
}

/// One backbone's probe.
#[derive(Debug, Clone)]
pub struct Probed {
    /// `pretrained` or `random_init`.
    pub name: &'static str,
    /// Its result.
    pub outcome: Outcome,
    /// Its chosen classifier's test logits.
    pub test_logits: TestLogits,
}

/// What the probe found.
#[derive(Debug, Clone)]
pub struct Report {
    /// The datalist read.
    pub datalist: PathBuf,
    /// The backbone's weights file.
    pub weights: PathBuf,
    /// Where the results go (relative to the working directory).
    pub output_dir: PathBuf,
    /// Classes.
    pub classes: usize,
    /// The datalist's class names.
    pub class_names: Vec<String>,
    /// Volumes embedded per split.
    pub counts: [usize; 3],
    /// Items that could not be read, with why.
    pub skipped: Vec<serde_json::Value>,
    /// Classifiers in the grid.
    pub classifiers: usize,
    /// Each backbone's result, the pretrained one first.
    pub probed: Vec<Probed>,
}

/// Runs `task: linear_probe`.
///
/// # Errors
/// An unreadable datalist or backbone, an empty split, bad settings.
pub fn run(
    plan: &Plan,
    p: &LinearProbeConfig,
    recipe: &Path,
    progress: &dyn Progress,
    device: &dino3d_model::candle_core::Device,
) -> Result<Report> {
    let base = recipe.parent().unwrap_or(Path::new(""));
    let Some(m) = &plan.manifest else {
        bail!(
            "{}: data.manifest must name the classification datalist",
            recipe.display()
        );
    };
    let datalist_path = base.join(m);
    let text = std::fs::read_to_string(&datalist_path).with_context(|| {
        format!(
            "reading the datalist {} (for the bundled example: dino-run atlas-crops --out DIR)",
            datalist_path.display()
        )
    })?;
    let list: ClsDatalist = serde_json::from_str(&text).with_context(|| {
        format!(
            "{}: not a datalist {{training, validation, test}} of {{image, label}} items",
            datalist_path.display()
        )
    })?;
    let mut training = items(&list.training, "training")?;
    if p.dataset_percent < 100.0 {
        grid::SplitMix64::new(p.dataset_seed).shuffle(&mut training);
        let keep = ((training.len() as f64 * p.dataset_percent / 100.0).round() as usize).max(1);
        training.truncate(keep);
    }
    let splits = [
        training,
        items(&list.validation, "validation")?,
        items(&list.test, "test")?,
    ];
    for (name, s) in SPLITS.iter().zip(&splits) {
        if s.is_empty() {
            bail!("{}: the {name} split is empty", datalist_path.display());
        }
    }
    let classes = splits
        .iter()
        .flatten()
        .map(|i| i.label + 1)
        .max()
        .unwrap_or(0)
        .max(list.classes.len())
        .max(2);

    let weights = crate::backbone::resolve_weights(&base.join(&p.pretrained_weights))?;
    // The backbones run on `device`; their features come back to the host,
    // where the linear classifiers are trained.
    let trained = crate::backbone::load(&weights, &p.arch, device)?;
    let depth = trained.depth();
    let blocks = p.n_last_blocks.iter().copied().max().unwrap_or(1);
    if blocks > depth {
        bail!(
            "{}: probe.n_last_blocks asks for {blocks} blocks; ViT-{} has {depth}",
            recipe.display(),
            p.arch
        );
    }
    let mut models: Vec<(&'static str, ViT3d)> = vec![("pretrained", trained)];
    if p.compare_random_init {
        let cfg = models[0].1.config().clone();
        models.push((
            "random_init",
            crate::backbone::random_backbone(&cfg, plan.seed, device)?,
        ));
    }
    if plan.prefix_len < plan.steps.len() {
        tracing::warn!(
            "{} random step(s) after the deterministic prefix are not applied: probe features are computed once per volume",
            plan.steps.len() - plan.prefix_len
        );
    }
    progress.note(&format!(
        "linear probe: {} / {} / {} volumes, {classes} classes, backbone {} (ViT-{}){}",
        splits[0].len(),
        splits[1].len(),
        splits[2].len(),
        weights.display(),
        p.arch,
        if p.compare_random_init {
            format!(" and its random init (seed {})", plan.seed)
        } else {
            String::new()
        }
    ));
    let pipeline = Pipeline::new(plan);
    let (feats, skipped) = extract_all(
        &pipeline,
        &models,
        &splits,
        &datalist_path,
        p,
        blocks,
        progress,
    )?;

    let (families, specs) = grid::grid(
        &p.n_last_blocks,
        &p.avgpool,
        &p.learning_rates,
        p.batch_size,
    );
    let mut probed = Vec::new();
    for ((name, _), f) in models.iter().zip(&feats) {
        let [tr, va, te] = std::array::from_fn(|s| build_split(&f[s], &splits[s], &families));
        let cfg = TrainConfig {
            iterations: p.total_iterations(),
            batch_size: p.batch_size,
            eval_period: p.eval_period_iterations,
            seed: plan.seed,
        };
        let bar = progress.bar(cfg.iterations as u64, name);
        let (best, history) = grid::train(&specs, &tr, &va, classes, &cfg, &|_| bar.inc(1))?;
        drop(bar);
        let sel = grid::select(&best.snapshot, &specs, &va, &te);
        let spec = &specs[sel.index];
        let probs: Vec<Vec<f64>> = sel
            .test_logits
            .iter()
            .map(|l| metrics::softmax(l))
            .collect();
        let (per_class, auc) = metrics::ovr_auc(&probs, &te.targets, classes);
        let test_items: Vec<&Item> = f[2].iter().map(|(i, _)| &splits[2][*i]).collect();
        let outcome = Outcome {
            best_classifier: spec.name(),
            n_last_blocks: spec.n_blocks,
            avgpool: spec.avgpool,
            learning_rate: spec.lr,
            best_val_iteration: best.iteration,
            val_accuracy: sel.val_accuracy,
            test_accuracy: sel.test_accuracy,
            test_auc_macro_ovr: auc,
            test_auc_per_class: per_class,
            confusion_matrix: metrics::confusion_matrix(&sel.test_logits, &te.targets, classes),
            test_logits: format!("test_logits_{name}.json"),
            val_accuracy_by_classifier: specs
                .iter()
                .zip(&sel.val_accuracies)
                .map(|(s, a)| (s.name(), serde_json::json!(a)))
                .collect(),
            history,
        };
        probed.push(Probed {
            name,
            outcome,
            test_logits: TestLogits {
                classifier: spec.name(),
                images: test_items.iter().map(|i| i.image.clone()).collect(),
                targets: test_items.iter().map(|i| i.label).collect(),
                logits: sel.test_logits,
            },
        });
    }
    Ok(Report {
        datalist: datalist_path,
        weights,
        output_dir: base.join(&p.output_dir),
        classes,
        class_names: list.classes,
        counts: [feats[0][0].len(), feats[0][1].len(), feats[0][2].len()],
        skipped,
        classifiers: specs.len(),
        probed,
    })
}

/// Prepares every item (in parallel, a chunk at a time) and runs it through
/// every backbone; unreadable or failing items are reported and skipped.
fn extract_all(
    pipeline: &Pipeline,
    models: &[(&str, ViT3d)],
    splits: &[Vec<Item>; 3],
    datalist: &Path,
    p: &LinearProbeConfig,
    blocks: usize,
    progress: &dyn Progress,
) -> Result<(Vec<SplitFeatures>, Vec<serde_json::Value>)> {
    let jobs: Vec<(usize, usize)> = (0..3)
        .flat_map(|s| (0..splits[s].len()).map(move |i| (s, i)))
        .collect();
    let mut feats: Vec<SplitFeatures> = models.iter().map(|_| Default::default()).collect();
    let mut skipped = Vec::new();
    let bar = progress.bar(jobs.len() as u64, "volumes");
    const CHUNK: usize = 8;
    for chunk in jobs.chunks(CHUNK) {
        let prepared: Vec<_> = chunk
            .par_iter()
            .map(|&(s, i)| {
                let e = features::entry(&splits[s][i].image);
                features::prepare(pipeline, &e, datalist, p.image_size)
            })
            .collect();
        let mut ok = Vec::new();
        for (&(s, i), r) in chunk.iter().zip(prepared) {
            match r {
                Ok(img) => ok.push(((s, i), img)),
                Err(e) => {
                    bar.note(&format!("skipped {}: {}", splits[s][i].image, e.chain()));
                    skipped.push(serde_json::json!({
                        "image": splits[s][i].image, "split": SPLITS[s], "reason": e.chain()
                    }));
                }
            }
        }
        // Same-shaped images go through the backbone together.
        let mut start = 0;
        while start < ok.len() {
            let shape = ok[start].1.shape;
            let end = start
                + ok[start..]
                    .iter()
                    .take_while(|(_, im)| im.shape == shape)
                    .count();
            let imgs: Vec<&_> = ok[start..end].iter().map(|(_, im)| im).collect();
            for ((_, vit), f) in models.iter().zip(&mut feats) {
                let out = features::extract(vit, &imgs, blocks).with_context(|| {
                    format!("embedding {}", splits[ok[start].0.0][ok[start].0.1].image)
                })?;
                for (((s, i), _), fe) in ok[start..end].iter().zip(out) {
                    f[*s].push((*i, fe));
                }
            }
            start = end;
        }
        bar.inc(chunk.len() as u64);
    }
    drop(bar);
    for (name, s) in SPLITS.iter().zip(&feats[0]) {
        if s.is_empty() {
            bail!("no {name} volume could be read");
        }
    }
    Ok((feats, skipped))
}

/// The input matrices (one per family) and targets of one split.
fn build_split(feats: &[(usize, Features)], items: &[Item], families: &[(usize, bool)]) -> Split {
    Split {
        inputs: families
            .iter()
            .map(|&(n, a)| {
                let rows: Vec<Vec<f32>> = feats.iter().map(|(_, f)| f.linear_input(n, a)).collect();
                Matrix {
                    dim: rows.first().map_or(0, Vec::len),
                    data: rows.concat(),
                }
            })
            .collect(),
        targets: feats.iter().map(|(i, _)| items[*i].label).collect(),
    }
}
