//! `RandCropByPosNegLabel(spatial_size, pos, neg, num_samples, image_threshold)`
//! with MONAI's semantics, `allow_smaller = True` (see below).
//!
//! * **Classes**: a voxel is foreground when its label is non-zero (in any
//!   channel; with several channels, channel 0 is taken as one-hot background
//!   and skipped, as MONAI's `map_binary_to_indices` does). Every other voxel is
//!   background, restricted, when an `image` is given, to voxels where the image
//!   is `> image_threshold` in some channel.
//! * **Centres**: for each of `num_samples`, draw `u < pos / (pos + neg)`
//!   (u uniform in [0, 1)) to pick foreground, else background; then a voxel of
//!   that class uniformly. If one class is empty the other is always used (the
//!   `u` draw still happens); if both are empty (MONAI raises) the image centre
//!   `dim / 2` is used, without drawing. `pos = neg = 0` (MONAI raises) picks
//!   background.
//! * **Boxes**: the size is `spatial_size` (≤ 0: the full axis), and **an axis
//!   larger than the image is cut to the image** (MONAI's `allow_smaller=True`;
//!   with its default `False` MONAI raises there, so the two agree wherever MONAI
//!   runs). The centre `c` is clamped into `[size / 2, dim − size + size / 2]`
//!   (`correct_crop_centers`) and the box is `[c − size / 2, c − size / 2 + size)`:
//!   always inside the image, always of the full size.
//!
//! Every key is cropped with the same boxes. The centres come from the one
//! pos/neg sampler, [`crate::pos_neg`] (two scans over the label, no index
//! lists).

use std::ops::Range;

use rand::Rng;

use crate::pos_neg::{Class, PosNeg, box_start};

use super::crop_foreground::crop;
use super::image::Image;
use super::rand_spatial_crop::CropBox;
use crate::exec::Sample;
use crate::exec::op::{CompiledStep, Context, Op, StepRng};
use crate::recipe::value::ParamValue;
use crate::transforms::spec::requested_size;
use crate::transforms::spec::{
    ANY, Args, KEYS, POSITIVE, ParamDefault, ParamError, ParamKind, Params, TransformSpec, param,
};
use crate::transforms::{DrawKey, TransformError};

/// Parameters of [`rand_crop_by_pos_neg_label`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RandCropByPosNegLabel {
    /// Crop size; ≤ 0 (e.g. `-1`) means the full axis, larger than the image is cut.
    pub spatial_size: [i64; 3],
    /// Weight of foreground centres.
    pub pos: f64,
    /// Weight of background centres.
    pub neg: f64,
    /// Boxes per call.
    pub num_samples: usize,
    /// With an image, background voxels need image `> image_threshold`.
    pub image_threshold: f64,
}

impl RandCropByPosNegLabel {
    /// MONAI's defaults: `pos = neg = 1`, one sample, threshold 0.
    pub fn new(spatial_size: [i64; 3]) -> RandCropByPosNegLabel {
        RandCropByPosNegLabel {
            spatial_size,
            pos: 1.0,
            neg: 1.0,
            num_samples: 1,
            image_threshold: 0.0,
        }
    }

    /// Draws `num_samples` boxes from the label (and optional image).
    ///
    /// # Panics
    /// When `image` is given with another spatial shape than `label`.
    pub fn draw_boxes(
        &self,
        label: &Image,
        image: Option<&Image>,
        rng: &mut impl Rng,
    ) -> Vec<CropBox> {
        let dims = [label.shape[1], label.shape[2], label.shape[3]];
        let size = [0, 1, 2].map(|a| {
            let s = self.spatial_size[a];
            if s > 0 {
                (s as usize).min(dims[a])
            } else {
                dims[a]
            }
        });
        self.draw_centers(label, image, rng)
            .into_iter()
            .map(|(centre, _)| box_around(centre, size, dims))
            .collect()
    }

    /// The centres before clamping, with the class each was drawn from.
    fn draw_centers(
        &self,
        label: &Image,
        image: Option<&Image>,
        rng: &mut impl Rng,
    ) -> Vec<([usize; 3], Class)> {
        let dims = [label.shape[1], label.shape[2], label.shape[3]];
        let classes = Classifier::new(label, image, self.image_threshold);
        let sampler = PosNeg::monai(self.pos, self.neg);
        let Some(centres) = sampler.draw(
            label.spatial_len(),
            |s| classes.class(s),
            0..self.num_samples,
            rng,
        ) else {
            return vec![(dims.map(|d| d / 2), Class::Neither); self.num_samples];
        };
        centres
            .into_iter()
            .map(|(s, class)| {
                let voxel = [
                    s % dims[0],
                    (s / dims[0]) % dims[1],
                    s / (dims[0] * dims[1]),
                ];
                (voxel, class)
            })
            .collect()
    }
}

