//! Recipe values with their source positions: parameters are read as plain
//! YAML scalars and lists, each remembering its line and column, so every
//! validation error can point at `FILE:LINE:COLUMN`.

use serde::Deserialize;
use serde_saphyr::Spanned;

/// A parameter value as written in YAML.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum ParamValue {
    /// `true` / `false`.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// A string.
    Str(String),
    /// A list.
    List(Vec<ParamValue>),
}

impl ParamValue {
    /// The value as a float (integers widen).
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            ParamValue::Int(i) => Some(*i as f64),
            ParamValue::Float(f) => Some(*f),
            _ => None,
        }
    }

    /// A short name of the value's type, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            ParamValue::Bool(_) => "a boolean",
            ParamValue::Int(_) => "an integer",
            ParamValue::Float(_) => "a number",
            ParamValue::Str(_) => "a string",
            ParamValue::List(_) => "a list",
        }
    }
}

/// A transform step as written: its parameters in source order with the
/// position of every key and value (serde-saphyr's `Spanned` keys cannot go in
/// a `BTreeMap`), and the nested steps of `transforms:` (`OneOf`, `RandomApply`).
#[derive(Debug, Clone, Default)]
pub struct SpannedMap {
    /// `name` and the parameters.
    pub fields: Vec<(Spanned<String>, Spanned<ParamValue>)>,
    /// The `transforms:` key and its steps, if present.
    pub children: Option<(Spanned<String>, Vec<Spanned<SpannedMap>>)>,
}

/// The key under which a step nests other steps.
pub const CHILDREN_KEY: &str = "transforms";

impl<'de> Deserialize<'de> for SpannedMap {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = SpannedMap;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a mapping of parameter names to values")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> Result<SpannedMap, A::Error> {
                let mut map = SpannedMap::default();
                while let Some(key) = m.next_key::<Spanned<String>>()? {
                    if key.value == CHILDREN_KEY {
                        let steps: Vec<Spanned<SpannedMap>> = m.next_value()?;
                        map.children = Some((key, steps));
                    } else {
                        map.fields.push((key, m.next_value()?));
                    }
                }
                Ok(map)
            }
        }
        d.deserialize_map(Visitor)
    }
}
