//! Writing an entry: chunk, shuffle, compress and checksum every array, then
//! write header, index, payload and footer atomically.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use crate::array::Affine;
use crate::codec::chunk_checksum;
use crate::decode_map::DecodeMap;
use crate::error::{CacheError, Result};
use crate::layout::{ArrayMeta, END, Header, Layout, MAGIC, StoredType};
use crate::shuffle::shuffle;

/// An array to write: values as float32 (exact in `dtype`), borrowed, plus
/// how to store them.
#[derive(Debug, Clone)]
pub struct ArrayToWrite<'a> {
    /// Key.
    pub key: &'a str,
    /// The values, `(C, X, Y, Z)` x fastest.
    pub data: &'a [f32],
    /// `(C, X, Y, Z)`.
    pub shape: [usize; 4],
    /// Voxel sizes.
    pub spacing: [f64; 3],
    /// Voxel-to-world affine.
    pub affine: Affine,
    /// How to store them.
    pub dtype: StoredType,
    /// Applied to the stored numbers on reading.
    pub decode: Option<DecodeMap>,
}

/// Writes an entry atomically (temporary file in the same folder, fsync,
/// rename): a crash leaves at most a temporary file, never a torn entry.
/// Returns the bytes written.
///
/// # Errors
/// I/O failures (disk full, read-only folder) with the path;
/// [`CacheError::BadArray`] for values that do not fill their shape.
pub fn write_entry(
    path: &Path,
    arrays: &[ArrayToWrite<'_>],
    layout: Layout,
    source: &str,
    key: &str,
) -> Result<u64> {
    let Layout { chunk, codec } = layout;
    let mut metas = Vec::new();
    let mut index = Vec::new();
    let mut payload = Vec::new();
    for a in arrays {
        if a.data.len() != a.shape.iter().product::<usize>() {
            return Err(CacheError::BadArray {
                path: path.to_path_buf(),
                key: a.key.to_string(),
                len: a.data.len(),
                shape: a.shape,
            });
        }
        // JSON has no NaN or infinity: such geometry would make an entry
        // that can never be read back. Volumes are checked when read, so
        // this only guards callers that build arrays themselves.
        let finite = a
            .spacing
            .iter()
            .chain(a.affine.iter().flatten())
            .all(|v| v.is_finite())
            && a.decode.is_none_or(|m| {
                let (scale, offset, lo, hi) = m.parts();
                scale.is_finite() && offset.is_finite() && !lo.is_nan() && !hi.is_nan()
            });
        if !finite {
            return Err(CacheError::BadGeometry {
                path: path.to_path_buf(),
                key: a.key.to_string(),
            });
        }
        let meta = ArrayMeta {
            key: a.key.to_string(),
            dtype: a.dtype,
            shape: a.shape,
            chunk,
            spacing: a.spacing,
            affine: a.affine,
            decode: a.decode,
            codec,
        };
        let [_, nx, ny, nz] = a.shape;
        let mut raw = Vec::new();
        meta.for_each_chunk(|c, start, end| {
            raw.clear();
            for k in start[2]..end[2] {
                for j in start[1]..end[1] {
                    let at = ((c * nz + k) * ny + j) * nx + start[0];
                    for &v in &a.data[at..at + end[0] - start[0]] {
                        a.dtype.encode(v, &mut raw);
                    }
                }
            }
            let shuffled = shuffle(&raw, a.dtype.size());
            let packed = codec
                .compress(&shuffled, a.dtype.size())
                .map_err(|e| CacheError::io(path, e))?;
            index.extend_from_slice(&(payload.len() as u64).to_le_bytes());
            index.extend_from_slice(&(packed.len() as u32).to_le_bytes());
            index.extend_from_slice(&(raw.len() as u32).to_le_bytes());
            index.extend_from_slice(&chunk_checksum(&packed).to_le_bytes());
            payload.extend_from_slice(&packed);
            Ok(())
        })?;
        metas.push(meta);
    }
    let header = serde_json::to_vec(&Header {
        arrays: metas,
        source: source.to_string(),
        key: key.to_string(),
    })
    .expect("header serialises");
    let mut bytes = Vec::with_capacity(32 + header.len() + index.len() + payload.len());
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&(header.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&header);
    bytes.extend_from_slice(&index);
    let mut check = header.clone();
    check.extend_from_slice(&index);
    bytes.extend_from_slice(&payload);
    bytes.extend_from_slice(&xxhash_rust::xxh3::xxh3_64(&check).to_le_bytes());
    bytes.extend_from_slice(END);
    write_atomic(path, &bytes)?;
    Ok(bytes.len() as u64)
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| CacheError::io(dir, e))?;
    let tmp = dir.join(format!(
        ".{}.tmp.{}",
        path.file_name()
            .map_or("entry".into(), |n| n.to_string_lossy()),
        std::process::id()
    ));
    let result = (|| -> std::io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(CacheError::io(path, e));
    }
    Ok(())
}
