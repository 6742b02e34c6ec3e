//! The 3-D vision transformer backbone (3DINO's `DinoVisionTransformer3d`).

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Init, VarBuilder};

use crate::block::{Block, BlockDims, BranchDrop};
pub use crate::drop_path::DropPathMode;
use crate::drop_path::{SplitMix64, Subset, drop_path_scale};
use crate::norm::LayerNorm;
use crate::patch_embed::PatchEmbed3d;
pub use crate::recompute::{Activations, BlockTape};
use crate::{ModelError, Result, pos_embed};

/// Backbone hyper-parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct ViT3dConfig {
    /// Token width E.
    pub embed_dim: usize,
    /// Number of transformer blocks.
    pub depth: usize,
    /// Attention heads; must divide `embed_dim`.
    pub num_heads: usize,
    /// Cubic patch side (kernel = stride of the patch embedding).
    pub patch_size: usize,
    /// Input channels C.
    pub in_chans: usize,
    /// Side of the learned position grid (`img_size / patch_size`; 96/16 = 6).
    pub pos_grid: usize,
    /// MLP hidden width = `embed_dim · mlp_ratio`.
    pub mlp_ratio: f64,
    /// Bias on the qkv projection.
    pub qkv_bias: bool,
    /// Initial LayerScale gamma.
    pub layerscale_init: f64,
    /// LayerNorm epsilon (all norms).
    pub ln_eps: f64,
    /// Drop-path rate, the same for every block; used only when a forward
    /// pass is given a drop-path seed.
    pub drop_path_rate: f64,
    /// Drop-path form: 3DINO's subset form by default.
    pub drop_path_mode: DropPathMode,
}

impl ViT3dConfig {
    /// The presets [`Self::from_preset`] knows, smallest first: the one list
    /// recipes and command lines are checked against.
    pub const PRESETS: [&'static str; 4] = ["tiny", "small", "base", "large"];

    /// The released 3DINO backbone's preset, the default wherever one is
    /// chosen.
    pub const THREEDINO_PRESET: &'static str = "large";

    /// 3DINO's student drop-path rate (`student.drop_path_rate`).
    pub const THREEDINO_DROP_PATH_RATE: f64 = 0.3;

    /// 3DINO's pretraining student: ViT-L with drop path 0.3.
    pub fn threedino() -> Self {
        Self {
            drop_path_rate: Self::THREEDINO_DROP_PATH_RATE,
            ..Self::large()
        }
    }

    fn preset(embed_dim: usize, depth: usize, num_heads: usize) -> Self {
        Self {
            embed_dim,
            depth,
            num_heads,
            patch_size: 16,
            in_chans: 1,
            pos_grid: 6,
            mlp_ratio: 4.0,
            qkv_bias: true,
            layerscale_init: 1e-5,
            ln_eps: 1e-6,
            drop_path_rate: 0.0,
            drop_path_mode: DropPathMode::Subset,
        }
    }

    /// 192 dims, 4 blocks, 3 heads: tests and CPU demos.
    pub fn tiny() -> Self {
        Self::preset(192, 4, 3)
    }

    /// ViT-S: 384 dims, 12 blocks, 6 heads.
    pub fn small() -> Self {
        Self::preset(384, 12, 6)
    }

    /// ViT-B: 768 dims, 12 blocks, 12 heads.
    pub fn base() -> Self {
        Self::preset(768, 12, 12)
    }

    /// ViT-L: 1024 dims, 24 blocks, 16 heads (the released 3DINO model).
    pub fn large() -> Self {
        Self::preset(1024, 24, 16)
    }

    /// Looks a preset up by name (`tiny`, `small`, `base`, `large`).
    pub fn from_preset(name: &str) -> Result<Self> {
        match name {
            "tiny" => Ok(Self::tiny()),
            "small" => Ok(Self::small()),
            "base" => Ok(Self::base()),
            "large" => Ok(Self::large()),
            _ => Err(ModelError::Config(format!("unknown ViT preset {name:?}"))),
        }
    }

    /// Sets the position grid from the training crop size (e.g. 112 → 7³).
    pub fn with_img_size(mut self, img_size: usize) -> Self {
        self.pos_grid = img_size / self.patch_size;
        self
    }

    /// MLP hidden width.
    pub fn mlp_hidden(&self) -> usize {
        (self.embed_dim as f64 * self.mlp_ratio) as usize
    }

    fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(ModelError::Config(m));
        if self.num_heads == 0 || !self.embed_dim.is_multiple_of(self.num_heads) {
            return bad(format!(
                "embed_dim {} is not divisible by num_heads {}",
                self.embed_dim, self.num_heads
            ));
        }
        if self.patch_size == 0 || self.in_chans == 0 || self.pos_grid == 0 {
            return bad("patch_size, in_chans and pos_grid must be positive".into());
        }
        if !(0.0..1.0).contains(&self.drop_path_rate) {
            return bad(format!(
                "drop_path_rate {} not in [0, 1)",
                self.drop_path_rate
            ));
        }
        Ok(())
    }
}

