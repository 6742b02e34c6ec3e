//! The registry: every transform a recipe may name, as the list of the
//! specs their files declare (in the order `recipe check` and the README
//! list them). Adding a transform is one file plus one line here.

use super::spec::TransformSpec;
use super::{
    compose, crop_foreground, gaussian_filter, gibbs_noise, load, nan_to_mean, normalize_intensity,
    orientation, pad_and_center_crop, percentiles, permute_in_plane_first,
    rand_crop_by_pos_neg_label, rand_flip_rotate, rand_intensity, rand_spatial_crop,
    rand_time_frame, random_resized_crop, resize, scale_intensity_range, spacing,
};

/// Every transform a recipe may use.
pub const TRANSFORMS: &[&TransformSpec] = &[
    &load::LOAD_IMAGE,
    &load::ENSURE_CHANNEL_FIRST,
    &rand_time_frame::SPEC,
    &nan_to_mean::SPEC,
    &scale_intensity_range::SPEC,
    &percentiles::SPEC,
    &normalize_intensity::SPEC,
    &orientation::SPEC,
    &permute_in_plane_first::SPEC,
    &crop_foreground::SPEC,
    &rand_flip_rotate::RAND_FLIP,
    &rand_flip_rotate::RAND_ROTATE90,
    &pad_and_center_crop::SPATIAL_PAD,
    &pad_and_center_crop::CENTER_SPATIAL_CROP,
    &spacing::SPEC,
    &resize::SPEC,
    &rand_spatial_crop::SPEC,
    &rand_crop_by_pos_neg_label::SPEC,
    &random_resized_crop::SPEC,
    &rand_intensity::RAND_ADJUST_CONTRAST,
    &rand_intensity::RAND_GAUSSIAN_NOISE,
    &rand_intensity::RAND_SCALE_INTENSITY,
    &rand_intensity::RAND_SHIFT_INTENSITY,
    &rand_intensity::RAND_HISTOGRAM_SHIFT,
    &gaussian_filter::RAND_GAUSSIAN_SMOOTH,
    &gaussian_filter::RAND_GAUSSIAN_SHARPEN,
    &gibbs_noise::SPEC,
    &compose::ONE_OF,
    &compose::RANDOM_APPLY,
];

/// The spec named `name`, if any.
pub fn find(name: &str) -> Option<&'static TransformSpec> {
    TRANSFORMS.iter().copied().find(|t| t.name == name)
}

/// The transform list as Markdown (what `dino-run recipe transforms` prints
/// and the README's list holds): one item per transform with its summary and
/// its parameters (kind, default).
pub fn markdown() -> String {
    let mut out = String::new();
    for t in TRANSFORMS {
        let random = if t.is_random { " (random)" } else { "" };
        out.push_str(&format!("- `{}`{random}: {}", t.name, t.summary));
        if t.nests {
            out.push_str("; steps under `transforms:`");
        }
        out.push('\n');
        for p in t.params {
            out.push_str(&format!(
                "  - `{}`: {}, default {}\n",
                p.name,
                p.kind.describe(),
                p.default.describe()
            ));
        }
    }
    out
}
