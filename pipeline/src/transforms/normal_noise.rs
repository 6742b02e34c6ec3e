//! Gaussian noise added to every voxel, vectorised: `RandGaussianNoise`'s
//! inner loop.
//!
//! The ziggurat sampler (`rand_distr::StandardNormal`) is a scalar loop with
//! branches; it was 9.6% of `pipeline run` on the 3DINO recipe. Here a
//! PCG64 stream fills a block of 64-bit words, and Box–Muller turns each word
//! into two normals in a loop the compiler vectorises: 24 bits give the
//! radius' uniform u in (0, 1], 24 more the angle's. The radius
//! `√(−2 ln u)` is at most `√(48 ln 2)` = 5.77, so no value lies beyond
//! 5.77σ (under the normal, 8e-9 of them would).
//!
//! The result depends only on the seed: every CPU version computes the same
//! bits (no FMA contraction; tested).

use rand::{RngCore, SeedableRng};

use super::fast_math::{ln_positive, sincos_turns};

/// Words per block: each gives two normals.
const PAIRS: usize = 256;

/// Adds `mean + sigma·z` to every value of `data`, z standard normal from a
/// PCG64 stream seeded with `seed`.
pub fn add_gaussian_noise(data: &mut [f32], mean: f32, sigma: f32, seed: u64) {
    let mut rng = rand_pcg::Pcg64Mcg::seed_from_u64(seed);
    let mut words = [0u64; PAIRS];
    let mut z = [0f32; 2 * PAIRS];
    for chunk in data.chunks_mut(2 * PAIRS) {
        // Whole blocks only, so the stream's use does not depend on where
        // the image ends.
        words.iter_mut().for_each(|w| *w = rng.next_u64());
        normals(&words, &mut z);
        for (v, &n) in chunk.iter_mut().zip(&z) {
            *v += mean + sigma * n;
        }
    }
}

/// Box–Muller on each word: its normals go to `z[i]` and `z[i + PAIRS]`.
#[multiversion::multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512vl+avx2+fma",
    "x86_64+avx2+fma",
))]
fn normals(words: &[u64; PAIRS], z: &mut [f32; 2 * PAIRS]) {
    normals_body(words, z);
}

/// [`normals`] for the build's baseline CPU.
#[inline(always)]
fn normals_body(words: &[u64; PAIRS], z: &mut [f32; 2 * PAIRS]) {
    const UNIT: f32 = 1.0 / (1u32 << 24) as f32;
    let (cos_half, sin_half) = z.split_at_mut(PAIRS);
    for ((&w, c), s) in words.iter().zip(cos_half).zip(sin_half) {
        // Both under 2²⁵: exact through i32 and f32.
        let u = (((w >> 40) as i32) + 1) as f32 * UNIT;
        let t = (((w >> 8) & 0xff_ffff) as i32) as f32 * UNIT;
        let r = (-2.0 * ln_positive(u)).sqrt();
        let (sin, cos) = sincos_turns(t);
        *c = r * cos;
        *s = r * sin;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Φ, the standard normal's distribution function.
    fn phi(x: f64) -> f64 {
        0.5 * (1.0 + libm::erf(x / std::f64::consts::SQRT_2))
    }

    #[test]
    fn values_follow_the_standard_normal() {
        let n = 1 << 21;
        let mut z = vec![0.0f32; n];
        add_gaussian_noise(&mut z, 0.0, 1.0, 42);
        let mut sorted: Vec<f64> = z.iter().map(|&v| f64::from(v)).collect();
        sorted.sort_by(f64::total_cmp);
        // Kolmogorov–Smirnov distance to Φ: 1.63/√n is the 1% critical value.
        let ks = sorted
            .iter()
            .enumerate()
            .map(|(i, &x)| {
                let f = phi(x);
                (f - i as f64 / n as f64)
                    .abs()
                    .max(((i + 1) as f64 / n as f64 - f).abs())
            })
            .fold(0.0, f64::max);
        assert!(ks < 1.63 / (n as f64).sqrt(), "KS distance {ks}");
        // The tails: beyond 3σ 0.27% of values, beyond 4σ 6.3e-5 (132 of 2²¹).
        let beyond = |k: f64| sorted.iter().filter(|x| x.abs() > k).count() as f64;
        let three = beyond(3.0) / n as f64;
        assert!((three - 0.0027).abs() < 0.0002, "beyond 3σ: {three}");
        assert!(
            (90.0..180.0).contains(&beyond(4.0)),
            "beyond 4σ: {}",
            beyond(4.0)
        );
        assert!(sorted[n - 1] <= 5.8 && sorted[0] >= -5.8);
        // Mean and σ; the halves of each block (cos, sin) uncorrelated.
        let mean = sorted.iter().sum::<f64>() / n as f64;
        let var = sorted.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        assert!(
            mean.abs() < 3e-3 && (var.sqrt() - 1.0).abs() < 3e-3,
            "{mean} {var}"
        );
        let corr = z
            .chunks_exact(2 * PAIRS)
            .flat_map(|b| b[..PAIRS].iter().zip(&b[PAIRS..]))
            .map(|(&c, &s)| f64::from(c) * f64::from(s))
            .sum::<f64>()
            / (n / 2) as f64;
        assert!(corr.abs() < 3e-3, "cos/sin correlation {corr}");
    }

    #[test]
    fn mean_sigma_seed_and_a_partial_block() {
        let mut a = vec![1.0f32; 700];
        let mut b = vec![1.0f32; 700];
        add_gaussian_noise(&mut a, 0.5, 0.1, 7);
        add_gaussian_noise(&mut b, 0.0, 1.0, 7);
        for (x, y) in a.iter().zip(&b) {
            // The same z: a = 1 + 0.5 + 0.1 z, b = 1 + z.
            assert!((x - (1.5 + 0.1 * (y - 1.0))).abs() < 1e-5);
        }
        let mut c = vec![1.0f32; 700];
        add_gaussian_noise(&mut c, 0.0, 1.0, 8);
        assert_ne!(b, c, "another seed, other values");
        // The first 512 values do not depend on the length.
        let mut d = vec![1.0f32; 512];
        add_gaussian_noise(&mut d, 0.0, 1.0, 7);
        assert_eq!(d[..], b[..512]);
    }

    /// The version picked for this CPU gives the baseline build's bits.
    #[test]
    fn every_cpu_version_gives_the_same_bits() {
        let mut rng = rand_pcg::Pcg64Mcg::seed_from_u64(3);
        let mut words = [0u64; PAIRS];
        words.iter_mut().for_each(|w| *w = rng.next_u64());
        words[0] = 0; // u = 2⁻²⁴, the largest radius; t = 0
        words[1] = u64::MAX; // u = 1 (radius 0), t just under 1
        let (mut fast, mut base) = ([0f32; 2 * PAIRS], [1f32; 2 * PAIRS]);
        normals(&words, &mut fast);
        normals_body(&words, &mut base);
        assert_eq!(fast.map(f32::to_bits), base.map(f32::to_bits));
        assert!((fast[0] - 5.768).abs() < 1e-3 && fast[PAIRS] == 0.0);
        assert_eq!((fast[1], fast[PAIRS + 1]), (0.0, 0.0));
    }
}