/// Which attention maps a forward pass keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AttentionCapture {
    /// None (the default; saves memory).
    #[default]
    None,
    /// The \[CLS\] query row of every block: `(B, heads, 1 + N)`, entry 0 is
    /// \[CLS\]→\[CLS\].
    ClsRow,
    /// Every block's full matrix `(B, heads, 1 + N, 1 + N)`.
    Full,
}

/// Optional parts of a forward pass.
#[derive(Debug, Clone, Default)]
pub struct ForwardOptions<'a> {
    /// iBOT masks `(B, N)` (any dtype, nonzero = masked): masked patch
    /// embeddings are replaced by the mask token before the position
    /// embedding is added.
    pub masks: Option<&'a Tensor>,
    /// 0-based block indices whose outputs to return (pre final norm).
    pub intermediate_layers: &'a [usize],
    /// Attention maps to keep.
    pub attention: AttentionCapture,
    /// Seed for drop path at `drop_path_rate` in `drop_path_mode`; `None` =
    /// no drop path (teacher, evaluation). Attention maps cannot be captured
    /// with subset drop path (a branch sees only part of the batch).
    pub drop_path_seed: Option<u64>,
    /// What the pass keeps of each block's activations for a backward
    /// (activation checkpointing, or none for inference). Under anything
    /// but `Keep` the attention maps carry no gradient.
    pub activations: Activations,
}

/// What a forward pass returns.
#[derive(Debug, Clone)]
pub struct ViT3dOutput {
    /// Final-norm \[CLS\] token `(B, E)`.
    pub cls_norm: Tensor,
    /// Final-norm patch tokens `(B, N, E)`.
    pub patch_norm: Tensor,
    /// All tokens before the final norm `(B, 1 + N, E)`.
    pub prenorm: Tensor,
    /// Raw outputs `(B, 1 + N, E)` of the requested blocks, in request order.
    pub intermediates: Vec<Tensor>,
    /// Attention maps per block (see [`AttentionCapture`]); empty if none.
    pub attentions: Vec<Tensor>,
    /// Token grid `(X/p, Y/p, Z/p)`; N is its product, last axis fastest.
    pub grid: [usize; 3],
    /// Under [`Activations::Recompute`], what [`ViT3d::backward_tape`] needs
    /// to bring the gradients through the blocks.
    pub tape: Option<BlockTape>,
}

/// 3DINO's pre-norm ViT for `(N, C, X, Y, Z)` volumes.
#[derive(Debug, Clone)]
pub struct ViT3d {
    cfg: ViT3dConfig,
    patch_embed: PatchEmbed3d,
    cls_token: Tensor,
    pos_embed: Tensor,
    mask_token: Tensor,
    blocks: Vec<Block>,
    norm: LayerNorm,
}

impl ViT3d {
    /// The device its parameters (and so its inputs) live on.
    pub fn device(&self) -> &candle_core::Device {
        self.cls_token.device()
    }

    /// Builds (or loads, depending on the `VarBuilder`) the backbone.
    /// Names: `cls_token (1,1,E)`, `pos_embed (1,1+g³,E)`, `mask_token (1,E)`,
    /// `patch_embed.proj.*`, `blocks.{i}.*`, `norm.*`.
    pub fn new(cfg: ViT3dConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let e = cfg.embed_dim;
        let n_pos = cfg.pos_grid.pow(3);
        let patch_embed = PatchEmbed3d::new(vb.pp("patch_embed"), cfg.in_chans, e, cfg.patch_size)?;
        let cls_token = vb.get_with_hints(
            (1, 1, e),
            "cls_token",
            Init::Randn {
                mean: 0.0,
                stdev: 1e-6,
            },
        )?;
        let pos_embed = vb.get_with_hints(
            (1, 1 + n_pos, e),
            "pos_embed",
            Init::Randn {
                mean: 0.0,
                stdev: 0.02,
            },
        )?;
        let mask_token = vb.get_with_hints((1, e), "mask_token", Init::Const(0.0))?;
        let dims = BlockDims {
            dim: e,
            num_heads: cfg.num_heads,
            mlp_hidden: cfg.mlp_hidden(),
            qkv_bias: cfg.qkv_bias,
            layerscale_init: cfg.layerscale_init,
            ln_eps: cfg.ln_eps,
        };
        let blocks = (0..cfg.depth)
            .map(|i| Block::new(vb.pp(format!("blocks.{i}")), dims))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let norm = LayerNorm::new(vb.pp("norm"), e, cfg.ln_eps)?;
        Ok(Self {
            cfg,
            patch_embed,
            cls_token,
            pos_embed,
            mask_token,
            blocks,
            norm,
        })
    }

