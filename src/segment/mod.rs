//! `task: segment`: finetunes a segmentation head on a pretrained backbone
//! (3DINO's `segmentation3d.py`, spec §4.2). The backbone is frozen unless
//! `train_feature_model`; training draws pos/neg crops, AdamW runs a linear
//! warm-up then cosine decay, validation runs a sliding window every
//! `eval_iters` and keeps the best head, and the test set is predicted with
//! that head: Dice and HD95 per class, predictions as NIfTI with each case's
//! affine, `results.json` and `curves.png`.

mod crops;
pub(crate) mod data;
mod plot;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, bail};
use dino3d_model::candle_core::{DType, Device, Tensor};
use dino3d_model::candle_nn::{AdamW, Optimizer, ParamsAdamW, VarMap};
use dino3d_model::infer::{
    Blend, DiceOptions, SlidingWindow, dice_labels, dice_masks, hd95, hd95_per_class,
    mean_ignoring_nan, sigmoid_masks,
};
use dino3d_model::init::seeded_var_builder;
use dino3d_model::seg::adapter::frozen_backbone;
use dino3d_model::seg::{
    LinearDecoderHead, LinearHeadConfig, UnetrConfig, UnetrHead, VitAdapterConfig, VitAdapterHead,
    brats_regions_tensor, dice_ce, is_buffer, last_levels, sigmoid_dice, unetr_levels, vit_levels,
};
use dino3d_model::{ViT3d, ViT3dConfig};
use dino3d_pipeline::exec::Pipeline;
use dino3d_pipeline::recipe::{Plan, SegmentData, SegmentPlan};
use dino3d_pipeline::{Volume, VolumeMeta, VoxelData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use data::{SegCase, SegData};

/// What the head predicts.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Target {
    /// One class per voxel (softmax, DiceCE).
    Classes(usize),
    /// BraTS's overlapping TC / WT / ET regions from labels 1, 2, 3 (sigmoid
    /// per channel, squared-prediction Dice).
    BratsRegions,
}

impl Target {
    /// Output channels.
    fn channels(self) -> usize {
        match self {
            Target::Classes(k) => k,
            Target::BratsRegions => 3,
        }
    }

    /// The training loss of logits `(n, K, r, r, r)` against labels `(n, r³)`.
    fn loss(self, logits: &Tensor, labels: &Tensor) -> anyhow::Result<Tensor> {
        Ok(match self {
            Target::Classes(_) => dice_ce(logits, labels)?,
            Target::BratsRegions => {
                let regions = brats_regions_tensor(labels, DType::F32)?.reshape(logits.shape())?;
                sigmoid_dice(logits, &regions)?
            }
        })
    }
}

/// BraTS regions of a label map as three channel-first masks (TC, WT, ET).
fn brats_masks(labels: &[u16]) -> Vec<bool> {
    const REGIONS: [&[u16]; 3] = [&[1, 3], &[1, 2, 3], &[3]];
    REGIONS
        .iter()
        .flat_map(|set| labels.iter().map(move |l| set.contains(l)))
        .collect()
}

/// Region masks back to BraTS labels: 3 where ET, else 1 where TC, else 2
/// where WT (the inverse of [`brats_masks`] on consistent masks).
fn brats_labels(masks: &[bool]) -> Vec<u16> {
    let n = masks.len() / 3;
    let (tc, wt, et) = (&masks[..n], &masks[n..2 * n], &masks[2 * n..]);
    (0..n)
        .map(|i| match (tc[i], wt[i], et[i]) {
            (_, _, true) => 3,
            (true, _, false) => 1,
            (false, true, false) => 2,
            _ => 0,
        })
        .collect()
}

/// A case's prediction.
enum Prediction {
    /// Class per voxel.
    Labels(Vec<u16>),
    /// Channel-first binary masks (one per region).
    Regions(Vec<bool>),
}

/// One case scored: Dice and HD95 per class (or region), and the label map
/// written as the prediction.
struct Scored {
    dice: Vec<f64>,
    hd95_mm: Vec<f64>,
    labels: Vec<u16>,
}

