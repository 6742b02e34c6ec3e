//! Running the backbone over a prepared image the three ways 3DINO's
//! visualisation can (3dino-reference.md §5), keeping what the maps need: the
//! last block's normed patch tokens and/or one block's \[CLS\]→patch
//! attention per head, on a token grid over the prepared image.
//!
//! * `full_image`: the whole image in one pass (the position embedding is
//!   interpolated to its grid).
//! * `resize`: the image resized to `size³` (area averaging, MONAI `Resize`'s
//!   default), so the grid is `(size/16)³` tokens spread over the image.
//! * `sliding_window`: windows of `size³` (smaller where the image is), with
//!   starts on the patch lattice: a stride of `size·(1 − overlap)` rounded down
//!   to whole patches, the last window flush with the end. Each window's
//!   tokens land on the image's token grid; where windows overlap, tokens
//!   (and attention values) are averaged. 3DINO uses overlap 0, where every
//!   token comes from exactly one window.

use dino3d_model::candle_core::{Device, Tensor};
use dino3d_model::{Activations, AttentionCapture, ForwardOptions, ViT3d};
use dino3d_pipeline::transforms::crop_foreground::crop;
use dino3d_pipeline::transforms::{Image, ResizeMode, resize};

use super::grid::TokenGrid;
use crate::backbone::model_input;
use crate::error::{Context, Result, bail};

/// How the image is fed to the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputType {
    /// The whole (cropped) image in one pass.
    FullImage,
    /// Resized to `--size`³ first.
    Resize,
    /// Windows of `--size`³, stitched at token resolution.
    SlidingWindow,
}

/// What to keep from the forward passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wanted {
    /// The last block's normed patch tokens.
    pub features: bool,
    /// \[CLS\]→patch attention of this 0-based block.
    pub attention_block: Option<usize>,
}

/// Per-token outputs over the prepared image.
#[derive(Debug, Clone)]
pub struct TokenMaps {
    /// The token grid.
    pub tokens: TokenGrid,
    /// Patch tokens `N × E` (token-major), empty unless wanted.
    pub features: Vec<f32>,
    /// Token width E.
    pub dim: usize,
    /// Attention `N × heads` (token-major), empty unless wanted.
    pub attention: Vec<f32>,
    /// Attention heads.
    pub heads: usize,
}

/// Windows per forward pass in `sliding_window` (3DINO's `sw_batch_size`).
const WINDOW_BATCH: usize = 4;
/// The largest attention matrix (all heads, f32) a `full_image` pass may make:
/// the backbone materialises it, so huge volumes must go by windows.
const ATTENTION_BYTES_MAX: u64 = 8 << 30;

