//! Reading NIfTI-1/2 and Analyze files: header-only and full reads.
//!
//! Accepted layouts: `.nii`, `.nii.gz`, and header/data pairs `.hdr` + `.img`,
//! `.hdr` + `.img.gz`, `.hdr.gz` + `.img.gz` (either file may be given). gzip is
//! recognised by its magic bytes, not the extension. Every size is checked
//! against what the file can back before anything is allocated.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::affine::{Affine, FallbackAffine, best_affine};
use super::dtype::DType;
use super::gzip;
use super::header::{Endian, HeaderError, NIFTI2_HEADER_SIZE, NiftiHeader, NiftiVersion};
use crate::error::{Error, Result};
use crate::volume::{Volume, VolumeMeta, VoxelData};

/// Options for reading volumes.
#[derive(Debug, Clone, Copy)]
pub struct ReadOptions {
    /// The affine used when neither qform nor sform is set.
    pub fallback_affine: FallbackAffine,
    /// Most voxels a volume may hold (all channels): a larger one is refused
    /// before its voxels are allocated (a small `.nii.gz` can claim a huge
    /// array).
    pub max_voxels: u64,
}

/// The default voxel budget: 2^31 voxels (a 1024 × 1024 × 2048 CT, 4 GiB
/// as int16).
pub const DEFAULT_MAX_VOXELS: u64 = 1 << 31;

impl Default for ReadOptions {
    fn default() -> ReadOptions {
        ReadOptions {
            fallback_affine: FallbackAffine::default(),
            max_voxels: DEFAULT_MAX_VOXELS,
        }
    }
}

/// Everything a header says about a volume, without its voxels.
#[derive(Debug, Clone, PartialEq)]
pub struct VolumeInfo {
    /// The file that was asked for.
    pub path: PathBuf,
    /// The file holding the header.
    pub header_path: PathBuf,
    /// The file holding the voxels (the same file for `.nii`).
    pub data_path: PathBuf,
    /// The parsed header.
    pub header: NiftiHeader,
    /// Stored voxel type.
    pub dtype: DType,
    /// Array shape as nibabel reports it (x, y, z[, t]).
    pub disk_shape: Vec<u64>,
    /// Channel-first shape `(C, X, Y, Z)` of the loaded volume.
    pub shape: [usize; 4],
    /// Spatial voxel sizes (`pixdim[1..4]`).
    pub spacing: [f64; 3],
    /// Voxel-to-world affine.
    pub affine: Affine,
    /// Value scaling, if the header asks for one.
    pub scaling: Option<(f64, f64)>,
    /// Byte offset of the voxels in the (inflated) data file.
    pub data_offset: u64,
    /// Bytes of voxel data.
    pub data_bytes: u64,
    /// Whether the data file is gzip-compressed.
    pub data_compressed: bool,
    /// Bytes on disk of header and data files together.
    pub file_bytes: u64,
    /// Modification time of the header file (for quick fingerprints).
    pub modified: Option<std::time::SystemTime>,
}