fn score(pred: Prediction, case: &SegCase, target: Target, with_hd95: bool) -> Scored {
    let spatial = [case.shape[1], case.shape[2], case.shape[3]];
    match (pred, target) {
        (Prediction::Labels(p), Target::Classes(k)) => Scored {
            dice: dice_labels(&p, &case.labels, k, DiceOptions::default()),
            hd95_mm: if with_hd95 {
                hd95_per_class(&p, &case.labels, k, true, spatial, case.spacing)
            } else {
                Vec::new()
            },
            labels: p,
        },
        (Prediction::Regions(p), _) => {
            let truth = brats_masks(&case.labels);
            let n = case.labels.len();
            let hd95_mm = if with_hd95 {
                (0..3)
                    .map(|r| {
                        let at = r * n..(r + 1) * n;
                        hd95(&p[at.clone()], &truth[at], spatial, case.spacing)
                    })
                    .collect()
            } else {
                Vec::new()
            };
            Scored {
                dice: dice_masks(&p, &truth, 3, DiceOptions::default()),
                hd95_mm,
                labels: brats_labels(&p),
            }
        }
        (Prediction::Labels(_), Target::BratsRegions) => {
            unreachable!("region targets predict masks")
        }
    }
}

/// A segmentation head.
enum Head {
    /// UNETR (features of four evenly spaced blocks and the raw input).
    Unetr(Box<UnetrHead>),
    /// 3DINO's linear decoder (the last four blocks, batch norm, 1³ conv).
    Linear(LinearDecoderHead),
    /// ViT-Adapter + UNETR: runs the backbone's blocks itself, between its
    /// injectors and extractors.
    Adapter(Box<VitAdapterHead>),
}

/// The backbone and head being finetuned.
struct Model {
    backbone: ViT3d,
    head: Head,
    head_vars: VarMap,
    train_backbone: bool,
    target: Target,
}

impl Model {
    /// Logits `(n, K, r, r, r)` for `x (n, C, r, r, r)`; `train` picks batch
    /// statistics in the linear head's batch norm.
    fn logits_t(&self, x: &Tensor, train: bool) -> anyhow::Result<Tensor> {
        let depth = self.backbone.depth();
        let indices = match &self.head {
            Head::Unetr(_) => unetr_levels(depth),
            Head::Linear(_) => last_levels(depth),
            // Gradients reach the injectors through the blocks, so the
            // backbone's activations cannot be detached; a frozen backbone is
            // a copy with detached weights instead (see `build_model`).
            Head::Adapter(h) => return Ok(h.forward_t(&self.backbone, x, train)?),
        };
        let mut levels = vit_levels(&self.backbone, x, &indices)?;
        if !self.train_backbone {
            levels = levels.into_iter().map(|t| t.detach()).collect();
        }
        Ok(match &self.head {
            Head::Unetr(h) => h.forward(x, &levels)?,
            Head::Adapter(_) => unreachable!("returned above"),
            Head::Linear(h) => {
                let (n, _, sx, sy, sz) = x.dims5()?;
                h.forward_t(&levels, n, [sx, sy, sz], train)?
            }
        })
    }

    /// Inference logits.
    fn logits(&self, x: &Tensor) -> anyhow::Result<Tensor> {
        self.logits_t(x, false)
    }

    /// A case's prediction by sliding window: a label map `(X, Y, Z)`, or
    /// region masks `(3, X, Y, Z)`.
    fn predict(&self, case: &SegCase, sw: &SlidingWindow) -> anyhow::Result<Prediction> {
        let [c, x, y, z] = case.shape;
        let input = Tensor::from_slice(&case.image, (1, c, x, y, z), &Device::Cpu)?;
        let logits = sw.run(&input, |w| {
            self.logits(w)
                .map(|t| t.detach())
                .map_err(|e| dino3d_model::ModelError::Input(format!("{e:#}")))
        })?;
        if self.target == Target::BratsRegions {
            let values: Vec<f32> = logits.flatten_all()?.to_vec1()?;
            return Ok(Prediction::Regions(sigmoid_masks(&values)));
        }
        let labels: Vec<u32> = logits.argmax(1)?.flatten_all()?.to_vec1()?;
        Ok(Prediction::Labels(
            labels.into_iter().map(|l| l as u16).collect(),
        ))
    }
}

