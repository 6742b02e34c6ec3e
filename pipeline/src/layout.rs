//! The two memory orders of a `(C, X, Y, Z)` volume, and the one conversion
//! between them.
//!
//! * **x fastest**: NIfTI's order, the pipeline's [`crate::transforms::Image`]
//!   (a C-order `(C, Z, Y, X)` array).
//! * **z fastest**: PyTorch's and the model's `(C, X, Y, Z)`, what 3DINO's
//!   checkpoints and token order expect.
//!
//! Every place that moves voxels between the two (collation, model inputs,
//! segmentation cases, predictions written back as NIfTI, saved batches)
//! goes through these functions: pure copies, generic over the voxel type.

use std::mem::MaybeUninit;

/// Appends `src` (`shape` `(C, X, Y, Z)`, x fastest) to `out` in z-fastest
/// order.
///
/// # Panics
/// When `src.len()` is not the product of `shape`.
pub fn extend_z_fastest<T: Copy + Default>(out: &mut Vec<T>, src: &[T], shape: [usize; 4]) {
    let start = out.len();
    out.resize(start + src.len(), T::default());
    write_z_fastest(&mut out[start..], src, shape);
}

/// Writes `src` (`shape` `(C, X, Y, Z)`, x fastest) into `dst` in z-fastest
/// order.
///
/// # Panics
/// When `src` or `dst` is not the product of `shape` long.
pub fn write_z_fastest<T: Copy + Default>(dst: &mut [T], src: &[T], shape: [usize; 4]) {
    assert_eq!(dst.len(), src.len(), "layout: output and shape disagree");
    z_fastest_rows(src, shape, |at, row| {
        for (d, &v) in dst[at..at + row.len()].iter_mut().zip(row) {
            *d = v;
        }
    });
}

/// [`write_z_fastest`] for `f32` into memory not yet initialised (collation
/// fills each crop's slot of a batch this way, with no pass that zeroes it
/// first). Every element of `dst` is written. On x86-64 with AVX2, 8 x 8
/// blocks move through registers: collation is then bound by memory, about
/// 2 ms per 3DINO sample on one core instead of 4 with the portable tiles.
///
/// # Panics
/// When `src` or `dst` is not the product of `shape` long.
pub fn init_z_fastest(dst: &mut [MaybeUninit<f32>], src: &[f32], shape: [usize; 4]) {
    let [c, x, y, z] = shape;
    assert_eq!(src.len(), c * x * y * z, "layout: data and shape disagree");
    assert_eq!(dst.len(), src.len(), "layout: output and shape disagree");
    let n = x * y * z;
    for ch in 0..c {
        let (src, dst) = (&src[ch * n..(ch + 1) * n], &mut dst[ch * n..(ch + 1) * n]);
        // x fastest is a C-order (Z, Y, X) array per channel.
        let [outer, mid, inner] = [z, y, x];
        let (a_done, c_done) = simd_reverse(dst, src, [outer, mid, inner]);
        // What the blocks left: the last `outer % 16` rows, and the last
        // `inner % 8` columns of the others.
        for b in 0..mid {
            for a in 0..outer {
                let from = if a < a_done { c_done } else { 0 };
                for cc in from..inner {
                    dst[(cc * mid + b) * outer + a].write(src[(a * mid + b) * inner + cc]);
                }
            }
        }
    }
}

