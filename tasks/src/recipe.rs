//! A whole recipe: the pipeline's common sections and every task's own, read
//! in one pass (so serde reports the first problem of the file, and an
//! unknown top-level key names every valid one), checked together (every
//! problem sorted by position), and the [`Task`] its `task:` names.
//!
//! The pipeline compiles the common sections (`task`, `seed`, `data`,
//! `cache`, `pipeline`, `views`, `batch`); each task's `config` module
//! compiles its own. Sections of another task are checked too, and ignored.

use std::path::Path;

use dino3d_pipeline::recipe::document::{BatchDoc, CacheDoc, DataDoc, ViewDoc};
use dino3d_pipeline::recipe::value::SpannedMap;
use dino3d_pipeline::recipe::{
    Plan, RecipeError, RecipeErrors, Spanned, TaskContext, compile_doc_with, hint, parse_str,
    read_and_compile,
};
use serde::Deserialize;

use crate::embed::config::{self as embed, EmbedDoc};
use crate::linear_probe::config::{self as linear_probe, ProbeDoc};
use crate::pretrain::config::{
    self as pretrain, ModelDoc, OptimDoc, PretrainSections, TeacherDoc, TrainDoc,
};
use crate::segment::config::{self as segment, SegmentDoc};
use crate::task::Task;

/// A recipe as written. The first seven fields are the pipeline's
/// [`dino3d_pipeline::recipe::RecipeDoc`], in its order (serde cannot
/// flatten a document that denies unknown keys).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RecipeDoc {
    task: Spanned<String>,
    #[serde(default)]
    seed: Option<Spanned<u64>>,
    #[serde(default)]
    data: Option<DataDoc>,
    #[serde(default)]
    cache: Option<CacheDoc>,
    pipeline: Vec<Spanned<SpannedMap>>,
    #[serde(default)]
    views: Vec<Spanned<ViewDoc>>,
    #[serde(default)]
    batch: Option<BatchDoc>,
    /// The networks and losses (`task: pretrain`).
    #[serde(default)]
    model: Option<ModelDoc>,
    /// Optimiser and schedules.
    #[serde(default)]
    optim: Option<OptimDoc>,
    /// Teacher EMA and temperature.
    #[serde(default)]
    teacher: Option<TeacherDoc>,
    /// Outputs, checkpoints and run length.
    #[serde(default)]
    train: Option<TrainDoc>,
    /// `task: segment`.
    #[serde(default)]
    segment: Option<SegmentDoc>,
    /// `task: linear_probe`.
    #[serde(default)]
    probe: Option<ProbeDoc>,
    /// `task: embed`.
    #[serde(default)]
    embed: Option<EmbedDoc>,
}

/// The task sections of a recipe.
struct Sections {
    model: Option<ModelDoc>,
    optim: Option<OptimDoc>,
    teacher: Option<TeacherDoc>,
    train: Option<TrainDoc>,
    segment: Option<SegmentDoc>,
    probe: Option<ProbeDoc>,
    embed: Option<EmbedDoc>,
}

impl RecipeDoc {
    /// The pipeline's part and the tasks' part.
    fn split(self) -> (dino3d_pipeline::recipe::RecipeDoc, Sections) {
        let common = dino3d_pipeline::recipe::RecipeDoc {
            task: self.task,
            seed: self.seed,
            data: self.data,
            cache: self.cache,
            pipeline: self.pipeline,
            views: self.views,
            batch: self.batch,
        };
        let sections = Sections {
            model: self.model,
            optim: self.optim,
            teacher: self.teacher,
            train: self.train,
            segment: self.segment,
            probe: self.probe,
            embed: self.embed,
        };
        (common, sections)
    }
}

impl Sections {
    /// Checks every section present and builds the named task (`None` after
    /// an error).
    fn compile(&self, ctx: &TaskContext<'_>, errors: &mut Vec<RecipeError>) -> Option<Task> {
        let training = PretrainSections {
            model: self.model.as_ref(),
            optim: self.optim.as_ref(),
            teacher: self.teacher.as_ref(),
            train: self.train.as_ref(),
        };
        let pretrain = pretrain::compile(&training, ctx, errors);
        let segment = segment::compile(self.segment.as_ref(), ctx, errors);
        let probe = linear_probe::compile(self.probe.as_ref(), ctx, errors);
        let embed = embed::compile(self.embed.as_ref(), ctx, errors);
        if let Some(p) = &pretrain {
            pretrain::check_patch_size(&training, p, ctx, errors);
            if ctx.task.value == "pretrain" {
                pretrain::check_global_crops(ctx, errors);
            }
        }
        let at = |errors: &mut Vec<RecipeError>, message: String| {
            errors.push(RecipeError::at(ctx.file, &ctx.task.referenced, message));
        };
        match ctx.task.value.as_str() {
            "prepare" => Some(Task::Prepare),
            "pretrain" => {
                if pretrain.is_none() {
                    at(
                        errors,
                        "task `pretrain` needs the training sections (model, optim, teacher, train); see recipes/demo.yaml".into(),
                    );
                }
                pretrain.map(Task::Pretrain)
            }
            // A missing section was reported by its compiler.
            "segment" => segment.map(Task::Segment),
            "linear_probe" => probe.map(Task::LinearProbe),
            "embed" => embed.map(Task::Embed),
            other => {
                at(
                    errors,
                    format!(
                        "unknown task `{other}` (available: {}){}",
                        Task::NAMES.join(", "),
                        hint(other, Task::NAMES)
                    ),
                );
                None
            }
        }
    }
}

