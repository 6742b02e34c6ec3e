//! From the ViT's per-channel patch tokens to the heads' inputs, and the
//! backbone call that produces them.
//!
//! With C input channels every channel goes through the ViT on its own as a
//! 1-channel volume (3DINO's multi-channel handling), so a level arrives as
//! `(B·C, N, E)` with the channels of a sample consecutive. The heads merge
//! them per location over `C·E` features ordered channel-major
//! (`c·E + e`), as concatenating the per-channel features does.

use candle_core::Tensor;

use crate::{ModelError, Result, ViT3d};

/// `(B·C, N, E)` tokens to `(B, N, C·E)`: per-location concatenation.
///
/// # Errors
/// A level whose shape does not match `(b·c, n, e)`.
pub fn concat_channels(t: &Tensor, b: usize, c: usize, n: usize, e: usize) -> Result<Tensor> {
    check_level(t, b, c, n, e)?;
    Ok(t.reshape((b, c, n, e))?
        .transpose(1, 2)?
        .reshape((b, n, c * e))?)
}

/// `(B, N, F)` tokens to a `(B, F, gx, gy, gz)` volume (tokens in the
/// patch embedding's row-major grid order).
///
/// # Errors
/// `N ≠ gx·gy·gz`.
pub fn tokens_to_volume(t: &Tensor, grid: [usize; 3]) -> Result<Tensor> {
    let (b, n, f) = t.dims3()?;
    if n != grid.iter().product::<usize>() {
        return Err(ModelError::Input(format!(
            "{n} tokens do not fill a {grid:?} grid"
        )));
    }
    Ok(t.reshape((b, grid[0], grid[1], grid[2], f))?
        .permute((0, 4, 1, 2, 3))?
        .contiguous()?)
}

fn check_level(t: &Tensor, b: usize, c: usize, n: usize, e: usize) -> Result<()> {
    if t.dims() != [b * c, n, e] {
        return Err(ModelError::Input(format!(
            "a level must be (B·C, N, E) = {:?}, got {:?}",
            [b * c, n, e],
            t.dims()
        )));
    }
    Ok(())
}

/// The token grid of an input of `size` voxels for `patch`-sized patches.
///
/// # Errors
/// Sizes that are not multiples of the patch.
pub fn token_grid(size: [usize; 3], patch: usize) -> Result<[usize; 3]> {
    if patch == 0 || size.iter().any(|s| s % patch != 0 || *s == 0) {
        return Err(ModelError::Input(format!(
            "sizes {size:?} must be positive multiples of the patch size {patch}"
        )));
    }
    Ok(size.map(|s| s / patch))
}

/// The four evenly spaced 0-based block indices of a ViT of `depth` blocks
/// (UNETR's taps: 5, 11, 17, 23 for ViT-L's 24; `(i + 1)·L/4 − 1`).
pub fn unetr_levels(depth: usize) -> [usize; 4] {
    std::array::from_fn(|i| ((i + 1) * depth / 4).max(1) - 1)
}

/// The last four block indices (the linear decoder's taps).
pub fn last_levels(depth: usize) -> [usize; 4] {
    std::array::from_fn(|i| (depth + i).saturating_sub(4))
}

/// The ViT's levels for `x (B, C, X, Y, Z)`: every channel through `vit` as
/// its own 1-channel volume, final-normed patch tokens `(B·C, N, E)` (\[CLS\]
/// dropped) after the 0-based blocks `indices`.
///
/// # Errors
/// Inputs the ViT refuses.
pub fn vit_levels(vit: &ViT3d, x: &Tensor, indices: &[usize]) -> Result<Vec<Tensor>> {
    let layers = vit.intermediate_layers(&per_channel(x)?, indices, true)?;
    Ok(layers.into_iter().map(|(patch, _cls)| patch).collect())
}

