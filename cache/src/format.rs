//! The entry file: one prepared sample (every key's array) as chunked,
//! byte-shuffled, zstd-compressed arrays with a checksummed index, read
//! through a memory map.
//!
//! ```text
//! "D3CACHE1"                       magic (8 bytes)
//! u32 header_len, header (JSON)    keys, types, shapes, chunk shape, geometry, window, source
//! per array: n_chunks × (u64 offset, u32 len, u32 raw_len, u64 xxh3)   the index
//! chunk payloads
//! u64 xxh3(header ‖ index), "D3CEND01"   footer: a truncated or torn file fails here
//! ```
//!
//! Chunks tile `(X, Y, Z)` per channel (edge chunks hold their true extent), each
//! x-fastest, byte-shuffled when the element is wider than a byte, compressed
//! with zstd, and checksummed (xxh3 of the compressed bytes) so damage is found
//! before decoding. Integer arrays carry the intensity window the float path
//! applies; reading applies it with the same function, so values are bit-identical.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use dino3d_pipeline::nifti::affine::Affine;
use dino3d_pipeline::transforms::{Image, ScaleIntensityRange, scale_intensity_range};
use serde::{Deserialize, Serialize};

use crate::error::{CacheError, Result};
use crate::shuffle::shuffle;

const MAGIC: &[u8; 8] = b"D3CACHE1";
const END: &[u8; 8] = b"D3CEND01";
const INDEX_ENTRY: usize = 24;
/// zstd level: ratio barely improves above 3 on noisy medical data, decode speed
/// does not depend on it (../shared/spec/rust-stack.md §5).
pub const ZSTD_LEVEL: i32 = 3;

/// How voxels are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoredType {
    /// Unsigned 8-bit.
    U8,
    /// Signed 8-bit.
    I8,
    /// Unsigned 16-bit.
    U16,
    /// Signed 16-bit.
    I16,
    /// Float32.
    F32,
}

impl StoredType {
    /// Bytes per voxel.
    pub fn size(self) -> usize {
        match self {
            StoredType::U8 | StoredType::I8 => 1,
            StoredType::U16 | StoredType::I16 => 2,
            StoredType::F32 => 4,
        }
    }

    fn encode(self, v: f32, out: &mut Vec<u8>) {
        match self {
            StoredType::U8 => out.push(v as u8),
            StoredType::I8 => out.push((v as i8) as u8),
            StoredType::U16 => out.extend_from_slice(&(v as u16).to_le_bytes()),
            StoredType::I16 => out.extend_from_slice(&(v as i16).to_le_bytes()),
            StoredType::F32 => out.extend_from_slice(&v.to_le_bytes()),
        }
    }

    fn decode(self, bytes: &[u8], out: &mut [f32]) {
        match self {
            StoredType::U8 => out
                .iter_mut()
                .zip(bytes)
                .for_each(|(o, &b)| *o = f32::from(b)),
            StoredType::I8 => out
                .iter_mut()
                .zip(bytes)
                .for_each(|(o, &b)| *o = f32::from(b as i8)),
            StoredType::U16 => out
                .iter_mut()
                .zip(bytes.chunks_exact(2))
                .for_each(|(o, b)| *o = f32::from(u16::from_le_bytes([b[0], b[1]]))),
            StoredType::I16 => out
                .iter_mut()
                .zip(bytes.chunks_exact(2))
                .for_each(|(o, b)| *o = f32::from(i16::from_le_bytes([b[0], b[1]]))),
            StoredType::F32 => out
                .iter_mut()
                .zip(bytes.chunks_exact(4))
                .for_each(|(o, b)| *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        }
    }
}

/// The intensity window of an integer array (MONAI's ScaleIntensityRange).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Window {
    /// Input lower bound.
    pub a_min: f64,
    /// Input upper bound.
    pub a_max: f64,
    /// Output lower bound.
    pub b_min: Option<f64>,
    /// Output upper bound.
    pub b_max: Option<f64>,
    /// Clip to the output bounds.
    pub clip: bool,
}

impl From<ScaleIntensityRange> for Window {
    fn from(w: ScaleIntensityRange) -> Window {
        Window {
            a_min: w.a_min,
            a_max: w.a_max,
            b_min: w.b_min,
            b_max: w.b_max,
            clip: w.clip,
        }
    }
}

impl From<Window> for ScaleIntensityRange {
    fn from(w: Window) -> ScaleIntensityRange {
        ScaleIntensityRange {
            a_min: w.a_min,
            a_max: w.a_max,
            b_min: w.b_min,
            b_max: w.b_max,
            clip: w.clip,
        }
    }
}

