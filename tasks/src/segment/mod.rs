//! `task: segment`: finetunes a segmentation head on a pretrained backbone
//! (3DINO's `segmentation3d.py`, spec §4.2). The backbone is frozen unless
//! `train_feature_model`; training draws pos/neg crops ([`crops`]), AdamW
//! runs a linear warm-up then cosine decay (MONAI's schedule, the one cosine
//! schedule of the model crate), validation runs a sliding window every
//! `eval_iters` and keeps the best head (`best_head.safetensors` in the
//! output folder), and the test set is predicted with that head: Dice and
//! HD95 per class, and each case's prediction with its affine. The binary
//! writes `results.json`, the predictions and `curves.png`.

pub mod config;
mod crops;
pub(crate) mod data;
mod model;

use std::path::{Path, PathBuf};
use std::time::Instant;

use dino3d_model::candle_core::{Device, Tensor};
use dino3d_model::candle_nn::{AdamW, Optimizer, ParamsAdamW};
use dino3d_model::infer::{Blend, SlidingWindow, mean_ignoring_nan};
use dino3d_model::schedule::{CosineSchedule, Warmup};
use dino3d_model::seg::is_buffer;
use dino3d_pipeline::exec::Pipeline;
use dino3d_pipeline::layout::to_x_fastest;
use dino3d_pipeline::recipe::Plan;
use dino3d_pipeline::{Volume, VolumeMeta, VoxelData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::error::{Context, Result, bail};
use crate::progress::Progress;
use config::{SegmentConfig, SegmentData};
use data::{SegCase, SegData};
use model::{Model, Target, build_model, score};

/// One test case's scores.
#[derive(Debug, Clone, Serialize)]
pub struct CaseScores {
    /// The case.
    pub name: String,
    /// Dice per class (or region).
    pub dice: Vec<f64>,
    /// Their mean (NaN ignored).
    pub mean_dice: f64,
    /// HD95 per class (or region), in mm.
    pub hd95_mm: Vec<f64>,
    /// Where its prediction is written.
    pub prediction: PathBuf,
}

/// `results.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Results {
    /// `segment`.
    pub task: &'static str,
    /// The backbone, as the recipe names it.
    pub backbone: String,
    /// Its preset.
    pub arch: String,
    /// The head.
    pub head: String,
    /// Class (or region) names.
    pub classes: Vec<String>,
    /// Training iterations.
    pub iterations: usize,
    /// `(iteration, loss)` of every iteration.
    pub loss_curve: Vec<(usize, f64)>,
    /// `(iterations done, mean validation Dice)`.
    pub val_dice_curve: Vec<(usize, f64)>,
    /// When the best head was saved.
    pub best_iteration: usize,
    /// Its validation Dice.
    pub best_val_dice: f64,
    /// Every test case.
    pub test: Vec<CaseScores>,
    /// Mean over test cases.
    pub test_mean_dice: f64,
    /// Mean Dice per class over test cases.
    pub test_dice_per_class: Vec<f64>,
    /// Mean HD95 per class over test cases.
    pub test_hd95_per_class_mm: Vec<f64>,
    /// Seconds of the whole task.
    pub seconds: f64,
    /// Seconds per training iteration.
    pub train_seconds_per_iteration: f64,
    /// Seconds of validation.
    pub validation_seconds: f64,
    /// Seconds of the test predictions.
    pub test_seconds: f64,
}

/// What the task produced.
#[derive(Debug, Clone)]
pub struct Report {
    /// The output folder.
    pub out: PathBuf,
    /// The scores and curves.
    pub results: Results,
    /// Each test case's label map, at the path its scores name.
    pub predictions: Vec<(PathBuf, Volume)>,
}

