//! `GaussianSmooth`/`RandGaussianSmooth` and `GaussianSharpen`/
//! `RandGaussianSharpen` with MONAI's semantics (`approx="erf"`).
//!
//! * Kernel ([`erf_kernel`]): taps at x ∈ [−t, t], t = int(max(4σ, 0.5) + 0.5),
//!   k(x) = ½[erf((x+½)/(σ√2)) − erf((x−½)/(σ√2))], clamped ≥ 0 and **not**
//!   renormalised (the taps of σ = 1 sum to 1 − 7·10⁻⁶).
//! * [`gaussian_smooth`]: separable convolution along x, y and z of every
//!   channel with **zero padding** (voxels outside the volume count as 0, so
//!   borders are pulled towards 0), accumulated in float32.
//! * [`gaussian_sharpen`]: b1 = G_σ1 x, b2 = G_σ2 b1, out = b1 + α(b1 − b2).
//! * [`RandGaussianSmooth`]: fires when `U[0,1) < prob`, then draws σ per axis
//!   ~ U(range), in the order x, y, z.
//! * [`RandGaussianSharpen`]: fires when `U[0,1) < prob`, then draws σ1 per axis
//!   ~ U(sigma1 range), σ2 per axis ~ U(sigma2.0, σ1) (MONAI's scalar `sigma2`
//!   form, its default, so σ2 ≤ σ1), then α ~ U(alpha).
//!
//! Speed: the x pass runs on zero-padded copies of each row; the y and z passes
//! add whole rows (`LANES` voxels at a time, kept in registers), so every inner
//! loop is contiguous and vectorises. The kernel's symmetry halves the
//! multiplications. z planes pass through a ring of 2r + 1 planes, so the
//! working set stays in cache and the output overwrites the input. Buffers are
//! cached per thread; no threads inside: parallelism is across samples.

use std::cell::RefCell;

use rand::Rng;

use super::image::Image;
use crate::exec::op::{Op, StepRng};
use crate::transforms::TransformError;
use crate::transforms::spec::same_size;
use crate::transforms::spec::{
    Args, KEYS, POSITIVE_RANGE, PROB, ParamDefault, TransformSpec, param,
};

/// Voxels accumulated together in registers: enough independent sums to
/// keep the adders busy at AVX-512's width too (at 16, a 96³ blur ran 30%
/// slower there).
const LANES: usize = 32;
/// The block for a remainder of 16 to 31 voxels (48-wide views).
const HALF_LANES: usize = 16;

/// MONAI's "erf" Gaussian kernel for `sigma` (truncated at 4σ), centre in the
/// middle; `sigma <= 0` (or NaN) gives the identity `[1.0]`.
pub fn erf_kernel(sigma: f64) -> Vec<f32> {
    if sigma.is_nan() || sigma <= 0.0 {
        return vec![1.0];
    }
    let tail = ((4.0 * sigma).max(0.5) + 0.5) as usize;
    let c = 1.0 / (sigma * std::f64::consts::SQRT_2);
    let half: Vec<f32> = (0..=tail)
        .map(|x| {
            let x = x as f64;
            (0.5 * (libm::erf((x + 0.5) * c) - libm::erf((x - 0.5) * c))).max(0.0) as f32
        })
        .collect();
    half[1..].iter().rev().chain(&half).copied().collect()
}

/// Taps 0..=t of the (symmetric) kernel of `sigma`.
fn half_kernel(sigma: f64) -> Vec<f32> {
    let k = erf_kernel(sigma);
    k[k.len() / 2..].to_vec()
}

/// Reusable buffers of one thread.
#[derive(Default)]
struct Scratch {
    /// The last planes after the x and y passes.
    ring: Vec<f32>,
    /// Where the source rows of one output row start.
    at: Vec<usize>,
    /// One z plane after the x pass.
    plane: Vec<f32>,
    /// A zero-padded row.
    pad: Vec<f32>,
    /// A row's output, rounded up to whole `LANES`.
    row: Vec<f32>,
    /// Sharpen's second blur.
    copy: Vec<f32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::default();
}

/// `W` values of `s` from `at`.
#[inline(always)]
fn lanes<const W: usize>(s: &[f32], at: usize) -> &[f32; W] {
    s[at..at + W].try_into().expect("slice of W values")
}

