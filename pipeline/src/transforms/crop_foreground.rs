//! `CropForeground` with MONAI's semantics for `select_fn = x > threshold`:
//! the tight box of voxels selected in any channel, grown by `margin`, then
//! (with `allow_smaller`) clipped to the image. 3DINO uses threshold -1 after
//! its [-1, 1] scaling, margin 0, `allow_smaller = True`.

use super::error::TransformError;
use super::image::Image;
use crate::exec::op::{Op, StepRng};
use crate::transforms::spec::size_from_data;
use crate::transforms::spec::{ANY, Args, KEYS, ParamDefault, ParamKind, TransformSpec, param};

/// Parameters of [`crop_foreground`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CropForeground {
    /// Voxels strictly above this are foreground.
    pub threshold: f32,
    /// Voxels added on each side of the box.
    pub margin: usize,
}

/// The foreground box `[start, end)` per spatial axis, or None if nothing is
/// selected.
pub fn foreground_box(img: &Image, threshold: f32) -> Option<([usize; 3], [usize; 3])> {
    foreground_box_by(img, |v| v > threshold)
}

/// [`foreground_box`] of the voxels `selected` picks (e.g. by a value they
/// would have after an elementwise map, without making the mapped copy).
pub fn foreground_box_by(
    img: &Image,
    selected: impl Fn(f32) -> bool,
) -> Option<([usize; 3], [usize; 3])> {
    let [c, x, y, z] = img.shape;
    let (mut lo, mut hi) = ([usize::MAX; 3], [0usize; 3]);
    for ch in 0..c {
        for k in 0..z {
            for j in 0..y {
                let row = &img.data[img.index(ch, 0, j, k)..][..x];
                let (Some(first), Some(last)) = (
                    row.iter().position(|&v| selected(v)),
                    row.iter().rposition(|&v| selected(v)),
                ) else {
                    continue;
                };
                lo = [lo[0].min(first), lo[1].min(j), lo[2].min(k)];
                hi = [hi[0].max(last + 1), hi[1].max(j + 1), hi[2].max(k + 1)];
            }
        }
    }
    (lo[0] != usize::MAX).then_some((lo, hi))
}

/// Copies the box `[start, end)` out of `img`, moving the affine's origin to it.
pub fn crop(img: &Image, start: [usize; 3], end: [usize; 3]) -> Image {
    let c = img.shape[0];
    let dims = [end[0] - start[0], end[1] - start[1], end[2] - start[2]];
    let mut data = Vec::with_capacity(c * dims[0] * dims[1] * dims[2]);
    for ch in 0..c {
        for k in start[2]..end[2] {
            for j in start[1]..end[1] {
                let at = img.index(ch, start[0], j, k);
                data.extend_from_slice(&img.data[at..at + dims[0]]);
            }
        }
    }
    let mut affine = img.affine;
    for row in affine.iter_mut().take(3) {
        row[3] += (0..3).map(|a| row[a] * start[a] as f64).sum::<f64>();
    }
    Image {
        data,
        shape: [c, dims[0], dims[1], dims[2]],
        spacing: img.spacing,
        affine,
    }
}

/// [`crop`] of an image the caller gives up: the image itself, without a
/// copy, when the box is all of it.
pub fn crop_owned(img: Image, start: [usize; 3], end: [usize; 3]) -> Image {
    if start == [0; 3] && end == [img.shape[1], img.shape[2], img.shape[3]] {
        return img;
    }
    crop(&img, start, end)
}

/// Crops `img` to its foreground.
///
/// # Errors
/// When no voxel is above the threshold (MONAI would return an empty volume).
pub fn crop_foreground(img: &Image, p: &CropForeground) -> Result<Image, TransformError> {
    let (lo, hi) = foreground_box(img, p.threshold).ok_or(TransformError::EmptyForeground {
        threshold: p.threshold,
    })?;
    let dims = [img.shape[1], img.shape[2], img.shape[3]];
    let start = lo.map(|v| v.saturating_sub(p.margin));
    let end = [0, 1, 2].map(|a| (hi[a] + p.margin).min(dims[a]));
    Ok(crop(img, start, end))
}

