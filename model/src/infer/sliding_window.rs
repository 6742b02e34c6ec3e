//! Sliding-window inference with the semantics of MONAI's
//! `sliding_window_inference` (reimplemented from its documented behaviour).
//!
//! - An ROI component of 0 means "the whole axis" (MONAI's non-positive
//!   ROI components).
//! - Axes smaller than the ROI are padded to it with a constant, split
//!   `⌊d/2⌋` before and `d − ⌊d/2⌋` after, and the output is cropped back.
//! - On each (padded) axis of size `s`, windows start every
//!   `max(⌊roi·(1 − overlap)⌋, 1)` voxels (one window when `roi = s`),
//!   stopping at the first window that reaches the end; a start past
//!   `s − roi` is pulled back to it, so the last window is flush with the
//!   end ([`window_starts`]). Windows are visited x-slowest, batch item by
//!   batch item, and sent to the predictor `batch` at a time (a group may
//!   mix batch items, as in MONAI).
//! - The output is `Σ w·pred / Σ w` with `w` the [`importance_map`].
//!
//! Memory: no window prediction is kept. Each one is folded into the output
//! as a running weighted mean, `m ← m + (w / W)(p − m)` with `W` the weight
//! so far (f64, one per voxel and batch item); `m` is the f32 output buffer
//! itself (on the host, `B·K·X·Y·Z` f32 plus `B·X·Y·Z` f64 for `W`). The
//! result equals `Σ w·p / Σ w` up to f32 rounding, and a model that returns
//! its input gives it back bit for bit in either blending mode. MONAI sums
//! `w·p` and `w` in f32 on the device instead; both are within f32 rounding
//! of the exact value.
//!
//! Not supported: predictors whose output spatial size differs from the ROI
//! (MONAI resamples the importance map for those), per-axis overlaps and
//! non-constant padding modes.

use candle_core::{DType, Tensor};
use rayon::prelude::*;

use super::importance::{Blend, importance_map};
use crate::{ModelError, Result};

/// Sliding-window settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SlidingWindow {
    /// Window size per spatial axis; 0 takes the whole axis.
    pub roi: [usize; 3],
    /// Windows per predictor call (MONAI's `sw_batch_size`).
    pub batch: usize,
    /// Fraction of a window shared with its neighbour, in [0, 1).
    pub overlap: f64,
    /// Blending of overlapping windows.
    pub blend: Blend,
    /// Value of the padding where the input is smaller than the ROI
    /// (MONAI's `cval`, default 0; 3DINO's images are in [−1, 1]).
    pub pad_value: f32,
}

impl SlidingWindow {
    /// Settings with MONAI's defaults for the rest: one window per call,
    /// constant blending, padding 0.
    pub fn new(roi: [usize; 3], overlap: f64) -> Self {
        Self {
            roi,
            batch: 1,
            overlap,
            blend: Blend::Constant,
            pad_value: 0.0,
        }
    }
}

/// Window start positions along one axis of `size` voxels (MONAI's
/// `_get_scan_interval` and `dense_patch_slices`); `roi` is clamped to
/// `size`.
pub fn window_starts(size: usize, roi: usize, overlap: f64) -> Vec<usize> {
    let roi = roi.min(size);
    let interval = if roi == size {
        roi
    } else {
        ((roi as f64 * (1.0 - overlap)) as usize).max(1)
    };
    let mut starts = Vec::new();
    for i in 0.. {
        let start = i * interval;
        starts.push(start.min(size - roi));
        if start + roi >= size {
            break;
        }
    }
    starts
}

