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

/// `out[i] = map(value(lo[i], hi[i]))` for the little-endian 16-bit values split
/// into byte planes `lo`/`hi` (signed when `signed`).
///
/// # Panics
/// When a plane is shorter than `out`.
pub(crate) fn window_words(
    lo: &[u8],
    hi: &[u8],
    signed: bool,
    map: &IntensityMap,
    out: &mut [MaybeUninit<f32>],
) {
    let n = out.len();
    let (lo, hi) = (&lo[..n], &hi[..n]);
    #[cfg(target_arch = "x86_64")]
    if vector_path() {
        // SAFETY: AVX2 support was detected at run time just above; the
        // function only differs from `words` in the instructions it may use.
        unsafe {
            if signed {
                words_avx2::<true>(lo, hi, map, out);
            } else {
                words_avx2::<false>(lo, hi, map, out);
            }
        }
        return;
    }
    if signed {
        words::<true>(lo, hi, map, out);
    } else {
        words::<false>(lo, hi, map, out);
    }
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

/// [`words`] compiled for AVX2, so the loop is vectorised.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn words_avx2<const SIGNED: bool>(
    lo: &[u8],
    hi: &[u8],
    map: &IntensityMap,
    out: &mut [MaybeUninit<f32>],
) {
    words::<SIGNED>(lo, hi, map, out);
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

    #[test]
    #[should_panic]
    fn short_planes_are_refused() {
        let map = IntensityMap::new(&windows()[0]);
        let mut out = vec![MaybeUninit::<f32>::uninit(); 8];
        window_words(&[0; 4], &[0; 8], true, &map, &mut out);
    }
}