/// Runs `vit` over `image` (single channel, sizes multiples of the patch).
///
/// # Errors
/// A bad `size`/`overlap`/block, or a model failure.
pub fn extract(
    vit: &ViT3d,
    image: &Image,
    input: InputType,
    size: usize,
    overlap: f64,
    wanted: Wanted,
    device: &Device,
) -> Result<TokenMaps> {
    let patch = vit.config().patch_size;
    if size == 0 || !size.is_multiple_of(patch) {
        bail!("--size {size} is not a positive multiple of the patch size {patch}");
    }
    if !(0.0..1.0).contains(&overlap) {
        bail!("--overlap {overlap} is not in [0, 1)");
    }
    if input != InputType::FullImage {
        // Checked in floating point: a huge --size overflows the integers.
        let tokens = 1.0 + ((size / patch) as f64).powi(3);
        let gib = vit.config().num_heads as f64 * tokens * tokens * 4.0 / (1u64 << 30) as f64;
        if gib > (ATTENTION_BYTES_MAX >> 30) as f64 {
            bail!(
                "--size {size}: a {size}³ window has {tokens} tokens and needs {gib:.1} GiB per attention matrix (at most {} GiB); pick a smaller --size",
                ATTENTION_BYTES_MAX >> 30
            );
        }
    }
    if let Some(b) = wanted.attention_block
        && b >= vit.depth()
    {
        bail!("--block {b}: the model has blocks 0..{}", vit.depth() - 1);
    }
    let extent = [image.shape[1], image.shape[2], image.shape[3]];
    match input {
        InputType::FullImage => {
            let grid = extent.map(|n| n / patch);
            let tokens = 1 + grid.iter().product::<usize>() as u64;
            let bytes = vit.config().num_heads as u64 * tokens * tokens * 4;
            if bytes > ATTENTION_BYTES_MAX {
                bail!(
                    "full_image: {tokens} tokens need {:.1} GiB per attention matrix; \
                     use --input-type sliding_window or resize",
                    bytes as f64 / (1u64 << 30) as f64
                );
            }
            let maps = forward_batch(vit, &[image], wanted, device)?;
            Ok(assemble(
                TokenGrid { grid, extent },
                maps.into_iter().next(),
            ))
        }
        InputType::Resize => {
            let resized = resize(image, [size; 3], ResizeMode::Area);
            let grid = [size / patch; 3];
            let maps = forward_batch(vit, &[&resized], wanted, device)?;
            Ok(assemble(
                TokenGrid { grid, extent },
                maps.into_iter().next(),
            ))
        }
        InputType::SlidingWindow => sliding_window(vit, image, size, overlap, wanted, device),
    }
}

/// One window's (or image's) outputs, token-major.
struct WindowMaps {
    features: Vec<f32>,
    dim: usize,
    attention: Vec<f32>,
    heads: usize,
}

fn assemble(tokens: TokenGrid, maps: Option<WindowMaps>) -> TokenMaps {
    let m = maps.expect("one image, one result");
    TokenMaps {
        tokens,
        features: m.features,
        dim: m.dim,
        attention: m.attention,
        heads: m.heads,
    }
}

/// Forward passes over same-sized images as one batch.
fn forward_batch(
    vit: &ViT3d,
    images: &[&Image],
    wanted: Wanted,
    device: &Device,
) -> Result<Vec<WindowMaps>> {
    let inputs = images
        .iter()
        .map(|img| model_input(&img.data, img.shape, device))
        .collect::<Result<Vec<_>>>()?;
    let x = Tensor::cat(&inputs, 0)?;
    let opts = ForwardOptions {
        attention: if wanted.attention_block.is_some() {
            AttentionCapture::ClsRow
        } else {
            AttentionCapture::None
        },
        // Inference: one block's intermediates alive at a time.
        activations: Activations::Discard,
        ..Default::default()
    };
    let out = vit
        .forward_with(&x, &opts)
        .context("running the backbone")?;
    let (b, n, e) = out.patch_norm.dims3()?;
    let features: Vec<f32> = if wanted.features {
        out.patch_norm.flatten_all()?.to_vec1()?
    } else {
        Vec::new()
    };
    let (attention, heads) = match wanted.attention_block {
        Some(block) => {
            // (B, heads, 1 + N) → drop [CLS]→[CLS] → (B, N, heads).
            let a = &out.attentions[block];
            let heads = a.dim(1)?;
            let a = a.narrow(2, 1, n)?.transpose(1, 2)?.contiguous()?;
            (a.flatten_all()?.to_vec1::<f32>()?, heads)
        }
        None => (Vec::new(), 0),
    };
    Ok((0..b)
        .map(|i| WindowMaps {
            features: if wanted.features {
                features[i * n * e..(i + 1) * n * e].to_vec()
            } else {
                Vec::new()
            },
            dim: e,
            attention: attention
                .get(i * n * heads..(i + 1) * n * heads)
                .unwrap_or_default()
                .to_vec(),
            heads,
        })
        .collect())
}