    /// The configuration it was built with.
    pub fn config(&self) -> &ViT3dConfig {
        &self.cfg
    }

    /// Token grid for an input of shape `(N, C, X, Y, Z)`.
    pub fn grid(&self, x: &Tensor) -> Result<[usize; 3]> {
        self.patch_embed.grid(x)
    }

    /// Patch embedding, mask-token substitution, \[CLS\] prepend and position
    /// embedding: the `(B, 1 + N, E)` input of block 0.
    pub fn prepare_tokens(&self, x: &Tensor, masks: Option<&Tensor>) -> Result<Tensor> {
        let grid = self.patch_embed.grid(x)?;
        let tokens = self.patch_embed.forward(x)?;
        let (b, n, e) = tokens.dims3()?;
        let tokens = match masks {
            Some(m) => {
                if m.dims() != [b, n] {
                    return Err(ModelError::Input(format!(
                        "masks must be (B, N) = ({b}, {n}), got {:?}",
                        m.dims()
                    )));
                }
                // Any nonzero counts as masked; blend keeps gradients to both.
                let m = m.ne(0f64)?.to_dtype(tokens.dtype())?.unsqueeze(2)?;
                let keep = m.affine(-1.0, 1.0)?;
                let mask_tok = self.mask_token.reshape((1, 1, e))?;
                (tokens.broadcast_mul(&keep)? + m.broadcast_mul(&mask_tok)?)?
            }
            None => tokens,
        };
        let cls = self.cls_token.broadcast_as((b, 1, e))?;
        let x = Tensor::cat(&[&cls, &tokens], 1)?;
        let pos = pos_embed::interpolate(&self.pos_embed, grid)?;
        Ok(x.broadcast_add(&pos)?)
    }

    /// Full forward pass with options (masks, drop path, captures).
    pub fn forward_with(&self, x: &Tensor, opts: &ForwardOptions) -> Result<ViT3dOutput> {
        let grid = self.patch_embed.grid(x)?;
        if let Some(&i) = opts
            .intermediate_layers
            .iter()
            .find(|&&i| i >= self.blocks.len())
        {
            return Err(ModelError::Input(format!(
                "intermediate layer {i} out of range (depth {})",
                self.blocks.len()
            )));
        }
        let mut h = self.prepare_tokens(x, opts.masks)?;
        let probs = opts.attention != AttentionCapture::None;
        let mut tape = None;
        if opts.activations == Activations::Recompute {
            let (t, leaf) = BlockTape::start(h, probs)?;
            tape = Some(t);
            h = leaf;
        }
        let b = h.dim(0)?;
        let mut rng = opts.drop_path_seed.map(SplitMix64::new);
        let rate = self.cfg.drop_path_rate;
        let subset = rate > 0.0 && self.cfg.drop_path_mode == DropPathMode::Subset;
        if rng.is_some() && subset && probs {
            return Err(ModelError::Input(
                "attention maps cannot be captured under subset drop path".into(),
            ));
        }
        let mut layer_out: Vec<Option<Tensor>> = vec![None; self.blocks.len()];
        let mut attentions = Vec::new();
        for (i, block) in self.blocks.iter().enumerate() {
            // Attention's draw first, then the MLP's: a fixed stream order.
            let drop = match rng.as_mut() {
                Some(r) if subset => BranchDrop::Subset(
                    Subset::draw(b, rate, r, h.device())?,
                    Subset::draw(b, rate, r, h.device())?,
                ),
                Some(r) if rate > 0.0 => BranchDrop::PerSample(
                    drop_path_scale(b, rate, r, h.dtype(), h.device())?,
                    drop_path_scale(b, rate, r, h.dtype(), h.device())?,
                ),
                _ => BranchDrop::None,
            };
            let (out, attn) = block.forward(&h, &drop, probs)?;
            // The tape exists exactly under `Recompute`.
            h = match tape.as_mut() {
                Some(t) => t.record(&out, drop)?,
                None if opts.activations == Activations::Discard => out.detach(),
                None => out,
            };
            // A map comes back only when one was asked for (`probs`).
            if let Some(attn) = attn {
                let attn = match opts.activations {
                    Activations::Keep => attn,
                    _ => attn.detach(),
                };
                attentions.push(match opts.attention {
                    AttentionCapture::ClsRow => attn.narrow(2, 0, 1)?.squeeze(2)?,
                    _ => attn,
                });
            }
            if opts.intermediate_layers.contains(&i) {
                layer_out[i] = Some(h.clone());
            }
        }
        let intermediates = opts
            .intermediate_layers
            .iter()
            .map(|&i| layer_out[i].clone().expect("captured above"))
            .collect();
        let normed = self.norm.forward(&h)?;
        let n = normed.dim(1)? - 1;
        Ok(ViT3dOutput {
            cls_norm: normed.narrow(1, 0, 1)?.squeeze(1)?,
            patch_norm: normed.narrow(1, 1, n)?,
            prenorm: h,
            intermediates,
            attentions,
            grid,
            tape,
        })
    }

