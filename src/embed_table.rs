//! `dino-run embed --manifest M --out FILE.parquet`: the embeddings of every
//! manifest entry as one Parquet table, streamed a row group at a time (the
//! volumes of one group are read and prepared in parallel, then embedded), so
//! memory stays bounded however long the manifest is.
//!
//! Columns: the manifest's own (`image`, `shape`, `spacing`, and every other
//! key, typed from its values: boolean, int64, float64 or string; mixed or
//! nested values as JSON text), then `cls` and `patch_mean` (fixed-size
//! float32 lists of the embedding size), `grid` (the token grid, 3 uint32) and,
//! with `--patch-grid`, `patch_tokens` (a list of fixed-size float32 lists,
//! tokens in order with the last grid axis fastest). A volume that cannot be
//! read or embedded is reported with its path, listed in `OUT.rejects.json`
//! and skipped.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use arrow_array::builder::{
    BooleanBuilder, FixedSizeListBuilder, Float32Builder, Float64Builder, Int64Builder,
    ListBuilder, StringBuilder, UInt32Builder,
};
use arrow_array::types::{Float64Type, UInt64Type};
use arrow_array::{ArrayRef, ListArray, RecordBatch, StringArray};
use dino3d_model::ViT3d;
use dino3d_pipeline::manifest::{ManifestEntry, read_manifest};
use dino3d_pipeline::recipe::Plan;
use dino3d_tasks::embed::config::EmbedConfig;
use dino3d_tasks::embed::{Embedding, Prep, embed_all};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use serde_json::Value;

use crate::progress;

/// Column names of the embeddings.
const EMBED_COLUMNS: [&str; 4] = ["cls", "patch_mean", "grid", "patch_tokens"];

/// The type of one extra manifest key's column.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Bool,
    Int,
    Float,
    Text,
    Json,
}

/// The extra keys of the manifest and their column types (from every entry).
fn extra_columns(entries: &[ManifestEntry]) -> BTreeMap<String, Kind> {
    let mut kinds: BTreeMap<String, Kind> = BTreeMap::new();
    for e in entries {
        for (k, v) in &e.extra {
            let this = match v {
                Value::Null => continue,
                Value::Bool(_) => Kind::Bool,
                Value::Number(n) if n.is_i64() => Kind::Int,
                Value::Number(_) => Kind::Float,
                Value::String(_) => Kind::Text,
                _ => Kind::Json,
            };
            let merged = match (kinds.get(k), this) {
                (None, t) => t,
                (Some(&a), b) if a == b => a,
                (Some(Kind::Int | Kind::Float), Kind::Int | Kind::Float) => Kind::Float,
                _ => Kind::Json,
            };
            kinds.insert(k.clone(), merged);
        }
    }
    kinds
}

/// One embedded volume.
struct Row<'a> {
    entry: &'a ManifestEntry,
    emb: Embedding,
}

/// The record batch of `rows`.
fn batch(
    rows: &[Row],
    extras: &BTreeMap<String, Kind>,
    dim: usize,
    patch_grid: bool,
) -> anyhow::Result<RecordBatch> {
    let mut cols: Vec<(String, ArrayRef)> = vec![
        (
            "image".into(),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| r.entry.image.as_str()),
            )),
        ),
        (
            "shape".into(),
            Arc::new(ListArray::from_iter_primitive::<UInt64Type, _, _>(
                rows.iter().map(|r| {
                    r.entry
                        .shape
                        .as_ref()
                        .map(|s| s.iter().map(|&v| Some(v)).collect::<Vec<_>>())
                }),
            )),
        ),
        (
            "spacing".into(),
            Arc::new(ListArray::from_iter_primitive::<Float64Type, _, _>(
                rows.iter().map(|r| {
                    r.entry
                        .spacing
                        .as_ref()
                        .map(|s| s.iter().map(|&v| Some(v)).collect::<Vec<_>>())
                }),
            )),
        ),
    ];
    for (key, kind) in extras {
        let values = rows
            .iter()
            .map(|r| r.entry.extra.get(key).filter(|v| !v.is_null()));
        let array: ArrayRef = match kind {
            Kind::Bool => {
                let mut b = BooleanBuilder::new();
                values.for_each(|v| b.append_option(v.and_then(Value::as_bool)));
                Arc::new(b.finish())
            }
            Kind::Int => {
                let mut b = Int64Builder::new();
                values.for_each(|v| b.append_option(v.and_then(Value::as_i64)));
                Arc::new(b.finish())
            }
            Kind::Float => {
                let mut b = Float64Builder::new();
                values.for_each(|v| b.append_option(v.and_then(Value::as_f64)));
                Arc::new(b.finish())
            }
            Kind::Text => {
                let mut b = StringBuilder::new();
                values.for_each(|v| b.append_option(v.and_then(Value::as_str)));
                Arc::new(b.finish())
            }
            Kind::Json => {
                let mut b = StringBuilder::new();
                values.for_each(|v| b.append_option(v.map(Value::to_string)));
                Arc::new(b.finish())
            }
        };
        cols.push((key.clone(), array));
    }
    cols.push((
        "cls".into(),
        fixed(rows.iter().map(|r| &r.emb.cls[..]), dim),
    ));
    cols.push((
        "patch_mean".into(),
        fixed(rows.iter().map(|r| &r.emb.patch_mean[..]), dim),
    ));
    let mut g = FixedSizeListBuilder::new(UInt32Builder::new(), 3);
    for r in rows {
        g.values().append_slice(&r.emb.grid.map(|v| v as u32));
        g.append(true);
    }
    cols.push(("grid".into(), Arc::new(g.finish())));
    if patch_grid {
        let mut b = ListBuilder::new(FixedSizeListBuilder::new(Float32Builder::new(), dim as i32));
        for r in rows {
            for tok in r.emb.patch.as_deref().unwrap_or_default() {
                b.values().values().append_slice(tok);
                b.values().append(true);
            }
            b.append(true);
        }
        cols.push(("patch_tokens".into(), Arc::new(b.finish())));
    }
    // Every column nullable, so each row group has the same schema.
    Ok(RecordBatch::try_from_iter_with_nullable(
        cols.into_iter().map(|(n, a)| (n, a, true)),
    )?)
}

