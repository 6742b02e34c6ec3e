//! 3DINO's parameter groups (spec §2.4): layer-wise lr decay, patch-embed lr
//! multiplier, no weight decay for biases / norms / LayerScale, and the
//! prototype ("last layer") flag used by the freeze schedule.

/// Per-parameter optimiser multipliers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ParamMultipliers {
    /// Multiplies the scheduled learning rate.
    pub lr_mult: f64,
    /// Multiplies the scheduled weight decay.
    pub wd_mult: f64,
    /// Prototype layer: uses the last-layer lr schedule (0 while frozen).
    pub is_last_layer: bool,
}

impl Default for ParamMultipliers {
    fn default() -> Self {
        Self {
            lr_mult: 1.0,
            wd_mult: 1.0,
            is_last_layer: false,
        }
    }
}

/// The rules' knobs (3DINO: decay 0.9, patch-embed ×0.2).
#[derive(Debug, Clone, PartialEq)]
pub struct GroupRules {
    /// Backbone depth L (number of blocks).
    pub depth: usize,
    /// Layer-wise lr decay rate (`optim.layerwise_decay`).
    pub layerwise_decay: f64,
    /// Extra lr factor for `patch_embed` parameters (`optim.patch_embed_lr_mult`).
    pub patch_embed_lr_mult: f64,
    /// Name prefix of the backbone; only its parameters get layer-wise decay.
    pub backbone_prefix: String,
}

impl GroupRules {
    /// 3DINO's values for a backbone of `depth` blocks under `backbone.`.
    pub fn threedino(depth: usize) -> Self {
        Self {
            depth,
            layerwise_decay: 0.9,
            patch_embed_lr_mult: 0.2,
            backbone_prefix: "backbone.".into(),
        }
    }

    /// Layer id of a backbone parameter (name without the backbone prefix):
    /// 0 for embeddings and tokens, `i + 1` for block `i` (plain
    /// `blocks.i.` or chunked `blocks.c.i.`), `L + 1` for the rest.
    pub fn layer_id(&self, name: &str) -> usize {
        let first = name.split('.').next().unwrap_or("");
        if matches!(
            first,
            "pos_embed" | "patch_embed" | "cls_token" | "mask_token"
        ) {
            return 0;
        }
        if first == "blocks"
            && let Some(i) = block_index(name)
        {
            return i + 1;
        }
        self.depth + 1
    }

    /// Multipliers for a full parameter name (e.g. `backbone.blocks.3.attn.qkv.weight`,
    /// `dino_head.last_layer.weight_g`).
    pub fn multipliers(&self, name: &str) -> ParamMultipliers {
        let lr_mult = match name.strip_prefix(self.backbone_prefix.as_str()) {
            Some(inner) => {
                let id = self.layer_id(inner);
                let mut m = self.layerwise_decay.powi((self.depth + 1 - id) as i32);
                if inner.starts_with("patch_embed") {
                    m *= self.patch_embed_lr_mult;
                }
                m
            }
            // Heads sit above the last layer: multiplier 1.
            None => 1.0,
        };
        let last = name.rsplit('.').next().unwrap_or("");
        // DINOv2's rule: biases, anything named "norm", LayerScale gammas.
        let no_decay = last == "bias" || name.contains("norm") || last == "gamma";
        ParamMultipliers {
            lr_mult,
            wd_mult: if no_decay { 0.0 } else { 1.0 },
            is_last_layer: name.contains("last_layer"),
        }
    }
}

/// Global block index in `blocks.i.…` or chunked `blocks.c.i.…`.
fn block_index(name: &str) -> Option<usize> {
    let mut parts = name.split('.').skip(1);
    let a: usize = parts.next()?.parse().ok()?;
    match parts.next().and_then(|p| p.parse::<usize>().ok()) {
        Some(b) => Some(b),
        None => Some(a),
    }
}
