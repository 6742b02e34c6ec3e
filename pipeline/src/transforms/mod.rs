//! Transforms with MONAI's semantics (../shared/spec/pipeline-reference.md §2)
//! and 3DINO's own (3dino-reference.md §3), one per file.
//!
//! Each transform's file holds its algorithm, its parameters as recipes
//! name them ([`spec::TransformSpec`]: types, ranges, defaults, a summary,
//! and how it builds its op) and its [`crate::exec::op::Op`]; the
//! [`registry`] lists them. To add a transform: a file here, its `SPEC`, and
//! one line in [`registry::TRANSFORMS`]. Randomness comes only from
//! [`DrawKey`] streams, so results do not depend on threads.

pub mod axis_map;
pub mod compose;
pub mod crop_foreground;
pub mod error;
pub mod fast_math;
pub mod gaussian_filter;
pub mod gibbs_noise;
pub mod image;
pub mod load;
pub mod nan_to_mean;
pub mod normal_noise;
pub mod normalize_intensity;
pub mod orientation;
pub mod pad_and_center_crop;
pub mod percentiles;
pub mod permute_in_plane_first;
pub mod rand_crop_by_pos_neg_label;
pub mod rand_flip_rotate;
pub mod rand_intensity;
pub mod rand_spatial_crop;
pub mod rand_time_frame;
pub mod random_resized_crop;
pub mod registry;
pub mod resize;
pub mod rng;
pub mod scale_intensity_range;
pub mod spacing;
pub mod spec;
mod threedino_prefix;

pub use axis_map::AxisMap;
pub use compose::{OneOf, RandomApply};
pub use crop_foreground::{
    CropForeground, CropForegroundStep, crop_foreground, crop_foreground_divisible,
};
pub use error::TransformError;
pub use gaussian_filter::{
    RandGaussianSharpen, RandGaussianSmooth, erf_kernel, gaussian_sharpen, gaussian_smooth,
};
pub use gibbs_noise::{RandGibbsNoise, gibbs_noise};
pub use image::Image;
pub use nan_to_mean::{NanToMean, nan_to_mean};
pub use normalize_intensity::{NormalizeIntensity, normalize_intensity};
pub use orientation::{Orientation, flip_spatial, orientation, parse_axcodes};
pub use pad_and_center_crop::{
    CenterSpatialCrop, PadMethod, SpatialPad, center_spatial_crop, spatial_pad,
};
pub use percentiles::{ScaleIntensityRangePercentiles, scale_intensity_range_percentiles};
pub use permute_in_plane_first::{PermuteInPlaneFirst, permute_in_plane_first};
pub use rand_crop_by_pos_neg_label::{
    RandCropByPosNegLabel, RandCropByPosNegLabelStep, rand_crop_by_pos_neg_label,
};
pub use rand_flip_rotate::{RandFlip, RandRotate90, rand_flip, rand_rotate90, rot90};
pub use rand_intensity::{
    RandAdjustContrast, RandGaussianNoise, RandHistogramShift, RandScaleIntensity,
    RandShiftIntensity, adjust_contrast, histogram_shift,
};
pub use rand_spatial_crop::{CropBox, RandSpatialCrop, rand_spatial_crop};
pub use rand_time_frame::{RandTimeFrame, rand_time_frame};
pub use random_resized_crop::RandomResizedCrop3d;
pub use resize::{
    AxisTaps, PlaneResize, Resize, ResizeMode, box_affine, box_spacing, resize, resize_box,
};
pub use rng::DrawKey;
pub use scale_intensity_range::{ScaleIntensityRange, scale_intensity_range};
pub use spacing::{Interp, Spacing, SpacingPadding, spacing};
pub use threedino_prefix::{IntPrefix, threedino_prefix, threedino_prefix_int};

/// Largest |a − b| between float32 results and a float64 reference (tests).
#[cfg(test)]
pub(crate) fn max_abs_diff(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(&x, &y)| (f64::from(x) - y).abs())
        .fold(0.0, f64::max)
}
