//! Position-embedding interpolation with PyTorch's trilinear semantics.
//!
//! 3DINO resizes the learned patch-position grid (a cube of side `s`) to the
//! token grid of each input with `F.interpolate(mode="trilinear",
//! align_corners=False, scale_factor=(t+0.1)/s')`, where `s'` is the float cube
//! root of the number of grid positions. We rebuild that as a plain
//! `(N_out × N_in)` weight matrix and multiply it with the embedding, which
//! is exact and differentiable. PyTorch rules reproduced here:
//! - output size `floor(in · scale)`;
//! - when output size equals input size, the axis is copied unchanged;
//! - otherwise `src = (dst + 0.5)/scale − 0.5` (computed in f32, the given
//!   scale not in/out), clamped at 0; `lo = floor(src)`, `hi = min(lo+1, in−1)`,
//!   `λ = src − lo`.

use candle_core::{D, Tensor};

use crate::{ModelError, Result};

/// One output position along an axis: two source indices and their weights.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AxisTap {
    /// Lower source index and its weight `1 − λ`.
    pub lo: (usize, f32),
    /// Upper source index and its weight `λ`.
    pub hi: (usize, f32),
}

/// Output size PyTorch derives from a scale factor: `floor(in · scale)`.
pub fn output_size(in_size: usize, scale: f64) -> usize {
    (in_size as f64 * scale).floor() as usize
}

/// 1-D linear-interpolation taps for `align_corners=False` with an explicit
/// scale factor.
pub fn axis_taps(in_size: usize, scale: f64) -> Vec<AxisTap> {
    let out_size = output_size(in_size, scale);
    if out_size == in_size {
        return (0..in_size)
            .map(|i| AxisTap {
                lo: (i, 1.0),
                hi: (i, 0.0),
            })
            .collect();
    }
    // PyTorch turns the double scale into a float ratio and works in float.
    let ratio = (1.0 / scale) as f32;
    (0..out_size)
        .map(|dst| {
            let src = (ratio * (dst as f32 + 0.5) - 0.5).max(0.0);
            let lo = (src.floor() as usize).min(in_size - 1);
            let lambda = (src - lo as f32).clamp(0.0, 1.0);
            let hi = if lo < in_size - 1 { lo + 1 } else { lo };
            AxisTap {
                lo: (lo, 1.0 - lambda),
                hi: (hi, lambda),
            }
        })
        .collect()
}

/// Row-major `(N_out × N_in)` trilinear matrix for grids flattened with the
/// last axis fastest; `in_grid` and `scales` per axis.
pub fn trilinear_matrix(in_grid: [usize; 3], scales: [f64; 3]) -> (Vec<f32>, [usize; 3]) {
    let taps: Vec<Vec<AxisTap>> = (0..3).map(|a| axis_taps(in_grid[a], scales[a])).collect();
    let out_grid = [taps[0].len(), taps[1].len(), taps[2].len()];
    let n_in = in_grid.iter().product::<usize>();
    let n_out = out_grid.iter().product::<usize>();
    let mut m = vec![0f32; n_out * n_in];
    let mut row = 0;
    for tx in &taps[0] {
        for ty in &taps[1] {
            for tz in &taps[2] {
                let dst = &mut m[row * n_in..(row + 1) * n_in];
                for (ix, wx) in [tx.lo, tx.hi] {
                    for (iy, wy) in [ty.lo, ty.hi] {
                        for (iz, wz) in [tz.lo, tz.hi] {
                            // `+=`: at an edge lo == hi and both taps land on one cell.
                            dst[(ix * in_grid[1] + iy) * in_grid[2] + iz] += wx * wy * wz;
                        }
                    }
                }
                row += 1;
            }
        }
    }
    (m, out_grid)
}

/// Side of the cubic position grid holding `n_pos` patch positions.
pub fn grid_side(n_pos: usize) -> Result<usize> {
    let s = (n_pos as f64).cbrt().round() as usize;
    if s * s * s != n_pos {
        return Err(ModelError::Input(format!(
            "position embedding has {n_pos} patch positions, not a cube"
        )));
    }
    Ok(s)
}

