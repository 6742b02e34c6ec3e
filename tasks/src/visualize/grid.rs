//! Where tokens sit: the prepared image's place in the source volume, the
//! model's token grid over the prepared image, and nearest upsampling of
//! per-token values back onto the source's voxel grid (as 3DINO does before
//! saving its maps).
//!
//! A token grid of `g` tokens over `n` prepared voxels on an axis gives voxel
//! `v` the token `⌊v·g/n⌋`: token `t` covers voxels `[16t, 16t + 16)` when the
//! model saw the image at full resolution (`g = n/16`), and a proportional
//! share of the axis after `resize`.

use dino3d_pipeline::transforms::Image;

/// Where the prepared image lies in the source volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    /// Source voxel of the prepared image's voxel 0 (negative where the
    /// prepared box starts before the source: padding).
    pub start: [i64; 3],
    /// Prepared image size in voxels.
    pub extent: [usize; 3],
    /// Source spatial shape.
    pub source: [usize; 3],
}

impl Placement {
    /// The part of the source the prepared image covers, `[lo, hi)`.
    pub fn source_box(&self) -> ([usize; 3], [usize; 3]) {
        let lo = [0, 1, 2].map(|a| self.start[a].clamp(0, self.source[a] as i64) as usize);
        let hi = [0, 1, 2].map(|a| {
            (self.start[a] + self.extent[a] as i64).clamp(0, self.source[a] as i64) as usize
        });
        (lo, hi)
    }

    /// For each source coordinate on `axis`, its prepared coordinate (None
    /// outside the prepared box).
    fn local_axis(&self, axis: usize) -> Vec<Option<usize>> {
        (0..self.source[axis] as i64)
            .map(|v| {
                let l = v - self.start[axis];
                (0..self.extent[axis] as i64)
                    .contains(&l)
                    .then_some(l as usize)
            })
            .collect()
    }
}

/// The model's token grid over the prepared image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenGrid {
    /// Tokens per axis; token `(a, b, c)` has flat index `(a·gy + b)·gz + c`
    /// (the model's order, last axis fastest).
    pub grid: [usize; 3],
    /// Prepared image size in voxels.
    pub extent: [usize; 3],
}

impl TokenGrid {
    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.grid.iter().product()
    }

    /// True when the grid has no token.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Token index along `axis` of prepared coordinate `v`.
    fn axis_token(&self, axis: usize, v: usize) -> usize {
        (v * self.grid[axis] / self.extent[axis]).min(self.grid[axis] - 1)
    }

    /// Flat token of prepared voxel `v`.
    pub fn token(&self, v: [usize; 3]) -> usize {
        let a = self.axis_token(0, v[0]);
        let b = self.axis_token(1, v[1]);
        let c = self.axis_token(2, v[2]);
        (a * self.grid[1] + b) * self.grid[2] + c
    }

    /// Mean of the single-channel prepared `image` over each token's voxels.
    pub fn token_means(&self, image: &Image) -> Vec<f32> {
        let mut sum = vec![0.0f64; self.len()];
        let mut count = vec![0usize; self.len()];
        let [_, x, y, z] = image.shape;
        for k in 0..z {
            for j in 0..y {
                for i in 0..x {
                    let t = self.token([i, j, k]);
                    sum[t] += f64::from(image.at(0, i, j, k));
                    count[t] += 1;
                }
            }
        }
        sum.iter()
            .zip(&count)
            .map(|(s, &n)| if n > 0 { (s / n as f64) as f32 } else { 0.0 })
            .collect()
    }
}

/// Per-token values (`N × C`, token-major) nearest-upsampled onto the source
/// grid: `(C, X, Y, Z)` with x fastest (NIfTI order), `outside` where the
/// source lies beyond the prepared box.
pub fn to_source<T: Copy>(
    values: &[T],
    channels: usize,
    tokens: &TokenGrid,
    place: &Placement,
    outside: T,
) -> Vec<T> {
    assert_eq!(
        values.len(),
        tokens.len() * channels,
        "one value per token and channel"
    );
    let [x, y, z] = place.source;
    let axes = [0, 1, 2].map(|a| {
        place
            .local_axis(a)
            .into_iter()
            .map(|l| l.map(|v| tokens.axis_token(a, v)))
            .collect::<Vec<_>>()
    });
    let [gy, gz] = [tokens.grid[1], tokens.grid[2]];
    let mut out = vec![outside; channels * x * y * z];
    for ch in 0..channels {
        for (k, tz) in axes[2].iter().enumerate() {
            let Some(tz) = tz else { continue };
            for (j, ty) in axes[1].iter().enumerate() {
                let Some(ty) = ty else { continue };
                let row = ((ch * z + k) * y + j) * x;
                for (i, tx) in axes[0].iter().enumerate() {
                    if let Some(tx) = tx {
                        out[row + i] = values[((tx * gy + ty) * gz + tz) * channels + ch];
                    }
                }
            }
        }
    }
    out
}