    /// Completes `grads`, the backward of a loss computed from a
    /// [`Activations::Recompute`] pass of this backbone, by recomputing the
    /// blocks one at a time: afterwards it holds every parameter's gradient,
    /// as the backward of a `Keep` pass would.
    pub fn backward_tape(
        &self,
        tape: BlockTape,
        grads: &mut candle_core::backprop::GradStore,
    ) -> Result<()> {
        tape.backward(&self.blocks, grads)
    }

    /// [`Self::backward_tape`] for several passes of this backbone (the
    /// student's global and local crops), block by block from the last:
    /// after each block, `after_block(grads)` sees every parameter with a
    /// gradient in `grads` holding its final gradient (so data-parallel
    /// training can start reducing it). The gradients equal those of
    /// [`Self::backward_tape`] on each tape in turn, bit for bit.
    pub fn backward_tapes(
        &self,
        tapes: Vec<BlockTape>,
        grads: &mut candle_core::backprop::GradStore,
        after_block: &mut dyn FnMut(&candle_core::backprop::GradStore) -> Result<()>,
    ) -> Result<()> {
        BlockTape::backward_all(tapes, &self.blocks, grads, after_block)
    }

    /// Plain forward pass (no masks, no drop path, no captures).
    pub fn forward(&self, x: &Tensor) -> Result<ViT3dOutput> {
        self.forward_with(x, &ForwardOptions::default())
    }

    /// [`Self::forward`] for inference: each block's graph is dropped as
    /// soon as its output exists ([`Activations::Discard`]), so a backbone
    /// whose weights are variables holds one block's intermediates at a
    /// time instead of all of them; no gradient reaches the blocks.
    pub fn infer(&self, x: &Tensor) -> Result<ViT3dOutput> {
        self.forward_with(
            x,
            &ForwardOptions {
                activations: Activations::Discard,
                ..Default::default()
            },
        )
    }

    /// Applies the final LayerNorm (e.g. to an intermediate layer).
    pub fn apply_norm(&self, tokens: &Tensor) -> Result<Tensor> {
        Ok(self.norm.forward(tokens)?)
    }

    /// DINOv2's `get_intermediate_layers`: for each 0-based block index,
    /// `(patch tokens (B, N, E), \[CLS\] (B, E))`, final-normed if `norm`.
    pub fn intermediate_layers(
        &self,
        x: &Tensor,
        indices: &[usize],
        norm: bool,
    ) -> Result<Vec<(Tensor, Tensor)>> {
        self.layers_with(x, indices, norm, Activations::Keep)
    }

    /// [`Self::intermediate_layers`] for inference (see [`Self::infer`]).
    pub fn infer_intermediate_layers(
        &self,
        x: &Tensor,
        indices: &[usize],
        norm: bool,
    ) -> Result<Vec<(Tensor, Tensor)>> {
        self.layers_with(x, indices, norm, Activations::Discard)
    }

