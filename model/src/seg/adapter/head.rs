//! The whole ViT-Adapter + UNETR head (3DINO's `ViTAdapterUNETRHead`).
//!
//! With input `x (B, C, S)` (sizes divisible by 16), E the ViT width and
//! F the decoder feature size:
//!
//! 1. the spatial prior module gives `c1..c4` at ½ … 1/16; `c2, c3, c4`
//!    become tokens plus a learned level embedding, concatenated to `c`;
//! 2. every channel goes through the ViT's patch embedding as its own
//!    1-channel volume, with the position embedding (and \[CLS\] its own);
//! 3. four interactions, each over depth/4 consecutive ViT blocks: an
//!    injector (pyramid → channel-averaged tokens, added to every channel),
//!    the blocks (with \[CLS\]), an extractor (tokens → pyramid); the last
//!    interaction runs two extra extractors; the tokens after each
//!    interaction are kept as `x1..x4`;
//! 4. `c1 += up(c2)`; each `x_i` is merged over channels (1³ conv C·E → E),
//!    upsampled ×8, ×4, ×2, ×1 and added to `c_i`; BatchNorm gives
//!    `f1..f4`;
//! 5. decoder: `enc0 = Res(C → F)(x)`, `enc_i = Res(E → F·2^{i−1})(f_i)`,
//!    `Up(8F → 4F)(enc4, enc3) → Up(4F → 2F)(·, enc2) → Up(2F → F)(·, enc1)
//!    → Up(F → F)(·, enc0)`, `Out(F → classes)`.
//!
//! The ViT runs without drop path and its final norm is not used (as in
//! ViT-Adapter). Drop path (per sample) acts on the extractors' FFN in
//! training only; its masks come from a counter kept by the head, so runs
//! are reproducible.
//!
//! Parameter names under the head's `VarBuilder`: ViT-Adapter's
//! `level_embed (3, E)`, `spm.*` (see [`SpatialPriorModule`]),
//! `interactions.{i}.injector.*`, `interactions.{i}.extractor.*`,
//! `interactions.3.extra_extractors.{0,1}.*`, `up.{weight,bias}`,
//! `norm1..norm4.*` (BatchNorms); ours: `merges.{0..3}.{weight,bias}`
//! `(E, C·E, 1, 1, 1)` (one channel merge per level: whether 3DINO shares
//! one is not in the spec); the decoder, MONAI's block names under
//! `encoder0.layer` … `encoder4.layer`, `decoder4` … `decoder1` (from the
//! deepest) and `out`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Init, VarBuilder, VarMap};

use super::deform_attn::{Levels, MsDeformAttnConfig};
use super::extractor::Extractor;
use super::injector::Injector;
use super::spm::SpatialPriorModule;
use super::{adapter_conv, adapter_up, channel_mean, volume_to_tokens};
use crate::block::BranchDrop;
use crate::drop_path::{SplitMix64, drop_path_scale};
use crate::seg::batch_norm::BatchNorm3d;
use crate::seg::conv_transpose3d::ConvTranspose3d;
use crate::seg::conv3d::{Conv3d, Conv3dConfig};
use crate::seg::out_block::UnetOutBlock;
use crate::seg::res_block::UnetResBlock;
use crate::seg::tokens::{concat_channels, token_grid, tokens_to_volume};
use crate::seg::up_block::UnetrUpBlock;
use crate::seg::upsample::upsample_trilinear;
use crate::{ModelError, Result, ViT3d, ViT3dConfig};

/// The ViT patch size the adapter's pyramid assumes (its 1/16 level is
/// the token grid).
pub const ADAPTER_PATCH: usize = 16;

/// Number of interactions (ViT-Adapter's `interaction_indexes` has four).
pub const INTERACTIONS: usize = 4;

/// Extra extractors after the last interaction.
const EXTRA_EXTRACTORS: usize = 2;