/// Window starts on one axis of `n` voxels: windows of `w`, stride `stride`,
/// the last one flush with the end.
pub fn window_starts(n: usize, w: usize, stride: usize) -> Vec<usize> {
    if n <= w {
        return vec![0];
    }
    let mut starts: Vec<usize> = (0..n - w).step_by(stride.max(1)).collect();
    starts.push(n - w);
    starts.dedup();
    starts
}

fn sliding_window(
    vit: &ViT3d,
    image: &Image,
    size: usize,
    overlap: f64,
    wanted: Wanted,
    device: &Device,
) -> Result<TokenMaps> {
    let patch = vit.config().patch_size;
    let extent = [image.shape[1], image.shape[2], image.shape[3]];
    let grid = extent.map(|n| n / patch);
    let tokens = TokenGrid { grid, extent };
    let win = extent.map(|n| n.min(size));
    let stride = ((size as f64 * (1.0 - overlap)) as usize / patch * patch).max(patch);
    let starts = [0, 1, 2].map(|a| window_starts(extent[a], win[a], stride));
    let mut boxes = Vec::new();
    for &sx in &starts[0] {
        for &sy in &starts[1] {
            for &sz in &starts[2] {
                boxes.push([sx, sy, sz]);
            }
        }
    }
    let mut features = Vec::new();
    let mut attention = Vec::new();
    let mut count = vec![0u32; tokens.len()];
    let (mut dim, mut heads) = (0, 0);
    let wgrid = win.map(|w| w / patch);
    for chunk in boxes.chunks(WINDOW_BATCH) {
        let crops: Vec<Image> = chunk
            .iter()
            .map(|s| crop(image, *s, [0, 1, 2].map(|a| s[a] + win[a])))
            .collect();
        let refs: Vec<&Image> = crops.iter().collect();
        for (start, maps) in chunk.iter().zip(forward_batch(vit, &refs, wanted, device)?) {
            if features.is_empty() && !maps.features.is_empty() {
                features = vec![0.0f32; tokens.len() * maps.dim];
            }
            if attention.is_empty() && !maps.attention.is_empty() {
                attention = vec![0.0f32; tokens.len() * maps.heads];
            }
            (dim, heads) = (maps.dim, maps.heads);
            let origin = start.map(|s| s / patch);
            for a in 0..wgrid[0] {
                for b in 0..wgrid[1] {
                    for c in 0..wgrid[2] {
                        let local = (a * wgrid[1] + b) * wgrid[2] + c;
                        let global =
                            ((origin[0] + a) * grid[1] + origin[1] + b) * grid[2] + origin[2] + c;
                        count[global] += 1;
                        add_row(&mut features, &maps.features, dim, global, local);
                        add_row(&mut attention, &maps.attention, heads, global, local);
                    }
                }
            }
        }
    }
    for (t, &n) in count.iter().enumerate() {
        let inv = 1.0 / n.max(1) as f32;
        features
            .get_mut(t * dim..(t + 1) * dim)
            .into_iter()
            .flatten()
            .for_each(|v| *v *= inv);
        attention
            .get_mut(t * heads..(t + 1) * heads)
            .into_iter()
            .flatten()
            .for_each(|v| *v *= inv);
    }
    Ok(TokenMaps {
        tokens,
        features,
        dim,
        attention,
        heads,
    })
}

