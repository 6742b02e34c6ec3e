//! Compiled steps: each validated recipe [`Step`] becomes an [`Op`] with typed
//! parameters, built once, and applied to a [`Sample`] with the draw key of
//! its (sample, view, step).
//!
//! Runs of `RandFlip` / `RandRotate90` are composed into one [`AxisMap`] and
//! applied as one gather (same draws, same result as step by step).

use rand::Rng;

use crate::recipe::Step;
use crate::recipe::value::ParamValue;
use crate::transforms::gaussian_filter::{RandGaussianSharpen, RandGaussianSmooth};
use crate::transforms::gibbs_noise::RandGibbsNoise;
use crate::transforms::rand_crop_by_pos_neg_label::RandCropByPosNegLabel;
use crate::transforms::rand_intensity::{
    RandAdjustContrast, RandGaussianNoise, RandHistogramShift, RandScaleIntensity,
    RandShiftIntensity,
};
use crate::transforms::rand_spatial_crop::RandSpatialCrop;
use crate::transforms::rand_time_frame::{keep_channel, pick_channel};
use crate::transforms::spacing::{Interp, Spacing, SpacingPadding, spacing};
use crate::transforms::{
    AxisMap, CropForeground, DrawKey, Image, NormalizeIntensity, PadMethod, RandomResizedCrop3d,
    ResizeMode, ScaleIntensityRange, ScaleIntensityRangePercentiles, center_spatial_crop,
    crop_foreground, nan_to_mean, normalize_intensity, orientation, permute_in_plane_first, resize,
    scale_intensity_range, scale_intensity_range_percentiles, spatial_pad,
};

use super::sample::Sample;

/// A transform with typed parameters.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// Reading happens before the chain (see `Pipeline::prepare`).
    Load,
    /// Accepted for MONAI recipes; images are channel-first already.
    EnsureChannelFirst,
    /// Keep one channel chosen from the step's draw.
    RandTimeFrame,
    /// NaN to the mean of the rest.
    NanToMean,
    /// Linear intensity window.
    ScaleIntensityRange(ScaleIntensityRange),
    /// Percentile window.
    ScaleIntensityRangePercentiles(ScaleIntensityRangePercentiles),
    /// Z-scoring.
    NormalizeIntensity(NormalizeIntensity),
    /// Reorientation to axis codes.
    Orientation([char; 3]),
    /// 3DINO's axis permutation.
    PermuteInPlaneFirst {
        /// Decide from the shape instead of the spacing.
        use_shape: bool,
    },
    /// Foreground crop (`allow_smaller`, or a margin of 0: clipped to the image).
    CropForeground(CropForeground),
    /// Foreground crop whose box may leave the image (zero-padded).
    CropForegroundPadded(CropForeground),
    /// Constant padding.
    SpatialPad {
        /// Target size (-1 keeps an axis).
        size: [i64; 3],
        /// Where the padding goes.
        method: PadMethod,
        /// Fill value.
        value: f32,
    },
    /// Centre crop.
    CenterSpatialCrop([i64; 3]),
    /// Resampling to a voxel size.
    Spacing(Spacing),
    /// Resizing to a shape.
    Resize {
        /// Target size (-1 keeps an axis).
        size: [i64; 3],
        /// Interpolation of non-label keys.
        mode: ResizeMode,
    },
    /// MONAI's `RandFlip`.
    RandFlip {
        /// Probability.
        prob: f64,
        /// Axes to flip (all three when None).
        axes: Option<Vec<usize>>,
    },
    /// MONAI's `RandRotate90`.
    RandRotate90 {
        /// Probability.
        prob: f64,
        /// Largest number of quarter turns.
        max_k: u32,
        /// The plane.
        axes: (usize, usize),
    },
    /// Random box crop.
    RandSpatialCrop(RandSpatialCrop),
    /// Label-balanced crops.
    RandCropByPosNegLabel {
        /// Parameters.
        params: RandCropByPosNegLabel,
        /// The label key.
        label_key: String,
        /// The image key restricting negatives, if any.
        image_key: Option<String>,
    },
    /// 3DINO's crop.
    RandomResizedCrop3d(RandomResizedCrop3d),
    /// Gamma curve.
    RandAdjustContrast(RandAdjustContrast),
    /// Additive noise.
    RandGaussianNoise(RandGaussianNoise),
    /// Intensity scaling.
    RandScaleIntensity(RandScaleIntensity),
    /// Intensity shift.
    RandShiftIntensity(RandShiftIntensity),
    /// Histogram remap.
    RandHistogramShift(RandHistogramShift),
    /// Gaussian blur.
    RandGaussianSmooth(RandGaussianSmooth),
    /// Unsharp masking.
    RandGaussianSharpen(RandGaussianSharpen),
    /// k-space truncation.
    RandGibbsNoise(RandGibbsNoise),
    /// Pick one child.
    OneOf {
        /// Cumulative weights, normalised to end at 1.
        cumulative: Vec<f64>,
        /// The alternatives.
        children: Vec<CompiledStep>,
    },
    /// Apply all children, or none.
    RandomApply {
        /// Probability.
        prob: f64,
        /// The steps.
        children: Vec<CompiledStep>,
    },
}