/// A fixed-size float32 list column.
fn fixed<'a>(values: impl Iterator<Item = &'a [f32]>, dim: usize) -> ArrayRef {
    let mut b = FixedSizeListBuilder::new(Float32Builder::new(), dim as i32);
    for v in values {
        b.values().append_slice(v);
        b.append(true);
    }
    Arc::new(b.finish())
}

/// Options of a manifest embedding run.
pub(crate) struct TableOptions<'a> {
    /// Entries' paths resolve against this manifest's folder.
    pub(crate) manifest: &'a Path,
    pub(crate) out: &'a Path,
    pub(crate) prep: Prep<'a>,
    pub(crate) patch_grid: bool,
    pub(crate) row_group: usize,
}

/// Embeds every entry of the manifest file into a Parquet table.
pub(crate) fn run(vit: &ViT3d, o: &TableOptions) -> anyhow::Result<ExitCode> {
    let entries = read_manifest(o.manifest)
        .with_context(|| format!("reading the manifest {}", o.manifest.display()))?;
    run_entries(vit, &entries, o)
}

/// `task: embed`: the recipe's manifest (filtered by `data.min_axis`)
/// through its deterministic pipeline and the `embed:` backbone.
pub(crate) fn run_recipe(
    plan: &Plan,
    e: &EmbedConfig,
    recipe: &Path,
    device: &dino3d_model::candle_core::Device,
) -> anyhow::Result<ExitCode> {
    let job = dino3d_tasks::embed::open(plan, e, recipe, device)?;
    eprintln!(
        "embedding {} volumes with {} (ViT-{})",
        job.entries.len(),
        job.weights.display(),
        e.arch
    );
    run_entries(
        &job.vit,
        &job.entries,
        &TableOptions {
            manifest: &job.manifest,
            out: &job.out,
            prep: Prep::Recipe {
                pipeline: &job.pipeline,
                size: e.image_size,
            },
            patch_grid: e.patch_grid,
            row_group: e.row_group,
        },
    )
}

