//! `GibbsNoise`/`RandGibbsNoise` with MONAI's semantics.
//!
//! Per channel: F = fftshift(fftn(x)) over the three spatial axes; every
//! k-space sample farther than r = (1 − α)·max(n)·√2/2 from the centre
//! (n − 1)/2 of the shifted grid is zeroed (kept: √(Σ_a (s_a − (n_a − 1)/2)²) ≤ r,
//! evaluated in float64 as MONAI does); then ifftshift, ifftn and the real part,
//! in float32. fftshift moves bin u to s = (u + n/2) mod n (n/2 rounded down).
//!
//! * α = 1 keeps radius 0: only the DC term when every n is odd (the output is
//!   the channel mean everywhere), nothing when some n is even (zeros).
//! * α = 0 gives r = max(n)/√2, which holds every sample (the identity, up to
//!   FFT rounding) only when the corners of k-space are that close; a cube of
//!   side ≥ 6 loses its corners even at α = 0, as in MONAI.
//! * [`RandGibbsNoise`] fires when `U[0,1) < prob`, then draws α ~ U(alpha).
//!
//! Speed: the input is real, so only half of the x spectrum (u ≤ n/2) is kept,
//! two x rows sharing one complex FFT. Taking the real part of ifftn(M·F)
//! equals ifftn(M_s·F) with the symmetrised mask M_s(k) = ½[M(k) + M(−k)],
//! whose result is real, so the way back is Hermitian too and again takes two
//! rows per complex FFT. Slabs and lines of k-space that the mask wipes out
//! are neither transformed nor transformed back; the y and z passes run one
//! u slab at a time, in cache. Plans and buffers are cached per thread; no
//! threads inside (parallelism is across samples).

use std::cell::RefCell;

use rand::Rng;
use rustfft::FftPlanner;
use rustfft::num_complex::Complex32;

use super::image::Image;
use crate::exec::op::{Op, StepRng};
use crate::transforms::TransformError;
use crate::transforms::spec::same_size;
use crate::transforms::spec::{Args, FRACTION, KEYS, PROB, ParamDefault, TransformSpec, param};

/// The k-space mask of one spatial shape and α, in exact integers.
struct Mask {
    /// `(nx, ny, nz)`.
    n: [usize; 3],
    /// Per axis and bin u: q(u) = (2s − (n − 1))², four times the squared
    /// distance of the shifted bin s from the centre.
    q: [Vec<i64>; 3],
    /// q of the mirrored bin −u mod n.
    q_mirror: [Vec<i64>; 3],
    /// Smallest q of each axis.
    q_min: [i64; 3],
    /// A sample is kept iff Σ q ≤ `q_max` (−1: none is).
    q_max: i64,
    /// `q` and `q_mirror` of z in i32 when they fit (faster to compare).
    z32: Option<(Vec<i32>, Vec<i32>)>,
}

impl Mask {
    fn new(n: [usize; 3], alpha: f64) -> Mask {
        let q = n.map(|n| {
            (0..n)
                .map(|u| {
                    let s = (u + n / 2) % n;
                    let d = 2 * s as i64 - (n as i64 - 1);
                    d * d
                })
                .collect::<Vec<i64>>()
        });
        let q_mirror = [0, 1, 2].map(|a| {
            let n = n[a];
            (0..n).map(|u| q[a][(n - u) % n]).collect::<Vec<i64>>()
        });
        let q_min = q.each_ref().map(|q| q.iter().copied().min().unwrap_or(0));
        let q_all: i64 = q.iter().map(|q| q.iter().copied().max().unwrap_or(0)).sum();
        let max_n = n.iter().copied().max().unwrap_or(0);
        let r = (1.0 - alpha) * max_n as f64 * std::f64::consts::SQRT_2 / 2.0;
        let narrow =
            |q: &[i64]| -> Option<Vec<i32>> { q.iter().map(|&q| i32::try_from(q).ok()).collect() };
        let z32 = narrow(&q[2]).zip(narrow(&q_mirror[2]));
        Mask {
            n,
            q,
            q_mirror,
            q_min,
            q_max: q_max(r, q_all),
            z32,
        }
    }

    /// Whether the sample at these q values is kept.
    fn keep(&self, q: i64) -> bool {
        q <= self.q_max
    }
}

/// col[w] ×= scale · ([q[w] ≤ ta] + [m[w] ≤ tb]).
fn scale_line<T: Copy + PartialOrd>(
    col: &mut [Complex32],
    q: &[T],
    m: &[T],
    ta: T,
    tb: T,
    scale: f32,
) {
    for ((c, &q), &m) in col.iter_mut().zip(q).zip(m) {
        let kept = u8::from(q <= ta) + u8::from(m <= tb);
        *c *= f32::from(kept) * scale;
    }
}