/// One test case's scores.
#[derive(Debug, Serialize)]
struct CaseScores {
    name: String,
    dice: Vec<f64>,
    mean_dice: f64,
    hd95_mm: Vec<f64>,
    prediction: PathBuf,
}

/// `results.json`.
#[derive(Debug, Serialize)]
struct Results {
    task: &'static str,
    backbone: String,
    arch: String,
    head: String,
    classes: Vec<String>,
    iterations: usize,
    loss_curve: Vec<(usize, f64)>,
    val_dice_curve: Vec<(usize, f64)>,
    best_iteration: usize,
    best_val_dice: f64,
    test: Vec<CaseScores>,
    test_mean_dice: f64,
    test_dice_per_class: Vec<f64>,
    test_hd95_per_class_mm: Vec<f64>,
    seconds: f64,
    train_seconds_per_iteration: f64,
    validation_seconds: f64,
    test_seconds: f64,
}

/// `task: segment`.
pub(crate) fn run(plan: &Plan, recipe: &Path) -> anyhow::Result<ExitCode> {
    let s = plan
        .segment
        .clone()
        .context("task segment needs a `segment:` section")?;
    let base = recipe.parent().unwrap_or(Path::new(""));
    let out = base.join(&s.output_dir);
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let started = Instant::now();
    if plan.prefix_len < plan.steps.len() || !plan.views.is_empty() {
        eprintln!(
            "warning: {}: task segment prepares volumes with the pipeline's deterministic \
             prefix ({} of {} steps); the random steps and views are not applied",
            recipe.display(),
            plan.prefix_len,
            plan.steps.len()
        );
    }
    let data = load_data(plan, &s, base)?;
    let target = match s.regions.as_deref() {
        Some("brats") => Target::BratsRegions,
        _ => Target::Classes(data.classes.len()),
    };
    let classes = target.channels();
    eprintln!(
        "segmentation: {} training, {} validation, {} test volumes, {classes} classes",
        data.train.len(),
        data.val.len(),
        data.test.len()
    );
    let device = Device::Cpu;
    let (model, mut vars) = build_model(plan, &s, base, data.train[0].shape[0], target, &device)?;
    let roi = s.image_size;
    let window = |overlap: f64| SlidingWindow {
        roi: [roi; 3],
        batch: s.batch_size * s.crops_per_volume,
        overlap,
        blend: if s.blend == "gaussian" {
            Blend::GAUSSIAN
        } else {
            Blend::Constant
        },
        pad_value: -1.0,
    };
    // Batch-norm running statistics live in the VarMap but are not trained.
    let head_params: Vec<_> = {
        let data = model.head_vars.data().lock().expect("head variables");
        data.iter()
            .filter(|(name, _)| !is_buffer(name))
            .map(|(_, v)| v.clone())
            .collect()
    };
    if s.train_feature_model {
        vars.extend(head_params);
    } else {
        vars = head_params;
    }
    let mut opt = AdamW::new(
        vars,
        ParamsAdamW {
            lr: 0.0,
            weight_decay: s.weight_decay,
            ..ParamsAdamW::default()
        },
    )?;
    let mut rng = ChaCha8Rng::seed_from_u64(plan.seed);
    let best_path = out.join("best_head.safetensors");
    let (mut losses, mut val_curve) = (Vec::new(), Vec::new());
    let (mut best_dice, mut best_it) = (f64::NEG_INFINITY, 0);
    let bar = crate::progress::bar(s.iterations as u64, "finetuning");
    let (mut train_seconds, mut val_seconds) = (0.0, 0.0);
    for it in 0..s.iterations {
        let t0 = Instant::now();
        opt.set_learning_rate(learning_rate(&s, it));
        let (x, y) = training_batch(&data.train, &s, &mut rng)?;
        let loss_t = target.loss(&model.logits_t(&x, true)?, &y)?;
        // Checked before stepping: a non-finite loss never reaches the weights.
        let loss = f64::from(loss_t.to_scalar::<f32>()?);
        if !loss.is_finite() {
            bail!("iteration {it}: the loss is {loss}; the head was not updated");
        }
        opt.backward_step(&loss_t)?;
        losses.push((it, loss));
        train_seconds += t0.elapsed().as_secs_f64();
        bar.set_message(format!("loss {loss:.4}"));
        bar.inc(1);
        if (it + 1) % s.eval_iters == 0 || it + 1 == s.iterations {
            let t0 = Instant::now();
            let dice = mean_dice(&model, &data.val, &window(s.val_overlap))?;
            val_seconds += t0.elapsed().as_secs_f64();
            val_curve.push((it + 1, dice));
            bar.suspend(|| eprintln!("iteration {}: validation Dice {dice:.4}", it + 1));
            // A NaN score (no class in the validation truth) still leaves a head to test.
            if dice > best_dice || best_it == 0 {
                (best_dice, best_it) = (dice, it + 1);
                model.head_vars.save(&best_path)?;
            }
        }
    }
    bar.finish_and_clear();
    // Test with the best head.
    let mut head_vars = model.head_vars.clone();
    head_vars
        .load(&best_path)
        .with_context(|| format!("reloading {}", best_path.display()))?;
    let sw = window(s.test_overlap);
    let t_test = Instant::now();
    let mut test = Vec::new();
    for case in &data.test {
        let scored = score(model.predict(case, &sw)?, case, target, true);
        let path = out.join(format!("{}_pred.nii.gz", case.name));
        write_prediction(&path, &scored.labels, case)?;
        test.push(CaseScores {
            name: case.name.clone(),
            mean_dice: mean_ignoring_nan(&scored.dice),
            dice: scored.dice,
            hd95_mm: scored.hd95_mm,
            prediction: path,
        });
    }
    let test_seconds = t_test.elapsed().as_secs_f64();
    let per_class = |f: fn(&CaseScores) -> &Vec<f64>| -> Vec<f64> {
        (0..classes)
            .map(|k| mean_ignoring_nan(&test.iter().map(|c| f(c)[k]).collect::<Vec<_>>()))
            .collect()
    };
    let results = Results {
        task: "segment",
        backbone: s.pretrained_weights.clone(),
        arch: s.arch.clone(),
        head: s.head.clone(),
        classes: match target {
            Target::BratsRegions => vec!["TC".into(), "WT".into(), "ET".into()],
            Target::Classes(_) => data.classes.clone(),
        },
        iterations: s.iterations,
        loss_curve: losses,
        val_dice_curve: val_curve,
        best_iteration: best_it,
        best_val_dice: best_dice,
        test_mean_dice: mean_ignoring_nan(&test.iter().map(|c| c.mean_dice).collect::<Vec<_>>()),
        test_dice_per_class: per_class(|c| &c.dice),
        test_hd95_per_class_mm: per_class(|c| &c.hd95_mm),
        test,
        seconds: started.elapsed().as_secs_f64(),
        train_seconds_per_iteration: train_seconds / s.iterations as f64,
        validation_seconds: val_seconds,
        test_seconds,
    };
    plot::curves(
        &results.loss_curve,
        &results.val_dice_curve,
        &out.join("curves.png"),
    )?;
    let json = out.join("results.json");
    std::fs::write(&json, serde_json::to_string_pretty(&results)?)
        .with_context(|| format!("writing {}", json.display()))?;
    println!(
        "best validation Dice {:.4} (iteration {}); test mean Dice {:.4}, per class {:?}",
        results.best_val_dice,
        results.best_iteration,
        results.test_mean_dice,
        results
            .test_dice_per_class
            .iter()
            .map(|d| (d * 1000.0).round() / 1000.0)
            .collect::<Vec<_>>()
    );
    println!("-> {}", json.display());
    Ok(ExitCode::SUCCESS)
}