/// Embeds `entries` into a Parquet table; under a launcher (torchrun, srun,
/// `dino-run launch`), this rank's part of it.
fn run_entries(
    vit: &ViT3d,
    entries: &[ManifestEntry],
    o: &TableOptions,
) -> anyhow::Result<ExitCode> {
    let env = dino3d_tasks::distributed::LaunchEnv::from_process_env()?;
    if env.world_size > 1 {
        return crate::embed_parts::run_part(vit, entries, o, &env);
    }
    let start = std::time::Instant::now();
    let (written, skipped) = write_table(vit, entries, o, o.out)?;
    let seconds = start.elapsed().as_secs_f64();
    let rejects_path = o.out.with_extension("rejects.json");
    println!(
        "{written} of {} volumes embedded ({} dims{}), {} skipped{}, in {seconds:.1} s \
         ({:.2} volumes/s, reading included) -> {}",
        entries.len(),
        vit.config().embed_dim,
        if o.patch_grid {
            ", with patch tokens"
        } else {
            ""
        },
        skipped,
        if skipped == 0 {
            String::new()
        } else {
            format!(" (listed in {})", rejects_path.display())
        },
        written as f64 / seconds.max(1e-9),
        o.out.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Writes the table of `entries` to `out` (and the rejects beside it);
/// returns the rows written and the entries skipped.
pub(crate) fn write_table(
    vit: &ViT3d,
    entries: &[ManifestEntry],
    o: &TableOptions,
    out: &Path,
) -> anyhow::Result<(usize, usize)> {
    let extras = extra_columns(entries);
    for k in extras.keys() {
        if EMBED_COLUMNS.contains(&k.as_str()) {
            bail!(
                "{}: the manifest key `{k}` clashes with an embedding column ({EMBED_COLUMNS:?})",
                o.manifest.display()
            );
        }
    }
    let dim = vit.config().embed_dim;
    let row_group = o.row_group.max(1);
    let tmp = out.with_extension("parquet.partial");
    let file = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(row_group))
        .build();
    let mut writer: Option<ArrowWriter<File>> = None;
    let mut file = Some(file);
    let mut rejects = Vec::new();
    let mut written = 0usize;
    let bar = progress::bar(entries.len() as u64, "volumes");
    for chunk in entries.chunks(row_group) {
        let results = embed_all(vit, chunk, o.manifest, &o.prep, o.patch_grid);
        let mut rows = Vec::with_capacity(chunk.len());
        for (entry, r) in chunk.iter().zip(results) {
            match r {
                Ok(emb) => rows.push(Row { entry, emb }),
                Err(e) => {
                    let path = entry.resolve(o.manifest);
                    eprintln!("skipped {}: {}", path.display(), e.chain());
                    rejects.push(serde_json::json!({
                        "image": entry.image, "path": path.display().to_string(), "reason": e.chain()
                    }));
                }
            }
        }
        let b = batch(&rows, &extras, dim, o.patch_grid)?;
        let w = match &mut writer {
            Some(w) => w,
            None => writer.insert(ArrowWriter::try_new(
                file.take().expect("the file opens once"),
                b.schema(),
                Some(props.clone()),
            )?),
        };
        if b.num_rows() > 0 {
            w.write(&b)?;
            // One row group per chunk: nothing older stays buffered.
            w.flush()?;
        }
        written += rows.len();
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    match writer {
        Some(w) => {
            w.close()?;
        }
        None => {
            // An empty manifest: an empty table with the columns.
            let b = batch(&[], &extras, dim, o.patch_grid)?;
            let w = ArrowWriter::try_new(file.take().expect("unused"), b.schema(), Some(props))?;
            w.close()?;
        }
    }
    std::fs::rename(&tmp, out).with_context(|| format!("writing {}", out.display()))?;
    let rejects_path = out.with_extension("rejects.json");
    if !rejects.is_empty() {
        std::fs::write(&rejects_path, serde_json::to_vec_pretty(&rejects)?)?;
    }
    Ok((written, rejects.len()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::Array;
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Float32Type, UInt32Type};
    use dino3d_model::candle_core::Device;
    use dino3d_pipeline::{Volume, VolumeMeta, VoxelData};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    fn write(dir: &Path, name: &str, shape: [usize; 4], seed: usize) {
        let n = shape.iter().product::<usize>();
        let vol = Volume {
            data: VoxelData::I16((0..n).map(|i| ((i * seed) % 251) as i16).collect()),
            shape,
            spacing: [1.0, 1.5, 2.0],
            affine: dino3d_pipeline::nifti::affine::IDENTITY,
            scaling: None,
            meta: VolumeMeta::default(),
        };
        dino3d_pipeline::nifti::write_volume(dir.join(name), &vol, &Default::default()).unwrap();
    }

    #[test]
    fn parquet_rows_hold_the_manifest_columns_and_the_direct_embeddings() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let weights = d.join("w.safetensors");
        let vit = dino3d_tasks::backbone::testutil::save_random_tiny(&weights);
        write(d, "a.nii.gz", [1, 16, 16, 32], 7);
        write(d, "b.nii.gz", [1, 32, 16, 16], 13);
        write(d, "c.nii", [1, 16, 32, 16], 5);
        std::fs::write(d.join("broken.nii.gz"), b"not a volume").unwrap();
        let manifest = d.join("m.json");
        std::fs::write(
            &manifest,
            r#"[
              {"image": "a.nii.gz", "shape": [16, 16, 32], "spacing": [1, 1.5, 2], "subject": "s1", "age": 30},
              {"image": "broken.nii.gz", "subject": "s2", "age": 41},
              {"image": "b.nii.gz", "subject": "s3", "age": 52.5, "tags": ["x"]},
              {"image": "c.nii", "age": null}
            ]"#,
        )
        .unwrap();
        let out = d.join("e.parquet");
        let opts = TableOptions {
            manifest: &manifest,
            out: &out,
            prep: Prep::Raw,
            patch_grid: true,
            row_group: 2,
        };
        let loaded = dino3d_tasks::backbone::load(&weights, "tiny", &Device::Cpu).unwrap();
        run(&loaded, &opts).unwrap();
        // The broken file is reported and skipped.
        let rejects: Vec<Value> =
            serde_json::from_slice(&std::fs::read(d.join("e.rejects.json")).unwrap()).unwrap();
        assert_eq!(rejects.len(), 1);
        assert_eq!(rejects[0]["image"], "broken.nii.gz");

        let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(&out).unwrap()).unwrap();
        // Chunks of 2 entries: [a, broken] -> 1 row, [b, c] -> 2 rows.
        assert_eq!(reader.metadata().num_row_groups(), 2);
        let batches: Vec<RecordBatch> = reader.build().unwrap().map(Result::unwrap).collect();
        // (batch, row) of each table row.
        let at: Vec<(usize, usize)> = batches
            .iter()
            .enumerate()
            .flat_map(|(i, b)| (0..b.num_rows()).map(move |r| (i, r)))
            .collect();
        assert_eq!(at.len(), 3);
        let schema = batches[0].schema();
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(
            names,
            [
                "image",
                "shape",
                "spacing",
                "age",
                "subject",
                "tags",
                "cls",
                "patch_mean",
                "grid",
                "patch_tokens"
            ]
        );
        let col = |row: usize, name: &str| -> ArrayRef {
            let (b, r) = at[row];
            batches[b].column_by_name(name).unwrap().slice(r, 1)
        };
        let images: Vec<String> = (0..3)
            .map(|i| col(i, "image").as_string::<i32>().value(0).to_string())
            .collect();
        assert_eq!(images, ["a.nii.gz", "b.nii.gz", "c.nii"]);
        // `age` mixes integers and a float: float64; the null stays null.
        let age = |i| col(i, "age").as_primitive::<Float64Type>().clone();
        assert_eq!((age(0).value(0), age(1).value(0)), (30.0, 52.5));
        assert!(age(2).is_null(0));
        assert_eq!(col(1, "tags").as_string::<i32>().value(0), r#"["x"]"#);
        assert!(col(0, "tags").is_null(0));
        assert_eq!(col(0, "subject").as_string::<i32>().value(0), "s1");
        assert!(col(2, "subject").is_null(0));
        assert!(col(1, "shape").is_null(0));
        let shape = col(0, "shape").as_list::<i32>().value(0);
        assert_eq!(shape.as_primitive::<UInt64Type>().values(), &[16, 16, 32]);
        // Embeddings equal a direct forward of each volume.
        for (row, (name, shape)) in [
            ("a.nii.gz", [1, 16, 16, 32]),
            ("b.nii.gz", [1, 32, 16, 16]),
            ("c.nii", [1, 16, 32, 16]),
        ]
        .into_iter()
        .enumerate()
        {
            let v = dino3d_pipeline::nifti::read_volume(d.join(name)).unwrap();
            let want = vit
                .forward(
                    &dino3d_tasks::backbone::model_input(&v.to_f32(), shape, &Device::Cpu).unwrap(),
                )
                .unwrap();
            let cls: Vec<f32> = want.cls_norm.squeeze(0).unwrap().to_vec1().unwrap();
            let patch: Vec<Vec<f32>> = want.patch_norm.squeeze(0).unwrap().to_vec2().unwrap();
            let got = col(row, "cls").as_fixed_size_list().value(0);
            let got = got.as_primitive::<Float32Type>().values();
            assert_eq!(got.len(), 192);
            assert!(got.iter().zip(&cls).all(|(a, b)| (a - b).abs() < 1e-5));
            let mean = col(row, "patch_mean").as_fixed_size_list().value(0);
            let mean = mean.as_primitive::<Float32Type>().values();
            for e in [0, 100, 191] {
                let m = (patch[0][e] + patch[1][e]) / 2.0;
                assert!((mean[e] - m).abs() < 1e-5);
            }
            let grid = col(row, "grid").as_fixed_size_list().value(0);
            let grid = grid.as_primitive::<UInt32Type>().values().to_vec();
            let want_grid: Vec<u32> = shape[1..].iter().map(|s| (s / 16) as u32).collect();
            assert_eq!(grid, want_grid);
            let toks = col(row, "patch_tokens").as_list::<i32>().value(0);
            let toks = toks.as_fixed_size_list();
            assert_eq!(toks.len(), 2);
            let t1 = toks.value(1);
            let t1 = t1.as_primitive::<Float32Type>().values();
            assert!(t1.iter().zip(&patch[1]).all(|(a, b)| (a - b).abs() < 1e-5));
        }
    }
}
