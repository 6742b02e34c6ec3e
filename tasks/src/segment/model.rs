//! The finetuned network: the backbone, one of 3DINO's segmentation heads,
//! what it predicts (classes or BraTS's overlapping regions) and how a
//! prediction is scored.

use std::path::Path;

use dino3d_model::candle_core::{DType, Device, Tensor};
use dino3d_model::candle_nn::VarMap;
use dino3d_model::infer::{
    DiceOptions, SlidingWindow, dice_labels, dice_masks, hd95, hd95_per_class, sigmoid_masks,
};
use dino3d_model::init::seeded_var_builder;
use dino3d_model::seg::adapter::frozen_backbone;
use dino3d_model::seg::{
    LinearDecoderHead, LinearHeadConfig, UnetrConfig, UnetrHead, VitAdapterConfig, VitAdapterHead,
    brats_regions_tensor, dice_ce, last_levels, sigmoid_dice, unetr_levels, vit_levels,
    vit_levels_frozen,
};
use dino3d_model::{ViT3d, ViT3dConfig};
use dino3d_pipeline::recipe::Plan;

use super::config::SegmentConfig;
use super::data::SegCase;
use crate::error::Result;
use crate::progress::Progress;

/// What the head predicts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Target {
    /// One class per voxel (softmax, DiceCE).
    Classes(usize),
    /// BraTS's overlapping TC / WT / ET regions from labels 1, 2, 3 (sigmoid
    /// per channel, squared-prediction Dice).
    BratsRegions,
}

impl Target {
    /// Output channels.
    pub(crate) fn channels(self) -> usize {
        match self {
            Target::Classes(k) => k,
            Target::BratsRegions => 3,
        }
    }

    /// The training loss of logits `(n, K, r, r, r)` against labels `(n, r³)`.
    pub(crate) fn loss(self, logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Target::Classes(_) => dice_ce(logits, labels)?,
            Target::BratsRegions => {
                let regions = brats_regions_tensor(labels, DType::F32)?.reshape(logits.shape())?;
                sigmoid_dice(logits, &regions)?
            }
        })
    }
}

/// BraTS regions of a label map as three channel-first masks (TC, WT, ET).
pub(crate) fn brats_masks(labels: &[u16]) -> Vec<bool> {
    const REGIONS: [&[u16]; 3] = [&[1, 3], &[1, 2, 3], &[3]];
    REGIONS
        .iter()
        .flat_map(|set| labels.iter().map(move |l| set.contains(l)))
        .collect()
}

/// Region masks back to BraTS labels: 3 where ET, else 1 where TC, else 2
/// where WT (the inverse of [`brats_masks`] on consistent masks).
pub(crate) fn brats_labels(masks: &[bool]) -> Vec<u16> {
    let n = masks.len() / 3;
    let (tc, wt, et) = (&masks[..n], &masks[n..2 * n], &masks[2 * n..]);
    (0..n)
        .map(|i| match (tc[i], wt[i], et[i]) {
            (_, _, true) => 3,
            (true, _, false) => 1,
            (false, true, false) => 2,
            _ => 0,
        })
        .collect()
}

/// A case's prediction.
pub(crate) enum Prediction {
    /// Class per voxel.
    Labels(Vec<u16>),
    /// Channel-first binary masks (one per region).
    Regions(Vec<bool>),
}

/// One case scored: Dice and HD95 per class (or region), and the label map
/// written as the prediction.
pub(crate) struct Scored {
    pub(crate) dice: Vec<f64>,
    pub(crate) hd95_mm: Vec<f64>,
    pub(crate) labels: Vec<u16>,
}

pub(crate) fn score(pred: Prediction, case: &SegCase, target: Target, with_hd95: bool) -> Scored {
    let spatial = [case.shape[1], case.shape[2], case.shape[3]];
    match (pred, target) {
        (Prediction::Labels(p), Target::Classes(k)) => Scored {
            dice: dice_labels(&p, &case.labels, k, DiceOptions::default()),
            hd95_mm: if with_hd95 {
                hd95_per_class(&p, &case.labels, k, true, spatial, case.spacing)
            } else {
                Vec::new()
            },
            labels: p,
        },
        (Prediction::Regions(p), _) => {
            let truth = brats_masks(&case.labels);
            let n = case.labels.len();
            let hd95_mm = if with_hd95 {
                (0..3)
                    .map(|r| {
                        let at = r * n..(r + 1) * n;
                        hd95(&p[at.clone()], &truth[at], spatial, case.spacing)
                    })
                    .collect()
            } else {
                Vec::new()
            };
            Scored {
                dice: dice_masks(&p, &truth, 3, DiceOptions::default()),
                hd95_mm,
                labels: brats_labels(&p),
            }
        }
        (Prediction::Labels(_), Target::BratsRegions) => {
            unreachable!("region targets predict masks")
        }
    }
}

