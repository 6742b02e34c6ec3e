//! `RandSpatialCrop(roi_size, max_roi_size, random_center, random_size)` with
//! MONAI's semantics (MONAI ≥ 1.3 defaults: `random_center = true`,
//! `random_size = false`). There is no `prob`: it always crops.
//!
//! * Size per axis: `roi_size` (a value ≤ 0, e.g. `-1`, means the full axis).
//!   With `random_size`, each axis is drawn uniformly in `[roi, max_roi]`
//!   inclusive (`max_roi_size` None, or a value ≤ 0, means the image size), all
//!   three sizes before any corner. Where MONAI raises because `roi > max_roi`,
//!   the size is `roi`.
//! * With `random_center`, the valid size is `min(size, dim)` and the corner is
//!   uniform in `[0, dim − valid]`, drawn only on axes where `dim > valid`.
//! * Otherwise the box is MONAI's centre crop of `size` ([`center_box`]).
//! * Never pads: an image smaller than the roi gives a smaller crop.
//!
//! The crop moves the affine's origin so world positions are kept.

use rand::Rng;

use super::crop_foreground::crop;
use super::image::Image;
use super::pad_and_center_crop::center_box;
use crate::exec::op::{Op, Role, StepRng};
use crate::recipe::value::ParamValue;
use crate::transforms::TransformError;
use crate::transforms::spec::{Args, KEYS, ParamDefault, ParamKind, TransformSpec, param};
use crate::transforms::spec::{Params, requested_size};

/// A crop box: `(start, end)` per spatial axis, end exclusive.
pub type CropBox = ([usize; 3], [usize; 3]);

/// Parameters of [`rand_spatial_crop`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RandSpatialCrop {
    /// Crop size (or smallest size with `random_size`); ≤ 0 means the full axis.
    pub roi_size: [i64; 3],
    /// Largest size with `random_size`; None (or ≤ 0 on an axis) means the image size.
    pub max_roi_size: Option<[i64; 3]>,
    /// Uniform random corner (else a centre crop).
    pub random_center: bool,
    /// Draw the size per axis in `[roi_size, max_roi_size]`.
    pub random_size: bool,
}

impl RandSpatialCrop {
    /// MONAI's defaults for `roi_size`: random centre, fixed size.
    pub fn new(roi_size: [i64; 3]) -> RandSpatialCrop {
        RandSpatialCrop {
            roi_size,
            max_roi_size: None,
            random_center: true,
            random_size: false,
        }
    }

    /// Draws the box for an image of spatial shape `shape`.
    pub fn draw_box(&self, shape: [usize; 3], rng: &mut impl Rng) -> CropBox {
        let mut size = [0, 1, 2].map(|a| fall_back(self.roi_size[a], shape[a]));
        if self.random_size {
            let max = match self.max_roi_size {
                Some(m) => [0, 1, 2].map(|a| fall_back(m[a], shape[a])),
                None => shape,
            };
            for (s, m) in size.iter_mut().zip(max) {
                *s = rng.random_range(*s..=m.max(*s));
            }
        }
        if !self.random_center {
            return center_box(shape, size.map(|s| s as i64));
        }
        let valid = [0, 1, 2].map(|a| size[a].min(shape[a]));
        let mut start = [0; 3];
        for ((s, v), dim) in start.iter_mut().zip(valid).zip(shape) {
            if dim > v {
                *s = rng.random_range(0..=dim - v);
            }
        }
        (start, [0, 1, 2].map(|a| start[a] + valid[a]))
    }
}

/// MONAI's `fall_back_tuple`: a value ≤ 0 means `dim`.
fn fall_back(v: i64, dim: usize) -> usize {
    if v > 0 { v as usize } else { dim }
}

/// Crops a box drawn by [`RandSpatialCrop::draw_box`] out of `img`.
pub fn rand_spatial_crop(img: &Image, p: &RandSpatialCrop, rng: &mut impl Rng) -> Image {
    let (start, end) = p.draw_box([img.shape[1], img.shape[2], img.shape[3]], rng);
    crop(img, start, end)
}

impl Op for RandSpatialCrop {
    fn apply(&self, img: &mut Image, rng: &mut StepRng, _: bool) -> Result<(), TransformError> {
        if let Some(cropped) = self.crop_of(img, rng) {
            *img = cropped;
        }
        Ok(())
    }

    fn role(&self) -> Role {
        Role::Crop
    }

