//! `ScaleIntensityRange` with MONAI's semantics.
//!
//! `y = (x - a_min) / (a_max - a_min)`, then `y * (b_max - b_min) + b_min` when
//! both `b` are given, then clipped to `[b_min, b_max]` when `clip`. When
//! `a_max == a_min`, MONAI returns `x - a_min (+ b_min)`; so do we. Arithmetic is
//! f64 per voxel, rounded to f32 once.

use dino3d_cache::DecodeMap;

use super::image::Image;
use crate::exec::op::{Op, StepRng};
use crate::transforms::TransformError;
use crate::transforms::spec::same_size;
use crate::transforms::spec::{ANY, Args, KEYS, ParamDefault, ParamKind, TransformSpec, param};

/// Parameters of [`scale_intensity_range`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScaleIntensityRange {
    /// Input value mapped to `b_min`.
    pub a_min: f64,
    /// Input value mapped to `b_max`.
    pub a_max: f64,
    /// Output minimum (None: leave the 0..1 range).
    pub b_min: Option<f64>,
    /// Output maximum.
    pub b_max: Option<f64>,
    /// Clip to `[b_min, b_max]` (one-sided where one is None).
    pub clip: bool,
}

impl ScaleIntensityRange {
    /// The per-voxel arithmetic as the cache's [`DecodeMap`]: the transform
    /// runs through it, and the cache applies it to the integers it keeps,
    /// so the two are bit-identical by construction.
    pub fn decode_map(&self) -> DecodeMap {
        if self.a_max == self.a_min {
            // MONAI: x - a_min (+ b_min), no scaling and no clipping.
            let shift = self.b_min.unwrap_or(0.0) - self.a_min;
            return DecodeMap::new(1.0, shift, f64::NEG_INFINITY, f64::INFINITY);
        }
        let (mut scale, mut offset) = (
            1.0 / (self.a_max - self.a_min),
            -self.a_min / (self.a_max - self.a_min),
        );
        if let (Some(b0), Some(b1)) = (self.b_min, self.b_max) {
            scale *= b1 - b0;
            offset = offset * (b1 - b0) + b0;
        }
        let bound = |b: Option<f64>, none: f64| if self.clip { b.unwrap_or(none) } else { none };
        DecodeMap::new(
            scale,
            offset,
            bound(self.b_min, f64::NEG_INFINITY),
            bound(self.b_max, f64::INFINITY),
        )
    }
}

/// Applies `p` to every voxel in place.
pub fn scale_intensity_range(img: &mut Image, p: &ScaleIntensityRange) {
    let map = p.decode_map();
    img.data.iter_mut().for_each(|v| *v = map.apply(*v));
}

impl Op for ScaleIntensityRange {
    fn apply(&self, img: &mut Image, _: &mut StepRng, _: bool) -> Result<(), TransformError> {
        scale_intensity_range(img, self);
        Ok(())
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// The recipe's `ScaleIntensityRange`.
pub const SPEC: TransformSpec = TransformSpec {
    name: "ScaleIntensityRange",
    is_random: false,
    params: &[
        KEYS,
        param("a_min", ANY, ParamDefault::Required),
        param("a_max", ANY, ParamDefault::Required),
        param("b_min", ANY, ParamDefault::Absent),
        param("b_max", ANY, ParamDefault::Absent),
        param("clip", ParamKind::Bool, ParamDefault::Bool(false)),
    ],
    summary: "map [a_min, a_max] linearly onto [b_min, b_max]",
    check: None,
    nests: false,
    output_size: same_size,
    build: |a: &Args<'_>| {
        Ok(Box::new(ScaleIntensityRange {
            a_min: a.num("a_min")?,
            a_max: a.num("a_max")?,
            b_min: a.opt_num("b_min")?,
            b_max: a.opt_num("b_max")?,
            clip: a.flag("clip")?,
        }))
    },
};

#[cfg(test)]
mod tests {
    use super::*;

    fn image(data: Vec<f32>) -> Image {
        Image::row(data, 1)
    }

    #[test]
    fn maps_a_range_onto_b_range_with_clipping() {
        let mut img = image(vec![-1000.0, 0.0, 1000.0, 3000.0]);
        let p = ScaleIntensityRange {
            a_min: -1000.0,
            a_max: 1000.0,
            b_min: Some(-1.0),
            b_max: Some(1.0),
            clip: true,
        };
        scale_intensity_range(&mut img, &p);
        assert_eq!(img.data, vec![-1.0, 0.0, 1.0, 1.0]);
        let mut img = image(vec![5.0]);
        scale_intensity_range(&mut img, &ScaleIntensityRange { clip: false, ..p });
        assert!((img.data[0] - 0.005).abs() < 1e-7);
    }

    #[test]
    fn equal_bounds_shift_like_monai() {
        let mut img = image(vec![3.0, 4.0]);
        let p = ScaleIntensityRange {
            a_min: 3.0,
            a_max: 3.0,
            b_min: Some(-1.0),
            b_max: Some(1.0),
            clip: true,
        };
        scale_intensity_range(&mut img, &p);
        assert_eq!(img.data, vec![-1.0, 0.0]);
    }
}
