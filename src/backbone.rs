//! Loading a backbone for the commands that run one (`embed`, `visualize`):
//! a dino3d teacher checkpoint (`.safetensors`, backbone under `backbone.`) or
//! an imported 3DINO `.pth`, fitted to a ViT preset.

use std::path::Path;

use anyhow::Context;
use dino3d_model::candle_core::{Device, Tensor};
use dino3d_model::checkpoint::{load_backbone, read_weights};
use dino3d_model::{ViT3d, ViT3dConfig, pos_embed};

/// Reads `weights` and builds the `arch` preset around them. The checkpoint
/// decides the stored position grid (the training crop size) and the input
/// channels; other grids are interpolated at run time.
///
/// # Errors
/// Unreadable files, unknown presets, and checkpoints that do not fit the
/// preset (missing or misshapen parameters).
pub(crate) fn load(weights: &Path, arch: &str, device: &Device) -> anyhow::Result<ViT3d> {
    Ok(load_with_varmap(weights, arch, device)?.0)
}

/// [`load`], keeping the parameters' `VarMap` (to train the backbone).
///
/// # Errors
/// As [`load`].
pub(crate) fn load_with_varmap(
    weights: &Path,
    arch: &str,
    device: &Device,
) -> anyhow::Result<(ViT3d, dino3d_model::candle_nn::VarMap)> {
    let tensors =
        read_weights(weights, device).with_context(|| format!("reading {}", weights.display()))?;
    let mut cfg = ViT3dConfig::from_preset(arch)?;
    if let Some(pos) = tensors.backbone.get("pos_embed") {
        cfg.pos_grid = pos_embed::grid_side(pos.dim(1)? - 1)?;
    }
    if let Some(w) = tensors.backbone.get("patch_embed.proj.weight") {
        cfg.in_chans = w.dim(1)?;
    }
    let (vit, varmap) = ViT3d::with_varmap(cfg, device)?;
    load_backbone(&varmap, &tensors)?
        .ensure_complete()
        .with_context(|| format!("{} does not fit --arch {arch}", weights.display()))?;
    Ok((vit, varmap))
}

/// Voxels in NIfTI memory order (`(C, X, Y, Z)` with x fastest, i.e. a
/// C-order `(C, Z, Y, X)` array) to the model's `(1, C, X, Y, Z)` with z fastest.
pub(crate) fn model_input(
    voxels: &[f32],
    shape: [usize; 4],
    device: &Device,
) -> anyhow::Result<Tensor> {
    let [c, x, y, z] = shape;
    let t = Tensor::from_slice(voxels, (c, z, y, x), device)?;
    Ok(t.permute((0, 3, 2, 1))?.contiguous()?.unsqueeze(0)?)
}

#[cfg(test)]
pub(crate) mod testutil {
    use super::*;

    /// A randomly initialised `tiny` backbone, saved at `path` as a teacher
    /// checkpoint (under `backbone.`, the layout [`load`] reads): the tests' model.
    pub(crate) fn save_random_tiny(path: &Path) -> ViT3d {
        use std::collections::HashMap;
        let (vit, varmap) = ViT3d::with_varmap(ViT3dConfig::tiny(), &Device::Cpu).unwrap();
        let prefixed: HashMap<String, dino3d_model::candle_core::Tensor> = varmap
            .data()
            .lock()
            .unwrap()
            .iter()
            .map(|(k, v)| (format!("backbone.{k}"), v.as_tensor().clone()))
            .collect();
        dino3d_model::checkpoint::save_tensors(&prefixed, path).unwrap();
        vit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_is_transposed_to_z_fastest() {
        // (C, X, Y, Z) = (1, 2, 3, 4); memory value = flat NIfTI index.
        let shape = [1, 2, 3, 4];
        let v: Vec<f32> = (0..24).map(|i| i as f32).collect();
        let t = model_input(&v, shape, &Device::Cpu).unwrap();
        assert_eq!(t.dims(), &[1, 1, 2, 3, 4]);
        let flat: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        for i in 0..2 {
            for j in 0..3 {
                for k in 0..4 {
                    // NIfTI index: x fastest; model index: z fastest.
                    let nifti = (k * 3 + j) * 2 + i;
                    assert_eq!(flat[(i * 3 + j) * 4 + k], nifti as f32);
                }
            }
        }
    }
}
