//! Finetuning datalists: `{"training": [...], "validation": [...], "test": [...]}`
//! as 3DINO's finetuning scripts read them.
//!
//! Items are paired image/label files (segmentation) or an image with an integer
//! class (classification). The split is a deterministic function of the seed and
//! the item names: each item is ordered by `xxh3(seed, image)`, so adding a file
//! never reshuffles the others and the result is identical on every machine.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A datalist item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatalistItem {
    /// Image path (may be left out when the item names its channels as other
    /// keys, as 3DINO's BraTS lists do with `image1`..`image4`).
    #[serde(default)]
    pub image: String,
    /// A label map path (segmentation) or an integer class (classification).
    pub label: serde_json::Value,
    /// Other keys (`image1`..`image4`, ...), read by recipes whose `data.keys`
    /// name them.
    #[serde(flatten, default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl DatalistItem {
    /// The item's main image: `image`, else the first `image<N>` key.
    pub fn primary_image(&self) -> Option<&str> {
        if !self.image.is_empty() {
            return Some(&self.image);
        }
        self.extra
            .iter()
            .find(|(k, _)| k.starts_with("image"))
            .and_then(|(_, v)| v.as_str())
    }
}

/// A finetuning datalist.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Datalist {
    /// Training items.
    pub training: Vec<DatalistItem>,
    /// Validation items.
    pub validation: Vec<DatalistItem>,
    /// Test items.
    pub test: Vec<DatalistItem>,
}

/// The name stem without volume extensions (`a/b.nii.gz` -> `b`, `c.mha` -> `c`).
pub fn volume_stem(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let lower = name.to_ascii_lowercase();
    for ext in [
        ".nii.gz", ".nii", ".hdr.gz", ".hdr", ".img.gz", ".img", ".mha", ".mhd", ".nrrd", ".nhdr",
        ".dcm", ".dicom",
    ] {
        if lower.ends_with(ext) {
            return name[..name.len() - ext.len()].to_string();
        }
    }
    name
}

/// A looser key for pairing names that differ only by role words or separators
/// (`img0001` / `label0001`, `case_3_image` / `case_3_seg`).
fn loose_key(stem: &str) -> String {
    let lower = stem.to_ascii_lowercase();
    let mut parts: Vec<&str> = lower
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|p| !p.is_empty())
        .collect();
    const ROLE: [&str; 10] = [
        "img",
        "image",
        "images",
        "label",
        "labels",
        "seg",
        "segmentation",
        "mask",
        "gt",
        "lbl",
    ];
    parts.retain(|p| !ROLE.contains(p));
    let joined = parts.join("_");
    // Role words glued to digits: img0001 / label0001.
    let trimmed = ROLE
        .iter()
        .filter_map(|r| joined.strip_prefix(r))
        .find(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
        .unwrap_or(&joined);
    trimmed.to_string()
}

/// The outcome of [`pair_by_name`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Pairing {
    /// (image, label) pairs, in image order.
    pub pairs: Vec<(PathBuf, PathBuf)>,
    /// Images without a label.
    pub unpaired_images: Vec<PathBuf>,
    /// Labels without an image.
    pub unpaired_labels: Vec<PathBuf>,
}