/// Runs `task: segment`.
///
/// # Errors
/// Unreadable data or weights, bad settings, a non-finite loss.
pub fn run(
    plan: &Plan,
    s: &SegmentConfig,
    recipe: &Path,
    progress: &dyn Progress,
    device: &Device,
) -> Result<Report> {
    let base = recipe.parent().unwrap_or(Path::new(""));
    let out = base.join(&s.output_dir);
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let started = Instant::now();
    if plan.prefix_len < plan.steps.len() || !plan.views.is_empty() {
        progress.note(&format!(
            "warning: {}: task segment prepares volumes with the pipeline's deterministic \
             prefix ({} of {} steps); the random steps and views are not applied",
            recipe.display(),
            plan.prefix_len,
            plan.steps.len()
        ));
    }
    let data = load_data(plan, s, base, progress)?;
    let target = match s.regions.as_deref() {
        Some("brats") => Target::BratsRegions,
        _ => Target::Classes(data.classes.len()),
    };
    let classes = target.channels();
    progress.note(&format!(
        "segmentation: {} training, {} validation, {} test volumes, {classes} classes",
        data.train.len(),
        data.val.len(),
        data.test.len()
    ));
    let (model, mut vars) = build_model(
        plan,
        s,
        base,
        data.train[0].shape[0],
        target,
        device,
        progress,
    )?;
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
    let lr = schedule(s);
    let mut rng = ChaCha8Rng::seed_from_u64(plan.seed);
    let best_path = out.join("best_head.safetensors");
    let (mut losses, mut val_curve) = (Vec::new(), Vec::new());
    let (mut best_dice, mut best_it) = (f64::NEG_INFINITY, 0);
    let bar = progress.bar(s.iterations as u64, "finetuning");
    let (mut train_seconds, mut val_seconds) = (0.0, 0.0);
    for it in 0..s.iterations {
        let t0 = Instant::now();
        opt.set_learning_rate(lr.at(it));
        let (x, y) = training_batch(&data.train, s, &mut rng, device)?;
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
            bar.note(&format!("iteration {}: validation Dice {dice:.4}", it + 1));
            // A NaN score (no class in the validation truth) still leaves a head to test.
            if dice > best_dice || best_it == 0 {
                (best_dice, best_it) = (dice, it + 1);
                model.head_vars.save(&best_path)?;
            }
        }
    }
    drop(bar);
    // Test with the best head.
    let mut head_vars = model.head_vars.clone();
    head_vars
        .load(&best_path)
        .with_context(|| format!("reloading {}", best_path.display()))?;
    let sw = window(s.test_overlap);
    let t_test = Instant::now();
    let mut test = Vec::new();
    let mut predictions = Vec::new();
    for case in &data.test {
        let scored = score(model.predict(case, &sw)?, case, target, true);
        let path = out.join(format!("{}_pred.nii.gz", case.name));
        predictions.push((path.clone(), prediction_volume(&scored.labels, case)));
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
    Ok(Report {
        out,
        results,
        predictions,
    })
}

/// The volumes: a datalist through the recipe's pipeline, or a bundled set.
fn load_data(
    plan: &Plan,
    s: &SegmentConfig,
    base: &Path,
    progress: &dyn Progress,
) -> Result<SegData> {
    match &s.data {
        SegmentData::Datalist(list) => {
            let classes = s
                .classes
                .context("`segment.classes` is required with a datalist")?;
            let keys = data::DatalistKeys::from_plan(&plan.keys, &plan.label_keys)?;
            data::from_datalist(
                &Pipeline::new(plan),
                &base.join(list),
                classes,
                &keys,
                progress,
            )
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

/// MONAI's WarmupCosineSchedule: linear from 0 over the warm-up, then a
/// half cosine to 0 at the last iteration.
fn schedule(s: &SegmentConfig) -> CosineSchedule {
    CosineSchedule::new(s.learning_rate, 0.0, s.iterations, s.warmup_iters, 0.0)
        .with_warmup(Warmup::Fraction)
}

/// The recipe's training-time augmentation.
fn augmentation(s: &SegmentConfig) -> crops::Augment {
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
    s: &SegmentConfig,
    rng: &mut ChaCha8Rng,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
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
        Tensor::from_vec(images, (n, c, r, r, r), device)?,
        Tensor::from_vec(labels, (n, r * r * r), device)?,
    ))
}

/// Mean over cases of the mean Dice over classes (or regions).
fn mean_dice(model: &Model, cases: &[SegCase], sw: &SlidingWindow) -> Result<f64> {
    let mut per_case = Vec::new();
    for case in cases {
        let scored = score(model.predict(case, sw)?, case, model.target, false);
        per_case.push(mean_ignoring_nan(&scored.dice));
    }
    Ok(mean_ignoring_nan(&per_case))
}

/// A label map (z fastest) as a uint16 volume on the case's grid.
fn prediction_volume(labels: &[u16], case: &SegCase) -> Volume {
    let spatial = [case.shape[1], case.shape[2], case.shape[3]];
    let shape = [1, spatial[0], spatial[1], spatial[2]];
    Volume {
        data: VoxelData::U16(to_x_fastest(labels, shape).into()),
        shape,
        spacing: case.spacing,
        affine: case.affine,
        scaling: None,
        meta: VolumeMeta {
            qform_code: 1,
            sform_code: 1,
            ..VolumeMeta::default()
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> SegmentConfig {
        SegmentConfig {
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

    fn learning_rate(s: &SegmentConfig, it: usize) -> f64 {
        schedule(s).at(it)
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
}
