//! Every volume format dino3d reads, behind one entry point.
//!
//! * NIfTI-1/2 and Analyze ([`crate::nifti`]): `.nii`, `.nii.gz`, `.hdr`/`.img`.
//! * MetaImage: `.mha`, `.mhd` (+ `.raw`, `.zraw`, lists of slice files).
//! * NRRD: `.nrrd`, `.nhdr` (+ detached data files).
//! * DICOM ([`dicom`]): a file, a series folder, or `FOLDER#SERIES_UID`.
//!
//! Volumes come out as MONAI's `LoadImage` gives them: channel-first
//! `(C, X, Y, Z)` in the stored type, with the RAS affine (ITK's LPS geometry
//! with x and y negated, as MONAI's `ITKReader` does by default). The format
//! is chosen by extension, else by the file's first bytes.

mod convert;
mod detect;
pub mod dicom;
mod geometry;
mod metaimage;
mod nrrd;
mod raw;
mod text;

use std::path::{Path, PathBuf};

pub use convert::convert_to_nifti;
pub use detect::{detect, is_volume_name, source_files};

use crate::error::Result;
use crate::nifti::{self, Affine, DType, NiftiHeader, NiftiVersion, ReadOptions};
use crate::volume::Volume;

/// Which format a file is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Analyze 7.5.
    Analyze,
    /// NIfTI-1.
    Nifti1,
    /// NIfTI-2.
    Nifti2,
    /// MetaImage (`.mha`, `.mhd`).
    MetaImage,
    /// NRRD (`.nrrd`, `.nhdr`).
    Nrrd,
    /// DICOM (a file or a series).
    Dicom,
}

impl Format {
    /// The format's name as manifests write it (`nifti1`, `metaimage`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Format::Analyze => "analyze",
            Format::Nifti1 => "nifti1",
            Format::Nifti2 => "nifti2",
            Format::MetaImage => "metaimage",
            Format::Nrrd => "nrrd",
            Format::Dicom => "dicom",
        }
    }
}

impl From<NiftiVersion> for Format {
    fn from(v: NiftiVersion) -> Format {
        match v {
            NiftiVersion::Analyze => Format::Analyze,
            NiftiVersion::Nifti1 => Format::Nifti1,
            NiftiVersion::Nifti2 => Format::Nifti2,
        }
    }
}

/// How the voxel bytes are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// Uncompressed.
    Raw,
    /// gzip (`.nii.gz`, NRRD `encoding: gzip`).
    Gzip,
    /// zlib (MetaImage `CompressedData = True`).
    Zlib,
    /// Deflate (DICOM Deflated Explicit VR Little Endian).
    Deflate,
    /// DICOM RLE Lossless.
    Rle,
    /// DICOM JPEG (baseline, extended or lossless).
    Jpeg,
    /// DICOM JPEG 2000 (lossless or lossy, Part 2, High-Throughput).
    Jpeg2000,
}

impl Encoding {
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Encoding::Raw => "raw",
            Encoding::Gzip => "gzip",
            Encoding::Zlib => "zlib",
            Encoding::Deflate => "deflate",
            Encoding::Rle => "rle",
            Encoding::Jpeg => "jpeg",
            Encoding::Jpeg2000 => "jpeg2000",
        }
    }
}

/// The header as the file states it.
#[derive(Debug, Clone, PartialEq)]
pub enum Header {
    /// A NIfTI / Analyze header (boxed: it is large beside the others).
    Nifti(Box<NiftiHeader>),
    /// MetaImage `Key = Value` fields, in file order.
    MetaImage(Vec<(String, String)>),
    /// NRRD `field: value` lines, in file order.
    Nrrd(Vec<(String, String)>),
    /// DICOM facts of a series (UID, transfer syntax, sizes, rescale, and a
    /// digest over every file's name, size and time).
    Dicom(Vec<(String, String)>),
}

impl Header {
    /// The header as bytes, for fingerprints (NIfTI: the binary header;
    /// text formats: their fields).
    pub fn to_bytes(&self) -> Vec<u8> {
        match self {
            Header::Nifti(h) => h.to_bytes(),
            Header::MetaImage(f) | Header::Nrrd(f) | Header::Dicom(f) => f
                .iter()
                .flat_map(|(k, v)| [k.as_bytes(), b"\0", v.as_bytes(), b"\n"].concat())
                .collect(),
        }
    }

    /// The text fields of a MetaImage, NRRD or DICOM header (empty for NIfTI).
    pub fn fields(&self) -> &[(String, String)] {
        match self {
            Header::Nifti(_) => &[],
            Header::MetaImage(f) | Header::Nrrd(f) | Header::Dicom(f) => f,
        }
    }
}