/// Pairs images with labels by name: exact stems first, then the loose key.
///
/// # Errors
/// When a name is ambiguous; unpaired files are returned, not errors.
pub fn pair_by_name(images: &[PathBuf], labels: &[PathBuf]) -> Result<Pairing> {
    let mut by_stem: BTreeMap<String, PathBuf> = BTreeMap::new();
    let mut by_loose: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for l in labels {
        if let Some(other) = by_stem.insert(volume_stem(l), l.clone()) {
            return Err(Error::manifest(
                l,
                format!(
                    "two labels share the name {:?}: {}",
                    volume_stem(l),
                    other.display()
                ),
            ));
        }
        by_loose
            .entry(loose_key(&volume_stem(l)))
            .or_default()
            .push(l.clone());
    }
    let mut used = std::collections::BTreeSet::new();
    let mut pairs = Vec::new();
    let mut lonely_images = Vec::new();
    for img in images {
        let stem = volume_stem(img);
        let found = match by_stem.get(&stem) {
            Some(l) => Some(l.clone()),
            None => match by_loose.get(&loose_key(&stem)).map(Vec::as_slice) {
                Some([l]) => Some(l.clone()),
                Some(many) if many.len() > 1 => {
                    return Err(Error::manifest(
                        img,
                        format!("several labels match this image: {many:?}"),
                    ));
                }
                _ => None,
            },
        };
        match found {
            Some(l) if used.insert(l.clone()) => pairs.push((img.clone(), l)),
            Some(l) => {
                return Err(Error::manifest(
                    img,
                    format!("label {} matches two images", l.display()),
                ));
            }
            None => lonely_images.push(img.clone()),
        }
    }
    let unpaired_labels = labels
        .iter()
        .filter(|l| !used.contains(*l))
        .cloned()
        .collect();
    Ok(Pairing {
        pairs,
        unpaired_images: lonely_images,
        unpaired_labels,
    })
}

/// Splits `items` into training/validation/test with `ratios` (normalised to sum
/// to 1), deterministically from `seed`.
///
/// # Errors
/// When ratios are negative or all zero.
pub fn split(mut items: Vec<DatalistItem>, ratios: [f64; 3], seed: u64) -> Result<Datalist> {
    let total: f64 = ratios.iter().sum();
    if ratios.iter().any(|r| *r < 0.0 || !r.is_finite()) || total <= 0.0 {
        return Err(Error::manifest(
            "<split>",
            format!("ratios {ratios:?} must be non-negative with a positive sum"),
        ));
    }
    items.sort_by_cached_key(|it| {
        (
            xxhash_rust::xxh3::xxh3_64_with_seed(it.image.as_bytes(), seed),
            it.image.clone(),
        )
    });
    let [n_train, n_val, _] = largest_remainder(items.len(), ratios.map(|r| r / total));
    let mut rest = items.split_off(n_train);
    let test = rest.split_off(n_val);
    Ok(Datalist {
        training: items,
        validation: rest,
        test,
    })
}

/// Splits `n` into three counts proportional to `shares` (summing to 1) that add
/// up to `n`: floors first, then the leftovers to the largest remainders (ties to
/// the earlier part), so no part with a share is starved by rounding.
fn largest_remainder(n: usize, shares: [f64; 3]) -> [usize; 3] {
    let exact = shares.map(|s| s * n as f64);
    let mut counts = exact.map(|e| (e.floor() as usize).min(n));
    let mut order = [0, 1, 2];
    order.sort_by(|&a, &b| {
        let (ra, rb) = (exact[a] - exact[a].floor(), exact[b] - exact[b].floor());
        rb.total_cmp(&ra).then(a.cmp(&b))
    });
    let mut left = n.saturating_sub(counts.iter().sum::<usize>());
    for &i in &order {
        if left > 0 && shares[i] > 0.0 {
            counts[i] += 1;
            left -= 1;
        }
    }
    counts[0] += left;
    counts
}