/// MONAI's default `allow_smaller = False`: the box grown by `margin` may
/// leave the image, and the part outside is padded with 0 (not the minimum).
///
/// # Errors
/// When no voxel is above the threshold.
pub fn crop_foreground_padded(img: &Image, p: &CropForeground) -> Result<Image, TransformError> {
    let (lo, hi) = foreground_box(img, p.threshold).ok_or(TransformError::EmptyForeground {
        threshold: p.threshold,
    })?;
    let dims = [img.shape[1], img.shape[2], img.shape[3]];
    let before = lo.map(|v| p.margin.saturating_sub(v));
    let after = [0, 1, 2].map(|a| (hi[a] + p.margin).saturating_sub(dims[a]));
    let inner = crop_foreground(img, p)?;
    Ok(super::pad_and_center_crop::pad_box(
        &inner, before, after, 0.0,
    ))
}

/// MONAI's `k_divisible`: the box `[lo, hi)` grown on each axis to the next
/// multiple of `k`, centred (the start moves back by half the growth, rounded
/// down). The grown box may leave the image.
pub fn divisible_box(lo: [usize; 3], hi: [usize; 3], k: usize) -> ([i64; 3], [i64; 3]) {
    let k = k.max(1) as i64;
    let mut start = [0i64; 3];
    let mut end = [0i64; 3];
    for a in 0..3 {
        let size = (hi[a] - lo[a]) as i64;
        let grown = (size + k - 1) / k * k;
        start[a] = lo[a] as i64 - (grown - size) / 2;
        end[a] = start[a] + grown;
    }
    (start, end)
}

/// Copies the box `[start, end)` out of `img`; the parts of the box outside
/// the image are filled with `value`. The affine's origin moves to `start`.
///
/// # Panics
/// If the box is empty on some axis.
pub fn crop_pad(img: &Image, start: [i64; 3], end: [i64; 3], value: f32) -> Image {
    let dims = [img.shape[1], img.shape[2], img.shape[3]].map(|d| d as i64);
    assert!((0..3).all(|a| end[a] > start[a]), "empty box");
    let inner_start = [0, 1, 2].map(|a| start[a].clamp(0, dims[a]) as usize);
    let inner_end = [0, 1, 2].map(|a| end[a].clamp(0, dims[a]) as usize);
    let before = start.map(|s| (-s).max(0) as usize);
    let after = [0, 1, 2].map(|a| (end[a] - dims[a]).max(0) as usize);
    if (0..3).any(|a| inner_end[a] <= inner_start[a]) {
        // The box misses the image entirely: all padding.
        let out = [0, 1, 2].map(|a| (end[a] - start[a]) as usize);
        let mut affine = img.affine;
        for row in affine.iter_mut().take(3) {
            row[3] += (0..3).map(|a| row[a] * start[a] as f64).sum::<f64>();
        }
        return Image {
            data: vec![value; img.shape[0] * out[0] * out[1] * out[2]],
            shape: [img.shape[0], out[0], out[1], out[2]],
            spacing: img.spacing,
            affine,
        };
    }
    let inner = crop(img, inner_start, inner_end);
    super::pad_and_center_crop::pad_box(&inner, before, after, value)
}

/// `CropForeground(select_fn = x > threshold, k_divisible = k)` as 3DINO's
/// visualisation uses it: the foreground box grown to multiples of `k`
/// ([`divisible_box`]), with the parts outside the image filled with
/// `pad_value` (MONAI pads with 0). Returns the crop and its start in `img`'s
/// voxels (negative where the box starts before the image).
///
/// # Errors
/// When no voxel is above the threshold.
pub fn crop_foreground_divisible(
    img: &Image,
    threshold: f32,
    k: usize,
    pad_value: f32,
) -> Result<(Image, [i64; 3]), TransformError> {
    let (lo, hi) =
        foreground_box(img, threshold).ok_or(TransformError::EmptyForeground { threshold })?;
    let (start, end) = divisible_box(lo, hi, k);
    Ok((crop_pad(img, start, end, pad_value), start))
}

