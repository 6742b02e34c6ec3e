//! Random intensity augmentations with MONAI's semantics (MONAI 1.3):
//! `RandAdjustContrast`, `RandGaussianNoise`, `RandScaleIntensity`,
//! `RandShiftIntensity` and `RandHistogramShift` (pipeline-reference.md §2,
//! 3dino-reference.md §3.5).
//!
//! Every `apply` first draws `u < prob` (one `f64`); only if that fires does it
//! draw its parameters and change the image, in place. It returns whether it
//! fired. Uniform draws are numpy's `lo + (hi − lo)·u`, so `lo == hi` gives `lo`.
//! Minimum, maximum and statistics are over the whole image (all channels).
//!
//! * `RandAdjustContrast`: γ ~ U(gamma);
//!   y = ((x − min)/(max − min + 1e-7))^γ · (max − min) + min (float32, the
//!   1e-7 added in float32 as torch does). `invert_image` negates the image
//!   before and the result after. `retain_stats` then moves the result back to
//!   the mean and std of the (possibly negated) input:
//!   y ← (y − mean_y)/(std_y + 1e-8) · std_x + mean_x, with population stds
//!   (torch's `std()` is the sample std; the two only differ by a common factor,
//!   which cancels in std_x/std_y up to the 1e-8).
//! * `RandGaussianNoise`: σ ~ U(0, std) if `sample_std`, else `std`; every voxel
//!   gets its own N(mean, σ) draw, rounded to float32 and added.
//! * `RandScaleIntensity`: f ~ U(factors); y = x·(1 + f).
//! * `RandShiftIntensity`: o ~ U(offsets); y = x + o.
//! * `RandHistogramShift`: n uniform in `num_control_points` (both ends included);
//!   reference knots linspace(0, 1, n); floating knots the same, except that
//!   interior knot i (1 ≤ i ≤ n − 2) is drawn in order as
//!   U(floating[i − 1], reference[i + 1]), so the knots stay non-decreasing in
//!   [0, 1]. Each voxel goes through the piecewise-linear map taking the
//!   reference knots to the floating ones, both stretched to the image's
//!   [min, max]. A constant image is left as it is.

use rand::Rng;

use super::fast_math::pow_nonneg;
use super::image::Image;
use super::normal_noise::add_gaussian_noise;
use crate::exec::op::{Op, StepRng};
use crate::transforms::TransformError;
use crate::transforms::spec::same_size;
use crate::transforms::spec::{
    ANY, ANY_RANGE, Args, KEYS, POSITIVE, POSITIVE_RANGE, PROB, ParamDefault, ParamKind,
    TransformSpec, param,
};

/// MONAI's `RandAdjustContrast`: a random gamma curve between min and max.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RandAdjustContrast {
    /// Probability of firing.
    pub prob: f64,
    /// γ ~ U(gamma.0, gamma.1).
    pub gamma: (f64, f64),
    /// Negate before and after (the curve then bends the other way).
    pub invert_image: bool,
    /// Restore the input's mean and std afterwards.
    pub retain_stats: bool,
}

/// MONAI's `RandGaussianNoise`: i.i.d. additive Gaussian noise.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RandGaussianNoise {
    /// Probability of firing.
    pub prob: f64,
    /// Mean of the noise.
    pub mean: f64,
    /// Standard deviation of the noise, or its upper bound if `sample_std`.
    pub std: f64,
    /// Draw σ ~ U(0, std) instead of using `std`.
    pub sample_std: bool,
}

/// MONAI's `RandScaleIntensity`: y = x·(1 + f).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RandScaleIntensity {
    /// Probability of firing.
    pub prob: f64,
    /// f ~ U(factors.0, factors.1).
    pub factors: (f64, f64),
}

/// MONAI's `RandShiftIntensity`: y = x + o.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RandShiftIntensity {
    /// Probability of firing.
    pub prob: f64,
    /// o ~ U(offsets.0, offsets.1).
    pub offsets: (f64, f64),
}

/// MONAI's `RandHistogramShift`: a random monotone piecewise-linear remap.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RandHistogramShift {
    /// Probability of firing.
    pub prob: f64,
    /// Number of knots, uniform in `lo..=hi` (MONAI requires lo ≥ 3).
    pub num_control_points: (usize, usize),
}

/// The `u < prob` draw that decides whether a transform fires.
fn fires(prob: f64, rng: &mut impl Rng) -> bool {
    rng.random::<f64>() < prob
}

/// numpy's `uniform(lo, hi)`.
fn uniform(lo: f64, hi: f64, rng: &mut impl Rng) -> f64 {
    lo + (hi - lo) * rng.random::<f64>()
}

/// Minimum and maximum (NaNs are skipped unless first); `None` if empty.
fn min_max(data: &[f32]) -> Option<(f32, f32)> {
    let first = *data.first()?;
    // Eight independent lanes so that the compiler can vectorise.
    let (mut lo, mut hi) = ([first; 8], [first; 8]);
    let chunks = data.chunks_exact(8);
    let rest = chunks.remainder();
    for chunk in chunks {
        for ((l, h), &v) in lo.iter_mut().zip(hi.iter_mut()).zip(chunk) {
            *l = if v < *l { v } else { *l };
            *h = if v > *h { v } else { *h };
        }
    }
    let lo = rest.iter().chain(&lo).fold(first, |a, &v| a.min(v));
    let hi = rest.iter().chain(&hi).fold(first, |a, &v| a.max(v));
    Some((lo, hi))
}

