//! Reading optional section values with their checks: what every section of
//! a recipe (the pipeline's and the tasks') needs to report a bad value at
//! its `FILE:LINE:COLUMN`.

use std::path::Path;

use serde_saphyr::Spanned;

use super::error::{RecipeError, hint};

/// Collects errors while reading a section's values.
pub struct Check<'a> {
    /// The recipe file.
    pub file: &'a Path,
    /// Where problems go.
    pub errors: &'a mut Vec<RecipeError>,
}

impl Check<'_> {
    /// A count of at least `min`, written to `out` when given.
    pub fn count(&mut self, v: &Option<Spanned<u64>>, min: u64, what: &str, out: &mut usize) {
        if let Some(v) = v {
            if v.value < min {
                self.errors.push(RecipeError::at(
                    self.file,
                    &v.referenced,
                    format!("{what} must be at least {min}"),
                ));
            }
            *out = v.value as usize;
        }
    }

    /// A number in the closed `range`, written to `out` when given.
    pub fn real(&mut self, v: &Option<Spanned<f64>>, range: (f64, f64), what: &str, out: &mut f64) {
        if let Some(v) = v {
            if !(range.0..=range.1).contains(&v.value) {
                self.errors.push(RecipeError::at(
                    self.file,
                    &v.referenced,
                    format!("{what} must be in [{}, {}]", range.0, range.1),
                ));
            }
            *out = v.value;
        }
    }

    /// One of `options` (with the nearest one suggested), written to `out`
    /// when given.
    pub fn choice(
        &mut self,
        v: &Option<Spanned<String>>,
        options: &[&str],
        what: &str,
        out: &mut String,
    ) {
        if let Some(v) = v {
            if !options.contains(&v.value.as_str()) {
                self.errors.push(RecipeError::at(
                    self.file,
                    &v.referenced,
                    format!(
                        "{what} `{}` is not one of {options:?}{}",
                        v.value,
                        hint(&v.value, options.iter().copied())
                    ),
                ));
            }
            out.clone_from(&v.value);
        }
    }
}