impl VolumeInfo {
    /// Number of voxels over all channels.
    pub fn voxel_count(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Reads only the header (and checks that the data file exists and is large
/// enough to back it). Never inflates the voxels.
///
/// # Errors
/// A clear, file-naming error for unreadable files, bad headers, unsupported
/// content and missing or too-small data files.
pub fn read_header(path: impl AsRef<Path>) -> Result<VolumeInfo> {
    read_header_with(path, &ReadOptions::default())
}

/// [`read_header`] with options.
///
/// # Errors
/// See [`read_header`].
pub fn read_header_with(path: impl AsRef<Path>, opts: &ReadOptions) -> Result<VolumeInfo> {
    let path = path.as_ref();
    let header_path = header_path_for(path);
    let mut file = open(&header_path)?;
    let meta = file.metadata().map_err(|e| Error::io(&header_path, e))?;
    let file_len = meta.len();
    let is_gz = sniff_gzip(&mut file, &header_path)?;
    let prefix = if is_gz {
        gzip::inflate_prefix(std::io::BufReader::new(file), NIFTI2_HEADER_SIZE + 4)
            .map_err(|e| Error::format(&header_path, e))?
    } else {
        read_prefix(&mut file, &header_path)?
    };
    let mut info = describe(path, &header_path, &prefix, (file_len, is_gz), opts)?;
    info.modified = meta.modified().ok();
    Ok(info)
}

/// Reads a whole volume: header, voxels in their stored type, geometry.
///
/// # Errors
/// As [`read_header`], plus truncated or corrupt voxel data.
pub fn read_volume(path: impl AsRef<Path>) -> Result<Volume> {
    read_volume_with(path, &ReadOptions::default())
}

/// [`read_volume`] with options.
///
/// # Errors
/// See [`read_volume`].
pub fn read_volume_with(path: impl AsRef<Path>, opts: &ReadOptions) -> Result<Volume> {
    let path = path.as_ref();
    let header_path = header_path_for(path);
    let mut file = open(&header_path)?;
    let file_len = file_len(&file, &header_path)?;
    let is_gz = sniff_gzip(&mut file, &header_path)?;
    // A single .nii.gz is read whole once: the header comes from its first bytes.
    let (prefix, whole) = if is_gz {
        let whole = read_all(&mut file, &header_path, file_len)?;
        let prefix = gzip::inflate_prefix(&whole[..], NIFTI2_HEADER_SIZE + 4)
            .map_err(|e| Error::format(&header_path, e))?;
        (prefix, Some(whole))
    } else {
        (read_prefix(&mut file, &header_path)?, None)
    };
    let info = describe(path, &header_path, &prefix, (file_len, is_gz), opts)?;
    let n = info.voxel_count();
    if n as u64 > opts.max_voxels {
        return Err(Error::TooLarge {
            path: path.to_path_buf(),
            voxels: n as u64,
            budget: opts.max_voxels,
        });
    }
    let offset = info.data_offset as usize;
    let nbytes = info.data_bytes as usize;
    let size = info.dtype.size();
    let mut data;
    if info.data_compressed {
        let compressed = match (whole, info.header.single_file) {
            (Some(w), true) => w,
            _ => {
                let mut f = open(&info.data_path)?;
                let len = self::file_len(&f, &info.data_path)?;
                read_all(&mut f, &info.data_path, len)?
            }
        };
        // Inflate header + voxels into one typed buffer: one allocation, no
        // growing, and the voxels stay where they land (no 16 MiB slide).
        let total = offset + nbytes;
        // The buffer is not zeroed first: inflate overwrites it (3% of a read).
        // SAFETY: on `Ok`, `inflate_into_uninit` has written the first `total`
        // bytes and the closure zeroes the (< size) padding bytes after them.
        data = unsafe {
            VoxelData::from_fill(info.dtype, total.div_ceil(size), |buf| {
                let (head, pad) = buf.split_at_mut(total);
                gzip::inflate_into_uninit(&compressed, head)?;
                pad.fill(std::mem::MaybeUninit::new(0));
                Ok(())
            })
        }
        .map_err(|e| Error::format(&info.data_path, e))?;
        if offset.is_multiple_of(size) {
            // Leave the voxels where they landed, behind the header bytes.
            data.skip_front(offset / size);
        } else {
            data.as_bytes_mut().copy_within(offset..total, 0);
        }
        data.truncate(n);
    } else {
        let mut f = if info.data_path == header_path {
            file
        } else {
            open(&info.data_path)?
        };
        data = VoxelData::zeroed(info.dtype, n);
        f.seek(SeekFrom::Start(info.data_offset))
            .and_then(|_| f.read_exact(data.as_bytes_mut()))
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::UnexpectedEof => Error::format(
                    &info.data_path,
                    format!("truncated: fewer than {nbytes} voxel bytes after offset {offset}"),
                ),
                _ => Error::io(&info.data_path, e),
            })?;
    }
    if (info.header.endian == Endian::Big) != cfg!(target_endian = "big") {
        data.swap_bytes();
    }
    Ok(Volume {
        data,
        shape: info.shape,
        spacing: info.spacing,
        affine: info.affine,
        scaling: info.scaling,
        meta: VolumeMeta {
            source: Some(path.to_path_buf()),
            disk_shape: info.disk_shape,
            qform_code: info.header.qform_code,
            sform_code: info.header.sform_code,
            xyzt_units: info.header.xyzt_units,
        },
    })
}

fn open(path: &Path) -> Result<File> {
    File::open(path).map_err(|e| Error::io(path, e))
}

fn file_len(f: &File, path: &Path) -> Result<u64> {
    Ok(f.metadata().map_err(|e| Error::io(path, e))?.len())
}

fn sniff_gzip(f: &mut File, path: &Path) -> Result<bool> {
    let mut magic = [0u8; 2];
    let n = read_up_to(f, &mut magic).map_err(|e| Error::io(path, e))?;
    f.seek(SeekFrom::Start(0)).map_err(|e| Error::io(path, e))?;
    Ok(gzip::is_gzip(&magic[..n]))
}

fn read_up_to(f: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

fn read_prefix(f: &mut File, path: &Path) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; NIFTI2_HEADER_SIZE + 4];
    let n = read_up_to(f, &mut buf).map_err(|e| Error::io(path, e))?;
    buf.truncate(n);
    Ok(buf)
}

