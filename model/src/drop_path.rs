//! Stochastic depth ("drop path"), per sample.
//!
//! 3DINO drops residual branches by running them on a random ⌊0.7·B⌋ subset
//! of the batch. We use the plain per-sample form instead (as DINOv2 does
//! for rates ≤ 0.1): each sample's branch is kept with probability
//! `1 − rate` and rescaled by `1/(1 − rate)`, so its expectation is unchanged.
//! Masks come from a seeded SplitMix64 because candle's CPU RNG cannot be
//! seeded.

use candle_core::{DType, Device, Tensor};

/// Small deterministic generator (drop-path masks, seeded initialisation;
/// re-exported as `init::SplitMix64` for callers that need the same streams).
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator starting from `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1) with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Per-sample branch scale `(B, 1, 1)`: `1/keep` with probability `keep`, else 0.
pub(crate) fn drop_path_scale(
    batch: usize,
    rate: f64,
    rng: &mut SplitMix64,
    dtype: DType,
    device: &Device,
) -> candle_core::Result<Tensor> {
    let keep = 1.0 - rate;
    let scale: Vec<f64> = (0..batch)
        .map(|_| {
            if rng.next_f64() < keep {
                1.0 / keep
            } else {
                0.0
            }
        })
        .collect();
    Tensor::from_vec(scale, (batch, 1, 1), device)?.to_dtype(dtype)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_expected_fraction_and_rescales() {
        let mut rng = SplitMix64::new(7);
        let s = drop_path_scale(4000, 0.3, &mut rng, DType::F64, &Device::Cpu).unwrap();
        let v: Vec<f64> = s.flatten_all().unwrap().to_vec1().unwrap();
        let kept = v.iter().filter(|&&x| x > 0.0).count() as f64 / v.len() as f64;
        assert!((kept - 0.7).abs() < 0.03, "kept fraction {kept}");
        assert!(v.iter().all(|&x| x == 0.0 || (x - 1.0 / 0.7).abs() < 1e-12));
    }
}
