//! `SpatialPad` and `CenterSpatialCrop` with MONAI's semantics.
//!
//! * `SpatialPad(spatial_size, method)`: per axis `pad = max(target - size, 0)`,
//!   split `(pad / 2, pad - pad / 2)` (symmetric) or `(0, pad)` (end); `-1` (any value <= 0,
//!   MONAI's `fall_back_tuple`) keeps the axis; constant 0 outside; never crops.
//! * `CenterSpatialCrop(roi_size)`: centre `size / 2`, start `centre - roi / 2`,
//!   clipped to the image (so a roi larger than the image keeps the axis); a
//!   value <= 0 keeps the axis.
//!
//! Both move the affine's origin so world coordinates of voxels are unchanged.

use super::crop_foreground::crop;
use super::image::Image;
use crate::exec::op::{Op, Role, StepRng};
use crate::transforms::TransformError;
use crate::transforms::spec::{ANY, Args, KEYS, ParamDefault, ParamKind, TransformSpec, param};
use crate::transforms::spec::{Params, requested_size};

/// Where `SpatialPad` puts the padding.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PadMethod {
    /// Half before, half (rounded up) after.
    #[default]
    Symmetric,
    /// All after.
    End,
}

/// Pads `img` with `value` to at least `spatial_size` (`-1` keeps an axis).
pub fn spatial_pad(img: &Image, spatial_size: [i64; 3], method: PadMethod, value: f32) -> Image {
    let [_, x, y, z] = img.shape;
    let size = [x, y, z];
    let pad = [0, 1, 2].map(|a| {
        let target = if spatial_size[a] <= 0 {
            size[a]
        } else {
            spatial_size[a] as usize
        };
        target.saturating_sub(size[a])
    });
    if pad == [0, 0, 0] {
        return img.clone();
    }
    let before = pad.map(|p| match method {
        PadMethod::Symmetric => p / 2,
        PadMethod::End => 0,
    });
    let after = [0, 1, 2].map(|a| pad[a] - before[a]);
    pad_box(img, before, after, value)
}

/// Pads `before` / `after` voxels of `value` on each spatial axis, keeping
/// world positions (the affine's origin moves back by `before`).
pub fn pad_box(img: &Image, before: [usize; 3], after: [usize; 3], value: f32) -> Image {
    if before == [0; 3] && after == [0; 3] {
        return img.clone();
    }
    let [c, x, y, z] = img.shape;
    let out = [0, 1, 2].map(|a| img.shape[a + 1] + before[a] + after[a]);
    let mut data = vec![value; c * out[0] * out[1] * out[2]];
    for ch in 0..c {
        for k in 0..z {
            for j in 0..y {
                let src = &img.data[img.index(ch, 0, j, k)..][..x];
                let at =
                    ((ch * out[2] + k + before[2]) * out[1] + j + before[1]) * out[0] + before[0];
                data[at..at + x].copy_from_slice(src);
            }
        }
    }
    let mut affine = img.affine;
    for row in affine.iter_mut().take(3) {
        row[3] -= (0..3).map(|a| row[a] * before[a] as f64).sum::<f64>();
    }
    Image {
        data,
        shape: [c, out[0], out[1], out[2]],
        spacing: img.spacing,
        affine,
    }
}

/// The centred box `[start, end)` MONAI's `CenterSpatialCrop` takes.
pub fn center_box(size: [usize; 3], roi_size: [i64; 3]) -> ([usize; 3], [usize; 3]) {
    let mut start = [0; 3];
    let mut end = size;
    for a in 0..3 {
        if roi_size[a] <= 0 {
            continue;
        }
        let roi = roi_size[a] as usize;
        let s = (size[a] / 2).saturating_sub(roi / 2);
        start[a] = s;
        end[a] = (s + roi).min(size[a]);
    }
    (start, end)
}

/// Crops the centre `roi_size` of `img`.
pub fn center_spatial_crop(img: &Image, roi_size: [i64; 3]) -> Image {
    let (start, end) = center_box([img.shape[1], img.shape[2], img.shape[3]], roi_size);
    crop(img, start, end)
}

/// `SpatialPad`: constant padding to at least a size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SpatialPad {
    /// Target size (-1 keeps an axis).
    pub size: [i64; 3],
    /// Where the padding goes.
    pub method: PadMethod,
    /// Fill value.
    pub value: f32,
}