/// Sizes and settings of a [`VitAdapterHead`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VitAdapterConfig {
    /// Input channels C (each goes through the ViT separately).
    pub in_channels: usize,
    /// The ViT's width E.
    pub embed_dim: usize,
    /// The ViT's attention heads (informational: ViT-Adapter's constructor
    /// takes it; nothing here depends on it).
    pub num_heads_vit: usize,
    /// The ViT's depth; a multiple of 4 (depth/4 blocks per interaction).
    pub depth: usize,
    /// Output classes.
    pub classes: usize,
    /// Base width of the spatial prior module (3DINO: 32).
    pub conv_inplane: usize,
    /// Deformable attention heads (3DINO: 8).
    pub deform_heads: usize,
    /// Sampling points per head and level (3DINO: 4).
    pub points: usize,
    /// ConvFFN hidden width / E (3DINO: 0.25).
    pub ffn_ratio: f64,
    /// Deformable attention value width / E (3DINO: 0.25).
    pub value_ratio: f64,
    /// Drop-path rate of the extractors' FFN (3DINO: 0.2).
    pub drop_path: f64,
    /// Initial injector γ (3DINO: 1e-6).
    pub gamma_init: f64,
    /// Decoder feature size F (3DINO: 32).
    pub feature_size: usize,
}

impl VitAdapterConfig {
    /// 3DINO's settings for a backbone `vit` with `in_channels` inputs and
    /// `classes` outputs.
    pub fn for_vit(vit: &ViT3dConfig, in_channels: usize, classes: usize) -> Self {
        VitAdapterConfig {
            in_channels,
            embed_dim: vit.embed_dim,
            num_heads_vit: vit.num_heads,
            depth: vit.depth,
            classes,
            conv_inplane: 32,
            deform_heads: 8,
            points: 4,
            ffn_ratio: 0.25,
            value_ratio: 0.25,
            drop_path: 0.2,
            gamma_init: 1e-6,
            feature_size: 32,
        }
    }

    fn attn(&self, levels: usize) -> MsDeformAttnConfig {
        MsDeformAttnConfig {
            dim: self.embed_dim,
            levels,
            heads: self.deform_heads,
            points: self.points,
            value_ratio: self.value_ratio,
        }
    }

    fn ffn_hidden(&self) -> usize {
        (self.embed_dim as f64 * self.ffn_ratio) as usize
    }

    fn validate(&self) -> Result<()> {
        let sizes = [
            self.in_channels,
            self.embed_dim,
            self.depth,
            self.classes,
            self.conv_inplane,
            self.feature_size,
            self.ffn_hidden(),
        ];
        if sizes.contains(&0) || !self.depth.is_multiple_of(INTERACTIONS) {
            return Err(ModelError::Config(format!(
                "ViT-Adapter sizes must be positive and the depth a multiple of 4: {self:?}"
            )));
        }
        if !(0.0..1.0).contains(&self.drop_path) {
            return Err(ModelError::Config(format!(
                "ViT-Adapter drop path {} not in [0, 1)",
                self.drop_path
            )));
        }
        Ok(())
    }
}

/// One interaction's adapter layers.
#[derive(Debug, Clone)]
struct Interaction {
    injector: Injector,
    extractors: Vec<Extractor>,
}

/// The ViT-Adapter + UNETR segmentation head (the backbone is passed to
/// [`VitAdapterHead::forward_t`]).
#[derive(Debug, Clone)]
pub struct VitAdapterHead {
    cfg: VitAdapterConfig,
    level_embed: Tensor,
    spm: SpatialPriorModule,
    interactions: Vec<Interaction>,
    up: ConvTranspose3d,
    merges: Vec<Conv3d>,
    norms: Vec<BatchNorm3d>,
    encoders: Vec<UnetResBlock>,
    decoders: Vec<UnetrUpBlock>,
    out: UnetOutBlock,
    /// Training forwards so far: the drop-path seed of the next one.
    draws: Arc<AtomicU64>,
}

