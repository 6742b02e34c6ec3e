//! What the crate's unit tests share: an identity affine, reproducible noise,
//! a one-array LZ4 entry, and a chunk in the format before packed planes.

use std::path::Path;

use crate::codec::{Codec, LZ4_MODE, RAW_PLANE};
use crate::layout::{Layout, StoredType};
use crate::write::{ArrayToWrite, write_entry};

pub(crate) const IDENTITY: crate::Affine = [
    [1.0, 0.0, 0.0, 0.0],
    [0.0, 1.0, 0.0, 0.0],
    [0.0, 0.0, 1.0, 0.0],
    [0.0, 0.0, 0.0, 1.0],
];

/// The next draw of a 64-bit linear congruential generator (Knuth's MMIX
/// multiplier), its high bits being the random ones.
pub(crate) fn lcg(state: &mut u64) -> u64 {
    *state = state
        .wrapping_mul(6_364_136_223_846_793_005)
        .wrapping_add(1);
    *state
}

/// Writes `data` (one channel of `shape`, x fastest) to `path` as an int16
/// array `image`, LZ4 in chunks of `chunk`.
pub(crate) fn write_i16(path: &Path, data: &[f32], shape: [usize; 3], chunk: [usize; 3]) {
    let arrays = [ArrayToWrite {
        key: "image",
        data,
        shape: [1, shape[0], shape[1], shape[2]],
        spacing: [1.0; 3],
        affine: IDENTITY,
        dtype: StoredType::I16,
        decode: None,
    }];
    let layout = Layout {
        chunk,
        codec: Codec::Lz4,
    };
    write_entry(path, &arrays, layout, "src", "key").unwrap();
}

/// An LZ4 chunk of 16-bit voxels laid out byte by byte as dino3d wrote it
/// before packed planes: the low bytes raw, the high bytes LZ4-compressed
/// with no kind bit, whatever values they hold.
pub(crate) fn chunk_before_packed_planes(lo: &[u8], hi: &[u8]) -> Vec<u8> {
    let hi_lz4 = lz4::block::compress(hi, Some(LZ4_MODE), false).unwrap();
    let mut stored = Vec::new();
    stored.extend_from_slice(&(lo.len() as u32 | RAW_PLANE).to_le_bytes());
    stored.extend_from_slice(&(hi_lz4.len() as u32).to_le_bytes());
    stored.extend_from_slice(lo);
    stored.extend_from_slice(&hi_lz4);
    stored
}
