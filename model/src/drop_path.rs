//! Stochastic depth ("drop path") in its two forms.
//!
//! - Subset (3DINO's, the default): each residual branch runs only on a
//!   random subset of `max(⌊B·(1 − rate)⌋, 1)` samples (the first entries of
//!   a random permutation), and its output is added back to those rows times
//!   `B / subset`; the other rows pass unchanged and cost no compute. 3DINO's
//!   student gets its crops as a list, so every block takes DINOv2's nested
//!   path, which uses this form for any rate > 0, drawing a new subset per
//!   branch and per crop group.
//! - Per sample (timm's `DropPath`): each sample's branch is kept with
//!   probability `1 − rate` and rescaled by `1/(1 − rate)`.
//!
//! Draws come from a seeded SplitMix64 because candle's CPU RNG cannot be
//! seeded; nothing depends on the thread count.

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

/// Which drop-path form a training forward pass uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DropPathMode {
    /// 3DINO's: each branch on a random subset, rescaled by `B / subset`.
    #[default]
    Subset,
    /// timm's: a per-sample keep mask, rescaled by `1/(1 − rate)`.
    PerSample,
}

impl DropPathMode {
    /// Recipe names, in the order of the variants.
    pub const NAMES: [&'static str; 2] = ["subset", "per_sample"];

    /// Its recipe name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Subset => Self::NAMES[0],
            Self::PerSample => Self::NAMES[1],
        }
    }

    /// Looks a mode up by its recipe name.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "subset" => Some(Self::Subset),
            "per_sample" => Some(Self::PerSample),
            _ => None,
        }
    }
}

/// One branch's subset: row indices `(k,)` (u32) and the scale `B / k`.
#[derive(Debug, Clone)]
pub(crate) struct Subset {
    pub(crate) rows: Tensor,
    pub(crate) scale: f64,
}

/// Draws the first `max(⌊B·(1 − rate)⌋, 1)` entries of a random permutation
/// of `0..batch` (partial Fisher–Yates).
pub(crate) fn subset_rows(batch: usize, rate: f64, rng: &mut SplitMix64) -> Vec<u32> {
    let k = ((batch as f64 * (1.0 - rate)) as usize).clamp(1, batch.max(1));
    let mut perm: Vec<u32> = (0..batch as u32).collect();
    for i in 0..k.min(batch) {
        let left = (batch - i) as u64;
        // Multiply-high maps 64 random bits onto 0..left.
        let j = i + ((u128::from(rng.next_u64()) * u128::from(left)) >> 64) as usize;
        perm.swap(i, j);
    }
    perm.truncate(k.min(batch));
    perm
}

impl Subset {
    /// A subset for a batch of `batch` samples.
    pub(crate) fn draw(
        batch: usize,
        rate: f64,
        rng: &mut SplitMix64,
        device: &Device,
    ) -> candle_core::Result<Self> {
        let rows = subset_rows(batch, rate, rng);
        let k = rows.len();
        Ok(Self {
            rows: Tensor::from_vec(rows, k, device)?,
            scale: batch as f64 / k as f64,
        })
    }

    /// `x` with `scale · γ ⊙ branch(x[rows])` added to `rows` (LayerScale
    /// `gamma` and the add are one graph node, `fused::add_scaled_branch`);
    /// `branch` sees only the subset. Also returns what `branch` returned
    /// besides.
    pub(crate) fn add_residual<A>(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        branch: impl FnOnce(&Tensor) -> candle_core::Result<(Tensor, A)>,
    ) -> candle_core::Result<(Tensor, A)> {
        let (r, extra) = branch(&x.index_select(&self.rows, 0)?)?;
        let out = crate::fused::add_scaled_branch(x, &r, gamma, Some(&self.rows), self.scale)?;
        Ok((out, extra))
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
    fn subset_sizes_follow_dinov2() {
        let mut rng = SplitMix64::new(1);
        for (b, rate, k) in [
            (4, 0.5, 2),
            (10, 0.3, 7),
            (3, 0.3, 2),
            (1, 0.9, 1),
            (5, 0.99, 1),
        ] {
            let rows = subset_rows(b, rate, &mut rng);
            assert_eq!(rows.len(), k, "B {b} rate {rate}");
            let mut sorted = rows.clone();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(sorted.len(), k, "distinct rows");
            assert!(rows.iter().all(|&r| (r as usize) < b));
        }
    }

    #[test]
    fn subset_branch_matches_hand_computation() {
        // B = 4, rate 0.5: subset of 2 rows, scale 4/2 = 2. Seed 7 draws
        // rows [1, 0] (pinned: a change of the stream changes runs).
        let dev = Device::Cpu;
        let mut rng = SplitMix64::new(7);
        let s = Subset::draw(4, 0.5, &mut rng, &dev).unwrap();
        assert_eq!(s.rows.to_vec1::<u32>().unwrap(), vec![1, 0]);
        assert_eq!(s.scale, 2.0);
        // Rows i hold (i+1)·[1, 2, 3] as (B, T=1, E=3); branch = 3·x + 1.
        let x = Tensor::new(
            &[
                [[1f32, 2., 3.]],
                [[2., 4., 6.]],
                [[3., 6., 9.]],
                [[4., 8., 12.]],
            ],
            &dev,
        )
        .unwrap();
        let mut seen = 0;
        let gamma = Tensor::new(&[1f32, 1., 1.], &dev).unwrap();
        let (y, ()) = s
            .add_residual(&x, &gamma, |sub| {
                seen = sub.dim(0)?;
                Ok((sub.affine(3.0, 1.0)?, ()))
            })
            .unwrap();
        assert_eq!(seen, 2, "the branch runs on the subset only");
        let y: Vec<Vec<Vec<f32>>> = y.to_vec3().unwrap();
        // Kept rows: x + 2·(3x + 1) = 7x + 2; dropped rows: x exactly.
        assert_eq!(y[0], vec![vec![9., 16., 23.]]);
        assert_eq!(y[1], vec![vec![16., 30., 44.]]);
        assert_eq!(y[2], vec![vec![3., 6., 9.]]);
        assert_eq!(y[3], vec![vec![4., 8., 12.]]);
    }

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