    fn layers_with(
        &self,
        x: &Tensor,
        indices: &[usize],
        norm: bool,
        activations: Activations,
    ) -> Result<Vec<(Tensor, Tensor)>> {
        let out = self.forward_with(
            x,
            &ForwardOptions {
                intermediate_layers: indices,
                activations,
                ..Default::default()
            },
        )?;
        out.intermediates
            .iter()
            .map(|t| {
                let t = if norm { self.apply_norm(t)? } else { t.clone() };
                let n = t.dim(1)? - 1;
                Ok((t.narrow(1, 1, n)?, t.narrow(1, 0, 1)?.squeeze(1)?))
            })
            .collect()
    }

    /// Number of blocks.
    pub fn depth(&self) -> usize {
        self.blocks.len()
    }

    /// The transformer blocks, for heads that interleave their own layers
    /// with the backbone's (the ViT-Adapter runs them chunk by chunk).
    pub(crate) fn blocks(&self) -> &[Block] {
        &self.blocks
    }

    /// Builds a freshly initialised f32 backbone in its own `VarMap` on `device`.
    pub fn with_varmap(cfg: ViT3dConfig, device: &Device) -> Result<(Self, candle_nn::VarMap)> {
        let vm = candle_nn::VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, device);
        Ok((Self::new(cfg, vb)?, vm))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny(device: &Device) -> (ViT3d, candle_nn::VarMap) {
        let cfg = ViT3dConfig {
            embed_dim: 24,
            depth: 2,
            num_heads: 2,
            pos_grid: 2,
            ..ViT3dConfig::tiny()
        };
        ViT3d::with_varmap(cfg, device).unwrap()
    }

    #[test]
    fn shapes_and_captures() {
        let dev = Device::Cpu;
        let (vit, _vm) = tiny(&dev);
        let x = Tensor::randn(0f32, 1.0, (2, 1, 32, 32, 48), &dev).unwrap();
        let out = vit
            .forward_with(
                &x,
                &ForwardOptions {
                    intermediate_layers: &[1, 0],
                    attention: AttentionCapture::ClsRow,
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(out.grid, [2, 2, 3]);
        assert_eq!(out.cls_norm.dims(), &[2, 24]);
        assert_eq!(out.patch_norm.dims(), &[2, 12, 24]);
        assert_eq!(out.prenorm.dims(), &[2, 13, 24]);
        assert_eq!(out.intermediates.len(), 2);
        assert_eq!(out.attentions.len(), 2);
        assert_eq!(out.attentions[0].dims(), &[2, 2, 13]);
        // Attention rows are distributions.
        let s: Vec<f32> = out.attentions[1]
            .sum(2)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert!(s.iter().all(|v| (v - 1.0).abs() < 1e-5));
        // The last intermediate is the pre-norm output.
        let d = (&out.intermediates[0] - &out.prenorm)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap();
        assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0);
        let layers = vit.intermediate_layers(&x, &[1], true).unwrap();
        let d = (&layers[0].1 - &out.cls_norm)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap();
        assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0);
        assert!(
            vit.forward_with(
                &x,
                &ForwardOptions {
                    intermediate_layers: &[2],
                    ..Default::default()
                }
            )
            .is_err()
        );
    }

    #[test]
    fn rejects_bad_inputs_and_configs() {
        let dev = Device::Cpu;
        let (vit, _vm) = tiny(&dev);
        let x = Tensor::zeros((1, 1, 32, 32, 40), DType::F32, &dev).unwrap();
        assert!(vit.forward(&x).is_err());
        let x = Tensor::zeros((1, 2, 32, 32, 32), DType::F32, &dev).unwrap();
        assert!(vit.forward(&x).is_err());
        let cfg = ViT3dConfig {
            num_heads: 5,
            ..ViT3dConfig::tiny()
        };
        assert!(ViT3d::with_varmap(cfg, &dev).is_err());
        assert!(ViT3dConfig::from_preset("huge").is_err());
        assert_eq!(ViT3dConfig::from_preset("large").unwrap().embed_dim, 1024);
    }

