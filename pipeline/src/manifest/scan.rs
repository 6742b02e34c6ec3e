//! Finding volumes on disk and reading their headers in parallel.
//!
//! Only headers are read (a few hundred inflated bytes per file), so a scan of
//! 100k scans is bounded by the file system, not by decoding. Unreadable files
//! never abort the scan: they come back as [`Reject`]s.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use rayon::prelude::*;

use super::record::ScanRecord;
use crate::error::{Error, Result};
use crate::formats;
use crate::nifti::affine;

/// A file the scanner could not use, and why.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Reject {
    /// The file.
    pub file: String,
    /// What is wrong with it.
    pub reason: String,
}

/// How manifest paths are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PathStyle {
    /// Relative to the manifest's folder (portable with the data).
    #[default]
    RelativeToManifest,
    /// Absolute.
    Absolute,
}

/// Options for [`scan`].
#[derive(Debug, Clone, Default)]
pub struct ScanOptions {
    /// Drop volumes whose smallest spatial axis is `<=` this (3DINO's
    /// `data_min_axis_size`).
    pub min_axis: Option<u64>,
    /// How paths are written.
    pub path_style: PathStyle,
    /// The manifest being written (for relative paths).
    pub manifest_path: Option<PathBuf>,
}

/// What a scan found.
#[derive(Debug, Clone, Default)]
pub struct ScanResult {
    /// Readable volumes kept, in path order.
    pub records: Vec<ScanRecord>,
    /// Unreadable files, in path order.
    pub rejects: Vec<Reject>,
    /// Readable volumes dropped by `min_axis`.
    pub too_small: usize,
}

/// Whether a file name looks like a volume header or single file (NIfTI,
/// Analyze, MetaImage, NRRD; see [`formats::is_volume_name`]).
pub fn is_volume_name(path: &Path) -> bool {
    formats::is_volume_name(path)
}

/// Expands folders (recursively), glob patterns and plain files into a sorted,
/// de-duplicated list of volume files. Folders and glob matches keep only
/// volume names (`.nii`, `.nii.gz`, `.hdr`, `.hdr.gz`, `.mha`, `.mhd`,
/// `.nrrd`, `.nhdr`; never data halves such as `.img` or `.raw`); a file
/// named explicitly is always taken. A folder holding DICOM files gives one
/// volume per series: the folder itself, or `FOLDER#SERIES_UID` for each
/// series when it holds several (see [`formats::dicom`]).
///
/// # Errors
/// When an input names nothing that exists, or a glob pattern is malformed.
pub fn discover(inputs: &[String]) -> Result<Vec<PathBuf>> {
    Ok(discover_reporting(inputs)?.0)
}

/// [`discover`], also returning the entries that could not be listed
/// (unreadable folders, broken links, symlink loops) instead of failing on them.
///
/// # Errors
/// When an input names nothing that exists, or a glob pattern is malformed.
pub fn discover_reporting(inputs: &[String]) -> Result<(Vec<PathBuf>, Vec<Reject>)> {
    let mut files = Vec::new();
    let mut problems = Vec::new();
    for input in inputs {
        let path = Path::new(input);
        if path.is_dir() {
            walk(path, &mut files, &mut problems);
        } else if path.is_file() || formats::dicom::folder_target(path).is_some() {
            // A file named explicitly, or FOLDER#SERIES_UID.
            files.push(path.to_path_buf());
        } else if input.contains(['*', '?', '[']) {
            let paths = glob::glob(input)
                .map_err(|e| Error::manifest(input, format!("bad glob pattern: {e}")))?;
            for p in paths {
                match p {
                    Ok(p) if p.is_file() && is_volume_name(&p) => files.push(p),
                    Ok(p) if p.is_dir() => walk(&p, &mut files, &mut problems),
                    Ok(_) => {}
                    Err(e) => problems.push(Reject {
                        file: e.path().display().to_string(),
                        reason: e.error().to_string(),
                    }),
                }
            }
        } else {
            return Err(Error::io(
                path,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such file, folder or glob"),
            ));
        }
    }
    files.sort();
    files.dedup();
    Ok((files, problems))
}

/// Names that are never DICOM (data halves, tables, pictures): not opened
/// to look for the DICOM magic.
const NOT_DICOM: [&str; 12] = [
    ".raw", ".zraw", ".img", ".gz", ".json", ".jsonl", ".csv", ".parquet", ".txt", ".md", ".yaml",
    ".png",
];

fn maybe_dicom(path: &Path) -> bool {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    !name.starts_with('.')
        && !NOT_DICOM.iter().any(|e| name.ends_with(e))
        && formats::dicom::is_dicom_file(path)
}