/// Parses and validates a recipe's text: the compiled common sections and
/// the task.
///
/// # Errors
/// Every problem found, each with file, line and column, sorted by position.
pub fn compile_str(text: &str, file: &Path) -> Result<(Plan, Task), RecipeErrors> {
    let doc: RecipeDoc = parse_str(text, file)?;
    let (common, sections) = doc.split();
    let (plan, task) =
        compile_doc_with(&common, file, |ctx, errors| sections.compile(ctx, errors))?;
    // Without an error, the sections made a task.
    let task = task.expect("a task when the recipe has no error");
    Ok((plan, task))
}

/// Reads, parses and validates a recipe file.
///
/// # Errors
/// Every problem found.
pub fn compile_file(file: &Path) -> Result<(Plan, Task), RecipeErrors> {
    read_and_compile(file, &[], compile_str)
}

/// Reads a recipe, applies `--set` overrides and validates it; error
/// positions refer to the file as written (or name the override that caused
/// them). The one entry point of `dino-run`.
///
/// # Errors
/// Every problem found.
pub fn compile_file_with(file: &Path, sets: &[String]) -> Result<(Plan, Task), RecipeErrors> {
    read_and_compile(file, sets, compile_str)
}

/// What `recipe check` prints: the task and seed, the pipeline's plan, then
/// the task's settings.
pub fn describe(plan: &Plan, task: &Task) -> String {
    format!("task {}, {plan}{task}", task.name())
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVERY_COMMON_SECTION: &str = "\
task: prepare
seed: 5
data:
  manifest: m.json
  keys: [image, label]
  min_axis: 4
  label_keys: [label]
cache:
  dir: c/
  prefix: auto
  codec: zstd
  chunk: 16
pipeline:
  - name: LoadImage
    keys: [image, label]
  - name: RandFlip
views:
  - name: g
    role: global
    count: 2
    pipeline:
      - name: RandFlip
batch:
  size: 2
  threads: 1
  prefetch: 3
  mask_sample_probability: 0.25
  mask_ratio: [0.1, 0.5]
  patch_size: 8
";

    #[test]
    fn the_common_sections_compile_as_the_pipeline_compiles_them() {
        // The document here repeats the pipeline's fields: both must read a
        // recipe with every one of them the same way.
        let file = Path::new("r.yaml");
        let (plan, task) = compile_str(EVERY_COMMON_SECTION, file).unwrap();
        assert_eq!(
            plan,
            dino3d_pipeline::recipe::compile_str(EVERY_COMMON_SECTION, file).unwrap()
        );
        assert_eq!(task, Task::Prepare);
        assert!(describe(&plan, &task).starts_with("task prepare, seed 5\nmanifest m.json\n"));
    }

    #[test]
    fn every_task_name_dispatches_and_unknown_ones_are_refused() {
        let file = Path::new("r.yaml");
        let head = "data:\n  manifest: m.json\npipeline:\n  - name: LoadImage\n";
        let sections = [
            ("prepare", ""),
            (
                "pretrain",
                "views:\n  - name: g\n    role: global\n    pipeline:\n      - name: RandSpatialCrop\n        roi_size: [16, 16, 16]\nmodel:\n  arch: tiny\n",
            ),
            (
                "segment",
                "segment:\n  builtin: mni152_tissue\n  pretrained_weights: random\n",
            ),
            ("linear_probe", "probe:\n  pretrained_weights: w.pth\n"),
            (
                "embed",
                "embed:\n  pretrained_weights: w.pth\n  out: e.parquet\n",
            ),
        ];
        for (name, body) in sections {
            let text = format!("task: {name}\n{head}{body}");
            let (_, task) = compile_str(&text, file).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(task.name(), name);
        }
        assert_eq!(sections.map(|s| s.0), Task::NAMES);
        let e = compile_str(&format!("task: pretrian\n{head}"), file)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "r.yaml:1:7: unknown task `pretrian` (available: prepare, pretrain, segment, linear_probe, embed) (did you mean `pretrain`?)"
        );
        let e = compile_str(&format!("task: pretrain\n{head}"), file)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("r.yaml:1:7: task `pretrain` needs the training sections"),
            "{e}"
        );
    }
}
