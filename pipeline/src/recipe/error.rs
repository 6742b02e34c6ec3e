//! Recipe errors: `FILE:LINE:COLUMN: message`, collected so one run reports
//! every problem, with the nearest valid name for misspellings.

use std::path::{Path, PathBuf};

use serde_saphyr::Location;

/// One problem in a recipe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipeError {
    /// The recipe file.
    pub file: PathBuf,
    /// 1-based line (0 when unknown).
    pub line: u32,
    /// 1-based column (0 when unknown).
    pub column: u32,
    /// What is wrong.
    pub message: String,
}

impl RecipeError {
    /// A problem at `loc` of `file`.
    pub fn at(file: &Path, loc: &Location, message: impl Into<String>) -> RecipeError {
        RecipeError {
            file: file.to_path_buf(),
            line: loc.line() as u32,
            column: loc.column() as u32,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for RecipeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.line == 0 {
            // Not tied to a position (unreadable file, a --set override).
            return write!(f, "{}: {}", self.file.display(), self.message);
        }
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.column,
            self.message
        )
    }
}

/// Every problem found in a recipe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipeErrors(pub Vec<RecipeError>);

impl std::fmt::Display for RecipeErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for RecipeErrors {}

/// The candidate closest to `name` (Levenshtein distance at most a third of the
/// name's length, at least 2), for "did you mean" hints.
pub fn nearest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let lower = name.to_ascii_lowercase();
    candidates
        .into_iter()
        .map(|c| (strsim::levenshtein(&lower, &c.to_ascii_lowercase()), c))
        .filter(|(d, _)| *d <= (name.len() / 3).max(2))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// " (did you mean `X`?)" or "".
pub fn hint<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    nearest(name, candidates).map_or_else(String::new, |n| format!(" (did you mean `{n}`?)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_names_catch_typos_but_not_strangers() {
        let names = [
            "ScaleIntensityRange",
            "ScaleIntensityRangePercentiles",
            "CropForeground",
        ];
        assert_eq!(
            nearest("ScaleIntensityRnge", names),
            Some("ScaleIntensityRange")
        );
        assert_eq!(nearest("cropforeground", names), Some("CropForeground"));
        assert_eq!(nearest("Banana", names), None);
    }
}
