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
pub fn write_z_fastest<T: Copy>(dst: &mut [T], src: &[T], shape: [usize; 4]) {
    assert_eq!(dst.len(), src.len(), "layout: output and shape disagree");
    each_z_fastest(src, shape, |at, v| dst[at] = v);
}

/// [`write_z_fastest`] into memory not yet initialised (collation fills each
/// crop's slot of a batch this way, with no pass that zeroes it first).
/// Every element of `dst` is written.
///
/// # Panics
/// When `src` or `dst` is not the product of `shape` long.
pub fn init_z_fastest<T: Copy>(dst: &mut [MaybeUninit<T>], src: &[T], shape: [usize; 4]) {
    assert_eq!(dst.len(), src.len(), "layout: output and shape disagree");
    each_z_fastest(src, shape, |at, v| {
        dst[at].write(v);
    });
}

/// Calls `put(index in z-fastest order, value)` for every value of `src`
/// (`shape`, x fastest).
fn each_z_fastest<T: Copy>(src: &[T], shape: [usize; 4], mut put: impl FnMut(usize, T)) {
    let [c, x, y, z] = shape;
    assert_eq!(src.len(), c * x * y * z, "layout: data and shape disagree");
    let n = x * y * z;
    for ch in 0..c {
        // x fastest is a C-order (Z, Y, X) array per channel.
        reverse_axes(&src[ch * n..(ch + 1) * n], [z, y, x], |at, v| {
            put(ch * n + at, v);
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
        reverse_axes(&src[ch * n..(ch + 1) * n], [x, y, z], |at, v| dst[at] = v);
    }
    out
}

/// Gives each value of `src`, a C-order `(outer, mid, inner)` block, to `put`
/// with its index in the C-order `(inner, mid, outer)` block: both
/// conversions are this. It runs
/// in 16 x 16 tiles of (outer, inner), so every cache line read or written is
/// used whole at once; a row-by-row copy wrote each value a page away from
/// the last.
fn reverse_axes<T: Copy>(
    src: &[T],
    [outer, mid, inner]: [usize; 3],
    mut put: impl FnMut(usize, T),
) {
    const TILE: usize = 16;
    for a0 in (0..outer).step_by(TILE) {
        let a1 = (a0 + TILE).min(outer);
        for c0 in (0..inner).step_by(TILE) {
            let width = (c0 + TILE).min(inner) - c0;
            for b in 0..mid {
                for a in a0..a1 {
                    let row = &src[(a * mid + b) * inner + c0..][..width];
                    for (dc, &v) in row.iter().enumerate() {
                        put(((c0 + dc) * mid + b) * outer + a, v);
                    }
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