/// Mean and population std, accumulated in f64.
fn mean_std(data: &[f32]) -> (f32, f32) {
    let n = data.len().max(1) as f64;
    let mean = data.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
    let var = data
        .iter()
        .map(|&v| (f64::from(v) - mean).powi(2))
        .sum::<f64>()
        / n;
    (mean as f32, var.sqrt() as f32)
}

fn negate(data: &mut [f32]) {
    for v in data {
        *v = -*v;
    }
}

/// MONAI's `AdjustContrast` with a given γ (see the module doc), in place.
pub fn adjust_contrast(img: &mut Image, gamma: f32, invert_image: bool, retain_stats: bool) {
    let data = &mut img.data;
    let Some((lo, hi)) = min_max(data) else {
        return;
    };
    if invert_image {
        negate(data);
    }
    let (lo, hi) = if invert_image { (-hi, -lo) } else { (lo, hi) };
    let stats = retain_stats.then(|| mean_std(data));
    let range = hi - lo;
    let denom = range + 1e-7;
    gamma_curve(data, lo, denom, gamma, range);
    if let Some((mean, std)) = stats {
        let (new_mean, new_std) = mean_std(data);
        let new_std = new_std + 1e-8;
        for v in data.iter_mut() {
            *v = (*v - new_mean) / new_std * std + mean;
        }
    }
    if invert_image {
        negate(data);
    }
}

/// `v ← ((v − lo)/denom)^γ · range + lo`, the contrast curve.
#[inline(always)]
fn gamma_curve_body(data: &mut [f32], lo: f32, denom: f32, gamma: f32, range: f32) {
    for v in data {
        *v = pow_nonneg((*v - lo) / denom, gamma) * range + lo;
    }
}

/// [`gamma_curve_body`] compiled for AVX-512 and AVX2 too, picked at run
/// time: 4x (AVX2) the baseline's lanes. Same arithmetic, no FMA
/// contraction, so every version gives the same bits (tested).
#[multiversion::multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512vl+avx2+fma",
    "x86_64+avx2+fma",
))]
fn gamma_curve(data: &mut [f32], lo: f32, denom: f32, gamma: f32, range: f32) {
    gamma_curve_body(data, lo, denom, gamma, range);
}

/// Maps `img` through the piecewise-linear function taking the `reference`
/// knots to the `floating` knots, both in [0, 1] and stretched to the image's
/// [min, max] (MONAI's `RandHistogramShift` once its knots are drawn). Values
/// below the first or above the last reference knot follow the end segments. A
/// constant image is left unchanged.
///
/// Uniform reference knots (linspace(0, 1, n), as `RandHistogramShift` makes)
/// find their segment by one multiplication; others by a binary search.
///
/// # Panics
/// If there are fewer than 2 knots or the two slices differ in length.
pub fn histogram_shift(img: &mut Image, reference: &[f32], floating: &[f32]) {
    let n = reference.len();
    assert!(
        n >= 2 && floating.len() == n,
        "histogram_shift needs two equal knot lists of at least 2 points, got {n} and {}",
        floating.len()
    );
    let Some((lo, hi)) = min_max(&img.data) else {
        return;
    };
    if lo == hi {
        return;
    }
    let (lo, range) = (f64::from(lo), f64::from(hi) - f64::from(lo));
    // Segment s sends [reference[s], reference[s + 1]] onto
    // [floating[s], floating[s + 1]]; in image units, y = slope·x + intercept.
    let segments: Vec<(f64, f64)> = reference
        .windows(2)
        .zip(floating.windows(2))
        .map(|(r, f)| {
            let (r0, r1) = (f64::from(r[0]), f64::from(r[1]));
            let (f0, f1) = (f64::from(f[0]), f64::from(f[1]));
            let slope = if r1 > r0 { (f1 - f0) / (r1 - r0) } else { 0.0 };
            // y = lo + range·(f0 + slope·((x − lo)/range − r0))
            (slope, lo * (1.0 - slope) + range * (f0 - slope * r0))
        })
        .collect();
    let last = segments.len() - 1;
    let uniform_knots = reference
        .iter()
        .enumerate()
        .all(|(i, &r)| (f64::from(r) - i as f64 / (n - 1) as f64).abs() <= 1e-7);
    if uniform_knots {
        let per_unit = (n - 1) as f64 / range;
        for v in &mut img.data {
            let x = f64::from(*v);
            // `as u32` saturates: NaN and negatives give 0.
            let s = (((x - lo) * per_unit) as u32 as usize).min(last);
            let (slope, intercept) = segments[s];
            *v = (slope * x + intercept) as f32;
        }
    } else {
        for v in &mut img.data {
            let x = f64::from(*v);
            let t = (x - lo) / range;
            let s = reference
                .partition_point(|&r| f64::from(r) <= t)
                .saturating_sub(1)
                .min(last);
            let (slope, intercept) = segments[s];
            *v = (slope * x + intercept) as f32;
        }
    }
}