/// Scale factors 3DINO uses at runtime: `(t + 0.1) / N^(1/3)` per axis, with
/// the unrounded float cube root (Python's `N ** (1/3)`).
pub fn runtime_scales(n_pos: usize, target: [usize; 3]) -> [f64; 3] {
    let s = (n_pos as f64).powf(1.0 / 3.0);
    target.map(|t| (t as f64 + 0.1) / s)
}

/// Applies the trilinear matrix to a `(1, 1 + N_in, E)` embedding (\[CLS\]
/// first), giving `(1, 1 + N_out, E)`. Fails if the scales do not produce
/// `target`.
fn resample(pos: &Tensor, scales: [f64; 3], target: [usize; 3]) -> Result<Tensor> {
    let (_, t, e) = pos.dims3()?;
    let n_in = t - 1;
    let s = grid_side(n_in)?;
    let (m, out_grid) = trilinear_matrix([s, s, s], scales);
    if out_grid != target {
        return Err(ModelError::Input(format!(
            "interpolating a {s}³ position grid gives {out_grid:?}, not {target:?}"
        )));
    }
    let n_out = target.iter().product::<usize>();
    let m = Tensor::from_vec(m, (n_out, n_in), pos.device())?.to_dtype(pos.dtype())?;
    let cls = pos.narrow(1, 0, 1)?;
    let grid = pos.narrow(1, 1, n_in)?.squeeze(0)?;
    let grid = m.matmul(&grid.contiguous()?)?.reshape((1, n_out, e))?;
    Ok(Tensor::cat(&[&cls, &grid], D::Minus2)?)
}

/// The position embedding for a token grid, as 3DINO computes it in every
/// forward pass: unchanged when the grid is the stored cube, else trilinear
/// with the `+0.1` scale rule.
pub fn interpolate(pos: &Tensor, target: [usize; 3]) -> Result<Tensor> {
    let n_pos = pos.dim(1)? - 1;
    let s = grid_side(n_pos)?;
    if target == [s, s, s] {
        return Ok(pos.clone());
    }
    resample(pos, runtime_scales(n_pos, target), target)
}