/// The part of [`reverse_axes`] that whole 16 x 8 blocks cover, written
/// into `dst` with AVX2 where the CPU has it; returns how far it got along
/// `outer` and `inner` (nothing without AVX2).
fn simd_reverse(dst: &mut [MaybeUninit<f32>], src: &[f32], dims: [usize; 3]) -> (usize, usize) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        assert_eq!(dst.len(), src.len());
        assert_eq!(src.len(), dims.iter().product::<usize>());
        // SAFETY: AVX2 was just detected, and both slices hold the whole
        // `dims` block (asserted), which is all `reverse_f32` touches.
        return unsafe { avx2::reverse_f32(dst.as_mut_ptr().cast::<f32>(), src, dims) };
    }
    let _ = (dst, src, dims);
    (0, 0)
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::{
        __m256, _mm256_loadu_ps, _mm256_permute2f128_ps, _mm256_shuffle_ps, _mm256_storeu_ps,
        _mm256_unpackhi_ps, _mm256_unpacklo_ps,
    };

    /// `reverse_axes` on `f32` for `a < outer / 16 * 16` and `c < inner / 8 * 8`
    /// (all `b`), as 8 x 8 register transposes; returns those two bounds.
    /// Blocks of 16 rows along `outer` make every store a whole cache line
    /// when `outer` is a multiple of 16. Small blocks (48³) go plane by
    /// plane, large ones (96³, past the L2 cache) slab by slab.
    ///
    /// # Safety
    /// The CPU must have AVX2, and `dst` must be valid for writes of
    /// `outer * mid * inner` values, the length of `src`.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn reverse_f32(
        dst: *mut f32,
        src: &[f32],
        [outer, mid, inner]: [usize; 3],
    ) -> (usize, usize) {
        let (a_end, c_end) = (outer / 16 * 16, inner / 8 * 8);
        let (ds, ss) = (mid * outer, mid * inner);
        let block = |a0: usize, b: usize, c0: usize| {
            // SAFETY: a0 + 16 <= outer, c0 + 8 <= inner and b < mid, so the
            // rows read (a0..a0 + 16, b, c0..c0 + 8) and written
            // (c0..c0 + 8, b, a0..a0 + 16) lie within the block.
            unsafe {
                let d = dst.add((c0 * mid + b) * outer + a0);
                let s = src.as_ptr().add((a0 * mid + b) * inner + c0);
                t8x8(d, ds, s, ss);
                t8x8(d.add(8), ds, s.add(8 * ss), ss);
            }
        };
        if src.len() * 4 <= 1 << 20 {
            for b in 0..mid {
                for a0 in (0..a_end).step_by(16) {
                    for c0 in (0..c_end).step_by(8) {
                        block(a0, b, c0);
                    }
                }
            }
        } else {
            for a0 in (0..a_end).step_by(16) {
                for c0 in (0..c_end).step_by(8) {
                    for b in 0..mid {
                        block(a0, b, c0);
                    }
                }
            }
        }
        (a_end, c_end)
    }

    /// Transposes the 8 x 8 block at `src` (rows `ss` apart) into `dst`
    /// (rows `ds` apart).
    ///
    /// # Safety
    /// The CPU must have AVX2; `src + k·ss .. + 8` must be readable and
    /// `dst + k·ds .. + 8` writable for k < 8.
    #[target_feature(enable = "avx2")]
    unsafe fn t8x8(dst: *mut f32, ds: usize, src: *const f32, ss: usize) {
        // SAFETY: the caller guarantees every row read and written.
        unsafe {
            let r: [__m256; 8] = std::array::from_fn(|k| _mm256_loadu_ps(src.add(k * ss)));
            let t = [
                _mm256_unpacklo_ps(r[0], r[1]),
                _mm256_unpackhi_ps(r[0], r[1]),
                _mm256_unpacklo_ps(r[2], r[3]),
                _mm256_unpackhi_ps(r[2], r[3]),
                _mm256_unpacklo_ps(r[4], r[5]),
                _mm256_unpackhi_ps(r[4], r[5]),
                _mm256_unpacklo_ps(r[6], r[7]),
                _mm256_unpackhi_ps(r[6], r[7]),
            ];
            let u = [
                _mm256_shuffle_ps::<0x44>(t[0], t[2]),
                _mm256_shuffle_ps::<0xEE>(t[0], t[2]),
                _mm256_shuffle_ps::<0x44>(t[1], t[3]),
                _mm256_shuffle_ps::<0xEE>(t[1], t[3]),
                _mm256_shuffle_ps::<0x44>(t[4], t[6]),
                _mm256_shuffle_ps::<0xEE>(t[4], t[6]),
                _mm256_shuffle_ps::<0x44>(t[5], t[7]),
                _mm256_shuffle_ps::<0xEE>(t[5], t[7]),
            ];
            for k in 0..4 {
                _mm256_storeu_ps(
                    dst.add(k * ds),
                    _mm256_permute2f128_ps::<0x20>(u[k], u[k + 4]),
                );
                _mm256_storeu_ps(
                    dst.add((k + 4) * ds),
                    _mm256_permute2f128_ps::<0x31>(u[k], u[k + 4]),
                );
            }
        }
    }
}

