//! Probe datasets from the bundled atlases: a T1 volume prepared as in
//! pretraining (3DINO's percentile scaling, foreground crop), resized to the
//! voxel size the model trained at, with per-voxel labels on the same grid.

use std::path::Path;

use dino3d_pipeline::formats::read_volume;
use dino3d_pipeline::transforms::crop_foreground::{crop, foreground_box};
use dino3d_pipeline::transforms::{
    Image, ResizeMode, ScaleIntensityRangePercentiles, resize, scale_intensity_range_percentiles,
};

use crate::error::{Context, Result, ensure};

/// A prepared volume and its voxel labels (`None`: not used by the probe).
pub struct LabelledVolume {
    /// Channel-first, x-fastest, values in [-1, 1].
    pub image: Image,
    /// One label per voxel of `image`.
    pub labels: Vec<Option<u16>>,
    /// Class names by label.
    pub classes: Vec<String>,
}

fn read_image(path: &Path) -> Result<Image> {
    let v = read_volume(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(Image::from_volume(&v))
}

/// Scales like the pretraining prefix and crops the foreground box; returns
/// the box so label maps can follow.
fn prepare(mut img: Image) -> (Image, [usize; 3], [usize; 3]) {
    scale_intensity_range_percentiles(&mut img, &ScaleIntensityRangePercentiles::THREEDINO);
    let dims = [img.shape[1], img.shape[2], img.shape[3]];
    let (lo, hi) = foreground_box(&img, -1.0).unwrap_or(([0; 3], dims));
    (crop(&img, lo, hi), lo, hi)
}

/// Output grid for voxels of `mm` millimetres.
fn grid_for(img: &Image, mm: f64) -> [usize; 3] {
    std::array::from_fn(|a| {
        ((img.shape[a + 1] as f64 * img.spacing[a] / mm).round() as usize).max(1)
    })
}

/// MNI152 2009a T1 with its grey- and white-matter probability maps: each
/// voxel labelled by its most probable class of {other, grey, white}.
pub fn mni_tissue(data: &Path, mm: f64) -> Result<LabelledVolume> {
    let dir = data.join("volumes/mni152_2009a_nilearn");
    let t1 = read_image(&dir.join("mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"))?;
    let gm = read_image(&dir.join("mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz"))?;
    let wm = read_image(&dir.join("mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz"))?;
    let (img, lo, hi) = prepare(t1);
    let size = grid_for(&img, mm);
    let image = resize(&img, size, ResizeMode::Trilinear);
    let gm = resize(&crop(&gm, lo, hi), size, ResizeMode::Trilinear);
    let wm = resize(&crop(&wm, lo, hi), size, ResizeMode::Trilinear);
    let labels = gm
        .data
        .iter()
        .zip(&wm.data)
        .map(|(&g, &w)| {
            let other = 1.0 - g - w;
            Some(if g >= w && g >= other {
                1
            } else if w >= g && w >= other {
                2
            } else {
                0
            })
        })
        .collect();
    Ok(LabelledVolume {
        image,
        labels,
        classes: vec!["other".into(), "grey matter".into(), "white matter".into()],
    })
}

/// Colin27 T1 with its Brodmann-area map (label 0 = no area, left out).
pub fn colin_brodmann(data: &Path, mm: f64) -> Result<LabelledVolume> {
    let dir = data.join("volumes/colin27_mricron");
    let t1 = read_image(&dir.join("ch2.nii.gz"))?;
    let ba = read_image(&dir.join("brodmann.nii.gz"))?;
    ensure!(
        ba.shape == t1.shape,
        "brodmann.nii.gz {:?} and ch2.nii.gz {:?} are on different grids",
        ba.shape,
        t1.shape
    );
    let (img, lo, hi) = prepare(t1);
    let size = grid_for(&img, mm);
    let image = resize(&img, size, ResizeMode::Trilinear);
    let ba = resize(&crop(&ba, lo, hi), size, ResizeMode::Nearest);
    let max = ba.data.iter().fold(0f32, |m, &v| m.max(v)) as usize;
    let labels = ba
        .data
        .iter()
        .map(|&v| (v >= 0.5).then_some(v.round() as u16))
        .collect();
    Ok(LabelledVolume {
        image,
        labels,
        classes: (0..=max).map(|i| format!("BA{i}")).collect(),
    })
}