/// Checkpoint conversion to a new cubic grid (e.g. 6³ → 7³ for high-res
/// adaptation): one isotropic scale `(side + 0.1) / round(N^(1/3))`.
pub fn resize_checkpoint(pos: &Tensor, side: usize) -> Result<Tensor> {
    let s = grid_side(pos.dim(1)? - 1)?;
    let scale = (side as f64 + 0.1) / s as f64;
    resample(pos, [scale; 3], [side; 3])
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    fn close(a: f32, b: f32) -> bool {
        (a - b).abs() < 1e-6
    }

    #[test]
    fn two_to_three_taps_match_hand_values() {
        // s = 2, t = 3: scale 3.1/2 = 1.55, ratio 1/1.55.
        // dst 0: src = 0.5/1.55 − 0.5 = −0.17742 → clamp 0: (0, 1.0), (1, 0.0)
        // dst 1: src = 1.5/1.55 − 0.5 = 0.467742: (0, 0.532258), (1, 0.467742)
        // dst 2: src = 2.5/1.55 − 0.5 = 1.112903: lo = 1 (last), hi = 1
        let taps = axis_taps(2, 1.55);
        assert_eq!(taps.len(), 3);
        assert_eq!((taps[0].lo.0, taps[0].hi.0), (0, 1));
        assert!(close(taps[0].lo.1, 1.0) && close(taps[0].hi.1, 0.0));
        assert_eq!((taps[1].lo.0, taps[1].hi.0), (0, 1));
        assert!(close(taps[1].lo.1, 0.532_258) && close(taps[1].hi.1, 0.467_742));
        assert_eq!((taps[2].lo.0, taps[2].hi.0), (1, 1));
        // λ = 0.112903 but both taps hit index 1, so the value is v[1].
        assert!(close(taps[2].lo.1 + taps[2].hi.1, 1.0));
    }

    #[test]
    fn same_size_axis_is_identity_despite_scale() {
        // (6+0.1)/6: floor(6.1) = 6 → PyTorch copies the axis.
        let taps = axis_taps(6, 6.1 / 6.0);
        for (i, t) in taps.iter().enumerate() {
            assert_eq!(
                *t,
                AxisTap {
                    lo: (i, 1.0),
                    hi: (i, 0.0)
                }
            );
        }
    }

    #[test]
    fn six_to_seven_taps() {
        // 7.1/6: ratio 0.845070; dst 3: src = 3.5·0.845070 − 0.5 = 2.457746.
        let taps = axis_taps(6, 7.1 / 6.0);
        assert_eq!(taps.len(), 7);
        assert_eq!(taps[3].lo.0, 2);
        assert!((taps[3].hi.1 - 0.457_746).abs() < 2e-6);
        // dst 6: src = 6.5·0.845070 − 0.5 = 4.992958 → (4, 5)
        assert_eq!((taps[6].lo.0, taps[6].hi.0), (4, 5));
        assert!((taps[6].hi.1 - 0.992_958).abs() < 2e-6);
    }

    #[test]
    fn grid_2_to_3_cube_hand_values() {
        // pos grid 2³ with value(x,y,z) = 100x + 10y + z + 1 (cls = −1), E = 1.
        let mut v = vec![-1f32];
        for x in 0..2 {
            for y in 0..2 {
                for z in 0..2 {
                    v.push((100 * x + 10 * y + z + 1) as f32);
                }
            }
        }
        let pos = Tensor::from_vec(v, (1, 9, 1), &Device::Cpu).unwrap();
        let out = interpolate(&pos, [3, 3, 3]).unwrap();
        let out: Vec<f32> = out.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(out.len(), 28);
        assert_eq!(out[0], -1.0);
        // Axis weights of 1 at positions (0, 0.467742, 1); trilinear of an
        // affine function is affine in those coordinates.
        let c = [0.0f32, 0.467_742, 1.0];
        for x in 0..3 {
            for y in 0..3 {
                for z in 0..3 {
                    let want = 100.0 * c[x] + 10.0 * c[y] + c[z] + 1.0;
                    let got = out[1 + (x * 3 + y) * 3 + z];
                    assert!((got - want).abs() < 1e-4, "({x},{y},{z}): {got} vs {want}");
                }
            }
        }
    }

    #[test]
    fn non_cubic_target_keeps_token_order() {
        // 2³ → (2, 2, 3): x and y copied, z interpolated; last axis fastest.
        let v: Vec<f32> = (0..9).map(|i| i as f32).collect();
        let pos = Tensor::from_vec(v, (1, 9, 1), &Device::Cpu).unwrap();
        let out: Vec<f32> = interpolate(&pos, [2, 2, 3])
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        // patch values: (x,y,z) -> 1 + 4x + 2y + z
        for x in 0..2 {
            for y in 0..2 {
                let base = 1.0 + 4.0 * x as f32 + 2.0 * y as f32;
                let row = &out[1 + (x * 2 + y) * 3..1 + (x * 2 + y) * 3 + 3];
                assert!(close(row[0], base));
                assert!(close(row[1], base + 0.467_742));
                assert!(close(row[2], base + 1.0));
            }
        }
    }

    #[test]
    fn stored_grid_is_returned_unchanged_and_bad_sizes_fail() {
        let pos = Tensor::ones((1, 9, 4), DType::F32, &Device::Cpu).unwrap();
        let same = interpolate(&pos, [2, 2, 2]).unwrap();
        assert_eq!(same.dims(), &[1, 9, 4]);
        let bad = Tensor::ones((1, 8, 4), DType::F32, &Device::Cpu).unwrap();
        assert!(interpolate(&bad, [2, 2, 2]).is_err());
    }

    #[test]
    fn checkpoint_resize_6_to_7() {
        let pos = Tensor::ones((1, 217, 3), DType::F32, &Device::Cpu).unwrap();
        let out = resize_checkpoint(&pos, 7).unwrap();
        assert_eq!(out.dims(), &[1, 344, 3]);
        // Interpolation weights sum to one: constants stay constant.
        let v: Vec<f32> = out.flatten_all().unwrap().to_vec1().unwrap();
        assert!(v.iter().all(|&x| (x - 1.0).abs() < 1e-5));
    }
}