/// An [`Op`] with the keys it applies to and its draw number.
#[derive(Debug, Clone, PartialEq)]
pub struct CompiledStep {
    /// The transform's name.
    pub name: &'static str,
    /// The operation.
    pub op: Op,
    /// The keys it transforms.
    pub keys: Vec<String>,
    /// The `transform` field of its draw keys.
    pub id: u32,
}

/// Which keys hold label maps (nearest interpolation).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Context {
    /// Label keys.
    pub label_keys: Vec<String>,
}

impl Context {
    fn is_label(&self, key: &str) -> bool {
        self.label_keys.iter().any(|k| k == key)
    }
}

fn num(step: &Step, name: &str) -> f64 {
    step.params
        .get(name)
        .and_then(ParamValue::as_f64)
        .unwrap_or_else(|| panic!("{}: {name} resolved by the compiler", step.spec.name))
}

fn opt_num(step: &Step, name: &str) -> Option<f64> {
    step.params.get(name).and_then(ParamValue::as_f64)
}

fn flag(step: &Step, name: &str) -> bool {
    matches!(step.params.get(name), Some(ParamValue::Bool(true)))
}

fn text<'a>(step: &'a Step, name: &str) -> &'a str {
    match step.params.get(name) {
        Some(ParamValue::Str(s)) => s,
        _ => "",
    }
}

fn list(step: &Step, name: &str) -> Option<Vec<f64>> {
    match step.params.get(name) {
        Some(ParamValue::List(items)) => items.iter().map(ParamValue::as_f64).collect(),
        _ => None,
    }
}

fn pair(step: &Step, name: &str) -> (f64, f64) {
    let v = list(step, name).unwrap_or_default();
    (v[0], v[1])
}

fn int3(step: &Step, name: &str) -> Option<[i64; 3]> {
    list(step, name).map(|v| [v[0] as i64, v[1] as i64, v[2] as i64])
}

fn keys(step: &Step) -> Vec<String> {
    match step.params.get("keys") {
        Some(ParamValue::List(items)) => items
            .iter()
            .filter_map(|k| match k {
                ParamValue::Str(s) => Some(s.clone()),
                _ => None,
            })
            .collect(),
        _ => vec!["image".into()],
    }
}

