//! Which reader a file needs (by extension, else by its first bytes), which
//! names a folder scan keeps, and which files make up a volume.

use std::io::Read;
use std::path::{Path, PathBuf};

use super::dicom;
use crate::error::{Error, Result};

/// The reader a file needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// NIfTI-1/2 or Analyze.
    Nifti,
    /// MetaImage.
    MetaImage,
    /// NRRD.
    Nrrd,
    /// DICOM (a file, a series folder or `FOLDER#SERIES_UID`).
    Dicom,
}

/// Extensions a folder scan keeps (headers and single files; never the
/// data halves `.img`, `.raw`, `.zraw`, which their headers name).
const SCANNED: [(&str, Kind); 8] = [
    (".nii", Kind::Nifti),
    (".nii.gz", Kind::Nifti),
    (".hdr", Kind::Nifti),
    (".hdr.gz", Kind::Nifti),
    (".mha", Kind::MetaImage),
    (".mhd", Kind::MetaImage),
    (".nrrd", Kind::Nrrd),
    (".nhdr", Kind::Nrrd),
];

/// Keys a MetaImage header starts with (MetaIO writes one of these first).
const METAIMAGE_KEYS: [&str; 6] = [
    "ObjectType",
    "NDims",
    "Comment",
    "ObjectSubType",
    "TransformType",
    "DimSize",
];

fn lower_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default()
}

fn by_extension(path: &Path) -> Option<Kind> {
    let name = lower_name(path);
    if name.ends_with(".img") || name.ends_with(".img.gz") {
        return Some(Kind::Nifti);
    }
    SCANNED
        .iter()
        .find(|(ext, _)| name.ends_with(ext))
        .map(|&(_, k)| k)
}

/// Whether a file name is one a folder scan keeps (`.nii`, `.nii.gz`,
/// `.hdr`, `.hdr.gz`, `.mha`, `.mhd`, `.nrrd`, `.nhdr`).
pub fn is_volume_name(path: &Path) -> bool {
    let name = lower_name(path);
    SCANNED.iter().any(|(ext, _)| name.ends_with(ext))
}

/// The reader `path` needs: a folder (or `FOLDER#SERIES_UID`) is a DICOM
/// series; a file is told by extension, else by its first bytes.
///
/// # Errors
/// When the file cannot be read, or is in no format dino3d reads.
pub fn detect(path: &Path) -> Result<Kind> {
    if dicom::folder_target(path).is_some() || dicom::is_dicom_name(path) {
        return Ok(Kind::Dicom);
    }
    if let Some(k) = by_extension(path) {
        return Ok(k);
    }
    let mut head = Vec::with_capacity(512);
    std::fs::File::open(path)
        .and_then(|f| f.take(512).read_to_end(&mut head))
        .map_err(|e| Error::io(path, e))?;
    sniff(&head).ok_or_else(|| Error::Unsupported {
        path: path.to_path_buf(),
        what: "not a volume format dino3d reads (NIfTI, Analyze, MetaImage, NRRD, DICOM)".into(),
    })
}

/// The format the first bytes of a file show.
fn sniff(head: &[u8]) -> Option<Kind> {
    if dicom::has_magic(head) {
        return Some(Kind::Dicom);
    }
    if super::nrrd::is_nrrd(head) {
        return Some(Kind::Nrrd);
    }
    if head.len() >= 2 && head[0] == 0x1f && head[1] == 0x8b {
        return Some(Kind::Nifti); // .nii.gz under another name
    }
    if head.len() >= 4 {
        let size = [
            i32::from_le_bytes([head[0], head[1], head[2], head[3]]),
            i32::from_be_bytes([head[0], head[1], head[2], head[3]]),
        ];
        if size.iter().any(|&s| s == 348 || s == 540) {
            return Some(Kind::Nifti);
        }
    }
    let text = String::from_utf8_lossy(head);
    let first = text.lines().find(|l| !l.trim().is_empty())?;
    let key = first.split('=').next()?.trim();
    (first.contains('=') && METAIMAGE_KEYS.iter().any(|k| k.eq_ignore_ascii_case(key)))
        .then_some(Kind::MetaImage)
}

/// Every file that makes up the volume at `path`: the header and its data
/// files (one file for `.nii`, `.nii.gz`, `.nrrd` and `LOCAL` `.mha`; every
/// file of a DICOM series), so a fingerprint over them changes when any of
/// them does.
///
/// # Errors
/// When the header cannot be read.
pub fn source_files(path: &Path) -> Result<Vec<PathBuf>> {
    let name = lower_name(path);
    if name.ends_with(".nii") || name.ends_with(".nii.gz") {
        return Ok(vec![path.to_path_buf()]);
    }
    if detect(path)? == Kind::Dicom {
        return dicom::source_files(path);
    }
    let info = super::read_header(path)?;
    let mut files = vec![info.header_path];
    for p in info.data_paths {
        if !files.contains(&p) {
            files.push(p);
        }
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_magic_pick_the_reader() {
        assert_eq!(by_extension(Path::new("a/B.MHA")), Some(Kind::MetaImage));
        assert_eq!(by_extension(Path::new("a.nhdr")), Some(Kind::Nrrd));
        assert_eq!(by_extension(Path::new("a.img.gz")), Some(Kind::Nifti));
        assert_eq!(by_extension(Path::new("a.dat")), None);
        assert!(is_volume_name(Path::new("x.nrrd")) && !is_volume_name(Path::new("x.raw")));
        assert_eq!(sniff(b"NRRD0004\ntype: short"), Some(Kind::Nrrd));
        assert_eq!(
            sniff(b"ObjectType = Image\nNDims = 3"),
            Some(Kind::MetaImage)
        );
        assert_eq!(sniff(&348i32.to_le_bytes()), Some(Kind::Nifti));
        assert_eq!(sniff(b"hello world"), None);
    }
}
