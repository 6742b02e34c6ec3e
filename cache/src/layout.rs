//! How an entry lays its arrays out: stored types, chunk shapes, the header
//! that describes them, and the geometry of chunks (which rows of which chunk
//! a box or a plane rectangle needs).
//!
//! ```text
//! "D3CACHE2"                       magic (8 bytes)
//! u32 header_len, header (JSON)    key, source, and per array: type, shape, chunk, codec, geometry, decode map
//! per array: n_chunks × (u64 offset, u32 len, u32 raw_len, u64 xxh3)   the index
//! chunk payloads
//! u64 xxh3(header ‖ index), "D3CEND01"   footer: a truncated or torn file fails here
//! ```
//!
//! Chunks tile `(X, Y, Z)` per channel (edge chunks hold their true extent),
//! each x-fastest, in channel, z, y, x order.

use serde::{Deserialize, Serialize};

use crate::array::Affine;
use crate::codec::Codec;
use crate::decode_map::DecodeMap;

/// Magic of the current format. Version 1 (`D3CACHE1`) stored an intensity
/// window instead of a decode map; its entries are refused, never misread.
pub(crate) const MAGIC: &[u8; 8] = b"D3CACHE2";
/// Magic of format version 1.
pub(crate) const MAGIC_V1: &[u8; 8] = b"D3CACHE1";
/// The footer's closing bytes.
pub(crate) const END: &[u8; 8] = b"D3CEND01";
/// Bytes per chunk in the index.
pub(crate) const INDEX_ENTRY: usize = 24;

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

    /// Its numpy-style name (`int16`, `float32`, ...).
    pub fn name(self) -> &'static str {
        match self {
            StoredType::U8 => "uint8",
            StoredType::I8 => "int8",
            StoredType::U16 => "uint16",
            StoredType::I16 => "int16",
            StoredType::F32 => "float32",
        }
    }

    /// The narrowest type holding every value exactly (label maps become
    /// u8, integral images i16; anything else f32).
    pub fn smallest_exact(values: &[f32]) -> StoredType {
        let integral = values.iter().all(|v| v.fract() == 0.0);
        if !integral {
            return StoredType::F32;
        }
        let (lo, hi) = values
            .iter()
            .fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
        if lo >= 0.0 && hi <= 255.0 {
            StoredType::U8
        } else if lo >= -32768.0 && hi <= 32767.0 {
            StoredType::I16
        } else {
            StoredType::F32
        }
    }

    /// Appends `v` (exact in this type) in little-endian bytes.
    pub(crate) fn encode(self, v: f32, out: &mut Vec<u8>) {
        match self {
            StoredType::U8 => out.push(v as u8),
            StoredType::I8 => out.push((v as i8) as u8),
            StoredType::U16 => out.extend_from_slice(&(v as u16).to_le_bytes()),
            StoredType::I16 => out.extend_from_slice(&(v as i16).to_le_bytes()),
            StoredType::F32 => out.extend_from_slice(&v.to_le_bytes()),
        }
    }
}

/// How new entries are laid out: chunk edges and codec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Chunk edge per spatial axis.
    pub chunk: [usize; 3],
    /// Chunk codec.
    pub codec: Codec,
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
    /// Applied to the stored numbers on reading (None: read as stored).
    pub decode: Option<DecodeMap>,
    /// Chunk codec.
    pub codec: Codec,
}

impl ArrayMeta {
    /// Chunks along x, y and z.
    pub(crate) fn chunks_per_axis(&self) -> [usize; 3] {
        [0, 1, 2].map(|a| self.shape[a + 1].div_ceil(self.chunk[a]))
    }

    /// Chunks in all (every channel).
    pub(crate) fn n_chunks(&self) -> usize {
        self.shape[0] * self.chunks_per_axis().iter().product::<usize>()
    }

    /// Index of chunk `(channel, kz, ky, kx)`.
    pub(crate) fn chunk_index(&self, [ch, kz, ky, kx]: [usize; 4]) -> usize {
        let n = self.chunks_per_axis();
        ((ch * n[2] + kz) * n[1] + ky) * n[0] + kx
    }

