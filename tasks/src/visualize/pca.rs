//! PCA of one volume's patch tokens and 3DINO's picture of it
//! (3dino-reference.md §5).
//!
//! The fit is sklearn's `PCA` (centred, exact): the leading eigenvectors of
//! the `E × E` covariance, or, with fewer tokens than dimensions, of the
//! `N × N` Gram matrix (same scores, smaller problem). Each component's sign
//! is fixed so that its largest score is positive.
//!
//! The picture:
//! 1. the K components are min-max normalised *jointly* to [0, 1] (what 3DINO
//!    saves as NIfTI);
//! 2. foreground = normalised component 0 above a threshold (0.5). 3DINO
//!    flips that test by hand per image; here component 0 is oriented before
//!    normalising so that it grows with the tokens' mean intensity, which
//!    makes the brighter side (tissue, not air) the foreground;
//! 3. components 1–3, each min-max normalised over the foreground tokens,
//!    are red, green and blue; channel values below 0.4 become 0 (3DINO's
//!    contrast step); the background is white.

use dino3d_model::candle_core::{DType, Device, Tensor};

use super::eigen::top_eigen;
use crate::error::{Result, bail};

/// 3DINO's contrast floor on the RGB channels.
const RGB_FLOOR: f32 = 0.4;

/// A fitted PCA: per-token scores on the leading components.
#[derive(Debug, Clone)]
pub struct Pca {
    /// Scores `N × K`, token-major.
    pub scores: Vec<f64>,
    /// Tokens N.
    pub n: usize,
    /// Components K.
    pub k: usize,
    /// Variance along each component (decreasing).
    pub variances: Vec<f64>,
}

/// Fits up to `k` components to `features` (`n × e`, token-major); fewer when
/// the data cannot have that many (`k ≤ min(n − 1, e)`).
///
/// # Errors
/// Fewer than 2 tokens, or a candle failure.
pub fn fit(features: &[f32], n: usize, e: usize, k: usize) -> Result<Pca> {
    if n < 2 || e == 0 || features.len() != n * e {
        bail!("PCA needs at least 2 tokens of width >= 1 (got {n} x {e})");
    }
    let k = k.min(n - 1).min(e).max(1);
    let x = Tensor::from_slice(features, (n, e), &Device::Cpu)?.to_dtype(DType::F64)?;
    let xc = x.broadcast_sub(&x.mean_keepdim(0)?)?;
    let (values, scores) = if e <= n {
        let cov = xc.t()?.matmul(&xc)?;
        let (values, vectors) = top_eigen(&cov, k)?;
        (values, xc.matmul(&vectors)?)
    } else {
        // Xc = U S Vᵀ: the Gram matrix's eigenvectors are U, with S² as values.
        let gram = xc.matmul(&xc.t()?)?;
        let (values, u) = top_eigen(&gram, k)?;
        let s: Vec<f64> = values.iter().map(|v| v.max(0.0).sqrt()).collect();
        let s = Tensor::from_vec(s, (1, k), &Device::Cpu)?;
        (values, u.broadcast_mul(&s)?)
    };
    let mut scores: Vec<f64> = scores.flatten_all()?.to_vec1()?;
    for c in 0..k {
        let (mut big, mut sign) = (0.0, 1.0);
        for t in 0..n {
            let v = scores[t * k + c];
            if v.abs() > big {
                (big, sign) = (v.abs(), v.signum());
            }
        }
        if sign < 0.0 {
            flip(&mut scores, k, c);
        }
    }
    Ok(Pca {
        scores,
        n,
        k,
        variances: values.iter().map(|v| v.max(0.0) / (n - 1) as f64).collect(),
    })
}

fn flip(scores: &mut [f64], k: usize, c: usize) {
    scores.iter_mut().skip(c).step_by(k).for_each(|v| *v = -*v);
}

impl Pca {
    /// Flips component `c` if its scores correlate negatively with `reference`
    /// (one value per token).
    pub fn orient(&mut self, c: usize, reference: &[f32]) {
        assert_eq!(reference.len(), self.n);
        let mean = reference.iter().map(|&r| f64::from(r)).sum::<f64>() / self.n as f64;
        let cov: f64 = (0..self.n)
            .map(|t| self.scores[t * self.k + c] * (f64::from(reference[t]) - mean))
            .sum();
        if cov < 0.0 {
            flip(&mut self.scores, self.k, c);
        }
    }
}

/// The PCA picture of one volume, per token.
#[derive(Debug, Clone)]
pub struct PcaPicture {
    /// The components min-max normalised jointly to [0, 1], `N × K`.
    pub normalised: Vec<f32>,
    /// Foreground tokens.
    pub foreground: Vec<bool>,
    /// Colour per token in [0, 1]: components 1–3, background white.
    pub rgb: Vec<[f32; 3]>,
}