impl CompiledStep {
    /// Builds the op of a validated step.
    pub fn new(step: &Step) -> CompiledStep {
        let children = || step.children.iter().map(CompiledStep::new).collect();
        let op = match step.spec.name {
            "LoadImage" => Op::Load,
            "EnsureChannelFirst" => Op::EnsureChannelFirst,
            "RandTimeFrame" => Op::RandTimeFrame,
            "NanToMean" => Op::NanToMean,
            "ScaleIntensityRange" => Op::ScaleIntensityRange(ScaleIntensityRange {
                a_min: num(step, "a_min"),
                a_max: num(step, "a_max"),
                b_min: opt_num(step, "b_min"),
                b_max: opt_num(step, "b_max"),
                clip: flag(step, "clip"),
            }),
            "ScaleIntensityRangePercentiles" => {
                Op::ScaleIntensityRangePercentiles(ScaleIntensityRangePercentiles {
                    lower: num(step, "lower"),
                    upper: num(step, "upper"),
                    b_min: opt_num(step, "b_min"),
                    b_max: opt_num(step, "b_max"),
                    clip: flag(step, "clip"),
                    relative: flag(step, "relative"),
                })
            }
            "NormalizeIntensity" => Op::NormalizeIntensity(NormalizeIntensity {
                subtrahend: opt_num(step, "subtrahend"),
                divisor: opt_num(step, "divisor"),
                nonzero: flag(step, "nonzero"),
                channel_wise: flag(step, "channel_wise"),
            }),
            "Orientation" => {
                let c: Vec<char> = text(step, "axcodes").chars().collect();
                Op::Orientation([c[0], c[1], c[2]])
            }
            "PermuteInPlaneFirst" => Op::PermuteInPlaneFirst {
                use_shape: text(step, "from") == "shape",
            },
            "CropForeground" => {
                let p = CropForeground {
                    threshold: num(step, "threshold") as f32,
                    margin: num(step, "margin") as usize,
                };
                if flag(step, "allow_smaller") || p.margin == 0 {
                    Op::CropForeground(p)
                } else {
                    Op::CropForegroundPadded(p)
                }
            }
            "SpatialPad" => Op::SpatialPad {
                size: int3(step, "spatial_size").unwrap_or([-1; 3]),
                method: if text(step, "method") == "end" {
                    PadMethod::End
                } else {
                    PadMethod::Symmetric
                },
                value: num(step, "value") as f32,
            },
            "CenterSpatialCrop" => Op::CenterSpatialCrop(int3(step, "roi_size").unwrap_or([-1; 3])),
            "Spacing" => {
                let p = list(step, "pixdim").unwrap_or_default();
                Op::Spacing(Spacing {
                    pixdim: [p[0], p[1], p[2]],
                    mode: if text(step, "mode") == "nearest" {
                        Interp::Nearest
                    } else {
                        Interp::Linear
                    },
                    diagonal: flag(step, "diagonal"),
                    padding: if text(step, "padding_mode") == "zeros" {
                        SpacingPadding::Zeros
                    } else {
                        SpacingPadding::Border
                    },
                })
            }
            "Resize" => Op::Resize {
                size: int3(step, "spatial_size").unwrap_or([-1; 3]),
                mode: ResizeMode::parse(text(step, "mode")).unwrap_or(ResizeMode::Area),
            },
            "RandFlip" => Op::RandFlip {
                prob: num(step, "prob"),
                axes: list(step, "spatial_axis").map(|a| a.iter().map(|&x| x as usize).collect()),
            },
            "RandRotate90" => {
                let axes = list(step, "spatial_axes").unwrap_or(vec![0.0, 1.0]);
                Op::RandRotate90 {
                    prob: num(step, "prob"),
                    max_k: num(step, "max_k") as u32,
                    axes: (axes[0] as usize, axes[1] as usize),
                }
            }
            "RandSpatialCrop" => Op::RandSpatialCrop(RandSpatialCrop {
                roi_size: int3(step, "roi_size").unwrap_or([-1; 3]),
                max_roi_size: int3(step, "max_roi_size"),
                random_center: flag(step, "random_center"),
                random_size: flag(step, "random_size"),
            }),
            "RandCropByPosNegLabel" => Op::RandCropByPosNegLabel {
                params: RandCropByPosNegLabel {
                    spatial_size: int3(step, "spatial_size").unwrap_or([-1; 3]),
                    pos: num(step, "pos"),
                    neg: num(step, "neg"),
                    num_samples: num(step, "num_samples") as usize,
                    image_threshold: num(step, "image_threshold"),
                },
                label_key: text(step, "label_key").to_string(),
                image_key: step
                    .params
                    .get("image_key")
                    .map(|_| text(step, "image_key").to_string()),
            },
            "RandomResizedCrop3d" => Op::RandomResizedCrop3d(RandomResizedCrop3d {
                size: num(step, "size") as usize,
                in_slice_scale: pair(step, "in_slice_scale"),
                cross_slice_scale: pair(step, "cross_slice_scale"),
                ratio: pair(step, "ratio"),
            }),
            "RandAdjustContrast" => Op::RandAdjustContrast(RandAdjustContrast {
                prob: num(step, "prob"),
                gamma: pair(step, "gamma"),
                invert_image: flag(step, "invert_image"),
                retain_stats: flag(step, "retain_stats"),
            }),
            "RandGaussianNoise" => Op::RandGaussianNoise(RandGaussianNoise {
                prob: num(step, "prob"),
                mean: num(step, "mean"),
                std: num(step, "std"),
                sample_std: flag(step, "sample_std"),
            }),
            "RandScaleIntensity" => Op::RandScaleIntensity(RandScaleIntensity {
                prob: num(step, "prob"),
                factors: pair(step, "factors"),
            }),
            "RandShiftIntensity" => Op::RandShiftIntensity(RandShiftIntensity {
                prob: num(step, "prob"),
                offsets: pair(step, "offsets"),
            }),
            "RandHistogramShift" => {
                let n = num(step, "num_control_points") as usize;
                Op::RandHistogramShift(RandHistogramShift {
                    prob: num(step, "prob"),
                    num_control_points: (n, n),
                })
            }
            "RandGaussianSmooth" => Op::RandGaussianSmooth(RandGaussianSmooth {
                prob: num(step, "prob"),
                sigma_x: pair(step, "sigma_x"),
                sigma_y: pair(step, "sigma_y"),
                sigma_z: pair(step, "sigma_z"),
            }),
            "RandGaussianSharpen" => Op::RandGaussianSharpen(RandGaussianSharpen {
                prob: num(step, "prob"),
                sigma1_x: pair(step, "sigma1_x"),
                sigma1_y: pair(step, "sigma1_y"),
                sigma1_z: pair(step, "sigma1_z"),
                sigma2_x: pair(step, "sigma2_x"),
                sigma2_y: pair(step, "sigma2_y"),
                sigma2_z: pair(step, "sigma2_z"),
                alpha: pair(step, "alpha"),
            }),
            "RandGibbsNoise" => Op::RandGibbsNoise(RandGibbsNoise {
                prob: num(step, "prob"),
                alpha: pair(step, "alpha"),
            }),
            "OneOf" => {
                let n = step.children.len();
                let weights = list(step, "weights").unwrap_or(vec![1.0; n]);
                let total: f64 = weights.iter().sum();
                let cumulative = weights
                    .iter()
                    .scan(0.0, |acc, w| {
                        *acc += w / total;
                        Some(*acc)
                    })
                    .collect();
                Op::OneOf {
                    cumulative,
                    children: children(),
                }
            }
            "RandomApply" => Op::RandomApply {
                prob: num(step, "prob"),
                children: children(),
            },
            other => unreachable!("registry transform {other} has no op"),
        };
        CompiledStep {
            name: step.spec.name,
            op,
            keys: keys(step),
            id: step.id,
        }
    }

