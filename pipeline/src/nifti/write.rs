//! Writing volumes as NIfTI (`.nii` or `.nii.gz`), keeping the stored type, the
//! scaling and the affine. Files are written to a temporary name beside the
//! target and renamed, so a crash never leaves a half-written volume behind.

use std::io::Write;
use std::path::Path;

use super::affine::affine_to_quatern;
use super::gzip;
use super::header::{NiftiHeader, NiftiVersion};
use crate::error::{Error, Result};
use crate::volume::Volume;

/// Options for [`write_volume`].
#[derive(Debug, Clone, Copy)]
pub struct WriteOptions {
    /// gzip level 1..=12 (libdeflate), used when the name ends in `.gz`.
    pub gzip_level: i32,
}

impl Default for WriteOptions {
    fn default() -> Self {
        WriteOptions { gzip_level: 6 }
    }
}

/// The header that describes `vol` on disk (NIfTI-2 only when a size does not
/// fit NIfTI-1's 16-bit dims).
pub fn header_for(vol: &Volume) -> NiftiHeader {
    let [c, x, y, z] = vol.shape;
    let too_big = [c, x, y, z].iter().any(|&d| d > i16::MAX as usize);
    let version = if too_big {
        NiftiVersion::Nifti2
    } else {
        NiftiVersion::Nifti1
    };
    let rank = if c > 1 { 4 } else { 3 };
    // pixdim comes from the affine (as nibabel writes it), so qform and sform agree.
    let (quatern, qoffset, zooms, qfac) = affine_to_quatern(&vol.affine);
    let sform_code = if vol.meta.sform_code > 0 {
        vol.meta.sform_code
    } else {
        2
    };
    let qform_code = if vol.meta.qform_code > 0 {
        vol.meta.qform_code
    } else {
        sform_code
    };
    let (scl_slope, scl_inter) = vol.scaling.unwrap_or((1.0, 0.0));
    let dtype = vol.data.dtype();
    let header_size = if too_big { 544.0 } else { 352.0 };
    NiftiHeader {
        version,
        single_file: true,
        dim: [rank, x as i64, y as i64, z as i64, c as i64, 1, 1, 1],
        datatype: dtype.nifti_code(),
        bitpix: (dtype.size() * 8) as i16,
        pixdim: [qfac, zooms[0], zooms[1], zooms[2], 1.0, 1.0, 1.0, 1.0],
        vox_offset: header_size,
        scl_slope,
        scl_inter,
        qform_code,
        sform_code,
        quatern,
        qoffset,
        srow: [vol.affine[0], vol.affine[1], vol.affine[2]],
        xyzt_units: if vol.meta.xyzt_units != 0 {
            vol.meta.xyzt_units
        } else {
            2 // millimetres
        },
        descrip: "dino3d".into(),
        ..NiftiHeader::default()
    }
}

/// Writes `vol` to `path` (`.nii`, or gzip when the name ends in `.gz`).
///
/// # Errors
/// I/O failures, naming the file.
pub fn write_volume(path: impl AsRef<Path>, vol: &Volume, opts: &WriteOptions) -> Result<()> {
    let path = path.as_ref();
    let header = header_for(vol).to_bytes();
    let gz = path
        .file_name()
        .is_some_and(|n| n.to_string_lossy().to_ascii_lowercase().ends_with(".gz"));
    let mut bytes = Vec::with_capacity(header.len() + vol.data.as_bytes().len());
    bytes.extend_from_slice(&header);
    append_little_endian(&mut bytes, vol);
    let payload = if gz {
        gzip::gzip_compress(&bytes, opts.gzip_level)
    } else {
        bytes
    };
    write_atomic(path, &payload)
}

fn append_little_endian(out: &mut Vec<u8>, vol: &Volume) {
    let start = out.len();
    out.extend_from_slice(vol.data.as_bytes());
    if cfg!(target_endian = "big") {
        let size = vol.data.dtype().size();
        for chunk in out[start..].chunks_exact_mut(size) {
            chunk.reverse();
        }
    }
}

/// Writes `bytes` to a temporary file beside `path`, syncs it and renames it over
/// `path`.
///
/// # Errors
/// I/O failures, naming the file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })
}