/// `CropForeground` as a step: clipped to the image (`allow_smaller`, or a
/// margin of 0), or padded with 0 where the grown box leaves it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CropForegroundStep {
    /// Threshold and margin.
    pub params: CropForeground,
    /// Whether the box may leave the image (zero-padded).
    pub padded: bool,
}

impl Op for CropForegroundStep {
    fn apply(&self, img: &mut Image, _: &mut StepRng, _: bool) -> Result<(), TransformError> {
        *img = if self.padded {
            crop_foreground_padded(img, &self.params)?
        } else {
            crop_foreground(img, &self.params)?
        };
        Ok(())
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// The recipe's `CropForeground`.
pub const SPEC: TransformSpec = TransformSpec {
    name: "CropForeground",
    is_random: false,
    params: &[
        KEYS,
        param("threshold", ANY, ParamDefault::Num(0.0)),
        param(
            "margin",
            ParamKind::Int {
                min: 0,
                max: 1 << 20,
            },
            ParamDefault::Num(0.0),
        ),
        param("allow_smaller", ParamKind::Bool, ParamDefault::Bool(false)),
    ],
    summary: "crop to the box of voxels > threshold (any channel) plus margin; without allow_smaller the box may leave the image (padded with 0)",
    check: None,
    nests: false,
    output_size: size_from_data,
    build: |a: &Args<'_>| {
        let params = CropForeground {
            threshold: a.num("threshold")? as f32,
            margin: a.count("margin")?,
        };
        Ok(Box::new(CropForegroundStep {
            params,
            padded: !(a.flag("allow_smaller")? || params.margin == 0),
        }))
    },
};

#[cfg(test)]
mod tests {
    use super::*;

    /// `crop_owned` gives the image back untouched for the whole box and
    /// equals `crop` otherwise; `foreground_box_by` with `v > t` is
    /// `foreground_box`.
    #[test]
    fn owned_crops_and_predicate_boxes_agree_with_the_plain_ones() {
        let data: Vec<f32> = (0..4 * 3 * 2).map(|i| (i % 7) as f32 - 3.0).collect();
        let img = Image {
            data,
            shape: [1, 4, 3, 2],
            spacing: [1.0; 3],
            affine: crate::nifti::affine::IDENTITY,
        };
        let whole = crop_owned(img.clone(), [0; 3], [4, 3, 2]);
        assert_eq!(whole, img);
        assert_eq!(
            crop_owned(img.clone(), [1, 0, 1], [3, 2, 2]),
            crop(&img, [1, 0, 1], [3, 2, 2])
        );
        for t in [-4.0, -1.0, 0.5, 2.0, 3.0] {
            assert_eq!(
                foreground_box_by(&img, |v| v > t),
                foreground_box(&img, t),
                "threshold {t}"
            );
        }
    }

