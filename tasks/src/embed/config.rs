//! The `embed:` section of a `task: embed` recipe: every manifest entry
//! through the recipe's deterministic pipeline and a frozen backbone, into a
//! Parquet table.
//!
//! ```yaml
//! embed:
//!   pretrained_weights: ../out/demo   # a checkpoint file, or a pretraining output folder
//!   arch: tiny
//!   out: ../out/embeddings.parquet
//!   image_size: 32                    # resize to S³ after the pipeline (0: keep)
//!   patch_grid: false                 # also store every patch token
//!   row_group: 64                     # volumes per Parquet row group
//! ```

use dino3d_model::ViT3dConfig;
use dino3d_pipeline::recipe::{RecipeError, Spanned, TaskContext, hint};
use serde::Deserialize;

const ARCHS: [&str; 4] = ViT3dConfig::PRESETS;

/// `embed:` as written (`task: embed`): every manifest entry through the
/// recipe's deterministic pipeline and a frozen backbone, into a Parquet table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbedDoc {
    /// A checkpoint file, or a pretraining output folder (its newest teacher).
    pub pretrained_weights: Spanned<String>,
    /// Backbone preset.
    #[serde(default)]
    pub arch: Option<Spanned<String>>,
    /// The Parquet file written (relative to the recipe).
    pub out: Spanned<String>,
    /// Resize the prepared image to S³ (trilinear); 0 keeps it.
    #[serde(default)]
    pub image_size: Option<Spanned<u64>>,
    /// Also store every patch token.
    #[serde(default)]
    pub patch_grid: Option<Spanned<bool>>,
    /// Volumes per Parquet row group.
    #[serde(default)]
    pub row_group: Option<Spanned<u64>>,
}

/// The validated `embed:` section.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbedConfig {
    /// Weights file or folder, as written.
    pub pretrained_weights: String,
    /// Backbone preset.
    pub arch: String,
    /// Output Parquet file, as written.
    pub out: String,
    /// Resize cube (0: none).
    pub image_size: usize,
    /// Whether patch tokens are stored.
    pub patch_grid: bool,
    /// Volumes per row group.
    pub row_group: usize,
}

/// Reads `embed:`; `None` when absent (an error for `task: embed`).
pub fn compile(
    doc: Option<&EmbedDoc>,
    ctx: &TaskContext<'_>,
    errors: &mut Vec<RecipeError>,
) -> Option<EmbedConfig> {
    let file = ctx.file;
    let Some(d) = doc else {
        if ctx.task.value == "embed" {
            errors.push(RecipeError::at(
                file,
                &ctx.task.referenced,
                "task `embed` needs an `embed:` section (pretrained_weights, out)",
            ));
        }
        return None;
    };
    let mut p = EmbedConfig {
        pretrained_weights: d.pretrained_weights.value.clone(),
        arch: ViT3dConfig::THREEDINO_PRESET.into(),
        out: d.out.value.clone(),
        image_size: 0,
        patch_grid: d.patch_grid.as_ref().is_some_and(|v| v.value),
        row_group: 64,
    };
    if let Some(a) = &d.arch {
        if !ARCHS.contains(&a.value.as_str()) {
            let hint = hint(&a.value, ARCHS);
            errors.push(RecipeError::at(
                file,
                &a.referenced,
                format!("embed.arch `{}` is not one of {ARCHS:?}{hint}", a.value),
            ));
        }
        p.arch.clone_from(&a.value);
    }
    if !d.out.value.to_ascii_lowercase().ends_with(".parquet") {
        errors.push(RecipeError::at(
            file,
            &d.out.referenced,
            format!("embed.out `{}` must name a .parquet file", d.out.value),
        ));
    }
    if let Some(s) = &d.image_size {
        p.image_size = s.value as usize;
    }
    if let Some(r) = &d.row_group {
        if r.value < 1 {
            errors.push(RecipeError::at(
                file,
                &r.referenced,
                "embed.row_group must be at least 1",
            ));
        }
        p.row_group = r.value as usize;
    }
    Some(p)
}

impl std::fmt::Display for EmbedConfig {
    /// The line `recipe check` prints.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let e = self;
        writeln!(
            f,
            "embed: ViT-{} from {}, image {}, patch tokens {}, row groups of {} -> {}",
            e.arch, e.pretrained_weights, e.image_size, e.patch_grid, e.row_group, e.out
        )
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::{Task, compile_str};

    const HEAD: &str = "\
task: linear_probe
data:
  manifest: datalist.json
pipeline:
  - name: LoadImage
";

    fn errors(text: &str) -> String {
        compile_str(text, Path::new("p.yaml"))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn embed_sections_are_read_and_validated() {
        let head = HEAD.replace("linear_probe", "embed");
        let Task::Embed(p) = compile_str(
            &format!("{head}embed:\n  pretrained_weights: w.pth\n  out: e.parquet\n  arch: tiny\n  patch_grid: true\n"),
            Path::new("p.yaml"),
        )
        .unwrap()
        .1
        else {
            panic!("not an embed task")
        };
        assert_eq!((p.arch.as_str(), p.out.as_str()), ("tiny", "e.parquet"));
        assert!(p.patch_grid);
        assert_eq!((p.row_group, p.image_size), (64, 0));
        let e = errors(&format!(
            "{head}embed:\n  pretrained_weights: w.pth\n  out: e.json\n  row_group: 0\n"
        ));
        assert!(
            e.contains("p.yaml:8:8: embed.out `e.json` must name a .parquet file"),
            "{e}"
        );
        assert!(
            e.contains("p.yaml:9:14: embed.row_group must be at least 1"),
            "{e}"
        );
        let e = errors(&head);
        assert!(
            e.contains("p.yaml:1:7: task `embed` needs an `embed:` section"),
            "{e}"
        );
    }
}
