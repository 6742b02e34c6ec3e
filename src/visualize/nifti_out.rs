//! The maps as NIfTI volumes on the source's voxel grid, with its affine
//! (and qform/sform codes), so they overlay the input file in any viewer.

use std::path::Path;

use anyhow::Context;
use dino3d_pipeline::nifti::{WriteOptions, write_volume};
use dino3d_pipeline::{Volume, VolumeMeta, VoxelData};

/// Writes `data` (`channels` volumes of the source's spatial shape, x
/// fastest, channel slowest) to `path` with `source`'s geometry. More than
/// one channel makes a 4-D file.
///
/// # Errors
/// I/O failures, naming the file.
pub(crate) fn write_like(
    path: &Path,
    data: VoxelData,
    channels: usize,
    source: &Volume,
) -> anyhow::Result<()> {
    let [_, x, y, z] = source.shape;
    assert_eq!(data.len(), channels * x * y * z, "one volume per channel");
    let vol = Volume {
        data,
        shape: [channels, x, y, z],
        spacing: source.spacing,
        affine: source.affine,
        scaling: None,
        meta: VolumeMeta {
            qform_code: source.meta.qform_code,
            sform_code: source.meta.sform_code,
            xyzt_units: source.meta.xyzt_units,
            ..VolumeMeta::default()
        },
    };
    write_volume(path, &vol, &WriteOptions::default())
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use dino3d_pipeline::nifti::read_volume;

    #[test]
    fn maps_keep_the_source_affine_and_shape() {
        let dir = tempfile::tempdir().unwrap();
        let mut affine = dino3d_pipeline::nifti::affine::IDENTITY;
        affine[0] = [0.0, 0.0, 2.5, -40.0];
        affine[1] = [-1.5, 0.0, 0.0, 12.0];
        affine[2] = [0.0, 1.0, 0.0, 3.0];
        let source = Volume {
            data: VoxelData::I16(vec![0; 4 * 3 * 2].into()),
            shape: [1, 4, 3, 2],
            spacing: [1.5, 1.0, 2.5],
            affine,
            scaling: Some((2.0, 1.0)),
            meta: VolumeMeta {
                qform_code: 1,
                sform_code: 4,
                ..VolumeMeta::default()
            },
        };
        let path = dir.path().join("m.nii.gz");
        let data: Vec<f32> = (0..2 * 24).map(|v| v as f32 * 0.5).collect();
        write_like(&path, VoxelData::F32(data.clone().into()), 2, &source).unwrap();
        let back = read_volume(&path).unwrap();
        assert_eq!(back.shape, [2, 4, 3, 2]);
        assert_eq!(back.affine, source.affine);
        assert_eq!(back.meta.sform_code, 4);
        assert_eq!(back.scaling, None);
        assert_eq!(back.to_f32(), data);
    }
}
