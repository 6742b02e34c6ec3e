//! The entry file: one prepared sample (every key's array) as chunked,
//! byte-shuffled, compressed arrays with a checksummed index, read
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
//! (zstd over the whole chunk, or LZ4 per byte plane with incompressible planes
//! stored raw and read in place), and checksummed (xxh3 of the stored bytes)
//! so damage is found before decoding. Integer arrays carry the intensity window the float path
//! applies; reading applies it with the same function, so values are bit-identical.

use std::fs::File;
use std::io::Write;
use std::mem::MaybeUninit;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use dino3d_pipeline::exec::PlaneRect;
use dino3d_pipeline::nifti::affine::Affine;
use dino3d_pipeline::transforms::{Image, IntensityMap, ScaleIntensityRange};
use serde::{Deserialize, Serialize};

use crate::error::{CacheError, Result};
use crate::shuffle::shuffle;
use crate::window::{Rows, Segment, vector_path, window_word_slab};

const MAGIC: &[u8; 8] = b"D3CACHE1";
const END: &[u8; 8] = b"D3CEND01";
const INDEX_ENTRY: usize = 24;

/// Bytes read ahead at the start of an entry when it is opened: the header
/// and the index of a typical entry (512 chunks: 12 KiB of index).
const HEAD_PREFETCH: usize = 64 << 10;
/// zstd level: ratio barely improves above 3 on noisy medical data, decode speed
/// does not depend on it (../shared/spec/rust-stack.md §5).
pub const ZSTD_LEVEL: i32 = 3;

/// LZ4 high-compression level 5 (as nnU-Net's Blosc2 store): about 6% smaller
/// than LZ4's fast mode on int16 CT, decoded at the same speed.
const LZ4_MODE: lz4::block::CompressionMode = lz4::block::CompressionMode::HIGHCOMPRESSION(5);

/// LZ4's fast mode, the cheap test of whether a plane compresses at all.
const LZ4_FAST: lz4::block::CompressionMode = lz4::block::CompressionMode::DEFAULT;

/// How chunk bytes are compressed (after byte shuffling).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Codec {
    /// zstd level [`ZSTD_LEVEL`]: the smallest entries, about 1 GB/s to decode.
    /// Entries written before the codec was recorded use it.
    #[default]
    Zstd,
    /// LZ4 (block format) per byte plane: larger entries, several times
    /// faster to decode. A plane LZ4 cannot shrink by 1/16 (the noisy low
    /// bytes of CT or MRI) is stored raw and read straight from the map, so
    /// a box read neither copies nor decodes it beyond the rows it keeps.
    Lz4,
}

/// Per-plane layout of an LZ4 chunk: `planes` little-endian u32 lengths
/// (bit 31 set: stored raw; bit 30 set: one byte repeated over the plane),
/// then the planes' bytes in order.
const RAW_PLANE: u32 = 1 << 31;
/// A plane of one repeated byte (the high bytes of air or of a flat
/// region): stored as that byte and filled on read, cheaper than LZ4's
/// decoding of the same run.
const CONST_PLANE: u32 = 1 << 30;

impl Codec {
    /// Compresses a chunk's shuffled bytes (`elem` planes of equal size).
    fn compress(self, shuffled: &[u8], elem: usize) -> std::io::Result<Vec<u8>> {
        match self {
            Codec::Zstd => zstd::bulk::compress(shuffled, ZSTD_LEVEL),
            Codec::Lz4 => {
                let n = shuffled.len() / elem;
                let mut head = Vec::with_capacity(4 * elem);
                let mut body = Vec::with_capacity(shuffled.len());
                for plane in shuffled.chunks(n.max(1)).take(elem) {
                    if let Some(&first) = plane.first().filter(|&&b| plane.iter().all(|&x| x == b))
                    {
                        head.extend_from_slice(&(1 | CONST_PLANE).to_le_bytes());
                        body.push(first);
                        continue;
                    }
                    // High compression searches hardest on bytes it cannot
                    // shrink (the noisy low bytes, half of every entry): when
                    // fast LZ4 saves under 1/64, the plane goes raw at once.
                    let fast = lz4::block::compress(plane, Some(LZ4_FAST), false)?;
                    if fast.len() + plane.len() / 64 >= plane.len() {
                        head.extend_from_slice(&(plane.len() as u32 | RAW_PLANE).to_le_bytes());
                        body.extend_from_slice(plane);
                        continue;
                    }
                    let packed = lz4::block::compress(plane, Some(LZ4_MODE), false)?;
                    let (len, bytes) = if packed.len() + plane.len() / 16 < plane.len() {
                        (packed.len() as u32, &packed[..])
                    } else {
                        (plane.len() as u32 | RAW_PLANE, plane)
                    };
                    head.extend_from_slice(&len.to_le_bytes());
                    body.extend_from_slice(bytes);
                }
                head.extend_from_slice(&body);
                Ok(head)
            }
        }
    }
}

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

