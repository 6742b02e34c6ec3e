//! How a transform describes itself to recipes: its parameters (MONAI's
//! names, types, ranges, defaults), a one-line summary, a check across
//! parameters, and how it builds the op that applies them. Each transform's
//! file declares its [`TransformSpec`]; the registry ([`super::registry`])
//! is the list of them, and the recipe compiler validates every step against
//! it with `FILE:LINE:COLUMN` positions before building its op.

use std::collections::BTreeMap;

use crate::exec::op::{CompiledStep, Op};
use crate::recipe::Step;
use crate::recipe::value::ParamValue;

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

impl ParamKind {
    /// What it accepts, in words (for the transform list).
    pub fn describe(&self) -> String {
        let num = |x: f64| {
            if x == f64::MAX {
                "inf".to_string()
            } else if x == f64::MIN {
                "-inf".to_string()
            } else {
                format!("{x}")
            }
        };
        match self {
            ParamKind::Float { min, max } if *min == f64::MIN && *max == f64::MAX => {
                "number".into()
            }
            ParamKind::Float { min, max } => format!("number in [{}, {}]", num(*min), num(*max)),
            ParamKind::Int { min, max } => format!("integer in [{min}, {max}]"),
            ParamKind::Bool => "bool".into(),
            ParamKind::Choice(options) => options.join(" | "),
            ParamKind::Int3 => "3 integers".into(),
            ParamKind::Keys => "data keys".into(),
            ParamKind::AxCodes => "axis codes (e.g. RAS)".into(),
            ParamKind::Axes => "spatial axes (0, 1, 2)".into(),
            ParamKind::Range { min, max } if *min == f64::MIN && *max == f64::MAX => {
                "range [lo, hi]".into()
            }
            ParamKind::Range { min, max } => {
                format!("range [lo, hi] within [{}, {}]", num(*min), num(*max))
            }
            ParamKind::Float3 => "3 numbers".into(),
            ParamKind::Weights => "non-negative weights".into(),
            ParamKind::Key => "data key".into(),
        }
    }
}

/// A parameter's default.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ParamDefault {
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

impl ParamDefault {
    /// The value a left-out parameter takes (None: required or absent).
    pub fn value(&self) -> Option<ParamValue> {
        Some(match *self {
            ParamDefault::Required | ParamDefault::Absent => return None,
            ParamDefault::Num(x) => ParamValue::Float(x),
            ParamDefault::Bool(b) => ParamValue::Bool(b),
            ParamDefault::Str(s) => ParamValue::Str(s.to_string()),
            ParamDefault::ImageKey => ParamValue::List(vec![ParamValue::Str("image".into())]),
            ParamDefault::FirstPlane => {
                ParamValue::List(vec![ParamValue::Float(0.0), ParamValue::Float(1.0)])
            }
            ParamDefault::Pair(lo, hi) => {
                ParamValue::List(vec![ParamValue::Float(lo), ParamValue::Float(hi)])
            }
        })
    }

    /// The default in words (for the transform list).
    pub fn describe(&self) -> String {
        match *self {
            ParamDefault::Required => "required".into(),
            ParamDefault::Absent => "none".into(),
            ParamDefault::Num(x) => format!("{x}"),
            ParamDefault::Bool(b) => b.to_string(),
            ParamDefault::Str(s) => s.to_string(),
            ParamDefault::ImageKey => "[image]".into(),
            ParamDefault::FirstPlane => "[0, 1]".into(),
            ParamDefault::Pair(lo, hi) => format!("[{lo}, {hi}]"),
        }
    }
}

/// One parameter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ParamSpec {
    /// MONAI's name.
    pub name: &'static str,
    /// What it accepts.
    pub kind: ParamKind,
    /// Its default.
    pub default: ParamDefault,
}

/// A parameter spec (for the transforms' `const` tables).
pub const fn param(name: &'static str, kind: ParamKind, default: ParamDefault) -> ParamSpec {
    ParamSpec {
        name,
        kind,
        default,
    }
}

/// Resolved parameters of one step, by name (defaults filled; absent
/// optional parameters left out).
pub type Params = BTreeMap<&'static str, ParamValue>;