    #[test]
    fn allow_smaller_false_pads_outside_with_zero() {
        // Foreground touches x = 0 and y = 2 (the last row); margin 1 leaves the image.
        let mut img = Image::ramp([1, 4, 3, 1]);
        img.data.iter_mut().for_each(|v| *v = -1.0);
        let at = img.index(0, 0, 2, 0);
        img.data[at] = 5.0;
        let p = CropForeground {
            threshold: 0.0,
            margin: 1,
        };
        let small = crop_foreground(&img, &p).unwrap();
        assert_eq!(small.shape, [1, 2, 2, 1]);
        let padded = crop_foreground_padded(&img, &p).unwrap();
        // x: [-1, 2) -> 3 wide, y: [1, 4) -> 3, z: [-1, 2) -> 3.
        assert_eq!(padded.shape, [1, 3, 3, 3]);
        assert_eq!(padded.at(0, 1, 1, 1), 5.0);
        assert_eq!(padded.at(0, 0, 1, 1), 0.0, "outside is 0, not the minimum");
        assert_eq!(padded.at(0, 1, 0, 1), -1.0, "inside keeps its value");
        assert_eq!(padded.affine[0][3], -1.0);
        assert_eq!(padded.affine[1][3], 1.0);
        assert_eq!(padded.affine[2][3], -1.0);
    }
    #[test]
    fn k_divisible_grows_the_box_centred_and_pads_outside_with_the_value() {
        assert_eq!(
            divisible_box([3, 0, 5], [8, 16, 6], 4),
            ([2, 0, 4], [10, 16, 8])
        );
        // Foreground x in [0, 3), y in [1, 2), z in [0, 1) of a 5 x 2 x 1 image.
        let mut img = Image::ramp([1, 5, 2, 1]);
        img.data.iter_mut().for_each(|v| *v = -1.0);
        for i in 0..3 {
            let at = img.index(0, i, 1, 0);
            img.data[at] = i as f32 + 1.0;
        }
        let (out, start) = crop_foreground_divisible(&img, -1.0, 4, 0.0).unwrap();
        // x: [0, 3) -> [0, 4); y: [1, 2) -> [0, 4); z: [0, 1) -> [-1, 3).
        assert_eq!(start, [0, 0, -1]);
        assert_eq!(out.shape, [1, 4, 4, 4]);
        assert_eq!(out.at(0, 0, 1, 1), 1.0);
        assert_eq!(out.at(0, 2, 1, 1), 3.0);
        assert_eq!(out.at(0, 3, 1, 1), -1.0, "inside the image: its value");
        assert_eq!(out.at(0, 0, 0, 1), -1.0, "inside the image: its value");
        assert_eq!(out.at(0, 0, 2, 1), 0.0, "past the image: the pad value");
        assert_eq!(out.at(0, 0, 1, 0), 0.0, "before the image: the pad value");
        // The origin moved to the box start (identity affine).
        assert_eq!(
            [out.affine[0][3], out.affine[1][3], out.affine[2][3]],
            [0.0, 0.0, -1.0]
        );
    }

    use crate::nifti::affine::IDENTITY;

    #[test]
    fn crops_to_the_box_of_any_channel_and_moves_the_origin() {
        let (x, y, z) = (6, 5, 4);
        let mut img = Image {
            data: vec![-1.0; 2 * x * y * z],
            shape: [2, x, y, z],
            spacing: [1.0; 3],
            affine: IDENTITY,
        };
        img.affine[0][0] = 2.0;
        let a = img.index(0, 1, 2, 1);
        img.data[a] = 0.5;
        let b = img.index(1, 4, 3, 2);
        img.data[b] = 0.1;
        assert_eq!(foreground_box(&img, -1.0), Some(([1, 2, 1], [5, 4, 3])));
        let out = crop_foreground(
            &img,
            &CropForeground {
                threshold: -1.0,
                margin: 0,
            },
        )
        .unwrap();
        assert_eq!(out.shape, [2, 4, 2, 2]);
        assert_eq!(out.at(0, 0, 0, 0), 0.5);
        assert_eq!(out.at(1, 3, 1, 1), 0.1);
        assert_eq!(
            [out.affine[0][3], out.affine[1][3], out.affine[2][3]],
            [2.0, 2.0, 1.0]
        );
        // A margin grows the box but never past the image.
        let m = crop_foreground(
            &img,
            &CropForeground {
                threshold: -1.0,
                margin: 3,
            },
        )
        .unwrap();
        assert_eq!(m.shape, [2, 6, 5, 4]);
        let empty = Image {
            data: vec![-1.0; 8],
            shape: [1, 2, 2, 2],
            spacing: [1.0; 3],
            affine: IDENTITY,
        };
        assert!(
            crop_foreground(
                &empty,
                &CropForeground {
                    threshold: -1.0,
                    margin: 0
                }
            )
            .is_err()
        );
    }
}