/// The largest q ≤ `q_all` with √(q/4) ≤ r (MONAI's float64 test), or −1.
fn q_max(r: f64, q_all: i64) -> i64 {
    let keep = |q: i64| (q as f64 / 4.0).sqrt() <= r;
    if !keep(0) {
        return -1;
    }
    let mut q = ((4.0 * r * r).floor() as i64).clamp(0, q_all);
    while q < q_all && keep(q + 1) {
        q += 1;
    }
    while !keep(q) {
        q -= 1;
    }
    q
}

/// FFT planner and buffers of one thread.
struct Work {
    planner: FftPlanner<f32>,
    /// Layout `[u][z][v]` (v fastest) for u up to the last kept one.
    spec: Vec<Complex32>,
    /// One u: `[v][z]` (z fastest).
    block: Vec<Complex32>,
    /// One z plane's x rows in pairs, row 2p + i·row 2p+1: `[p][x]`.
    pairs: Vec<Complex32>,
    /// The y bins v of one u whose z line holds a kept sample.
    vs: Vec<usize>,
    scratch: Vec<Complex32>,
}

thread_local! {
    static WORK: RefCell<Work> = RefCell::new(Work {
        planner: FftPlanner::new(),
        spec: Vec::new(),
        block: Vec::new(),
        pairs: Vec::new(),
        vs: Vec::new(),
        scratch: Vec::new(),
    });
}

const ZERO: Complex32 = Complex32::new(0.0, 0.0);

/// i·c.
fn times_i(c: Complex32) -> Complex32 {
    Complex32::new(-c.im, c.re)
}