fn read_all(f: &mut File, path: &Path, len: u64) -> Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(len as usize);
    f.read_to_end(&mut buf).map_err(|e| Error::io(path, e))?;
    Ok(buf)
}

/// Lower-cased file name, for extension tests.
fn lower_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default()
}

/// Replaces a file name's suffix of length `strip` by `with`, keeping case style.
fn swap_suffix(path: &Path, strip: usize, with: &str) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let stem = &name[..name.len() - strip];
    let upper = name[name.len() - strip..]
        .chars()
        .any(|c| c.is_ascii_uppercase());
    let with = if upper {
        with.to_ascii_uppercase()
    } else {
        with.to_string()
    };
    path.with_file_name(format!("{stem}{with}"))
}

/// The header file of a pair when the data file (`.img[.gz]`) was given.
fn header_path_for(path: &Path) -> PathBuf {
    let name = lower_name(path);
    for (img, hdrs) in [
        (".img.gz", [".hdr.gz", ".hdr"]),
        (".img", [".hdr", ".hdr.gz"]),
    ] {
        if name.ends_with(img) {
            for hdr in hdrs {
                let cand = swap_suffix(path, img.len(), hdr);
                if cand.exists() {
                    return cand;
                }
            }
        }
    }
    path.to_path_buf()
}

/// Candidate data files for a pair header.
fn data_candidates(header: &Path) -> Vec<PathBuf> {
    let name = lower_name(header);
    if name.ends_with(".hdr.gz") {
        vec![
            swap_suffix(header, 7, ".img.gz"),
            swap_suffix(header, 7, ".img"),
        ]
    } else if name.ends_with(".hdr") {
        vec![
            swap_suffix(header, 4, ".img"),
            swap_suffix(header, 4, ".img.gz"),
        ]
    } else {
        let n = name.rfind('.').map_or(0, |i| name.len() - i);
        vec![
            swap_suffix(header, n, ".img"),
            swap_suffix(header, n, ".img.gz"),
        ]
    }
}

