//! A small labelled classification set cut from the bundled Colin27 brain
//! and its Brodmann-area map, for the linear probe's example
//! (`recipes/linear_probe.yaml`; `dino-run atlas-crops` writes it).
//!
//! Each crop is a cube of the T1 volume whose centre voxel lies in one of a
//! few groups of Brodmann areas; its class is that group. Crops centred in
//! the left hemisphere make the training and validation splits, those
//! centred in the right hemisphere the test split (centres within `margin`
//! voxels of the midline are not used), so the test asks whether what was
//! learnt on one hemisphere transfers to the other. A cube that would leave
//! the volume is shifted inside it.

use std::path::Path;

use dino3d_pipeline::nifti::read_volume;
use dino3d_pipeline::{Volume, VolumeMeta, VoxelData};

use super::grid::SplitMix64;
use crate::error::{Context, Result, bail, ensure};

/// The classes: groups of Brodmann areas.
pub const GROUPS: [(&str, &[u16]); 4] = [
    ("visual (BA17-19)", &[17, 18, 19]),
    ("sensorimotor (BA1-4)", &[1, 2, 3, 4]),
    ("prefrontal (BA9, 10, 46)", &[9, 10, 46]),
    ("temporal (BA20-22)", &[20, 21, 22]),
];

/// How the set is cut.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Options {
    /// Crop edge in voxels (1 mm).
    pub size: usize,
    /// Crops per class and hemisphere.
    pub per_class: usize,
    /// Fraction of each class's left-hemisphere crops kept for validation.
    pub val_fraction: f64,
    /// Centres at least this many voxels from the midline.
    pub margin: usize,
    /// Seed of the centre draws.
    pub seed: u64,
}

impl Options {
    /// The example's settings.
    pub const DEFAULT: Options = Options {
        size: 64,
        per_class: 30,
        val_fraction: 0.2,
        margin: 8,
        seed: 0,
    };
}