impl Work {
    /// Gibbs noise on one channel (`mask.n` voxels, x fastest), in place.
    ///
    /// x rows go through complex FFTs two at a time (z = a + i·b; then
    /// 2A(u) = z(u) + conj z(−u) and 2B(u) = −i[z(u) − conj z(−u)]); only the
    /// half spectrum u ≤ n/2 is kept, as for a real-to-complex FFT. The way
    /// back builds z = A + i·B over the whole line from the Hermitian halves.
    fn channel(&mut self, ch: &mut [f32], mask: &Mask) {
        let [nx, ny, nz] = mask.n;
        let hx = nx / 2 + 1;
        let [qx, qy, qz] = &mask.q;
        let [mx, my, mz] = &mask.q_mirror;
        // Bins u of x whose (y, z) slab holds a kept sample, for k or −k.
        let slab = |u: usize| qx[u].min(mx[u]) + mask.q_min[1] + mask.q_min[2];
        let nu = (0..hx)
            .rev()
            .find(|&u| mask.keep(slab(u)))
            .map_or(0, |u| u + 1);
        if nu == 0 {
            ch.fill(0.0);
            return;
        }
        let fx = self.planner.plan_fft_forward(nx);
        let ix = self.planner.plan_fft_inverse(nx);
        let fy = self.planner.plan_fft_forward(ny);
        let iy = self.planner.plan_fft_inverse(ny);
        let fz = self.planner.plan_fft_forward(nz);
        let iz = self.planner.plan_fft_inverse(nz);
        let scratch_len = [&fx, &ix, &fy, &iy, &fz, &iz]
            .iter()
            .map(|f| f.get_inplace_scratch_len())
            .max()
            .unwrap_or(0);
        let Work {
            spec,
            block,
            pairs,
            vs,
            scratch,
            ..
        } = self;
        let np = ny.div_ceil(2);
        scratch.resize(scratch_len, ZERO);
        spec.resize(nz * nu * ny, ZERO);
        block.resize(ny * nz, ZERO);
        pairs.resize(np * nx, ZERO);
        let slab_len = nz * ny;

        // Forward along x, two rows at a time. `spec` holds twice the
        // spectrum (the ½ is folded into the mask).
        for z in 0..nz {
            let src = &ch[z * nx * ny..(z + 1) * nx * ny];
            for (p, dst) in pairs.chunks_exact_mut(nx).enumerate() {
                let a = &src[2 * p * nx..][..nx];
                match src.get((2 * p + 1) * nx..(2 * p + 2) * nx) {
                    Some(b) => {
                        for ((d, &x), &y) in dst.iter_mut().zip(a).zip(b) {
                            *d = Complex32::new(x, y);
                        }
                    }
                    None => {
                        for (d, &x) in dst.iter_mut().zip(a) {
                            *d = Complex32::new(x, 0.0);
                        }
                    }
                }
            }
            fx.process_with_scratch(pairs, scratch);
            // u outer: the rows of `spec` are written in order (u inner would
            // hop between addresses 4 KiB-aligned apart, which share cache sets).
            for u in 0..nu {
                let dst = &mut spec[(u * nz + z) * ny..][..ny];
                for (v2, zr) in dst.chunks_mut(2).zip(pairs.chunks_exact(nx)) {
                    let c = zr[u];
                    let m = if u == 0 { c } else { zr[nx - u] }.conj();
                    v2[0] = c + m;
                    if let Some(b) = v2.get_mut(1) {
                        *b = times_i(m - c);
                    }
                }
            }
        }

        // One u slab at a time (in cache): y forward; z forward, mask (with ¼
        // and 1/N) and z inverse on the lines (u, v) that hold a kept sample,
        // the others set to 0; y inverse.
        let scale = 0.25 / (nx * ny * nz) as f32;
        for (u, slab) in spec.chunks_exact_mut(slab_len).enumerate() {
            fy.process_with_scratch(slab, scratch);
            let line_kept =
                |v: usize| mask.keep((qx[u] + qy[v]).min(mx[u] + my[v]) + mask.q_min[2]);
            vs.clear();
            vs.extend((0..ny).filter(|&v| line_kept(v)));
            for (z, row) in slab.chunks_exact(ny).enumerate() {
                for (i, &v) in vs.iter().enumerate() {
                    block[i * nz + z] = row[v];
                }
            }
            let cols = &mut block[..vs.len() * nz];
            if !cols.is_empty() {
                fz.process_with_scratch(cols, scratch);
            }
            for (col, &v) in cols.chunks_exact_mut(nz).zip(vs.iter()) {
                // Kept iff q_z ≤ q_max − (q_x + q_y), for k and for −k.
                let ta = mask.q_max - (qx[u] + qy[v]);
                let tb = mask.q_max - (mx[u] + my[v]);
                match &mask.z32 {
                    Some((q, m)) => {
                        let narrow = |t: i64| t.clamp(-1, i64::from(i32::MAX)) as i32;
                        scale_line(col, q, m, narrow(ta), narrow(tb), scale);
                    }
                    None => scale_line(col, qz, mz, ta, tb, scale),
                }
            }
            if !cols.is_empty() {
                iz.process_with_scratch(cols, scratch);
            }
            for (z, row) in slab.chunks_exact_mut(ny).enumerate() {
                row.fill(ZERO);
                for (i, &v) in vs.iter().enumerate() {
                    row[v] = block[i * nz + z];
                }
            }
            iy.process_with_scratch(slab, scratch);
        }

        // Inverse along x, two rows at a time.
        for z in 0..nz {
            pairs.fill(ZERO);
            for u in 0..nu {
                let src = &spec[(u * nz + z) * ny..][..ny];
                // Real up to rounding at u = 0 and n/2: the symmetrised
                // spectrum is Hermitian.
                let own_mirror = u == 0 || 2 * u == nx;
                for (v2, zr) in src.chunks(2).zip(pairs.chunks_exact_mut(nx)) {
                    let mut a = v2[0];
                    let mut b = v2.get(1).copied().unwrap_or(ZERO);
                    if own_mirror {
                        a.im = 0.0;
                        b.im = 0.0;
                    } else {
                        zr[nx - u] = a.conj() + times_i(b.conj());
                    }
                    zr[u] = a + times_i(b);
                }
            }
            ix.process_with_scratch(pairs, scratch);
            let dst = &mut ch[z * nx * ny..(z + 1) * nx * ny];
            for (p, zr) in pairs.chunks_exact(nx).enumerate() {
                for (d, c) in dst[2 * p * nx..][..nx].iter_mut().zip(zr) {
                    *d = c.re;
                }
                if let Some(odd) = dst.get_mut((2 * p + 1) * nx..(2 * p + 2) * nx) {
                    for (d, c) in odd.iter_mut().zip(zr) {
                        *d = c.im;
                    }
                }
            }
        }
    }
}

/// MONAI's `GibbsNoise(alpha)`: in place, per channel.
pub fn gibbs_noise(img: &mut Image, alpha: f64) {
    let n = [img.shape[1], img.shape[2], img.shape[3]];
    let len: usize = n.iter().product();
    if len == 0 {
        return;
    }
    let mask = Mask::new(n, alpha);
    WORK.with_borrow_mut(|w| {
        for ch in img.data.chunks_exact_mut(len) {
            w.channel(ch, &mask);
        }
    });
}

/// MONAI's `RandGibbsNoise`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RandGibbsNoise {
    /// Probability of adding Gibbs noise.
    pub prob: f64,
    /// Range of α.
    pub alpha: (f64, f64),
}