/// Calls `put(start, row)` with rows that together are `src` (`shape`, x
/// fastest) in z-fastest order, `start` being each row's index there.
fn z_fastest_rows<T: Copy + Default>(
    src: &[T],
    shape: [usize; 4],
    mut put: impl FnMut(usize, &[T]),
) {
    let [c, x, y, z] = shape;
    assert_eq!(src.len(), c * x * y * z, "layout: data and shape disagree");
    let n = x * y * z;
    for ch in 0..c {
        // x fastest is a C-order (Z, Y, X) array per channel.
        reverse_axes(&src[ch * n..(ch + 1) * n], [z, y, x], |at, row| {
            put(ch * n + at, row);
        });
    }
}

/// `src` (`(C, X, Y, Z)`, x fastest) in z-fastest order.
///
/// # Panics
/// When `src.len()` is not the product of `shape`.
pub fn to_z_fastest<T: Copy + Default>(src: &[T], shape: [usize; 4]) -> Vec<T> {
    let mut out = Vec::with_capacity(src.len());
    extend_z_fastest(&mut out, src, shape);
    out
}

/// `src` (`(C, X, Y, Z)`, z fastest) in x-fastest (NIfTI) order.
///
/// # Panics
/// When `src.len()` is not the product of `shape`.
pub fn to_x_fastest<T: Copy + Default>(src: &[T], shape: [usize; 4]) -> Vec<T> {
    let [c, x, y, z] = shape;
    assert_eq!(src.len(), c * x * y * z, "layout: data and shape disagree");
    let mut out = vec![T::default(); src.len()];
    let n = x * y * z;
    for ch in 0..c {
        let dst = &mut out[ch * n..(ch + 1) * n];
        reverse_axes(&src[ch * n..(ch + 1) * n], [x, y, z], |at, row| {
            for (d, &v) in dst[at..at + row.len()].iter_mut().zip(row) {
                *d = v;
            }
        });
    }
    out
}