/// acc += w · a.
#[inline(always)]
fn add_one<const W: usize>(acc: &mut [f32; W], w: f32, a: &[f32; W]) {
    for (o, &x) in acc.iter_mut().zip(a) {
        *o += w * x;
    }
}

/// acc += w · (a + b): the two taps at ±d of a symmetric kernel.
#[inline(always)]
fn add_pair<const W: usize>(acc: &mut [f32; W], w: f32, a: &[f32; W], b: &[f32; W]) {
    for ((o, &x), &y) in acc.iter_mut().zip(a).zip(b) {
        *o += w * (x + y);
    }
}

/// One row along x: `dst[i] = Σ_d h[|d|] · src[i + d]`, zero outside.
#[inline(always)]
fn conv_row(src: &[f32], dst: &mut [f32], h: &[f32], pad: &mut Vec<f32>, row: &mut Vec<f32>) {
    let n = src.len();
    let r = h.len() - 1;
    // Whole blocks of LANES, then one of HALF_LANES if that covers the rest.
    let m = n.div_ceil(HALF_LANES) * HALF_LANES;
    pad.clear();
    pad.resize(m + 2 * r, 0.0);
    pad[r..r + n].copy_from_slice(src);
    row.resize(m, 0.0);
    let full = m / LANES * LANES;
    for i in (0..full).step_by(LANES) {
        conv_row_block::<LANES>(pad, &mut row[i..i + LANES], h, i + r);
    }
    if full < m {
        conv_row_block::<HALF_LANES>(pad, &mut row[full..m], h, full + r);
    }
    dst.copy_from_slice(&row[..n]);
}

/// `W` outputs of [`conv_row`] from padded position `at`.
#[inline(always)]
fn conv_row_block<const W: usize>(pad: &[f32], out: &mut [f32], h: &[f32], at: usize) {
    let mut acc = [0.0f32; W];
    add_one(&mut acc, h[0], lanes(pad, at));
    for (d, &w) in h.iter().enumerate().skip(1) {
        add_pair(&mut acc, w, lanes(pad, at - d), lanes(pad, at + d));
    }
    out.copy_from_slice(&acc);
}

/// The source rows of one output row j of a convolution across rows: `at[r + d]`
/// is where row j + d starts, for d from −`below` to `above` (the rows inside
/// the volume; r = kernel radius).
struct RowTaps<'a> {
    at: &'a [usize],
    below: usize,
    above: usize,
}

/// `W` voxels from `o` of one output row: Σ_d h[|d|] · (row j + d)[o..o + W].
#[inline(always)]
fn conv_rows_block<const W: usize>(
    src: &[f32],
    out: &mut [f32],
    h: &[f32],
    t: &RowTaps<'_>,
    o: usize,
) {
    let r = h.len() - 1;
    let both = t.below.min(t.above);
    let mut acc = [0.0f32; W];
    add_one(&mut acc, h[0], lanes(src, t.at[r] + o));
    for (d, &w) in h.iter().enumerate().take(both + 1).skip(1) {
        add_pair(
            &mut acc,
            w,
            lanes(src, t.at[r - d] + o),
            lanes(src, t.at[r + d] + o),
        );
    }
    for (d, &w) in h.iter().enumerate().take(t.below + 1).skip(both + 1) {
        add_one(&mut acc, w, lanes(src, t.at[r - d] + o));
    }
    for (d, &w) in h.iter().enumerate().take(t.above + 1).skip(both + 1) {
        add_one(&mut acc, w, lanes(src, t.at[r + d] + o));
    }
    out[o..o + W].copy_from_slice(&acc);
}