/// Decodes byte-shuffled (plane-major) voxels straight to float32: the
/// unshuffle and the conversion are one vectorisable pass.
fn decode_shuffled(dtype: StoredType, bytes: &[u8], out: &mut [f32]) {
    let n = out.len();
    match dtype {
        StoredType::U8 | StoredType::I8 => dtype.decode(bytes, out),
        StoredType::U16 => {
            let (lo, hi) = bytes.split_at(n);
            for ((o, &l), &h) in out.iter_mut().zip(lo).zip(hi) {
                *o = f32::from(u16::from_le_bytes([l, h]));
            }
        }
        StoredType::I16 => {
            let (lo, hi) = bytes.split_at(n);
            for ((o, &l), &h) in out.iter_mut().zip(lo).zip(hi) {
                *o = f32::from(i16::from_le_bytes([l, h]));
            }
        }
        StoredType::F32 => {
            let (p0, rest) = bytes.split_at(n);
            let (p1, rest) = rest.split_at(n);
            let (p2, p3) = rest.split_at(n);
            for (i, o) in out.iter_mut().enumerate() {
                *o = f32::from_le_bytes([p0[i], p1[i], p2[i], p3[i]]);
            }
        }
    }
}

/// One stored array's description.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArrayMeta {
    /// Its key (`image`, `label`, ...).
    pub key: String,
    /// Stored type.
    pub dtype: StoredType,
    /// `(C, X, Y, Z)`.
    pub shape: [usize; 4],
    /// Chunk edge per spatial axis.
    pub chunk: [usize; 3],
    /// Voxel sizes.
    pub spacing: [f64; 3],
    /// Voxel-to-world affine.
    pub affine: Affine,
    /// Window applied on reading (integer arrays of a scaled prefix).
    pub window: Option<Window>,
}

impl ArrayMeta {
    fn chunks_per_axis(&self) -> [usize; 3] {
        [0, 1, 2].map(|a| self.shape[a + 1].div_ceil(self.chunk[a]))
    }

    fn n_chunks(&self) -> usize {
        self.shape[0] * self.chunks_per_axis().iter().product::<usize>()
    }
}

/// The header: what the entry holds and where it came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    /// The arrays in order.
    pub arrays: Vec<ArrayMeta>,
    /// The source (image) file, for reports.
    pub source: String,
    /// The entry key (hex), for `verify` and `gc`.
    pub key: String,
}

/// An array to write: voxels as float32 (exact for the integer types) plus how
/// to store them.
#[derive(Debug, Clone)]
pub struct ArrayToWrite<'a> {
    /// Key.
    pub key: &'a str,
    /// The voxels and geometry.
    pub image: &'a Image,
    /// How to store them.
    pub dtype: StoredType,
    /// Window to apply on reading.
    pub window: Option<Window>,
}