impl Default for Options {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// A chosen crop.
#[derive(Debug, Clone, PartialEq)]
pub struct Crop {
    /// `training`, `validation` or `test`.
    pub split: &'static str,
    /// Its class (index into [`GROUPS`]).
    pub class: usize,
    /// Its centre voxel.
    pub centre: [usize; 3],
    /// Its file, relative to the output folder.
    pub file: String,
}

/// The T1 volume and its Brodmann-area map from the bundled `data` folder.
///
/// # Errors
/// Unreadable files, or maps on different grids.
pub fn read_atlas(data: &Path) -> Result<(Volume, Volume)> {
    let dir = data.join("volumes/colin27_mricron");
    let t1 = read_volume(dir.join("ch2.nii.gz")).context("reading ch2.nii.gz")?;
    let ba = read_volume(dir.join("brodmann.nii.gz")).context("reading brodmann.nii.gz")?;
    ensure!(
        t1.shape == ba.shape,
        "ch2 {:?} and brodmann {:?} differ",
        t1.shape,
        ba.shape
    );
    Ok((t1, ba))
}

/// Draws the crops: per class and hemisphere, `per_class` centres shuffled
/// from the candidates with a seed of (seed, class, side).
///
/// # Errors
/// Bad options, or a class with too few centres on one side.
pub fn choose(t1: &Volume, ba: &Volume, o: &Options) -> Result<Vec<Crop>> {
    let [_, x, y, z] = t1.shape;
    if o.size == 0 || o.size > x.min(y).min(z) {
        bail!("--size {} must be in 1..={}", o.size, x.min(y).min(z));
    }
    if !(0.0..1.0).contains(&o.val_fraction) {
        bail!("--val-fraction must be in [0, 1)");
    }
    let mid = midline(t1);
    let labels = ba.to_f32();
    // Candidate centres per class and hemisphere (0 left, 1 right).
    let mut cand: Vec<[Vec<[usize; 3]>; 2]> = GROUPS.iter().map(|_| Default::default()).collect();
    for k in 0..z {
        for j in 0..y {
            for i in 0..x {
                let l = labels[(k * y + j) * x + i].round() as u16;
                let Some(g) = GROUPS.iter().position(|(_, areas)| areas.contains(&l)) else {
                    continue;
                };
                let d = i as f64 - mid;
                if d <= -(o.margin as f64) {
                    cand[g][0].push([i, j, k]);
                } else if d >= o.margin as f64 {
                    cand[g][1].push([i, j, k]);
                }
            }
        }
    }
    let mut crops = Vec::new();
    for (g, sides) in cand.iter_mut().enumerate() {
        for (side, c) in sides.iter_mut().enumerate() {
            if c.len() < o.per_class {
                bail!(
                    "class {}: only {} centres in the {} hemisphere",
                    GROUPS[g].0,
                    c.len(),
                    ["left", "right"][side]
                );
            }
            SplitMix64::new(o.seed ^ ((g as u64) << 8 | side as u64)).shuffle(c);
            let n_val = (o.per_class as f64 * o.val_fraction).round() as usize;
            for (n, &centre) in c[..o.per_class].iter().enumerate() {
                let split = match (side, n < n_val) {
                    (1, _) => "test",
                    (_, true) => "validation",
                    _ => "training",
                };
                crops.push(Crop {
                    split,
                    class: g,
                    centre,
                    file: format!("images/{split}_c{g}_{n:03}.nii.gz"),
                });
            }
        }
    }
    Ok(crops)
}

/// The datalist of `crops` (`{training, validation, test, classes}`, each
/// item with its centre in mm).
pub fn datalist(crops: &[Crop], t1: &Volume) -> serde_json::Value {
    let item = |c: &Crop| {
        let w = world(t1, c.centre);
        serde_json::json!({"image": c.file, "label": c.class, "centre_mm": w})
    };
    let part = |s: &str| -> Vec<serde_json::Value> {
        crops.iter().filter(|c| c.split == s).map(item).collect()
    };
    serde_json::json!({
        "training": part("training"),
        "validation": part("validation"),
        "test": part("test"),
        "classes": GROUPS.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
    })
}

/// Voxel x of world x = 0 (the midline of an MNI-space atlas), else the
/// middle of the grid.
fn midline(v: &Volume) -> f64 {
    let a = v.affine;
    if a[0][0] != 0.0 && a[0][1] == 0.0 && a[0][2] == 0.0 {
        -a[0][3] / a[0][0]
    } else {
        v.shape[1] as f64 / 2.0
    }
}

/// The world position (mm) of voxel `ijk`.
pub fn world(v: &Volume, ijk: [usize; 3]) -> [f64; 3] {
    let a = v.affine;
    std::array::from_fn(|r| {
        a[r][0] * ijk[0] as f64 + a[r][1] * ijk[1] as f64 + a[r][2] * ijk[2] as f64 + a[r][3]
    })
}

/// The `size`³ cube around `centre` (shifted inside the volume), stored as
/// u8 when the source is, with its affine moved to the cube's corner.
pub fn cut(src: &Volume, voxels: &[f32], centre: [usize; 3], size: usize) -> Volume {
    let [_, x, y, _] = src.shape;
    let start: [usize; 3] = std::array::from_fn(|a| {
        centre[a]
            .saturating_sub(size / 2)
            .min(src.shape[a + 1] - size)
    });
    let mut out = Vec::with_capacity(size * size * size);
    for k in 0..size {
        for j in 0..size {
            let row = ((start[2] + k) * y + start[1] + j) * x + start[0];
            out.extend_from_slice(&voxels[row..row + size]);
        }
    }
    let data = if matches!(src.data, VoxelData::U8(_)) && src.scaling.is_none() {
        VoxelData::U8(out.iter().map(|&v| v as u8).collect())
    } else {
        VoxelData::F32(out.into())
    };
    let mut affine = src.affine;
    let corner = world(src, start);
    for (r, c) in corner.iter().enumerate() {
        affine[r][3] = *c;
    }
    Volume {
        data,
        shape: [1, size, size, size],
        spacing: src.spacing,
        affine,
        scaling: None,
        meta: VolumeMeta::default(),
    }
}