/// `dst[global] += src[local]` for rows of `width` (no-op when `src` is empty).
fn add_row(dst: &mut [f32], src: &[f32], width: usize, global: usize, local: usize) {
    if src.is_empty() || width == 0 {
        return;
    }
    let d = &mut dst[global * width..(global + 1) * width];
    for (x, y) in d.iter_mut().zip(&src[local * width..(local + 1) * width]) {
        *x += y;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dino3d_model::ViT3dConfig;
    use dino3d_pipeline::nifti::affine::IDENTITY;

    #[test]
    fn window_starts_cover_the_axis_and_end_flush() {
        assert_eq!(window_starts(48, 96, 96), vec![0]);
        assert_eq!(window_starts(96, 96, 96), vec![0]);
        assert_eq!(window_starts(112, 96, 96), vec![0, 16]);
        assert_eq!(window_starts(192, 96, 96), vec![0, 96]);
        assert_eq!(window_starts(224, 96, 48), vec![0, 48, 96, 128]);
    }

    fn small_vit() -> ViT3d {
        let cfg = ViT3dConfig {
            embed_dim: 24,
            depth: 2,
            num_heads: 2,
            pos_grid: 2,
            ..ViT3dConfig::tiny()
        };
        ViT3d::with_varmap(cfg, &Device::Cpu).unwrap().0
    }

    fn noise_image(shape: [usize; 4]) -> Image {
        let n: usize = shape.iter().product();
        let mut s = 7u64;
        Image {
            data: (0..n)
                .map(|_| {
                    s ^= s << 13;
                    s ^= s >> 7;
                    s ^= s << 17;
                    (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
                })
                .collect(),
            shape,
            spacing: [1.0; 3],
            affine: IDENTITY,
        }
    }

    #[test]
    fn every_input_type_gives_maps_of_the_right_shape() {
        let vit = small_vit();
        let img = noise_image([1, 48, 32, 16]);
        let wanted = Wanted {
            features: true,
            attention_block: Some(1),
        };
        let dev = Device::Cpu;
        for (input, grid) in [
            (InputType::FullImage, [3, 2, 1]),
            (InputType::Resize, [2, 2, 2]),
            (InputType::SlidingWindow, [3, 2, 1]),
        ] {
            let m = extract(&vit, &img, input, 32, 0.0, wanted, &dev).unwrap();
            assert_eq!(m.tokens.grid, grid, "{input:?}");
            assert_eq!(m.tokens.extent, [48, 32, 16]);
            let n = m.tokens.len();
            assert_eq!((m.dim, m.heads), (24, 2));
            assert_eq!(m.features.len(), n * 24, "{input:?}");
            assert_eq!(m.attention.len(), n * 2, "{input:?}");
            // Each head's [CLS] row sums to 1 over [CLS] and one window's patches.
            assert!(m.attention.iter().all(|&a| (0.0..=1.0).contains(&a)));
        }
        assert!(extract(&vit, &img, InputType::Resize, 24, 0.0, wanted, &dev).is_err());
        // A window too large to attend over is refused before any allocation.
        for input in [InputType::Resize, InputType::SlidingWindow] {
            let err = extract(&vit, &img, input, 100_000, 0.0, wanted, &dev).unwrap_err();
            assert!(err.to_string().contains("pick a smaller --size"), "{err}");
        }
        let bad_block = Wanted {
            features: false,
            attention_block: Some(2),
        };
        assert!(extract(&vit, &img, InputType::FullImage, 32, 0.0, bad_block, &dev).is_err());
    }

    #[test]
    fn sliding_windows_match_separate_passes_and_average_overlaps() {
        let vit = small_vit();
        let dev = Device::Cpu;
        let img = noise_image([1, 48, 16, 16]);
        let wanted = Wanted {
            features: true,
            attention_block: None,
        };
        let sw = extract(&vit, &img, InputType::SlidingWindow, 32, 0.5, wanted, &dev).unwrap();
        // Windows x in [0, 32) and [16, 48): token 0 from the first, token 2 from
        // the second, token 1 the mean of both.
        let first = crop(&img, [0, 0, 0], [32, 16, 16]);
        let second = crop(&img, [16, 0, 0], [48, 16, 16]);
        let f = &forward_batch(&vit, &[&first], wanted, &dev).unwrap()[0].features;
        let s = &forward_batch(&vit, &[&second], wanted, &dev).unwrap()[0].features;
        let e = 24;
        for d in 0..e {
            assert!((sw.features[d] - f[d]).abs() < 1e-5);
            assert!((sw.features[e + d] - 0.5 * (f[e + d] + s[d])).abs() < 1e-5);
            assert!((sw.features[2 * e + d] - s[e + d]).abs() < 1e-5);
        }
    }
}
