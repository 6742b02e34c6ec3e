//! DICOM (dicom-rs): single files, series folders and enhanced multi-frame
//! objects, read as MONAI's `LoadImage` (ITKReader) reads them.
//!
//! A volume "path" is one of:
//! * a DICOM file (`.dcm`, `.dicom`, `.ima`, or any file with the `DICM`
//!   magic): one slice, or the frames of a multi-frame object;
//! * a folder holding one series (every DICOM file directly in it);
//! * `FOLDER#SERIES_UID`: one series of a folder that holds several.
//!
//! Slices are sorted along the slice normal (ImagePositionPatient projected
//! on row x column direction), their steps checked (gaps, duplicates, gantry
//! tilt are errors naming the files), and RescaleSlope/Intercept kept as the
//! volume's scaling beside the stored integers (as NIfTI's `scl_slope`).

mod file;
mod lengths;
mod pixels;
mod series;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::{Encoding, Format, Header, VolumeInfo};
use crate::error::{Error, Result};
use crate::nifti::{DType, ReadOptions};
use crate::volume::{Volume, VolumeMeta, VoxelData};
use file::FileHeader;
use series::Plan;

/// Separates a folder from a series UID in a volume path.
pub const SERIES_SEPARATOR: char = '#';

/// Extensions taken as DICOM without looking inside.
const EXTENSIONS: [&str; 3] = [".dcm", ".dicom", ".ima"];

/// A series folder: the DICOM files directly in it, optionally one series
/// of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FolderTarget {
    /// The folder.
    pub dir: PathBuf,
    /// The SeriesInstanceUID asked for.
    pub series: Option<String>,
}

/// The series folder `path` names (a folder, or `FOLDER#UID`); files are
/// left to [`is_dicom_name`] and [`has_magic`].
pub(crate) fn folder_target(path: &Path) -> Option<FolderTarget> {
    if path.is_dir() {
        return Some(FolderTarget {
            dir: path.to_path_buf(),
            series: None,
        });
    }
    if path.exists() {
        return None;
    }
    let s = path.to_str()?;
    let (dir, uid) = s.rsplit_once(SERIES_SEPARATOR)?;
    (!uid.is_empty() && !uid.contains(['/', '\\']) && Path::new(dir).is_dir()).then(|| {
        FolderTarget {
            dir: PathBuf::from(dir),
            series: Some(uid.to_string()),
        }
    })
}

/// Whether a file name has a DICOM extension.
pub(crate) fn is_dicom_name(path: &Path) -> bool {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    EXTENSIONS.iter().any(|e| name.ends_with(e))
}

/// Whether the first bytes hold the DICOM preamble and `DICM` magic.
pub(crate) fn has_magic(head: &[u8]) -> bool {
    head.get(128..132) == Some(b"DICM")
}

/// Whether the file at `path` is DICOM (by extension, else by its magic).
/// A DICOMDIR index is not an image and is left out.
pub fn is_dicom_file(path: &Path) -> bool {
    if path
        .file_name()
        .is_some_and(|n| n.eq_ignore_ascii_case("DICOMDIR"))
    {
        return false;
    }
    if is_dicom_name(path) {
        return true;
    }
    let mut head = Vec::with_capacity(132);
    std::fs::File::open(path)
        .and_then(|f| f.take(132).read_to_end(&mut head))
        .is_ok()
        && has_magic(&head)
}

/// The DICOM files directly in `dir`, sorted.
fn files_in(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let p = entry.map_err(|e| Error::io(dir, e))?.path();
        if p.is_file() && is_dicom_file(&p) {
            files.push(p);
        }
    }
    files.sort();
    Ok(files)
}

/// Reads the headers of `files` in parallel; the first failure in path order
/// is returned (so a message does not depend on thread timing).
fn headers_of(files: &[PathBuf]) -> Result<Vec<FileHeader>> {
    let read: Vec<Result<FileHeader>> = files.par_iter().map(|p| file::read(p)).collect();
    read.into_iter().collect()
}

/// The headers of `dir`'s DICOM files grouped by SeriesInstanceUID.
fn series_of(dir: &Path) -> Result<BTreeMap<String, Vec<FileHeader>>> {
    let files = files_in(dir)?;
    if files.is_empty() {
        return Err(Error::format(
            dir,
            "folder holds no DICOM file (none named .dcm/.dicom/.ima or with the DICM magic)",
        ));
    }
    let mut groups: BTreeMap<String, Vec<FileHeader>> = BTreeMap::new();
    for h in headers_of(&files)? {
        groups.entry(h.series_uid.clone()).or_default().push(h);
    }
    Ok(groups)
}