    /// Whether this is a flip or quarter turn (composable into an [`AxisMap`]).
    fn is_axis_move(&self) -> bool {
        matches!(self.op, Op::RandFlip { .. } | Op::RandRotate90 { .. })
    }
}

impl Op {
    /// The axis move drawn for a flip / rotation op (identity for others).
    fn draw_axis_map(&self, rng: &mut impl Rng) -> AxisMap {
        match self {
            Op::RandFlip { prob, axes } => {
                if rng.random::<f64>() >= *prob {
                    return AxisMap::IDENTITY;
                }
                let mut flip = [axes.is_none(); 3];
                for &a in axes.as_deref().unwrap_or(&[]) {
                    flip[a] = true;
                }
                AxisMap::flip(flip)
            }
            Op::RandRotate90 { prob, max_k, axes } => {
                if rng.random::<f64>() >= *prob {
                    return AxisMap::IDENTITY;
                }
                let k = rng.random_range(0..(*max_k).max(1)) + 1;
                AxisMap::rot90(k, *axes)
            }
            _ => AxisMap::IDENTITY,
        }
    }
}

/// Runs `steps` on `sample`; a step producing several samples (e.g.
/// `RandCropByPosNegLabel` with `num_samples > 1`) multiplies the rest.
///
/// # Errors
/// The failing step's name and why.
pub fn run_steps(
    steps: &[CompiledStep],
    sample: Sample,
    key: DrawKey,
    ctx: &Context,
) -> Result<Vec<Sample>, (String, String)> {
    let mut current = vec![sample];
    let mut i = 0;
    while i < steps.len() {
        // Compose a run of flips and quarter turns on the same keys.
        let run = steps[i..]
            .iter()
            .take_while(|s| s.is_axis_move() && s.keys == steps[i].keys)
            .count();
        if run > 1 {
            for s in &mut current {
                let mut map = AxisMap::IDENTITY;
                for st in &steps[i..i + run] {
                    map = map.then(st.op.draw_axis_map(&mut key.for_transform(st.id).rng()));
                }
                if !map.is_identity() {
                    for k in &steps[i].keys {
                        if let Some(img) = s.get_mut(k) {
                            *img = map.apply(img);
                        }
                    }
                }
            }
            i += run;
            continue;
        }
        let step = &steps[i];
        let mut next = Vec::with_capacity(current.len());
        for s in current {
            next.extend(apply(step, s, key, ctx).map_err(|e| (step.name.to_string(), e))?);
        }
        current = next;
        i += 1;
    }
    Ok(current)
}

