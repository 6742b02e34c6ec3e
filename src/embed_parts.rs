//! `embed --manifest` as one rank of a launched job: rank r of W embeds the
//! entries r, r+W, ... into `OUT/part-r-of-W.parquet` (OUT becomes a folder,
//! a Parquet dataset that polars or pyarrow read whole) with its summary
//! beside it; the rank that finishes last writes `OUT/_SUCCESS`, the job's
//! summary. The last rank, not rank 0: nothing connects the processes, and
//! rank 0 would otherwise have to wait for the others.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use dino3d_model::ViT3d;
use dino3d_pipeline::manifest::ManifestEntry;
use dino3d_tasks::distributed::LaunchEnv;
use serde_json::json;

use crate::embed_table::{TableOptions, write_table};

fn part_name(rank: usize, world: usize, ext: &str) -> String {
    format!("part-{rank:05}-of-{world:05}.{ext}")
}

/// This rank's part, its summary, and `_SUCCESS` when it is the last.
pub(crate) fn run_part(
    vit: &ViT3d,
    entries: &[ManifestEntry],
    o: &TableOptions,
    env: &LaunchEnv,
) -> anyhow::Result<ExitCode> {
    let (rank, world) = (env.rank, env.world_size);
    let dir = o.out;
    if dir.is_file() {
        bail!(
            "{} is a file: a job of {world} ranks writes a folder of parts there",
            dir.display()
        );
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mine: Vec<ManifestEntry> = entries.iter().skip(rank).step_by(world).cloned().collect();
    let part = dir.join(part_name(rank, world, "parquet"));
    let (written, skipped) = write_table(vit, &mine, o, &part)?;
    let summary = json!({
        "rank": rank, "world_size": world, "entries": mine.len(),
        "rows": written, "skipped": skipped,
        "file": part.file_name().map(|n| n.to_string_lossy().into_owned()),
    });
    write_atomic(
        &dir.join(part_name(rank, world, "json")),
        &serde_json::to_vec_pretty(&summary)?,
    )?;
    println!(
        "rank {rank} of {world}: {written} of {} volumes embedded, {skipped} skipped -> {}",
        mine.len(),
        part.display()
    );
    if let Some(success) = finish_if_last(dir, world, entries.len())? {
        println!("all {world} parts written: {}", success.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes `_SUCCESS` once every part's summary exists; `None` while some
/// are missing. Each rank writes its summary before looking, so the last
/// one sees them all; two finishing together race on `create_new`.
fn finish_if_last(dir: &Path, world: usize, entries: usize) -> anyhow::Result<Option<PathBuf>> {
    let mut parts = Vec::with_capacity(world);
    for r in 0..world {
        let path = dir.join(part_name(r, world, "json"));
        match std::fs::read(&path) {
            Ok(bytes) => parts.push(serde_json::from_slice::<serde_json::Value>(&bytes)?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }
    let total = |k: &str| parts.iter().filter_map(|p| p[k].as_u64()).sum::<u64>();
    let summary = json!({
        "world_size": world, "entries": entries,
        "rows": total("rows"), "skipped": total("skipped"), "parts": parts,
    });
    let path = dir.join("_SUCCESS");
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
    {
        Ok(mut f) => {
            use std::io::Write;
            f.write_all(&serde_json::to_vec_pretty(&summary)?)?;
            Ok(Some(path))
        }
        // Another rank finished at the same moment and wrote it.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(None),
        Err(e) => Err(e).with_context(|| format!("writing {}", path.display())),
    }
}

/// Write then rename: a reader never sees half a summary.
fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("json.partial");
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use dino3d_model::candle_core::Device;
    use dino3d_pipeline::manifest::read_manifest;
    use dino3d_pipeline::{Volume, VolumeMeta, VoxelData};
    use dino3d_tasks::distributed::LaunchSource;
    use dino3d_tasks::embed::Prep;

    fn env(rank: usize, world: usize) -> LaunchEnv {
        LaunchEnv {
            rank,
            world_size: world,
            local_rank: rank,
            local_world_size: world,
            master_addr: "127.0.0.1".into(),
            master_port: 29500,
            source: LaunchSource::Torchrun,
        }
    }

    #[test]
    fn ranks_write_parts_and_the_last_one_the_summary() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let weights = d.join("w.safetensors");
        dino3d_tasks::backbone::testutil::save_random_tiny(&weights);
        let vit = dino3d_tasks::backbone::load(&weights, "tiny", &Device::Cpu).unwrap();
        for (name, seed) in [("a.nii.gz", 7), ("b.nii.gz", 13)] {
            let n = 16 * 16 * 32;
            let vol = Volume {
                data: VoxelData::I16((0..n).map(|i| ((i * seed) % 251) as i16).collect()),
                shape: [1, 16, 16, 32],
                spacing: [1.0; 3],
                affine: dino3d_pipeline::nifti::affine::IDENTITY,
                scaling: None,
                meta: VolumeMeta::default(),
            };
            dino3d_pipeline::nifti::write_volume(d.join(name), &vol, &Default::default()).unwrap();
        }
        let manifest = d.join("m.json");
        std::fs::write(
            &manifest,
            r#"[{"image": "a.nii.gz"}, {"image": "b.nii.gz"}, {"image": "missing.nii.gz"}]"#,
        )
        .unwrap();
        let entries = read_manifest(&manifest).unwrap();
        let out = d.join("feats.parquet");
        let opts = TableOptions {
            manifest: &manifest,
            out: &out,
            prep: Prep::Raw,
            patch_grid: false,
            row_group: 8,
        };
        run_part(&vit, &entries, &opts, &env(1, 2)).unwrap();
        assert!(out.join("part-00001-of-00002.parquet").exists());
        assert!(!out.join("_SUCCESS").exists(), "rank 0 has not finished");
        run_part(&vit, &entries, &opts, &env(0, 2)).unwrap();
        let s: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("_SUCCESS")).unwrap()).unwrap();
        // Rank 0: entries 0 and 2 (one missing file), rank 1: entry 1.
        assert_eq!(
            (s["entries"].as_u64(), s["rows"].as_u64()),
            (Some(3), Some(2))
        );
        assert_eq!(s["skipped"].as_u64(), Some(1));
        assert_eq!(s["parts"][1]["rows"].as_u64(), Some(1));
        assert!(out.join("part-00000-of-00002.rejects.json").exists());
        // A file where the folder should be is refused.
        let file = d.join("file.parquet");
        std::fs::write(&file, b"x").unwrap();
        let e = run_part(
            &vit,
            &entries,
            &TableOptions { out: &file, ..opts },
            &env(0, 2),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("is a file"), "{e}");
    }
}
