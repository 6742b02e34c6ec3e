//! Importance maps for blending overlapping windows (MONAI's
//! `compute_importance_map`, as of MONAI 1.1+, reimplemented from its
//! documented behaviour).

/// How overlapping window predictions are weighted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Blend {
    /// Every voxel of a window weighs 1 (MONAI's `constant`).
    Constant,
    /// A separable Gaussian sampled at voxel centres, centred at
    /// `(roi − 1)/2` on each axis with σ = `sigma_scale`·roi (MONAI's
    /// `gaussian`; MONAI's default `sigma_scale` is 0.125). It is not
    /// rescaled: its peak is 1 for odd ROI sizes and just under 1 for even
    /// ones. Values are clamped below at `max(min(map), 1e-3)`, so the
    /// window corners keep a small positive weight.
    Gaussian {
        /// σ as a fraction of the ROI.
        sigma_scale: f64,
    },
}

impl Blend {
    /// MONAI's Gaussian mode with its default σ (0.125·roi).
    pub const GAUSSIAN: Self = Self::Gaussian { sigma_scale: 0.125 };
}

/// Smallest weight a Gaussian map keeps (MONAI clamps at 1e-3).
pub const MIN_GAUSSIAN_WEIGHT: f64 = 1e-3;

/// The importance map of `blend` over a window of size `roi`, row-major
/// (last axis fastest).
pub fn importance_map(roi: [usize; 3], blend: Blend) -> Vec<f64> {
    let n: usize = roi.iter().product();
    match blend {
        Blend::Constant => vec![1.0; n],
        Blend::Gaussian { sigma_scale } => {
            let axis = |len: usize| -> Vec<f64> {
                let sigma = sigma_scale * len as f64;
                let centre = (len as f64 - 1.0) / 2.0;
                (0..len)
                    .map(|i| {
                        let d = i as f64 - centre;
                        (-d * d / (2.0 * sigma * sigma)).exp()
                    })
                    .collect()
            };
            let (a, b, c) = (axis(roi[0]), axis(roi[1]), axis(roi[2]));
            let mut map = Vec::with_capacity(n);
            for &x in &a {
                for &y in &b {
                    map.extend(c.iter().map(|&z| x * y * z));
                }
            }
            let floor = map
                .iter()
                .copied()
                .fold(f64::INFINITY, f64::min)
                .max(MIN_GAUSSIAN_WEIGHT);
            map.iter_mut().for_each(|v| *v = v.max(floor));
            map
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_maps_are_ones() {
        assert_eq!(importance_map([2, 3, 1], Blend::Constant), vec![1.0; 6]);
    }

    #[test]
    fn the_gaussian_is_separable_centred_and_clamped() {
        let roi = [5, 4, 96];
        let m = importance_map(roi, Blend::GAUSSIAN);
        assert_eq!(m.len(), 5 * 4 * 96);
        let at = |x: usize, y: usize, z: usize| m[(x * roi[1] + y) * roi[2] + z];
        // Odd axis: the centre sample is exactly exp(0) = 1 on that axis.
        // σ_x = 0.625, σ_y = 0.5; y = 1 is 0.5 from the centre 1.5.
        let gy = (-0.25f64 / (2.0 * 0.25)).exp();
        let gz = (-0.25f64 / (2.0 * 12.0 * 12.0)).exp(); // z = 47, centre 47.5
        assert!((at(2, 1, 47) - gy * gz).abs() < 1e-15);
        // Symmetric about the centre on every axis.
        assert_eq!(at(1, 0, 3), at(3, 3, 92));
        // Peak just under 1 (even axes are never sampled at the centre).
        let max = m.iter().copied().fold(0.0, f64::max);
        assert_eq!(max, at(2, 1, 47));
        // Far corners are below 1e-3 before the clamp: σ_x = 0.625 and
        // x = 2 from the centre gives exp(−5.12) · ... < 1e-3.
        assert_eq!(at(0, 0, 0), MIN_GAUSSIAN_WEIGHT);
        assert!(m.iter().all(|&v| (MIN_GAUSSIAN_WEIGHT..=1.0).contains(&v)));
    }

    #[test]
    fn a_gaussian_that_stays_above_the_floor_is_not_clamped() {
        // σ = 2·roi: the corner weight exp(−(1/2)²/(2·4))³ is well above 1e-3.
        let m = importance_map([2, 2, 2], Blend::Gaussian { sigma_scale: 2.0 });
        let g = (-0.25f64 / 32.0).exp();
        assert!(m.iter().all(|&v| (v - g * g * g).abs() < 1e-15));
    }
}
