//! What the crate's unit tests share: an identity affine, reproducible noise,
//! and a one-array LZ4 entry.

use std::path::Path;

use crate::codec::Codec;
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
