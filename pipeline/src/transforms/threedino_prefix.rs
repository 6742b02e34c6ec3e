//! 3DINO's deterministic preprocessing prefix (its transforms 1-5, the part MONAI's
//! `CacheNTransDataset` caches), fused for speed: the time frame is chosen before
//! converting to float, and 8/16-bit volumes get their percentiles from a
//! histogram of the stored integers.

use super::crop_foreground::{CropForeground, crop_foreground, crop_owned, foreground_box_by};
use super::error::TransformError;
use super::image::Image;
use super::nan_to_mean::nan_to_mean;
use super::percentiles::{ScaleIntensityRangePercentiles, percentiles_f32, percentiles_of_volume};
use super::permute_in_plane_first::permute_in_plane_first;
use super::rand_time_frame::pick_channel;
use super::scale_intensity_range::{ScaleIntensityRange, scale_intensity_range};
use crate::nifti::DType;
use crate::volume::Volume;

/// Runs load-to-crop on `vol`: random time frame (chosen by `key`), NaN to mean,
/// percentile scaling 0.05/99.95 to [-1, 1] with clipping, in-plane axes first
/// (from spacing), crop to voxels > -1.
///
/// # Errors
/// When the spacing cannot tell the slice axis or nothing is foreground.
pub fn threedino_prefix(vol: &Volume, key: u64) -> Result<Image, TransformError> {
    let channel = pick_channel(vol.shape[0], key);
    let n = vol.spatial_len();
    let all = vol.to_f32_channel(channel);
    let mut img = Image {
        data: all,
        shape: [1, vol.shape[1], vol.shape[2], vol.shape[3]],
        spacing: vol.spacing,
        affine: vol.affine,
    };
    let p = ScaleIntensityRangePercentiles::THREEDINO;
    let q = if vol.data.dtype().is_float() {
        nan_to_mean(&mut img);
        percentiles_f32(&img.data, &[p.lower, p.upper])
    } else if vol.shape[0] == 1 {
        percentiles_of_volume(vol, &[p.lower, p.upper])
    } else {
        percentiles_f32(&img.data, &[p.lower, p.upper])
    };
    debug_assert_eq!(img.data.len(), n);
    scale_intensity_range(&mut img, &p.range(q[0], q[1]));
    let img = permute_in_plane_first(img, false)?;
    crop_foreground(
        &img,
        &CropForeground {
            threshold: -1.0,
            margin: 0,
        },
    )
}

/// 3DINO's prefix kept in the stored integer type (what the cache persists):
/// the chosen channel's raw voxels, permuted and cropped (as float32, exact for
/// 8/16-bit integers), and the intensity window the float path applies.
/// `scale_intensity_range(raw, window)` equals [`threedino_prefix`] bit for bit.
#[derive(Debug, Clone, PartialEq)]
pub struct IntPrefix {
    /// Raw integer voxels (as exact floats), permuted and cropped.
    pub raw: Image,
    /// The stored type of the source.
    pub dtype: DType,
    /// The percentile window (with its clipping) to apply on reading.
    pub window: ScaleIntensityRange,
}