/// 3DINO's picture of `pca` (see the module docs), foreground where the
/// normalised component 0 exceeds `threshold`.
pub fn picture(pca: &Pca, threshold: f32) -> PcaPicture {
    let (lo, hi) = min_max(pca.scores.iter().copied());
    let span = if hi > lo { hi - lo } else { 1.0 };
    let normalised: Vec<f32> = pca
        .scores
        .iter()
        .map(|&v| ((v - lo) / span) as f32)
        .collect();
    let foreground: Vec<bool> = (0..pca.n)
        .map(|t| normalised[t * pca.k] > threshold)
        .collect();
    // Components 1–3 (those that exist) over the foreground tokens.
    let ranges: Vec<(usize, f64, f64)> = (1..pca.k.min(4))
        .map(|c| {
            let fg = (0..pca.n)
                .filter(|&t| foreground[t])
                .map(|t| pca.scores[t * pca.k + c]);
            let (lo, hi) = min_max(fg);
            (c, lo, if hi > lo { hi - lo } else { 1.0 })
        })
        .collect();
    let rgb = (0..pca.n)
        .map(|t| {
            if !foreground[t] {
                return [1.0; 3];
            }
            // A missing component leaves its channel at 0.
            let mut px = [0.0f32; 3];
            for (slot, &(c, lo, span)) in px.iter_mut().zip(&ranges) {
                let v = ((pca.scores[t * pca.k + c] - lo) / span) as f32;
                *slot = if v < RGB_FLOOR { 0.0 } else { v };
            }
            px
        })
        .collect();
    PcaPicture {
        normalised,
        foreground,
        rgb,
    }
}

fn min_max(values: impl Iterator<Item = f64>) -> (f64, f64) {
    values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fits_a_hand_computed_line_by_covariance_and_by_gram() {
        // Points t·(1, 2) for t = -1, -1, 2 (mean 0): one component along
        // (1, 2)/√5, variance Σ 5t² / (n − 1) = 15, scores t·√5 (the largest
        // score positive).
        let f = [-1.0, -2.0, -1.0, -2.0, 2.0, 4.0];
        let pca = fit(&f, 3, 2, 1).unwrap();
        assert_eq!((pca.n, pca.k), (3, 1));
        assert!((pca.variances[0] - 15.0).abs() < 1e-9);
        let r5 = 5f64.sqrt();
        let want = [-r5, -r5, 2.0 * r5];
        for (got, want) in pca.scores.iter().zip(want) {
            assert!((got - want).abs() < 1e-9, "{:?}", pca.scores);
        }
        // The same points in 5 dimensions (more dims than tokens: Gram path),
        // shifted: same variance and scores; k is capped at n − 1 = 2.
        let f5: Vec<f32> = [[-1.0, -2.0], [-1.0, -2.0], [2.0, 4.0]]
            .iter()
            .flat_map(|[a, b]| [*a + 3.0, *b, 7.0, 0.0, -1.0])
            .collect();
        let pca = fit(&f5, 3, 5, 4).unwrap();
        assert_eq!(pca.k, 2);
        assert!((pca.variances[0] - 15.0).abs() < 1e-6);
        assert!(pca.variances[1].abs() < 1e-6);
        for (t, want) in want.iter().enumerate() {
            assert!((pca.scores[t * 2] - want).abs() < 1e-5, "{:?}", pca.scores);
        }
    }

    /// Tokens of a 4 × 4 × 4 grid: the x < 2 half is direction `a`, the other
    /// `b`, plus small deterministic noise in every dimension.
    fn two_regions(e: usize) -> (Vec<f32>, Vec<bool>) {
        let n = 64;
        let mut s = 99u64;
        let mut noise = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.1
        };
        let mut f = Vec::with_capacity(n * e);
        let mut region_a = Vec::with_capacity(n);
        for t in 0..n {
            let in_a = t / 16 < 2; // x index = t / 16 (z fastest)
            region_a.push(in_a);
            for d in 0..e {
                let a = if d % 3 == 0 { 1.0 } else { 0.0 };
                let b = if d % 3 == 1 { 1.0 } else { -0.5 };
                f.push(if in_a { a } else { b } + noise());
            }
        }
        (f, region_a)
    }

    #[test]
    fn component_zero_separates_two_known_directions() {
        for e in [12, 96] {
            // e = 12: covariance path; e = 96 > 64 tokens: Gram path.
            let (f, region_a) = two_regions(e);
            let mut pca = fit(&f, 64, e, 10).unwrap();
            assert_eq!(pca.k, 10);
            assert!(
                pca.variances[0] > 10.0 * pca.variances[1],
                "{:?}",
                pca.variances
            );
            let sign_a = pca.scores[0].signum();
            for (t, &in_a) in region_a.iter().enumerate() {
                let same = pca.scores[t * 10].signum() == sign_a;
                assert_eq!(same, in_a, "token {t}, e = {e}");
            }
            // Region b made brighter: after orienting, it is the foreground.
            let intensity: Vec<f32> = region_a
                .iter()
                .map(|&a| if a { -1.0 } else { 0.5 })
                .collect();
            pca.orient(0, &intensity);
            let pic = picture(&pca, 0.5);
            for (t, &in_a) in region_a.iter().enumerate() {
                assert_eq!(pic.foreground[t], !in_a, "token {t}, e = {e}");
                if in_a {
                    assert_eq!(pic.rgb[t], [1.0; 3], "background is white");
                }
            }
            let (lo, hi) = min_max(pic.normalised.iter().map(|&v| f64::from(v)));
            assert_eq!((lo, hi), (0.0, 1.0), "joint min-max");
            assert!(
                pic.rgb
                    .iter()
                    .flatten()
                    .all(|&v| v == 0.0 || (0.4..=1.0).contains(&v))
            );
        }
    }
}