/// Output row j (all of `out`) of a convolution across rows of `n` (y: rows
/// along x of a plane; z: planes): Σ_d h[|d|] · row (j + d), rows outside the
/// volume count as 0; `start(t)` is where row t starts in `src`.
#[inline(always)]
fn conv_across(
    src: &[f32],
    out: &mut [f32],
    h: &[f32],
    (j, n): (usize, usize),
    start: impl Fn(usize) -> usize,
    at: &mut Vec<usize>,
) {
    let r = h.len() - 1;
    let (below, above) = (r.min(j), r.min(n - 1 - j));
    at.clear();
    at.resize(2 * r + 1, 0);
    for t in j - below..=j + above {
        at[r + t - j] = start(t);
    }
    let taps = RowTaps { at, below, above };
    let inner = out.len();
    let full = inner / LANES * LANES;
    for o in (0..full).step_by(LANES) {
        conv_rows_block::<LANES>(src, out, h, &taps, o);
    }
    let half = full + (inner - full) / HALF_LANES * HALF_LANES;
    if half > full {
        conv_rows_block::<HALF_LANES>(src, out, h, &taps, full);
    }
    for o in half..inner {
        conv_rows_block::<1>(src, out, h, &taps, o);
    }
}

/// Smooths one channel of spatial shape `[nx, ny, nz]` in place with the half
/// kernels `h` of the three axes.
///
/// Each z plane gets its x and y passes into a ring of the last 2r + 1 planes
/// (r: radius along z); once plane k is in, output plane k − r is complete and
/// overwrites its input, which is no longer needed. The ring stays in cache.
///
/// Compiled for AVX-512 and AVX2 too and picked at run time (the same
/// arithmetic, no FMA contraction: the same bits, tested).
#[multiversion::multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512vl+avx2+fma",
    "x86_64+avx2+fma",
))]
fn smooth_channel(ch: &mut [f32], dims: [usize; 3], h: &[Vec<f32>; 3], s: &mut Scratch) {
    smooth_channel_body(ch, dims, h, s);
}

/// [`smooth_channel`] for the build's baseline CPU.
#[inline(always)]
fn smooth_channel_body(
    ch: &mut [f32],
    [nx, ny, nz]: [usize; 3],
    h: &[Vec<f32>; 3],
    s: &mut Scratch,
) {
    let plane = nx * ny;
    let r = h[2].len() - 1;
    let slots = (2 * r + 1).min(nz);
    let Scratch {
        ring,
        plane: pbuf,
        pad,
        row,
        at,
        ..
    } = s;
    ring.resize(slots * plane, 0.0);
    pbuf.resize(plane, 0.0);
    for k in 0..nz + r {
        if k < nz {
            let src = &ch[k * plane..(k + 1) * plane];
            for (x_row, o) in src.chunks_exact(nx).zip(pbuf.chunks_exact_mut(nx)) {
                conv_row(x_row, o, &h[0], pad, row);
            }
            let dst = &mut ring[k % slots * plane..][..plane];
            for (j, out) in dst.chunks_exact_mut(nx).enumerate() {
                conv_across(pbuf, out, &h[1], (j, ny), |t| t * nx, at);
            }
        }
        if let Some(j) = k.checked_sub(r)
            && j < nz
        {
            let out = &mut ch[j * plane..(j + 1) * plane];
            conv_across(ring, out, &h[2], (j, nz), |t| t % slots * plane, at);
        }
    }
}

/// Smooths every channel of `data` (spatial shape `dims`).
fn smooth_data(data: &mut [f32], dims: [usize; 3], sigma: [f64; 3], s: &mut Scratch) {
    let len: usize = dims.iter().product();
    if len == 0 {
        return;
    }
    let h = sigma.map(half_kernel);
    for ch in data.chunks_exact_mut(len) {
        smooth_channel(ch, dims, &h, s);
    }
}

/// The spatial shape of `img`.
fn dims(img: &Image) -> [usize; 3] {
    [img.shape[1], img.shape[2], img.shape[3]]
}

/// MONAI's `GaussianSmooth(sigma)`: in place, per channel, zero padding.
pub fn gaussian_smooth(img: &mut Image, sigma: [f64; 3]) {
    let dims = dims(img);
    SCRATCH.with_borrow_mut(|s| smooth_data(&mut img.data, dims, sigma, s));
}

/// MONAI's `GaussianSharpen(sigma1, sigma2, alpha)`: in place,
/// b1 = G_σ1 x, b2 = G_σ2 b1, out = b1 + α(b1 − b2), all in float32.
pub fn gaussian_sharpen(img: &mut Image, sigma1: [f64; 3], sigma2: [f64; 3], alpha: f32) {
    let dims = dims(img);
    SCRATCH.with_borrow_mut(|s| {
        smooth_data(&mut img.data, dims, sigma1, s);
        let mut b2 = std::mem::take(&mut s.copy);
        b2.clear();
        b2.extend_from_slice(&img.data);
        smooth_data(&mut b2, dims, sigma2, s);
        for (o, &b) in img.data.iter_mut().zip(&b2) {
            *o += alpha * (*o - b);
        }
        s.copy = b2;
    });
}

