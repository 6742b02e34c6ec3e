//! What a recipe may name: each implemented transform with its parameters
//! (MONAI's names), their types, ranges and defaults, and whether it is random.
//! Only transforms that exist in `crate::transforms` are listed.

use std::collections::BTreeMap;

use super::value::ParamValue;

/// The type (and range) a parameter accepts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ParamKind {
    /// A number in `[min, max]`.
    Float {
        /// Smallest allowed value.
        min: f64,
        /// Largest allowed value.
        max: f64,
    },
    /// An integer in `[min, max]`.
    Int {
        /// Smallest allowed value.
        min: i64,
        /// Largest allowed value.
        max: i64,
    },
    /// `true` or `false`.
    Bool,
    /// One of the listed strings.
    Choice(&'static [&'static str]),
    /// A list of exactly three integers (one per spatial axis).
    Int3,
    /// A list of data keys (`image`, `label`, ...).
    Keys,
    /// Three axis codes such as `RAS`.
    AxCodes,
    /// Distinct spatial axes (0, 1, 2), as a list or a single number.
    Axes,
    /// A range `[lo, hi]` with `min <= lo <= hi <= max`.
    Range {
        /// Smallest allowed bound.
        min: f64,
        /// Largest allowed bound.
        max: f64,
    },
    /// Three positive numbers (one per spatial axis), e.g. `pixdim`.
    Float3,
    /// A list of non-negative numbers (e.g. `OneOf` weights).
    Weights,
    /// One data key.
    Key,
}

/// A parameter's default.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Default {
    /// The parameter must be given.
    Required,
    /// The parameter may be left out and then has no value (MONAI's `None`).
    Absent,
    /// A number.
    Num(f64),
    /// A boolean.
    Bool(bool),
    /// A string.
    Str(&'static str),
    /// The data keys `[image]`.
    ImageKey,
    /// The spatial axes `[0, 1]`.
    FirstPlane,
    /// A range `[lo, hi]`.
    Pair(f64, f64),
}

/// One parameter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ParamSpec {
    /// MONAI's name.
    pub name: &'static str,
    /// What it accepts.
    pub kind: ParamKind,
    /// Its default.
    pub default: Default,
}

/// One transform.
#[derive(Debug, Clone, Copy)]
pub struct TransformSpec {
    /// MONAI's (or 3DINO's) name.
    pub name: &'static str,
    /// Whether each application draws random numbers.
    pub is_random: bool,
    /// Its parameters.
    pub params: &'static [ParamSpec],
    /// One line on what it does.
    pub summary: &'static str,
    /// A check across parameters (e.g. `lower <= upper`), run on the resolved
    /// parameters; its message is prefixed with the transform's name.
    pub check: Option<ParamsCheck>,
    /// Whether the step holds other steps under `transforms:`.
    pub nests: bool,
}

