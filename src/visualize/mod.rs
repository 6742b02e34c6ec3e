//! `dino-run visualize`: 3DINO's unsupervised pictures of what a backbone
//! sees in one volume (3dino-reference.md §5), as NIfTI maps, PNG montages
//! and an animated GIF.
//!
//! * `--vis-type pca`: PCA of the last block's normed patch tokens;
//!   component 0 separates the foreground, components 1–3 colour it.
//! * `--vis-type mhsa`: each head's \[CLS\]→patch attention of one block (the
//!   last by default; `--block 3` is the block 3DINO's code actually uses).
//!
//! Steps, computed by [`dino3d_tasks::visualize`]: 3DINO's preprocessing,
//! the backbone under `--input-type`, the PCA or the attention maps; drawn
//! here by [`nifti_out`] and [`figures`]. Maps are nearest-upsampled from the
//! token grid onto the *source* voxel grid and saved with the source's affine
//! (3DINO upsamples too, onto its cropped grid); outside the cropped box they
//! are 0.

mod colormap;
mod figures;
mod nifti_out;
mod render;
mod views;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::ValueEnum;
use dino3d_model::ViT3dConfig;
use dino3d_pipeline::VoxelData;
use dino3d_tasks::visualize::features::{self, TokenMaps, Wanted};
use dino3d_tasks::visualize::prepare::{self, Prepared};
use dino3d_tasks::visualize::{defaults, grid, pca};

use figures::Scene;

/// What to draw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum VisType {
    /// PCA of the patch tokens (foreground + RGB).
    Pca,
    /// Per-head [CLS]→patch attention.
    Mhsa,
}

/// How the image is fed to the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum InputType {
    /// The whole (cropped) image in one pass.
    #[value(name = "full_image", alias = "full-image")]
    FullImage,
    /// Resized to `--size`³ first.
    Resize,
    /// Windows of `--size`³, stitched at token resolution.
    #[value(name = "sliding_window", alias = "sliding-window")]
    SlidingWindow,
}

impl From<InputType> for features::InputType {
    fn from(t: InputType) -> Self {
        match t {
            InputType::FullImage => Self::FullImage,
            InputType::Resize => Self::Resize,
            InputType::SlidingWindow => Self::SlidingWindow,
        }
    }
}

impl From<features::InputType> for InputType {
    fn from(t: features::InputType) -> Self {
        match t {
            features::InputType::FullImage => Self::FullImage,
            features::InputType::Resize => Self::Resize,
            features::InputType::SlidingWindow => Self::SlidingWindow,
        }
    }
}

/// Arguments of `dino-run visualize`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct VisualizeArgs {
    /// Teacher weights: a dino3d `.safetensors` checkpoint or a 3DINO `.pth`
    /// (teacher checkpoint or bare backbone; read without executing pickled
    /// code).
    #[arg(long)]
    weights: PathBuf,
    /// Backbone preset: tiny, small, base, large (3DINO-ViT is large).
    #[arg(long, default_value = ViT3dConfig::THREEDINO_PRESET)]
    arch: String,
    /// The volume (.nii, .nii.gz, .hdr/.img, .mha, .mhd, .nrrd, .nhdr, a DICOM
    /// file, series folder or FOLDER#SERIES_UID).
    #[arg(long)]
    image: PathBuf,
    /// Output folder (created if missing).
    #[arg(long)]
    out: PathBuf,
    /// PCA of the patch tokens, or multi-head self-attention maps.
    #[arg(long, value_enum, default_value = "pca")]
    vis_type: VisType,
    /// How the image is fed to the model.
    #[arg(long, value_enum, default_value_t = InputType::from(defaults::INPUT_TYPE))]
    input_type: InputType,
    /// Cube side for `resize` and `sliding_window` (default: the checkpoint's
    /// training crop, position grid × patch size).
    #[arg(long)]
    size: Option<usize>,
    /// Window overlap for `sliding_window`, in [0, 1) (3DINO: 0).
    #[arg(long, default_value_t = defaults::OVERLAP)]
    overlap: f64,
    /// Block whose attention `mhsa` shows, 0-based (default: the last, as the
    /// paper describes; 3 is the block 3DINO's code actually takes).
    #[arg(long)]
    block: Option<usize>,
    /// PCA components to fit and save (3DINO: 10).
    #[arg(long, default_value_t = defaults::COMPONENTS)]
    components: usize,
    /// Foreground threshold on the jointly normalised component 0.
    #[arg(long, default_value_t = defaults::THRESHOLD)]
    threshold: f32,
    /// Frame (4th-axis index) of a 4-D volume.
    #[arg(long, default_value_t = defaults::FRAME)]
    frame: usize,
    /// Where the backbone runs: cpu, cuda or cuda:N (CUDA needs a build with
    /// `--features cuda`).
    #[arg(long, default_value = "cpu", value_name = "cpu|cuda:N")]
    device: String,
}