/// The volumes: a datalist through the recipe's pipeline, or a bundled set.
fn load_data(plan: &Plan, s: &SegmentPlan, base: &Path) -> anyhow::Result<SegData> {
    match &s.data {
        SegmentData::Datalist(list) => {
            let classes = s
                .classes
                .context("`segment.classes` is required with a datalist")?;
            let keys = data::DatalistKeys::from_plan(&plan.keys, &plan.label_keys)?;
            data::from_datalist(&Pipeline::new(plan), &base.join(list), classes, &keys)
        }
        SegmentData::Builtin(name) => {
            let dir = [base.join("../data"), PathBuf::from("data")]
                .into_iter()
                .find(|d| d.join("volumes").is_dir())
                .context("the bundled data folder (data/volumes) was not found")?;
            let data = match name.as_str() {
                "mni152_tissue" => data::mni152_tissue(&dir, s.spacing_mm)?,
                other => bail!("unknown bundled dataset `{other}`"),
            };
            if let Some(k) = s.classes
                && k != data.classes.len()
            {
                bail!(
                    "segment.classes is {k} but `{name}` has {} classes ({:?})",
                    data.classes.len(),
                    data.classes
                );
            }
            Ok(data)
        }
    }
}

/// The backbone (pretrained, or seeded random) and a seeded head; returns the
/// backbone's trainable variables too.
fn build_model(
    plan: &Plan,
    s: &SegmentPlan,
    base: &Path,
    in_channels: usize,
    target: Target,
    device: &Device,
) -> anyhow::Result<(Model, Vec<dino3d_model::candle_core::Var>)> {
    let classes = target.channels();
    let (backbone, backbone_vars) = if s.pretrained_weights == "random" {
        let cfg = ViT3dConfig::from_preset(&s.arch)?.with_img_size(s.image_size);
        let vm = VarMap::new();
        let vb = seeded_var_builder(&vm, plan.seed, DType::F32, device);
        (ViT3d::new(cfg, vb.pp("backbone"))?, vm)
    } else {
        let given = base.join(&s.pretrained_weights);
        let file = if given.is_dir() {
            crate::probe::newest_weights(&given)?
        } else {
            given
        };
        eprintln!("backbone: {}", file.display());
        crate::backbone::load_with_varmap(&file, &s.arch, device)?
    };
    // The adapter runs the backbone's blocks between its own layers, so a
    // frozen backbone there is a copy built from detached weights (no
    // gradient, and no backward work, for the ViT's variables).
    let backbone = if s.head == "vit_adapter" && !s.train_feature_model {
        let unprefixed = VarMap::new();
        {
            let from = backbone_vars.data().lock().expect("backbone variables");
            let mut to = unprefixed.data().lock().expect("backbone variables");
            for (name, var) in from.iter() {
                let name = name.strip_prefix("backbone.").unwrap_or(name);
                to.insert(name.to_string(), var.clone());
            }
        }
        frozen_backbone(backbone.config().clone(), &unprefixed, device)?
    } else {
        backbone
    };
    let head_vars = VarMap::new();
    let vb = seeded_var_builder(&head_vars, plan.seed ^ 0x5e9, DType::F32, device).pp("head");
    let embed_dim = backbone.config().embed_dim;
    let head = match s.head.as_str() {
        "linear" => Head::Linear(LinearDecoderHead::new(
            LinearHeadConfig {
                in_channels,
                embed_dim,
                patch_size: backbone.config().patch_size,
                classes,
            },
            vb,
        )?),
        "vit_adapter" => Head::Adapter(Box::new(VitAdapterHead::new(
            VitAdapterConfig {
                feature_size: s.feature_size,
                ..VitAdapterConfig::for_vit(backbone.config(), in_channels, classes)
            },
            vb,
        )?)),
        _ => Head::Unetr(Box::new(UnetrHead::new(
            UnetrConfig {
                in_channels,
                embed_dim,
                feature_size: s.feature_size,
                classes,
            },
            vb,
        )?)),
    };
    Ok((
        Model {
            backbone,
            head,
            head_vars,
            train_backbone: s.train_feature_model,
            target,
        },
        backbone_vars.all_vars(),
    ))
}