/// Transforms are identified by name (names are unique in [`TRANSFORMS`]).
impl PartialEq for TransformSpec {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

/// A check across a step's resolved parameters.
pub type ParamsCheck = fn(&Params) -> Result<(), String>;

/// Resolved parameters of one step, by name.
pub type Params = BTreeMap<&'static str, ParamValue>;

fn lower_not_above_upper(p: &Params) -> Result<(), String> {
    match (
        p.get("lower").and_then(ParamValue::as_f64),
        p.get("upper").and_then(ParamValue::as_f64),
    ) {
        (Some(lo), Some(hi)) if lo > hi => Err(format!("lower ({lo}) is above upper ({hi})")),
        _ => Ok(()),
    }
}

fn two_axes(p: &Params) -> Result<(), String> {
    match p.get("spatial_axes") {
        Some(ParamValue::List(axes)) if axes.len() != 2 => {
            Err("spatial_axes must name exactly two axes (a plane)".into())
        }
        _ => Ok(()),
    }
}

fn pos_or_neg(p: &Params) -> Result<(), String> {
    let get = |k| p.get(k).and_then(ParamValue::as_f64).unwrap_or(0.0);
    if get("pos") + get("neg") > 0.0 {
        Ok(())
    } else {
        Err("pos and neg cannot both be 0".into())
    }
}

const fn p(name: &'static str, kind: ParamKind, default: Default) -> ParamSpec {
    ParamSpec {
        name,
        kind,
        default,
    }
}

const KEYS: ParamSpec = p("keys", ParamKind::Keys, Default::ImageKey);
const ANY: ParamKind = ParamKind::Float {
    min: f64::MIN,
    max: f64::MAX,
};
/// MONAI's `prob` of a random transform (default 0.1).
const PROB: ParamSpec = p(
    "prob",
    ParamKind::Float { min: 0.0, max: 1.0 },
    Default::Num(0.1),
);
const POSITIVE: ParamKind = ParamKind::Float {
    min: 0.0,
    max: f64::MAX,
};
const FRACTION: ParamKind = ParamKind::Range { min: 0.0, max: 1.0 };
const POSITIVE_RANGE: ParamKind = ParamKind::Range {
    min: 0.0,
    max: f64::MAX,
};
const ANY_RANGE: ParamKind = ParamKind::Range {
    min: f64::MIN,
    max: f64::MAX,
};
const PERCENT: ParamKind = ParamKind::Float {
    min: 0.0,
    max: 100.0,
};

/// Every transform a recipe may use.
pub const TRANSFORMS: &[TransformSpec] = &[
    TransformSpec {
        name: "LoadImage",
        is_random: false,
        params: &[KEYS],
        summary: "read the volume (NIfTI-1/2, Analyze) channel-first, in its stored type",
        check: None,
        nests: false,
    },
    TransformSpec {
        name: "EnsureChannelFirst",
        is_random: false,
        params: &[KEYS],
        summary: "accepted for MONAI recipes: dino3d loads channel-first already",
        check: None,
        nests: false,
    },
    TransformSpec {
        name: "RandTimeFrame",
        is_random: true,
        params: &[KEYS],
        summary: "keep one uniformly chosen channel (time frame) of 4-D volumes",
        check: None,
        nests: false,
    },
    TransformSpec {
        name: "NanToMean",
        is_random: false,
        params: &[KEYS],
        summary: "replace NaN voxels by the mean of the others",
        check: None,
        nests: false,
    },
    TransformSpec {
        name: "ScaleIntensityRange",
        is_random: false,
        params: &[
            KEYS,
            p("a_min", ANY, Default::Required),
            p("a_max", ANY, Default::Required),
            p("b_min", ANY, Default::Absent),
            p("b_max", ANY, Default::Absent),
            p("clip", ParamKind::Bool, Default::Bool(false)),
        ],
        summary: "map [a_min, a_max] linearly onto [b_min, b_max]",
        check: None,
        nests: false,
    },
    TransformSpec {
        name: "ScaleIntensityRangePercentiles",
        is_random: false,
        params: &[
            KEYS,
            p("lower", PERCENT, Default::Required),
            p("upper", PERCENT, Default::Required),
            p("b_min", ANY, Default::Absent),
            p("b_max", ANY, Default::Absent),
            p("clip", ParamKind::Bool, Default::Bool(false)),
            p("relative", ParamKind::Bool, Default::Bool(false)),
        ],
        summary: "ScaleIntensityRange from exact linear percentiles of all voxels",
        check: Some(lower_not_above_upper),
        nests: false,
    },
    TransformSpec {
        name: "NormalizeIntensity",
        is_random: false,
        params: &[
            KEYS,
            p("subtrahend", ANY, Default::Absent),
            p("divisor", ANY, Default::Absent),
            p("nonzero", ParamKind::Bool, Default::Bool(false)),
            p("channel_wise", ParamKind::Bool, Default::Bool(false)),
        ],
        summary: "(x - mean) / std (population std)",
        check: None,
        nests: false,
    },
    TransformSpec {
        name: "Orientation",
        is_random: false,
        params: &[KEYS, p("axcodes", ParamKind::AxCodes, Default::Required)],
        summary: "reorder and flip axes to the given codes (no interpolation)",
        check: None,
        nests: false,
    },
    TransformSpec {
        name: "PermuteInPlaneFirst",
        is_random: false,
        params: &[
            KEYS,
            p(
                "from",
                ParamKind::Choice(&["spacing", "shape"]),
                Default::Str("spacing"),
            ),
        ],
        summary: "3DINO's axis permutation: in-plane axes first, slice axis last",
        check: None,
        nests: false,
    },
    TransformSpec {
        name: "CropForeground",
        is_random: false,
        params: &[
            KEYS,
            p("threshold", ANY, Default::Num(0.0)),
            p(
                "margin",
                ParamKind::Int {
                    min: 0,
                    max: 1 << 20,
                },
                Default::Num(0.0),
            ),
            p("allow_smaller", ParamKind::Bool, Default::Bool(false)),
        ],
        summary: "crop to the box of voxels > threshold (any channel) plus margin; without allow_smaller the box may leave the image (padded with 0)",
        check: None,
        nests: false,
    },
    TransformSpec {
        name: "RandFlip",
        is_random: true,
        params: &[
            KEYS,
            PROB,
            p("spatial_axis", ParamKind::Axes, Default::Absent),
        ],
        summary: "with probability prob, flip the given axes (all when absent)",
        check: None,
        nests: false,
    },
    TransformSpec {
        name: "RandRotate90",
        is_random: true,
        params: &[
            KEYS,
            PROB,
            p(
                "max_k",
                ParamKind::Int { min: 1, max: 64 },
                Default::Num(3.0),
            ),
            p("spatial_axes", ParamKind::Axes, Default::FirstPlane),
        ],
        summary: "with probability prob, rotate a plane by k quarter turns, k in 1..=max_k",
        check: Some(two_axes),
        nests: false,
    },
    TransformSpec {
        name: "SpatialPad",
        is_random: false,
        params: &[
            KEYS,
            p("spatial_size", ParamKind::Int3, Default::Required),
            p(
                "method",
                ParamKind::Choice(&["symmetric", "end"]),
                Default::Str("symmetric"),
            ),
            p("value", ANY, Default::Num(0.0)),
        ],
        summary: "pad with a constant to at least spatial_size (never crops)",
        check: None,
        nests: false,
    },
    TransformSpec {
        name: "CenterSpatialCrop",
        is_random: false,
        params: &[KEYS, p("roi_size", ParamKind::Int3, Default::Required)],
        summary: "crop the centre roi_size (MONAI's centre rule)",
        check: None,
        nests: false,
    },
    TransformSpec {
        name: "Spacing",
        is_random: false,
        params: &[
            KEYS,
            p("pixdim", ParamKind::Float3, Default::Required),
            p(
                "mode",
                ParamKind::Choice(&["bilinear", "nearest"]),
                Default::Str("bilinear"),
            ),
            p(
                "padding_mode",
                ParamKind::Choice(&["border", "zeros"]),
                Default::Str("border"),
            ),
            p("diagonal", ParamKind::Bool, Default::Bool(false)),
        ],
        summary: "resample to voxel size pixdim (<= 0 keeps an axis); label keys use nearest",
        check: None,
        nests: false,
    },
    TransformSpec {
        name: "Resize",
        is_random: false,
        params: &[
            KEYS,
            p("spatial_size", ParamKind::Int3, Default::Required),
            p(
                "mode",
                ParamKind::Choice(&["area", "trilinear", "nearest"]),
                Default::Str("area"),
            ),
        ],
        summary: "resize to spatial_size (-1 keeps an axis); label keys use nearest",
        check: None,
        nests: false,
    },
    TransformSpec {
        name: "RandSpatialCrop",
        is_random: true,
        params: &[
            KEYS,
            p("roi_size", ParamKind::Int3, Default::Required),
            p("max_roi_size", ParamKind::Int3, Default::Absent),
            p("random_center", ParamKind::Bool, Default::Bool(true)),
            p("random_size", ParamKind::Bool, Default::Bool(false)),
        ],
        summary: "crop a random box of roi_size (never pads)",
        check: None,
        nests: false,
    },
    TransformSpec {
        name: "RandCropByPosNegLabel",
        is_random: true,
        params: &[
            KEYS,
            p("label_key", ParamKind::Key, Default::Required),
            p("spatial_size", ParamKind::Int3, Default::Required),
            p("pos", POSITIVE, Default::Num(1.0)),
            p("neg", POSITIVE, Default::Num(1.0)),
            p(
                "num_samples",
                ParamKind::Int { min: 1, max: 1024 },
                Default::Num(1.0),
            ),
            p("image_key", ParamKind::Key, Default::Absent),
            p("image_threshold", ANY, Default::Num(0.0)),
        ],
        summary: "num_samples crops centred on foreground (pos) or background (neg) voxels",
        check: Some(pos_or_neg),
        nests: false,
    },
    TransformSpec {
        name: "RandomResizedCrop3d",
        is_random: true,
        params: &[
            KEYS,
            p(
                "size",
                ParamKind::Int { min: 1, max: 4096 },
                Default::Required,
            ),
            p("in_slice_scale", FRACTION, Default::Required),
            p("cross_slice_scale", FRACTION, Default::Required),
            p(
                "ratio",
                ParamKind::Range {
                    min: 1e-3,
                    max: 1e3,
                },
                Default::Pair(0.9, 1.0 / 0.9),
            ),
        ],
        summary: "3DINO's crop: random in-plane area, depth and aspect, resized to size^3",
        check: None,
        nests: false,
    },
    TransformSpec {
        name: "RandAdjustContrast",
        is_random: true,
        params: &[
            KEYS,
            PROB,
            p("gamma", POSITIVE_RANGE, Default::Pair(0.5, 4.5)),
            p("invert_image", ParamKind::Bool, Default::Bool(false)),
            p("retain_stats", ParamKind::Bool, Default::Bool(false)),
        ],
        summary: "gamma curve between the image's min and max, gamma ~ U(gamma)",
        check: None,
        nests: false,
    },
    TransformSpec {
        name: "RandGaussianNoise",
        is_random: true,
        params: &[
            KEYS,
            PROB,
            p("mean", ANY, Default::Num(0.0)),
            p("std", POSITIVE, Default::Num(0.1)),
            p("sample_std", ParamKind::Bool, Default::Bool(true)),
        ],
        summary: "add N(mean, s) noise, s ~ U(0, std) (or std)",
        check: None,
        nests: false,
    },
    TransformSpec {
        name: "RandScaleIntensity",
        is_random: true,
        params: &[KEYS, PROB, p("factors", ANY_RANGE, Default::Required)],
        summary: "x * (1 + f), f ~ U(factors)",
        check: None,
        nests: false,
    },
    TransformSpec {
        name: "RandShiftIntensity",
        is_random: true,
        params: &[KEYS, PROB, p("offsets", ANY_RANGE, Default::Required)],
        summary: "x + o, o ~ U(offsets)",
        check: None,
        nests: false,
    },
    TransformSpec {
        name: "RandHistogramShift",
        is_random: true,
        params: &[
            KEYS,
            PROB,
            p(
                "num_control_points",
                ParamKind::Int { min: 3, max: 1024 },
                Default::Num(10.0),
            ),
        ],
        summary: "piecewise-linear intensity remap through randomly moved control points",
        check: None,
        nests: false,
    },
    TransformSpec {
        name: "RandGaussianSmooth",
        is_random: true,
        params: &[
            KEYS,
            PROB,
            p("sigma_x", POSITIVE_RANGE, Default::Pair(0.25, 1.5)),
            p("sigma_y", POSITIVE_RANGE, Default::Pair(0.25, 1.5)),
            p("sigma_z", POSITIVE_RANGE, Default::Pair(0.25, 1.5)),
        ],
        summary: "separable Gaussian blur (erf kernel, zero padding), sigma per axis random",
        check: None,
        nests: false,
    },
    TransformSpec {
        name: "RandGaussianSharpen",
        is_random: true,
        params: &[
            KEYS,
            PROB,
            p("sigma1_x", POSITIVE_RANGE, Default::Pair(0.5, 1.0)),
            p("sigma1_y", POSITIVE_RANGE, Default::Pair(0.5, 1.0)),
            p("sigma1_z", POSITIVE_RANGE, Default::Pair(0.5, 1.0)),
            p("sigma2_x", POSITIVE_RANGE, Default::Pair(0.5, 1.0)),
            p("sigma2_y", POSITIVE_RANGE, Default::Pair(0.5, 1.0)),
            p("sigma2_z", POSITIVE_RANGE, Default::Pair(0.5, 1.0)),
            p("alpha", POSITIVE_RANGE, Default::Pair(10.0, 30.0)),
        ],
        summary: "b = G(s1) x; b + alpha (b - G(s2) b), sigmas and alpha random",
        check: None,
        nests: false,
    },
    TransformSpec {
        name: "RandGibbsNoise",
        is_random: true,
        params: &[KEYS, PROB, p("alpha", FRACTION, Default::Pair(0.0, 1.0))],
        summary: "ringing: zero k-space outside a sphere of radius (1 - alpha) max(shape) / sqrt 2",
        check: None,
        nests: false,
    },
    TransformSpec {
        name: "OneOf",
        is_random: true,
        params: &[p("weights", ParamKind::Weights, Default::Absent)],
        summary: "apply one of `transforms`, chosen with probability proportional to weights",
        check: None,
        nests: true,
    },
    TransformSpec {
        name: "RandomApply",
        is_random: true,
        params: &[p(
            "prob",
            ParamKind::Float { min: 0.0, max: 1.0 },
            Default::Num(0.5),
        )],
        summary: "with probability prob, apply all of `transforms` in order",
        check: None,
        nests: true,
    },
];

/// The spec named `name`, if any.
pub fn find(name: &str) -> Option<&'static TransformSpec> {
    TRANSFORMS.iter().find(|t| t.name == name)
}
