//! `ScaleIntensityRange` with MONAI's semantics.
//!
//! `y = (x - a_min) / (a_max - a_min)`, then `y * (b_max - b_min) + b_min` when
//! both `b` are given, then clipped to `[b_min, b_max]` when `clip`. When
//! `a_max == a_min`, MONAI returns `x - a_min (+ b_min)`; so do we. Arithmetic is
//! f64 per voxel, rounded to f32 once.

use super::image::Image;

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

/// [`ScaleIntensityRange`] reduced to its per-voxel arithmetic, so that other
/// readers (the cache's fused decode) apply exactly the same function.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IntensityMap {
    scale: f64,
    offset: f64,
    lo: f64,
    hi: f64,
}

impl IntensityMap {
    /// The map of `p`.
    pub fn new(p: &ScaleIntensityRange) -> IntensityMap {
        if p.a_max == p.a_min {
            // MONAI: x - a_min (+ b_min), no scaling and no clipping.
            let shift = p.b_min.unwrap_or(0.0) - p.a_min;
            return IntensityMap {
                scale: 1.0,
                offset: shift,
                lo: f64::NEG_INFINITY,
                hi: f64::INFINITY,
            };
        }
        let (mut scale, mut offset) = (1.0 / (p.a_max - p.a_min), -p.a_min / (p.a_max - p.a_min));
        if let (Some(b0), Some(b1)) = (p.b_min, p.b_max) {
            scale *= b1 - b0;
            offset = offset * (b1 - b0) + b0;
        }
        let bound = |b: Option<f64>, none: f64| if p.clip { b.unwrap_or(none) } else { none };
        IntensityMap {
            scale,
            offset,
            lo: bound(p.b_min, f64::NEG_INFINITY),
            hi: bound(p.b_max, f64::INFINITY),
        }
    }

    /// `(scale, offset, lo, hi)`: [`Self::apply`] is `y = v·scale + offset`
    /// (a product, then a sum: two roundings, no fused multiply-add), then
    /// `lo` if `y < lo`, else `hi` if `y > hi`, else `y`, rounded to f32. For
    /// vectorised readers that must reproduce it bit for bit.
    pub fn parts(&self) -> (f64, f64, f64, f64) {
        (self.scale, self.offset, self.lo, self.hi)
    }

    /// One voxel: f64 arithmetic, rounded to f32 once.
    #[inline(always)]
    pub fn apply(&self, v: f32) -> f32 {
        let y = f64::from(v) * self.scale + self.offset;
        // Written out so that NaN stays NaN, as in MONAI.
        let y = if y < self.lo {
            self.lo
        } else if y > self.hi {
            self.hi
        } else {
            y
        };
        y as f32
    }
}

/// Applies `p` to every voxel in place.
pub fn scale_intensity_range(img: &mut Image, p: &ScaleIntensityRange) {
    let map = IntensityMap::new(p);
    img.data.iter_mut().for_each(|v| *v = map.apply(*v));
}

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