impl VitAdapterHead {
    /// Creates (or loads) the head under `vb`.
    ///
    /// # Errors
    /// Inconsistent sizes (see [`VitAdapterConfig`]); a failed variable
    /// lookup.
    pub fn new(cfg: VitAdapterConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let (c, e, f) = (cfg.in_channels, cfg.embed_dim, cfg.feature_size);
        let level_embed = vb.get_with_hints(
            (3, e),
            "level_embed",
            Init::Randn {
                mean: 0.0,
                stdev: 1.0,
            },
        )?;
        let interactions = (0..INTERACTIONS)
            .map(|i| {
                let vb = vb.pp("interactions").pp(i);
                let mut extractors = vec![Extractor::new(
                    vb.pp("extractor"),
                    cfg.attn(1),
                    cfg.ffn_hidden(),
                )?];
                if i + 1 == INTERACTIONS {
                    for k in 0..EXTRA_EXTRACTORS {
                        extractors.push(Extractor::new(
                            vb.pp("extra_extractors").pp(k),
                            cfg.attn(1),
                            cfg.ffn_hidden(),
                        )?);
                    }
                }
                Ok(Interaction {
                    injector: Injector::new(vb.pp("injector"), cfg.attn(3), cfg.gamma_init)?,
                    extractors,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let merges = (0..4)
            .map(|i| {
                adapter_conv(
                    vb.pp("merges").pp(i),
                    (c * e, e, 1),
                    true,
                    Conv3dConfig::default(),
                )
            })
            .collect::<candle_core::Result<_>>()?;
        let norms = (1..=4)
            .map(|i| BatchNorm3d::new(vb.pp(format!("norm{i}")), e))
            .collect::<candle_core::Result<_>>()?;
        let widths = [f, 2 * f, 4 * f, 8 * f];
        let mut encoders = vec![UnetResBlock::new(vb.pp("encoder0").pp("layer"), c, f)?];
        for (i, &w) in widths.iter().enumerate() {
            encoders.push(UnetResBlock::new(
                vb.pp(format!("encoder{}", i + 1)).pp("layer"),
                e,
                w,
            )?);
        }
        let decoders = [
            (4, 8 * f, 4 * f),
            (3, 4 * f, 2 * f),
            (2, 2 * f, f),
            (1, f, f),
        ]
        .iter()
        .map(|&(i, from, to)| UnetrUpBlock::new(vb.pp(format!("decoder{i}")), from, to))
        .collect::<candle_core::Result<_>>()?;
        Ok(VitAdapterHead {
            cfg,
            level_embed,
            spm: SpatialPriorModule::new(vb.pp("spm"), c, cfg.conv_inplane, e)?,
            interactions,
            up: adapter_up(vb.pp("up"), e)?,
            merges,
            norms,
            encoders,
            decoders,
            out: UnetOutBlock::new(vb.pp("out"), f, cfg.classes)?,
            draws: Arc::new(AtomicU64::new(0)),
        })
    }

    /// The configuration.
    pub fn config(&self) -> VitAdapterConfig {
        self.cfg
    }

    /// The four output BatchNorms `norm1..norm4` (for their running
    /// statistics).
    pub fn batch_norms(&self) -> &[BatchNorm3d] {
        &self.norms
    }

    fn check(&self, vit: &ViT3d, x: &Tensor) -> Result<()> {
        let v = vit.config();
        let c = x.dims5()?.1;
        if v.embed_dim != self.cfg.embed_dim
            || vit.depth() != self.cfg.depth
            || v.patch_size != ADAPTER_PATCH
            || v.in_chans != 1
            || c != self.cfg.in_channels
        {
            return Err(ModelError::Input(format!(
                "ViT-Adapter for {} channels, E = {}, depth {} needs a 1-channel ViT with \
                 16³ patches; got {c} channels and ViT {:?}",
                self.cfg.in_channels, self.cfg.embed_dim, self.cfg.depth, v
            )));
        }
        Ok(())
    }

    /// Logits `(B, classes, X, Y, Z)` for `x (B, C, X, Y, Z)` (sizes
    /// multiples of 16) through the backbone `vit`, whose blocks run
    /// between the adapter's layers. `train` selects batch statistics in
    /// the BatchNorms (updating the running ones) and turns drop path on.
    /// For a frozen backbone pass one built from detached weights (see
    /// [`frozen_backbone`]).
    ///
    /// # Errors
    /// Shapes or a backbone that do not fit.
    pub fn forward_t(&self, vit: &ViT3d, x: &Tensor, train: bool) -> Result<Tensor> {
        self.check(vit, x)?;
        let (b, c, sx, sy, sz) = x.dims5()?;
        let e = self.cfg.embed_dim;
        let grid = token_grid([sx, sy, sz], ADAPTER_PATCH)?;
        let n: usize = grid.iter().product();
        let at = |k: usize| [sx >> k, sy >> k, sz >> k];
        let (dtype, dev) = (x.dtype(), x.device());
        let pyramid = Levels::new(&[at(2), at(3), at(4)], dtype, dev)?;
        let vit_levels = Levels::new(&[grid], dtype, dev)?;

        // Spatial prior: c2..c4 as tokens with their level embeddings.
        let [c1, c2, c3, c4] = self.spm.forward_t(x, train)?;
        let mut cc = Tensor::cat(
            &[&c2, &c3, &c4]
                .iter()
                .enumerate()
                .map(|(i, v)| Ok(volume_to_tokens(v)?.broadcast_add(&self.level_embed.get(i)?)?))
                .collect::<Result<Vec<_>>>()?,
            1,
        )?;

        // ViT tokens, one 1-channel volume per input channel.
        let tokens = vit.prepare_tokens(&x.reshape((b * c, 1, sx, sy, sz))?, None)?;
        let mut cls = tokens.narrow(1, 0, 1)?;
        let mut xt = tokens.narrow(1, 1, n)?;
        let mut rng = (train && self.cfg.drop_path > 0.0).then(|| {
            let k = self.draws.fetch_add(1, Ordering::Relaxed);
            SplitMix64::new(k.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03)
        });
        let per = self.cfg.depth / INTERACTIONS;
        let mut outs = Vec::with_capacity(INTERACTIONS);
        for (i, inter) in self.interactions.iter().enumerate() {
            let q = channel_mean(&xt, c)?;
            let d = inter
                .injector
                .forward(&q, &vit_levels.reference, &cc, &pyramid.shapes)?;
            xt = xt
                .reshape((b, c, n, e))?
                .broadcast_add(&d.unsqueeze(1)?)?
                .reshape((b * c, n, e))?;
            let mut h = Tensor::cat(&[&cls, &xt], 1)?;
            for block in &vit.blocks()[i * per..(i + 1) * per] {
                h = block.forward(&h, &BranchDrop::None, false)?.0;
            }
            cls = h.narrow(1, 0, 1)?;
            xt = h.narrow(1, 1, n)?;
            let feat = channel_mean(&xt, c)?;
            for ex in &inter.extractors {
                let drop = match rng.as_mut() {
                    Some(r) => Some(drop_path_scale(b, self.cfg.drop_path, r, dtype, dev)?),
                    None => None,
                };
                cc = ex.forward(&cc, &pyramid, &feat, &vit_levels, drop.as_ref())?;
            }
            outs.push(xt.clone());
        }

        // Pyramid volumes plus the merged, upsampled ViT features.
        let counts = pyramid.counts();
        let mut vols = Vec::with_capacity(4);
        let mut start = 0;
        for (k, &count) in counts.iter().enumerate() {
            vols.push(tokens_to_volume(&cc.narrow(1, start, count)?, at(k + 2))?);
            start += count;
        }
        let c1 = (self.up.forward(&vols[0])? + c1)?;
        let levels = [c1, vols[0].clone(), vols[1].clone(), vols[2].clone()];
        let feats = levels
            .iter()
            .enumerate()
            .map(|(i, lv)| {
                let xv = tokens_to_volume(&concat_channels(&outs[i], b, c, n, e)?, grid)?;
                let xv = upsample_trilinear(&self.merges[i].forward(&xv)?, at(i + 1))?;
                Ok(self.norms[i].forward_t(&(lv + xv)?, train)?)
            })
            .collect::<Result<Vec<_>>>()?;

        // UNETR-style decoder.
        let enc0 = self.encoders[0].forward(x)?;
        let enc: Vec<Tensor> = feats
            .iter()
            .zip(&self.encoders[1..])
            .map(|(f, block)| block.forward(f))
            .collect::<candle_core::Result<_>>()?;
        let d = self.decoders[0].forward(&enc[3], &enc[2])?;
        let d = self.decoders[1].forward(&d, &enc[1])?;
        let d = self.decoders[2].forward(&d, &enc[0])?;
        let d = self.decoders[3].forward(&d, &enc0)?;
        Ok(self.out.forward(&d)?)
    }
}

/// A copy of the backbone whose weights are detached tensors from
/// `varmap`, so a head trained through it sends no gradient to (and spends
/// no backward work on) the ViT's variables.
///
/// # Errors
/// Missing or misshapen variables for `cfg`.
pub fn frozen_backbone(cfg: ViT3dConfig, varmap: &VarMap, device: &Device) -> Result<ViT3d> {
    let (tensors, dtype) = {
        let data = varmap.data().lock().expect("VarMap lock");
        let dtype = data
            .values()
            .next()
            .map(|v| v.dtype())
            .unwrap_or(DType::F32);
        let tensors: HashMap<String, Tensor> = data
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
            .collect();
        (tensors, dtype)
    };
    ViT3d::new(cfg, VarBuilder::from_tensors(tensors, dtype, device))
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor};
    use candle_nn::{VarBuilder, VarMap};

    use super::*;
    use crate::seg::loss::dice_ce;
    use crate::seg::test_util::{assert_all_learn, f64s, tensor};

    fn vit_cfg() -> ViT3dConfig {
        ViT3dConfig {
            embed_dim: 32,
            depth: 4,
            num_heads: 2,
            pos_grid: 2,
            ..ViT3dConfig::tiny()
        }
    }

    fn head_cfg(c: usize, drop_path: f64) -> VitAdapterConfig {
        VitAdapterConfig {
            conv_inplane: 4,
            feature_size: 4,
            drop_path,
            ..VitAdapterConfig::for_vit(&vit_cfg(), c, 3)
        }
    }

    fn labels(b: usize) -> Tensor {
        Tensor::from_vec(
            (0..b * 32 * 32 * 32)
                .map(|i| ((i / 7) % 3) as u32)
                .collect::<Vec<_>>(),
            (b, 32, 32, 32),
            &Device::Cpu,
        )
        .unwrap()
    }

    /// Names of the variables (buffers aside) without a non-zero gradient.
    fn without_gradient(vm: &VarMap, grads: &candle_core::backprop::GradStore) -> Vec<String> {
        let data = vm.data().lock().unwrap();
        let mut names: Vec<String> = data
            .iter()
            .filter(|(n, _)| !crate::seg::batch_norm::is_buffer(n))
            .filter(|(_, v)| {
                grads
                    .get(v.as_tensor())
                    .is_none_or(|g| f64s(g).iter().all(|&x| x == 0.0))
            })
            .map(|(n, _)| n.clone())
            .collect();
        names.sort();
        names
    }

    /// At initialisation the queries reach the deformable attention only
    /// through its zero-initialised offset and attention-logit layers, so
    /// the query norms get exactly zero gradient (as in PyTorch). Checks
    /// that, then gives those layers small weights (as after a step) and
    /// checks that every parameter learns.
    fn check_learning(vm: &VarMap, loss: impl Fn() -> Tensor) {
        let grads = loss().backward().unwrap();
        let mut want: Vec<String> = (0..INTERACTIONS)
            .map(|i| format!("interactions.{i}.injector.query_norm"))
            .chain((0..INTERACTIONS).map(|i| format!("interactions.{i}.extractor.query_norm")))
            .chain((0..2).map(|k| format!("interactions.3.extra_extractors.{k}.query_norm")))
            .flat_map(|p| [format!("{p}.bias"), format!("{p}.weight")])
            .collect();
        want.sort();
        assert_eq!(without_gradient(vm, &grads), want);
        {
            let data = vm.data().lock().unwrap();
            for (i, (name, var)) in data.iter().enumerate() {
                if name.ends_with("sampling_offsets.weight")
                    || name.ends_with("attention_weights.weight")
                {
                    let t = (tensor(var.dims(), 100 + i as u64, DType::F32) * 0.01).unwrap();
                    var.set(&t).unwrap();
                }
            }
        }
        assert_all_learn(vm, &loss().backward().unwrap());
    }

    #[test]
    fn shapes_names_and_every_parameter_learns() {
        let dev = Device::Cpu;
        let (vit, vit_vm) = ViT3d::with_varmap(vit_cfg(), &dev).unwrap();
        let vm = VarMap::new();
        let head = VitAdapterHead::new(
            head_cfg(2, 0.0),
            VarBuilder::from_varmap(&vm, DType::F32, &dev),
        )
        .unwrap();
        let x = tensor(&[1, 2, 32, 32, 32], 10, DType::F32);
        let logits = head.forward_t(&vit, &x, true).unwrap();
        assert_eq!(logits.dims(), &[1, 3, 32, 32, 32]);
        let loss = || dice_ce(&head.forward_t(&vit, &x, true).unwrap(), &labels(1)).unwrap();
        check_learning(&vm, loss);
        let grads = loss().backward().unwrap();
        {
            let data = vm.data().lock().unwrap();
            for (n, dims) in [
                ("level_embed", vec![3, 32]),
                ("spm.stem.0.weight", vec![4, 2, 3, 3, 3]),
                (
                    "interactions.0.injector.attn.sampling_offsets.weight",
                    vec![8 * 3 * 4 * 3, 32],
                ),
                ("interactions.1.injector.gamma", vec![32]),
                (
                    "interactions.2.extractor.attn.sampling_offsets.weight",
                    vec![8 * 4 * 3, 32],
                ),
                (
                    "interactions.3.extra_extractors.1.ffn.fc1.weight",
                    vec![8, 32],
                ),
                ("up.weight", vec![32, 32, 2, 2, 2]),
                ("merges.0.weight", vec![32, 64, 1, 1, 1]),
                ("norm4.running_var", vec![32]),
                ("encoder0.layer.conv1.conv.weight", vec![4, 2, 3, 3, 3]),
                ("encoder4.layer.conv1.conv.weight", vec![32, 32, 3, 3, 3]),
                ("decoder4.transp_conv.conv.weight", vec![32, 16, 2, 2, 2]),
                ("decoder1.conv_block.conv1.conv.weight", vec![4, 8, 3, 3, 3]),
                ("out.conv.conv.weight", vec![3, 4, 1, 1, 1]),
            ] {
                assert_eq!(data.get(n).map(|v| v.dims().to_vec()), Some(dims), "{n}");
            }
            assert!(!data.contains_key("interactions.2.extra_extractors.0.ffn.fc1.weight"));
        }
        // The backbone (not frozen here) is trained through the adapter too.
        let pe = vit_vm.data().lock().unwrap()["patch_embed.proj.weight"].clone();
        assert!(grads.get(pe.as_tensor()).is_some());
        // Wrong channel counts and sizes are refused.
        assert!(
            head.forward_t(&vit, &tensor(&[1, 1, 32, 32, 32], 1, DType::F32), false)
                .is_err()
        );
        assert!(
            head.forward_t(&vit, &tensor(&[1, 2, 32, 24, 32], 1, DType::F32), false)
                .is_err()
        );
    }

    #[test]
    fn frozen_backbone_gets_no_gradient_and_one_channel_works() {
        let dev = Device::Cpu;
        let (_, vit_vm) = ViT3d::with_varmap(vit_cfg(), &dev).unwrap();
        let vit = frozen_backbone(vit_cfg(), &vit_vm, &dev).unwrap();
        let vm = VarMap::new();
        let head = VitAdapterHead::new(
            head_cfg(1, 0.0),
            VarBuilder::from_varmap(&vm, DType::F32, &dev),
        )
        .unwrap();
        let x = tensor(&[2, 1, 32, 32, 32], 12, DType::F32);
        let logits = head.forward_t(&vit, &x, true).unwrap();
        assert_eq!(logits.dims(), &[2, 3, 32, 32, 32]);
        let loss = || dice_ce(&head.forward_t(&vit, &x, true).unwrap(), &labels(2)).unwrap();
        let grads = loss().backward().unwrap();
        for (name, var) in vit_vm.data().lock().unwrap().iter() {
            assert!(grads.get(var.as_tensor()).is_none(), "{name}");
        }
        check_learning(&vm, loss);
    }

    #[test]
    fn drop_path_only_in_training() {
        let dev = Device::Cpu;
        let (vit, _) = ViT3d::with_varmap(vit_cfg(), &dev).unwrap();
        let vm = VarMap::new();
        let head = VitAdapterHead::new(
            head_cfg(1, 0.5),
            VarBuilder::from_varmap(&vm, DType::F32, &dev),
        )
        .unwrap();
        let x = tensor(&[4, 1, 32, 32, 32], 13, DType::F32);
        let eval = f64s(&head.forward_t(&vit, &x, false).unwrap());
        assert_eq!(eval, f64s(&head.forward_t(&vit, &x, false).unwrap()));
        // Batch statistics are the same in both training passes, so any
        // difference comes from the drop-path masks.
        let a = f64s(&head.forward_t(&vit, &x, true).unwrap());
        let b = f64s(&head.forward_t(&vit, &x, true).unwrap());
        let diff = a
            .iter()
            .zip(&b)
            .map(|(p, q)| (p - q).abs())
            .fold(0.0, f64::max);
        assert!(diff > 1e-4, "training passes differ by {diff}");
    }
}