/// Reads `image,label` rows from a CSV with a header line. Integer labels give a
/// classification list; anything else is taken as a label-map path.
///
/// # Errors
/// When the CSV cannot be read or lacks the `image` and `label` columns.
pub fn read_csv(path: &Path) -> Result<Vec<DatalistItem>> {
    let mut reader =
        csv::Reader::from_path(path).map_err(|e| Error::manifest(path, e.to_string()))?;
    let headers = reader
        .headers()
        .map_err(|e| Error::manifest(path, e.to_string()))?
        .clone();
    let col = |name: &str| {
        headers
            .iter()
            .position(|h| h.trim().eq_ignore_ascii_case(name))
            .ok_or_else(|| Error::manifest(path, format!("no `{name}` column (have {headers:?})")))
    };
    let (ci, cl) = (col("image")?, col("label")?);
    let mut items = Vec::new();
    for (i, rec) in reader.records().enumerate() {
        let rec = rec.map_err(|e| Error::manifest(path, format!("row {}: {e}", i + 2)))?;
        let image = rec.get(ci).unwrap_or_default().trim().to_string();
        let raw = rec.get(cl).unwrap_or_default().trim();
        let label = match raw.parse::<i64>() {
            Ok(v) => serde_json::Value::from(v),
            Err(_) => serde_json::Value::from(raw),
        };
        items.push(DatalistItem {
            image,
            label,
            extra: BTreeMap::new(),
        });
    }
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stems_drop_every_volume_extension() {
        for (name, stem) in [
            ("a/case1.nii.gz", "case1"),
            ("case1.mha", "case1"),
            ("case1.MHD", "case1"),
            ("x/case1.nrrd", "case1"),
            ("case1.nhdr", "case1"),
        ] {
            assert_eq!(volume_stem(Path::new(name)), stem, "{name}");
        }
    }

    fn items(n: usize) -> Vec<DatalistItem> {
        (0..n)
            .map(|i| DatalistItem {
                image: format!("img{i:04}.nii.gz"),
                label: serde_json::Value::from(i as i64 % 3),
                extra: BTreeMap::new(),
            })
            .collect()
    }

    #[test]
    fn split_is_deterministic_complete_and_proportional() {
        let a = split(items(100), [0.7, 0.2, 0.1], 7).unwrap();
        let b = split(items(100).into_iter().rev().collect(), [0.7, 0.2, 0.1], 7).unwrap();
        assert_eq!(a, b, "input order must not matter");
        assert_eq!(
            (a.training.len(), a.validation.len(), a.test.len()),
            (70, 20, 10)
        );
        let c = split(items(100), [0.7, 0.2, 0.1], 8).unwrap();
        assert_ne!(a.training, c.training, "the seed must matter");
        let mut all: Vec<_> = a
            .training
            .iter()
            .chain(&a.validation)
            .chain(&a.test)
            .map(|i| &i.image)
            .collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 100);
        assert!(split(items(3), [0.0, 0.0, 0.0], 0).is_err());
        // Rounding never starves a part that has a share, and counts add up.
        let d = split(items(10), [0.45, 0.45, 0.1], 0).unwrap();
        assert_eq!(
            (d.training.len(), d.validation.len(), d.test.len()),
            (5, 4, 1)
        );
        let d = split(items(1), [0.7, 0.15, 0.15], 0).unwrap();
        assert_eq!(d.training.len() + d.validation.len() + d.test.len(), 1);
        assert_eq!(largest_remainder(7, [1.0, 0.0, 0.0]), [7, 0, 0]);
        assert_eq!(largest_remainder(0, [0.5, 0.25, 0.25]), [0, 0, 0]);
    }

    #[test]
    fn names_pair_exactly_or_by_role_words() {
        let imgs: Vec<PathBuf> = [
            "i/img0001.nii.gz",
            "i/img0002.nii.gz",
            "i/case_7.nii",
            "i/lonely.nii",
        ]
        .iter()
        .map(PathBuf::from)
        .collect();
        let labs: Vec<PathBuf> = [
            "l/label0001.nii.gz",
            "l/label0002.nii.gz",
            "l/case_7.nii",
            "l/extra.nii",
        ]
        .iter()
        .map(PathBuf::from)
        .collect();
        let Pairing {
            pairs,
            unpaired_images: li,
            unpaired_labels: ll,
        } = pair_by_name(&imgs, &labs).unwrap();
        assert_eq!(pairs.len(), 3);
        assert_eq!(pairs[0].1, PathBuf::from("l/label0001.nii.gz"));
        assert_eq!(pairs[2].1, PathBuf::from("l/case_7.nii"));
        assert_eq!(li, vec![PathBuf::from("i/lonely.nii")]);
        assert_eq!(ll, vec![PathBuf::from("l/extra.nii")]);
    }
}