/// Everything a header says about a volume, without its voxels, for any
/// format (see [`nifti::VolumeInfo`] for NIfTI's own, which this wraps).
#[derive(Debug, Clone, PartialEq)]
pub struct VolumeInfo {
    /// The file that was asked for.
    pub path: PathBuf,
    /// The file holding the header.
    pub header_path: PathBuf,
    /// The files holding the voxels, in order (the header file itself when
    /// the data is attached).
    pub data_paths: Vec<PathBuf>,
    /// The format.
    pub format: Format,
    /// The parsed header.
    pub header: Header,
    /// Stored voxel type.
    pub dtype: DType,
    /// The array as MONAI's reader gives it before channels move: NIfTI
    /// (x, y, z[, t]) as nibabel; MetaImage/NRRD (x, y[, z][, t or channels]).
    pub disk_shape: Vec<u64>,
    /// Channel-first shape `(C, X, Y, Z)` of the loaded volume (a 2-D image
    /// has Z = 1).
    pub shape: [usize; 4],
    /// Voxel sizes of the first three spatial axes (1 past a 2-D image's).
    pub spacing: [f64; 3],
    /// Voxel-to-world affine, RAS.
    pub affine: Affine,
    /// Value scaling, if the header asks for one.
    pub scaling: Option<(f64, f64)>,
    /// How the voxel bytes are stored.
    pub encoding: Encoding,
    /// Whether the voxels are compressed.
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

impl From<nifti::VolumeInfo> for VolumeInfo {
    fn from(i: nifti::VolumeInfo) -> VolumeInfo {
        VolumeInfo {
            format: i.header.version.into(),
            path: i.path,
            header_path: i.header_path,
            data_paths: vec![i.data_path],
            dtype: i.dtype,
            disk_shape: i.disk_shape,
            shape: i.shape,
            spacing: i.spacing,
            affine: i.affine,
            scaling: i.scaling,
            encoding: if i.data_compressed {
                Encoding::Gzip
            } else {
                Encoding::Raw
            },
            data_compressed: i.data_compressed,
            file_bytes: i.file_bytes,
            modified: i.modified,
            header: Header::Nifti(Box::new(i.header)),
        }
    }
}

/// Whether a volume path names something on disk: a file, a folder, or a
/// DICOM `FOLDER#SERIES_UID` whose folder exists.
pub fn exists(path: impl AsRef<Path>) -> bool {
    let path = path.as_ref();
    path.exists() || dicom::folder_target(path).is_some()
}

/// Reads only the header of a volume in any format (and checks that its
/// data files exist and are large enough). Never decodes voxels.
///
/// # Errors
/// A file-naming error for unreadable files, unknown formats, bad headers,
/// unsupported content and missing or too-small data files.
pub fn read_header(path: impl AsRef<Path>) -> Result<VolumeInfo> {
    read_header_with(path, &ReadOptions::default())
}

/// [`read_header`] with options.
///
/// # Errors
/// See [`read_header`].
pub fn read_header_with(path: impl AsRef<Path>, opts: &ReadOptions) -> Result<VolumeInfo> {
    let path = path.as_ref();
    match detect(path)? {
        detect::Kind::Nifti => nifti::read_header_with(path, opts).map(VolumeInfo::from),
        detect::Kind::Dicom => dicom::read_header(path),
        kind => Ok(text_header(path, kind)?.0),
    }
}

/// Reads a whole volume in any format: voxels in their stored type,
/// channel-first, with the RAS affine.
///
/// # Errors
/// As [`read_header`], plus truncated or corrupt voxel data and volumes over
/// `opts.max_voxels`.
pub fn read_volume(path: impl AsRef<Path>) -> Result<Volume> {
    read_volume_with(path, &ReadOptions::default())
}

/// [`read_volume`] with options.
///
/// # Errors
/// See [`read_volume`].
pub fn read_volume_with(path: impl AsRef<Path>, opts: &ReadOptions) -> Result<Volume> {
    let path = path.as_ref();
    match detect(path)? {
        detect::Kind::Nifti => nifti::read_volume_with(path, opts),
        detect::Kind::Dicom => dicom::read_volume(path, opts),
        kind => {
            let (info, layout) = text_header(path, kind)?;
            raw::read(info, &layout, opts)
        }
    }
}

/// Parses a MetaImage or NRRD header and checks its data files.
fn text_header(path: &Path, kind: detect::Kind) -> Result<(VolumeInfo, raw::Layout)> {
    let (format, header, text, layout) = match kind {
        detect::Kind::Nrrd => {
            let (fields, text) = nrrd::read_text(path)?;
            let layout = nrrd::layout(path, &fields, text.end)?;
            (Format::Nrrd, Header::Nrrd(fields), text, layout)
        }
        _ => {
            let (fields, text) = metaimage::read_text(path)?;
            let layout = metaimage::layout(path, &fields, text.end)?;
            (Format::MetaImage, Header::MetaImage(fields), text, layout)
        }
    };
    let mut info = raw::describe(path, path, format, header, &layout, text.file_len)?;
    info.modified = text.modified;
    Ok((info, layout))
}