/// Applies one step (every key with the same draws: each key restarts the
/// step's generator, so same-shaped keys get identical parameters).
fn apply(
    step: &CompiledStep,
    mut sample: Sample,
    key: DrawKey,
    ctx: &Context,
) -> Result<Vec<Sample>, String> {
    let rng = || key.for_transform(step.id).rng();
    match &step.op {
        Op::OneOf {
            cumulative,
            children,
        } => {
            let u = rng().random::<f64>();
            let pick = cumulative
                .iter()
                .position(|&c| u < c)
                .unwrap_or(children.len() - 1);
            return run_steps(&children[pick..=pick], sample, key, ctx)
                .map_err(|(n, e)| format!("{n}: {e}"));
        }
        Op::RandomApply { prob, children } => {
            if rng().random::<f64>() >= *prob {
                return Ok(vec![sample]);
            }
            return run_steps(children, sample, key, ctx).map_err(|(n, e)| format!("{n}: {e}"));
        }
        Op::RandCropByPosNegLabel {
            params,
            label_key,
            image_key,
        } => {
            let label = sample
                .get(label_key)
                .ok_or_else(|| format!("no `{label_key}` in the sample"))?;
            let image = image_key.as_deref().and_then(|k| sample.get(k));
            let boxes = params.draw_boxes(label, image, &mut rng());
            let crops = boxes
                .into_iter()
                .map(|(start, end)| {
                    let mut s = sample.clone();
                    for k in &step.keys {
                        if let Some(img) = s.get_mut(k) {
                            *img = crate::transforms::crop_foreground::crop(img, start, end);
                        }
                    }
                    s
                })
                .collect();
            return Ok(crops);
        }
        _ => {}
    }
    for k in &step.keys {
        let is_label = ctx.is_label(k);
        let Some(img) = sample.get_mut(k) else {
            return Err(format!("no `{k}` in the sample"));
        };
        apply_one(&step.op, img, &mut rng(), is_label)?;
    }
    Ok(vec![sample])
}