/// Why a step's parameters do not make an op (reported at the step's
/// position, after the transform's name).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ParamError {
    /// A parameter the builder needs has no value.
    #[error("parameter `{name}` has no value")]
    Missing {
        /// The parameter.
        name: String,
    },
    /// A value of another type than the builder reads.
    #[error("parameter `{name}` is {found}, not {want}")]
    WrongType {
        /// The parameter.
        name: String,
        /// What it holds.
        found: &'static str,
        /// What was wanted.
        want: &'static str,
    },
    /// A list of the wrong length.
    #[error("parameter `{name}` needs {want} values, not {got}")]
    Length {
        /// The parameter.
        name: String,
        /// Values wanted.
        want: usize,
        /// Values given.
        got: usize,
    },
    /// A number that is not a count.
    #[error("parameter `{name}` is {value}, not a count")]
    NotACount {
        /// The parameter.
        name: String,
        /// Its value.
        value: f64,
    },
    /// A rule across parameters does not hold (e.g. `lower <= upper`).
    #[error("{0}")]
    Rule(String),
}

/// A check across a step's resolved parameters (e.g. `lower <= upper`); its
/// message is prefixed with the transform's name.
pub type ParamsCheck = fn(&Params) -> Result<(), ParamError>;

/// Builds a step's op from its resolved, validated parameters.
pub type BuildOp = fn(&Args<'_>) -> Result<Box<dyn Op>, ParamError>;

/// The spatial size a step gives its image, from the size it receives
/// (`None`: not known before the data is seen). `recipe check` folds a
/// view's steps through these to know its crop size.
pub type OutputSize = fn(&Params, Option<[u64; 3]>) -> Option<[u64; 3]>;

/// Intensity, noise and flip steps: the size passes through.
pub fn same_size(_: &Params, input: Option<[u64; 3]>) -> Option<[u64; 3]> {
    input
}

/// Steps whose output size depends on the data (loading, resampling,
/// reorienting, cropping to the foreground).
pub fn size_from_data(_: &Params, _: Option<[u64; 3]>) -> Option<[u64; 3]> {
    None
}

/// The three sides a size parameter (one integer, or three) asks for; a
/// side <= 0 keeps the input's side (MONAI's `-1`), unknown when the input
/// is.
pub fn requested_size(params: &Params, name: &str, input: Option<[u64; 3]>) -> Option<[u64; 3]> {
    let sides: Vec<f64> = match params.get(name)? {
        ParamValue::List(items) => items
            .iter()
            .map(ParamValue::as_f64)
            .collect::<Option<_>>()?,
        single => vec![single.as_f64()?; 3],
    };
    let mut out = [0u64; 3];
    for (axis, side) in sides.iter().enumerate().take(3) {
        out[axis] = if *side > 0.0 {
            *side as u64
        } else {
            input?[axis]
        };
    }
    (sides.len() == 3).then_some(out)
}

/// One transform as recipes see it.
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
    /// A check across parameters, run on the resolved parameters.
    pub check: Option<ParamsCheck>,
    /// Whether the step holds other steps under `transforms:`.
    pub nests: bool,
    /// The spatial size its output has.
    pub output_size: OutputSize,
    /// Builds the op.
    pub build: BuildOp,
}

/// Transforms are identified by name (names are unique in the registry).
impl PartialEq for TransformSpec {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

/// The `keys` parameter every per-key transform takes (default `[image]`).
pub const KEYS: ParamSpec = param("keys", ParamKind::Keys, ParamDefault::ImageKey);
/// Any finite number.
pub const ANY: ParamKind = ParamKind::Float {
    min: f64::MIN,
    max: f64::MAX,
};
/// MONAI's `prob` of a random transform (default 0.1).
pub const PROB: ParamSpec = param(
    "prob",
    ParamKind::Float { min: 0.0, max: 1.0 },
    ParamDefault::Num(0.1),
);
/// A non-negative number.
pub const POSITIVE: ParamKind = ParamKind::Float {
    min: 0.0,
    max: f64::MAX,
};
/// A range within `[0, 1]`.
pub const FRACTION: ParamKind = ParamKind::Range { min: 0.0, max: 1.0 };
/// A non-negative range.
pub const POSITIVE_RANGE: ParamKind = ParamKind::Range {
    min: 0.0,
    max: f64::MAX,
};
/// Any range.
pub const ANY_RANGE: ParamKind = ParamKind::Range {
    min: f64::MIN,
    max: f64::MAX,
};
/// A percentile.
pub const PERCENT: ParamKind = ParamKind::Float {
    min: 0.0,
    max: 100.0,
};

/// A step's resolved parameters and nested steps, read with types. Every
/// reader returns an error instead of panicking, so a spec that disagrees
/// with its builder is a recipe error (and a failing registry test), never
/// a crash.
#[derive(Debug, Clone, Copy)]
pub struct Args<'a> {
    params: &'a Params,
    children: &'a [Step],
}