fn walk(dir: &Path, files: &mut Vec<PathBuf>, problems: &mut Vec<Reject>) {
    let mut dicom_dirs = std::collections::BTreeSet::new();
    for entry in walkdir::WalkDir::new(dir).follow_links(true) {
        match entry {
            Ok(e) if e.file_type().is_file() && is_volume_name(e.path()) => {
                files.push(e.into_path());
            }
            Ok(e) if e.file_type().is_file() && maybe_dicom(e.path()) => {
                if let Some(parent) = e.path().parent() {
                    dicom_dirs.insert(parent.to_path_buf());
                }
            }
            Ok(_) => {}
            Err(e) => problems.push(Reject {
                file: e.path().unwrap_or(dir).display().to_string(),
                reason: format!("cannot list: {e}"),
            }),
        }
    }
    // A DICOM folder is one volume per series; its files are not volumes.
    for d in dicom_dirs {
        match formats::dicom::series_paths(&d) {
            Ok(series) => files.extend(series),
            Err(e) => problems.push(Reject {
                file: d.display().to_string(),
                reason: e.to_string(),
            }),
        }
    }
}

/// Reads the header of every file in parallel (rayon), calling `progress` with
/// the number of files done so far.
pub fn scan(
    files: &[PathBuf],
    opts: &ScanOptions,
    progress: &(dyn Fn(usize) + Sync),
) -> ScanResult {
    let done = AtomicUsize::new(0);
    let base = opts.manifest_path.as_deref().map(manifest_dir);
    let outcomes: Vec<std::result::Result<ScanRecord, Reject>> = files
        .par_iter()
        .map(|path| {
            let out = scan_one(path, opts.path_style, base.as_deref()).map_err(|e| Reject {
                file: path.display().to_string(),
                reason: e.to_string(),
            });
            progress(done.fetch_add(1, Ordering::Relaxed) + 1);
            out
        })
        .collect();
    let mut result = ScanResult::default();
    for outcome in outcomes {
        match outcome {
            Ok(r) if opts.min_axis.is_some_and(|m| r.min_spatial_axis() <= m) => {
                result.too_small += 1;
            }
            Ok(r) => result.records.push(r),
            Err(rej) => result.rejects.push(rej),
        }
    }
    result
}

/// The absolute folder of a manifest path (`m.json` -> the working directory).
pub fn manifest_dir(manifest: &Path) -> PathBuf {
    match manifest.parent() {
        Some(p) if !p.as_os_str().is_empty() => absolute(p),
        _ => absolute(Path::new(".")),
    }
}

/// `p` made absolute with `.` and `..` resolved lexically (no symlinks followed),
/// so relative paths between two of them are right.
pub fn absolute(p: &Path) -> PathBuf {
    let abs = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let mut out = PathBuf::new();
    for c in abs.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

fn scan_one(path: &Path, style: PathStyle, base: Option<&Path>) -> Result<ScanRecord> {
    let info = formats::read_header(path)?;
    // The header read already stat'ed the file: no second stat per file.
    let mtime = info
        .modified
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    hasher.update(&info.file_bytes.to_le_bytes());
    hasher.update(&mtime.to_le_bytes());
    hasher.update(&info.header.to_bytes());
    let abs = absolute(path);
    let image = match (style, base) {
        (PathStyle::RelativeToManifest, Some(base)) => relative_to(&abs, base),
        _ => abs,
    };
    let mut flat = [0.0; 16];
    for (i, row) in info.affine.iter().enumerate() {
        flat[i * 4..i * 4 + 4].copy_from_slice(row);
    }
    Ok(ScanRecord {
        image: image.to_string_lossy().into_owned(),
        channels: info.shape[0] as u64,
        shape: info.disk_shape,
        spacing: info.spacing,
        dtype: info.dtype,
        file_bytes: info.file_bytes,
        axcodes: affine::axcodes(&info.affine).iter().collect(),
        affine: flat,
        format: info.format,
        compressed: info.data_compressed,
        fingerprint: format!("{:016x}", hasher.digest()),
    })
}

/// `path` relative to `base` (both absolute), with `..` where needed.
pub fn relative_to(path: &Path, base: &Path) -> PathBuf {
    let p: Vec<_> = path.components().collect();
    let b: Vec<_> = base.components().collect();
    let common = p.iter().zip(&b).take_while(|(x, y)| x == y).count();
    if common == 0 {
        return path.to_path_buf();
    }
    let mut out = PathBuf::new();
    for _ in common..b.len() {
        out.push("..");
    }
    for c in &p[common..] {
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_dot_is_resolved_before_relating_paths() {
        let base = absolute(Path::new("/a/b/../c/./d"));
        assert_eq!(base, PathBuf::from("/a/c/d"));
    }

    #[test]
    fn relative_paths_climb_where_needed() {
        let r = relative_to(Path::new("/a/b/c/x.nii"), Path::new("/a/b/d"));
        assert_eq!(r, PathBuf::from("../c/x.nii"));
        let r = relative_to(Path::new("/a/b/x.nii"), Path::new("/a/b"));
        assert_eq!(r, PathBuf::from("x.nii"));
    }

    #[test]
    fn volume_names_are_recognised_case_insensitively() {
        assert!(is_volume_name(Path::new("a/B.NII.GZ")));
        assert!(is_volume_name(Path::new("a/b.hdr")));
        assert!(!is_volume_name(Path::new("a/b.img")));
        assert!(!is_volume_name(Path::new("a/b.json")));
    }
}