impl Op for SpatialPad {
    fn apply(&self, img: &mut Image, _: &mut StepRng, _: bool) -> Result<(), TransformError> {
        *img = spatial_pad(img, self.size, self.method, self.value);
        Ok(())
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// At least `spatial_size` on each side.
fn padded_size(params: &Params, input: Option<[u64; 3]>) -> Option<[u64; 3]> {
    let want = requested_size(params, "spatial_size", input)?;
    let have = input?;
    Some([0, 1, 2].map(|a| want[a].max(have[a])))
}

/// At most `roi_size` on each side.
fn center_cropped_size(params: &Params, input: Option<[u64; 3]>) -> Option<[u64; 3]> {
    let want = requested_size(params, "roi_size", input)?;
    let have = input?;
    Some([0, 1, 2].map(|a| want[a].min(have[a])))
}

/// The recipe's `SpatialPad`.
pub const SPATIAL_PAD: TransformSpec = TransformSpec {
    name: "SpatialPad",
    is_random: false,
    params: &[
        KEYS,
        param("spatial_size", ParamKind::Int3, ParamDefault::Required),
        param(
            "method",
            ParamKind::Choice(&["symmetric", "end"]),
            ParamDefault::Str("symmetric"),
        ),
        param("value", ANY, ParamDefault::Num(0.0)),
    ],
    summary: "pad with a constant to at least spatial_size (never crops)",
    check: None,
    nests: false,
    output_size: padded_size,
    build: |a: &Args<'_>| {
        Ok(Box::new(SpatialPad {
            size: a.int3("spatial_size")?,
            method: if a.text("method")? == "end" {
                PadMethod::End
            } else {
                PadMethod::Symmetric
            },
            value: a.num("value")? as f32,
        }))
    },
};

/// `CenterSpatialCrop`: the centre box of a size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CenterSpatialCrop {
    /// Box size (-1 keeps an axis).
    pub roi: [i64; 3],
}

impl Op for CenterSpatialCrop {
    fn apply(&self, img: &mut Image, _: &mut StepRng, _: bool) -> Result<(), TransformError> {
        *img = center_spatial_crop(img, self.roi);
        Ok(())
    }

    fn role(&self) -> Role {
        Role::Crop
    }

    fn crop_of(&self, img: &Image, _: &mut StepRng) -> Option<Image> {
        let (s, e) = center_box([img.shape[1], img.shape[2], img.shape[3]], self.roi);
        Some(crop(img, s, e))
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// The recipe's `CenterSpatialCrop`.
pub const CENTER_SPATIAL_CROP: TransformSpec = TransformSpec {
    name: "CenterSpatialCrop",
    is_random: false,
    params: &[
        KEYS,
        param("roi_size", ParamKind::Int3, ParamDefault::Required),
    ],
    summary: "crop the centre roi_size (MONAI's centre rule)",
    check: None,
    nests: false,
    output_size: center_cropped_size,
    build: |a: &Args<'_>| {
        Ok(Box::new(CenterSpatialCrop {
            roi: a.int3("roi_size")?,
        }))
    },
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pad_splits_like_monai_and_keeps_world_positions() {
        let img = Image::ramp([1, 2, 3, 1]);
        let out = spatial_pad(&img, [5, -1, 2], PadMethod::Symmetric, 0.0);
        // x: pad 3 -> (1, 2); y kept; z: pad 1 -> (0, 1).
        assert_eq!(out.shape, [1, 5, 3, 2]);
        assert_eq!(out.at(0, 1, 0, 0), img.at(0, 0, 0, 0));
        assert_eq!(out.at(0, 2, 2, 0), img.at(0, 1, 2, 0));
        assert_eq!(out.at(0, 0, 0, 0), 0.0);
        assert_eq!(out.at(0, 1, 0, 1), 0.0);
        assert_eq!(out.affine[0][3], -1.0);
        let end = spatial_pad(&img, [4, 3, 1], PadMethod::End, -7.0);
        assert_eq!(end.shape, [1, 4, 3, 1]);
        assert_eq!(end.at(0, 0, 1, 0), img.at(0, 0, 1, 0));
        assert_eq!(end.at(0, 3, 0, 0), -7.0);
        // Never crops.
        assert_eq!(spatial_pad(&img, [1, 1, 1], PadMethod::Symmetric, 0.0), img);
    }

    #[test]
    fn center_crop_uses_monais_centre() {
        // size 10, roi 5: centre 5, start 3 (not (10 - 5) / 2 = 2).
        assert_eq!(center_box([10, 9, 4], [5, 3, 8]), ([3, 3, 0], [8, 6, 4]));
        assert_eq!(center_box([10, 9, 4], [-1, 9, 1]), ([0, 0, 2], [10, 9, 3]));
        let img = Image::ramp([2, 10, 9, 4]);
        let out = center_spatial_crop(&img, [5, 3, -1]);
        assert_eq!(out.shape, [2, 5, 3, 4]);
        assert_eq!(out.at(1, 0, 0, 0), img.at(1, 3, 3, 0));
        assert_eq!(out.affine[0][3], 3.0);
    }
}
