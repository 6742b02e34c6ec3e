//! `dino-run embed`: normed [CLS] and patch tokens of one volume from a
//! 3DINO / dino3d backbone (computed by [`dino3d_tasks::embed`]), written as
//! safetensors (`cls` [E], `patch` [N, E]); or, with `--manifest`, of every
//! entry of a manifest as a Parquet table (see `embed_table`).

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use dino3d_model::ViT3dConfig;
use dino3d_model::checkpoint::save_tensors;
use dino3d_tasks::embed::{Prep, model_input_for};

/// Arguments of `dino-run embed`.
#[derive(Debug, clap::Args)]
pub(crate) struct EmbedArgs {
    /// Weights: a 3DINO `.pth` (teacher checkpoint or bare backbone; read
    /// without executing pickled code) or a dino3d `.safetensors`.
    #[arg(long, required_unless_present = "random_init")]
    weights: Option<PathBuf>,
    /// Instead of --weights: the preset's random initialisation from this
    /// seed, for measuring throughput before any weights exist (the
    /// features mean nothing).
    #[arg(long, value_name = "SEED", conflicts_with = "weights")]
    random_init: Option<u64>,
    /// Backbone preset: tiny, small, base, large (3DINO-ViT is large).
    #[arg(long, default_value = ViT3dConfig::THREEDINO_PRESET)]
    arch: String,
    /// The volume (.nii, .nii.gz, .hdr/.img, .mha, .mhd, .nrrd, .nhdr, a DICOM
    /// file, series folder or FOLDER#SERIES_UID).
    #[arg(
        long,
        required_unless_present = "manifest",
        conflicts_with = "manifest"
    )]
    image: Option<PathBuf>,
    /// Embed every entry of this manifest (JSON list or Parquet) into a
    /// Parquet table (`--out FILE.parquet`): the manifest's columns, `cls`,
    /// `patch_mean`, `grid` and, with `--patch-grid`, `patch_tokens`.
    /// Unreadable volumes are reported and skipped. Under a launcher
    /// (torchrun, srun, `dino-run launch`) each rank writes its share as a
    /// part of the folder `--out`, and the last to finish `_SUCCESS`.
    #[arg(long)]
    manifest: Option<PathBuf>,
    /// With --manifest: also store every patch token.
    #[arg(long, requires = "manifest")]
    patch_grid: bool,
    /// With --manifest: volumes per Parquet row group (read in parallel,
    /// then written; bounds the memory).
    #[arg(long, default_value_t = 64, requires = "manifest")]
    row_group: usize,
    /// Feed the stored voxels as float32, without preprocessing. Spatial sizes
    /// must be multiples of the patch size. Without it, 3DINO's evaluation
    /// preprocessing applies: percentiles 0.05/99.95 to [-1, 1], then the
    /// foreground box grown to multiples of the patch size (zero outside).
    #[arg(long)]
    raw: bool,
    /// Output safetensors file (--image) or Parquet file (--manifest).
    #[arg(long)]
    out: PathBuf,
    /// Where the backbone runs: cpu, cuda or cuda:N (CUDA needs a build with
    /// `--features cuda`).
    #[arg(long, default_value = "cpu", value_name = "cpu|cuda:N")]
    device: String,
}

