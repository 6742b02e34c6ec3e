//! Stored 16-bit voxels to windowed float32, computed rather than looked up.
//!
//! The lookup table of [`crate::decode`] costs a dependent load per voxel; on a
//! CPU with AVX2 the same per-voxel arithmetic ([`DecodeMap::apply`], f64,
//! rounded to f32 once) runs 4–8 voxels per instruction instead. Both paths
//! evaluate the identical IEEE expression, so results are bit-identical
//! (tested against the table for every 16-bit value).

use std::mem::MaybeUninit;

use crate::decode_map::DecodeMap;
use crate::layout::Rows;

/// Whether [`window_word_slab`] has a vector path on this CPU; without one
/// the caller's lookup table is faster than scalar arithmetic.
pub(crate) fn vector_path() -> bool {
    Kernel::best() != Kernel::Scalar
}

/// Which instruction set runs [`window_word_slab`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kernel {
    /// Plain Rust, one voxel at a time.
    Scalar,
    /// 4 f64 lanes (x86-64 AVX2).
    Avx2,
    /// 8 f64 lanes (x86-64 AVX-512F with BW and VL, for masked tails).
    Avx512,
}

impl Kernel {
    /// The fastest kernel this CPU runs.
    pub(crate) fn best() -> Kernel {
        static BEST: std::sync::OnceLock<Kernel> = std::sync::OnceLock::new();
        *BEST.get_or_init(|| {
            #[cfg(target_arch = "x86_64")]
            {
                if std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512vl")
                {
                    return Kernel::Avx512;
                }
                if std::arch::is_x86_feature_detected!("avx2") {
                    return Kernel::Avx2;
                }
            }
            Kernel::Scalar
        })
    }

    /// Whether this CPU runs `self`.
    #[cfg(test)]
    fn available(self) -> bool {
        match self {
            Kernel::Scalar => true,
            Kernel::Avx2 => matches!(Kernel::best(), Kernel::Avx2 | Kernel::Avx512),
            Kernel::Avx512 => Kernel::best() == Kernel::Avx512,
        }
    }
}

/// One chunk's part of a slab: its byte planes and its rows.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Segment<'a> {
    pub lo: &'a [u8],
    pub hi: &'a [u8],
    pub rows: Rows,
}