/// Gives `src`, a C-order `(outer, mid, inner)` block, as the rows of the
/// C-order `(inner, mid, outer)` block (pieces of up to 8 values), each with
/// its start there: both conversions are this. It goes through 8 x 8 tiles
/// held in a local array, so rows are read and written in pieces rather than
/// value by value a page apart (the row-by-row copy it replaces made
/// collation a fifth of `pipeline run`'s time).
fn reverse_axes<T: Copy + Default>(
    src: &[T],
    [outer, mid, inner]: [usize; 3],
    mut put: impl FnMut(usize, &[T]),
) {
    const TILE: usize = 8;
    let mut tile = [[T::default(); TILE]; TILE];
    for b in 0..mid {
        for a0 in (0..outer).step_by(TILE) {
            let h = TILE.min(outer - a0);
            for c0 in (0..inner).step_by(TILE) {
                let w = TILE.min(inner - c0);
                for da in 0..h {
                    let row = &src[((a0 + da) * mid + b) * inner + c0..][..w];
                    for (dc, &v) in row.iter().enumerate() {
                        tile[dc][da] = v;
                    }
                }
                for (dc, column) in tile.iter().enumerate().take(w) {
                    put(((c0 + dc) * mid + b) * outer + a0, &column[..h]);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The index formulas every former copy used, as references.
    fn z_index(s: [usize; 4], c: usize, i: usize, j: usize, k: usize) -> usize {
        ((c * s[1] + i) * s[2] + j) * s[3] + k
    }

    fn x_index(s: [usize; 4], c: usize, i: usize, j: usize, k: usize) -> usize {
        ((c * s[3] + k) * s[2] + j) * s[1] + i
    }

    #[test]
    fn conversions_follow_the_index_formulas_and_invert_each_other() {
        for shape in [
            [1, 1, 1, 1],
            [1, 2, 3, 4],
            [2, 4, 3, 2],
            [3, 5, 1, 7],
            [1, 16, 16, 32],
            [1, 40, 3, 37],
            [2, 17, 5, 33],
            [1, 96, 2, 48],
        ] {
            let n: usize = shape.iter().product();
            let src: Vec<u32> = (0..n as u32).collect();
            let z = to_z_fastest(&src, shape);
            let x = to_x_fastest(&src, shape);
            for c in 0..shape[0] {
                for i in 0..shape[1] {
                    for j in 0..shape[2] {
                        for k in 0..shape[3] {
                            assert_eq!(
                                z[z_index(shape, c, i, j, k)],
                                src[x_index(shape, c, i, j, k)]
                            );
                            assert_eq!(
                                x[x_index(shape, c, i, j, k)],
                                src[z_index(shape, c, i, j, k)]
                            );
                        }
                    }
                }
            }
            assert_eq!(to_x_fastest(&z, shape), src);
            let mut appended = vec![7u32];
            extend_z_fastest(&mut appended, &src, shape);
            assert_eq!(appended[1..], z[..]);
        }
    }

    /// The f32 path for collation (AVX2 blocks where the CPU has them, and
    /// the remainders value by value) equals the generic conversion, on
    /// shapes with and without whole 16 x 8 blocks, small and large.
    #[test]
    fn the_collation_path_equals_the_generic_conversion() {
        for shape in [
            [1, 96, 96, 96],
            [1, 48, 48, 48],
            [2, 16, 3, 8],
            [1, 33, 4, 17],
            [1, 7, 5, 15],
            [3, 24, 2, 40],
            [1, 0, 3, 4],
        ] {
            let n: usize = shape.iter().product();
            let src: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let mut want = vec![0.0f32; n];
            write_z_fastest(&mut want, &src, shape);
            // Initialised to a value the conversion never writes, so an
            // element it missed shows (and reading it is defined).
            let mut got = vec![MaybeUninit::new(f32::MAX); n];
            init_z_fastest(&mut got, &src, shape);
            // SAFETY: every element was initialised above.
            let got: Vec<f32> = got
                .into_iter()
                .map(|v| unsafe { v.assume_init() })
                .collect();
            assert_eq!(got, want, "{shape:?}");
        }
    }

    /// The copies dino3d had before there was one conversion, as references
    /// (the model's candle permutation is compared in the tasks crate).
    mod before {
        use crate::transforms::Image;

        /// The collation's `push_z_fastest`.
        pub(super) fn collate(out: &mut Vec<f32>, img: &Image) {
            let [c, x, y, z] = img.shape;
            let start = out.len();
            out.resize(start + img.data.len(), 0.0);
            let dst = &mut out[start..];
            for ch in 0..c {
                let base = ch * x * y * z;
                for k in 0..z {
                    for j in 0..y {
                        let row = &img.data[base + (k * y + j) * x..][..x];
                        for (i, &v) in row.iter().enumerate() {
                            dst[base + (i * y + j) * z + k] = v;
                        }
                    }
                }
            }
        }

        /// The kNN probe's box of channel 0, z fastest.
        pub(super) fn probe_box(img: &Image, start: [usize; 3], size: [usize; 3]) -> Vec<f32> {
            let mut v = Vec::with_capacity(size.iter().product());
            for i in 0..size[0] {
                for j in 0..size[1] {
                    for k in 0..size[2] {
                        v.push(img.data[img.index(0, start[0] + i, start[1] + j, start[2] + k)]);
                    }
                }
            }
            v
        }

        /// The segmentation task's `to_model_layout`.
        pub(super) fn segment_in(data: &[f32], shape: [usize; 4]) -> Vec<f32> {
            let [c, x, y, z] = shape;
            let mut out = vec![0f32; data.len()];
            for ci in 0..c {
                for zi in 0..z {
                    for yi in 0..y {
                        for xi in 0..x {
                            out[((ci * x + xi) * y + yi) * z + zi] =
                                data[((ci * z + zi) * y + yi) * x + xi];
                        }
                    }
                }
            }
            out
        }

        /// The segmentation task's `to_file_layout`.
        pub(super) fn segment_out(labels: &[u16], shape: [usize; 3]) -> Vec<u16> {
            let [x, y, z] = shape;
            let mut out = vec![0u16; labels.len()];
            for xi in 0..x {
                for yi in 0..y {
                    for zi in 0..z {
                        out[(zi * y + yi) * x + xi] = labels[(xi * y + yi) * z + zi];
                    }
                }
            }
            out
        }

        /// `pipeline run --save-batch`'s `tensor_volume` of crop `n`.
        pub(super) fn saved_crop(data: &[f32], shape: [usize; 5], n: usize) -> Vec<f32> {
            let [_, c, x, y, z] = shape;
            let at = |ch: usize, i: usize, j: usize, k: usize| {
                data[(((n * c + ch) * x + i) * y + j) * z + k]
            };
            let mut out = Vec::with_capacity(c * x * y * z);
            for ch in 0..c {
                for k in 0..z {
                    for j in 0..y {
                        for i in 0..x {
                            out.push(at(ch, i, j, k));
                        }
                    }
                }
            }
            out
        }
    }

    /// Shapes from a fixed stream, with values that differ everywhere.
    fn shapes() -> Vec<[usize; 4]> {
        let mut s = 0x2545_F491_4F6C_DD1Du64;
        (0..200)
            .map(|_| {
                [0, 1, 2, 3].map(|a| {
                    s ^= s << 13;
                    s ^= s >> 7;
                    s ^= s << 17;
                    1 + (s % if a == 0 { 3 } else { 11 }) as usize
                })
            })
            .collect()
    }

    #[test]
    fn every_former_copy_is_reproduced_bit_for_bit() {
        use crate::transforms::Image;
        use crate::transforms::crop_foreground::crop;
        for (t, shape) in shapes().into_iter().enumerate() {
            let n: usize = shape.iter().product();
            let data: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37 + t as f32).sin()).collect();
            let img = Image {
                data: data.clone(),
                shape,
                spacing: [1.0; 3],
                affine: crate::nifti::affine::IDENTITY,
            };
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            // Collation, appending after earlier crops.
            let (mut old, mut new) = (vec![1.5f32], vec![1.5f32]);
            before::collate(&mut old, &img);
            extend_z_fastest(&mut new, &img.data, img.shape);
            assert_eq!(bits(&new), bits(&old));
            // Segmentation cases in and predictions out.
            let z = to_z_fastest(&data, shape);
            assert_eq!(bits(&z), bits(&before::segment_in(&data, shape)));
            let labels: Vec<u16> = (0..n / shape[0]).map(|i| (i * 7 % 5) as u16).collect();
            let spatial = [shape[1], shape[2], shape[3]];
            assert_eq!(
                to_x_fastest(&labels, [1, shape[1], shape[2], shape[3]]),
                before::segment_out(&labels, spatial)
            );
            // A saved batch: crop 1 of two back to NIfTI order.
            let batch = [&z[..], &z[..]].concat();
            let five = [2, shape[0], shape[1], shape[2], shape[3]];
            assert_eq!(
                bits(&to_x_fastest(&batch[n..], shape)),
                bits(&before::saved_crop(&batch, five, 1))
            );
            // The kNN probe's box of channel 0.
            let start = [shape[1] / 3, shape[2] / 2, shape[3] / 4];
            let size = [0, 1, 2].map(|a| shape[a + 1] - start[a]);
            let end = [0, 1, 2].map(|a| start[a] + size[a]);
            let cut = crop(&img, start, end);
            let m: usize = size.iter().product();
            let boxed = to_z_fastest(&cut.data[..m], [1, size[0], size[1], size[2]]);
            assert_eq!(bits(&boxed), bits(&before::probe_box(&img, start, size)));
        }
    }
}