/// numpy's `uniform(lo, hi)`: lo + (hi − lo)·U[0,1).
fn uniform(rng: &mut impl Rng, (lo, hi): (f64, f64)) -> f64 {
    lo + (hi - lo) * rng.random::<f64>()
}

/// MONAI's `RandGaussianSmooth`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RandGaussianSmooth {
    /// Probability of smoothing.
    pub prob: f64,
    /// Range of σ along x (voxels).
    pub sigma_x: (f64, f64),
    /// Range of σ along y.
    pub sigma_y: (f64, f64),
    /// Range of σ along z.
    pub sigma_z: (f64, f64),
}

impl Default for RandGaussianSmooth {
    /// MONAI's defaults: σ ∈ (0.25, 1.5) on every axis, `prob = 0.1`.
    fn default() -> Self {
        RandGaussianSmooth {
            prob: 0.1,
            sigma_x: (0.25, 1.5),
            sigma_y: (0.25, 1.5),
            sigma_z: (0.25, 1.5),
        }
    }
}

impl RandGaussianSmooth {
    /// Draws whether to fire and, if so, σ of x, y and z.
    pub fn draw(&self, rng: &mut impl Rng) -> Option<[f64; 3]> {
        if rng.random::<f64>() >= self.prob {
            return None;
        }
        let x = uniform(rng, self.sigma_x);
        let y = uniform(rng, self.sigma_y);
        let z = uniform(rng, self.sigma_z);
        Some([x, y, z])
    }

    /// Smooths `img` in place if the draw fires; returns whether it did.
    pub fn apply(&self, img: &mut Image, rng: &mut impl Rng) -> bool {
        self.draw(rng)
            .map(|sigma| gaussian_smooth(img, sigma))
            .is_some()
    }
}

/// The parameters [`RandGaussianSharpen`] drew.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SharpenDraw {
    /// σ of the first blur, per axis.
    pub sigma1: [f64; 3],
    /// σ of the second blur, per axis (≤ `sigma1`).
    pub sigma2: [f64; 3],
    /// Sharpening strength.
    pub alpha: f64,
}

/// MONAI's `RandGaussianSharpen` (3DINO uses its defaults).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RandGaussianSharpen {
    /// Probability of sharpening.
    pub prob: f64,
    /// Range of σ1 along x.
    pub sigma1_x: (f64, f64),
    /// Range of σ1 along y.
    pub sigma1_y: (f64, f64),
    /// Range of σ1 along z.
    pub sigma1_z: (f64, f64),
    /// σ2 along x is drawn from U(`sigma2_x.0`, σ1 along x); `.1` is not used
    /// (MONAI's scalar `sigma2`, its default).
    pub sigma2_x: (f64, f64),
    /// As `sigma2_x`, along y.
    pub sigma2_y: (f64, f64),
    /// As `sigma2_x`, along z.
    pub sigma2_z: (f64, f64),
    /// Range of α.
    pub alpha: (f64, f64),
}

impl Default for RandGaussianSharpen {
    /// MONAI's defaults: σ1 ∈ (0.5, 1), σ2 ∈ (0.5, σ1), α ∈ (10, 30), `prob = 0.1`.
    fn default() -> Self {
        RandGaussianSharpen {
            prob: 0.1,
            sigma1_x: (0.5, 1.0),
            sigma1_y: (0.5, 1.0),
            sigma1_z: (0.5, 1.0),
            sigma2_x: (0.5, 1.0),
            sigma2_y: (0.5, 1.0),
            sigma2_z: (0.5, 1.0),
            alpha: (10.0, 30.0),
        }
    }
}