impl RandAdjustContrast {
    /// With probability `prob`, draws γ and applies [`adjust_contrast`].
    pub fn apply(&self, img: &mut Image, rng: &mut impl Rng) -> bool {
        if !fires(self.prob, rng) {
            return false;
        }
        let gamma = uniform(self.gamma.0, self.gamma.1, rng);
        adjust_contrast(img, gamma as f32, self.invert_image, self.retain_stats);
        true
    }
}

impl RandGaussianNoise {
    /// With probability `prob`, draws σ and adds N(mean, σ) to every voxel.
    pub fn apply(&self, img: &mut Image, rng: &mut impl Rng) -> bool {
        if !fires(self.prob, rng) {
            return false;
        }
        let sigma = if self.sample_std {
            uniform(0.0, self.std, rng)
        } else {
            self.std
        };
        // One draw of the step's stream seeds a PCG stream for the voxels:
        // as deterministic, and several times faster than ChaCha8 per value.
        add_gaussian_noise(&mut img.data, self.mean as f32, sigma as f32, rng.random());
        true
    }
}

impl RandScaleIntensity {
    /// With probability `prob`, draws f and multiplies by 1 + f.
    pub fn apply(&self, img: &mut Image, rng: &mut impl Rng) -> bool {
        if !fires(self.prob, rng) {
            return false;
        }
        let scale = (1.0 + uniform(self.factors.0, self.factors.1, rng)) as f32;
        for v in &mut img.data {
            *v *= scale;
        }
        true
    }
}

impl RandShiftIntensity {
    /// With probability `prob`, draws o and adds it.
    pub fn apply(&self, img: &mut Image, rng: &mut impl Rng) -> bool {
        if !fires(self.prob, rng) {
            return false;
        }
        let offset = uniform(self.offsets.0, self.offsets.1, rng) as f32;
        for v in &mut img.data {
            *v += offset;
        }
        true
    }
}

impl RandHistogramShift {
    /// With probability `prob`, draws the knots and applies [`histogram_shift`].
    ///
    /// # Panics
    /// If `num_control_points` is not `(lo, hi)` with 3 ≤ lo ≤ hi (MONAI's check).
    pub fn apply(&self, img: &mut Image, rng: &mut impl Rng) -> bool {
        if !fires(self.prob, rng) {
            return false;
        }
        let (reference, floating) = self.draw_knots(rng);
        histogram_shift(img, &reference, &floating);
        true
    }

    /// The reference and floating knots (drawn in f64 as numpy does).
    fn draw_knots(&self, rng: &mut impl Rng) -> (Vec<f32>, Vec<f32>) {
        let (lo, hi) = self.num_control_points;
        assert!(
            (3..=hi).contains(&lo),
            "num_control_points must be (lo, hi) with 3 <= lo <= hi, got {:?}",
            self.num_control_points
        );
        let n = rng.random_range(lo..=hi);
        // numpy's linspace(0, 1, n): i·(1/(n − 1)), the last point exactly 1.
        let step = 1.0 / (n - 1) as f64;
        let reference: Vec<f64> = (0..n)
            .map(|i| if i == n - 1 { 1.0 } else { i as f64 * step })
            .collect();
        let mut floating = reference.clone();
        for i in 1..n - 1 {
            floating[i] = uniform(floating[i - 1], reference[i + 1], rng);
        }
        let to_f32 = |v: Vec<f64>| -> Vec<f32> { v.into_iter().map(|x| x as f32).collect() };
        (to_f32(reference), to_f32(floating))
    }
}