impl Default for RandGibbsNoise {
    /// MONAI's defaults: `prob = 0.1`, α ∈ (0, 1).
    fn default() -> Self {
        RandGibbsNoise {
            prob: 0.1,
            alpha: (0.0, 1.0),
        }
    }
}

impl RandGibbsNoise {
    /// Draws whether to fire and, if so, α.
    pub fn draw(&self, rng: &mut impl Rng) -> Option<f64> {
        if rng.random::<f64>() >= self.prob {
            return None;
        }
        let (lo, hi) = self.alpha;
        Some(lo + (hi - lo) * rng.random::<f64>())
    }

    /// Adds Gibbs noise to `img` in place if the draw fires; returns whether it did.
    pub fn apply(&self, img: &mut Image, rng: &mut impl Rng) -> bool {
        self.draw(rng).map(|a| gibbs_noise(img, a)).is_some()
    }
}

impl Op for RandGibbsNoise {
    fn apply(&self, img: &mut Image, rng: &mut StepRng, _: bool) -> Result<(), TransformError> {
        RandGibbsNoise::apply(self, img, rng);
        Ok(())
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// The recipe's `RandGibbsNoise`.
pub const SPEC: TransformSpec = TransformSpec {
    name: "RandGibbsNoise",
    is_random: true,
    params: &[
        KEYS,
        PROB,
        param("alpha", FRACTION, ParamDefault::Pair(0.0, 1.0)),
    ],
    summary: "ringing: zero k-space outside a sphere of radius (1 - alpha) max(shape) / sqrt 2",
    check: None,
    nests: false,
    output_size: same_size,
    build: |a: &Args<'_>| {
        Ok(Box::new(RandGibbsNoise {
            prob: a.num("prob")?,
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

    type C = (f64, f64);

    /// Naive float64 DFT along `axis` of a `[nx, ny, nz]` grid (x fastest).
    fn dft_axis(data: &[C], n: [usize; 3], axis: usize, inverse: bool) -> Vec<C> {
        let stride = [1, n[0], n[0] * n[1]][axis];
        let len = n[axis];
        let sign = if inverse { 1.0 } else { -1.0 };
        let mut out = vec![(0.0, 0.0); data.len()];
        for (idx, o) in out.iter_mut().enumerate() {
            let k = idx / stride % len;
            let base = idx - k * stride;
            for t in 0..len {
                let (re, im) = data[base + t * stride];
                let ang = sign * 2.0 * std::f64::consts::PI * (k * t) as f64 / len as f64;
                let (s, c) = ang.sin_cos();
                o.0 += re * c - im * s;
                o.1 += re * s + im * c;
            }
        }
        out
    }

    /// MONAI's recipe written out: DFT, shift, mask by distance, inverse, real part.
    fn reference(img: &Image, alpha: f64) -> Vec<f64> {
        let n = [img.shape[1], img.shape[2], img.shape[3]];
        let len: usize = n.iter().product();
        let r = (1.0 - alpha) * *n.iter().max().unwrap() as f64 * 2f64.sqrt() / 2.0;
        let mut out = Vec::new();
        for ch in img.data.chunks_exact(len) {
            let mut f: Vec<C> = ch.iter().map(|&v| (f64::from(v), 0.0)).collect();
            for a in 0..3 {
                f = dft_axis(&f, n, a, false);
            }
            for (idx, c) in f.iter_mut().enumerate() {
                let u = [idx % n[0], idx / n[0] % n[1], idx / (n[0] * n[1])];
                let d2: f64 = (0..3)
                    .map(|a| {
                        let s = (u[a] + n[a] / 2) % n[a];
                        (s as f64 - (n[a] as f64 - 1.0) / 2.0).powi(2)
                    })
                    .sum();
                if d2.sqrt() > r {
                    *c = (0.0, 0.0);
                }
            }
            for a in 0..3 {
                f = dft_axis(&f, n, a, true);
            }
            out.extend(f.iter().map(|c| c.0 / len as f64));
        }
        out
    }

    use crate::transforms::max_abs_diff as max_diff;

    #[test]
    fn matches_a_naive_float64_dft() {
        for (shape, alpha) in [
            ([1, 5, 6, 7], 0.5),
            ([2, 5, 6, 7], 0.3),
            ([1, 6, 4, 5], 0.5),
            ([1, 8, 3, 4], 0.2),
            ([1, 8, 8, 8], 0.0),
            ([1, 7, 9, 5], 0.8),
            ([1, 1, 6, 5], 0.4),
            ([1, 9, 1, 1], 0.6),
        ] {
            let img = noise(shape, 5);
            let want = reference(&img, alpha);
            let mut got = img.clone();
            gibbs_noise(&mut got, alpha);
            let d = max_diff(&got.data, &want);
            assert!(d < 1e-4, "{shape:?} α = {alpha}: {d}");
        }
    }

    #[test]
    fn alpha_zero_is_the_identity_when_k_space_fits_the_sphere() {
        // Corner: √(1.5² + 2.5² + 4²) = 4.95 ≤ 9/√2 = 6.36.
        let img = noise([2, 4, 6, 9], 9);
        let mut got = img.clone();
        gibbs_noise(&mut got, 0.0);
        let want: Vec<f64> = img.data.iter().map(|&v| f64::from(v)).collect();
        assert!(max_diff(&got.data, &want) < 1e-4);
        // A cube of side 8 loses its k-space corners (√3·3.5 = 6.06 > 5.66).
        let img = noise([1, 8, 8, 8], 9);
        let mut got = img.clone();
        gibbs_noise(&mut got, 0.0);
        let want: Vec<f64> = img.data.iter().map(|&v| f64::from(v)).collect();
        assert!(max_diff(&got.data, &want) > 1e-3);
    }

    #[test]
    fn alpha_one_keeps_the_mean_of_odd_volumes_and_nothing_of_even_ones() {
        let img = noise([2, 5, 7, 9], 1);
        let mut got = img.clone();
        gibbs_noise(&mut got, 1.0);
        for (a, b) in got.data.chunks_exact(315).zip(img.data.chunks_exact(315)) {
            let mean = b.iter().map(|&v| f64::from(v)).sum::<f64>() / 315.0;
            assert!(
                a.iter().all(|&v| (f64::from(v) - mean).abs() < 1e-5),
                "{mean}"
            );
        }
        let mut even = noise([1, 5, 6, 7], 1);
        gibbs_noise(&mut even, 1.0);
        assert!(even.data.iter().all(|&v| v == 0.0));
    }

    #[test]
    fn mask_threshold_is_monais_float64_test() {
        // r exactly on a sample: kept (≤), as in MONAI.
        assert_eq!(q_max(2.0, 100), 16);
        assert_eq!(q_max(1.999_999, 100), 15);
        assert_eq!(q_max(0.0, 100), 0);
        assert_eq!(q_max(-0.1, 100), -1);
        assert_eq!(q_max(f64::NAN, 100), -1);
        assert_eq!(q_max(1e9, 100), 100);
        let m = Mask::new([4, 5, 1], 0.0);
        // Shifted bins of n = 4: u = 0 → s = 2 (2s − 3 = 1), u = 3 → s = 1 (−1), u = 2 → s = 0 (−3).
        assert_eq!(m.q[0], vec![1, 9, 9, 1]);
        assert_eq!(m.q_mirror[0], vec![1, 1, 9, 9]);
        assert_eq!(m.q[1], vec![0, 4, 16, 16, 4]);
        assert_eq!(m.q[2], vec![0]);
    }

    #[test]
    fn rand_gibbs_draws_and_is_deterministic() {
        let t = RandGibbsNoise {
            prob: 0.2,
            ..RandGibbsNoise::default()
        };
        let (mut fired, mut sum) = (0, 0.0);
        for sample in 0..4000 {
            let key = DrawKey {
                sample,
                ..DrawKey::default()
            };
            if let Some(a) = t.draw(&mut key.rng()) {
                assert!((0.0..1.0).contains(&a));
                fired += 1;
                sum += a;
            }
        }
        assert!((700..900).contains(&fired), "{fired} of 4000 at p = 0.2");
        assert!((sum / f64::from(fired) - 0.5).abs() < 0.03);

        let img = noise([1, 6, 5, 7], 2);
        let always = RandGibbsNoise {
            prob: 1.0,
            alpha: (0.3, 0.9),
        };
        let key = DrawKey {
            sample: 3,
            ..DrawKey::default()
        };
        let (mut a, mut b) = (img.clone(), img.clone());
        assert!(always.apply(&mut a, &mut key.rng()));
        assert!(always.apply(&mut b, &mut key.rng()));
        assert_eq!(a, b);
        let mut c = img.clone();
        gibbs_noise(&mut c, always.draw(&mut key.rng()).unwrap());
        assert_eq!(a, c);
        assert_ne!(a, img);
        let mut d = img.clone();
        assert!(
            !RandGibbsNoise {
                prob: 0.0,
                ..always
            }
            .apply(&mut d, &mut key.rng())
        );
        assert_eq!(d, img);
    }
}
