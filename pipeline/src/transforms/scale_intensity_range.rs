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

/// Applies `p` to every voxel in place.
pub fn scale_intensity_range(img: &mut Image, p: &ScaleIntensityRange) {
    if p.a_max == p.a_min {
        let shift = p.b_min.unwrap_or(0.0) - p.a_min;
        img.data
            .iter_mut()
            .for_each(|v| *v = (f64::from(*v) + shift) as f32);
        return;
    }
    let (mut scale, mut offset) = (1.0 / (p.a_max - p.a_min), -p.a_min / (p.a_max - p.a_min));
    if let (Some(b0), Some(b1)) = (p.b_min, p.b_max) {
        scale *= b1 - b0;
        offset = offset * (b1 - b0) + b0;
    }
    let lo = if p.clip {
        p.b_min.unwrap_or(f64::NEG_INFINITY)
    } else {
        f64::NEG_INFINITY
    };
    let hi = if p.clip {
        p.b_max.unwrap_or(f64::INFINITY)
    } else {
        f64::INFINITY
    };
    for v in img.data.iter_mut() {
        let y = f64::from(*v) * scale + offset;
        // Written out so that NaN stays NaN, as in MONAI.
        let y = if y < lo {
            lo
        } else if y > hi {
            hi
        } else {
            y
        };
        *v = y as f32;
    }
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
