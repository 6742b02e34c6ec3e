//! 3DINO / DINOv2 checkpoint layouts mapped onto this crate's names.
//!
//! `teacher_checkpoint.pth` is `{"teacher": state_dict}` with keys
//! `backbone.…`, `dino_head.…`, `ibot_head.…`; DDP adds `module.`; FSDP block
//! chunking stores block `i` as `blocks.<chunk>.<i>.…`. Weight-norm
//! prototypes (`last_layer.weight_g` / `weight_v`) keep their names.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};

use super::{LoadReport, load_into_varmap, load_tensors, read_pth};
use crate::{Result, pos_embed};

/// The three modules of a 3DINO checkpoint, keyed by this crate's names
/// (without the module prefix).
#[derive(Debug, Clone, Default)]
pub struct ThreeDinoWeights {
    /// Backbone (`ViT3d`) parameters.
    pub backbone: HashMap<String, Tensor>,
    /// DINO head parameters.
    pub dino_head: HashMap<String, Tensor>,
    /// iBOT head parameters.
    pub ibot_head: HashMap<String, Tensor>,
}

/// Which module a key belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Module {
    /// `backbone.` (or no module prefix at all: a bare backbone state dict).
    Backbone,
    /// `dino_head.`
    DinoHead,
    /// `ibot_head.`
    IbotHead,
}

/// Maps one state-dict key (already without the `teacher.` wrapper) to its
/// module and this crate's name: drops `module.` / `_orig_mod.` segments and
/// turns chunked `blocks.<c>.<i>.` into `blocks.<i>.`.
pub fn map_3dino_key(key: &str) -> (Module, String) {
    let segs: Vec<&str> = key
        .split('.')
        .filter(|s| !matches!(*s, "module" | "_orig_mod"))
        .collect();
    let (module, rest) = match segs.first() {
        Some(&"backbone") => (Module::Backbone, &segs[1..]),
        Some(&"dino_head") => (Module::DinoHead, &segs[1..]),
        Some(&"ibot_head") => (Module::IbotHead, &segs[1..]),
        _ => (Module::Backbone, &segs[..]),
    };
    let mut out: Vec<&str> = Vec::with_capacity(rest.len());
    let mut i = 0;
    while i < rest.len() {
        out.push(rest[i]);
        // blocks.<chunk>.<index>.x → blocks.<index>.x
        if rest[i] == "blocks"
            && let [a, b, ..] = &rest[i + 1..]
            && a.parse::<usize>().is_ok()
            && b.parse::<usize>().is_ok()
        {
            i += 1;
        }
        i += 1;
    }
    (module, out.join("."))
}

impl ThreeDinoWeights {
    /// Sorts named tensors into modules. If any key starts with `teacher.`
    /// only those are used (the wrapper of `teacher_checkpoint.pth` and of
    /// full training checkpoints); otherwise every key is.
    pub fn from_named(tensors: impl IntoIterator<Item = (String, Tensor)>) -> Self {
        let tensors: Vec<(String, Tensor)> = tensors.into_iter().collect();
        let teacher = tensors.iter().any(|(k, _)| k.starts_with("teacher."));
        let mut w = Self::default();
        for (key, t) in tensors {
            let key = match (teacher, key.strip_prefix("teacher.")) {
                (true, Some(k)) => k.to_string(),
                (true, None) => continue,
                (false, _) => key,
            };
            let (module, name) = map_3dino_key(&key);
            let map = match module {
                Module::Backbone => &mut w.backbone,
                Module::DinoHead => &mut w.dino_head,
                Module::IbotHead => &mut w.ibot_head,
            };
            map.insert(name, t);
        }
        w
    }

    /// All tensors with `backbone.` / `dino_head.` / `ibot_head.` prefixes.
    pub fn to_prefixed(&self) -> HashMap<String, Tensor> {
        let mut out = HashMap::new();
        for (prefix, map) in [
            ("backbone.", &self.backbone),
            ("dino_head.", &self.dino_head),
            ("ibot_head.", &self.ibot_head),
        ] {
            out.extend(map.iter().map(|(k, v)| (format!("{prefix}{k}"), v.clone())));
        }
        out
    }

    /// Loads every module into a `VarMap` whose names carry the module
    /// prefixes (a student or teacher with all three modules), resizing
    /// `backbone.pos_embed` to the model's grid if needed.
    pub fn load_into(&self, varmap: &candle_nn::VarMap) -> Result<LoadReport> {
        let mut all = self.to_prefixed();
        fit_pos_embed(varmap, "backbone.pos_embed", &mut all)?;
        load_into_varmap(varmap, &all)
    }
}

/// Reads a `.pth` (restricted unpickler) or `.safetensors` file and sorts
/// its tensors into modules.
pub fn read_weights(path: &Path, device: &Device) -> Result<ThreeDinoWeights> {
    let is_st = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"));
    let named = if is_st {
        load_tensors(path, device)?.into_iter().collect()
    } else {
        read_pth(path, device)?
    };
    Ok(ThreeDinoWeights::from_named(named))
}

/// Loads the backbone part into a `VarMap` of a bare `ViT3d` (names without
/// prefix), resizing `pos_embed` to the model's grid if needed.
pub fn load_backbone(varmap: &candle_nn::VarMap, weights: &ThreeDinoWeights) -> Result<LoadReport> {
    let mut bb = weights.backbone.clone();
    fit_pos_embed(varmap, "pos_embed", &mut bb)?;
    load_into_varmap(varmap, &bb)
}

/// Replaces `tensors[name]` by its trilinear resize (spec §2.7) when the
/// model's `pos_embed` has a different token count.
fn fit_pos_embed(
    varmap: &candle_nn::VarMap,
    name: &str,
    tensors: &mut HashMap<String, Tensor>,
) -> Result<()> {
    let target = match varmap
        .data()
        .lock()
        .expect("VarMap lock poisoned")
        .get(name)
    {
        Some(v) => v.dims().to_vec(),
        None => return Ok(()),
    };
    let Some(pos) = tensors.get(name) else {
        return Ok(());
    };
    if pos.dims() == target.as_slice() || pos.rank() != 3 || target.len() != 3 {
        return Ok(());
    }
    let side = pos_embed::grid_side(target[1] - 1)?;
    let resized = pos_embed::resize_checkpoint(pos, side)?;
    tensors.insert(name.to_string(), resized);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_map_to_modules_and_unchunked_blocks() {
        let m = |k: &str| map_3dino_key(k);
        assert_eq!(
            m("backbone.blocks.1.7.attn.qkv.weight"),
            (Module::Backbone, "blocks.7.attn.qkv.weight".into())
        );
        assert_eq!(
            m("backbone.blocks.7.ls1.gamma"),
            (Module::Backbone, "blocks.7.ls1.gamma".into())
        );
        assert_eq!(
            m("module.backbone.blocks.0.1.mlp.fc2.bias"),
            (Module::Backbone, "blocks.1.mlp.fc2.bias".into())
        );
        assert_eq!(
            m("dino_head.module.last_layer.weight_g"),
            (Module::DinoHead, "last_layer.weight_g".into())
        );
        assert_eq!(
            m("ibot_head.mlp.4.weight"),
            (Module::IbotHead, "mlp.4.weight".into())
        );
        assert_eq!(m("pos_embed"), (Module::Backbone, "pos_embed".into()));
    }
}
