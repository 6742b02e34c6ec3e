//! Manifest rows: the 3DINO pretraining list entry, and the richer scan record.
//!
//! 3DINO's dataset JSON is a list of `{"image": path, "shape": [x, y, z(, t)],
//! "spacing": [sx, sy, sz]}`. Hand-written lists load unchanged: `shape` and
//! `spacing` may be missing or null, and any other keys are kept as they are.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::formats::Format;
use crate::nifti::DType;

/// One entry of a 3DINO pretraining list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestEntry {
    /// The image path, as written in the manifest.
    pub image: String,
    /// The loaded array's shape before channels are moved (x, y, z[, t]).
    #[serde(default)]
    pub shape: Option<Vec<u64>>,
    /// Voxel size of the three spatial axes.
    #[serde(default)]
    pub spacing: Option<Vec<f64>>,
    /// Other keys, kept as they were.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl ManifestEntry {
    /// The smallest of the first three axes, if the shape is known.
    pub fn min_spatial_axis(&self) -> Option<u64> {
        self.shape
            .as_ref()
            .and_then(|s| s.iter().take(3).min().copied())
    }

    /// The image path resolved against the manifest's folder (falling back to the
    /// working directory when it exists only there, as 3DINO's own loader reads
    /// relative paths).
    pub fn resolve(&self, manifest: &Path) -> PathBuf {
        resolve_path(&self.image, manifest)
    }

    /// The path under `key` (`image` or another key such as `label`), resolved
    /// as [`ManifestEntry::resolve`] does; None when the entry lacks the key.
    pub fn resolve_key(&self, key: &str, manifest: &Path) -> Option<PathBuf> {
        if key == "image" {
            return Some(self.resolve(manifest));
        }
        match self.extra.get(key) {
            Some(serde_json::Value::String(p)) => Some(resolve_path(p, manifest)),
            _ => None,
        }
    }
}

fn resolve_path(path: &str, manifest: &Path) -> PathBuf {
    let p = PathBuf::from(path);
    if p.is_absolute() {
        return p;
    }
    let base = manifest.parent().unwrap_or(Path::new(""));
    let beside = base.join(&p);
    if crate::formats::exists(&beside) || !crate::formats::exists(&p) {
        beside
    } else {
        p
    }
}

/// Everything the scanner learns about one readable volume.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScanRecord {
    /// The path as it will be written in the manifest.
    pub image: String,
    /// nibabel's array shape (x, y, z[, t]).
    pub shape: Vec<u64>,
    /// Spatial voxel sizes.
    pub spacing: [f64; 3],
    /// Stored voxel type.
    pub dtype: DType,
    /// Channels after time is moved to the channel axis.
    pub channels: u64,
    /// Header and data bytes on disk.
    pub file_bytes: u64,
    /// Orientation codes of the affine, e.g. `RAS`.
    pub axcodes: String,
    /// Voxel-to-world affine, row-major 4x4.
    pub affine: [f64; 16],
    /// File format (`analyze`, `nifti1`, `nifti2`, `metaimage`, `nrrd`, `dicom`).
    pub format: Format,
    /// Whether the voxels are gzip-compressed.
    pub compressed: bool,
    /// Quick fingerprint (xxh3-64 of size, mtime and header), hex.
    pub fingerprint: String,
}

impl ScanRecord {
    /// The 3DINO list entry for this record.
    pub fn to_entry(&self) -> ManifestEntry {
        ManifestEntry {
            image: self.image.clone(),
            shape: Some(self.shape.clone()),
            spacing: Some(self.spacing.to_vec()),
            extra: serde_json::Map::new(),
        }
    }

    /// The smallest spatial axis.
    pub fn min_spatial_axis(&self) -> u64 {
        self.shape.iter().take(3).copied().min().unwrap_or(0)
    }
}

/// Reads a 3DINO pretraining list (JSON) or a Parquet manifest written by dino3d.
///
/// # Errors
/// When the file cannot be read or is not a list of entries with an `image` key.
pub fn read_manifest(path: &Path) -> Result<Vec<ManifestEntry>> {
    if is_parquet(path) {
        return super::parquet::read_entries(path);
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| {
        Error::manifest(
            path,
            format!("not a list of {{\"image\", \"shape\", \"spacing\"}} entries: {e}"),
        )
    })
}

/// Writes a 3DINO pretraining list as pretty JSON, atomically.
///
/// # Errors
/// I/O failures.
pub fn write_manifest_json(path: &Path, entries: &[ManifestEntry]) -> Result<()> {
    let text =
        serde_json::to_string_pretty(entries).map_err(|e| Error::manifest(path, e.to_string()))?;
    crate::nifti::write_atomic(path, text.as_bytes())
}

/// Whether a manifest path names a Parquet file.
pub fn is_parquet(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("parquet"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_written_3dino_lists_load_unchanged() {
        let text = r#"[
            {"image": "/data/a.nii.gz", "shape": [512, 512, 301], "spacing": [0.7, 0.7, 1.25]},
            {"image": "b.nii", "spacing": null, "modality": "MR"},
            {"image": "c.nii.gz", "shape": [64, 64, 30, 4], "spacing": [1, 1, 3]}
        ]"#;
        let entries: Vec<ManifestEntry> = serde_json::from_str(text).unwrap();
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[0].min_spatial_axis(), Some(301));
        assert_eq!(entries[1].shape, None);
        assert_eq!(entries[1].extra["modality"], "MR");
        assert_eq!(entries[2].min_spatial_axis(), Some(30));
        // Unknown keys survive a round trip.
        let back: Vec<ManifestEntry> =
            serde_json::from_str(&serde_json::to_string(&entries).unwrap()).unwrap();
        assert_eq!(back, entries);
    }
}