/// The volume paths of the series in `dir`: `dir` itself when it holds one
/// series, else `dir#UID` for each.
///
/// # Errors
/// An unreadable folder or DICOM file (naming it), or no DICOM file at all.
pub fn series_paths(dir: &Path) -> Result<Vec<PathBuf>> {
    let groups = series_of(dir)?;
    if groups.len() == 1 {
        return Ok(vec![dir.to_path_buf()]);
    }
    Ok(groups
        .keys()
        .map(|uid| PathBuf::from(format!("{}{SERIES_SEPARATOR}{uid}", dir.display())))
        .collect())
}

/// The headers of the files of the series (or single file) `path` names.
fn select(path: &Path) -> Result<Vec<FileHeader>> {
    match folder_target(path) {
        Some(FolderTarget { dir, series }) => {
            let mut groups = series_of(&dir)?;
            match series {
                Some(uid) => groups.remove(&uid).ok_or_else(|| {
                    Error::format(
                        &dir,
                        format!(
                            "no series {uid} in this folder (it holds {})",
                            groups.keys().cloned().collect::<Vec<_>>().join(", ")
                        ),
                    )
                }),
                None if groups.len() == 1 => Ok(groups.into_values().next().unwrap_or_default()),
                None => Err(Error::format(
                    &dir,
                    format!(
                        "holds {} series ({}): name one as FOLDER{SERIES_SEPARATOR}SERIES_UID",
                        groups.len(),
                        groups.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                )),
            }
        }
        None => Ok(vec![file::read(path)?]),
    }
}

/// A DICOM series' header facts and layout.
struct Series {
    headers: Vec<FileHeader>,
    plan: Plan,
    info: VolumeInfo,
}

fn open_series(path: &Path) -> Result<Series> {
    let headers = select(path)?;
    for h in &headers {
        pixels::check_supported(h)?;
    }
    let plan = series::plan(&headers, path)?;
    let info = describe(path, &headers, &plan)?;
    Ok(Series {
        headers,
        plan,
        info,
    })
}

/// The header facts of a DICOM file or series.
///
/// # Errors
/// Unreadable or unsupported files and inconsistent series, naming files.
pub(crate) fn read_header(path: &Path) -> Result<VolumeInfo> {
    Ok(open_series(path)?.info)
}

fn describe(path: &Path, headers: &[FileHeader], plan: &Plan) -> Result<VolumeInfo> {
    let first = &headers[plan.slices[0].file];
    let mut data_paths: Vec<PathBuf> = Vec::with_capacity(headers.len());
    for s in &plan.slices {
        let p = &headers[s.file].path;
        if data_paths.last() != Some(p) && !data_paths.contains(p) {
            data_paths.push(p.clone());
        }
    }
    let (affine, spacing) = plan.geometry.to_finite_ras(&first.path)?;
    let (x, y, z) = (first.cols as usize, first.rows as usize, plan.slices.len());
    let scaling = plan.rescale.filter(|&r| r != (1.0, 0.0));
    let dtype = match plan.rescale {
        Some(_) => pixels::dtype(first),
        None => DType::F32,
    };
    let encoding = pixels::encoding(&first.transfer_syntax);
    let mut digest = xxhash_rust::xxh3::Xxh3::new();
    for h in headers {
        digest.update(h.path.as_os_str().as_encoded_bytes());
        digest.update(&h.file_bytes.to_le_bytes());
        let t = h
            .modified
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        digest.update(&t.to_le_bytes());
    }
    let (slope, inter) = plan.rescale.unwrap_or((f64::NAN, f64::NAN));
    let fields: Vec<(String, String)> = [
        ("SeriesInstanceUID", first.series_uid.clone()),
        ("Modality", first.modality.clone()),
        ("TransferSyntax", pixels::ts_name(&first.transfer_syntax)),
        ("Files", headers.len().to_string()),
        ("Slices", z.to_string()),
        ("Rows", first.rows.to_string()),
        ("Columns", first.cols.to_string()),
        ("BitsAllocated", first.bits_allocated.to_string()),
        ("BitsStored", first.bits_stored.to_string()),
        ("PixelRepresentation", u8::from(first.signed).to_string()),
        (
            "PixelSpacing",
            shown(first.pixel_spacing.as_ref().map(|v| &v[..])),
        ),
        (
            "ImageOrientationPatient",
            shown(first.orientation.as_ref().map(|v| &v[..])),
        ),
        (
            "RescaleSlope",
            if plan.rescale.is_some() {
                slope.to_string()
            } else {
                "per slice".into()
            },
        ),
        (
            "RescaleIntercept",
            if plan.rescale.is_some() {
                inter.to_string()
            } else {
                "per slice".into()
            },
        ),
        ("FirstFile", first.path.display().to_string()),
        ("FilesDigest", format!("{:016x}", digest.digest())),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    Ok(VolumeInfo {
        path: path.to_path_buf(),
        header_path: first.path.clone(),
        data_paths,
        format: Format::Dicom,
        header: Header::Dicom(fields),
        dtype,
        disk_shape: vec![x as u64, y as u64, z as u64],
        shape: [1, x, y, z],
        spacing,
        affine,
        scaling,
        encoding,
        data_compressed: encoding != Encoding::Raw,
        file_bytes: headers.iter().map(|h| h.file_bytes).sum(),
        modified: headers.iter().filter_map(|h| h.modified).max(),
    })
}

/// A header's numbers as `[a, b, ...]`, or `absent`.
fn shown(v: Option<&[f64]>) -> String {
    v.map_or_else(|| "absent".to_string(), |v| format!("{v:?}"))
}

/// Every file of the DICOM volume at `path`, in slice order.
///
/// # Errors
/// As [`read_header`].
pub(crate) fn source_files(path: &Path) -> Result<Vec<PathBuf>> {
    Ok(read_header(path)?.data_paths)
}

/// Reads a DICOM file or series as a channel-first volume.
///
/// # Errors
/// As [`read_header`], plus undecodable or truncated pixel data and volumes
/// over `opts.max_voxels`.
pub(crate) fn read_volume(path: &Path, opts: &ReadOptions) -> Result<Volume> {
    let Series {
        headers,
        plan,
        info,
    } = open_series(path)?;
    let voxels = info.voxel_count() as u64;
    if voxels > opts.max_voxels {
        return Err(Error::TooLarge {
            path: path.to_path_buf(),
            voxels,
            budget: opts.max_voxels,
        });
    }
    let first = &headers[plan.slices[0].file];
    let stored = pixels::dtype(first);
    let mut data = VoxelData::zeroed(stored, voxels as usize);
    let slice_bytes = first.frame_bytes() as usize;
    // Each file decodes once and fills the slices its frames land on.
    let mut jobs: Vec<Vec<(usize, &mut [u8])>> = (0..headers.len()).map(|_| Vec::new()).collect();
    for (s, chunk) in plan
        .slices
        .iter()
        .zip(data.as_bytes_mut().chunks_exact_mut(slice_bytes))
    {
        jobs[s.file].push((s.frame, chunk));
    }
    jobs.par_iter_mut()
        .enumerate()
        .try_for_each(|(i, frames)| {
            if frames.is_empty() {
                return Ok(());
            }
            pixels::decode_into(&headers[i], frames)
        })?;
    let (data, scaling) = match plan.rescale {
        Some(_) => (data, info.scaling),
        None => (rescale_per_slice(&data, &plan, &headers), None),
    };
    Ok(Volume {
        data,
        shape: info.shape,
        spacing: info.spacing,
        affine: info.affine,
        scaling,
        meta: VolumeMeta {
            source: Some(path.to_path_buf()),
            disk_shape: info.disk_shape,
            ..VolumeMeta::default()
        },
    })
}

/// Values rescaled slice by slice into float32 (slices that disagree on
/// RescaleSlope/Intercept have no single scaling).
fn rescale_per_slice(data: &VoxelData, plan: &Plan, headers: &[FileHeader]) -> VoxelData {
    let n = data.len() / plan.slices.len().max(1);
    let out: Vec<f32> = plan
        .slices
        .iter()
        .enumerate()
        .flat_map(|(k, s)| {
            let (slope, inter) = headers[s.file].rescale[s.frame];
            (k * n..(k + 1) * n).map(move |i| (data.get_f64(i) * slope + inter) as f32)
        })
        .collect();
    VoxelData::F32(out.into())
}
