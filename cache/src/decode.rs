//! Byte planes to float32: unshuffling, conversion and the decode map in one
//! pass over only the voxels a reader keeps.

use std::mem::MaybeUninit;

use crate::decode_map::DecodeMap;
use crate::layout::{Rows, StoredType};
use crate::window::vector_path;

/// The float value of every possible 8- or 16-bit stored value, map applied:
/// decoding a voxel is then one table load, the same arithmetic as
/// [`DecodeMap::apply`] because the table is filled by it.
pub(crate) fn lookup_table(dtype: StoredType, map: Option<&DecodeMap>) -> Vec<f32> {
    let value = |v: f32| map.map_or(v, |m| m.apply(v));
    match dtype {
        StoredType::U8 => (0..=255u8).map(|b| value(f32::from(b))).collect(),
        StoredType::I8 => (0..=255u8).map(|b| value(f32::from(b as i8))).collect(),
        StoredType::U16 => (0..=u16::MAX).map(|v| value(f32::from(v))).collect(),
        StoredType::I16 => (0..=u16::MAX).map(|v| value(f32::from(v as i16))).collect(),
        StoredType::F32 => Vec::new(),
    }
}

/// Whether reading `dtype` through `map` needs the lookup table, i.e. is not
/// computed on the vector path ([`crate::window::window_word_slab`]).
pub(crate) fn uses_table(dtype: StoredType, map: Option<&DecodeMap>) -> bool {
    let words = matches!(dtype, StoredType::U16 | StoredType::I16);
    !(words && map.is_some() && vector_path())
}

/// How an array's voxels become f32: its decode map, and the lookup table
/// when the vector kernels do not apply.
pub(crate) struct Decoding<'a> {
    /// The map applied on reading, if any.
    pub map: Option<DecodeMap>,
    /// The per-value table (empty when the vector kernels compute the map).
    pub table: &'a [f32],
    pub computed: bool,
}

impl Decoding<'_> {
    /// The map, when the vector kernels compute it.
    pub(crate) fn computed(&self) -> Option<&DecodeMap> {
        self.map.as_ref().filter(|_| self.computed)
    }
}

/// A decompressed chunk's byte planes (plane-major after shuffling): voxel `i`
/// of a 16-bit array is `(lo[i], hi[i])`.
pub(crate) enum Planes<'a> {
    Bytes(&'a [u8]),
    /// Low bytes, high bytes (the table knows the signedness).
    Words(&'a [u8], &'a [u8]),
    F32([&'a [u8]; 4]),
}

impl<'a> Planes<'a> {
    /// From the byte planes of `dtype` (one per byte of a voxel, low first).
    pub(crate) fn from_planes(dtype: StoredType, p: [&'a [u8]; 4]) -> Planes<'a> {
        match dtype {
            StoredType::U8 | StoredType::I8 => Planes::Bytes(p[0]),
            StoredType::U16 | StoredType::I16 => Planes::Words(p[0], p[1]),
            StoredType::F32 => Planes::F32(p),
        }
    }

    /// Every row of `rows` (only those `wanted` marks, when given) from these
    /// planes into `out` (see [`Self::decode`]; mapped 16-bit voxels without
    /// a table take the vector kernels).
    pub(crate) fn decode_rows(
        &self,
        rows: Rows,
        wanted: Option<&[bool]>,
        out: &mut [MaybeUninit<f32>],
        table: &[f32],
        map: Option<&DecodeMap>,
    ) {
        let w = rows.width;
        rows.for_each_wanted(wanted, |s, d| {
            self.decode(s, &mut out[d..d + w], table, map)
        });
    }

    /// Voxels `from..from + out.len()` as float32. Integers go through
    /// `table` ([`lookup_table`]), float32 through `map`.
    fn decode(
        &self,
        from: usize,
        out: &mut [MaybeUninit<f32>],
        table: &[f32],
        map: Option<&DecodeMap>,
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