pub(crate) fn run(args: &VisualizeArgs) -> anyhow::Result<ExitCode> {
    if args.components == 0 {
        bail!("--components must be at least 1");
    }
    let device = crate::device::parse(&args.device)?;
    let vit = dino3d_tasks::backbone::load(&args.weights, &args.arch, &device)?;
    let cfg = vit.config();
    let size = args.size.unwrap_or(cfg.pos_grid * cfg.patch_size);
    let source = dino3d_pipeline::formats::read_volume(&args.image)
        .with_context(|| format!("reading {}", args.image.display()))?;
    let prep = prepare::prepare(&source, args.frame, cfg.patch_size)?;
    let wanted = match args.vis_type {
        VisType::Pca => Wanted {
            features: true,
            attention_block: None,
        },
        VisType::Mhsa => Wanted {
            features: false,
            attention_block: Some(args.block.unwrap_or(vit.depth() - 1)),
        },
    };
    let maps = features::extract(
        &vit,
        &prep.image,
        args.input_type.into(),
        size,
        args.overlap,
        wanted,
        &device,
    )?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let out = Outputs {
        dir: &args.out,
        source: &source,
        prep: &prep,
        maps: &maps,
    };
    let mut written = vec![out.image()?];
    match args.vis_type {
        VisType::Pca => written.extend(out.pca(args.components, args.threshold)?),
        VisType::Mhsa => written.extend(out.attention()?),
    }
    let [gx, gy, gz] = maps.tokens.grid;
    let name = |v: Option<clap::builder::PossibleValue>| v.map(|v| v.get_name().to_owned());
    println!(
        "{}: {} from {}, {gx}x{gy}x{gz} tokens -> {}",
        args.image.display(),
        name(args.vis_type.to_possible_value()).unwrap_or_default(),
        name(args.input_type.to_possible_value()).unwrap_or_default(),
        args.out.display()
    );
    for path in written {
        println!("  {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// Where and from what the outputs are written.
struct Outputs<'a> {
    dir: &'a Path,
    source: &'a dino3d_pipeline::Volume,
    prep: &'a Prepared,
    maps: &'a TokenMaps,
}

impl Outputs<'_> {
    fn scene(&self) -> Scene<'_> {
        Scene::new(&self.prep.image, &self.maps.tokens, &self.prep.placement)
    }

    /// Per-token values on the source grid.
    fn on_source<T: Copy>(&self, values: &[T], channels: usize, outside: T) -> Vec<T> {
        grid::to_source(
            values,
            channels,
            &self.maps.tokens,
            &self.prep.placement,
            outside,
        )
    }

    fn nifti(&self, name: &str, data: VoxelData, channels: usize) -> anyhow::Result<PathBuf> {
        let path = self.dir.join(name);
        nifti_out::write_like(&path, data, channels, self.source)?;
        Ok(path)
    }

    /// `image.nii.gz`: the preprocessed intensities the model saw, in [-1, 1]
    /// (-1 outside the cropped box).
    fn image(&self) -> anyhow::Result<PathBuf> {
        let data = grid::image_to_source(&self.prep.image, &self.prep.placement, -1.0);
        self.nifti("image.nii.gz", VoxelData::F32(data.into()), 1)
    }

    fn pca(&self, components: usize, threshold: f32) -> anyhow::Result<Vec<PathBuf>> {
        let n = self.maps.tokens.len();
        let mut fit = pca::fit(&self.maps.features, n, self.maps.dim, components)?;
        fit.orient(0, &self.maps.tokens.token_means(&self.prep.image));
        let pic = pca::picture(&fit, threshold);
        let mask: Vec<u8> = pic.foreground.iter().map(|&f| u8::from(f)).collect();
        let rgb_f: Vec<f32> = pic.rgb.iter().flatten().copied().collect();
        // `to_source` turns token-major values into NIfTI's channel-major volumes.
        let mut paths = vec![
            self.nifti(
                "pca.nii.gz",
                VoxelData::F32(self.on_source(&pic.normalised, fit.k, 0.0).into()),
                fit.k,
            )?,
            self.nifti(
                "pca_foreground.nii.gz",
                VoxelData::U8(self.on_source(&mask, 1, 0).into()),
                1,
            )?,
            self.nifti(
                "pca_rgb.nii.gz",
                VoxelData::F32(self.on_source(&rgb_f, 3, 1.0).into()),
                3,
            )?,
        ];
        let rgb: Vec<colormap::Rgb> = pic.rgb.iter().map(|&c| colormap::rgb(c)).collect();
        let scene = self.scene();
        let png = self.dir.join("pca.png");
        render::write_png(&png, &figures::pca_montage(&scene, &rgb))?;
        let gif = self.dir.join("pca.gif");
        render::write_gif(&gif, &figures::pca_frames(&scene, &rgb), 8)?;
        paths.extend([png, gif]);
        let total: f64 = fit.variances.iter().sum();
        tracing::info!(
            "PCA variances {:?} (sum {total:.4}), {} of {n} tokens foreground",
            fit.variances,
            pic.foreground.iter().filter(|&&f| f).count()
        );
        Ok(paths)
    }

    fn attention(&self) -> anyhow::Result<Vec<PathBuf>> {
        let heads = self.maps.heads;
        let mut paths = vec![self.nifti(
            "attention.nii.gz",
            VoxelData::F32(self.on_source(&self.maps.attention, heads, 0.0).into()),
            heads,
        )?];
        let heat = figures::heat_colours(&self.maps.attention, heads);
        let scene = self.scene();
        for h in 0..heads {
            let png = self.dir.join(format!("attention_head{h:02}.png"));
            render::write_png(&png, &figures::head_montage(&scene, &heat, heads, h))?;
            paths.push(png);
        }
        let gif = self.dir.join("attention.gif");
        render::write_gif(&gif, &figures::heads_frames(&scene, &heat, heads), 8)?;
        paths.push(gif);
        Ok(paths)
    }
}
