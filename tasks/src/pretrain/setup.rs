//! From a compiled recipe to the model crate's configurations.

use dino3d_model::optim::{AdamWConfig, GroupRules};
use dino3d_model::schedule::ScheduleConfig;
use dino3d_model::ssl::{Centering, SslConfig};
use dino3d_model::{DinoHeadConfig, DropPathMode, ViT3dConfig};
use dino3d_pipeline::recipe::{Plan, ViewPlan, ViewRole};

use super::config::PretrainConfig;
use crate::error::{Context, Result, bail};

/// The side of the recipe's global crops (cubes, one size for every global
/// view: the recipe's checks hold it), which sets the learned position grid
/// (96/16 = 6³).
pub fn global_crop_size(plan: &Plan) -> Result<usize> {
    global_crop_size_of(&plan.views)
}

/// [`global_crop_size`] of compiled views.
pub fn global_crop_size_of(views: &[ViewPlan]) -> Result<usize> {
    let view = views
        .iter()
        .find(|v| v.role == ViewRole::Global)
        .context("pretraining needs `views` with at least one global view")?;
    match view.crop_size {
        Some([a, b, c]) if a == b && b == c => Ok(a),
        Some(s) => bail!(
            "view {}: global crops must be cubes, not {}x{}x{}",
            view.name,
            s[0],
            s[1],
            s[2]
        ),
        None => bail!(
            "view {}: the size of its crops is not known from the recipe (end it with a crop or resize to a fixed size)",
            view.name
        ),
    }
}

/// Global crops per sample (3DINO: 2).
pub fn global_crops_per_sample(plan: &Plan) -> usize {
    plan.views
        .iter()
        .filter(|v| v.role == ViewRole::Global)
        .map(|v| v.count)
        .sum()
}

/// The student/teacher configuration a recipe asks for.
pub fn ssl_config(t: &PretrainConfig, plan: &Plan) -> Result<SslConfig> {
    let crop = global_crop_size(plan)?;
    if crop % t.patch_size != 0 {
        bail!(
            "the global crop size {crop} is not a multiple of the patch size {}",
            t.patch_size
        );
    }
    let backbone = ViT3dConfig {
        patch_size: t.patch_size,
        pos_grid: crop / t.patch_size,
        drop_path_rate: t.drop_path_rate,
        drop_path_mode: DropPathMode::from_name(&t.drop_path_mode)
            .with_context(|| format!("model.drop_path_mode {:?}", t.drop_path_mode))?,
        layerscale_init: t.layerscale,
        ..ViT3dConfig::from_preset(&t.arch)?
    };
    let head = DinoHeadConfig {
        in_dim: backbone.embed_dim,
        hidden_dim: t.head_hidden_dim,
        bottleneck_dim: t.head_bottleneck_dim,
        n_prototypes: t.head_n_prototypes,
        n_layers: t.head_nlayers,
    };
    let rules = GroupRules {
        layerwise_decay: t.layerwise_decay,
        patch_embed_lr_mult: t.patch_embed_lr_mult,
        ..GroupRules::threedino(backbone.depth)
    };
    let centering = match t.centering.as_str() {
        // DINOv2's centre momentum.
        "centering" => Centering::Softmax { momentum: 0.9 },
        _ => Centering::SinkhornKnopp,
    };
    Ok(SslConfig {
        dino_head: head.clone(),
        ibot_head: head,
        centering,
        dino_weight: t.dino_loss_weight,
        ibot_weight: t.ibot_loss_weight,
        koleo_weight: t.koleo_loss_weight,
        clip_grad: t.clip_grad,
        rules,
        adamw: AdamWConfig {
            beta1: t.adamw_beta1,
            beta2: t.adamw_beta2,
            ..AdamWConfig::default()
        },
        ..SslConfig::threedino(backbone)
    })
}

/// The five schedules' settings; the global batch is the per-device batch
/// times `train.world_size` (3DINO's sqrt_wrt_1024 rule).
pub fn schedule_config(t: &PretrainConfig, batch_per_device: usize) -> ScheduleConfig {
    ScheduleConfig {
        epochs: t.epochs,
        epoch_len: t.epoch_length,
        base_lr: t.base_lr,
        global_batch: batch_per_device * t.world_size,
        min_lr: t.min_lr,
        warmup_epochs: t.warmup_epochs,
        weight_decay: t.weight_decay,
        weight_decay_end: t.weight_decay_end,
        momentum_teacher: t.momentum_teacher,
        final_momentum_teacher: t.final_momentum_teacher,
        warmup_teacher_temp: t.warmup_teacher_temp,
        teacher_temp: t.teacher_temp,
        warmup_teacher_temp_epochs: t.warmup_teacher_temp_epochs,
        freeze_last_layer_epochs: t.freeze_last_layer_epochs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Task;

    #[test]
    fn the_shipped_pretrain_recipe_maps_to_3dino_stage_1() {
        let recipe =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../recipes/pretrain.yaml");
        let (plan, task) = crate::compile_file(&recipe).unwrap();
        let Task::Pretrain(t) = task else {
            panic!("training sections")
        };
        let cfg = ssl_config(&t, &plan).unwrap();
        assert_eq!(
            cfg.backbone,
            ViT3dConfig {
                drop_path_rate: 0.3,
                ..ViT3dConfig::large()
            }
        );
        assert_eq!(cfg.dino_head, DinoHeadConfig::new(1024));
        assert_eq!(global_crops_per_sample(&plan), 2);
        // 128 per GPU on 4 GPUs: peak lr 0.002·√(512/1024).
        let s = schedule_config(&t, plan.batch.size);
        assert_eq!(s.global_batch, 512);
        assert!((s.peak_lr() - 1.414_213_56e-3).abs() < 1e-9);
        assert_eq!(s.total_iters(), 125_000);
    }

    #[test]
    fn the_highres_recipe_restarts_schedules_at_112() {
        let recipe =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../recipes/highres.yaml");
        let (plan, task) = crate::compile_file(&recipe).unwrap();
        let Task::Pretrain(t) = task else {
            panic!("training sections")
        };
        let cfg = ssl_config(&t, &plan).unwrap();
        assert_eq!(cfg.backbone.pos_grid, 7);
        let s = schedule_config(&t, plan.batch.size);
        // Spec §2.2, stage 2: 12,500 iterations, peak lr 5e-4, warmup 1,250.
        assert_eq!(s.total_iters(), 12_500);
        assert!((s.peak_lr() - 5e-4).abs() < 1e-12);
        assert_eq!(s.warmup_epochs * s.epoch_len, 1250);
        assert!(t.pretrained_weights.is_some());
    }
}