/// MONAI's WarmupCosineSchedule: linear from 0 over the warm-up, then a
/// half cosine to 0 at the last iteration.
fn learning_rate(s: &SegmentPlan, it: usize) -> f64 {
    let warm = s.warmup_iters.min(s.iterations);
    if it < warm {
        return s.learning_rate * it as f64 / warm.max(1) as f64;
    }
    let progress = (it - warm) as f64 / (s.iterations - warm).max(1) as f64;
    s.learning_rate * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
}

/// The recipe's training-time augmentation.
fn augmentation(s: &SegmentPlan) -> crops::Augment {
    crops::Augment {
        flip_prob: s.flip_prob,
        rot90_prob: s.rot90_prob,
        scale: s.intensity_scale.0,
        scale_prob: s.intensity_scale.1,
        shift: s.intensity_shift.0,
        shift_prob: s.intensity_shift.1,
    }
}

/// `batch_size` volumes × `crops_per_volume` crops: images `(n, C, r, r, r)`
/// and labels `(n, r³)`.
fn training_batch(
    cases: &[SegCase],
    s: &SegmentPlan,
    rng: &mut ChaCha8Rng,
) -> anyhow::Result<(Tensor, Tensor)> {
    let r = s.image_size;
    let (mut images, mut labels) = (Vec::new(), Vec::new());
    for _ in 0..s.batch_size {
        let case = &cases[rng.random_range(0..cases.len())];
        for i in 0..s.crops_per_volume {
            let mut crop = crops::random_crop(case, r, i, rng);
            crops::augment(&mut crop, case.shape[0], r, &augmentation(s), rng);
            images.extend(crop.image);
            labels.extend(crop.labels.into_iter().map(u32::from));
        }
    }
    let n = s.batch_size * s.crops_per_volume;
    let c = cases[0].shape[0];
    Ok((
        Tensor::from_vec(images, (n, c, r, r, r), &Device::Cpu)?,
        Tensor::from_vec(labels, (n, r * r * r), &Device::Cpu)?,
    ))
}