impl RandGaussianSharpen {
    /// Draws whether to fire and, if so, σ1 (x, y, z), σ2 (x, y, z) and α.
    pub fn draw(&self, rng: &mut impl Rng) -> Option<SharpenDraw> {
        if rng.random::<f64>() >= self.prob {
            return None;
        }
        let mut sigma1 = [0.0; 3];
        for (s, range) in sigma1
            .iter_mut()
            .zip([self.sigma1_x, self.sigma1_y, self.sigma1_z])
        {
            *s = uniform(rng, range);
        }
        let mut sigma2 = [0.0; 3];
        for ((s, &s1), lo) in
            sigma2
                .iter_mut()
                .zip(&sigma1)
                .zip([self.sigma2_x.0, self.sigma2_y.0, self.sigma2_z.0])
        {
            *s = uniform(rng, (lo, s1));
        }
        let alpha = uniform(rng, self.alpha);
        Some(SharpenDraw {
            sigma1,
            sigma2,
            alpha,
        })
    }

    /// Sharpens `img` in place if the draw fires; returns whether it did.
    pub fn apply(&self, img: &mut Image, rng: &mut impl Rng) -> bool {
        self.draw(rng)
            .map(|d| gaussian_sharpen(img, d.sigma1, d.sigma2, d.alpha as f32))
            .is_some()
    }
}

impl Op for RandGaussianSmooth {
    fn apply(&self, img: &mut Image, rng: &mut StepRng, _: bool) -> Result<(), TransformError> {
        RandGaussianSmooth::apply(self, img, rng);
        Ok(())
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

impl Op for RandGaussianSharpen {
    fn apply(&self, img: &mut Image, rng: &mut StepRng, _: bool) -> Result<(), TransformError> {
        RandGaussianSharpen::apply(self, img, rng);
        Ok(())
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// The recipe's `RandGaussianSmooth`.
pub const RAND_GAUSSIAN_SMOOTH: TransformSpec = TransformSpec {
    name: "RandGaussianSmooth",
    is_random: true,
    params: &[
        KEYS,
        PROB,
        param("sigma_x", POSITIVE_RANGE, ParamDefault::Pair(0.25, 1.5)),
        param("sigma_y", POSITIVE_RANGE, ParamDefault::Pair(0.25, 1.5)),
        param("sigma_z", POSITIVE_RANGE, ParamDefault::Pair(0.25, 1.5)),
    ],
    summary: "separable Gaussian blur (erf kernel, zero padding), sigma per axis random",
    check: None,
    nests: false,
    output_size: same_size,
    build: |a: &Args<'_>| {
        Ok(Box::new(RandGaussianSmooth {
            prob: a.num("prob")?,
            sigma_x: a.pair("sigma_x")?,
            sigma_y: a.pair("sigma_y")?,
            sigma_z: a.pair("sigma_z")?,
        }))
    },
};

/// The recipe's `RandGaussianSharpen`.
pub const RAND_GAUSSIAN_SHARPEN: TransformSpec = TransformSpec {
    name: "RandGaussianSharpen",
    is_random: true,
    params: &[
        KEYS,
        PROB,
        param("sigma1_x", POSITIVE_RANGE, ParamDefault::Pair(0.5, 1.0)),
        param("sigma1_y", POSITIVE_RANGE, ParamDefault::Pair(0.5, 1.0)),
        param("sigma1_z", POSITIVE_RANGE, ParamDefault::Pair(0.5, 1.0)),
        param("sigma2_x", POSITIVE_RANGE, ParamDefault::Pair(0.5, 1.0)),
        param("sigma2_y", POSITIVE_RANGE, ParamDefault::Pair(0.5, 1.0)),
        param("sigma2_z", POSITIVE_RANGE, ParamDefault::Pair(0.5, 1.0)),
        param("alpha", POSITIVE_RANGE, ParamDefault::Pair(10.0, 30.0)),
    ],
    summary: "b = G(s1) x; b + alpha (b - G(s2) b), sigmas and alpha random",
    check: None,
    nests: false,
    output_size: same_size,
    build: |a: &Args<'_>| {
        Ok(Box::new(RandGaussianSharpen {
            prob: a.num("prob")?,
            sigma1_x: a.pair("sigma1_x")?,
            sigma1_y: a.pair("sigma1_y")?,
            sigma1_z: a.pair("sigma1_z")?,
            sigma2_x: a.pair("sigma2_x")?,
            sigma2_y: a.pair("sigma2_y")?,
            sigma2_z: a.pair("sigma2_z")?,
            alpha: a.pair("alpha")?,
        }))
    },
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transforms::rng::DrawKey;

    fn noise(shape: [usize; 4], seed: u64) -> Image {
        Image::noise(shape, seed)
    }

    /// The version picked for this CPU (AVX-512 or AVX2 where there is
    /// one) gives the baseline build's bits, on rows that take the 32-,
    /// 16- and 1-voxel blocks.
    #[test]
    fn every_cpu_version_of_the_blur_gives_the_same_bits() {
        for dims in [[96, 50, 20], [48, 48, 9], [57, 7, 13]] {
            let img = noise([1, dims[0], dims[1], dims[2]], 3);
            let h = [1.5, 0.7, 1.1].map(half_kernel);
            let (mut fast, mut base) = (img.data.clone(), img.data.clone());
            let mut s = Scratch::default();
            smooth_channel(&mut fast, dims, &h, &mut s);
            smooth_channel_body(&mut base, dims, &h, &mut s);
            let bits = |d: &[f32]| d.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&fast), bits(&base), "{dims:?}");
        }
    }