/// Validates a parsed header and works out where and how large the data is.
fn describe(
    path: &Path,
    header_path: &Path,
    prefix: &[u8],
    (header_file_len, header_is_gz): (u64, bool),
    opts: &ReadOptions,
) -> Result<VolumeInfo> {
    let fmt = |reason: HeaderError| Error::format(header_path, reason.0);
    let bad = |reason: String| Error::format(header_path, reason);
    let header = NiftiHeader::parse(prefix).map_err(fmt)?;
    let dtype = DType::from_nifti_code(header.datatype).map_err(|what| Error::Unsupported {
        path: header_path.to_path_buf(),
        what: what.0,
    })?;
    let disk_shape = header.shape().map_err(fmt)?;
    if disk_shape.len() > 4 && disk_shape[4..].iter().any(|&d| d > 1) {
        let what = if (3000..3100).contains(&header.intent_code) {
            format!(
                "CIFTI-2 file (intent {}), not a volume: dims {:?}",
                header.intent_code, disk_shape
            )
        } else {
            format!(
                "{}-D data (dims {disk_shape:?}): only up to 4-D volumes are read",
                disk_shape.len()
            )
        };
        return Err(Error::Unsupported {
            path: header_path.to_path_buf(),
            what,
        });
    }
    let voxels = header.voxel_count().map_err(fmt)?;
    let data_bytes = voxels
        .checked_mul(dtype.size() as u64)
        .filter(|&b| b < isize::MAX as u64 / 2)
        .ok_or_else(|| bad(format!("dims {disk_shape:?} of {dtype} overflow memory")))?;
    let data_offset = header.data_offset().map_err(fmt)?;
    let dim = |i: usize| disk_shape.get(i).map_or(1, |&d| d as usize);
    let shape = [dim(3), dim(0), dim(1), dim(2)];
    let rank = disk_shape.len();
    let spacing = [1, 2, 3].map(|i| if i <= rank { header.pixdim[i] } else { 1.0 });
    // NaN or infinite voxel sizes would travel into every transform and
    // cache entry; refuse them here, naming the file.
    if let Some(a) = (0..3).find(|&a| !spacing[a].is_finite()) {
        return Err(bad(format!(
            "pixdim[{}] = {}: voxel sizes must be finite",
            a + 1,
            spacing[a]
        )));
    }

    let (data_path, data_len, data_compressed) = if header.single_file {
        if header.version != NiftiVersion::Analyze && lower_name(header_path).ends_with(".hdr") {
            return Err(bad("single-file magic (n+1/n+2) in a .hdr file".into()));
        }
        (header_path.to_path_buf(), header_file_len, header_is_gz)
    } else {
        // A `.nii` holds its voxels: a header without the single-file magic
        // there is a damaged or foreign file, not a pair missing its `.img`.
        let name = lower_name(header_path);
        if name.ends_with(".nii") || name.ends_with(".nii.gz") {
            let magic = prefix.get(344..348).unwrap_or_default();
            return Err(bad(format!(
                "not a NIfTI-1 file: bytes 344..348 are \"{}\", not the magic \"n+1\\0\" a .nii file carries",
                magic.escape_ascii()
            )));
        }
        let tried = data_candidates(header_path);
        let Some(found) = tried.iter().find(|p| p.is_file()) else {
            return Err(Error::DataFileMissing {
                header: header_path.to_path_buf(),
                tried: tried.iter().map(|p| p.display().to_string()).collect(),
            });
        };
        let mut f = open(found)?;
        let len = file_len(&f, found)?;
        (found.clone(), len, sniff_gzip(&mut f, found)?)
    };
    let needed = data_offset + data_bytes;
    if data_compressed {
        let max = data_len
            .saturating_mul(gzip::MAX_DEFLATE_RATIO)
            .saturating_add(1024);
        if needed > max {
            return Err(Error::format(
                &data_path,
                format!(
                    "header dims {disk_shape:?} of {dtype} need {needed} bytes, more than a {data_len}-byte gzip file can hold"
                ),
            ));
        }
    } else if data_len < needed {
        return Err(Error::format(
            &data_path,
            format!(
                "truncated: header dims {disk_shape:?} of {dtype} need {needed} bytes (offset {data_offset}), file has {data_len}"
            ),
        ));
    }
    let file_bytes = if data_path == header_path {
        data_len
    } else {
        header_file_len + data_len
    };
    let affine = best_affine(&header, opts.fallback_affine);
    if affine.iter().flatten().any(|v| !v.is_finite()) {
        return Err(bad(format!(
            "the affine (sform/qform) holds a non-finite value: {affine:?}"
        )));
    }
    Ok(VolumeInfo {
        path: path.to_path_buf(),
        header_path: header_path.to_path_buf(),
        data_path,
        affine,
        scaling: header.scaling(),
        dtype,
        disk_shape,
        shape,
        spacing,
        data_offset,
        data_bytes,
        data_compressed,
        file_bytes,
        modified: None,
        header,
    })
}