    fn crop_of(&self, img: &Image, rng: &mut StepRng) -> Option<Image> {
        let (start, end) = self.draw_box([img.shape[1], img.shape[2], img.shape[3]], rng);
        Some(crop(img, start, end))
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// `roi_size` as the recipe asks for it (the image may be smaller), or
/// unknown when the size is drawn.
fn cropped_size(params: &Params, input: Option<[u64; 3]>) -> Option<[u64; 3]> {
    if matches!(params.get("random_size"), Some(ParamValue::Bool(true))) {
        return None;
    }
    let roi = requested_size(params, "roi_size", input)?;
    Some(match input {
        Some(i) => [0, 1, 2].map(|a| roi[a].min(i[a])),
        None => roi,
    })
}

/// The recipe's `RandSpatialCrop`.
pub const SPEC: TransformSpec = TransformSpec {
    name: "RandSpatialCrop",
    is_random: true,
    params: &[
        KEYS,
        param("roi_size", ParamKind::Int3, ParamDefault::Required),
        param("max_roi_size", ParamKind::Int3, ParamDefault::Absent),
        param("random_center", ParamKind::Bool, ParamDefault::Bool(true)),
        param("random_size", ParamKind::Bool, ParamDefault::Bool(false)),
    ],
    summary: "crop a random box of roi_size (never pads)",
    check: None,
    nests: false,
    output_size: cropped_size,
    build: |a: &Args<'_>| {
        Ok(Box::new(RandSpatialCrop {
            roi_size: a.int3("roi_size")?,
            max_roi_size: a.opt_int3("max_roi_size")?,
            random_center: a.flag("random_center")?,
            random_size: a.flag("random_size")?,
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

    #[test]
    fn crops_the_drawn_box_and_moves_the_origin() {
        let img = Image::ramp([2, 10, 6, 4]);
        let p = RandSpatialCrop::new([4, -1, 9]);
        let (start, end) = p.draw_box([10, 6, 4], &mut key(3).rng());
        // y full (-1), z larger than the image: full, never padded.
        assert_eq!((start[1], end[1], start[2], end[2]), (0, 6, 0, 4));
        assert_eq!(end[0] - start[0], 4);
        let out = rand_spatial_crop(&img, &p, &mut key(3).rng());
        assert_eq!(out.shape, [2, 4, 6, 4]);
        assert_eq!(out.at(1, 0, 0, 0), img.at(1, start[0], 0, 0));
        assert_eq!(out.affine[0][3], start[0] as f64);
        // Same key, same box.
        assert_eq!(p.draw_box([10, 6, 4], &mut key(3).rng()), (start, end));
    }

    #[test]
    fn centre_crop_without_random_center() {
        let p = RandSpatialCrop {
            random_center: false,
            ..RandSpatialCrop::new([5, 3, 8])
        };
        // MONAI's centre: start = dim / 2 - roi / 2.
        assert_eq!(
            p.draw_box([10, 9, 4], &mut key(0).rng()),
            ([3, 3, 0], [8, 6, 4])
        );
    }

    #[test]
    fn corners_are_uniform_over_the_allowed_range() {
        // dim 10, roi 4: corner in 0..=6, 7 values; y has no freedom.
        let p = RandSpatialCrop::new([4, 3, 2]);
        let mut counts = [0usize; 7];
        let mut z_counts = [0usize; 2];
        for s in 0..7000 {
            let (start, end) = p.draw_box([10, 3, 3], &mut key(s).rng());
            counts[start[0]] += 1;
            assert_eq!(start[1], 0);
            assert_eq!(end[1], 3);
            z_counts[start[2]] += 1;
        }
        assert!(
            counts.iter().all(|&c| (880..1120).contains(&c)),
            "{counts:?}"
        );
        assert!(
            z_counts.iter().all(|&c| (3300..3700).contains(&c)),
            "{z_counts:?}"
        );
    }

    #[test]
    fn random_sizes_are_uniform_and_inclusive() {
        let p = RandSpatialCrop {
            random_size: true,
            max_roi_size: Some([5, -1, 1]),
            ..RandSpatialCrop::new([2, 4, 3])
        };
        let mut counts = [0usize; 6];
        for s in 0..4000 {
            let (start, end) = p.draw_box([8, 5, 6], &mut key(s).rng());
            let size = [0, 1, 2].map(|a| end[a] - start[a]);
            counts[size[0]] += 1;
            assert!((4..=5).contains(&size[1]), "{size:?}");
            // max below roi: the size is roi.
            assert_eq!(size[2], 3);
        }
        assert_eq!(counts[..2], [0, 0]);
        assert!(
            counts[2..].iter().all(|&c| (880..1120).contains(&c)),
            "{counts:?}"
        );
        // Without max_roi_size the image size bounds the draw.
        let q = RandSpatialCrop {
            max_roi_size: None,
            ..p
        };
        let sizes: Vec<usize> = (0..500)
            .map(|s| {
                let (a, b) = q.draw_box([8, 5, 6], &mut key(s).rng());
                b[0] - a[0]
            })
            .collect();
        assert!(sizes.contains(&8) && sizes.contains(&2) && sizes.iter().all(|&s| s <= 8));
    }

    proptest! {
        #[test]
        fn boxes_lie_inside_with_the_expected_size(
            shape in prop::array::uniform3(1usize..20),
            roi in prop::array::uniform3(-1i64..25),
            random_center in any::<bool>(),
            sample in any::<u64>(),
        ) {
            let p = RandSpatialCrop { random_center, ..RandSpatialCrop::new(roi) };
            let (start, end) = p.draw_box(shape, &mut key(sample).rng());
            for a in 0..3 {
                let want = if roi[a] > 0 { (roi[a] as usize).min(shape[a]) } else { shape[a] };
                prop_assert!(start[a] <= end[a] && end[a] <= shape[a]);
                prop_assert_eq!(end[a] - start[a], want);
            }
        }

        #[test]
        fn random_size_boxes_lie_inside(
            shape in prop::array::uniform3(1usize..20),
            roi in prop::array::uniform3(-1i64..25),
            max in prop::array::uniform3(-1i64..25),
            sample in any::<u64>(),
        ) {
            let p = RandSpatialCrop {
                random_size: true,
                max_roi_size: Some(max),
                ..RandSpatialCrop::new(roi)
            };
            let (start, end) = p.draw_box(shape, &mut key(sample).rng());
            for a in 0..3 {
                let lo = if roi[a] > 0 { roi[a] as usize } else { shape[a] };
                let hi = if max[a] > 0 { max[a] as usize } else { shape[a] }.max(lo);
                let size = end[a] - start[a];
                prop_assert!(end[a] <= shape[a]);
                prop_assert!(size >= lo.min(shape[a]) && size <= hi.min(shape[a]));
            }
        }
    }
}
