//! What a recipe may name: each implemented transform with its parameters
//! (MONAI's names), their types, ranges and defaults, and whether it is random.
//! Only transforms that exist in `crate::transforms` are listed.

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
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TransformSpec {
    /// MONAI's (or 3DINO's) name.
    pub name: &'static str,
    /// Whether each application draws random numbers.
    pub is_random: bool,
    /// Its parameters.
    pub params: &'static [ParamSpec],
    /// One line on what it does.
    pub summary: &'static str,
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
    },
    TransformSpec {
        name: "EnsureChannelFirst",
        is_random: false,
        params: &[KEYS],
        summary: "accepted for MONAI recipes: dino3d loads channel-first already",
    },
    TransformSpec {
        name: "RandTimeFrame",
        is_random: true,
        params: &[KEYS],
        summary: "keep one uniformly chosen channel (time frame) of 4-D volumes",
    },
    TransformSpec {
        name: "NanToMean",
        is_random: false,
        params: &[KEYS],
        summary: "replace NaN voxels by the mean of the others",
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
    },
    TransformSpec {
        name: "Orientation",
        is_random: false,
        params: &[KEYS, p("axcodes", ParamKind::AxCodes, Default::Required)],
        summary: "reorder and flip axes to the given codes (no interpolation)",
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
            p(
                "allow_smaller",
                ParamKind::Choice(&["true"]),
                Default::Str("true"),
            ),
        ],
        summary: "crop to the box of voxels > threshold (any channel), plus margin",
    },
    TransformSpec {
        name: "RandFlip",
        is_random: true,
        params: &[
            KEYS,
            p(
                "prob",
                ParamKind::Float { min: 0.0, max: 1.0 },
                Default::Num(0.1),
            ),
            p("spatial_axis", ParamKind::Axes, Default::Absent),
        ],
        summary: "with probability prob, flip the given axes (all when absent)",
    },
    TransformSpec {
        name: "RandRotate90",
        is_random: true,
        params: &[
            KEYS,
            p(
                "prob",
                ParamKind::Float { min: 0.0, max: 1.0 },
                Default::Num(0.1),
            ),
            p(
                "max_k",
                ParamKind::Int { min: 1, max: 64 },
                Default::Num(3.0),
            ),
            p("spatial_axes", ParamKind::Axes, Default::FirstPlane),
        ],
        summary: "with probability prob, rotate a plane by k quarter turns, k in 1..=max_k",
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
    },
    TransformSpec {
        name: "CenterSpatialCrop",
        is_random: false,
        params: &[KEYS, p("roi_size", ParamKind::Int3, Default::Required)],
        summary: "crop the centre roi_size (MONAI's centre rule)",
    },
];

/// The spec named `name`, if any.
pub fn find(name: &str) -> Option<&'static TransformSpec> {
    TRANSFORMS.iter().find(|t| t.name == name)
}
