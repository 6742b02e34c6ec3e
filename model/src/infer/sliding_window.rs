//! Sliding-window inference with the semantics of MONAI's
//! `sliding_window_inference` (reimplemented from its documented behaviour):
//! windows of the ROI size on a grid with interval `roi·(1 − overlap)`, the
//! last window flush with the end, inputs smaller than the ROI padded
//! symmetrically and cropped back, predictions blended with a constant or
//! Gaussian importance map. Sums are kept in f64, so a constant-blended
//! identity model returns its input exactly.

use candle_core::{DType, Tensor};

use crate::{ModelError, Result};

/// How overlapping window predictions are weighted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Blend {
    /// Every voxel of a window weighs 1 (MONAI's `constant`).
    Constant,
    /// A Gaussian centred in the window, σ = `sigma_scale`·ROI per axis,
    /// scaled to peak 1 and clamped below at its smallest value (at least
    /// 1e-3), as MONAI's `gaussian` mode. MONAI integrates the Gaussian over
    /// each voxel (erf); this samples it at voxel centres.
    Gaussian {
        /// σ as a fraction of the ROI (MONAI: 0.125).
        sigma_scale: f64,
    },
}

/// Sliding-window settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SlidingWindow {
    /// Window size per spatial axis.
    pub roi: [usize; 3],
    /// Windows per predictor call.
    pub batch: usize,
    /// Fraction of a window shared with its neighbour, in [0, 1).
    pub overlap: f64,
    /// Blending.
    pub blend: Blend,
    /// Value of the padding when the input is smaller than the ROI.
    pub pad_value: f32,
}

/// Window start positions along one axis (MONAI's `dense_patch_slices`).
pub fn window_starts(size: usize, roi: usize, overlap: f64) -> Vec<usize> {
    let roi = roi.min(size);
    let interval = if roi == size {
        roi
    } else {
        ((roi as f64 * (1.0 - overlap)) as usize).max(1)
    };
    let mut starts = Vec::new();
    let mut i = 0;
    loop {
        let start = i * interval;
        let clamped = start.min(size - roi);
        starts.push(clamped);
        if start + roi >= size {
            break;
        }
        i += 1;
    }
    starts
}

/// The importance map of `blend` over a window, x-slowest (row-major).
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
                    for &z in &c {
                        map.push(x * y * z);
                    }
                }
            }
            let max = map.iter().cloned().fold(f64::MIN, f64::max);
            let min_positive = map
                .iter()
                .map(|v| v / max)
                .fold(f64::MAX, f64::min)
                .max(1e-3);
            map.iter_mut()
                .for_each(|v| *v = (*v / max).max(min_positive));
            map
        }
    }
}

impl SlidingWindow {
    /// Runs `predict` over `x (B, C, X, Y, Z)`; `predict` maps windows
    /// `(n, C, roi)` to `(n, K, roi)`. Returns `(B, K, X, Y, Z)` f32 on the
    /// input's device.
    ///
    /// # Errors
    /// Bad settings or shapes; whatever `predict` returns.
    pub fn run(
        &self,
        x: &Tensor,
        mut predict: impl FnMut(&Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        if !(0.0..1.0).contains(&self.overlap) || self.batch == 0 || self.roi.contains(&0) {
            return Err(ModelError::Config(format!(
                "sliding window: overlap {} must be in [0, 1), batch and roi positive",
                self.overlap
            )));
        }
        let (b, _, sx, sy, sz) = x.dims5()?;
        let size = [sx, sy, sz];
        // Pad what is smaller than the ROI, symmetrically (extra after).
        let pads: [(usize, usize); 3] = std::array::from_fn(|a| {
            let diff = self.roi[a].saturating_sub(size[a]);
            (diff / 2, diff - diff / 2)
        });
        let mut padded = x.to_dtype(DType::F32)?;
        for (a, &(lo, hi)) in pads.iter().enumerate() {
            if lo + hi > 0 {
                let dims = padded.dims().to_vec();
                let mut lo_dims = dims.clone();
                lo_dims[2 + a] = lo;
                let mut hi_dims = dims;
                hi_dims[2 + a] = hi;
                let fill = |d: Vec<usize>| Tensor::full(self.pad_value, d, padded.device());
                padded = Tensor::cat(&[&fill(lo_dims)?, &padded, &fill(hi_dims)?], 2 + a)?;
            }
        }
        let full: [usize; 3] = std::array::from_fn(|a| size[a] + pads[a].0 + pads[a].1);
        let starts: [Vec<usize>; 3] =
            std::array::from_fn(|a| window_starts(full[a], self.roi[a], self.overlap));
        let imp = importance_map(self.roi, self.blend);
        let mut windows = Vec::new();
        for bi in 0..b {
            for &x0 in &starts[0] {
                for &y0 in &starts[1] {
                    for &z0 in &starts[2] {
                        windows.push((bi, [x0, y0, z0]));
                    }
                }
            }
        }
        let n_full: usize = full.iter().product();
        let mut sum: Vec<f64> = Vec::new();
        let mut weight = vec![0f64; b * n_full];
        let mut classes = 0;
        for group in windows.chunks(self.batch) {
            let crops = group
                .iter()
                .map(|&(bi, s)| {
                    padded
                        .narrow(0, bi, 1)?
                        .narrow(2, s[0], self.roi[0])?
                        .narrow(3, s[1], self.roi[1])?
                        .narrow(4, s[2], self.roi[2])
                })
                .collect::<candle_core::Result<Vec<_>>>()?;
            let batch = Tensor::cat(&crops, 0)?;
            let pred = predict(&batch)?;
            let pd = pred.dims().to_vec();
            if pd.len() != 5 || pd[0] != group.len() || pd[2..] != self.roi {
                return Err(ModelError::Input(format!(
                    "the predictor returned {pd:?} for windows of {:?}",
                    batch.dims()
                )));
            }
            if classes == 0 {
                classes = pd[1];
                sum = vec![0f64; b * classes * n_full];
            } else if pd[1] != classes {
                return Err(ModelError::Input(
                    "the predictor changed its channel count".into(),
                ));
            }
            let values: Vec<f32> = pred.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
            let win: usize = self.roi.iter().product();
            for (w, &(bi, s)) in group.iter().enumerate() {
                for (i, &imp_i) in imp.iter().enumerate() {
                    let (wx, rem) = (
                        i / (self.roi[1] * self.roi[2]),
                        i % (self.roi[1] * self.roi[2]),
                    );
                    let (wy, wz) = (rem / self.roi[2], rem % self.roi[2]);
                    let at = ((s[0] + wx) * full[1] + s[1] + wy) * full[2] + s[2] + wz;
                    weight[bi * n_full + at] += imp_i;
                    for k in 0..classes {
                        let v = f64::from(values[(w * classes + k) * win + i]);
                        sum[(bi * classes + k) * n_full + at] += imp_i * v;
                    }
                }
            }
        }
        // Crop the padding away and divide.
        let n = sx * sy * sz;
        let mut out = vec![0f32; b * classes * n];
        for bi in 0..b {
            for k in 0..classes {
                for xi in 0..sx {
                    for yi in 0..sy {
                        for zi in 0..sz {
                            let at = ((xi + pads[0].0) * full[1] + yi + pads[1].0) * full[2]
                                + zi
                                + pads[2].0;
                            out[(bi * classes + k) * n + (xi * sy + yi) * sz + zi] =
                                (sum[(bi * classes + k) * n_full + at] / weight[bi * n_full + at])
                                    as f32;
                        }
                    }
                }
            }
        }
        Ok(Tensor::from_vec(out, (b, classes, sx, sy, sz), x.device())?)
    }
}