impl<'a> Args<'a> {
    /// The arguments of a validated step.
    pub fn new(params: &'a Params, children: &'a [Step]) -> Args<'a> {
        Args { params, children }
    }

    fn get(&self, name: &str) -> Result<&'a ParamValue, ParamError> {
        self.params.get(name).ok_or_else(|| ParamError::Missing {
            name: name.to_string(),
        })
    }

    fn wrong(name: &str, v: &ParamValue, want: &'static str) -> ParamError {
        ParamError::WrongType {
            name: name.to_string(),
            found: v.kind(),
            want,
        }
    }

    /// A number.
    pub fn num(&self, name: &str) -> Result<f64, ParamError> {
        let v = self.get(name)?;
        v.as_f64().ok_or_else(|| Self::wrong(name, v, "a number"))
    }

    /// A number, or None when left out.
    pub fn opt_num(&self, name: &str) -> Result<Option<f64>, ParamError> {
        self.params.get(name).map(|_| self.num(name)).transpose()
    }

    /// A non-negative integer (validated as an integer in range).
    pub fn count(&self, name: &str) -> Result<usize, ParamError> {
        let x = self.num(name)?;
        if x >= 0.0 && x.fract() == 0.0 {
            Ok(x as usize)
        } else {
            Err(ParamError::NotACount {
                name: name.to_string(),
                value: x,
            })
        }
    }

    /// A boolean.
    pub fn flag(&self, name: &str) -> Result<bool, ParamError> {
        match self.get(name)? {
            ParamValue::Bool(b) => Ok(*b),
            other => Err(Self::wrong(name, other, "a boolean")),
        }
    }

    /// A string.
    pub fn text(&self, name: &str) -> Result<&'a str, ParamError> {
        match self.get(name)? {
            ParamValue::Str(s) => Ok(s),
            other => Err(Self::wrong(name, other, "a string")),
        }
    }

    /// A string, or None when left out.
    pub fn opt_text(&self, name: &str) -> Result<Option<&'a str>, ParamError> {
        self.params.get(name).map(|_| self.text(name)).transpose()
    }

    /// A list of numbers, or None when left out.
    pub fn numbers(&self, name: &str) -> Result<Option<Vec<f64>>, ParamError> {
        let Some(v) = self.params.get(name) else {
            return Ok(None);
        };
        match v {
            ParamValue::List(items) => items
                .iter()
                .map(|i| i.as_f64().ok_or_else(|| Self::wrong(name, i, "a number")))
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            other => Err(Self::wrong(name, other, "a list")),
        }
    }

    /// A list of exactly `N` numbers, or None when left out.
    pub fn array<const N: usize>(&self, name: &str) -> Result<Option<[f64; N]>, ParamError> {
        self.numbers(name)?
            .map(|v| {
                <[f64; N]>::try_from(v.as_slice()).map_err(|_| ParamError::Length {
                    name: name.to_string(),
                    want: N,
                    got: v.len(),
                })
            })
            .transpose()
    }

    /// A range `[lo, hi]`.
    pub fn pair(&self, name: &str) -> Result<(f64, f64), ParamError> {
        let [lo, hi] = self.array::<2>(name)?.ok_or_else(|| ParamError::Missing {
            name: name.to_string(),
        })?;
        Ok((lo, hi))
    }

    /// Three numbers.
    pub fn float3(&self, name: &str) -> Result<[f64; 3], ParamError> {
        self.array::<3>(name)?.ok_or_else(|| ParamError::Missing {
            name: name.to_string(),
        })
    }

    /// Three integers, or None when left out.
    pub fn opt_int3(&self, name: &str) -> Result<Option<[i64; 3]>, ParamError> {
        Ok(self.array::<3>(name)?.map(|v| v.map(|x| x as i64)))
    }

    /// Three integers.
    pub fn int3(&self, name: &str) -> Result<[i64; 3], ParamError> {
        self.opt_int3(name)?.ok_or_else(|| ParamError::Missing {
            name: name.to_string(),
        })
    }

    /// The nested steps, compiled.
    pub fn children(&self) -> Vec<CompiledStep> {
        self.children.iter().map(CompiledStep::new).collect()
    }

    /// How many steps are nested.
    pub fn n_children(&self) -> usize {
        self.children.len()
    }
}

/// The data keys a step transforms (its `keys` parameter, default `[image]`).
pub fn step_keys(params: &Params) -> Vec<String> {
    match params.get("keys") {
        Some(ParamValue::List(items)) => items
            .iter()
            .filter_map(|k| match k {
                ParamValue::Str(s) => Some(s.clone()),
                _ => None,
            })
            .collect(),
        _ => vec!["image".into()],
    }
}
