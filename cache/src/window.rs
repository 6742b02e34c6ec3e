//! Stored 16-bit voxels to windowed float32, computed rather than looked up.
//!
//! The lookup table of [`crate::format`] costs a dependent load per voxel; on a
//! CPU with AVX2 the same per-voxel arithmetic ([`IntensityMap::apply`], f64,
//! rounded to f32 once) runs 4–8 voxels per instruction instead. Both paths
//! evaluate the identical IEEE expression, so results are bit-identical
//! (tested against the table for every 16-bit value).

use std::mem::MaybeUninit;

use dino3d_pipeline::transforms::IntensityMap;

/// Whether [`window_words`] has a vector path on this CPU; without one the
/// caller's lookup table is faster than scalar arithmetic.
pub(crate) fn vector_path() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
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

    /// Calls `f(src_start, dst_start)` for every row, z outermost.
    #[inline(always)]
    pub(crate) fn for_each(&self, mut f: impl FnMut(usize, usize)) {
        for z in 0..self.nz {
            for y in 0..self.ny {
                f(
                    self.src + y * self.src_row + z * self.src_plane,
                    self.dst + y * self.dst_row + z * self.dst_plane,
                );
            }
        }
    }
}

/// [`window_words`] over every row of `rows`, with the row loop inside the
/// vectorised function (a box row is only as wide as a chunk, so a call per
/// row would cost about as much as the row itself).
///
/// # Panics
/// When a row falls outside the planes or the output.
pub(crate) fn window_word_rows(
    lo: &[u8],
    hi: &[u8],
    signed: bool,
    map: &IntensityMap,
    rows: Rows,
    out: &mut [MaybeUninit<f32>],
) {
    #[cfg(target_arch = "x86_64")]
    if vector_path() {
        // SAFETY: AVX2 support was detected at run time just above.
        unsafe {
            if signed {
                rows_avx2::<true>(lo, hi, map, rows, out);
            } else {
                rows_avx2::<false>(lo, hi, map, rows, out);
            }
        }
        return;
    }
    if signed {
        word_rows::<true>(lo, hi, map, rows, out);
    } else {
        word_rows::<false>(lo, hi, map, rows, out);
    }
}

#[inline(always)]
fn word_rows<const SIGNED: bool>(
    lo: &[u8],
    hi: &[u8],
    map: &IntensityMap,
    rows: Rows,
    out: &mut [MaybeUninit<f32>],
) {
    let w = rows.width;
    rows.for_each(|s, d| {
        words::<SIGNED>(&lo[s..s + w], &hi[s..s + w], map, &mut out[d..d + w]);
    });
}

/// [`word_rows`] compiled for AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn rows_avx2<const SIGNED: bool>(
    lo: &[u8],
    hi: &[u8],
    map: &IntensityMap,
    rows: Rows,
    out: &mut [MaybeUninit<f32>],
) {
    word_rows::<SIGNED>(lo, hi, map, rows, out);
}

/// One row: `out[i] = map(value(lo[i], hi[i]))` for the little-endian 16-bit
/// values split into byte planes `lo`/`hi` (signed when `signed`), through
/// [`window_word_rows`].
///
/// # Panics
/// When a plane is shorter than `out`.
#[cfg(test)]
fn window_words(
    lo: &[u8],
    hi: &[u8],
    signed: bool,
    map: &IntensityMap,
    out: &mut [MaybeUninit<f32>],
) {
    let width = out.len();
    let rows = Rows {
        width,
        ny: 1,
        nz: 1,
        src: 0,
        src_row: width,
        src_plane: width,
        dst: 0,
        dst_row: width,
        dst_plane: width,
    };
    window_word_rows(lo, hi, signed, map, rows, out);
}

