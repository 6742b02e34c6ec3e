//! Backbones for the tasks that run one: a dino3d teacher checkpoint
//! (`.safetensors`, backbone under `backbone.`) or an imported 3DINO `.pth`
//! fitted to a ViT preset, the seeded random initialisation of a run, where a
//! pretraining output keeps its newest teacher, and the model's input layout.

use std::path::{Path, PathBuf};

use dino3d_model::candle_core::{DType, Device, Tensor};
use dino3d_model::candle_nn::VarMap;
use dino3d_model::checkpoint::{load_backbone, read_weights};
use dino3d_model::init::seeded_var_builder;
use dino3d_model::{ViT3d, ViT3dConfig, pos_embed};
use dino3d_pipeline::layout::to_z_fastest;

use crate::error::{Context, Result, bail};

/// Reads `weights` and builds the `arch` preset around them. The checkpoint
/// decides the stored position grid (the training crop size) and the input
/// channels; other grids are interpolated at run time.
///
/// # Errors
/// Unreadable files, unknown presets, and checkpoints that do not fit the
/// preset (missing or misshapen parameters).
pub fn load(weights: &Path, arch: &str, device: &Device) -> Result<ViT3d> {
    Ok(load_with_varmap(weights, arch, device)?.0)
}

/// [`load`], keeping the parameters' `VarMap` (to train the backbone).
///
/// # Errors
/// As [`load`].
pub fn load_with_varmap(weights: &Path, arch: &str, device: &Device) -> Result<(ViT3d, VarMap)> {
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
    let misfit = || {
        let hint = match fitting_preset(&tensors.backbone) {
            Some(p) if p != arch => format!(": its backbone is ViT-{p}, pass --arch {p}"),
            _ => String::new(),
        };
        format!("{} does not fit --arch {arch}{hint}", weights.display())
    };
    load_backbone(&varmap, &tensors)
        .and_then(|report| report.ensure_complete())
        .with_context(misfit)?;
    Ok((vit, varmap))
}

/// The preset whose width and depth the checkpoint's backbone has.
fn fitting_preset(backbone: &std::collections::HashMap<String, Tensor>) -> Option<&'static str> {
    let width = backbone.get("cls_token")?.dims().last().copied()?;
    let depth = backbone
        .keys()
        .filter_map(|k| {
            k.strip_prefix("blocks.")?
                .split('.')
                .next()?
                .parse::<usize>()
                .ok()
        })
        .max()?
        + 1;
    ViT3dConfig::PRESETS.into_iter().find(|p| {
        ViT3dConfig::from_preset(p).is_ok_and(|c| c.embed_dim == width && c.depth == depth)
    })
}

/// Voxels in NIfTI memory order (`(C, X, Y, Z)` with x fastest) as the
/// model's `(1, C, X, Y, Z)` input with z fastest.
///
/// # Errors
/// A candle failure.
pub fn model_input(voxels: &[f32], shape: [usize; 4], device: &Device) -> Result<Tensor> {
    let [c, x, y, z] = shape;
    Ok(Tensor::from_vec(
        to_z_fastest(voxels, shape),
        (1, c, x, y, z),
        device,
    )?)
}

/// The student's initial backbone of a run with `seed` (same names, same
/// streams), i.e. the teacher before any training.
///
/// # Errors
/// A bad configuration or a candle failure.
pub fn random_backbone(cfg: &ViT3dConfig, seed: u64, device: &Device) -> Result<ViT3d> {
    let vm = VarMap::new();
    let vb = seeded_var_builder(&vm, seed, DType::F32, device);
    Ok(ViT3d::new(cfg.clone(), vb.pp("backbone"))?)
}