/// The single-channel prepared `image` placed back on the source grid
/// (x fastest), `outside` where the source lies beyond the prepared box.
pub fn image_to_source(image: &Image, place: &Placement, outside: f32) -> Vec<f32> {
    let [x, y, z] = place.source;
    let axes = [0, 1, 2].map(|a| place.local_axis(a));
    let mut out = vec![outside; x * y * z];
    for (k, lk) in axes[2].iter().enumerate() {
        let Some(lk) = *lk else { continue };
        for (j, lj) in axes[1].iter().enumerate() {
            let Some(lj) = *lj else { continue };
            for (i, li) in axes[0].iter().enumerate() {
                if let Some(li) = *li {
                    out[(k * y + j) * x + i] = image.at(0, li, lj, lk);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_map_to_their_voxels_at_full_and_resized_resolution() {
        let full = TokenGrid {
            grid: [2, 1, 3],
            extent: [32, 16, 48],
        };
        assert_eq!(full.len(), 6);
        assert_eq!(full.token([15, 0, 16]), 1);
        assert_eq!(full.token([16, 15, 47]), 5);
        // Resized: 2 tokens over 40 voxels, each covers 20.
        let resized = TokenGrid {
            grid: [2, 1, 1],
            extent: [40, 8, 8],
        };
        assert_eq!(resized.token([19, 0, 0]), 0);
        assert_eq!(resized.token([20, 7, 7]), 1);
    }

    #[test]
    fn upsampling_places_tokens_at_the_prepared_box_in_the_source() {
        // Source 5 × 3 × 2; prepared box starts at (-1, 1, 0), 4 × 2 × 2 voxels,
        // 2 × 1 × 1 tokens of 2 × 2 × 2 voxels.
        let place = Placement {
            start: [-1, 1, 0],
            extent: [4, 2, 2],
            source: [5, 3, 2],
        };
        assert_eq!(place.source_box(), ([0, 1, 0], [3, 3, 2]));
        let tokens = TokenGrid {
            grid: [2, 1, 1],
            extent: [4, 2, 2],
        };
        // Two channels: token t has (10 + t, 20 + t).
        let out = to_source(&[10, 20, 11, 21], 2, &tokens, &place, 0);
        assert_eq!(out.len(), 2 * 5 * 3 * 2);
        let at = |c: usize, i: usize, j: usize, k: usize| out[((c * 2 + k) * 3 + j) * 5 + i];
        // Source x 0 is prepared x 1 (token 0); x 1, 2 are prepared 2, 3 (token 1).
        assert_eq!(
            [at(0, 0, 1, 0), at(0, 1, 1, 0), at(0, 2, 2, 1)],
            [10, 11, 11]
        );
        assert_eq!([at(1, 0, 2, 1), at(1, 2, 1, 0)], [20, 21]);
        // Outside the box: row y = 0 and columns x >= 3.
        assert_eq!([at(0, 0, 0, 0), at(0, 3, 1, 0), at(1, 4, 2, 1)], [0, 0, 0]);
        // The prepared image itself goes back the same way.
        let img = Image {
            data: (0..16).map(|v| v as f32).collect(),
            shape: [1, 4, 2, 2],
            spacing: [1.0; 3],
            affine: dino3d_pipeline::nifti::affine::IDENTITY,
        };
        let back = image_to_source(&img, &place, -5.0);
        let at = |i: usize, j: usize, k: usize| back[(k * 3 + j) * 5 + i];
        assert_eq!(
            [at(0, 1, 0), at(2, 2, 1)],
            [img.at(0, 1, 0, 0), img.at(0, 3, 1, 1)]
        );
        assert_eq!([at(0, 0, 0), at(4, 1, 1)], [-5.0, -5.0]);
    }

    #[test]
    fn token_means_average_each_tokens_voxels() {
        let tokens = TokenGrid {
            grid: [2, 1, 1],
            extent: [4, 1, 1],
        };
        let img = Image {
            data: vec![1.0, 3.0, -1.0, 0.0],
            shape: [1, 4, 1, 1],
            spacing: [1.0; 3],
            affine: dino3d_pipeline::nifti::affine::IDENTITY,
        };
        assert_eq!(tokens.token_means(&img), vec![2.0, -0.5]);
    }
}
