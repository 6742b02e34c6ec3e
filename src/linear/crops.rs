//! `dino-run atlas-crops`: a small labelled classification set cut from the
//! bundled Colin27 brain and its Brodmann-area map, for the linear probe's
//! example (`recipes/linear_probe.yaml`).
//!
//! Each crop is a cube of the T1 volume whose centre voxel lies in one of a
//! few groups of Brodmann areas; its class is that group. Crops centred in
//! the left hemisphere make the training and validation splits, those
//! centred in the right hemisphere the test split (centres within `margin`
//! voxels of the midline are not used), so the test asks whether what was
//! learnt on one hemisphere transfers to the other. A cube that would leave
//! the volume is shifted inside it.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;
use dino3d_pipeline::nifti::{WriteOptions, read_volume, write_volume};
use dino3d_pipeline::{Volume, VolumeMeta, VoxelData};
use rayon::prelude::*;

use super::grid::SplitMix64;
use crate::progress;

/// Arguments of `atlas-crops`.
#[derive(Debug, Args)]
pub(crate) struct CropsArgs {
    /// Output folder: `images/*.nii.gz` and `datalist.json`.
    #[arg(long)]
    out: PathBuf,
    /// The bundled data folder.
    #[arg(long, default_value = "data")]
    data: PathBuf,
    /// Crop edge in voxels (1 mm).
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Crops per class and hemisphere.
    #[arg(long, default_value_t = 30)]
    per_class: usize,
    /// Fraction of each class's left-hemisphere crops kept for validation.
    #[arg(long, default_value_t = 0.2)]
    val_fraction: f64,
    /// Centres at least this many voxels from the midline.
    #[arg(long, default_value_t = 8)]
    margin: usize,
    /// Seed of the centre draws.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// The classes: groups of Brodmann areas.
pub(crate) const GROUPS: [(&str, &[u16]); 4] = [
    ("visual (BA17-19)", &[17, 18, 19]),
    ("sensorimotor (BA1-4)", &[1, 2, 3, 4]),
    ("prefrontal (BA9, 10, 46)", &[9, 10, 46]),
    ("temporal (BA20-22)", &[20, 21, 22]),
];

/// A chosen crop.
struct Crop {
    split: &'static str,
    class: usize,
    centre: [usize; 3],
    file: String,
}

pub(crate) fn run(args: &CropsArgs) -> anyhow::Result<ExitCode> {
    let dir = args.data.join("volumes/colin27_mricron");
    let t1 = read_volume(dir.join("ch2.nii.gz")).context("reading ch2.nii.gz")?;
    let ba = read_volume(dir.join("brodmann.nii.gz")).context("reading brodmann.nii.gz")?;
    anyhow::ensure!(
        t1.shape == ba.shape,
        "ch2 {:?} and brodmann {:?} differ",
        t1.shape,
        ba.shape
    );
    let [_, x, y, z] = t1.shape;
    if args.size == 0 || args.size > x.min(y).min(z) {
        bail!("--size {} must be in 1..={}", args.size, x.min(y).min(z));
    }
    if !(0.0..1.0).contains(&args.val_fraction) {
        bail!("--val-fraction must be in [0, 1)");
    }
    let mid = midline(&t1);
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
                if d <= -(args.margin as f64) {
                    cand[g][0].push([i, j, k]);
                } else if d >= args.margin as f64 {
                    cand[g][1].push([i, j, k]);
                }
            }
        }
    }
    let mut crops = Vec::new();
    for (g, sides) in cand.iter_mut().enumerate() {
        for (side, c) in sides.iter_mut().enumerate() {
            if c.len() < args.per_class {
                bail!(
                    "class {}: only {} centres in the {} hemisphere",
                    GROUPS[g].0,
                    c.len(),
                    ["left", "right"][side]
                );
            }
            SplitMix64::new(args.seed ^ ((g as u64) << 8 | side as u64)).shuffle(c);
            let n_val = (args.per_class as f64 * args.val_fraction).round() as usize;
            for (n, &centre) in c[..args.per_class].iter().enumerate() {
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
    std::fs::create_dir_all(args.out.join("images"))
        .with_context(|| format!("creating {}", args.out.display()))?;
    let voxels = t1.to_f32();
    let bar = progress::bar(crops.len() as u64, "crops");
    crops.par_iter().try_for_each(|c| {
        let vol = cut(&t1, &voxels, c.centre, args.size);
        bar.inc(1);
        write_volume(
            args.out.join(&c.file),
            &vol,
            &WriteOptions { gzip_level: 6 },
        )
        .with_context(|| format!("writing {}", c.file))
    })?;
    bar.finish_and_clear();
    let item = |c: &Crop| {
        let w = world(&t1, c.centre);
        serde_json::json!({"image": c.file, "label": c.class, "centre_mm": w})
    };
    let part = |s: &str| -> Vec<serde_json::Value> {
        crops.iter().filter(|c| c.split == s).map(item).collect()
    };
    let datalist = serde_json::json!({
        "training": part("training"),
        "validation": part("validation"),
        "test": part("test"),
        "classes": GROUPS.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
    });
    let path = args.out.join("datalist.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&datalist)?)?;
    println!(
        "{} crops of {}³ voxels ({} classes; training {}, validation {}, test {}) -> {}",
        crops.len(),
        args.size,
        GROUPS.len(),
        part("training").len(),
        part("validation").len(),
        part("test").len(),
        path.display()
    );
    Ok(ExitCode::SUCCESS)
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

fn world(v: &Volume, ijk: [usize; 3]) -> [f64; 3] {
    let a = v.affine;
    std::array::from_fn(|r| {
        a[r][0] * ijk[0] as f64 + a[r][1] * ijk[1] as f64 + a[r][2] * ijk[2] as f64 + a[r][3]
    })
}

/// The `size`³ cube around `centre` (shifted inside the volume), stored as
/// u8 when the source is, with its affine moved to the cube's corner.
fn cut(src: &Volume, voxels: &[f32], centre: [usize; 3], size: usize) -> Volume {
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

#[cfg(test)]
fn read_datalist(dir: &std::path::Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("datalist.json")).unwrap()).unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crops_are_labelled_by_their_centre_and_split_by_hemisphere() {
        let out = tempfile::tempdir().unwrap();
        let data = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data");
        let args = CropsArgs {
            out: out.path().to_path_buf(),
            data: data.clone(),
            size: 16,
            per_class: 5,
            val_fraction: 0.2,
            margin: 8,
            seed: 1,
        };
        run(&args).unwrap();
        let d = read_datalist(out.path());
        assert_eq!(d["training"].as_array().unwrap().len(), 4 * 4);
        assert_eq!(d["validation"].as_array().unwrap().len(), 4);
        assert_eq!(d["test"].as_array().unwrap().len(), 4 * 5);
        let ba = read_volume(data.join("volumes/colin27_mricron/brodmann.nii.gz")).unwrap();
        let t1 = read_volume(data.join("volumes/colin27_mricron/ch2.nii.gz")).unwrap();
        let labels = ba.to_f32();
        let t1v = t1.to_f32();
        for (split, left) in [("training", true), ("validation", true), ("test", false)] {
            for it in d[split].as_array().unwrap() {
                let c: Vec<f64> = serde_json::from_value(it["centre_mm"].clone()).unwrap();
                // Colin27's affine is a shift: voxel = world - offset.
                let ijk = [c[0] + 90.0, c[1] + 125.0, c[2] + 71.0].map(|v| v as usize);
                assert_eq!(c[0] < 0.0, left, "{split}: {c:?}");
                assert!(c[0].abs() >= 8.0);
                let l = labels[(ijk[2] * 217 + ijk[1]) * 181 + ijk[0]] as u16;
                let class = it["label"].as_u64().unwrap() as usize;
                assert!(
                    GROUPS[class].1.contains(&l),
                    "{l} not in {}",
                    GROUPS[class].0
                );
                // The crop holds the source voxels around the centre.
                let v = read_volume(out.path().join(it["image"].as_str().unwrap())).unwrap();
                assert_eq!(v.shape, [1, 16, 16, 16]);
                let start = [
                    v.affine[0][3] + 90.0,
                    v.affine[1][3] + 125.0,
                    v.affine[2][3] + 71.0,
                ]
                .map(|s| s as usize);
                assert!((0..3).all(|a| start[a] <= ijk[a] && ijk[a] < start[a] + 16));
                let off = [ijk[0] - start[0], ijk[1] - start[1], ijk[2] - start[2]];
                assert_eq!(
                    v.to_f32()[(off[2] * 16 + off[1]) * 16 + off[0]],
                    t1v[(ijk[2] * 217 + ijk[1]) * 181 + ijk[0]]
                );
            }
        }
    }
}