/// [`threedino_prefix`] without the final scaling, for 8/16-bit integer volumes
/// without `scl_slope`; None for other volumes (they are kept as float32).
pub fn threedino_prefix_int(vol: &Volume, key: u64) -> Option<Result<IntPrefix, TransformError>> {
    let dtype = vol.data.dtype();
    if vol.scaling.is_some() || !matches!(dtype, DType::U8 | DType::I8 | DType::U16 | DType::I16) {
        return None;
    }
    let channel = pick_channel(vol.shape[0], key);
    let raw = Image {
        data: vol.to_f32_channel(channel),
        shape: [1, vol.shape[1], vol.shape[2], vol.shape[3]],
        spacing: vol.spacing,
        affine: vol.affine,
    };
    let p = ScaleIntensityRangePercentiles::THREEDINO;
    // The same percentile routine as the float path, so the window is identical.
    let q = if vol.shape[0] == 1 {
        percentiles_of_volume(vol, &[p.lower, p.upper])
    } else {
        percentiles_f32(&raw.data, &[p.lower, p.upper])
    };
    let window = p.range(q[0], q[1]);
    // The foreground is where the scaled value exceeds -1: the scaling is
    // applied voxel by voxel inside the box search (the same map, so the same
    // box bit for bit) instead of to a scaled copy of the volume, which with
    // its permuted copy held two more f32 volumes per preparing thread.
    let map = window.decode_map();
    let run = || -> Result<IntPrefix, TransformError> {
        let raw = permute_in_plane_first(raw, false)?;
        let (lo, hi) = foreground_box_by(&raw, |v| map.apply(v) > -1.0)
            .ok_or(TransformError::EmptyForeground { threshold: -1.0 })?;
        Ok(IntPrefix {
            raw: crop_owned(raw, lo, hi),
            dtype,
            window,
        })
    };
    Some(run())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nifti::affine::IDENTITY;
    use crate::volume::{VolumeMeta, VoxelData};

    #[test]
    fn the_integer_prefix_plus_its_window_is_the_float_prefix_bit_for_bit() {
        let (x, y, z) = (9, 8, 7);
        for channels in [1, 2] {
            let mut raw = vec![-1024i16; channels * x * y * z];
            for (i, v) in raw.iter_mut().enumerate() {
                let (ii, jj, kk) = (i % x, (i / x) % y, (i / (x * y)) % z);
                if (2..7).contains(&ii) && (1..6).contains(&jj) && (1..7).contains(&kk) {
                    *v = ((i * 7919) % 1700) as i16 - 300;
                }
            }
            let vol = Volume {
                data: VoxelData::I16(raw.into()),
                shape: [channels, x, y, z],
                spacing: [1.0, 1.0, 2.5],
                affine: IDENTITY,
                scaling: None,
                meta: VolumeMeta::default(),
            };
            for key in 0..4 {
                let want = threedino_prefix(&vol, key).unwrap();
                let int = threedino_prefix_int(&vol, key).unwrap().unwrap();
                assert_eq!(int.dtype, DType::I16);
                assert!(int.raw.data.iter().all(|v| v.fract() == 0.0));
                let mut got = int.raw.clone();
                scale_intensity_range(&mut got, &int.window);
                assert_eq!(got, want, "channels {channels}, key {key}");
            }
        }
        // Scaled or float volumes are not kept as integers.
        let mut f = Volume {
            data: VoxelData::F32(vec![0.0f32; 8].into()),
            shape: [1, 2, 2, 2],
            spacing: [1.0; 3],
            affine: IDENTITY,
            scaling: None,
            meta: VolumeMeta::default(),
        };
        assert!(threedino_prefix_int(&f, 0).is_none());
        f.data = VoxelData::I16(vec![0i16; 8].into());
        f.scaling = Some((2.0, 1.0));
        assert!(threedino_prefix_int(&f, 0).is_none());
    }

    #[test]
    fn prefix_matches_the_step_by_step_chain() {
        // 2 channels, slice axis first (spacing 3, 1, 1), background at -1000.
        let (x, y, z) = (6, 8, 7);
        let mut raw = vec![-1000i16; 2 * x * y * z];
        for (i, v) in raw.iter_mut().enumerate() {
            let (ii, jj, kk) = (i % x, (i / x) % y, (i / (x * y)) % z);
            if (1..5).contains(&ii) && (2..6).contains(&jj) && (1..6).contains(&kk) {
                *v = (i % 97) as i16 * 10;
            }
        }
        let vol = Volume {
            data: VoxelData::I16(raw.into()),
            shape: [2, x, y, z],
            spacing: [3.0, 1.0, 1.0],
            affine: IDENTITY,
            scaling: None,
            meta: VolumeMeta::default(),
        };
        let out = threedino_prefix(&vol, 7).unwrap();
        // Step by step with the individual transforms.
        let img = super::super::rand_time_frame::keep_channel(
            &Image::from_volume(&vol),
            pick_channel(2, 7),
        );
        let mut img = img;
        super::super::percentiles::scale_intensity_range_percentiles(
            &mut img,
            &ScaleIntensityRangePercentiles::THREEDINO,
        );
        let img = permute_in_plane_first(img, false).unwrap();
        let want = crop_foreground(
            &img,
            &CropForeground {
                threshold: -1.0,
                margin: 0,
            },
        )
        .unwrap();
        assert_eq!(out.shape, want.shape);
        for (a, b) in out.data.iter().zip(&want.data) {
            assert!((a - b).abs() < 1e-6);
        }
        // Slice axis (x, spacing 3) moved last; foreground box is 4 x 4 x 5 before the move.
        assert_eq!(out.shape, [1, 4, 5, 4]);
        assert_eq!(out.spacing, [1.0, 1.0, 3.0]);
        assert!(out.data.iter().all(|v| (-1.0..=1.0).contains(v)));
    }
}