/// The newest teacher in a pretraining output folder: the last resumable
/// checkpoint (its `teacher.*` tensors), else the last `eval/training_*` file.
///
/// # Errors
/// A folder without any.
pub fn newest_weights(out: &Path) -> Result<PathBuf> {
    let root = out.join("checkpoints");
    let mut best: Option<(usize, PathBuf)> = None;
    for dir in [root, out.join("eval")] {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let (it, file) = if let Some(n) = name.strip_prefix("iter_") {
                (n.parse::<usize>().ok(), e.path().join("state.safetensors"))
            } else if let Some(n) = name.strip_prefix("training_") {
                (
                    n.parse::<usize>().ok().map(|i| i + 1),
                    e.path().join("teacher_checkpoint.safetensors"),
                )
            } else {
                continue;
            };
            if let Some(it) = it
                && file.exists()
                && best.as_ref().is_none_or(|(b, _)| it > *b)
            {
                best = Some((it, file));
            }
        }
    }
    best.map(|(_, p)| p).with_context(|| {
        format!(
            "no checkpoint in {}: pretrain first (dino-run RECIPE) or pass --weights",
            out.display()
        )
    })
}

/// A weights file, or the newest teacher of a pretraining output folder.
///
/// # Errors
/// A path that does not exist, or a folder without a checkpoint.
pub fn resolve_weights(path: &Path) -> Result<PathBuf> {
    if path.is_dir() {
        newest_weights(path)
    } else if path.exists() {
        Ok(path.to_path_buf())
    } else {
        bail!(
            "pretrained_weights {} does not exist (pretrain first: dino-run recipes/demo.yaml)",
            path.display()
        )
    }
}

/// Fixtures for tests here and in the crates that use this one (feature
/// `test-utils`).
#[cfg(any(test, feature = "test-utils"))]
pub mod testutil {
    use super::*;

    /// A randomly initialised `tiny` backbone, saved at `path` as a teacher
    /// checkpoint (under `backbone.`, the layout [`load`] reads): the tests' model.
    ///
    /// # Panics
    /// When the checkpoint cannot be written.
    pub fn save_random_tiny(path: &Path) -> ViT3d {
        use std::collections::HashMap;
        let (vit, varmap) = ViT3d::with_varmap(ViT3dConfig::tiny(), &Device::Cpu).unwrap();
        let prefixed: HashMap<String, Tensor> = varmap
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

    /// A checkpoint of another width and depth names the preset to pass.
    #[test]
    fn a_backbone_of_another_preset_names_the_arch_to_pass() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tiny.safetensors");
        let vm = VarMap::new();
        let vb = seeded_var_builder(&vm, 1, DType::F32, &Device::Cpu);
        ViT3d::new(ViT3dConfig::from_preset("tiny").unwrap(), vb.pp("backbone")).unwrap();
        dino3d_model::checkpoint::save_varmap(&vm, &path).unwrap();
        let err = format!("{:#}", load(&path, "small", &Device::Cpu).unwrap_err());
        assert!(
            err.contains("does not fit --arch small: its backbone is ViT-tiny, pass --arch tiny"),
            "{err}"
        );
        load(&path, "tiny", &Device::Cpu).unwrap();
    }

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

    #[test]
    fn the_input_is_bit_identical_to_the_former_candle_permutation() {
        // What `model_input` did before the one layout conversion.
        let before = |voxels: &[f32], [c, x, y, z]: [usize; 4]| -> Vec<f32> {
            let t = Tensor::from_slice(voxels, (c, z, y, x), &Device::Cpu).unwrap();
            let t = t.permute((0, 3, 2, 1)).unwrap().contiguous().unwrap();
            t.flatten_all().unwrap().to_vec1().unwrap()
        };
        for shape in [
            [1, 1, 1, 1],
            [1, 2, 3, 4],
            [2, 5, 3, 7],
            [3, 16, 1, 9],
            [1, 17, 13, 11],
        ] {
            let n: usize = shape.iter().product();
            let v: Vec<f32> = (0..n).map(|i| (i as f32 * 0.61).cos()).collect();
            let t = model_input(&v, shape, &Device::Cpu).unwrap();
            assert_eq!(t.dims(), &[1, shape[0], shape[1], shape[2], shape[3]]);
            let new: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&new), bits(&before(&v, shape)));
        }
    }
}