/// The float value of every possible 8- or 16-bit stored value, window applied:
/// decoding a voxel is then one table load, the same arithmetic as the float
/// path because the table is filled by it.
fn lookup_table(dtype: StoredType, map: Option<&IntensityMap>) -> Vec<f32> {
    let value = |v: f32| map.map_or(v, |m| m.apply(v));
    match dtype {
        StoredType::U8 => (0..=255u8).map(|b| value(f32::from(b))).collect(),
        StoredType::I8 => (0..=255u8).map(|b| value(f32::from(b as i8))).collect(),
        StoredType::U16 => (0..=u16::MAX).map(|v| value(f32::from(v))).collect(),
        StoredType::I16 => (0..=u16::MAX).map(|v| value(f32::from(v as i16))).collect(),
        StoredType::F32 => Vec::new(),
    }
}

/// A chunk's checksum: xxh3-64 of its compressed bytes, computed with the
/// vector instructions the CPU has (checked on every read, so its speed counts).
fn chunk_checksum(packed: &[u8]) -> u64 {
    twox_hash::XxHash3_64::oneshot(packed)
}

/// Whether reading `dtype` through `map` needs the lookup table, i.e. is not
/// computed on the vector path ([`window_word_rows`]).
fn uses_table(dtype: StoredType, map: Option<&IntensityMap>) -> bool {
    let words = matches!(dtype, StoredType::U16 | StoredType::I16);
    !(words && map.is_some() && vector_path())
}

