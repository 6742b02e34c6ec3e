//! 3DINO's visualisation preprocessing (3dino-reference.md §5): one frame,
//! NaN to mean, percentiles 0.05 / 99.95 to [-1, 1] (clipped), then
//! `CropForeground(> -1, k_divisible = patch)` whose box may leave the image,
//! the outside filled with 0 as MONAI does. Unlike pretraining there is no
//! in-plane permutation, so the prepared axes are the file's axes.

use dino3d_pipeline::Volume;
use dino3d_pipeline::transforms::percentiles::{ScaleIntensityRangePercentiles, percentiles_f32};
use dino3d_pipeline::transforms::{Image, crop_foreground_divisible, nan_to_mean};
use dino3d_pipeline::transforms::{scale_intensity_range, scale_intensity_range_percentiles};

use super::grid::Placement;
use crate::error::{Context, Result, TaskError, bail};

/// The volume as the model sees it, and where it sits in the source.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// Single-channel image in [-1, 1] (0 where the box left the source),
    /// each spatial size a multiple of the patch size.
    pub image: Image,
    /// Where `image` lies in the source's voxels.
    pub placement: Placement,
}

/// Preprocesses frame `frame` of `vol` for a model with cubic patches of `patch`.
///
/// # Errors
/// A frame past the volume's channels, or an image with no voxel above its
/// lower percentile (nothing to crop to).
pub fn prepare(vol: &Volume, frame: usize, patch: usize) -> Result<Prepared> {
    let [c, x, y, z] = vol.shape;
    if frame >= c {
        bail!("--frame {frame}: the volume has {c} frame(s)");
    }
    let mut img = Image {
        data: vol.to_f32_channel(frame),
        shape: [1, x, y, z],
        spacing: vol.spacing,
        affine: vol.affine,
    };
    let p = ScaleIntensityRangePercentiles::THREEDINO;
    if vol.data.dtype().is_float() {
        nan_to_mean(&mut img);
        scale_intensity_range_percentiles(&mut img, &p);
    } else {
        let q = percentiles_f32(&img.data, &[p.lower, p.upper]);
        scale_intensity_range(&mut img, &p.range(q[0], q[1]));
    }
    let (image, start) = crop_foreground_divisible(&img, -1.0, patch, 0.0)
        .map_err(TaskError::msg)
        .context("cropping to the foreground")?;
    let extent = [image.shape[1], image.shape[2], image.shape[3]];
    Ok(Prepared {
        image,
        placement: Placement {
            start,
            extent,
            source: [x, y, z],
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use dino3d_pipeline::nifti::affine::IDENTITY;
    use dino3d_pipeline::{VolumeMeta, VoxelData};

    #[test]
    fn scales_crops_to_multiples_of_the_patch_and_keeps_world_positions() {
        // A 20 × 12 × 9 volume of zeros with a bright 5 × 3 × 2 block at y = 0.
        let (x, y, z) = (20, 12, 9);
        let mut data = vec![0i16; x * y * z];
        for k in 4..6 {
            for j in 0..3 {
                for i in 10..15 {
                    data[(k * y + j) * x + i] = 100 + (i + j + k) as i16;
                }
            }
        }
        let mut affine = IDENTITY;
        affine[0][0] = 2.0;
        affine[0][3] = -7.0;
        let vol = Volume {
            data: VoxelData::I16(data.into()),
            shape: [1, x, y, z],
            spacing: [2.0, 1.0, 1.0],
            affine,
            scaling: None,
            meta: VolumeMeta::default(),
        };
        let prep = prepare(&vol, 0, 8).unwrap();
        assert_eq!(prep.image.shape, [1, 8, 8, 8]);
        // Box [10, 15) x [0, 3) x [4, 6) grown to 8: starts 9, -2, 1.
        assert_eq!(prep.placement.start, [9, -2, 1]);
        assert_eq!(prep.placement.extent, [8, 8, 8]);
        assert_eq!(prep.placement.source, [x, y, z]);
        // Intensities are in [-1, 1]; the background is -1, the outside 0.
        assert!(prep.image.data.iter().all(|v| (-1.0..=1.0).contains(v)));
        assert_eq!(prep.image.at(0, 0, 2, 0), -1.0);
        assert_eq!(
            prep.image.at(0, 0, 0, 0),
            0.0,
            "y = -2 is outside the source"
        );
        assert!(
            prep.image.at(0, 1, 2, 3) > -1.0,
            "voxel (10, 0, 4) is foreground"
        );
        // The affine still maps each voxel to its world position.
        assert_eq!(prep.image.affine[0][3], -7.0 + 2.0 * 9.0);
        assert_eq!(prep.image.affine[1][3], -2.0);
        assert!(prepare(&vol, 1, 8).is_err(), "only one frame");
    }
}