    /// Calls `f(channel, start, end)` for every chunk in index order.
    pub(crate) fn for_each_chunk<E>(
        &self,
        mut f: impl FnMut(usize, [usize; 3], [usize; 3]) -> Result<(), E>,
    ) -> Result<(), E> {
        let n = self.chunks_per_axis();
        for c in 0..self.shape[0] {
            for kz in 0..n[2] {
                for ky in 0..n[1] {
                    for kx in 0..n[0] {
                        let start = [kx * self.chunk[0], ky * self.chunk[1], kz * self.chunk[2]];
                        let end =
                            [0, 1, 2].map(|a| (start[a] + self.chunk[a]).min(self.shape[a + 1]));
                        f(c, start, end)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// The rows of chunk `(channel, kz, ky, kx)` inside the box `[start,
    /// start + extent)`: where they lie in the chunk and in the box's output
    /// (channels stacked after one another).
    pub(crate) fn box_rows(
        &self,
        chunk: [usize; 4],
        start: [usize; 3],
        extent: [usize; 3],
    ) -> Rows {
        let end = [0, 1, 2].map(|a| start[a] + extent[a]);
        self.chunk_rows(chunk, [start, end], start, extent)
    }

    /// The rows of chunk `[kz, ky, kx]` in plane `z` inside `rect` (which the
    /// chunk must meet), addressed in a plane-sized output (row `y` at `y · nx`).
    pub(crate) fn plane_rows(&self, [kz, ky, kx]: [usize; 3], z: usize, rect: &PlaneRect) -> Rows {
        let [r0, r1] = [rect.start, rect.end];
        let region = [[r0[0], r0[1], z], [r1[0], r1[1], z + 1]];
        let plane = [self.shape[1], self.shape[2], 1];
        self.chunk_rows([0, kz, ky, kx], region, [0, 0, z], plane)
    }

    /// The rows of chunk `(channel, kz, ky, kx)` inside `region` (`[lo, hi)`
    /// in array coordinates): where they lie in the chunk, and in an output
    /// of `out_dims` voxels per channel whose voxel 0 is array voxel `origin`
    /// (channels stacked after one another).
    fn chunk_rows(
        &self,
        [ch, kz, ky, kx]: [usize; 4],
        [lo, hi]: [[usize; 3]; 2],
        origin: [usize; 3],
        out_dims: [usize; 3],
    ) -> Rows {
        let c0 = [kx * self.chunk[0], ky * self.chunk[1], kz * self.chunk[2]];
        let cdim = [0, 1, 2].map(|a| (c0[a] + self.chunk[a]).min(self.shape[a + 1]) - c0[a]);
        // Intersection of the chunk and the region, in array coordinates.
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
}

/// The header: what the entry holds and where it came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    /// The arrays in order.
    pub arrays: Vec<ArrayMeta>,
    /// The source (image) file, for reports.
    pub source: String,
    /// The entry key (hex): an entry is only served under its own key.
    pub key: String,
}

/// The part of a z-plane a reader needs: `start[0]..end[0]` along x,
/// `start[1]..end[1]` along y (half-open).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlaneRect {
    /// First x and y.
    pub start: [usize; 2],
    /// One past the last x and y.
    pub end: [usize; 2],
}

impl PlaneRect {
    /// The whole of an `nx × ny` plane.
    pub fn whole([nx, ny]: [usize; 2]) -> PlaneRect {
        PlaneRect {
            start: [0, 0],
            end: [nx, ny],
        }
    }

    /// The smallest rectangle holding both.
    pub fn union(self, other: PlaneRect) -> PlaneRect {
        PlaneRect {
            start: [0, 1].map(|a| self.start[a].min(other.start[a])),
            end: [0, 1].map(|a| self.end[a].max(other.end[a])),
        }
    }

    /// The part inside an `nx × ny` plane.
    pub fn clamped(self, dims: [usize; 2]) -> PlaneRect {
        PlaneRect {
            start: [0, 1].map(|a| self.start[a].min(dims[a])),
            end: [0, 1].map(|a| self.end[a].min(dims[a])),
        }
    }

    /// Whether it holds no voxel.
    pub fn is_empty(&self) -> bool {
        (0..2).any(|a| self.start[a] >= self.end[a])
    }

    /// The chunk indices along x and y it meets, for chunks of `chunk`
    /// voxels (non-empty rectangles only).
    pub fn chunks(&self, chunk: [usize; 3]) -> [std::ops::Range<usize>; 2] {
        [0, 1].map(|a| self.start[a] / chunk[a]..(self.end[a] - 1) / chunk[a] + 1)
    }
}

/// What a reader needs of one z-plane: a rectangle and, optionally, only
/// some of its rows (a resize reads only the rows its taps name).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlaneNeed<'m> {
    /// The part of the plane read.
    pub rect: PlaneRect,
    /// Per plane row `y` (the plane's height long): whether it is read;
    /// `None`: every row of the rectangle.
    pub rows: Option<&'m [bool]>,
}

impl From<PlaneRect> for PlaneNeed<'_> {
    fn from(rect: PlaneRect) -> Self {
        PlaneNeed { rect, rows: None }
    }
}

impl<'m> PlaneNeed<'m> {
    /// The row flags of rows `y0..y1` (`None`: all wanted).
    pub(crate) fn rows_in(&self, y0: usize, y1: usize) -> Option<&'m [bool]> {
        self.rows.map(|r| &r[y0..y1])
    }
}

/// Rows of a box copied from a chunk into an output: `ny · nz` rows of `width`
/// voxels; row `(y, z)` starts at `src + y·src_row + z·src_plane` in the
/// chunk's planes and at `dst + y·dst_row + z·dst_plane` in the output.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rows {
    pub width: usize,
    pub ny: usize,
    pub nz: usize,
    pub src: usize,
    pub src_row: usize,
    pub src_plane: usize,
    pub dst: usize,
    pub dst_row: usize,
    pub dst_plane: usize,
}

impl Rows {
    /// Voxels covered.
    pub(crate) fn len(&self) -> usize {
        self.width * self.ny * self.nz
    }

    /// Calls `f(src_start, dst_start)` for every row `y` with `wanted[y]`
    /// (every row when `None`), z outermost.
    #[inline(always)]
    pub(crate) fn for_each_wanted(&self, wanted: Option<&[bool]>, mut f: impl FnMut(usize, usize)) {
        for z in 0..self.nz {
            for y in (0..self.ny).filter(|&y| wanted.is_none_or(|w| w[y])) {
                f(
                    self.src + y * self.src_row + z * self.src_plane,
                    self.dst + y * self.dst_row + z * self.dst_plane,
                );
            }
        }
    }

    /// One past the last source and destination element touched (`None`
    /// when there are no rows).
    pub(crate) fn ends(&self) -> Option<(usize, usize)> {
        if self.len() == 0 {
            return None;
        }
        let (y, z) = (self.ny - 1, self.nz - 1);
        Some((
            self.src + y * self.src_row + z * self.src_plane + self.width,
            self.dst + y * self.dst_row + z * self.dst_plane + self.width,
        ))
    }
}