/// A decompressed chunk's byte planes (plane-major after shuffling): voxel `i`
/// of a 16-bit array is `(lo[i], hi[i])`.
enum Planes<'a> {
    Bytes(&'a [u8]),
    /// Low bytes, high bytes (the table knows the signedness).
    Words(&'a [u8], &'a [u8]),
    F32([&'a [u8]; 4]),
}

impl<'a> Planes<'a> {
    /// From the byte planes of `dtype` (one per byte of a voxel, low first).
    fn from_planes(dtype: StoredType, p: [&'a [u8]; 4]) -> Planes<'a> {
        match dtype {
            StoredType::U8 | StoredType::I8 => Planes::Bytes(p[0]),
            StoredType::U16 | StoredType::I16 => Planes::Words(p[0], p[1]),
            StoredType::F32 => Planes::F32(p),
        }
    }

    /// Every row of `rows` from these planes into `out` (see [`Self::decode`];
    /// windowed 16-bit voxels without a table take [`Entry::window_slab`]).
    fn decode_rows(
        &self,
        rows: Rows,
        out: &mut [MaybeUninit<f32>],
        table: &[f32],
        map: Option<&IntensityMap>,
    ) {
        let w = rows.width;
        rows.for_each(|s, d| self.decode(s, &mut out[d..d + w], table, map));
    }

    /// Voxels `from..from + out.len()` as float32: unshuffling, conversion and
    /// windowing in one pass over only the voxels the caller keeps. Windowed
    /// 16-bit values are computed with vector instructions where
    /// [`uses_table`] says so; other integers go through `table`
    /// ([`lookup_table`]), float32 through `map`.
    fn decode(
        &self,
        from: usize,
        out: &mut [MaybeUninit<f32>],
        table: &[f32],
        map: Option<&IntensityMap>,
    ) {
        let to = from + out.len();
        match *self {
            Planes::Bytes(p) => {
                for (o, &b) in out.iter_mut().zip(&p[from..to]) {
                    o.write(table[usize::from(b)]);
                }
            }
            Planes::Words(lo, hi) => {
                // 65,536 entries: every u16 index is in bounds.
                let table: &[f32; 65536] = table.try_into().expect("a 16-bit table");
                for ((o, &l), &h) in out.iter_mut().zip(&lo[from..to]).zip(&hi[from..to]) {
                    o.write(table[usize::from(u16::from_le_bytes([l, h]))]);
                }
            }
            Planes::F32([p0, p1, p2, p3]) => {
                for (o, i) in out.iter_mut().zip(from..to) {
                    let v = f32::from_le_bytes([p0[i], p1[i], p2[i], p3[i]]);
                    o.write(map.map_or(v, |m| m.apply(v)));
                }
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
    /// Chunk codec.
    #[serde(default)]
    pub codec: Codec,
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

/// How new entries are laid out: chunk edges and codec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Chunk edge per spatial axis.
    pub chunk: [usize; 3],
    /// Chunk codec.
    pub codec: Codec,
}

/// Writes an entry atomically (temporary file in the same folder, fsync,
/// rename): a crash leaves at most a temporary file, never a torn entry.
///
/// # Errors
/// I/O failures (disk full, read-only folder) with the path.
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
        let meta = ArrayMeta {
            key: a.key.to_string(),
            dtype: a.dtype,
            shape: a.image.shape,
            chunk,
            spacing: a.image.spacing,
            affine: a.image.affine,
            window: a.window,
            codec,
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

/// The rows of chunk `(channel, kz, ky, kx)` inside the box `[start, start +
/// extent)`: where they lie in the chunk and in the box's output (channels
/// stacked after one another).
fn box_rows(meta: &ArrayMeta, chunk: [usize; 4], start: [usize; 3], extent: [usize; 3]) -> Rows {
    let end = [0, 1, 2].map(|a| start[a] + extent[a]);
    chunk_rows(meta, chunk, [start, end], start, extent)
}

/// The rows of chunk `[kz, ky, kx]` in plane `z` inside `rect` (which the
/// chunk must meet), addressed in a plane-sized output (row `y` at `y · nx`).
fn plane_rows(meta: &ArrayMeta, [kz, ky, kx]: [usize; 3], z: usize, rect: &PlaneRect) -> Rows {
    let [r0, r1] = [rect.start, rect.end];
    let region = [[r0[0], r0[1], z], [r1[0], r1[1], z + 1]];
    let plane = [meta.shape[1], meta.shape[2], 1];
    chunk_rows(meta, [0, kz, ky, kx], region, [0, 0, z], plane)
}

/// The rows of chunk `(channel, kz, ky, kx)` inside `region` (`[lo, hi)` in
/// volume coordinates): where they lie in the chunk, and in an output of
/// `out_dims` voxels per channel whose voxel 0 is volume voxel `origin`
/// (channels stacked after one another).
fn chunk_rows(
    meta: &ArrayMeta,
    [ch, kz, ky, kx]: [usize; 4],
    [lo, hi]: [[usize; 3]; 2],
    origin: [usize; 3],
    out_dims: [usize; 3],
) -> Rows {
    let c0 = [kx * meta.chunk[0], ky * meta.chunk[1], kz * meta.chunk[2]];
    let cdim = [0, 1, 2].map(|a| (c0[a] + meta.chunk[a]).min(meta.shape[a + 1]) - c0[a]);
    // Intersection of the chunk and the region, in volume coordinates.
    let from = [0, 1, 2].map(|a| c0[a].max(lo[a]));
    let to = [0, 1, 2].map(|a| (c0[a] + cdim[a]).min(hi[a]));
    let [ox, oy, oz] = out_dims;
    Rows {
        width: to[0] - from[0],
        ny: to[1] - from[1],
        nz: to[2] - from[2],
        src: ((from[2] - c0[2]) * cdim[1] + (from[1] - c0[1])) * cdim[0] + (from[0] - c0[0]),
        src_row: cdim[0],
        src_plane: cdim[0] * cdim[1],
        dst: ((ch * oz + from[2] - origin[2]) * oy + (from[1] - origin[1])) * ox
            + (from[0] - origin[0]),
        dst_row: ox,
        dst_plane: ox * oy,
    }
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

/// Where a decoded byte plane lives: `(offset, length)` in the map (planes
/// stored raw) or in the decoding thread's [`Scratch`] buffer, or `length`
/// copies of one byte (a constant plane, in [`Scratch::constant`]).
#[derive(Debug, Clone, Copy)]
enum PlaneAt {
    Map(usize, usize),
    Buf(usize, usize),
    Const(u8, usize),
}

/// Per-thread decoding state, reused across chunks: no allocation or
/// context set-up per chunk.
#[derive(Default)]
struct Scratch {
    zstd: Option<zstd::bulk::Decompressor<'static>>,
    /// Decompressed planes; the first `used` bytes are in use. It only ever
    /// grows and is never cleared, so a chunk decompresses into memory
    /// without filling it first (the decompressors overwrite all of it).
    buf: Vec<u8>,
    used: usize,
    /// Per byte value, that byte repeated: constant planes point here
    /// instead of being filled for every chunk.
    constants: Vec<Vec<u8>>,
}

impl Scratch {
    /// Starts over (the bytes stay, to be overwritten).
    fn reset(&mut self) {
        self.used = 0;
    }

    /// Frees the buffer beyond `keep` bytes.
    fn trim(&mut self, keep: usize) {
        if self.buf.len() > keep {
            self.buf.truncate(keep);
            self.buf.shrink_to_fit();
        }
        self.used = self.used.min(keep);
    }

    /// Reserves the next `n` bytes of `buf` (zeroed only when `buf` grows;
    /// otherwise stale) and returns their offset.
    fn take(&mut self, n: usize) -> usize {
        let at = self.used;
        if self.buf.len() < at + n {
            self.buf.resize(at + n, 0);
        }
        self.used = at + n;
        at
    }

    /// Makes `byte` repeated `n` times available to [`Entry::plane`].
    fn constant(&mut self, byte: u8, n: usize) {
        if self.constants.is_empty() {
            self.constants = vec![Vec::new(); 256];
        }
        let run = &mut self.constants[usize::from(byte)];
        if run.len() < n {
            run.resize(n, byte);
        }
    }
}

/// Scratch bytes a thread keeps after a plane-by-plane decode: a box read
/// of 32³ chunks needs at most a chunk row (about 0.5 MiB for a 512-wide
/// volume); a whole slab of a large volume can need tens of MiB once.
const SCRATCH_KEEP: usize = 4 << 20;

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

/// See [`Entry::decoding`].
struct Decoding<'a> {
    /// The window applied on reading, if any.
    map: Option<IntensityMap>,
    /// The per-value table (empty when the vector kernels compute the window).
    table: &'a [f32],
    computed: bool,
}

impl Decoding<'_> {
    /// The window, when the vector kernels compute it.
    fn computed(&self) -> Option<&IntensityMap> {
        self.map.as_ref().filter(|_| self.computed)
    }
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
    /// Per array: its decode table, built on first read.
    tables: Vec<OnceLock<Vec<f32>>>,
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
        // Reads fetch what they touch and no more. Otherwise the first touch
        // of the header has the kernel read around it by the device's
        // readahead window (8 MiB on the VM of BENCHMARKS.md: whole entries),
        // so a cold crop would pull in the entire file. Each read queues its
        // own ranges instead (`prefetch_run`). Advice only: a refusal costs
        // speed, never correctness.
        let _ = map.advise(memmap2::Advice::Random);
        let _ = map.advise_range(memmap2::Advice::WillNeed, 0, map.len().min(HEAD_PREFETCH));
        let _ = map.advise_range(
            memmap2::Advice::WillNeed,
            map.len().saturating_sub(16),
            map.len().min(16),
        );
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
        if at > HEAD_PREFETCH {
            // A large index (small chunks, big volumes): queue all of it
            // before the checksum below reads it.
            let _ = map.advise_range(memmap2::Advice::WillNeed, 0, at);
        }
        let stored = u64::from_le_bytes(
            map[map.len() - 16..map.len() - 8]
                .try_into()
                .expect("8 bytes"),
        );
        if xxhash_rust::xxh3::xxh3_64(&map[12..at]) != stored {
            return Err(corrupt("header/index checksum mismatch"));
        }
        let tables = header.arrays.iter().map(|_| OnceLock::new()).collect();
        Ok(Entry {
            path: path.to_path_buf(),
            map,
            header,
            index_at,
            payload_at: at,
            tables,
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

    /// Checks and decodes chunk `i` of array `array`, then calls `f` with its
    /// byte planes: decompressed into a per-thread buffer, or, for planes
    /// stored raw, straight from the map.
    fn with_chunk_planes<T>(
        &self,
        array: usize,
        i: usize,
        f: impl FnOnce(Planes<'_>) -> T,
    ) -> Result<T> {
        SCRATCH.with(|cell| {
            let scratch = &mut *cell.borrow_mut();
            scratch.reset();
            let at = self.decode_chunk(array, i, scratch)?;
            let dtype = self.header.arrays[array].dtype;
            Ok(f(Planes::from_planes(
                dtype,
                at.map(|p| self.plane(p, scratch)),
            )))
        })
    }

    /// The bytes of a decoded plane.
    fn plane<'a>(&'a self, at: PlaneAt, scratch: &'a Scratch) -> &'a [u8] {
        match at {
            PlaneAt::Map(from, len) => &self.map[from..from + len],
            PlaneAt::Buf(from, len) => &scratch.buf[from..from + len],
            PlaneAt::Const(byte, len) => &scratch.constants[usize::from(byte)][..len],
        }
    }

    /// Checks chunk `i` of array `array` and decodes it, appending its
    /// compressed planes to `scratch.buf` (after its `used` bytes); returns where each plane lives
    /// (planes stored raw are read in place from the map).
    fn decode_chunk(&self, array: usize, i: usize, scratch: &mut Scratch) -> Result<[PlaneAt; 4]> {
        let meta = &self.header.arrays[array];
        let r = self.chunk_ref(array, i)?;
        let packed_at = self.payload_at + r.offset;
        let packed = &self.map[packed_at..][..r.len];
        let corrupt = |why: String| {
            CacheError::corrupt(&self.path, &format!("chunk {i} of `{}`: {why}", meta.key))
        };
        if chunk_checksum(packed) != r.hash {
            return Err(corrupt("checksum mismatch".into()));
        }
        let elem = meta.dtype.size();
        if !r.raw_len.is_multiple_of(elem) {
            return Err(corrupt("wrong size".into()));
        }
        let n = r.raw_len / elem;
        let mut planes = [PlaneAt::Buf(0, 0); 4];
        match meta.codec {
            Codec::Zstd => {
                if scratch.zstd.is_none() {
                    scratch.zstd = Some(
                        zstd::bulk::Decompressor::new()
                            .map_err(|e| CacheError::io(&self.path, e))?,
                    );
                }
                let base = scratch.take(r.raw_len);
                let dec = scratch.zstd.as_mut().expect("initialised above");
                let got = dec
                    .decompress_to_buffer(packed, &mut scratch.buf[base..base + r.raw_len])
                    .map_err(|e| corrupt(e.to_string()))?;
                if got != r.raw_len {
                    return Err(corrupt("wrong size".into()));
                }
                for (p, plane) in planes.iter_mut().enumerate().take(elem) {
                    *plane = PlaneAt::Buf(base + p * n, n);
                }
            }
            Codec::Lz4 => {
                // Plane lengths first, then the planes (see `RAW_PLANE`).
                let head = 4 * elem;
                if packed.len() < head {
                    return Err(corrupt("truncated plane table".into()));
                }
                let mut at = head;
                for (p, plane) in planes.iter_mut().enumerate().take(elem) {
                    let word =
                        u32::from_le_bytes(packed[4 * p..4 * p + 4].try_into().expect("4 bytes"));
                    let len = (word & !(RAW_PLANE | CONST_PLANE)) as usize;
                    let stored = packed
                        .get(at..at + len)
                        .ok_or_else(|| corrupt("plane past the chunk".into()))?;
                    if word & CONST_PLANE != 0 {
                        if len != 1 || word & RAW_PLANE != 0 {
                            return Err(corrupt("bad constant plane".into()));
                        }
                        scratch.constant(stored[0], n);
                        *plane = PlaneAt::Const(stored[0], n);
                    } else if word & RAW_PLANE != 0 {
                        if len != n {
                            return Err(corrupt("wrong size".into()));
                        }
                        *plane = PlaneAt::Map(packed_at + at, len);
                    } else {
                        let size = i32::try_from(n).map_err(|e| corrupt(e.to_string()))?;
                        let to = scratch.take(n);
                        let got = lz4::block::decompress_to_buffer(
                            stored,
                            Some(size),
                            &mut scratch.buf[to..to + n],
                        )
                        .map_err(|e| corrupt(e.to_string()))?;
                        if got != n {
                            return Err(corrupt("wrong size".into()));
                        }
                        *plane = PlaneAt::Buf(to, n);
                    }
                    at += len;
                }
                if at != packed.len() {
                    return Err(corrupt("wrong size".into()));
                }
            }
        }
        Ok(planes)
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
        let total = c * extent.iter().product::<usize>();
        // Every voxel of the box lies in exactly one chunk, so the loop below
        // writes each output element once: no need to zero it first.
        let mut data: Vec<f32> = Vec::with_capacity(total);
        let out = &mut data.spare_capacity_mut()[..total];
        let mut written = 0usize;
        // Windowed 16-bit voxels are computed by the vector kernels, slab by
        // slab; everything else goes through the table (or plain conversion).
        let decoding = self.decoding(array);
        let (map, computed, table) = (decoding.map.as_ref(), decoding.computed(), decoding.table);
        let lo = [0, 1, 2].map(|a| start[a] / meta.chunk[a]);
        let hi = [0, 1, 2].map(|a| (start[a] + extent[a] - 1) / meta.chunk[a]);
        self.prefetch(array, c, n, lo, hi)?;
        for ch in 0..c {
            for kz in lo[2]..=hi[2] {
                for ky in lo[1]..=hi[1] {
                    if let Some(map) = computed {
                        written +=
                            self.window_slab(array, [ch, kz, ky], start, extent, map, out)?;
                        continue;
                    }
                    for kx in lo[0]..=hi[0] {
                        let i = ((ch * n[2] + kz) * n[1] + ky) * n[0] + kx;
                        let rows = box_rows(meta, [ch, kz, ky, kx], start, extent);
                        self.with_chunk_planes(array, i, |planes| {
                            planes.decode_rows(rows, out, table, map);
                        })?;
                        written += rows.len();
                    }
                }
            }
        }
        // Chunks tile the array, so the box was covered exactly once; checked
        // because the length is only set on that promise.
        assert_eq!(written, total, "chunks must tile the box");
        // SAFETY: `written == total` and the intersections of the box with the
        // disjoint chunks partition the box, so every element of
        // `data[..total]` was initialised by `decode` above (tested by the
        // box round trips in tests/cache.rs).
        unsafe { data.set_len(total) };
        let mut affine = meta.affine;
        for row in affine.iter_mut().take(3) {
            row[3] += (0..3).map(|a| row[a] * start[a] as f64).sum::<f64>();
        }
        Ok(Image {
            data,
            shape: [c, extent[0], extent[1], extent[2]],
            spacing: meta.spacing,
            affine,
        })
    }

    /// The part of the box in chunk slab `(channel, kz, ky)` (all chunks
    /// along x), windowed 16-bit voxels: every chunk of the slab is decoded
    /// first, then the output rows are written left to right across them
    /// ([`window_word_slab`]). Returns the voxels written.
    fn window_slab(
        &self,
        array: usize,
        [ch, kz, ky]: [usize; 3],
        start: [usize; 3],
        extent: [usize; 3],
        map: &IntensityMap,
        out: &mut [MaybeUninit<f32>],
    ) -> Result<usize> {
        let meta = &self.header.arrays[array];
        let n = meta.chunks_per_axis();
        let kxs = start[0] / meta.chunk[0]..=(start[0] + extent[0] - 1) / meta.chunk[0];
        SCRATCH.with(|cell| {
            let scratch = &mut *cell.borrow_mut();
            scratch.reset();
            let mut decoded = Vec::with_capacity(kxs.clone().count());
            for kx in kxs {
                let i = ((ch * n[2] + kz) * n[1] + ky) * n[0] + kx;
                let at = self.decode_chunk(array, i, scratch)?;
                decoded.push((at, box_rows(meta, [ch, kz, ky, kx], start, extent)));
            }
            let segments: Vec<Segment<'_>> = decoded
                .iter()
                .map(|&(at, rows)| Segment {
                    lo: self.plane(at[0], scratch),
                    hi: self.plane(at[1], scratch),
                    rows,
                })
                .collect();
            window_word_slab(&segments, meta.dtype == StoredType::I16, map, out);
            Ok(segments.iter().map(|s| s.rows.len()).sum())
        })
    }

    /// How array `array`'s voxels become f32 (its window, and the lookup
    /// table when the vector kernels do not apply).
    fn decoding(&self, array: usize) -> Decoding<'_> {
        let meta = &self.header.arrays[array];
        let map = meta.window.map(|w| IntensityMap::new(&w.into()));
        let computed = map.is_some() && !uses_table(meta.dtype, map.as_ref());
        let table = if computed {
            &[][..]
        } else {
            self.tables[array].get_or_init(|| lookup_table(meta.dtype, map.as_ref()))
        };
        Decoding {
            map,
            table,
            computed,
        }
    }

    /// Asks the kernel to read every chunk of the box at once (one
    /// `madvise(WILLNEED)` per run of chunks adjacent in the file), so a cold
    /// read queues all its I/O instead of faulting page by page.
    fn prefetch(
        &self,
        array: usize,
        channels: usize,
        n: [usize; 3],
        lo: [usize; 3],
        hi: [usize; 3],
    ) -> Result<()> {
        for ch in 0..channels {
            for kz in lo[2]..=hi[2] {
                for ky in lo[1]..=hi[1] {
                    self.prefetch_run(
                        array,
                        ((ch * n[2] + kz) * n[1] + ky) * n[0],
                        lo[0]..hi[0] + 1,
                    )?;
                }
            }
        }
        Ok(())
    }

    /// `madvise(WILLNEED)` on chunks `row + kx` for `kx` in `kxs` (adjacent
    /// in the file: one chunk row along x).
    fn prefetch_run(&self, array: usize, row: usize, kxs: std::ops::Range<usize>) -> Result<()> {
        if kxs.is_empty() {
            return Ok(());
        }
        let first = self.chunk_ref(array, row + kxs.start)?;
        let last = self.chunk_ref(array, row + kxs.end - 1)?;
        let (from, to) = (first.offset, last.offset + last.len);
        if to > from {
            // Advice only: a refusal costs speed, never correctness.
            let _ =
                self.map
                    .advise_range(memmap2::Advice::WillNeed, self.payload_at + from, to - from);
        }
        Ok(())
    }

    /// The whole array.
    ///
    /// # Errors
    /// As [`Entry::read_box`].
    pub fn read_all(&self, array: usize) -> Result<Image> {
        let s = self.header.arrays[array].shape;
        self.read_box(array, [0; 3], [s[1], s[2], s[3]])
    }

    /// Decodes array `array` one z-plane at a time, channel by channel and in
    /// increasing z within each channel. For each
    /// plane `z` for which `needs(z)` gives a rectangle, calls
    /// `f(channel, z, plane)` with an `nx · ny` plane (x fastest) whose voxels
    /// inside the rectangle are those [`Entry::read_all`] gives, bit for bit;
    /// voxels outside it hold whatever an earlier plane left there. Each slab
    /// of chunks along z is decoded once (only the chunks the slab's
    /// rectangles touch) and the volume is never materialised: a reader that
    /// consumes planes as they come (cutting views) pays no full-volume write.
    ///
    /// `f` must not read from a cache entry itself (the decoding thread's
    /// scratch is in use while it runs).
    ///
    /// # Errors
    /// Damage in a chunk this reads; planes before it were already given to `f`.
    pub fn for_each_plane(
        &self,
        array: usize,
        needs: impl Fn(usize) -> Option<PlaneRect>,
        mut f: impl FnMut(usize, usize, &[f32]),
    ) -> Result<()> {
        let meta = &self.header.arrays[array];
        let [c, nx, ny, nz] = meta.shape;
        let n = meta.chunks_per_axis();
        let decoding = self.decoding(array);
        let rects: Vec<Option<PlaneRect>> = (0..nz)
            .map(|z| {
                needs(z)
                    .map(|r| r.clamped([nx, ny]))
                    .filter(|r| !r.is_empty())
            })
            .collect();
        // Per slab of chunks along z: the union of its planes' rectangles.
        let slab_rects: Vec<Option<PlaneRect>> = (0..n[2])
            .map(|kz| {
                let z_range = kz * meta.chunk[2]..((kz + 1) * meta.chunk[2]).min(nz);
                rects[z_range]
                    .iter()
                    .flatten()
                    .copied()
                    .reduce(PlaneRect::union)
            })
            .collect();
        // Queue all the I/O at once (a cold entry), before decoding any of it.
        for ch in 0..c {
            for (kz, rect) in slab_rects.iter().enumerate() {
                if let Some(rect) = rect {
                    let span = rect.chunks(meta.chunk);
                    for ky in span[1].clone() {
                        self.prefetch_run(
                            array,
                            ((ch * n[2] + kz) * n[1] + ky) * n[0],
                            span[0].clone(),
                        )?;
                    }
                }
            }
        }
        let mut plane = vec![0f32; nx * ny];
        let result =
            self.planes_of_slabs(array, &rects, &slab_rects, &decoding, &mut plane, &mut f);
        // A slab of a large volume can leave tens of MiB in this thread's
        // scratch; give back what ordinary reads would not use again.
        SCRATCH.with(|cell| cell.borrow_mut().trim(SCRATCH_KEEP));
        result
    }

    /// The decoding loop of [`Entry::for_each_plane`].
    #[allow(clippy::too_many_arguments)]
    fn planes_of_slabs(
        &self,
        array: usize,
        rects: &[Option<PlaneRect>],
        slab_rects: &[Option<PlaneRect>],
        decoding: &Decoding<'_>,
        plane: &mut [f32],
        f: &mut impl FnMut(usize, usize, &[f32]),
    ) -> Result<()> {
        let meta = &self.header.arrays[array];
        let [c, _, _, nz] = meta.shape;
        let n = meta.chunks_per_axis();
        let (map, computed, table) = (decoding.map.as_ref(), decoding.computed(), decoding.table);
        for ch in 0..c {
            for (kz, slab_rect) in slab_rects.iter().enumerate() {
                let z_range = kz * meta.chunk[2]..((kz + 1) * meta.chunk[2]).min(nz);
                let Some(slab_rect) = *slab_rect else {
                    continue;
                };
                SCRATCH.with(|cell| -> Result<()> {
                    let scratch = &mut *cell.borrow_mut();
                    scratch.reset();
                    // The chunks of this slab that some plane's rectangle
                    // touches, each decoded once.
                    let slab_span = slab_rect.chunks(meta.chunk);
                    let mut decoded = vec![None; n[0] * n[1]];
                    for ky in slab_span[1].clone() {
                        for kx in slab_span[0].clone() {
                            let i = ((ch * n[2] + kz) * n[1] + ky) * n[0] + kx;
                            decoded[ky * n[0] + kx] = Some(self.decode_chunk(array, i, scratch)?);
                        }
                    }
                    let scratch = &*scratch;
                    let planes_of = |at: [PlaneAt; 4]| at.map(|p| self.plane(p, scratch));
                    for z in z_range.clone() {
                        let Some(rect) = rects[z] else {
                            continue;
                        };
                        // SAFETY: `MaybeUninit<f32>` has the layout of `f32`,
                        // and only initialised `f32` values are written
                        // through this view (which ends before `plane` is
                        // read), so `plane` stays initialised.
                        let out =
                            unsafe { &mut *(&mut *plane as *mut [f32] as *mut [MaybeUninit<f32>]) };
                        let span = rect.chunks(meta.chunk);
                        for ky in span[1].clone() {
                            // The chunks of this chunk row the rectangle meets
                            // (decoded above: the slab's rectangle holds it).
                            let row_chunks = span[0].clone().map(|kx| {
                                let at =
                                    decoded[ky * n[0] + kx].expect("inside the slab's rectangle");
                                (at, plane_rows(meta, [kz, ky, kx], z, &rect))
                            });
                            if let Some(map) = computed {
                                let segments: Vec<Segment<'_>> = row_chunks
                                    .map(|(at, rows)| {
                                        let [lo, hi, ..] = planes_of(at);
                                        Segment { lo, hi, rows }
                                    })
                                    .collect();
                                window_word_slab(
                                    &segments,
                                    meta.dtype == StoredType::I16,
                                    map,
                                    out,
                                );
                            } else {
                                for (at, rows) in row_chunks {
                                    Planes::from_planes(meta.dtype, planes_of(at))
                                        .decode_rows(rows, out, table, map);
                                }
                            }
                        }
                        // The chunks met tile the rectangle, so all of it was written.
                        f(ch, z, plane);
                    }
                    Ok(())
                })?;
            }
        }
        Ok(())
    }

    /// Checks every chunk's checksum and that it decodes.
    ///
    /// # Errors
    /// The first damage found.
    pub fn verify(&self) -> Result<()> {
        // Every byte is read: queue it all at once.
        let _ = self.map.advise(memmap2::Advice::WillNeed);
        for (a, meta) in self.header.arrays.iter().enumerate() {
            for i in 0..meta.n_chunks() {
                self.with_chunk_planes(a, i, |_| ())?;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The run-time dispatched checksum is xxh3-64 itself, so entries written
    /// before it (and by any xxh3 implementation) still verify.
    #[test]
    fn chunk_checksum_is_xxh3_64() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let bytes: Vec<u8> = (0..70_000)
            .map(|_| {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1);
                (state >> 56) as u8
            })
            .collect();
        for len in [
            0, 1, 3, 16, 17, 128, 129, 240, 241, 1024, 4097, 65_536, 70_000,
        ] {
            assert_eq!(
                chunk_checksum(&bytes[..len]),
                xxhash_rust::xxh3::xxh3_64(&bytes[..len]),
                "length {len}"
            );
        }
    }

    /// LZ4 chunks store each byte plane as one repeated byte, compressed or,
    /// when LZ4 cannot shrink it, raw: noisy low bytes go raw, constant high
    /// bytes as one byte, high bytes in runs of several values compressed;
    /// all read back exactly (whole, and as a box).
    #[test]
    fn lz4_planes_are_constant_raw_or_compressed_and_read_back_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let shape = [1, 32, 32, 32];
        // High byte 4 everywhere, or 3 in the first 12 planes and 4 after.
        for (name, base_of_z) in [
            ("constant", (|_| 1024) as fn(usize) -> i16),
            ("runs", |z| if z < 12 { 768 } else { 1024 }),
        ] {
            let path = dir.path().join(format!("{name}.d3c"));
            let mut state = 7u64;
            let data: Vec<f32> = (0..32 * 32 * 32)
                .map(|i| {
                    state = state
                        .wrapping_mul(6_364_136_223_846_793_005)
                        .wrapping_add(1);
                    f32::from(((state >> 33) % 256) as i16 + base_of_z(i / (32 * 32)))
                })
                .collect();
            let image = Image {
                data: data.clone(),
                shape,
                spacing: [1.0; 3],
                affine: dino3d_pipeline::nifti::affine::IDENTITY,
            };
            let arrays = [ArrayToWrite {
                key: "image",
                image: &image,
                dtype: StoredType::I16,
                window: None,
            }];
            let layout = Layout {
                chunk: [32, 32, 32],
                codec: Codec::Lz4,
            };
            write_entry(&path, &arrays, layout, "src", "key").unwrap();
            let entry = Entry::open(&path).unwrap();
            let r = entry.chunk_ref(0, 0).unwrap();
            let packed = &entry.map[entry.payload_at + r.offset..][..r.len];
            let word = |p: usize| u32::from_le_bytes(packed[4 * p..4 * p + 4].try_into().unwrap());
            assert_ne!(word(0) & RAW_PLANE, 0, "noisy low bytes are stored raw");
            assert_eq!(word(0) & !RAW_PLANE, 32 * 32 * 32);
            if name == "constant" {
                assert_eq!(word(1), 1 | CONST_PLANE, "constant high bytes are one byte");
                assert_eq!(packed[8 + 32 * 32 * 32], 4, "the high byte of 1024..1279");
            } else {
                assert_eq!(
                    word(1) & (RAW_PLANE | CONST_PLANE),
                    0,
                    "runs are compressed"
                );
                assert!((2..1024).contains(&(word(1) as usize)));
            }
            assert_eq!(entry.read_all(0).unwrap().data, data, "{name}");
            let b = entry.read_box(0, [3, 5, 7], [20, 9, 11]).unwrap();
            assert_eq!(b.data[0], data[(7 * 32 + 5) * 32 + 3], "{name}");
            entry.verify().unwrap();
        }
    }
}