    #[test]
    fn mask_token_is_substituted_before_position_embedding() {
        let dev = Device::Cpu;
        let (vit, vm) = tiny(&dev);
        // A recognisable mask token.
        let e = 24;
        let mt = Tensor::arange(0f32, e as f32, &dev)
            .unwrap()
            .reshape((1, e))
            .unwrap();
        vm.data().lock().unwrap()["mask_token"].set(&mt).unwrap();
        let x = Tensor::randn(0f32, 1.0, (2, 1, 32, 32, 32), &dev).unwrap();
        let mask = Tensor::from_vec(
            vec![1u8, 0, 0, 1, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1],
            (2, 8),
            &dev,
        )
        .unwrap();
        let plain = vit.prepare_tokens(&x, None).unwrap();
        let masked = vit.prepare_tokens(&x, Some(&mask)).unwrap();
        let pos = vit.pos_embed.squeeze(0).unwrap();
        let m: Vec<u8> = mask.flatten_all().unwrap().to_vec1().unwrap();
        for bi in 0..2 {
            for j in 0..8 {
                let got = masked.get(bi).unwrap().get(1 + j).unwrap();
                let want = if m[bi * 8 + j] != 0 {
                    (mt.squeeze(0).unwrap() + pos.get(1 + j).unwrap()).unwrap()
                } else {
                    plain.get(bi).unwrap().get(1 + j).unwrap()
                };
                let d = (got - want).unwrap().abs().unwrap().max_all().unwrap();
                assert!(d.to_scalar::<f32>().unwrap() < 1e-6, "image {bi} token {j}");
            }
        }
        // Image 1 is fully masked: its whole output no longer depends on x.
        let y = Tensor::randn(0f32, 1.0, (2, 1, 32, 32, 32), &dev).unwrap();
        let opts = ForwardOptions {
            masks: Some(&mask),
            ..Default::default()
        };
        let a = vit.forward_with(&x, &opts).unwrap().prenorm.get(1).unwrap();
        let b = vit.forward_with(&y, &opts).unwrap().prenorm.get(1).unwrap();
        let d = (a - b).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0);
    }

    fn drop_path_vit(mode: DropPathMode) -> (ViT3d, candle_nn::VarMap) {
        let cfg = ViT3dConfig {
            embed_dim: 24,
            depth: 2,
            num_heads: 2,
            pos_grid: 2,
            drop_path_rate: 0.5,
            drop_path_mode: mode,
            layerscale_init: 1.0,
            ..ViT3dConfig::tiny()
        };
        ViT3d::with_varmap(cfg, &Device::Cpu).unwrap()
    }

    #[test]
    fn drop_path_changes_training_forward_only_when_seeded() {
        let dev = Device::Cpu;
        for mode in [DropPathMode::Subset, DropPathMode::PerSample] {
            let (vit, _vm) = drop_path_vit(mode);
            let x = Tensor::randn(0f32, 1.0, (8, 1, 32, 32, 32), &dev).unwrap();
            let eval = vit.forward(&x).unwrap().prenorm;
            let again = vit.forward(&x).unwrap().prenorm;
            let d0 = (&eval - &again).unwrap().abs().unwrap().max_all().unwrap();
            assert_eq!(d0.to_scalar::<f32>().unwrap(), 0.0);
            let opts = ForwardOptions {
                drop_path_seed: Some(3),
                ..Default::default()
            };
            let train = vit.forward_with(&x, &opts).unwrap().prenorm;
            let d = (&eval - &train).unwrap().abs().unwrap().max_all().unwrap();
            assert!(d.to_scalar::<f32>().unwrap() > 1e-3, "{mode:?}");
            let train2 = vit.forward_with(&x, &opts).unwrap().prenorm;
            let d2 = (&train - &train2)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap();
            assert_eq!(d2.to_scalar::<f32>().unwrap(), 0.0, "same seed, same draws");
        }
    }

    #[test]
    fn subset_drop_path_keeps_every_gradient() {
        let dev = Device::Cpu;
        let (vit, vm) = drop_path_vit(DropPathMode::Subset);
        let x = Tensor::randn(0f32, 1.0, (4, 1, 32, 32, 32), &dev).unwrap();
        let opts = ForwardOptions {
            drop_path_seed: Some(9),
            ..Default::default()
        };
        let out = vit.forward_with(&x, &opts).unwrap();
        let grads = out
            .cls_norm
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for (name, v) in vm.data().lock().unwrap().iter() {
            if name == "mask_token" {
                continue; // no masks in this pass
            }
            let g = grads
                .get(v.as_tensor())
                .unwrap_or_else(|| panic!("{name}: no gradient"));
            let n = g
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(n > 0.0 && n.is_finite(), "{name}: gradient norm² {n}");
        }
        // Attention capture is refused under subset drop path.
        let capture = ForwardOptions {
            drop_path_seed: Some(9),
            attention: AttentionCapture::ClsRow,
            ..Default::default()
        };
        assert!(vit.forward_with(&x, &capture).is_err());
    }
}