/// [`DecodeMap::apply`] over the rows of chunks side by side along x (a
/// slab), row by row across all of them: output row `(y, z)` is written left
/// to right in one pass, as one sequential stream, rather than in chunk-wide
/// pieces far apart. The row loops run inside the vectorised kernels (a row
/// is only as wide as a chunk, so a call per row would cost about as much as
/// the row). The segments must share `ny`, `nz`, `dst_row` and `dst_plane`.
/// With `wanted` (`ny` long), only rows `y` with `wanted[y]` are written (in
/// every z): a reader that reads only some rows pays for only those.
///
/// # Panics
/// When a row falls outside its planes or the output, the segments' shared
/// geometry differs, or `wanted` is not `ny` long.
pub(crate) fn window_word_slab(
    segments: &[Segment<'_>],
    signed: bool,
    map: &DecodeMap,
    wanted: Option<&[bool]>,
    out: &mut [MaybeUninit<f32>],
) {
    window_word_slab_with(Kernel::best(), segments, signed, map, wanted, out);
}

/// [`window_word_slab`] on a chosen kernel (which this CPU must run).
fn window_word_slab_with(
    kernel: Kernel,
    segments: &[Segment<'_>],
    signed: bool,
    map: &DecodeMap,
    wanted: Option<&[bool]>,
    out: &mut [MaybeUninit<f32>],
) {
    let Some(first) = segments.first().map(|s| s.rows) else {
        return;
    };
    if let Some(wanted) = wanted {
        assert_eq!(wanted.len(), first.ny, "one wanted flag per row");
    }
    let wanted = Wanted(wanted);
    for seg in segments {
        let r = seg.rows;
        assert!(
            (r.ny, r.nz, r.dst_row, r.dst_plane)
                == (first.ny, first.nz, first.dst_row, first.dst_plane),
            "slab segments must share their row geometry"
        );
        if let Some((src_end, dst_end)) = r.ends() {
            assert!(
                src_end <= seg.lo.len() && src_end <= seg.hi.len() && dst_end <= out.len(),
                "rows outside the planes or the output"
            );
        }
    }
    if first.ny == 0 || first.nz == 0 {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    {
        let (scale, offset, min, max) = map.parts();
        // The vector kernels clamp with max-then-min, which equals apply's
        // compare-and-select only for ordered bounds (lo ≤ hi, neither NaN).
        if min <= max && kernel != Kernel::Scalar {
            let k = simd::Coefficients {
                scale,
                offset,
                min,
                max,
            };
            // SAFETY: the bounds were checked just above (every row of every
            // segment lies inside its planes and the output), and callers
            // only pass kernels this CPU was detected to run.
            unsafe {
                match (kernel, signed) {
                    (Kernel::Avx512, true) => simd::slab_avx512::<true>(segments, k, wanted, out),
                    (Kernel::Avx512, false) => simd::slab_avx512::<false>(segments, k, wanted, out),
                    (_, true) => simd::slab_avx2::<true>(segments, k, map, wanted, out),
                    (_, false) => simd::slab_avx2::<false>(segments, k, map, wanted, out),
                }
            }
            return;
        }
    }
    let _ = kernel; // only the x86-64 block above reads it
    for z in 0..first.nz {
        for y in (0..first.ny).filter(|&y| wanted.row(y)) {
            for seg in segments {
                let r = seg.rows;
                let (s, d, w) = (
                    r.src + y * r.src_row + z * r.src_plane,
                    r.dst + y * r.dst_row + z * r.dst_plane,
                    r.width,
                );
                let (lo, hi, out) = (&seg.lo[s..s + w], &seg.hi[s..s + w], &mut out[d..d + w]);
                if signed {
                    words::<true>(lo, hi, map, out);
                } else {
                    words::<false>(lo, hi, map, out);
                }
            }
        }
    }
}

/// One row: `out[i] = map(value(lo[i], hi[i]))` for the little-endian 16-bit
/// values split into byte planes `lo`/`hi` (signed when `signed`), through
/// [`window_word_slab`] on `kernel`.
///
/// # Panics
/// When a plane is shorter than `out`.
#[cfg(test)]
fn window_words(
    kernel: Kernel,
    lo: &[u8],
    hi: &[u8],
    signed: bool,
    map: &DecodeMap,
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
    window_word_slab_with(kernel, &[Segment { lo, hi, rows }], signed, map, None, out);
}

/// Asks the CPU to start loading the bytes that windowing `segments` will
/// read. A plane's rows of one chunk are a 1 KiB block, and a slab row reads
/// one block from each of up to 32 byte planes far apart: too many short
/// streams for the hardware prefetcher, so each block's first lines would
/// otherwise be waited for. Issued one chunk row ahead.
pub(crate) fn prefetch(segments: &[Segment<'_>]) {
    #[cfg(not(target_arch = "x86_64"))]
    let _ = segments;
    #[cfg(target_arch = "x86_64")]
    for seg in segments {
        let Some((end, _)) = seg.rows.ends() else {
            continue;
        };
        for plane in [seg.lo, seg.hi] {
            let end = end.min(plane.len());
            // Every 64th byte, and the last one: each cache line of a block
            // that need not start on a line boundary.
            let lines = (seg.rows.src..end).step_by(64).chain(end.checked_sub(1));
            for at in lines.filter(|&at| at >= seg.rows.src) {
                // SAFETY: `at < plane.len()`, so the address is inside the
                // plane; a prefetch neither reads into the program nor faults.
                unsafe {
                    std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                        plane.as_ptr().add(at).cast(),
                    )
                };
            }
        }
    }
}

/// Which rows of a slab to write: all (`None`) or those marked.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Wanted<'a>(Option<&'a [bool]>);

impl Wanted<'_> {
    /// Whether row `y` is written.
    #[inline(always)]
    fn row(self, y: usize) -> bool {
        self.0.is_none_or(|w| w[y])
    }
}

#[inline(always)]
fn words<const SIGNED: bool>(lo: &[u8], hi: &[u8], map: &DecodeMap, out: &mut [MaybeUninit<f32>]) {
    for ((o, &l), &h) in out.iter_mut().zip(lo).zip(hi) {
        o.write(map.apply(word_value::<SIGNED>(l, h)));
    }
}

/// The stored 16-bit value with low byte `l` and high byte `h`, as f32
/// (exact).
#[inline(always)]
fn word_value<const SIGNED: bool>(l: u8, h: u8) -> f32 {
    let raw = u16::from_le_bytes([l, h]);
    if SIGNED {
        f32::from(raw as i16)
    } else {
        f32::from(raw)
    }
}

/// The vector kernels. Each evaluates [`DecodeMap::apply`]'s expression
/// with the same IEEE operations (f64 product, f64 sum, clamp, one rounding to
/// f32), so results are bit-identical to it; the clamp is `min(hi, max(lo,
/// y))`, which returns `y` itself on ties (keeping the sign of zero) and for
/// NaN, as the scalar compare-and-select does when `lo ≤ hi`.
#[cfg(target_arch = "x86_64")]
mod simd {
    use std::arch::x86_64::*;
    use std::mem::MaybeUninit;

    use crate::decode_map::DecodeMap;

    use super::{Segment, Wanted, word_value};

    /// [`crate::decode_map::DecodeMap::parts`], with `min ≤ max`.
    #[derive(Debug, Clone, Copy)]
    pub(super) struct Coefficients {
        pub scale: f64,
        pub offset: f64,
        pub min: f64,
        pub max: f64,
    }

    /// Runs `$body` for each wanted row of each segment, z then y outermost
    /// and segments innermost, with `$l`/`$h` the row's planes, `$o` its
    /// output and `$w` its width (a plain loop, so that it compiles inside
    /// the kernels' target features).
    macro_rules! each_row {
        ($segs:expr, $wanted:expr, $out:expr, |$l:ident, $h:ident, $o:ident, $w:ident| $body:block) => {
            let first = $segs[0].rows;
            let op = $out.as_mut_ptr().cast::<f32>();
            for z in 0..first.nz {
                for y in 0..first.ny {
                    if !$wanted.row(y) {
                        continue;
                    }
                    for seg in $segs {
                        let r = seg.rows;
                        let s = r.src + y * r.src_row + z * r.src_plane;
                        let d = r.dst + y * r.dst_row + z * r.dst_plane;
                        let $w = r.width;
                        // SAFETY (whole row): the caller checked that
                        // `[s, s + w)` lies in both planes and `[d, d + w)`
                        // in the output.
                        let ($l, $h, $o) =
                            unsafe { (seg.lo.as_ptr().add(s), seg.hi.as_ptr().add(s), op.add(d)) };
                        $body
                    }
                }
            }
        };
    }

    /// Loads 8 low and 8 high bytes, interleaved into 8 16-bit values.
    ///
    /// # Safety
    /// SSE2 (always on x86-64); `l` and `h` valid for 8 reads.
    #[inline(always)]
    unsafe fn interleave8(l: *const u8, h: *const u8) -> __m128i {
        // SAFETY: the caller gives 8 readable bytes at each.
        unsafe { _mm_unpacklo_epi8(_mm_loadl_epi64(l.cast()), _mm_loadl_epi64(h.cast())) }
    }

    /// 8 little-endian 16-bit values (low and high bytes interleaved in `w`)
    /// to 8 windowed f32 at `out`.
    ///
    /// # Safety
    /// AVX2; `out` valid for 8 writes.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn eight_avx2<const SIGNED: bool>(w: __m128i, k: &[__m256d; 4], out: *mut f32) {
        let w = if SIGNED {
            _mm256_cvtepi16_epi32(w)
        } else {
            _mm256_cvtepu16_epi32(w)
        };
        let halves = [_mm256_castsi256_si128(w), _mm256_extracti128_si256::<1>(w)];
        for (h, half) in halves.into_iter().enumerate() {
            let y = _mm256_add_pd(_mm256_mul_pd(_mm256_cvtepi32_pd(half), k[0]), k[1]);
            let y = _mm256_min_pd(k[3], _mm256_max_pd(k[2], y));
            // SAFETY: the caller gives 8 writable floats.
            unsafe { _mm_storeu_ps(out.add(4 * h), _mm256_cvtpd_ps(y)) };
        }
    }

    /// The AVX2 kernel: 16 voxels per step, 4 f64 lanes per operation.
    ///
    /// # Safety
    /// AVX2, at least one segment, every row of every segment inside its
    /// planes and `out`, and `wanted` (if any) one flag per row.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn slab_avx2<const SIGNED: bool>(
        segs: &[Segment<'_>],
        k: Coefficients,
        map: &DecodeMap,
        wanted: Wanted<'_>,
        out: &mut [MaybeUninit<f32>],
    ) {
        let k = [k.scale, k.offset, k.min, k.max].map(|v| _mm256_set1_pd(v));
        each_row!(segs, wanted, out, |l, h, o, w| {
            let mut i = 0;
            while i + 16 <= w {
                // SAFETY: i + 16 ≤ w, inside the row.
                unsafe {
                    let a = _mm_loadu_si128(l.add(i).cast());
                    let b = _mm_loadu_si128(h.add(i).cast());
                    eight_avx2::<SIGNED>(_mm_unpacklo_epi8(a, b), &k, o.add(i));
                    eight_avx2::<SIGNED>(_mm_unpackhi_epi8(a, b), &k, o.add(i + 8));
                }
                i += 16;
            }
            if i < w && w >= 8 {
                // The last 8 voxels, overlapping ones already written (with
                // the same values): no partial vector.
                let mut j = i;
                while j + 8 < w {
                    // SAFETY: j + 8 < w, inside the row.
                    unsafe { eight_avx2::<SIGNED>(interleave8(l.add(j), h.add(j)), &k, o.add(j)) };
                    j += 8;
                }
                // SAFETY: w ≥ 8, so [w - 8, w) is inside the row.
                unsafe {
                    eight_avx2::<SIGNED>(interleave8(l.add(w - 8), h.add(w - 8)), &k, o.add(w - 8))
                };
            } else {
                for j in i..w {
                    // SAFETY: j < w, inside the row.
                    unsafe {
                        o.add(j)
                            .write(map.apply(word_value::<SIGNED>(*l.add(j), *h.add(j))))
                    };
                }
            }
        });
    }

    /// The AVX-512 kernel: 16 voxels per step, 8 f64 lanes per operation.
    ///
    /// # Safety
    /// AVX-512F/BW/VL, at least one segment, every row of every segment
    /// inside its planes and `out`, and `wanted` (if any) one flag per row.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub(super) unsafe fn slab_avx512<const SIGNED: bool>(
        segs: &[Segment<'_>],
        k: Coefficients,
        wanted: Wanted<'_>,
        out: &mut [MaybeUninit<f32>],
    ) {
        let k = [k.scale, k.offset, k.min, k.max].map(|v| _mm512_set1_pd(v));
        // 16 low bytes `a` and high bytes `b` to 16 windowed f32, in halves.
        let sixteen = |a: __m128i, b: __m128i| {
            let w = _mm256_set_m128i(_mm_unpackhi_epi8(a, b), _mm_unpacklo_epi8(a, b));
            let w = if SIGNED {
                _mm512_cvtepi16_epi32(w)
            } else {
                _mm512_cvtepu16_epi32(w)
            };
            [_mm512_castsi512_si256(w), _mm512_extracti64x4_epi64::<1>(w)].map(|half| {
                let y = _mm512_add_pd(_mm512_mul_pd(_mm512_cvtepi32_pd(half), k[0]), k[1]);
                _mm512_cvtpd_ps(_mm512_min_pd(k[3], _mm512_max_pd(k[2], y)))
            })
        };
        each_row!(segs, wanted, out, |l, h, o, w| {
            let mut i = 0;
            while i + 16 <= w {
                // SAFETY: i + 16 ≤ w, inside the row.
                unsafe {
                    let a = _mm_loadu_si128(l.add(i).cast());
                    let b = _mm_loadu_si128(h.add(i).cast());
                    let [f0, f1] = sixteen(a, b);
                    _mm256_storeu_ps(o.add(i), f0);
                    _mm256_storeu_ps(o.add(i + 8), f1);
                }
                i += 16;
            }
            if i < w {
                // The last w - i < 16 voxels through masked loads and stores
                // (masked-off lanes are neither read nor written).
                let mask: __mmask16 = ((1u32 << (w - i)) - 1) as u16;
                // SAFETY: the mask limits every access to [i, w), inside the row.
                unsafe {
                    let a = _mm_maskz_loadu_epi8(mask, l.add(i).cast());
                    let b = _mm_maskz_loadu_epi8(mask, h.add(i).cast());
                    let [f0, f1] = sixteen(a, b);
                    _mm256_mask_storeu_ps(o.add(i), mask as __mmask8, f0);
                    _mm256_mask_storeu_ps(o.add(i + 8), (mask >> 8) as __mmask8, f1);
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The map MONAI's `ScaleIntensityRange(a_min, a_max, b_min, b_max,
    /// clip)` is (the pipeline's transform builds the same; its tests check
    /// the two agree).
    fn window_map(a_min: f64, a_max: f64, b: Option<(f64, f64)>, clip: bool) -> DecodeMap {
        if a_max == a_min {
            let shift = b.map_or(0.0, |b| b.0) - a_min;
            return DecodeMap::new(1.0, shift, f64::NEG_INFINITY, f64::INFINITY);
        }
        let (mut scale, mut offset) = (1.0 / (a_max - a_min), -a_min / (a_max - a_min));
        if let Some((b0, b1)) = b {
            scale *= b1 - b0;
            offset = offset * (b1 - b0) + b0;
        }
        let (lo, hi) = match b {
            Some((b0, b1)) if clip => (b0, b1),
            _ => (f64::NEG_INFINITY, f64::INFINITY),
        };
        DecodeMap::new(scale, offset, lo, hi)
    }

    fn windows() -> Vec<DecodeMap> {
        let w = window_map;
        vec![
            w(-1024.0, 3071.0, Some((-1.0, 1.0)), true),
            w(-123.456, 987.654, Some((-1.0, 1.0)), true),
            w(0.0, 65535.0, Some((0.0, 1.0)), false),
            w(17.0, 17.0, Some((-1.0, 1.0)), true),
            w(-5.5, 300.25, None, true),
            w(1e-3, 2e-3, Some((-7.0, 3.0)), true),
            // Inverted output range (lo > hi), where the vector clamp would
            // differ: the scalar expression must be used.
            w(-100.0, 100.0, Some((1.0, -1.0)), true),
            // Bounds at zero.
            w(0.0, 10.0, Some((0.0, 1.0)), true),
            w(-10.0, 0.0, Some((-1.0, 0.0)), true),
        ]
    }

    fn kernels() -> Vec<Kernel> {
        let all = [Kernel::Scalar, Kernel::Avx2, Kernel::Avx512];
        let k: Vec<Kernel> = all.into_iter().filter(|k| k.available()).collect();
        eprintln!("kernels tested on this CPU: {k:?}");
        k
    }

    /// Every 16-bit value, both signednesses, several windows, every kernel
    /// this CPU runs: the computed path equals the float path bit for bit, and
    /// so the lookup table filled by it.
    #[test]
    fn computed_window_equals_the_float_path_for_every_value() {
        let lo: Vec<u8> = (0..=u16::MAX).map(|v| v.to_le_bytes()[0]).collect();
        let hi: Vec<u8> = (0..=u16::MAX).map(|v| v.to_le_bytes()[1]).collect();
        for (kernel, p) in kernels()
            .into_iter()
            .flat_map(|k| windows().into_iter().map(move |p| (k, p)))
        {
            let map = p;
            for signed in [false, true] {
                // Odd lengths and offsets exercise the vector loops' tails.
                for (from, len) in [
                    (0usize, 65536usize),
                    (3, 1001),
                    (65529, 7),
                    (100, 31),
                    (5, 8),
                    (7, 12),
                    (9, 1),
                    (11, 16),
                    (13, 17),
                ] {
                    let mut out = vec![MaybeUninit::<f32>::uninit(); len];
                    window_words(kernel, &lo[from..], &hi[from..], signed, &map, &mut out);
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
                            "{kernel:?} {p:?} signed={signed} raw={raw}"
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
        let map = windows()[1];
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
        for kernel in kernels() {
            let mut got = vec![MaybeUninit::new(f32::NAN); 24];
            window_word_slab_with(
                kernel,
                &[Segment {
                    lo: &lo,
                    hi: &hi,
                    rows,
                }],
                true,
                &map,
                None,
                &mut got,
            );
            let mut want = vec![MaybeUninit::new(f32::NAN); 24];
            rows.for_each_wanted(None, |s, d| {
                window_words(
                    Kernel::Scalar,
                    &lo[s..],
                    &hi[s..],
                    true,
                    &map,
                    &mut want[d..d + 3],
                )
            });
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
    }

    /// A slab of three chunks of different widths (the last one partial)
    /// written row by row across them equals each chunk's rows written on
    /// its own, on every kernel, and covers exactly the box.
    #[test]
    fn slabs_write_the_same_voxels_as_chunk_by_chunk() {
        // Chunks 32, 32 and 9 voxels wide (x), 4 rows (y), 3 planes (z); the
        // box takes x 5..70 (65 wide), y 1..4, z 0..2.
        let widths = [32usize, 32, 9];
        let (ny, nz) = (3, 2);
        let (cy, cz) = (4, 3);
        let planes: Vec<(Vec<u8>, Vec<u8>)> = widths
            .iter()
            .enumerate()
            .map(|(c, &w)| {
                let n = w * cy * cz;
                let lo = (0..n).map(|i| (i * 31 + c * 7) as u8).collect();
                let hi = (0..n).map(|i| ((i * 13 + c) % 11) as u8).collect();
                (lo, hi)
            })
            .collect();
        let (x0, x1) = (5usize, 70usize);
        let box_w = x1 - x0;
        let mut segments = Vec::new();
        let mut cx = 0;
        for (c, &w) in widths.iter().enumerate() {
            let from = x0.max(cx);
            let to = x1.min(cx + w);
            segments.push(Segment {
                lo: &planes[c].0,
                hi: &planes[c].1,
                rows: Rows {
                    width: to - from,
                    ny,
                    nz,
                    src: w + (from - cx),
                    src_row: w,
                    src_plane: w * cy,
                    dst: from - x0,
                    dst_row: box_w,
                    dst_plane: box_w * ny,
                },
            });
            cx += w;
        }
        let total = box_w * ny * nz;
        assert_eq!(segments.iter().map(|s| s.rows.len()).sum::<usize>(), total);
        let map = windows()[1];
        let bits = |v: &[MaybeUninit<f32>]| -> Vec<u32> {
            // SAFETY: every element was initialised (NaN or decoded).
            v.iter()
                .map(|x| unsafe { x.assume_init() }.to_bits())
                .collect()
        };
        let mut want = vec![MaybeUninit::new(f32::NAN); total];
        for seg in &segments {
            let r = seg.rows;
            r.for_each_wanted(None, |s, d| {
                let w = r.width;
                let (lo, hi) = (&seg.lo[s..s + w], &seg.hi[s..s + w]);
                window_words(Kernel::Scalar, lo, hi, true, &map, &mut want[d..d + w]);
            });
        }
        assert!(bits(&want).iter().all(|&b| b != f32::NAN.to_bits()));
        for kernel in kernels() {
            let mut got = vec![MaybeUninit::new(f32::NAN); total];
            window_word_slab_with(kernel, &segments, true, &map, None, &mut got);
            assert_eq!(bits(&got), bits(&want), "{kernel:?}");
        }
        // Only rows 0 and 2 wanted: those rows (in both planes) as before,
        // row 1 never written.
        let wanted = [true, false, true];
        for kernel in kernels() {
            let mut got = vec![MaybeUninit::new(f32::NAN); total];
            window_word_slab_with(kernel, &segments, true, &map, Some(&wanted), &mut got);
            let (got, want) = (bits(&got), bits(&want));
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                let y = i / box_w % ny;
                let expect = if wanted[y] { *w } else { f32::NAN.to_bits() };
                assert_eq!(*g, expect, "{kernel:?} voxel {i} (row {y})");
            }
        }
    }

    /// Prefetching rows that end at their planes' last byte (and rows of
    /// no width) runs and changes nothing (a smoke test: a prefetch has no
    /// visible effect; its addresses stay below `end`, which `ends()` keeps
    /// inside the planes, as asserted here).
    #[test]
    fn prefetching_stays_inside_the_planes() {
        let lo: Vec<u8> = (0..200u8).collect();
        let hi = vec![1u8; 200];
        let rows = |width| Rows {
            width,
            ny: 3,
            nz: 1,
            src: 20,
            src_row: 60,
            src_plane: 180,
            dst: 0,
            dst_row: 60,
            dst_plane: 180,
        };
        let segs = [
            Segment {
                lo: &lo,
                hi: &hi,
                rows: rows(60),
            },
            Segment {
                lo: &lo,
                hi: &hi,
                rows: rows(0),
            },
        ];
        assert_eq!(segs[0].rows.ends().unwrap().0, lo.len());
        prefetch(&segs);
        assert!(lo.iter().enumerate().all(|(i, &b)| usize::from(b) == i));
    }

    /// Two rows of two voxels from a 2x2 plane, written at `dst_row` and
    /// `dst_plane` strides.
    fn two_rows_of_two(dst_row: usize, dst_plane: usize) -> Rows {
        Rows {
            width: 2,
            ny: 2,
            nz: 1,
            src: 0,
            src_row: 2,
            src_plane: 4,
            dst: 0,
            dst_row,
            dst_plane,
        }
    }

    #[test]
    #[should_panic(expected = "one wanted flag per row")]
    fn a_row_mask_of_another_height_is_refused() {
        let map = windows()[0];
        let rows = two_rows_of_two(2, 4);
        let planes = [0u8; 4];
        let segs = [Segment {
            lo: &planes,
            hi: &planes,
            rows,
        }];
        let mut out = vec![MaybeUninit::<f32>::uninit(); 4];
        window_word_slab(&segs, true, &map, Some(&[true]), &mut out);
    }

    #[test]
    #[should_panic]
    fn slabs_refuse_mixed_row_geometry() {
        let map = windows()[0];
        let rows = |dst_row| two_rows_of_two(dst_row, 8);
        let planes = [0u8; 4];
        let segs = [
            Segment {
                lo: &planes,
                hi: &planes,
                rows: rows(4),
            },
            Segment {
                lo: &planes,
                hi: &planes,
                rows: rows(3),
            },
        ];
        let mut out = vec![MaybeUninit::<f32>::uninit(); 16];
        window_word_slab(&segs, true, &map, None, &mut out);
    }

    #[test]
    #[should_panic]
    fn short_planes_are_refused() {
        let map = windows()[0];
        let mut out = vec![MaybeUninit::<f32>::uninit(); 8];
        window_words(Kernel::best(), &[0; 4], &[0; 8], true, &map, &mut out);
    }
}