pub(crate) fn run(args: &EmbedArgs) -> anyhow::Result<ExitCode> {
    let device = crate::device::parse(&args.device)?;
    let vit = match (&args.weights, args.random_init) {
        (Some(weights), _) => dino3d_tasks::backbone::load(weights, &args.arch, &device)?,
        (None, Some(seed)) => {
            eprintln!(
                "embed: a randomly initialised {} backbone (seed {seed}): for throughput only, \
                 the features mean nothing",
                args.arch
            );
            let cfg = ViT3dConfig::from_preset(&args.arch)?;
            dino3d_tasks::backbone::random_backbone(&cfg, seed, &device)?
        }
        (None, None) => anyhow::bail!("--weights or --random-init"),
    };
    if let Some(manifest) = &args.manifest {
        return crate::embed_table::run(
            &vit,
            &crate::embed_table::TableOptions {
                manifest,
                out: &args.out,
                prep: if args.raw { Prep::Raw } else { Prep::Eval },
                patch_grid: args.patch_grid,
                row_group: args.row_group,
            },
        );
    }
    let image = args.image.as_ref().context("--image or --manifest")?;
    let volume = dino3d_pipeline::formats::read_volume(image)
        .with_context(|| format!("reading {}", image.display()))?;
    let x = model_input_for(&vit, &volume, args.raw)
        .with_context(|| format!("preparing {}", image.display()))?;
    let out = vit.infer(&x)?;
    let tensors = HashMap::from([
        ("cls".to_string(), out.cls_norm.squeeze(0)?),
        ("patch".to_string(), out.patch_norm.squeeze(0)?),
    ]);
    save_tensors(&tensors, &args.out)?;
    let [gx, gy, gz] = out.grid;
    println!(
        "{}: cls [{}], patch [{}, {}] (grid {gx}x{gy}x{gz}) -> {}",
        image.display(),
        out.cls_norm.dim(1)?,
        out.patch_norm.dim(1)?,
        out.patch_norm.dim(2)?,
        args.out.display()
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use dino3d_model::candle_core::Device;

    use super::*;
    use dino3d_pipeline::{Volume, VolumeMeta, VoxelData};

    /// A ramp volume (`i % modulo / modulo`) of `shape`, its voxels, and
    /// the NIfTI file it was written to in `dir`.
    fn ramp_volume(
        dir: &std::path::Path,
        shape: [usize; 4],
        modulo: usize,
    ) -> (Volume, Vec<f32>, PathBuf) {
        let n = shape.iter().product::<usize>();
        let voxels: Vec<f32> = (0..n)
            .map(|i| (i % modulo) as f32 / modulo as f32)
            .collect();
        let vol = Volume {
            data: VoxelData::F32(voxels.clone().into()),
            shape,
            spacing: [1.0; 3],
            affine: dino3d_pipeline::nifti::affine::IDENTITY,
            scaling: None,
            meta: VolumeMeta::default(),
        };
        let image = dir.join("v.nii");
        dino3d_pipeline::nifti::write_volume(&image, &vol, &Default::default()).unwrap();
        (vol, voxels, image)
    }

    #[test]
    fn raw_embed_writes_cls_and_patch_like_a_direct_forward() {
        use dino3d_model::checkpoint::load_tensors;

        let dir = tempfile::tempdir().unwrap();
        let dev = Device::Cpu;
        // A random tiny backbone saved under a `backbone.` prefix.
        let weights = dir.path().join("w.safetensors");
        let vit = dino3d_tasks::backbone::testutil::save_random_tiny(&weights);
        // A 16 × 16 × 32 ramp volume (2 tokens at patch 16).
        let shape = [1, 16, 16, 32];
        let (vol, voxels, image) = ramp_volume(dir.path(), shape, 97);
        let out = dir.path().join("e.safetensors");
        let args = EmbedArgs {
            weights: Some(weights),
            random_init: None,
            arch: "tiny".into(),
            image: Some(image),
            manifest: None,
            patch_grid: false,
            row_group: 64,
            raw: true,
            out: out.clone(),
            device: "cpu".into(),
        };
        run(&args).unwrap();
        let got = load_tensors(&out, &dev).unwrap();
        assert_eq!(got["cls"].dims(), &[192]);
        assert_eq!(got["patch"].dims(), &[2, 192]);
        let want = vit
            .forward(&dino3d_tasks::backbone::model_input(&voxels, shape, &dev).unwrap())
            .unwrap();
        let diff = (&got["patch"] - want.patch_norm.squeeze(0).unwrap())
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-5, "{diff}");
        // Without --raw: the evaluation preprocessing, then the same forward.
        run(&EmbedArgs { raw: false, ..args }).unwrap();
        let got = load_tensors(&out, &dev).unwrap();
        let prepared = dino3d_tasks::visualize::prepare::prepare(&vol, 0, 16).unwrap();
        let want = vit
            .forward(
                &dino3d_tasks::backbone::model_input(
                    &prepared.image.data,
                    prepared.image.shape,
                    &dev,
                )
                .unwrap(),
            )
            .unwrap();
        assert_eq!(
            got["patch"].dims(),
            want.patch_norm.squeeze(0).unwrap().dims()
        );
        let diff = (&got["cls"] - want.cls_norm.squeeze(0).unwrap())
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-5, "{diff}");
    }

    #[test]
    fn random_init_embeds_with_the_seeded_initialisation() {
        use dino3d_model::checkpoint::load_tensors;

        let dir = tempfile::tempdir().unwrap();
        let dev = Device::Cpu;
        let shape = [1, 16, 32, 16];
        let (_, voxels, image) = ramp_volume(dir.path(), shape, 89);
        let embed = |seed: u64, name: &str| {
            let out = dir.path().join(name);
            run(&EmbedArgs {
                weights: None,
                random_init: Some(seed),
                arch: "tiny".into(),
                image: Some(image.clone()),
                manifest: None,
                patch_grid: false,
                row_group: 64,
                raw: true,
                out: out.clone(),
                device: "cpu".into(),
            })
            .unwrap();
            load_tensors(&out, &dev).unwrap()
        };
        let (a, b, c) = (embed(7, "a"), embed(7, "b"), embed(8, "c"));
        // The same as the tasks' random backbone of that seed, forwarded.
        let cfg = ViT3dConfig::from_preset("tiny").unwrap();
        let vit = dino3d_tasks::backbone::random_backbone(&cfg, 7, &dev).unwrap();
        let want = vit
            .forward(&dino3d_tasks::backbone::model_input(&voxels, shape, &dev).unwrap())
            .unwrap();
        let max_diff = |x: &dino3d_model::candle_core::Tensor,
                        y: &dino3d_model::candle_core::Tensor| {
            (x - y)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        assert_eq!(a["patch"].dims(), &[2, 192]);
        assert!(max_diff(&a["cls"], &want.cls_norm.squeeze(0).unwrap()) < 1e-5);
        assert_eq!(max_diff(&a["cls"], &b["cls"]), 0.0, "one seed, one result");
        assert!(
            max_diff(&a["cls"], &c["cls"]) > 1e-3,
            "another seed, another backbone"
        );
    }
}