    /// Direct float64 convolution with zero padding, per channel.
    fn reference_smooth(img: &Image, sigma: [f64; 3]) -> Vec<f64> {
        let [c, nx, ny, nz] = img.shape;
        let k: Vec<Vec<f64>> = sigma
            .iter()
            .map(|&s| erf_kernel(s).iter().map(|&w| f64::from(w)).collect())
            .collect();
        let r: Vec<i64> = k.iter().map(|k| (k.len() / 2) as i64).collect();
        let n = [nx as i64, ny as i64, nz as i64];
        let mut out = vec![0.0; img.data.len()];
        for ch in 0..c {
            for kk in 0..nz {
                for j in 0..ny {
                    for i in 0..nx {
                        let mut acc = 0.0;
                        for dz in -r[2]..=r[2] {
                            for dy in -r[1]..=r[1] {
                                for dx in -r[0]..=r[0] {
                                    let p = [i as i64 + dx, j as i64 + dy, kk as i64 + dz];
                                    if (0..3).any(|a| p[a] < 0 || p[a] >= n[a]) {
                                        continue;
                                    }
                                    let w = k[0][(dx + r[0]) as usize]
                                        * k[1][(dy + r[1]) as usize]
                                        * k[2][(dz + r[2]) as usize];
                                    let v = img.at(ch, p[0] as usize, p[1] as usize, p[2] as usize);
                                    acc += w * f64::from(v);
                                }
                            }
                        }
                        out[img.index(ch, i, j, kk)] = acc;
                    }
                }
            }
        }
        out
    }

    use crate::transforms::max_abs_diff as max_diff;

    #[test]
    fn erf_kernel_matches_hand_computed_taps() {
        let k = erf_kernel(1.0);
        assert_eq!(k.len(), 9, "σ = 1: radius int(4.5) = 4");
        // Centre: erf(0.5/√2); next: ½[erf(1.5/√2) − erf(0.5/√2)].
        assert!((k[4] - 0.382_924_9).abs() < 1e-6, "{}", k[4]);
        assert!((k[5] - 0.241_730_3).abs() < 1e-6, "{}", k[5]);
        assert!((0..9).all(|i| k[i] == k[8 - i]), "symmetric: {k:?}");
        // Not renormalised: the taps sum to erf(4.5/√2) = 1 − 6.8e-6.
        let sum: f64 = k.iter().map(|&w| f64::from(w)).sum();
        assert!((1.0 - sum) > 3e-6 && (1.0 - sum) < 1e-5, "sum {sum}");
        // σ = 0.25: radius int(max(1, 0.5) + 0.5) = 1, centre erf(√2) = 0.9544997.
        let k = erf_kernel(0.25);
        assert_eq!(k.len(), 3);
        assert!((k[1] - 0.954_499_7).abs() < 1e-6, "{k:?}");
        // σ = 1.5: radius int(6.5) = 6; σ = 0.1: radius int(max(0.4, 0.5) + 0.5) = 1.
        assert_eq!(erf_kernel(1.5).len(), 13);
        assert_eq!(erf_kernel(0.1).len(), 3);
        assert_eq!(erf_kernel(0.0), vec![1.0]);
        assert_eq!(erf_kernel(-1.0), vec![1.0]);
    }