impl Op for RandAdjustContrast {
    fn apply(&self, img: &mut Image, rng: &mut StepRng, _: bool) -> Result<(), TransformError> {
        RandAdjustContrast::apply(self, img, rng);
        Ok(())
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

impl Op for RandGaussianNoise {
    fn apply(&self, img: &mut Image, rng: &mut StepRng, _: bool) -> Result<(), TransformError> {
        RandGaussianNoise::apply(self, img, rng);
        Ok(())
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

impl Op for RandScaleIntensity {
    fn apply(&self, img: &mut Image, rng: &mut StepRng, _: bool) -> Result<(), TransformError> {
        RandScaleIntensity::apply(self, img, rng);
        Ok(())
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

impl Op for RandShiftIntensity {
    fn apply(&self, img: &mut Image, rng: &mut StepRng, _: bool) -> Result<(), TransformError> {
        RandShiftIntensity::apply(self, img, rng);
        Ok(())
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

impl Op for RandHistogramShift {
    fn apply(&self, img: &mut Image, rng: &mut StepRng, _: bool) -> Result<(), TransformError> {
        RandHistogramShift::apply(self, img, rng);
        Ok(())
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// The recipe's `RandAdjustContrast`.
pub const RAND_ADJUST_CONTRAST: TransformSpec = TransformSpec {
    name: "RandAdjustContrast",
    is_random: true,
    params: &[
        KEYS,
        PROB,
        param("gamma", POSITIVE_RANGE, ParamDefault::Pair(0.5, 4.5)),
        param("invert_image", ParamKind::Bool, ParamDefault::Bool(false)),
        param("retain_stats", ParamKind::Bool, ParamDefault::Bool(false)),
    ],
    summary: "gamma curve between the image's min and max, gamma ~ U(gamma)",
    check: None,
    nests: false,
    output_size: same_size,
    build: |a: &Args<'_>| {
        Ok(Box::new(RandAdjustContrast {
            prob: a.num("prob")?,
            gamma: a.pair("gamma")?,
            invert_image: a.flag("invert_image")?,
            retain_stats: a.flag("retain_stats")?,
        }))
    },
};

/// The recipe's `RandGaussianNoise`.
pub const RAND_GAUSSIAN_NOISE: TransformSpec = TransformSpec {
    name: "RandGaussianNoise",
    is_random: true,
    params: &[
        KEYS,
        PROB,
        param("mean", ANY, ParamDefault::Num(0.0)),
        param("std", POSITIVE, ParamDefault::Num(0.1)),
        param("sample_std", ParamKind::Bool, ParamDefault::Bool(true)),
    ],
    summary: "add N(mean, s) noise, s ~ U(0, std) (or std)",
    check: None,
    nests: false,
    output_size: same_size,
    build: |a: &Args<'_>| {
        Ok(Box::new(RandGaussianNoise {
            prob: a.num("prob")?,
            mean: a.num("mean")?,
            std: a.num("std")?,
            sample_std: a.flag("sample_std")?,
        }))
    },
};

/// The recipe's `RandScaleIntensity`.
pub const RAND_SCALE_INTENSITY: TransformSpec = TransformSpec {
    name: "RandScaleIntensity",
    is_random: true,
    params: &[
        KEYS,
        PROB,
        param("factors", ANY_RANGE, ParamDefault::Required),
    ],
    summary: "x * (1 + f), f ~ U(factors)",
    check: None,
    nests: false,
    output_size: same_size,
    build: |a: &Args<'_>| {
        Ok(Box::new(RandScaleIntensity {
            prob: a.num("prob")?,
            factors: a.pair("factors")?,
        }))
    },
};

/// The recipe's `RandShiftIntensity`.
pub const RAND_SHIFT_INTENSITY: TransformSpec = TransformSpec {
    name: "RandShiftIntensity",
    is_random: true,
    params: &[
        KEYS,
        PROB,
        param("offsets", ANY_RANGE, ParamDefault::Required),
    ],
    summary: "x + o, o ~ U(offsets)",
    check: None,
    nests: false,
    output_size: same_size,
    build: |a: &Args<'_>| {
        Ok(Box::new(RandShiftIntensity {
            prob: a.num("prob")?,
            offsets: a.pair("offsets")?,
        }))
    },
};

/// The recipe's `RandHistogramShift`.
pub const RAND_HISTOGRAM_SHIFT: TransformSpec = TransformSpec {
    name: "RandHistogramShift",
    is_random: true,
    params: &[
        KEYS,
        PROB,
        param(
            "num_control_points",
            ParamKind::Int { min: 3, max: 1024 },
            ParamDefault::Num(10.0),
        ),
    ],
    summary: "piecewise-linear intensity remap through randomly moved control points",
    check: None,
    nests: false,
    output_size: same_size,
    build: |a: &Args<'_>| {
        let n = a.count("num_control_points")?;
        Ok(Box::new(RandHistogramShift {
            prob: a.num("prob")?,
            num_control_points: (n, n),
        }))
    },
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transforms::rng::DrawKey;

    fn key(sample: u64) -> DrawKey {
        DrawKey {
            sample,
            ..DrawKey::default()
        }
    }

    /// `n` voxels uniform in [lo, hi), from a fixed key.
    fn noise_image(n: usize, lo: f32, hi: f32, shape: [usize; 4]) -> Image {
        let mut rng = key(u64::MAX).for_transform(7).rng();
        let data: Vec<f32> = (0..n).map(|_| rng.random_range(lo..hi)).collect();
        let mut img = Image::ramp(shape);
        assert_eq!(img.data.len(), n);
        img.data = data;
        img
    }

    fn assert_close(got: &[f32], want: &[f64], tol: f64) {
        assert_eq!(got.len(), want.len());
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            assert!(
                (f64::from(g) - w).abs() <= tol,
                "voxel {i}: {g} vs {w} (tolerance {tol})"
            );
        }
    }

    fn stats64(x: &[f64]) -> (f64, f64) {
        let n = x.len() as f64;
        let mean = x.iter().sum::<f64>() / n;
        let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
        (mean, var.sqrt())
    }

    /// The contrast formula written out in f64.
    fn contrast64(x: &[f32], gamma: f64, invert: bool, retain: bool) -> Vec<f64> {
        let sign = if invert { -1.0 } else { 1.0 };
        let x: Vec<f64> = x.iter().map(|&v| sign * f64::from(v)).collect();
        let lo = x.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = x.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let range = hi - lo;
        let mut y: Vec<f64> = x
            .iter()
            .map(|v| ((v - lo) / (range + 1e-7)).powf(gamma) * range + lo)
            .collect();
        if retain {
            let (m0, s0) = stats64(&x);
            let (m1, s1) = stats64(&y);
            y.iter_mut()
                .for_each(|v| *v = (*v - m1) / (s1 + 1e-8) * s0 + m0);
        }
        y.into_iter().map(|v| sign * v).collect()
    }

    /// The histogram shift written out directly: locate t among the reference
    /// knots by a linear scan, interpolate the floating knots, in f64.
    fn shift64(x: &[f32], reference: &[f32], floating: &[f32]) -> Vec<f64> {
        let r: Vec<f64> = reference.iter().map(|&v| f64::from(v)).collect();
        let f: Vec<f64> = floating.iter().map(|&v| f64::from(v)).collect();
        let lo = x
            .iter()
            .map(|&v| f64::from(v))
            .fold(f64::INFINITY, f64::min);
        let hi = x
            .iter()
            .map(|&v| f64::from(v))
            .fold(f64::NEG_INFINITY, f64::max);
        x.iter()
            .map(|&v| {
                let t = (f64::from(v) - lo) / (hi - lo);
                let mut s = 0;
                while s + 2 < r.len() && t >= r[s + 1] {
                    s += 1;
                }
                let value = f[s] + (t - r[s]) * (f[s + 1] - f[s]) / (r[s + 1] - r[s]);
                lo + value * (hi - lo)
            })
            .collect()
    }

    #[test]
    fn gamma_2_on_a_ramp_by_hand() {
        let mut img = Image::row(vec![0.0, 1.0, 2.0], 1);
        adjust_contrast(&mut img, 2.0, false, false);
        // t = x/2 = (0, 0.5, 1); t²·2 = (0, 0.5, 2).
        assert_close(&img.data, &[0.0, 0.5, 2.0], 1e-6);
        // Minimum and maximum are over all channels: channel 1 is (2, 3).
        let mut two = Image::row(vec![0.0, 1.0, 2.0, 3.0], 2);
        adjust_contrast(&mut two, 2.0, false, false);
        assert_close(&two.data, &[0.0, 1.0 / 3.0, 4.0 / 3.0, 3.0], 1e-6);
        // γ = 1 is (up to the 1e-7) the identity; an empty image is fine.
        let mut same = Image::row(vec![-1.0, 0.25, 3.0], 1);
        adjust_contrast(&mut same, 1.0, true, false);
        assert_close(&same.data, &[-1.0, 0.25, 3.0], 1e-6);
        let mut empty = Image::row(vec![], 1);
        adjust_contrast(&mut empty, 2.0, true, true);
        assert!(empty.data.is_empty());
    }

    #[test]
    fn invert_image_bends_the_curve_the_other_way() {
        let mut img = Image::row(vec![0.0, 1.0, 2.0], 1);
        adjust_contrast(&mut img, 2.0, true, false);
        // −x = (0, −1, −2): min −2, t = (1, 0.5, 0), t²·2 − 2 = (0, −1.5, −2),
        // negated: (0, 1.5, 2).
        assert_close(&img.data, &[0.0, 1.5, 2.0], 1e-6);
    }

    #[test]
    fn retain_stats_keeps_mean_and_std() {
        for invert in [false, true] {
            let mut img = noise_image(4000, -1.0, 3.0, [1, 10, 20, 20]);
            let (m0, s0) = mean_std(&img.data);
            adjust_contrast(&mut img, 3.0, invert, true);
            let (m1, s1) = mean_std(&img.data);
            assert!((m1 - m0).abs() < 1e-5, "mean {m0} -> {m1}");
            assert!((s1 - s0).abs() < 1e-5, "std {s0} -> {s1}");
            // ... while the shape did change.
            let plain = contrast64(
                &noise_image(4000, -1.0, 3.0, [1, 10, 20, 20]).data,
                3.0,
                invert,
                false,
            );
            assert!(
                plain
                    .iter()
                    .zip(&img.data)
                    .any(|(a, &b)| (a - f64::from(b)).abs() > 0.1)
            );
        }
    }

    /// The version picked for this CPU (AVX-512 or AVX2 where there is
    /// one) gives the baseline build's bits.
    #[test]
    fn every_cpu_version_of_the_curve_gives_the_same_bits() {
        let x = noise_image(33 * 17 * 9, -3.0, 5.0, [1, 33, 17, 9]);
        for gamma in [0.5f32, 0.81, 1.7, 2.0] {
            let (mut fast, mut base) = (x.data.clone(), x.data.clone());
            gamma_curve(&mut fast, -3.0, 8.0 + 1e-7, gamma, 8.0);
            gamma_curve_body(&mut base, -3.0, 8.0 + 1e-7, gamma, 8.0);
            let bits = |d: &[f32]| d.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&fast), bits(&base), "γ = {gamma}");
        }
    }

    #[test]
    fn contrast_matches_a_float64_reference() {
        for (i, gamma) in [0.5f32, 0.73, 1.0, 1.9, 4.5].into_iter().enumerate() {
            for (invert, retain) in [(false, false), (true, false), (false, true), (true, true)] {
                let (lo, hi) = (-1.0 - i as f32, 1.0 + 2.0 * i as f32);
                let x = noise_image(3000, lo, hi, [2, 10, 15, 10]);
                let mut img = x.clone();
                adjust_contrast(&mut img, gamma, invert, retain);
                let want = contrast64(&x.data, f64::from(gamma), invert, retain);
                let tol = 1e-6 * f64::from(hi - lo);
                assert_close(&img.data, &want, tol);
            }
        }
    }

    #[test]
    fn scale_and_shift_by_hand() {
        let x = vec![-2.0, 0.0, 0.5, 4.0];
        let mut img = Image::row(x.clone(), 1);
        let scale = RandScaleIntensity {
            prob: 1.0,
            factors: (0.5, 0.5),
        };
        assert!(scale.apply(&mut img, &mut key(0).rng()));
        assert_eq!(img.data, [-3.0, 0.0, 0.75, 6.0]);
        let shift = RandShiftIntensity {
            prob: 1.0,
            offsets: (-2.0, -2.0),
        };
        assert!(shift.apply(&mut img, &mut key(0).rng()));
        assert_eq!(img.data, [-5.0, -2.0, -1.25, 4.0]);
        // Noise with σ = 0 adds exactly the mean.
        let noise = RandGaussianNoise {
            prob: 1.0,
            mean: 0.25,
            std: 0.0,
            sample_std: false,
        };
        let mut img = Image::row(x, 1);
        assert!(noise.apply(&mut img, &mut key(0).rng()));
        assert_eq!(img.data, [-1.75, 0.25, 0.75, 4.25]);
    }

    #[test]
    fn histogram_shift_with_identity_knots_is_the_identity() {
        let x = noise_image(1000, -1.0, 1.0, [1, 10, 10, 10]);
        for n in [2, 3, 10, 17] {
            let knots: Vec<f32> = (0..n).map(|i| i as f32 / (n - 1) as f32).collect();
            let mut img = x.clone();
            histogram_shift(&mut img, &knots, &knots);
            assert_eq!(img, x, "{n} knots");
        }
        // Non-uniform identity knots take the binary-search path.
        let knots = [0.0, 0.1, 0.7, 1.0];
        let mut img = x.clone();
        histogram_shift(&mut img, &knots, &knots);
        assert_eq!(img, x);
    }

    #[test]
    fn histogram_shift_three_knots_by_hand() {
        let mut img = Image::row(vec![0.0, 1.0, 2.0, 3.0, 4.0], 1);
        // t = (0, 0.25, 0.5, 0.75, 1); the middle knot 0.5 moves to 0.25:
        // (0, 0.125, 0.25, 0.625, 1), times 4.
        histogram_shift(&mut img, &[0.0, 0.5, 1.0], &[0.0, 0.25, 1.0]);
        assert_eq!(img.data, [0.0, 0.5, 1.0, 2.5, 4.0]);
        // Same with min −2, max 2 and non-uniform reference knots
        // (0, 0.25, 1) → (0, 0.5, 1): t = 0.5 lies in the second segment,
        // 0.5 + (0.5 − 0.25)·(0.5/0.75) = 2/3.
        let mut img = Image::row(vec![-2.0, -1.0, 0.0, 2.0], 1);
        histogram_shift(&mut img, &[0.0, 0.25, 1.0], &[0.0, 0.5, 1.0]);
        assert_close(&img.data, &[-2.0, 0.0, 4.0 * 2.0 / 3.0 - 2.0, 2.0], 1e-6);
        // A constant image stays as it is.
        let mut flat = Image::row(vec![3.0; 4], 1);
        histogram_shift(&mut flat, &[0.0, 0.5, 1.0], &[0.0, 0.1, 1.0]);
        assert_eq!(flat.data, [3.0; 4]);
    }

    #[test]
    fn histogram_shift_matches_a_float64_reference() {
        let t = RandHistogramShift {
            prob: 1.0,
            num_control_points: (3, 12),
        };
        for sample in 0..40 {
            let (reference, floating) = t.draw_knots(&mut key(sample).rng());
            let (lo, hi) = (-1.0 - sample as f32, 1.0 + 0.5 * sample as f32);
            let x = noise_image(2000, lo, hi, [2, 10, 10, 10]);
            let mut img = x.clone();
            histogram_shift(&mut img, &reference, &floating);
            let tol = 1e-6 * f64::from(hi - lo);
            assert_close(&img.data, &shift64(&x.data, &reference, &floating), tol);
            // The binary-search path agrees too (knots nudged off uniform).
            let nudged: Vec<f32> = reference
                .iter()
                .enumerate()
                .map(|(i, &r)| if i == 1 { r * 0.9 } else { r })
                .collect();
            let mut img = x.clone();
            histogram_shift(&mut img, &nudged, &floating);
            assert_close(&img.data, &shift64(&x.data, &nudged, &floating), tol);
        }
    }

    #[test]
    fn knots_are_monotone_in_the_unit_interval_and_counts_uniform() {
        let t = RandHistogramShift {
            prob: 1.0,
            num_control_points: (3, 6),
        };
        let mut counts = [0usize; 7];
        let mut first_interior = 0.0;
        for sample in 0..4000 {
            let (reference, floating) = t.draw_knots(&mut key(sample).rng());
            let n = reference.len();
            counts[n] += 1;
            assert_eq!(floating.len(), n);
            assert_eq!((floating[0], floating[n - 1]), (0.0, 1.0));
            assert_eq!((reference[0], reference[n - 1]), (0.0, 1.0));
            assert!(floating.windows(2).all(|w| w[0] <= w[1]), "{floating:?}");
            // Interior knot i is below reference knot i + 1.
            assert!((1..n - 1).all(|i| floating[i] <= reference[i + 1]));
            let ten = RandHistogramShift {
                prob: 1.0,
                num_control_points: (10, 10),
            };
            let (r10, f10) = ten.draw_knots(&mut key(sample).rng());
            assert_eq!(r10.len(), 10);
            assert!((r10[3] - 1.0 / 3.0).abs() < 1e-7);
            // floating[1] ~ U(0, 2/9): mean 1/9.
            first_interior += f64::from(f10[1]);
        }
        assert_eq!(&counts[..3], [0, 0, 0]);
        assert!(
            counts[3..].iter().all(|&c| (900..1100).contains(&c)),
            "{counts:?}"
        );
        let mean = first_interior / 4000.0;
        assert!((mean - 1.0 / 9.0).abs() < 0.005, "{mean}");
    }

    #[test]
    fn apply_recovers_the_drawn_floating_knots() {
        // An image whose values are the reference knots maps onto the floating ones.
        let t = RandHistogramShift {
            prob: 1.0,
            num_control_points: (10, 10),
        };
        let knots: Vec<f32> = (0..10).map(|i| i as f32 / 9.0).collect();
        for sample in 0..20 {
            let mut img = Image::row(knots.clone(), 1);
            assert!(t.apply(&mut img, &mut key(sample).rng()));
            let mut rng = key(sample).rng();
            assert!(fires(1.0, &mut rng));
            let (_, floating) = t.draw_knots(&mut rng);
            let want: Vec<f64> = floating.iter().map(|&v| f64::from(v)).collect();
            assert_close(&img.data, &want, 1e-6);
        }
    }

    /// A transform's `apply` with the generator of `key(sample)`.
    type Apply = Box<dyn Fn(&mut Image, u64) -> bool>;

    /// The transforms as closures, for the shared probability tests.
    fn all(prob: f64) -> Vec<(&'static str, Apply)> {
        let contrast = RandAdjustContrast {
            prob,
            gamma: (1.5, 2.0),
            invert_image: false,
            retain_stats: false,
        };
        let noise = RandGaussianNoise {
            prob,
            mean: 0.0,
            std: 0.1,
            sample_std: true,
        };
        let scale = RandScaleIntensity {
            prob,
            factors: (0.1, 0.2),
        };
        let shift = RandShiftIntensity {
            prob,
            offsets: (0.1, 0.2),
        };
        let hist = RandHistogramShift {
            prob,
            num_control_points: (10, 10),
        };
        vec![
            (
                "contrast",
                Box::new(move |img: &mut Image, s: u64| contrast.apply(img, &mut key(s).rng())),
            ),
            (
                "noise",
                Box::new(move |img: &mut Image, s: u64| noise.apply(img, &mut key(s).rng())),
            ),
            (
                "scale",
                Box::new(move |img: &mut Image, s: u64| scale.apply(img, &mut key(s).rng())),
            ),
            (
                "shift",
                Box::new(move |img: &mut Image, s: u64| shift.apply(img, &mut key(s).rng())),
            ),
            (
                "hist",
                Box::new(move |img: &mut Image, s: u64| hist.apply(img, &mut key(s).rng())),
            ),
        ]
    }

    #[test]
    fn fire_rate_follows_prob_and_prob_0_or_1_is_never_or_always() {
        let x = noise_image(64, -1.0, 1.0, [1, 4, 4, 4]);
        for (name, f) in all(0.3) {
            let mut fired = 0;
            for s in 0..3000 {
                let mut img = x.clone();
                let did = f(&mut img, s);
                fired += usize::from(did);
                assert_eq!(
                    did,
                    img != x,
                    "{name}: fired {did} but image changed {}",
                    img != x
                );
            }
            assert!(
                (800..1000).contains(&fired),
                "{name}: {fired} of 3000 at p = 0.3"
            );
        }
        for (name, f) in all(0.0) {
            for s in 0..200 {
                let mut img = x.clone();
                assert!(!f(&mut img, s), "{name}");
                assert_eq!(img, x, "{name}");
            }
        }
        for (name, f) in all(1.0) {
            for s in 0..200 {
                let mut img = x.clone();
                assert!(f(&mut img, s), "{name}");
                assert_ne!(img, x, "{name}");
            }
        }
    }

    #[test]
    fn same_key_same_output() {
        let x = noise_image(512, -1.0, 1.0, [1, 8, 8, 8]);
        for (name, f) in all(0.7) {
            for s in 0..20 {
                let (mut a, mut b) = (x.clone(), x.clone());
                assert_eq!(f(&mut a, s), f(&mut b, s), "{name}");
                assert_eq!(a, b, "{name}");
            }
        }
    }

    /// Counts of `values` in four equal bins of [lo, hi]; all must be ≈ n/4.
    fn assert_uniform(name: &str, values: &[f64], lo: f64, hi: f64) {
        let tol = 1e-4 * (hi - lo);
        let mut bins = [0usize; 4];
        for &v in values {
            assert!(
                v >= lo - tol && v <= hi + tol,
                "{name}: {v} outside [{lo}, {hi}]"
            );
            bins[(((v - lo) / (hi - lo) * 4.0) as usize).min(3)] += 1;
        }
        let quarter = values.len() / 4;
        assert!(
            bins.iter().all(|&b| b.abs_diff(quarter) < quarter / 8),
            "{name}: {bins:?}"
        );
    }

    #[test]
    fn parameters_are_uniform_in_their_ranges() {
        let (mut gammas, mut factors, mut offsets) = (vec![], vec![], vec![]);
        for s in 0..4000 {
            let c = RandAdjustContrast {
                prob: 1.0,
                gamma: (0.5, 2.0),
                invert_image: false,
                retain_stats: false,
            };
            let mut img = Image::row(vec![0.0, 1.0, 2.0], 1);
            c.apply(&mut img, &mut key(s).rng());
            // y1 = 2·0.5^γ.
            gammas.push((f64::from(img.data[1]) / 2.0).ln() / 0.5f64.ln());
            let mut img = Image::row(vec![1.0], 1);
            RandScaleIntensity {
                prob: 1.0,
                factors: (-0.3, 0.1),
            }
            .apply(&mut img, &mut key(s).rng());
            factors.push(f64::from(img.data[0]) - 1.0);
            let mut img = Image::row(vec![0.0], 1);
            RandShiftIntensity {
                prob: 1.0,
                offsets: (-0.5, 1.5),
            }
            .apply(&mut img, &mut key(s).rng());
            offsets.push(f64::from(img.data[0]));
        }
        assert_uniform("gamma", &gammas, 0.5, 2.0);
        assert_uniform("factor", &factors, -0.3, 0.1);
        assert_uniform("offset", &offsets, -0.5, 1.5);
    }

    #[test]
    fn noise_has_the_requested_mean_and_std() {
        let mut zero = Image::ramp([1, 50, 40, 50]);
        zero.data.fill(0.0);
        let n = zero.data.len();
        let fixed = RandGaussianNoise {
            prob: 1.0,
            mean: 0.5,
            std: 0.1,
            sample_std: false,
        };
        let mut img = zero.clone();
        assert!(fixed.apply(&mut img, &mut key(3).rng()));
        let noise: Vec<f64> = img
            .data
            .iter()
            .zip(&zero.data)
            .map(|(&y, &x)| f64::from(y) - f64::from(x))
            .collect();
        let (mean, std) = stats64(&noise);
        // Standard errors: 0.1/√n ≈ 3e-4 for the mean, ≈ 2e-4 for the std.
        assert!(
            (mean - 0.5).abs() < 2e-3 && (std - 0.1).abs() < 2e-3,
            "{mean} {std} of {n}"
        );
        // Roughly normal: about 68.3 % within one σ, 95.4 % within two.
        let within =
            |k: f64| noise.iter().filter(|v| (**v - 0.5).abs() < k * 0.1).count() as f64 / n as f64;
        assert!((within(1.0) - 0.6827).abs() < 0.01 && (within(2.0) - 0.9545).abs() < 0.005);
        // sample_std: σ ~ U(0, 0.002), mean of the σs ≈ 0.001.
        let sampled = RandGaussianNoise {
            prob: 1.0,
            mean: 0.0,
            std: 0.002,
            sample_std: true,
        };
        let small = Image::row(vec![0.0; 2000], 1);
        let sigmas: Vec<f64> = (0..400)
            .map(|s| {
                let mut img = small.clone();
                sampled.apply(&mut img, &mut key(s).rng());
                let v: Vec<f64> = img.data.iter().map(|&y| f64::from(y)).collect();
                let (m, sd) = stats64(&v);
                assert!(m.abs() < 5.0 * 0.002 / (2000f64).sqrt(), "{m}");
                sd
            })
            .collect();
        assert!(sigmas.iter().all(|&s| s < 0.002 * 1.1), "{sigmas:?}");
        let mean_sigma = sigmas.iter().sum::<f64>() / sigmas.len() as f64;
        assert!((mean_sigma - 0.001).abs() < 1e-4, "{mean_sigma}");
        let below_half = sigmas.iter().filter(|&&s| s < 0.001).count();
        assert!((160..240).contains(&below_half), "{below_half} of 400");
    }
}