/// Classifies voxels by flat spatial index.
struct Classifier<'a> {
    label: &'a Image,
    label_channels: Range<usize>,
    image: Option<&'a Image>,
    threshold: f64,
    n: usize,
}

impl<'a> Classifier<'a> {
    fn new(label: &'a Image, image: Option<&'a Image>, threshold: f64) -> Classifier<'a> {
        if let Some(img) = image {
            assert_eq!(
                img.shape[1..],
                label.shape[1..],
                "RandCropByPosNegLabel: image and label spatial shapes differ"
            );
        }
        let c = label.shape[0];
        Classifier {
            label,
            label_channels: if c > 1 { 1..c } else { 0..c },
            image,
            threshold,
            n: label.spatial_len(),
        }
    }

    fn class(&self, s: usize) -> Class {
        if self
            .label_channels
            .clone()
            .any(|ch| self.label.data[ch * self.n + s] != 0.0)
        {
            return Class::Fg;
        }
        match self.image {
            None => Class::Bg,
            Some(img) => {
                if (0..img.shape[0]).any(|ch| f64::from(img.data[ch * self.n + s]) > self.threshold)
                {
                    Class::Bg
                } else {
                    Class::Neither
                }
            }
        }
    }
}

/// The box of `size` around `centre`, moved inside `dims` (`size <= dims`).
fn box_around(centre: [usize; 3], size: [usize; 3], dims: [usize; 3]) -> CropBox {
    let start = [0, 1, 2].map(|a| box_start(centre[a], size[a], dims[a]) as usize);
    (start, [0, 1, 2].map(|a| start[a] + size[a]))
}

/// Crops every image of `keys` with the same `num_samples` boxes drawn from
/// `label` (and `image`): result `[sample][key]`.
///
/// # Panics
/// When a key, or `image`, is smaller than `label` on some axis.
pub fn rand_crop_by_pos_neg_label(
    keys: &[&Image],
    label: &Image,
    image: Option<&Image>,
    p: &RandCropByPosNegLabel,
    rng: &mut impl Rng,
) -> Vec<Vec<Image>> {
    p.draw_boxes(label, image, rng)
        .into_iter()
        .map(|(start, end)| keys.iter().map(|k| crop(k, start, end)).collect())
        .collect()
}

/// `RandCropByPosNegLabel` as a step: each sample becomes `num_samples`
/// crops of the step's keys, centred by the label key.
#[derive(Debug, Clone, PartialEq)]
pub struct RandCropByPosNegLabelStep {
    /// Parameters.
    pub params: RandCropByPosNegLabel,
    /// The label key.
    pub label_key: String,
    /// The image key restricting negatives, if any.
    pub image_key: Option<String>,
}

impl Op for RandCropByPosNegLabelStep {
    fn apply(&self, _: &mut Image, _: &mut StepRng, _: bool) -> Result<(), TransformError> {
        // Never called per key: `apply_sample` below crops whole samples.
        Ok(())
    }