/// Mean over cases of the mean Dice over classes (or regions).
fn mean_dice(model: &Model, cases: &[SegCase], sw: &SlidingWindow) -> anyhow::Result<f64> {
    let mut per_case = Vec::new();
    for case in cases {
        let scored = score(model.predict(case, sw)?, case, model.target, false);
        per_case.push(mean_ignoring_nan(&scored.dice));
    }
    Ok(mean_ignoring_nan(&per_case))
}

/// A label map as uint16 NIfTI on the case's grid.
fn write_prediction(path: &Path, labels: &[u16], case: &SegCase) -> anyhow::Result<()> {
    let spatial = [case.shape[1], case.shape[2], case.shape[3]];
    let vol = Volume {
        data: VoxelData::U16(data::to_file_layout(labels, spatial).into()),
        shape: [1, spatial[0], spatial[1], spatial[2]],
        spacing: case.spacing,
        affine: case.affine,
        scaling: None,
        meta: VolumeMeta {
            qform_code: 1,
            sform_code: 1,
            ..VolumeMeta::default()
        },
    };
    dino3d_pipeline::nifti::write_volume(path, &vol, &Default::default())
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> SegmentPlan {
        SegmentPlan {
            data: SegmentData::Builtin("mni152_tissue".into()),
            pretrained_weights: "random".into(),
            arch: "tiny".into(),
            head: "unetr".into(),
            classes: None,
            regions: None,
            feature_size: 4,
            image_size: 32,
            batch_size: 1,
            crops_per_volume: 2,
            iterations: 110,
            learning_rate: 1e-3,
            warmup_iters: 10,
            weight_decay: 0.01,
            eval_iters: 50,
            val_overlap: 0.0,
            test_overlap: 0.5,
            blend: "constant".into(),
            train_feature_model: false,
            spacing_mm: 2.0,
            flip_prob: 0.0,
            rot90_prob: 0.0,
            intensity_scale: (0.1, 0.0),
            intensity_shift: (0.1, 0.0),
            output_dir: "o".into(),
        }
    }

    #[test]
    fn the_schedule_warms_up_linearly_then_decays_to_zero() {
        let s = plan();
        assert_eq!(learning_rate(&s, 0), 0.0);
        assert!((learning_rate(&s, 5) - 5e-4).abs() < 1e-15);
        assert!((learning_rate(&s, 10) - 1e-3).abs() < 1e-15);
        assert!((learning_rate(&s, 60) - 5e-4).abs() < 1e-12, "half way");
        assert!(learning_rate(&s, 109) < 1e-6);
    }

    #[test]
    fn brats_regions_round_trip_and_score_per_region() {
        // Labels 0..3 → TC {1,3}, WT {1,2,3}, ET {3}, channel first.
        let labels = [0u16, 1, 2, 3];
        let masks = brats_masks(&labels);
        assert_eq!(
            masks,
            [
                false, true, false, true, // TC
                false, true, true, true, // WT
                false, false, false, true, // ET
            ]
        );
        assert_eq!(brats_labels(&masks), labels);
        // Score a prediction against a 2×2×1 case: the truth has every label
        // once; the prediction misses the necrosis (1 → 0).
        let case = SegCase {
            name: "c".into(),
            image: vec![0.0; 4],
            labels: labels.to_vec(),
            shape: [1, 2, 2, 1],
            spacing: [1.0; 3],
            affine: dino3d_pipeline::nifti::affine::IDENTITY,
        };
        let pred = brats_masks(&[0, 0, 2, 3]);
        let scored = score(Prediction::Regions(pred), &case, Target::BratsRegions, true);
        // TC: truth {1,3}, pred {3} → 2·1/(1+2); WT: truth {1,2,3}, pred {2,3}
        // → 2·2/(2+3); ET: exact.
        let expect = [2.0 / 3.0, 4.0 / 5.0, 1.0];
        for (d, e) in scored.dice.iter().zip(expect) {
            assert!((d - e).abs() < 1e-12, "{:?}", scored.dice);
        }
        assert_eq!(scored.hd95_mm.len(), 3);
        assert_eq!(scored.hd95_mm[2], 0.0, "identical ET masks");
        assert_eq!(scored.labels, [0, 0, 2, 3]);
    }

    #[test]
    fn the_region_loss_trains_sigmoid_channels_against_brats_regions() {
        // Logits strongly agreeing with the regions give a loss near 0,
        // the opposite ones near 1.
        let labels = Tensor::new(&[[0u32, 1, 2, 3, 3, 0, 2, 1]], &Device::Cpu).unwrap();
        let masks = brats_masks(&[0, 1, 2, 3, 3, 0, 2, 1]);
        let logits: Vec<f32> = masks
            .iter()
            .map(|&m| if m { 20.0 } else { -20.0 })
            .collect();
        let good = Tensor::from_vec(logits.clone(), (1, 3, 2, 2, 2), &Device::Cpu).unwrap();
        let bad = good.neg().unwrap();
        let loss = |l: &Tensor| {
            Target::BratsRegions
                .loss(l, &labels)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        assert!(loss(&good) < 1e-4, "{}", loss(&good));
        assert!(loss(&bad) > 0.99, "{}", loss(&bad));
        assert_eq!(Target::BratsRegions.channels(), 3);
        assert_eq!(Target::Classes(5).channels(), 5);
    }
}