fn apply_one(op: &Op, img: &mut Image, rng: &mut impl Rng, is_label: bool) -> Result<(), String> {
    let replace = |img: &mut Image, new: Image| *img = new;
    match op {
        Op::Load | Op::EnsureChannelFirst => {}
        Op::RandTimeFrame => {
            let c = pick_channel(img.shape[0], rng.random());
            if img.shape[0] > 1 {
                replace(img, keep_channel(img, c));
            }
        }
        Op::NanToMean => {
            nan_to_mean(img);
        }
        Op::ScaleIntensityRange(p) => scale_intensity_range(img, p),
        Op::ScaleIntensityRangePercentiles(p) => scale_intensity_range_percentiles(img, p),
        Op::NormalizeIntensity(p) => normalize_intensity(img, p),
        Op::Orientation(codes) => replace(img, orientation(img, *codes)),
        Op::PermuteInPlaneFirst { use_shape } => {
            let taken = std::mem::replace(img, empty());
            *img = permute_in_plane_first(taken, *use_shape)?;
        }
        Op::CropForeground(p) => replace(img, crop_foreground(img, p)?),
        Op::CropForegroundPadded(p) => replace(
            img,
            crate::transforms::crop_foreground::crop_foreground_padded(img, p)?,
        ),
        Op::SpatialPad {
            size,
            method,
            value,
        } => replace(img, spatial_pad(img, *size, *method, *value)),
        Op::CenterSpatialCrop(roi) => replace(img, center_spatial_crop(img, *roi)),
        Op::Spacing(p) => {
            let p = if is_label {
                Spacing {
                    mode: Interp::Nearest,
                    ..*p
                }
            } else {
                *p
            };
            replace(img, spacing(img, &p));
        }
        Op::Resize { size, mode } => {
            let dims = [img.shape[1], img.shape[2], img.shape[3]];
            let target = [0, 1, 2].map(|a| {
                if size[a] > 0 {
                    size[a] as usize
                } else {
                    dims[a]
                }
            });
            let mode = if is_label { ResizeMode::Nearest } else { *mode };
            replace(img, resize(img, target, mode));
        }
        Op::RandFlip { .. } | Op::RandRotate90 { .. } => {
            let map = op.draw_axis_map(rng);
            if !map.is_identity() {
                replace(img, map.apply(img));
            }
        }
        Op::RandSpatialCrop(p) => {
            let (start, end) = p.draw_box([img.shape[1], img.shape[2], img.shape[3]], rng);
            replace(
                img,
                crate::transforms::crop_foreground::crop(img, start, end),
            );
        }
        Op::RandomResizedCrop3d(p) => {
            if is_label {
                return Err("RandomResizedCrop3d is for images; labels are not supported".into());
            }
            replace(img, p.apply(img, rng));
        }
        Op::RandAdjustContrast(p) => {
            p.apply(img, rng);
        }
        Op::RandGaussianNoise(p) => {
            p.apply(img, rng);
        }
        Op::RandScaleIntensity(p) => {
            p.apply(img, rng);
        }
        Op::RandShiftIntensity(p) => {
            p.apply(img, rng);
        }
        Op::RandHistogramShift(p) => {
            p.apply(img, rng);
        }
        Op::RandGaussianSmooth(p) => {
            p.apply(img, rng);
        }
        Op::RandGaussianSharpen(p) => {
            p.apply(img, rng);
        }
        Op::RandGibbsNoise(p) => {
            p.apply(img, rng);
        }
        Op::OneOf { .. } | Op::RandomApply { .. } | Op::RandCropByPosNegLabel { .. } => {
            unreachable!("handled per sample")
        }
    }
    Ok(())
}

fn empty() -> Image {
    Image {
        data: Vec::new(),
        shape: [0; 4],
        spacing: [1.0; 3],
        affine: crate::nifti::affine::IDENTITY,
    }
}