/// A segmentation head.
pub(crate) enum Head {
    /// UNETR (features of four evenly spaced blocks and the raw input).
    Unetr(Box<UnetrHead>),
    /// 3DINO's linear decoder (the last four blocks, batch norm, 1³ conv).
    Linear(LinearDecoderHead),
    /// ViT-Adapter + UNETR: runs the backbone's blocks itself, between its
    /// injectors and extractors.
    Adapter(Box<VitAdapterHead>),
}

/// The backbone and head being finetuned.
pub(crate) struct Model {
    pub(crate) backbone: ViT3d,
    pub(crate) head: Head,
    pub(crate) head_vars: VarMap,
    pub(crate) train_backbone: bool,
    pub(crate) target: Target,
}

impl Model {
    /// Logits `(n, K, r, r, r)` for `x (n, C, r, r, r)`; `train` picks batch
    /// statistics in the linear head's batch norm.
    pub(crate) fn logits_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let depth = self.backbone.depth();
        let indices = match &self.head {
            Head::Unetr(_) => unetr_levels(depth),
            Head::Linear(_) => last_levels(depth),
            // Gradients reach the injectors through the blocks, so the
            // backbone's activations cannot be detached; a frozen backbone is
            // a copy with detached weights instead (see `build_model`).
            Head::Adapter(h) => return Ok(h.forward_t(&self.backbone, x, train)?),
        };
        let levels = if self.train_backbone {
            vit_levels(&self.backbone, x, &indices)?
        } else {
            // Detached, one block's activations alive at a time.
            vit_levels_frozen(&self.backbone, x, &indices)?
        };
        Ok(match &self.head {
            Head::Unetr(h) => h.forward(x, &levels)?,
            Head::Adapter(_) => unreachable!("returned above"),
            Head::Linear(h) => {
                let (n, _, sx, sy, sz) = x.dims5()?;
                h.forward_t(&levels, n, [sx, sy, sz], train)?
            }
        })
    }

    /// Inference logits.
    pub(crate) fn logits(&self, x: &Tensor) -> Result<Tensor> {
        self.logits_t(x, false)
    }

    /// A case's prediction by sliding window: a label map `(X, Y, Z)`, or
    /// region masks `(3, X, Y, Z)`.
    pub(crate) fn predict(&self, case: &SegCase, sw: &SlidingWindow) -> Result<Prediction> {
        let [c, x, y, z] = case.shape;
        let input = Tensor::from_slice(&case.image, (1, c, x, y, z), self.backbone.device())?;
        let logits = sw.run(&input, |w| {
            self.logits(w)
                .map(|t| t.detach())
                .map_err(|e| dino3d_model::ModelError::Input(format!("{e:#}")))
        })?;
        if self.target == Target::BratsRegions {
            let values: Vec<f32> = logits.flatten_all()?.to_vec1()?;
            return Ok(Prediction::Regions(sigmoid_masks(&values)));
        }
        let labels: Vec<u32> = logits.argmax(1)?.flatten_all()?.to_vec1()?;
        Ok(Prediction::Labels(
            labels.into_iter().map(|l| l as u16).collect(),
        ))
    }
}