#[inline(always)]
fn words<const SIGNED: bool>(
    lo: &[u8],
    hi: &[u8],
    map: &IntensityMap,
    out: &mut [MaybeUninit<f32>],
) {
    for ((o, &l), &h) in out.iter_mut().zip(lo).zip(hi) {
        let raw = u16::from_le_bytes([l, h]);
        let v = if SIGNED {
            f32::from(raw as i16)
        } else {
            f32::from(raw)
        };
        o.write(map.apply(v));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dino3d_pipeline::transforms::ScaleIntensityRange;

    fn windows() -> Vec<ScaleIntensityRange> {
        let w = |a_min, a_max, b: Option<(f64, f64)>, clip| ScaleIntensityRange {
            a_min,
            a_max,
            b_min: b.map(|b| b.0),
            b_max: b.map(|b| b.1),
            clip,
        };
        vec![
            w(-1024.0, 3071.0, Some((-1.0, 1.0)), true),
            w(-123.456, 987.654, Some((-1.0, 1.0)), true),
            w(0.0, 65535.0, Some((0.0, 1.0)), false),
            w(17.0, 17.0, Some((-1.0, 1.0)), true),
            w(-5.5, 300.25, None, true),
            w(1e-3, 2e-3, Some((-7.0, 3.0)), true),
        ]
    }

    /// Every 16-bit value, both signednesses, several windows: the computed
    /// path (vector where available) equals the float path bit for bit, and
    /// so the lookup table filled by it.
    #[test]
    fn computed_window_equals_the_float_path_for_every_value() {
        let lo: Vec<u8> = (0..=u16::MAX).map(|v| v.to_le_bytes()[0]).collect();
        let hi: Vec<u8> = (0..=u16::MAX).map(|v| v.to_le_bytes()[1]).collect();
        for p in windows() {
            let map = IntensityMap::new(&p);
            for signed in [false, true] {
                // Odd lengths and offsets exercise the vector loop's tails.
                for (from, len) in [(0usize, 65536usize), (3, 1001), (65529, 7)] {
                    let mut out = vec![MaybeUninit::<f32>::uninit(); len];
                    window_words(&lo[from..], &hi[from..], signed, &map, &mut out);
                    for (k, o) in out.iter().enumerate() {
                        let raw = (from + k) as u16;
                        let v = if signed {
                            f32::from(raw as i16)
                        } else {
                            f32::from(raw)
                        };
                        // SAFETY: window_words wrote every element of `out`.
                        let got = unsafe { o.assume_init() };
                        assert_eq!(
                            got.to_bits(),
                            map.apply(v).to_bits(),
                            "{p:?} signed={signed} raw={raw}"
                        );
                    }
                }
            }
        }
    }

    /// The row walk copies exactly the box: a 3×2×2 box from a 5×4×3 chunk
    /// into a 4×3×2 output, against per-row calls.
    #[test]
    fn row_walks_copy_the_box_like_single_rows() {
        let n = 5 * 4 * 3;
        let lo: Vec<u8> = (0..n as u16).map(|v| (v * 37).to_le_bytes()[0]).collect();
        let hi: Vec<u8> = (0..n as u16).map(|v| (v * 37 % 7) as u8).collect();
        let map = IntensityMap::new(&windows()[1]);
        let rows = Rows {
            width: 3,
            ny: 2,
            nz: 2,
            src: 1 + 5 + 20,
            src_row: 5,
            src_plane: 20,
            dst: 1,
            dst_row: 4,
            dst_plane: 12,
        };
        assert_eq!(rows.len(), 12);
        let mut got = vec![MaybeUninit::new(f32::NAN); 24];
        window_word_rows(&lo, &hi, true, &map, rows, &mut got);
        let mut want = vec![MaybeUninit::new(f32::NAN); 24];
        rows.for_each(|s, d| window_words(&lo[s..], &hi[s..], true, &map, &mut want[d..d + 3]));
        let bits = |v: &[MaybeUninit<f32>]| -> Vec<u32> {
            // SAFETY: every element was initialised (NaN or decoded).
            v.iter()
                .map(|x| unsafe { x.assume_init() }.to_bits())
                .collect()
        };
        assert_eq!(bits(&got), bits(&want));
        let written = bits(&got)
            .iter()
            .filter(|&&b| b != f32::NAN.to_bits())
            .count();
        assert_eq!(written, 12, "only the box is written");
    }

    #[test]
    #[should_panic]
    fn short_planes_are_refused() {
        let map = IntensityMap::new(&windows()[0]);
        let mut out = vec![MaybeUninit::<f32>::uninit(); 8];
        window_words(&[0; 4], &[0; 8], true, &map, &mut out);
    }
}