/// Writes an entry atomically (temporary file in the same folder, fsync,
/// rename): a crash leaves at most a temporary file, never a torn entry.
///
/// # Errors
/// I/O failures (disk full, read-only folder) with the path.
pub fn write_entry(
    path: &Path,
    arrays: &[ArrayToWrite<'_>],
    chunk: [usize; 3],
    source: &str,
    key: &str,
) -> Result<u64> {
    let mut metas = Vec::new();
    let mut index = Vec::new();
    let mut payload = Vec::new();
    for a in arrays {
        let meta = ArrayMeta {
            key: a.key.to_string(),
            dtype: a.dtype,
            shape: a.image.shape,
            chunk,
            spacing: a.image.spacing,
            affine: a.image.affine,
            window: a.window,
        };
        let mut raw = Vec::new();
        for_each_chunk(&meta, |c, start, end| {
            raw.clear();
            for k in start[2]..end[2] {
                for j in start[1]..end[1] {
                    let at = a.image.index(c, start[0], j, k);
                    for &v in &a.image.data[at..at + end[0] - start[0]] {
                        a.dtype.encode(v, &mut raw);
                    }
                }
            }
            let shuffled = shuffle(&raw, a.dtype.size());
            let packed =
                zstd::bulk::compress(&shuffled, ZSTD_LEVEL).map_err(|e| CacheError::io(path, e))?;
            index.extend_from_slice(&(payload.len() as u64).to_le_bytes());
            index.extend_from_slice(&(packed.len() as u32).to_le_bytes());
            index.extend_from_slice(&(raw.len() as u32).to_le_bytes());
            index.extend_from_slice(&xxhash_rust::xxh3::xxh3_64(&packed).to_le_bytes());
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

/// Calls `f(channel, start, end)` for every chunk in index order.
fn for_each_chunk(
    meta: &ArrayMeta,
    mut f: impl FnMut(usize, [usize; 3], [usize; 3]) -> Result<()>,
) -> Result<()> {
    let n = meta.chunks_per_axis();
    for c in 0..meta.shape[0] {
        for kz in 0..n[2] {
            for ky in 0..n[1] {
                for kx in 0..n[0] {
                    let start = [kx * meta.chunk[0], ky * meta.chunk[1], kz * meta.chunk[2]];
                    let end = [0, 1, 2].map(|a| (start[a] + meta.chunk[a]).min(meta.shape[a + 1]));
                    f(c, start, end)?;
                }
            }
        }
    }
    Ok(())
}

/// An open entry (memory-mapped, header and index checked).
pub struct Entry {
    path: PathBuf,
    map: memmap2::Mmap,
    /// What it holds.
    pub header: Header,
    /// Per array: index start (byte offset into the map).
    index_at: Vec<usize>,
    payload_at: usize,
}

struct ChunkRef {
    offset: usize,
    len: usize,
    raw_len: usize,
    hash: u64,
}

impl Entry {
    /// Opens and checks the framing (magic, header, index checksum, footer).
    ///
    /// # Errors
    /// [`CacheError::Corrupt`] for any damage, [`CacheError::Io`] when unreadable.
    pub fn open(path: &Path) -> Result<Entry> {
        let file = File::open(path).map_err(|e| CacheError::io(path, e))?;
        // SAFETY: the map is read-only and entries are only ever replaced by
        // rename (never written in place), so the mapped bytes do not change
        // under us; every read is bounds-checked against the map's length.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| CacheError::io(path, e))?;
        let corrupt = |why: &str| CacheError::corrupt(path, why);
        if map.len() < 28 || &map[..8] != MAGIC || &map[map.len() - 8..] != END {
            return Err(corrupt("bad magic or truncated"));
        }
        let header_len = u32::from_le_bytes(map[8..12].try_into().expect("4 bytes")) as usize;
        let header_end = 12usize
            .checked_add(header_len)
            .filter(|&e| e <= map.len() - 16)
            .ok_or_else(|| corrupt("header runs past the end"))?;
        let header: Header = serde_json::from_slice(&map[12..header_end])
            .map_err(|e| corrupt(&format!("header: {e}")))?;
        let mut index_at = Vec::new();
        let mut at = header_end;
        for a in &header.arrays {
            if a.chunk.contains(&0) || a.shape.contains(&0) {
                return Err(corrupt("zero-sized array or chunk"));
            }
            index_at.push(at);
            at = a
                .n_chunks()
                .checked_mul(INDEX_ENTRY)
                .and_then(|n| at.checked_add(n))
                .filter(|&e| e <= map.len() - 16)
                .ok_or_else(|| corrupt("index runs past the end"))?;
        }
        let stored = u64::from_le_bytes(
            map[map.len() - 16..map.len() - 8]
                .try_into()
                .expect("8 bytes"),
        );
        if xxhash_rust::xxh3::xxh3_64(&map[12..at]) != stored {
            return Err(corrupt("header/index checksum mismatch"));
        }
        Ok(Entry {
            path: path.to_path_buf(),
            map,
            header,
            index_at,
            payload_at: at,
        })
    }

    fn chunk_ref(&self, array: usize, i: usize) -> Result<ChunkRef> {
        let at = self.index_at[array] + i * INDEX_ENTRY;
        let b = &self.map[at..at + INDEX_ENTRY];
        let r = ChunkRef {
            offset: u64::from_le_bytes(b[..8].try_into().expect("8")) as usize,
            len: u32::from_le_bytes(b[8..12].try_into().expect("4")) as usize,
            raw_len: u32::from_le_bytes(b[12..16].try_into().expect("4")) as usize,
            hash: u64::from_le_bytes(b[16..24].try_into().expect("8")),
        };
        let end = self
            .payload_at
            .checked_add(r.offset)
            .and_then(|s| s.checked_add(r.len));
        if end.is_none_or(|e| e > self.map.len() - 16) {
            return Err(CacheError::corrupt(&self.path, "chunk past the end"));
        }
        Ok(r)
    }

    /// Decodes chunk `i` of array `array` into float32 voxels.
    fn chunk(&self, array: usize, i: usize) -> Result<Vec<f32>> {
        thread_local! {
            // A reused zstd context and byte buffer per thread: no allocation
            // or context setup per chunk.
            static SCRATCH: std::cell::RefCell<Option<(zstd::bulk::Decompressor<'static>, Vec<u8>)>> =
                const { std::cell::RefCell::new(None) };
        }
        let meta = &self.header.arrays[array];
        let r = self.chunk_ref(array, i)?;
        let packed = &self.map[self.payload_at + r.offset..][..r.len];
        if xxhash_rust::xxh3::xxh3_64(packed) != r.hash {
            return Err(CacheError::corrupt(
                &self.path,
                &format!("chunk {i} of `{}`: checksum mismatch", meta.key),
            ));
        }
        let size = meta.dtype.size();
        if !r.raw_len.is_multiple_of(size) {
            return Err(CacheError::corrupt(
                &self.path,
                &format!("chunk {i}: wrong size"),
            ));
        }
        SCRATCH.with(|cell| {
            let mut cell = cell.borrow_mut();
            if cell.is_none() {
                let d =
                    zstd::bulk::Decompressor::new().map_err(|e| CacheError::io(&self.path, e))?;
                *cell = Some((d, Vec::new()));
            }
            let (dec, buf) = cell.as_mut().expect("initialised above");
            buf.clear();
            buf.reserve(r.raw_len);
            let n = dec
                .decompress_to_buffer(packed, buf)
                .map_err(|e| CacheError::corrupt(&self.path, &format!("chunk {i}: {e}")))?;
            if n != r.raw_len {
                return Err(CacheError::corrupt(
                    &self.path,
                    &format!("chunk {i}: wrong size"),
                ));
            }
            let mut out = vec![0f32; r.raw_len / size];
            decode_shuffled(meta.dtype, buf, &mut out);
            Ok(out)
        })
    }

    /// Index of the array stored under `key`.
    pub fn array(&self, key: &str) -> Option<usize> {
        self.header.arrays.iter().position(|a| a.key == key)
    }

    /// The box `[start, start + extent)` of array `array` as an image (window
    /// applied), decoding only the chunks it touches.
    ///
    /// # Errors
    /// Damage found in a touched chunk; a box outside the array.
    pub fn read_box(&self, array: usize, start: [usize; 3], extent: [usize; 3]) -> Result<Image> {
        let meta = &self.header.arrays[array];
        let c = meta.shape[0];
        for a in 0..3 {
            if extent[a] == 0 || start[a] + extent[a] > meta.shape[a + 1] {
                return Err(CacheError::corrupt(
                    &self.path,
                    "requested box leaves the array",
                ));
            }
        }
        let n = meta.chunks_per_axis();
        let mut data = vec![0f32; c * extent.iter().product::<usize>()];
        let lo = [0, 1, 2].map(|a| start[a] / meta.chunk[a]);
        let hi = [0, 1, 2].map(|a| (start[a] + extent[a] - 1) / meta.chunk[a]);
        for ch in 0..c {
            for kz in lo[2]..=hi[2] {
                for ky in lo[1]..=hi[1] {
                    for kx in lo[0]..=hi[0] {
                        let i = ((ch * n[2] + kz) * n[1] + ky) * n[0] + kx;
                        let chunk = self.chunk(array, i)?;
                        let c0 = [kx * meta.chunk[0], ky * meta.chunk[1], kz * meta.chunk[2]];
                        let cdim = [0, 1, 2]
                            .map(|a| (c0[a] + meta.chunk[a]).min(meta.shape[a + 1]) - c0[a]);
                        // Intersection of the chunk and the box, in volume coordinates.
                        let from = [0, 1, 2].map(|a| c0[a].max(start[a]));
                        let to = [0, 1, 2].map(|a| (c0[a] + cdim[a]).min(start[a] + extent[a]));
                        let w = to[0] - from[0];
                        for z in from[2]..to[2] {
                            for y in from[1]..to[1] {
                                let src = ((z - c0[2]) * cdim[1] + (y - c0[1])) * cdim[0]
                                    + (from[0] - c0[0]);
                                let dst = ((ch * extent[2] + z - start[2]) * extent[1]
                                    + (y - start[1]))
                                    * extent[0]
                                    + (from[0] - start[0]);
                                data[dst..dst + w].copy_from_slice(&chunk[src..src + w]);
                            }
                        }
                    }
                }
            }
        }
        let mut affine = meta.affine;
        for row in affine.iter_mut().take(3) {
            row[3] += (0..3).map(|a| row[a] * start[a] as f64).sum::<f64>();
        }
        let mut img = Image {
            data,
            shape: [c, extent[0], extent[1], extent[2]],
            spacing: meta.spacing,
            affine,
        };
        if let Some(w) = meta.window {
            scale_intensity_range(&mut img, &w.into());
        }
        Ok(img)
    }

    /// The whole array.
    ///
    /// # Errors
    /// As [`Entry::read_box`].
    pub fn read_all(&self, array: usize) -> Result<Image> {
        let s = self.header.arrays[array].shape;
        self.read_box(array, [0; 3], [s[1], s[2], s[3]])
    }

    /// Checks every chunk's checksum and that it decodes.
    ///
    /// # Errors
    /// The first damage found.
    pub fn verify(&self) -> Result<()> {
        for (a, meta) in self.header.arrays.iter().enumerate() {
            for i in 0..meta.n_chunks() {
                self.chunk(a, i)?;
            }
        }
        Ok(())
    }

    /// File size in bytes.
    pub fn len(&self) -> u64 {
        self.map.len() as u64
    }

    /// Whether the file is empty (never, for a valid entry).
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}