/// [`vit_levels`] of a frozen backbone: detached (no gradient reaches any of
/// its weights, the final norm's included), and each block's graph is
/// dropped as soon as its output exists
/// ([`ViT3d::infer_intermediate_layers`]), so one block's intermediates are
/// alive at a time.
///
/// # Errors
/// Inputs the ViT refuses.
pub fn vit_levels_frozen(vit: &ViT3d, x: &Tensor, indices: &[usize]) -> Result<Vec<Tensor>> {
    let layers = vit.infer_intermediate_layers(&per_channel(x)?, indices, true)?;
    Ok(layers
        .into_iter()
        .map(|(patch, _cls)| patch.detach())
        .collect())
}

/// `(B, C, …)` as `B·C` one-channel volumes: each channel through the ViT.
fn per_channel(x: &Tensor) -> Result<Tensor> {
    let (b, c, sx, sy, sz) = x.dims5()?;
    Ok(x.reshape((b * c, 1, sx, sy, sz))?)
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::*;
    use crate::seg::test_util::f64s;

    #[test]
    fn level_indices() {
        assert_eq!(unetr_levels(24), [5, 11, 17, 23]);
        assert_eq!(unetr_levels(12), [2, 5, 8, 11]);
        assert_eq!(unetr_levels(4), [0, 1, 2, 3]);
        assert_eq!(last_levels(24), [20, 21, 22, 23]);
        assert_eq!(last_levels(4), [0, 1, 2, 3]);
    }

    #[test]
    fn channels_concatenate_channel_major_per_location() {
        // B = 1, C = 2, N = 3, E = 2: value = 100·c + 10·n + e.
        let v: Vec<f32> = (0..2)
            .flat_map(|c| {
                (0..3).flat_map(move |n| (0..2).map(move |e| (100 * c + 10 * n + e) as f32))
            })
            .collect();
        let t = Tensor::from_vec(v, (2, 3, 2), &Device::Cpu).unwrap();
        let cat = concat_channels(&t, 1, 2, 3, 2).unwrap();
        assert_eq!(
            f64s(&cat),
            vec![
                0., 1., 100., 101., 10., 11., 110., 111., 20., 21., 120., 121.
            ]
        );
        assert!(concat_channels(&t, 1, 3, 3, 2).is_err());
        let vol = tokens_to_volume(&cat, [3, 1, 1]).unwrap();
        assert_eq!(vol.dims(), &[1, 4, 3, 1, 1]);
        assert_eq!(f64s(&vol.narrow(1, 2, 1).unwrap()), vec![100., 110., 120.]);
        assert!(tokens_to_volume(&cat, [2, 1, 1]).is_err());
        assert!(token_grid([32, 32, 48], 16).unwrap() == [2, 2, 3]);
        assert!(token_grid([32, 30, 48], 16).is_err());
    }

    #[test]
    fn frozen_levels_equal_the_tracked_ones_without_gradient() {
        let dev = Device::Cpu;
        let cfg = crate::ViT3dConfig {
            embed_dim: 24,
            depth: 4,
            num_heads: 2,
            pos_grid: 2,
            ..crate::ViT3dConfig::tiny()
        };
        let (vit, vm) = ViT3d::with_varmap(cfg, &dev).unwrap();
        let x = Tensor::randn(0f32, 1.0, (1, 2, 32, 32, 32), &dev).unwrap();
        let levels = [1, 3];
        let tracked = vit_levels(&vit, &x, &levels).unwrap();
        let frozen = vit_levels_frozen(&vit, &x, &levels).unwrap();
        for (a, b) in tracked.iter().zip(&frozen) {
            assert_eq!(f64s(a), f64s(b));
        }
        // Detached: no weight, the final norm's included, gets a gradient
        // (the tracked taps reach them all).
        let grads = frozen[0].sum_all().unwrap().backward().unwrap();
        let tracked_grads = tracked[0].sum_all().unwrap().backward().unwrap();
        for (name, v) in vm.data().lock().unwrap().iter() {
            assert!(grads.get(v.as_tensor()).is_none(), "{name}");
            if name.starts_with("norm.") {
                assert!(tracked_grads.get(v.as_tensor()).is_some(), "{name}");
            }
        }
    }
}
