//! `dino-run atlas-crops`: writes the linear probe's example set (cut by
//! [`dino3d_tasks::linear_probe::atlas_crops`] from the bundled Colin27 brain)
//! as `images/*.nii.gz` and `datalist.json`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use dino3d_pipeline::nifti::{WriteOptions, write_volume};
use dino3d_tasks::linear_probe::atlas_crops::{self, GROUPS, Options};
use rayon::prelude::*;

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
    #[arg(long, default_value_t = Options::DEFAULT.size)]
    size: usize,
    /// Crops per class and hemisphere.
    #[arg(long, default_value_t = Options::DEFAULT.per_class)]
    per_class: usize,
    /// Fraction of each class's left-hemisphere crops kept for validation.
    #[arg(long, default_value_t = Options::DEFAULT.val_fraction)]
    val_fraction: f64,
    /// Centres at least this many voxels from the midline.
    #[arg(long, default_value_t = Options::DEFAULT.margin)]
    margin: usize,
    /// Seed of the centre draws.
    #[arg(long, default_value_t = Options::DEFAULT.seed)]
    seed: u64,
}

pub(crate) fn run(args: &CropsArgs) -> anyhow::Result<ExitCode> {
    let (t1, ba) = atlas_crops::read_atlas(&args.data)?;
    let options = Options {
        size: args.size,
        per_class: args.per_class,
        val_fraction: args.val_fraction,
        margin: args.margin,
        seed: args.seed,
    };
    let crops = atlas_crops::choose(&t1, &ba, &options)?;
    std::fs::create_dir_all(args.out.join("images"))
        .with_context(|| format!("creating {}", args.out.display()))?;
    let voxels = t1.to_f32();
    let bar = progress::bar(crops.len() as u64, "crops");
    crops.par_iter().try_for_each(|c| {
        let vol = atlas_crops::cut(&t1, &voxels, c.centre, args.size);
        bar.inc(1);
        write_volume(
            args.out.join(&c.file),
            &vol,
            &WriteOptions { gzip_level: 6 },
        )
        .with_context(|| format!("writing {}", c.file))
    })?;
    bar.finish_and_clear();
    let datalist = atlas_crops::datalist(&crops, &t1);
    let path = args.out.join("datalist.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&datalist)?)?;
    let count = |s: &str| crops.iter().filter(|c| c.split == s).count();
    println!(
        "{} crops of {}³ voxels ({} classes; training {}, validation {}, test {}) -> {}",
        crops.len(),
        args.size,
        GROUPS.len(),
        count("training"),
        count("validation"),
        count("test"),
        path.display()
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
fn read_datalist(dir: &std::path::Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("datalist.json")).unwrap()).unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;
    use dino3d_pipeline::nifti::read_volume;

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
