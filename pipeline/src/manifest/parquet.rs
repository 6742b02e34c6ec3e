//! Parquet manifests (arrow-rs): the 3DINO columns plus the ones a user filters
//! on (dtype, channels, bytes, orientation, affine, fingerprint). Readable from
//! pandas, pyarrow and polars alike.

use std::path::Path;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, UInt64Type};
use arrow_array::{
    Array, ArrayRef, BooleanArray, FixedSizeListArray, ListArray, RecordBatch, StringArray,
    UInt64Array,
};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

use super::record::{ManifestEntry, ScanRecord};
use crate::error::{Error, Result};

fn perr(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::manifest(path, format!("parquet: {e}"))
}

/// The record batch for `records`.
///
/// # Errors
/// Never in practice (column lengths always agree); arrow's error is passed on.
pub fn to_record_batch(
    records: &[ScanRecord],
) -> std::result::Result<RecordBatch, arrow_schema::ArrowError> {
    let strings = |f: &dyn Fn(&ScanRecord) -> String| -> ArrayRef {
        Arc::new(StringArray::from(records.iter().map(f).collect::<Vec<_>>()))
    };
    let u64s = |f: &dyn Fn(&ScanRecord) -> u64| -> ArrayRef {
        Arc::new(UInt64Array::from(records.iter().map(f).collect::<Vec<_>>()))
    };
    let shape = ListArray::from_iter_primitive::<UInt64Type, _, _>(
        records
            .iter()
            .map(|r| Some(r.shape.iter().map(|&d| Some(d)).collect::<Vec<_>>())),
    );
    let spacing = ListArray::from_iter_primitive::<Float64Type, _, _>(
        records
            .iter()
            .map(|r| Some(r.spacing.iter().map(|&d| Some(d)).collect::<Vec<_>>())),
    );
    let affine = FixedSizeListArray::from_iter_primitive::<Float64Type, _, _>(
        records
            .iter()
            .map(|r| Some(r.affine.iter().map(|&d| Some(d)).collect::<Vec<_>>())),
        16,
    );
    let compressed = BooleanArray::from(records.iter().map(|r| r.compressed).collect::<Vec<_>>());
    RecordBatch::try_from_iter(vec![
        ("image", strings(&|r| r.image.clone())),
        ("shape", Arc::new(shape) as ArrayRef),
        ("spacing", Arc::new(spacing) as ArrayRef),
        ("dtype", strings(&|r| r.dtype.name().to_string())),
        ("channels", u64s(&|r| r.channels)),
        ("file_bytes", u64s(&|r| r.file_bytes)),
        ("axcodes", strings(&|r| r.axcodes.clone())),
        ("affine", Arc::new(affine) as ArrayRef),
        (
            "format",
            strings(&|r| {
                serde_json::to_value(r.format)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default()
            }),
        ),
        ("compressed", Arc::new(compressed) as ArrayRef),
        ("fingerprint", strings(&|r| r.fingerprint.clone())),
    ])
}

/// Writes `records` as a Parquet manifest (snappy), atomically.
///
/// # Errors
/// Encoding or I/O failures, naming the file.
pub fn write_records(path: &Path, records: &[ScanRecord]) -> Result<()> {
    let batch = to_record_batch(records).map_err(|e| perr(path, e))?;
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .build();
    let mut writer =
        ArrowWriter::try_new(Vec::new(), batch.schema(), Some(props)).map_err(|e| perr(path, e))?;
    writer.write(&batch).map_err(|e| perr(path, e))?;
    let bytes = writer.into_inner().map_err(|e| perr(path, e))?;
    crate::nifti::write_atomic(path, &bytes)
}

/// Row `row` of a list column of `T` values; None when the column is missing,
/// null there, or of another type.
fn list_values<T: arrow_array::types::ArrowPrimitiveType>(
    list: Option<&ListArray>,
    row: usize,
) -> Option<Vec<T::Native>> {
    let list = list.filter(|l| !l.is_null(row))?;
    Some(list.value(row).as_primitive_opt::<T>()?.values().to_vec())
}

/// Reads the 3DINO columns (`image`, `shape`, `spacing`) of a Parquet manifest;
/// other columns are kept in `extra` when they are strings or integers.
///
/// # Errors
/// When the file is not Parquet or lacks an `image` string column.
pub fn read_entries(path: &Path) -> Result<Vec<ManifestEntry>> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .and_then(|b| b.build())
        .map_err(|e| perr(path, e))?;
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| perr(path, e))?;
        let image = batch
            .column_by_name("image")
            .and_then(|c| c.as_string_opt::<i32>())
            .ok_or_else(|| Error::manifest(path, "no `image` string column"))?;
        let shape = batch
            .column_by_name("shape")
            .and_then(|c| c.as_list_opt::<i32>());
        let spacing = batch
            .column_by_name("spacing")
            .and_then(|c| c.as_list_opt::<i32>());
        for row in 0..batch.num_rows() {
            let mut extra = serde_json::Map::new();
            for (field, col) in batch.schema().fields().iter().zip(batch.columns()) {
                let name = field.name().as_str();
                if matches!(name, "image" | "shape" | "spacing") || col.is_null(row) {
                    continue;
                }
                if let Some(s) = col.as_string_opt::<i32>() {
                    extra.insert(name.into(), s.value(row).into());
                } else if let Some(v) = col.as_primitive_opt::<UInt64Type>() {
                    extra.insert(name.into(), v.value(row).into());
                } else if let Some(b) = col.as_boolean_opt() {
                    extra.insert(name.into(), b.value(row).into());
                }
            }
            out.push(ManifestEntry {
                image: image.value(row).to_string(),
                shape: list_values::<UInt64Type>(shape, row),
                spacing: list_values::<Float64Type>(spacing, row),
                extra,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::Format;
    use crate::nifti::DType;

    #[test]
    fn parquet_round_trips_the_3dino_columns() {
        let rec = ScanRecord {
            image: "sub/a.nii.gz".into(),
            shape: vec![10, 20, 30, 2],
            spacing: [0.5, 0.75, 2.5],
            dtype: DType::I16,
            channels: 2,
            file_bytes: 1234,
            axcodes: "LAS".into(),
            affine: [1.0; 16],
            format: Format::Nifti2,
            compressed: true,
            fingerprint: "00ff".into(),
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.parquet");
        write_records(&path, &[rec.clone(), rec.clone()]).unwrap();
        let back = read_entries(&path).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(back[0].image, "sub/a.nii.gz");
        assert_eq!(back[0].shape, Some(vec![10, 20, 30, 2]));
        assert_eq!(back[0].spacing, Some(vec![0.5, 0.75, 2.5]));
        assert_eq!(back[0].extra["dtype"], "int16");
        assert_eq!(back[0].extra["format"], "nifti2");
        assert_eq!(back[0].extra["channels"], 2);
    }
}