    #[test]
    fn an_impulse_becomes_the_outer_product_of_the_kernels() {
        for sigma in [[1.0; 3], [0.5, 1.0, 0.75]] {
            let mut img = Image::ramp([1, 9, 9, 9]);
            img.data.fill(0.0);
            let centre = img.index(0, 4, 4, 4);
            img.data[centre] = 1.0;
            gaussian_smooth(&mut img, sigma);
            let k = sigma.map(|s| {
                let k = erf_kernel(s);
                let pad = (9 - k.len()) / 2;
                let mut full = vec![0.0f32; 9];
                full[pad..pad + k.len()].copy_from_slice(&k);
                full
            });
            for z in 0..9 {
                for y in 0..9 {
                    for x in 0..9 {
                        let want = k[0][x] * k[1][y] * k[2][z];
                        let got = img.at(0, x, y, z);
                        assert!(
                            (got - want).abs() <= 1e-7 * want.max(1e-3),
                            "{sigma:?} ({x}, {y}, {z}): {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn zero_padding_darkens_the_borders() {
        let mut img = Image::ramp([1, 12, 12, 12]);
        img.data.fill(1.0);
        gaussian_smooth(&mut img, [1.0; 3]);
        let k: Vec<f64> = erf_kernel(1.0).iter().map(|&w| f64::from(w)).collect();
        let full: f64 = k.iter().sum();
        let half: f64 = k[4..].iter().sum();
        let (corner, inner) = (img.at(0, 0, 0, 0), img.at(0, 6, 6, 6));
        assert!((f64::from(corner) - half.powi(3)).abs() < 1e-6, "{corner}");
        assert!((f64::from(inner) - full.powi(3)).abs() < 1e-6, "{inner}");
        assert!(corner < 0.35 && inner < 1.0 && inner > 0.9999);
        // A face voxel: only x is cut.
        let face = img.at(0, 0, 6, 6);
        assert!(
            (f64::from(face) - half * full * full).abs() < 1e-6,
            "{face}"
        );
    }

    #[test]
    fn smoothing_matches_a_direct_float64_convolution() {
        for (shape, sigma) in [
            ([2, 7, 8, 9], [0.6, 1.2, 0.9]),
            // x not a multiple of LANES, kernels longer than the axes.
            ([2, 21, 5, 4], [1.5, 1.0, 0.3]),
            ([1, 3, 16, 5], [1.5, 0.25, 1.5]),
            ([1, 40, 3, 1], [1.1, 0.0, 1.0]),
            // More planes than the z ring holds (2r + 1 = 11).
            ([1, 5, 4, 20], [0.5, 0.7, 1.2]),
        ] {
            let img = noise(shape, 7);
            let want = reference_smooth(&img, sigma);
            let mut got = img.clone();
            gaussian_smooth(&mut got, sigma);
            let d = max_diff(&got.data, &want);
            assert!(d < 1e-5, "{shape:?} {sigma:?}: {d}");
            assert_eq!(
                (got.shape, got.spacing, got.affine),
                (img.shape, img.spacing, img.affine)
            );
        }
    }

    #[test]
    fn sharpening_is_b1_plus_alpha_times_b1_minus_b2() {
        let img = noise([2, 10, 9, 8], 3);
        let (s1, s2, alpha) = ([1.0, 0.8, 0.6], [0.75, 0.5, 0.6], 20.0);
        let b1 = reference_smooth(&img, s1);
        let mut b1_img = img.clone();
        b1_img.data = b1.iter().map(|&v| v as f32).collect();
        let b2 = reference_smooth(&b1_img, s2);
        let want: Vec<f64> = b1
            .iter()
            .zip(&b2)
            .map(|(&a, &b)| a + alpha * (a - b))
            .collect();
        let mut got = img.clone();
        gaussian_sharpen(&mut got, s1, s2, alpha as f32);
        let d = max_diff(&got.data, &want);
        assert!(d < 1e-4, "{d}");
        // α = 0 leaves the first blur.
        let mut blurred = img.clone();
        gaussian_sharpen(&mut blurred, s1, s2, 0.0);
        assert!(max_diff(&blurred.data, &b1) < 1e-5);
    }

    #[test]
    fn rand_smooth_draws_follow_their_distributions() {
        let t = RandGaussianSmooth {
            prob: 0.3,
            sigma_z: (1.0, 1.2),
            ..RandGaussianSmooth::default()
        };
        let (mut fired, mut sum) = (0, [0.0; 3]);
        for sample in 0..4000 {
            let key = DrawKey {
                sample,
                ..DrawKey::default()
            };
            if let Some(s) = t.draw(&mut key.rng()) {
                fired += 1;
                assert!((0.25..1.5).contains(&s[0]) && (0.25..1.5).contains(&s[1]));
                assert!((1.0..1.2).contains(&s[2]), "{s:?}");
                for (a, b) in sum.iter_mut().zip(s) {
                    *a += b;
                }
            }
        }
        assert!((1080..1320).contains(&fired), "{fired} of 4000 at p = 0.3");
        let mean = sum.map(|s| s / f64::from(fired));
        assert!((mean[0] - 0.875).abs() < 0.04 && (mean[1] - 0.875).abs() < 0.04);
        assert!((mean[2] - 1.1).abs() < 0.01, "{mean:?}");
    }

    #[test]
    fn rand_sharpen_draws_sigma2_below_sigma1() {
        let t = RandGaussianSharpen {
            prob: 0.5,
            ..RandGaussianSharpen::default()
        };
        let (mut fired, mut alpha_sum, mut gap) = (0, 0.0, 0.0);
        for sample in 0..4000 {
            let key = DrawKey {
                sample,
                ..DrawKey::default()
            };
            let Some(d) = t.draw(&mut key.rng()) else {
                continue;
            };
            fired += 1;
            for a in 0..3 {
                assert!((0.5..1.0).contains(&d.sigma1[a]), "{d:?}");
                assert!(d.sigma2[a] >= 0.5 && d.sigma2[a] <= d.sigma1[a], "{d:?}");
                gap += d.sigma1[a] - d.sigma2[a];
            }
            assert!((10.0..30.0).contains(&d.alpha));
            alpha_sum += d.alpha;
        }
        assert!((1880..2120).contains(&fired), "{fired} of 4000 at p = 0.5");
        assert!((alpha_sum / f64::from(fired) - 20.0).abs() < 0.5);
        // E[σ1 − σ2] = E[(σ1 − 0.5)/2] = 0.125.
        let gap = gap / f64::from(3 * fired);
        assert!((gap - 0.125).abs() < 0.01, "{gap}");
    }

    #[test]
    fn apply_is_deterministic_per_key_and_idle_when_not_fired() {
        let img = noise([1, 6, 5, 4], 11);
        let smooth = RandGaussianSmooth {
            prob: 1.0,
            ..RandGaussianSmooth::default()
        };
        let sharpen = RandGaussianSharpen {
            prob: 1.0,
            ..RandGaussianSharpen::default()
        };
        let key = DrawKey {
            sample: 5,
            ..DrawKey::default()
        };
        let (mut a, mut b, mut c) = (img.clone(), img.clone(), img.clone());
        assert!(smooth.apply(&mut a, &mut key.rng()));
        assert!(smooth.apply(&mut b, &mut key.rng()));
        assert!(smooth.apply(&mut c, &mut key.for_transform(1).rng()));
        assert_eq!(a, b);
        assert_ne!(a, c);
        let sigma = smooth.draw(&mut key.rng()).unwrap();
        let mut d = img.clone();
        gaussian_smooth(&mut d, sigma);
        assert_eq!(a, d);
        let (mut a, mut b) = (img.clone(), img.clone());
        assert!(sharpen.apply(&mut a, &mut key.rng()));
        assert!(sharpen.apply(&mut b, &mut key.rng()));
        assert_eq!(a, b);
        assert_ne!(a, img);
        let never = RandGaussianSharpen {
            prob: 0.0,
            ..RandGaussianSharpen::default()
        };
        let mut e = img.clone();
        assert!(!never.apply(&mut e, &mut key.rng()));
        assert!(
            !RandGaussianSmooth {
                prob: 0.0,
                ..smooth
            }
            .apply(&mut e, &mut key.rng())
        );
        assert_eq!(e, img);
    }
}