    fn apply_sample(
        &self,
        step: &CompiledStep,
        sample: Sample,
        key: DrawKey,
        _: &Context,
    ) -> Result<Vec<Sample>, TransformError> {
        let label = sample
            .get(&self.label_key)
            .ok_or_else(|| TransformError::MissingKey {
                key: self.label_key.clone(),
            })?;
        let image = self.image_key.as_deref().and_then(|k| sample.get(k));
        let boxes = self
            .params
            .draw_boxes(label, image, &mut key.for_transform(step.id).rng());
        Ok(boxes
            .into_iter()
            .map(|(start, end)| {
                let mut s = sample.clone();
                for k in &step.keys {
                    if let Some(img) = s.get_mut(k) {
                        *img = crop(img, start, end);
                    }
                }
                s
            })
            .collect())
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

fn pos_or_neg(p: &Params) -> Result<(), ParamError> {
    let get = |k| p.get(k).and_then(ParamValue::as_f64).unwrap_or(0.0);
    if get("pos") + get("neg") > 0.0 {
        Ok(())
    } else {
        Err(ParamError::Rule("pos and neg cannot both be 0".into()))
    }
}

/// The crop MONAI takes: `spatial_size` (a side <= 0 keeps the image's).
fn crop_size(params: &Params, input: Option<[u64; 3]>) -> Option<[u64; 3]> {
    requested_size(params, "spatial_size", input)
}

/// The recipe's `RandCropByPosNegLabel`.
pub const SPEC: TransformSpec = TransformSpec {
    name: "RandCropByPosNegLabel",
    is_random: true,
    params: &[
        KEYS,
        param("label_key", ParamKind::Key, ParamDefault::Required),
        param("spatial_size", ParamKind::Int3, ParamDefault::Required),
        param("pos", POSITIVE, ParamDefault::Num(1.0)),
        param("neg", POSITIVE, ParamDefault::Num(1.0)),
        param(
            "num_samples",
            ParamKind::Int { min: 1, max: 1024 },
            ParamDefault::Num(1.0),
        ),
        param("image_key", ParamKind::Key, ParamDefault::Absent),
        param("image_threshold", ANY, ParamDefault::Num(0.0)),
    ],
    summary: "num_samples crops centred on foreground (pos) or background (neg) voxels",
    check: Some(pos_or_neg),
    nests: false,
    output_size: crop_size,
    build: |a: &Args<'_>| {
        Ok(Box::new(RandCropByPosNegLabelStep {
            params: RandCropByPosNegLabel {
                spatial_size: a.int3("spatial_size")?,
                pos: a.num("pos")?,
                neg: a.num("neg")?,
                num_samples: a.count("num_samples")?,
                image_threshold: a.num("image_threshold")?,
            },
            label_key: a.text("label_key")?.to_string(),
            image_key: a.opt_text("image_key")?.map(str::to_string),
        }))
    },
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transforms::rng::DrawKey;
    use proptest::prelude::*;

    fn key(sample: u64) -> DrawKey {
        DrawKey {
            sample,
            ..DrawKey::default()
        }
    }

    fn one_hot_row(n: usize, at: &[usize]) -> Image {
        let mut data = vec![0.0; n];
        for &i in at {
            data[i] = 1.0;
        }
        Image::row(data, 1)
    }

    fn params(size: [i64; 3], pos: f64, neg: f64) -> RandCropByPosNegLabel {
        RandCropByPosNegLabel {
            pos,
            neg,
            ..RandCropByPosNegLabel::new(size)
        }
    }

    #[test]
    fn hand_computed_centres_are_clamped_into_the_image() {
        let pos_only = params([4, 1, 1], 1.0, 0.0);
        let boxes = |label: &Image, image: Option<&Image>, p: &RandCropByPosNegLabel| {
            p.draw_boxes(label, image, &mut key(0).rng())
        };
        // Size 4 on 10 voxels: centres clamped into [2, 8].
        assert_eq!(
            boxes(&one_hot_row(10, &[7]), None, &pos_only),
            vec![([5, 0, 0], [9, 1, 1])]
        );
        assert_eq!(
            boxes(&one_hot_row(10, &[9]), None, &pos_only),
            vec![([6, 0, 0], [10, 1, 1])]
        );
        assert_eq!(
            boxes(&one_hot_row(10, &[0]), None, &pos_only),
            vec![([0, 0, 0], [4, 1, 1])]
        );
        // Background restricted by the image: only voxels 3 (foreground) and 8
        // are above 0.5, so background is voxel 8.
        let neg_only = params([4, 1, 1], 0.0, 1.0);
        let mut image = one_hot_row(10, &[3, 8]);
        image.data[5] = 0.5; // not strictly above the threshold
        let thr = RandCropByPosNegLabel {
            image_threshold: 0.5,
            ..neg_only
        };
        let label = one_hot_row(10, &[3]);
        assert_eq!(
            boxes(&label, Some(&image), &thr),
            vec![([6, 0, 0], [10, 1, 1])]
        );
        // Without the image every label-0 voxel is background.
        let free: Vec<usize> = (0..200)
            .map(|s| neg_only.draw_boxes(&label, None, &mut key(s).rng())[0].0[0])
            .collect();
        assert!(free.contains(&0) && free.contains(&6), "{free:?}");
    }

    #[test]
    fn empty_classes_fall_back() {
        let p = params([4, 1, 1], 1.0, 0.0);
        // No foreground: background even at pos = 1.
        let none = one_hot_row(10, &[]);
        let centres = p.draw_centers(&none, None, &mut key(1).rng());
        assert_eq!(centres[0].1, Class::Bg);
        // All foreground: foreground even at neg only.
        let all = one_hot_row(10, &(0..10).collect::<Vec<_>>());
        let q = params([4, 1, 1], 0.0, 1.0);
        assert_eq!(
            q.draw_centers(&all, None, &mut key(1).rng())[0].1,
            Class::Fg
        );
        // Neither (no foreground, image never above the threshold): the centre.
        let image = Image::row(vec![-1.0; 10], 1);
        let many = RandCropByPosNegLabel {
            num_samples: 3,
            ..p
        };
        assert_eq!(
            many.draw_boxes(&none, Some(&image), &mut key(1).rng()),
            vec![([3, 0, 0], [7, 1, 1]); 3]
        );
    }

    #[test]
    fn sizes_fall_back_to_the_image_and_one_hot_skips_channel_0() {
        let p = params([-1, 5, 0], 1.0, 1.0);
        let label = Image {
            data: vec![0.0; 6 * 3 * 2],
            shape: [1, 6, 3, 2],
            spacing: [1.0; 3],
            affine: crate::nifti::affine::IDENTITY,
        };
        let b = p.draw_boxes(&label, None, &mut key(0).rng());
        assert_eq!(b, vec![([0, 0, 0], [6, 3, 2])]);
        // Two channels: channel 0 (background, all ones) is ignored.
        let mut data = vec![1.0; 10];
        data.extend((0..10).map(|i| if i == 6 { 1.0 } else { 0.0 }));
        let two = Image::row(data, 2);
        let p = params([2, 1, 1], 1.0, 0.0);
        let c = p.draw_centers(&two, None, &mut key(5).rng());
        assert_eq!(c, vec![([6, 0, 0], Class::Fg)]);
    }

    #[test]
    fn pos_neg_ratio_and_uniform_voxels() {
        // 6×5×4 label, foreground at two voxels (values 2 and 5).
        let mut label = Image::ramp([1, 6, 5, 4]);
        label.data.iter_mut().for_each(|v| *v = 0.0);
        let (a, b) = (label.index(0, 1, 2, 3), label.index(0, 5, 0, 1));
        label.data[a] = 2.0;
        label.data[b] = 5.0;
        let p = RandCropByPosNegLabel {
            num_samples: 2,
            ..params([3, 3, 3], 1.0, 3.0)
        };
        let (mut fg, mut at_a, mut total) = (0usize, 0usize, 0usize);
        for s in 0..2000 {
            let centres = p.draw_centers(&label, None, &mut key(s).rng());
            assert_eq!(centres.len(), 2);
            for ([i, j, k], class) in centres {
                let v = label.at(0, i, j, k);
                total += 1;
                if class == Class::Fg {
                    assert!(v != 0.0, "foreground centre on background");
                    fg += 1;
                    at_a += usize::from(v == 2.0);
                } else {
                    assert_eq!((v, class), (0.0, Class::Bg));
                }
            }
            // Same key, same boxes.
            assert_eq!(
                p.draw_boxes(&label, None, &mut key(s).rng()),
                p.draw_boxes(&label, None, &mut key(s).rng())
            );
        }
        // pos / (pos + neg) = 0.25 of 4000.
        assert!((900..1100).contains(&fg), "{fg} of {total}");
        assert!(
            (at_a as f64 / fg as f64 - 0.5).abs() < 0.07,
            "{at_a} of {fg}"
        );
    }

    #[test]
    fn every_key_gets_the_same_boxes() {
        let img = Image::ramp([2, 8, 6, 4]);
        let mut label = Image::ramp([1, 8, 6, 4]);
        label
            .data
            .iter_mut()
            .for_each(|v| *v = f32::from(*v > 100.0));
        let p = RandCropByPosNegLabel {
            num_samples: 3,
            ..params([4, 3, 2], 1.0, 1.0)
        };
        let out = rand_crop_by_pos_neg_label(&[&img, &label], &label, None, &p, &mut key(9).rng());
        let boxes = p.draw_boxes(&label, None, &mut key(9).rng());
        assert_eq!(out.len(), 3);
        for (crops, (start, end)) in out.iter().zip(boxes) {
            assert_eq!(crops[0], crop(&img, start, end));
            assert_eq!(crops[1], crop(&label, start, end));
            assert_eq!(crops[0].shape, [2, 4, 3, 2]);
        }
    }

    proptest! {
        #[test]
        fn boxes_lie_inside_with_the_expected_size(
            shape in prop::array::uniform3(1usize..10),
            size in prop::array::uniform3(-1i64..14),
            fg_every in 1usize..40,
            num_samples in 0usize..4,
            pos in 0.0f64..2.0,
            sample in any::<u64>(),
        ) {
            let n: usize = shape.iter().product();
            let label = Image {
                data: (0..n).map(|s| f32::from(u8::from(s % fg_every == 0))).collect(),
                shape: [1, shape[0], shape[1], shape[2]],
                spacing: [1.0; 3],
                affine: crate::nifti::affine::IDENTITY,
            };
            let p = RandCropByPosNegLabel { num_samples, ..params(size, pos, 1.0) };
            let boxes = p.draw_boxes(&label, None, &mut key(sample).rng());
            prop_assert_eq!(boxes.len(), num_samples);
            for (start, end) in boxes {
                for a in 0..3 {
                    let want = if size[a] > 0 { (size[a] as usize).min(shape[a]) } else { shape[a] };
                    prop_assert!(end[a] <= shape[a]);
                    prop_assert_eq!(end[a] - start[a], want);
                }
            }
        }
    }
}
