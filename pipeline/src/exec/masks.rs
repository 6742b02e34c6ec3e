//! iBOT masks for a batch's global crops (3dino-reference.md §2.6): of the
//! `n` crop images, `⌊n·p⌋` get masks whose sizes are stratified over the
//! ratio range (image i draws its fraction from `[r_i, r_{i+1}]` of
//! `linspace(lo, hi, m + 1)`), tokens chosen uniformly without replacement;
//! the rest get empty masks; then the list is shuffled.

use rand::Rng;
use rand::seq::SliceRandom;

/// The masks of one batch.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Masks {
    /// Crop images (rows).
    pub images: usize,
    /// Tokens per image (columns).
    pub tokens: usize,
    /// Row-major `(images, tokens)` flags.
    pub mask: Vec<bool>,
    /// Flat indices of the masked tokens in `(images · tokens)`.
    pub indices: Vec<u32>,
    /// Per masked token: 1 / (masked tokens of its image).
    pub weights: Vec<f32>,
    /// Σ ⌊tokens · r_{i+1}⌋: a buffer-size bound.
    pub upperbound: usize,
}

impl Masks {
    /// Masked tokens in all.
    pub fn n_masked(&self) -> usize {
        self.indices.len()
    }
}

/// Draws the masks for `images` crops of `tokens` tokens each.
pub fn ibot_masks(
    images: usize,
    tokens: usize,
    probability: f64,
    (lo, hi): (f64, f64),
    rng: &mut impl Rng,
) -> Masks {
    let masked_images = ((images as f64) * probability).floor() as usize;
    let probs: Vec<f64> = (0..=masked_images)
        .map(|i| {
            if masked_images == 0 {
                lo
            } else {
                lo + (hi - lo) * i as f64 / masked_images as f64
            }
        })
        .collect();
    let mut rows: Vec<Vec<bool>> = Vec::with_capacity(images);
    let mut upperbound = 0;
    let mut positions: Vec<usize> = (0..tokens).collect();
    for i in 0..masked_images {
        let frac = probs[i] + (probs[i + 1] - probs[i]) * rng.random::<f64>();
        let count = ((tokens as f64) * frac).floor() as usize;
        upperbound += ((tokens as f64) * probs[i + 1]).floor() as usize;
        // A partial Fisher–Yates shuffle picks `count` distinct tokens.
        for t in 0..count.min(tokens) {
            let j = rng.random_range(t..tokens);
            positions.swap(t, j);
        }
        let mut row = vec![false; tokens];
        for &p in &positions[..count.min(tokens)] {
            row[p] = true;
        }
        rows.push(row);
    }
    rows.resize(images, vec![false; tokens]);
    rows.shuffle(rng);
    let mut out = Masks {
        images,
        tokens,
        mask: Vec::with_capacity(images * tokens),
        upperbound,
        ..Masks::default()
    };
    for (r, row) in rows.iter().enumerate() {
        let count = row.iter().filter(|&&m| m).count().max(1);
        for (t, &m) in row.iter().enumerate() {
            if m {
                out.indices.push((r * tokens + t) as u32);
                out.weights.push(1.0 / count as f32);
            }
        }
        out.mask.extend_from_slice(row);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transforms::DrawKey;

    #[test]
    fn half_the_crops_get_stratified_masks() {
        let tokens = 216; // 96³ crops, patch 16
        let mut fractions: Vec<Vec<f64>> = vec![Vec::new(); 4];
        for s in 0..500 {
            let m = ibot_masks(
                8,
                tokens,
                0.5,
                (0.2, 0.75),
                &mut DrawKey {
                    sample: s,
                    ..DrawKey::default()
                }
                .rng(),
            );
            assert_eq!(m.mask.len(), 8 * tokens);
            let counts: Vec<usize> = m
                .mask
                .chunks(tokens)
                .map(|r| r.iter().filter(|&&b| b).count())
                .collect();
            assert_eq!(counts.iter().filter(|&&c| c == 0).count(), 4, "{counts:?}");
            // Strata of linspace(0.2, 0.75, 5): each masked image in its own band.
            let mut nonzero: Vec<f64> = counts
                .iter()
                .filter(|&&c| c > 0)
                .map(|&c| c as f64 / tokens as f64)
                .collect();
            nonzero.sort_by(f64::total_cmp);
            for (i, f) in nonzero.iter().enumerate() {
                let (a, b) = (0.2 + 0.1375 * i as f64, 0.2 + 0.1375 * (i + 1) as f64);
                assert!(
                    *f >= a - 1.0 / tokens as f64 && *f <= b,
                    "{f} not in [{a}, {b}]"
                );
                fractions[i].push(*f);
            }
            // Indices, weights and the upper bound agree with the flags.
            assert_eq!(m.n_masked(), counts.iter().sum::<usize>());
            for (&idx, &w) in m.indices.iter().zip(&m.weights) {
                assert!(m.mask[idx as usize]);
                let row = idx as usize / tokens;
                assert!((w - 1.0 / counts[row] as f32).abs() < 1e-7);
            }
            let bound: usize = (1..=4)
                .map(|i| (tokens as f64 * (0.2 + 0.1375 * i as f64)).floor() as usize)
                .sum();
            assert_eq!(m.upperbound, bound);
        }
        // Within each stratum the fraction is spread over the band.
        for (i, f) in fractions.iter().enumerate() {
            let mean = f.iter().sum::<f64>() / f.len() as f64;
            let mid = 0.2 + 0.1375 * (i as f64 + 0.5);
            assert!(
                (mean - mid).abs() < 0.01,
                "stratum {i}: mean {mean} vs {mid}"
            );
        }
    }

    #[test]
    fn masked_rows_land_anywhere_and_tokens_are_uniform() {
        let tokens = 27;
        let (mut row_hits, mut token_hits) = (vec![0usize; 4], vec![0usize; tokens]);
        for s in 0..4000 {
            let m = ibot_masks(
                4,
                tokens,
                0.5,
                (0.3, 0.3),
                &mut DrawKey {
                    sample: s,
                    ..DrawKey::default()
                }
                .rng(),
            );
            for (r, row) in m.mask.chunks(tokens).enumerate() {
                if row.iter().any(|&b| b) {
                    row_hits[r] += 1;
                    for (t, &b) in row.iter().enumerate() {
                        token_hits[t] += usize::from(b);
                    }
                }
            }
        }
        assert!(
            row_hits.iter().all(|&n| (1800..2200).contains(&n)),
            "{row_hits:?}"
        );
        // 8000 masked rows x 8 tokens (floor(27 * 0.3)) over 27 tokens: ~2370 each.
        assert!(
            token_hits.iter().all(|&n| (2150..2600).contains(&n)),
            "{token_hits:?}"
        );
    }
}