/// The backbone (pretrained, or seeded random) and a seeded head; returns the
/// backbone's trainable variables too.
pub(crate) fn build_model(
    plan: &Plan,
    s: &SegmentConfig,
    base: &Path,
    in_channels: usize,
    target: Target,
    device: &Device,
    progress: &dyn Progress,
) -> Result<(Model, Vec<dino3d_model::candle_core::Var>)> {
    let classes = target.channels();
    let (backbone, backbone_vars) = if s.pretrained_weights == "random" {
        let cfg = ViT3dConfig::from_preset(&s.arch)?.with_img_size(s.image_size);
        let vm = VarMap::new();
        let vb = seeded_var_builder(&vm, plan.seed, DType::F32, device);
        (ViT3d::new(cfg, vb.pp("backbone"))?, vm)
    } else {
        let given = base.join(&s.pretrained_weights);
        let file = if given.is_dir() {
            crate::backbone::newest_weights(&given)?
        } else {
            given
        };
        progress.note(&format!("backbone: {}", file.display()));
        crate::backbone::load_with_varmap(&file, &s.arch, device)?
    };
    // The adapter runs the backbone's blocks between its own layers, so a
    // frozen backbone there is a copy built from detached weights (no
    // gradient, and no backward work, for the ViT's variables).
    let backbone = if s.head == "vit_adapter" && !s.train_feature_model {
        let unprefixed = VarMap::new();
        {
            let from = backbone_vars.data().lock().expect("backbone variables");
            let mut to = unprefixed.data().lock().expect("backbone variables");
            for (name, var) in from.iter() {
                let name = name.strip_prefix("backbone.").unwrap_or(name);
                to.insert(name.to_string(), var.clone());
            }
        }
        frozen_backbone(backbone.config().clone(), &unprefixed, device)?
    } else {
        backbone
    };
    let head_vars = VarMap::new();
    let vb = seeded_var_builder(&head_vars, plan.seed ^ 0x5e9, DType::F32, device).pp("head");
    let embed_dim = backbone.config().embed_dim;
    let head = match s.head.as_str() {
        "linear" => Head::Linear(LinearDecoderHead::new(
            LinearHeadConfig {
                in_channels,
                embed_dim,
                patch_size: backbone.config().patch_size,
                classes,
            },
            vb,
        )?),
        "vit_adapter" => Head::Adapter(Box::new(VitAdapterHead::new(
            VitAdapterConfig {
                feature_size: s.feature_size,
                ..VitAdapterConfig::for_vit(backbone.config(), in_channels, classes)
            },
            vb,
        )?)),
        _ => Head::Unetr(Box::new(UnetrHead::new(
            UnetrConfig {
                in_channels,
                embed_dim,
                feature_size: s.feature_size,
                classes,
            },
            vb,
        )?)),
    };
    Ok((
        Model {
            backbone,
            head,
            head_vars,
            train_backbone: s.train_feature_model,
            target,
        },
        backbone_vars.all_vars(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn brats_regions_round_trip_and_score_per_region() {
        // Labels 0..3 → TC {1,3}, WT {1,2,3}, ET {3}, channel first.
        let labels = [0u16, 1, 2, 3];
        let masks = brats_masks(&labels);
        assert_eq!(
            masks,
            [
                false, true, false, true, // TC
                false, true, true, true, // WT
                false, false, false, true, // ET
            ]
        );
        assert_eq!(brats_labels(&masks), labels);
        // Score a prediction against a 2×2×1 case: the truth has every label
        // once; the prediction misses the necrosis (1 → 0).
        let case = SegCase {
            name: "c".into(),
            image: vec![0.0; 4],
            labels: labels.to_vec(),
            shape: [1, 2, 2, 1],
            spacing: [1.0; 3],
            affine: dino3d_pipeline::nifti::affine::IDENTITY,
        };
        let pred = brats_masks(&[0, 0, 2, 3]);
        let scored = score(Prediction::Regions(pred), &case, Target::BratsRegions, true);
        // TC: truth {1,3}, pred {3} → 2·1/(1+2); WT: truth {1,2,3}, pred {2,3}
        // → 2·2/(2+3); ET: exact.
        let expect = [2.0 / 3.0, 4.0 / 5.0, 1.0];
        for (d, e) in scored.dice.iter().zip(expect) {
            assert!((d - e).abs() < 1e-12, "{:?}", scored.dice);
        }
        assert_eq!(scored.hd95_mm.len(), 3);
        assert_eq!(scored.hd95_mm[2], 0.0, "identical ET masks");
        assert_eq!(scored.labels, [0, 0, 2, 3]);
    }

    #[test]
    fn the_region_loss_trains_sigmoid_channels_against_brats_regions() {
        // Logits strongly agreeing with the regions give a loss near 0,
        // the opposite ones near 1.
        let labels = Tensor::new(&[[0u32, 1, 2, 3, 3, 0, 2, 1]], &Device::Cpu).unwrap();
        let masks = brats_masks(&[0, 1, 2, 3, 3, 0, 2, 1]);
        let logits: Vec<f32> = masks
            .iter()
            .map(|&m| if m { 20.0 } else { -20.0 })
            .collect();
        let good = Tensor::from_vec(logits.clone(), (1, 3, 2, 2, 2), &Device::Cpu).unwrap();
        let bad = good.neg().unwrap();
        let loss = |l: &Tensor| {
            Target::BratsRegions
                .loss(l, &labels)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        assert!(loss(&good) < 1e-4, "{}", loss(&good));
        assert!(loss(&bad) > 0.99, "{}", loss(&bad));
        assert_eq!(Target::BratsRegions.channels(), 3);
        assert_eq!(Target::Classes(5).channels(), 5);
    }
}