/// [`SlidingWindow::run`] as a function.
///
/// # Errors
/// As [`SlidingWindow::run`].
pub fn sliding_window(
    x: &Tensor,
    settings: &SlidingWindow,
    predict: impl FnMut(&Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    settings.run(x, predict)
}

impl SlidingWindow {
    /// Runs `predict` over `x (B, C, X, Y, Z)`; `predict` maps windows
    /// `(n, C, roi)` (f32, on `x`'s device, `n ≤ batch`) to `(n, K, roi)`
    /// of any float dtype. Returns `(B, K, X, Y, Z)` f32 on `x`'s device.
    ///
    /// # Errors
    /// [`ModelError::Config`] for an overlap outside [0, 1) or a zero batch;
    /// [`ModelError::Input`] for a non-5-D input or a prediction of the
    /// wrong shape; whatever `predict` returns.
    pub fn run(
        &self,
        x: &Tensor,
        mut predict: impl FnMut(&Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        if !(0.0..1.0).contains(&self.overlap) || self.batch == 0 {
            return Err(ModelError::Config(format!(
                "sliding window: overlap {} must be in [0, 1) and batch {} positive",
                self.overlap, self.batch
            )));
        }
        let (b, _, sx, sy, sz) = x.dims5().map_err(|_| {
            ModelError::Input(format!(
                "sliding window: input {:?} is not (B, C, X, Y, Z)",
                x.dims()
            ))
        })?;
        let size = [sx, sy, sz];
        let roi: [usize; 3] = std::array::from_fn(|a| {
            if self.roi[a] == 0 {
                size[a]
            } else {
                self.roi[a]
            }
        });
        let pads: [(usize, usize); 3] = std::array::from_fn(|a| {
            let diff = roi[a].saturating_sub(size[a]);
            (diff / 2, diff - diff / 2)
        });
        let padded = pad_constant(&x.to_dtype(DType::F32)?, pads, self.pad_value)?;
        let full: [usize; 3] = std::array::from_fn(|a| size[a] + pads[a].0 + pads[a].1);
        let starts: [Vec<usize>; 3] =
            std::array::from_fn(|a| window_starts(full[a], roi[a], self.overlap));
        let imp = importance_map(roi, self.blend);
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
        // On the CPU, windows are cut from one host copy with row copies
        // (candle's strided copies of 3-D narrows are several times slower);
        // elsewhere with narrow + cat on the device.
        let host: Option<Vec<f32>> = if x.device().is_cpu() {
            Some(padded.flatten_all()?.to_vec1()?)
        } else {
            None
        };
        let channels = padded.dim(1)?;
        let mut acc = Accumulator::new(b, full, roi);
        for group in windows.chunks(self.batch) {
            let batch = match &host {
                Some(h) => {
                    let data = cut_windows(h, channels, full, roi, group);
                    let [rx, ry, rz] = roi;
                    Tensor::from_vec(data, (group.len(), channels, rx, ry, rz), x.device())?
                }
                None => narrow_windows(&padded, roi, group)?,
            };
            let pred = predict(&batch)?;
            let pd = pred.dims();
            if pd.len() != 5 || pd[0] != group.len() || pd[2..] != roi {
                return Err(ModelError::Input(format!(
                    "sliding window: the predictor returned {pd:?} for windows {:?}",
                    batch.dims()
                )));
            }
            let values: Vec<f32> = pred.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
            acc.add(group, pd[1], &values, &imp)?;
        }
        let k = acc.classes;
        let out = acc.into_cropped(size, pads);
        Ok(Tensor::from_vec(out, (b, k, sx, sy, sz), x.device())?)
    }
}

/// The windows `group` of `(B, C, full)` as `(n, C, roi)`, on its device.
fn narrow_windows(
    padded: &Tensor,
    roi: [usize; 3],
    group: &[(usize, [usize; 3])],
) -> Result<Tensor> {
    let crops = group
        .iter()
        .map(|&(bi, s)| {
            padded
                .narrow(0, bi, 1)?
                .narrow(2, s[0], roi[0])?
                .narrow(3, s[1], roi[1])?
                .narrow(4, s[2], roi[2])
        })
        .collect::<candle_core::Result<Vec<_>>>()?;
    Ok(Tensor::cat(&crops, 0)?)
}

/// The windows `group` of the row-major `(B, C, full)` volume `h`, as
/// `(n, C, roi)`.
fn cut_windows(
    h: &[f32],
    channels: usize,
    full: [usize; 3],
    roi: [usize; 3],
    group: &[(usize, [usize; 3])],
) -> Vec<f32> {
    let [fx, fy, fz] = full;
    let [rx, ry, rz] = roi;
    let mut out = Vec::with_capacity(group.len() * channels * rx * ry * rz);
    for &(bi, [x0, y0, z0]) in group {
        for c in 0..channels {
            let vol = &h[(bi * channels + c) * fx * fy * fz..][..fx * fy * fz];
            for x in x0..x0 + rx {
                for y in y0..y0 + ry {
                    let at = (x * fy + y) * fz + z0;
                    out.extend_from_slice(&vol[at..at + rz]);
                }
            }
        }
    }
    out
}

/// Pads the spatial axes of `(B, C, X, Y, Z)` with `value`.
fn pad_constant(x: &Tensor, pads: [(usize, usize); 3], value: f32) -> Result<Tensor> {
    let mut t = x.clone();
    for (a, &(lo, hi)) in pads.iter().enumerate() {
        if lo + hi == 0 {
            continue;
        }
        let mut parts = Vec::with_capacity(3);
        for (n, is_fill) in [(lo, true), (0, false), (hi, true)] {
            if !is_fill {
                parts.push(t.clone());
            } else if n > 0 {
                let mut dims = t.dims().to_vec();
                dims[2 + a] = n;
                parts.push(Tensor::full(value, dims, t.device())?);
            }
        }
        t = Tensor::cat(&parts, 2 + a)?;
    }
    Ok(t)
}

/// The running weighted mean over the padded volume.
struct Accumulator {
    full: [usize; 3],
    roi: [usize; 3],
    /// `(B, K, X, Y, Z)` means, allocated on the first prediction.
    mean: Vec<f32>,
    /// `(B, X, Y, Z)` weight so far.
    weight: Vec<f64>,
    /// Per-voxel `w / W` of the window being added (window-sized scratch).
    ratio: Vec<f64>,
    classes: usize,
}

impl Accumulator {
    fn new(b: usize, full: [usize; 3], roi: [usize; 3]) -> Self {
        let n: usize = full.iter().product();
        Self {
            full,
            roi,
            mean: Vec::new(),
            weight: vec![0.0; b * n],
            ratio: vec![0.0; roi.iter().product()],
            classes: 0,
        }
    }

    /// Folds one group's predictions `(n, K, roi)` in.
    fn add(
        &mut self,
        group: &[(usize, [usize; 3])],
        classes: usize,
        values: &[f32],
        imp: &[f64],
    ) -> Result<()> {
        let [fx, fy, fz] = self.full;
        let plane = fy * fz;
        let n_full = fx * plane;
        if self.classes == 0 {
            self.classes = classes;
            self.mean = vec![0.0; self.weight.len() / n_full * classes * n_full];
        } else if classes != self.classes {
            return Err(ModelError::Input(format!(
                "sliding window: the predictor returned {classes} channels after {}",
                self.classes
            )));
        }
        let [rx, ry, rz] = self.roi;
        let win = rx * ry * rz;
        for (w, &(bi, [x0, y0, z0])) in group.iter().enumerate() {
            // Weights first: ratio = w / (W + w), W += w.
            let weight = &mut self.weight[bi * n_full..(bi + 1) * n_full];
            let ratio = &mut self.ratio;
            weight
                .par_chunks_mut(plane)
                .skip(x0)
                .take(rx)
                .zip(ratio.par_chunks_mut(ry * rz).zip(imp.par_chunks(ry * rz)))
                .for_each(|(wp, (rp, ip))| {
                    for wy in 0..ry {
                        let row = (y0 + wy) * fz + z0;
                        let (wr, rr, ir) = (
                            &mut wp[row..row + rz],
                            &mut rp[wy * rz..(wy + 1) * rz],
                            &ip[wy * rz..(wy + 1) * rz],
                        );
                        for ((wv, r), &i) in wr.iter_mut().zip(rr).zip(ir) {
                            *wv += i;
                            *r = i / *wv;
                        }
                    }
                });
            // Then every class plane of this batch item in the window.
            let ratio = &self.ratio;
            let pred = &values[w * classes * win..(w + 1) * classes * win];
            self.mean[bi * classes * n_full..(bi + 1) * classes * n_full]
                .par_chunks_mut(plane)
                .enumerate()
                .filter(|(c, _)| (x0..x0 + rx).contains(&(c % fx)))
                .for_each(|(c, mp)| {
                    let (k, wx) = (c / fx, c % fx - x0);
                    for wy in 0..ry {
                        let row = (y0 + wy) * fz + z0;
                        let src = (k * rx + wx) * ry * rz + wy * rz;
                        let rr = &ratio[wx * ry * rz + wy * rz..][..rz];
                        let pr = &pred[src..src + rz];
                        for ((m, &r), &p) in mp[row..row + rz].iter_mut().zip(rr).zip(pr) {
                            let mf = f64::from(*m);
                            *m = (mf + r * (f64::from(p) - mf)) as f32;
                        }
                    }
                });
        }
        Ok(())
    }

    /// The means with the padding cropped away, `(B, K, X, Y, Z)`.
    fn into_cropped(self, size: [usize; 3], pads: [(usize, usize); 3]) -> Vec<f32> {
        if pads.iter().all(|&(lo, hi)| lo + hi == 0) {
            return self.mean;
        }
        let [fx, fy, fz] = self.full;
        let [sx, sy, sz] = size;
        let mut out = Vec::with_capacity(self.mean.len() / (fx * fy * fz) * sx * sy * sz);
        for vol in self.mean.chunks(fx * fy * fz) {
            for x in 0..sx {
                for y in 0..sy {
                    let at = ((x + pads[0].0) * fy + y + pads[1].0) * fz + pads[2].0;
                    out.extend_from_slice(&vol[at..at + sz]);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::*;
    use crate::kernels_ref::testing::uniform;

    #[test]
    fn window_starts_match_hand_computed_lists() {
        // 10 voxels, ROI 4, overlap 0: interval 4 -> 0, 4, then 8 pulled back to 6.
        assert_eq!(window_starts(10, 4, 0.0), vec![0, 4, 6]);
        // overlap 0.5 -> interval 2: 0, 2, 4, 6 (6 + 4 reaches the end).
        assert_eq!(window_starts(10, 4, 0.5), vec![0, 2, 4, 6]);
        // overlap 0.25 -> interval ⌊3⌋: 0, 3, 6.
        assert_eq!(window_starts(10, 4, 0.25), vec![0, 3, 6]);
        // overlap 0.75 -> interval 1.
        assert_eq!(window_starts(6, 4, 0.75), vec![0, 1, 2]);
        // overlap 0.9 -> ⌊0.4⌋ = 0, raised to 1.
        assert_eq!(window_starts(6, 4, 0.9), vec![0, 1, 2]);
        // ROI equal to (or larger than) the size: one window.
        assert_eq!(window_starts(4, 4, 0.5), vec![0]);
        assert_eq!(window_starts(3, 8, 0.5), vec![0]);
        // Exact tiling.
        assert_eq!(window_starts(8, 4, 0.0), vec![0, 4]);
        // 3DINO at test time: 181 voxels, ROI 96, overlap 0.75 -> interval 24:
        // 0, 24, 48, 72, then 96 pulled back to 85.
        assert_eq!(window_starts(181, 96, 0.75), vec![0, 24, 48, 72, 85]);
        // And the benchmark's 217 at overlap 0.5 -> interval 48.
        assert_eq!(window_starts(217, 96, 0.5), vec![0, 48, 96, 121]);
    }

    fn volume(shape: [usize; 5], seed: u64) -> Tensor {
        let n = shape.iter().product();
        Tensor::from_vec(uniform(n, seed, 100.0), shape.to_vec(), &Device::Cpu).unwrap()
    }

    #[test]
    fn an_identity_model_reproduces_its_input() {
        for (shape, roi) in [
            ([1, 2, 11, 9, 7], [4, 4, 4]),
            ([2, 1, 5, 13, 6], [4, 5, 3]),
            ([1, 1, 3, 2, 5], [4, 4, 4]), // smaller than the ROI: padded, cropped back
            ([2, 1, 3, 10, 4], [5, 3, 0]), // mixed: x padded, z whole
        ] {
            let x = volume(shape, 1);
            let want: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
            for overlap in [0.0, 0.25, 0.5, 0.75] {
                for (blend, exact) in [(Blend::Constant, true), (Blend::GAUSSIAN, false)] {
                    let sw = SlidingWindow {
                        roi,
                        batch: 3,
                        overlap,
                        blend,
                        pad_value: -7.0,
                    };
                    let y = sliding_window(&x, &sw, |w| Ok(w.clone())).unwrap();
                    assert_eq!(y.dims(), x.dims());
                    let got: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
                    for (g, w) in got.iter().zip(&want) {
                        if exact {
                            assert_eq!(g.to_bits(), w.to_bits(), "{shape:?} {overlap} {blend:?}");
                        } else {
                            assert!((g - w).abs() <= 1e-6 * w.abs().max(1.0), "{g} vs {w}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn host_and_device_window_cuts_agree() {
        let x = volume([2, 3, 7, 6, 5], 4);
        let h: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
        let group = [(1, [0, 2, 1]), (0, [3, 0, 2]), (1, [3, 2, 0])];
        let roi = [4, 4, 3];
        let host = cut_windows(&h, 3, [7, 6, 5], roi, &group);
        let dev = narrow_windows(&x, roi, &group).unwrap();
        assert_eq!(dev.dims(), &[3, 3, 4, 4, 3]);
        assert_eq!(dev.flatten_all().unwrap().to_vec1::<f32>().unwrap(), host);
    }

    #[test]
    fn the_padding_value_reaches_the_predictor() {
        // 1×1×2 input, ROI 1×1×5: padded 1 before and 2 after with -7.
        let x = Tensor::new(&[3f32, 4.0], &Device::Cpu)
            .unwrap()
            .reshape((1, 1, 1, 1, 2))
            .unwrap();
        let mut seen = Vec::new();
        let sw = SlidingWindow {
            pad_value: -7.0,
            ..SlidingWindow::new([1, 1, 5], 0.0)
        };
        let y = sw
            .run(&x, |w| {
                seen = w.flatten_all()?.to_vec1::<f32>()?;
                Ok(w.clone())
            })
            .unwrap();
        assert_eq!(seen, vec![-7.0, 3.0, 4.0, -7.0, -7.0]);
        assert_eq!(
            y.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            vec![3.0, 4.0]
        );
    }

    #[test]
    fn constant_blending_averages_window_indices() {
        // x: 7 voxels, ROI 4, overlap 0.5 -> starts 0, 2, 3 (4 pulled back
        // to 3). y: 2 voxels, ROI 2 -> one window. Window i predicts i + 1
        // in channel 0 and 10·(i + 1) in channel 1 (K = 2 from C = 1).
        // Voxel 0-1: {1}; 2: {1, 2}; 3: {1, 2, 3}; 4-5: {2, 3}; 6: {3}.
        let x = Tensor::zeros((1, 1, 7, 2, 1), DType::F32, &Device::Cpu).unwrap();
        let mut calls = 0f32;
        let sw = SlidingWindow {
            batch: 2, // groups of two windows: index = call's first + position
            ..SlidingWindow::new([4, 2, 1], 0.5)
        };
        let y = sw
            .run(&x, |w| {
                let n = w.dim(0)?;
                let mut v = Vec::new();
                for i in 0..n {
                    let idx = calls + i as f32 + 1.0;
                    v.extend(std::iter::repeat_n(idx, 8));
                    v.extend(std::iter::repeat_n(10.0 * idx, 8));
                }
                calls += n as f32;
                Ok(Tensor::from_vec(v, (n, 2, 4, 2, 1), w.device())?)
            })
            .unwrap();
        assert_eq!(calls, 3.0);
        assert_eq!(y.dims(), &[1, 2, 7, 2, 1]);
        let got: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
        let per_x = [1.0, 1.0, 1.5, 2.0, 2.5, 2.5, 3.0];
        let want: Vec<f32> = [1.0f32, 10.0]
            .iter()
            .flat_map(|&s| per_x.iter().flat_map(move |&v| [s * v, s * v]))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn gaussian_blending_weights_by_distance_from_the_window_centre() {
        // Two windows of 3 on 4 voxels (starts 0, 1), predicting 0 and 1.
        // Voxel 1 sits at the first window's centre (weight 1) and the second
        // window's edge (weight g); voxel 2 the other way round.
        let x = Tensor::zeros((1, 1, 4, 1, 1), DType::F32, &Device::Cpu).unwrap();
        let sigma_scale = 0.5; // σ = 1.5: g = exp(−1/4.5), above the 1e-3 floor
        let sw = SlidingWindow {
            blend: Blend::Gaussian { sigma_scale },
            ..SlidingWindow::new([3, 1, 1], 0.5)
        };
        let mut calls = 0f32;
        let y = sw
            .run(&x, |w| {
                calls += 1.0;
                Ok((w.ones_like()? * f64::from(calls - 1.0))?)
            })
            .unwrap();
        let got: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
        let g = (-1.0f64 / 4.5).exp();
        let want = [0.0, g / (1.0 + g), 1.0 / (1.0 + g), 1.0];
        for (a, b) in got.iter().zip(want) {
            assert!((f64::from(*a) - b).abs() < 1e-7, "{got:?} vs {want:?}");
        }
    }

    #[test]
    fn bad_settings_and_predictions_are_errors() {
        let x = Tensor::zeros((1, 1, 4, 4, 4), DType::F32, &Device::Cpu).unwrap();
        let bad = SlidingWindow::new([2, 2, 2], 1.0);
        assert!(matches!(
            bad.run(&x, |w| Ok(w.clone())),
            Err(ModelError::Config(_))
        ));
        let sw = SlidingWindow::new([2, 2, 2], 0.0);
        let wrong = sw.run(&x, |w| Ok(w.narrow(2, 0, 1)?));
        assert!(matches!(wrong, Err(ModelError::Input(_))));
        let x4 = Tensor::zeros((1, 4, 4, 4), DType::F32, &Device::Cpu).unwrap();
        assert!(matches!(
            sw.run(&x4, |w| Ok(w.clone())),
            Err(ModelError::Input(_))
        ));
    }

    /// Aggregation overhead on a 181×217×181 volume (ROI 96, overlap 0.5,
    /// Gaussian, identity model): `cargo test --release -p dino3d-model
    /// sliding_window_timing -- --ignored --nocapture`.
    #[test]
    #[ignore = "timing; run in release"]
    fn sliding_window_timing() {
        let x = volume([1, 1, 181, 217, 181], 3);
        let sw = SlidingWindow {
            blend: Blend::GAUSSIAN,
            ..SlidingWindow::new([96, 96, 96], 0.5)
        };
        let mut best = f64::INFINITY;
        for _ in 0..5 {
            let mut windows = 0;
            let start = std::time::Instant::now();
            let y = sw
                .run(&x, |w| {
                    windows += w.dim(0)?;
                    Ok(w.clone())
                })
                .unwrap();
            best = best.min(start.elapsed().as_secs_f64());
            assert_eq!(windows, 3 * 4 * 3);
            assert_eq!(y.dims(), x.dims());
        }
        println!(
            "sliding window 181x217x181, roi 96, overlap 0.5, gaussian, identity: \
             36 windows, best of 5 {best:.3} s on {} threads",
            rayon::current_num_threads()
        );
    }
}
