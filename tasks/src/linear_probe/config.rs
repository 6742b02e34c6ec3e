//! The `probe:` section of a `task: linear_probe` recipe: 3DINO's frozen
//! linear probe (`linear3d.py`, spec §4.3), validated here with source
//! positions.
//!
//! ```yaml
//! probe:
//!   pretrained_weights: ../out/demo   # a checkpoint file, or a pretraining output folder
//!   arch: tiny
//!   output_dir: ../out/linear_probe
//!   image_size: 32                    # resize to S³ after the pipeline (0: keep)
//!   learning_rates: [1.0e-5, 2.0e-5, 5.0e-5, 1.0e-4, 2.0e-4, 5.0e-4, 1.0e-3, 2.0e-3, 5.0e-3, 1.0e-2, 2.0e-2, 5.0e-2, 0.1]
//!   n_last_blocks: [1, 4]
//!   avgpool: [false, true]
//!   epochs: 10
//!   epoch_length: 1250
//!   batch_size: 128
//!   eval_period_iterations: 50
//! ```
//!
//! Names follow `linear3d.py`'s arguments (`--learning-rates`,
//! `--epoch-length`, `--eval-period-iterations`, `--image-size`,
//! `--dataset-percent`, `--dataset-seed`); every default is its default.

use dino3d_model::ViT3dConfig;
use dino3d_pipeline::recipe::{Location, RecipeError, Spanned, TaskContext, hint};
use serde::Deserialize;

/// `probe:` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeDoc {
    /// A teacher checkpoint (`.safetensors` / `.pth`) or a pretraining output
    /// folder (its newest teacher).
    pub pretrained_weights: Spanned<String>,
    /// Backbone preset: `tiny`, `small`, `base` or `large`.
    #[serde(default)]
    pub arch: Option<Spanned<String>>,
    /// Where `results.json` and the test logits go.
    #[serde(default)]
    pub output_dir: Option<Spanned<String>>,
    /// `--image-size`: resize the prepared image to S³ (trilinear); 0 keeps it.
    #[serde(default)]
    pub image_size: Option<Spanned<u64>>,
    /// `--learning-rates`, before scaling by `batch_size / 256`.
    #[serde(default)]
    pub learning_rates: Option<Spanned<Vec<Spanned<f64>>>>,
    /// How many last blocks' [CLS] tokens are concatenated (each a classifier family).
    #[serde(default)]
    pub n_last_blocks: Option<Spanned<Vec<Spanned<u64>>>>,
    /// Whether the mean patch token of the last block is appended.
    #[serde(default)]
    pub avgpool: Option<Spanned<Vec<bool>>>,
    /// `--epochs`.
    #[serde(default)]
    pub epochs: Option<Spanned<u64>>,
    /// `--epoch-length`: iterations per epoch.
    #[serde(default)]
    pub epoch_length: Option<Spanned<u64>>,
    /// `--batch-size`.
    #[serde(default)]
    pub batch_size: Option<Spanned<u64>>,
    /// `--eval-period-iterations`: validation accuracy every this many iterations.
    #[serde(default)]
    pub eval_period_iterations: Option<Spanned<u64>>,
    /// `--dataset-percent`: the first round(N·p/100) training items after a
    /// seeded shuffle.
    #[serde(default)]
    pub dataset_percent: Option<Spanned<f64>>,
    /// `--dataset-seed`: the shuffle of `dataset_percent`.
    #[serde(default)]
    pub dataset_seed: Option<Spanned<u64>>,
    /// Also probe the same architecture at its seeded random initialisation.
    #[serde(default)]
    pub compare_random_init: Option<Spanned<bool>>,
}

/// The validated `probe:` section.
#[derive(Debug, Clone, PartialEq)]
pub struct LinearProbeConfig {
    /// Weights file or pretraining output folder, as written (relative to the recipe).
    pub pretrained_weights: String,
    /// Backbone preset.
    pub arch: String,
    /// Output folder, as written.
    pub output_dir: String,
    /// Resize to this cube after the pipeline (0: no resize).
    pub image_size: usize,
    /// Base learning rates (scaled by `batch_size / 256` when training).
    pub learning_rates: Vec<f64>,
    /// `n_last_blocks` options.
    pub n_last_blocks: Vec<usize>,
    /// `avgpool` options.
    pub avgpool: Vec<bool>,
    /// Epochs.
    pub epochs: usize,
    /// Iterations per epoch.
    pub epoch_length: usize,
    /// Batch size.
    pub batch_size: usize,
    /// Validation period (iterations).
    pub eval_period_iterations: usize,
    /// Percentage of the training list used.
    pub dataset_percent: f64,
    /// Seed of that subset's shuffle.
    pub dataset_seed: u64,
    /// Whether a random-init backbone is probed too.
    pub compare_random_init: bool,
}

/// `linear3d.py`'s default learning rates.
pub const LEARNING_RATES: [f64; 13] = [
    1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 0.1,
];

impl Default for LinearProbeConfig {
    fn default() -> Self {
        Self {
            pretrained_weights: String::new(),
            arch: ViT3dConfig::THREEDINO_PRESET.into(),
            output_dir: "output".into(),
            image_size: 96,
            learning_rates: LEARNING_RATES.to_vec(),
            n_last_blocks: vec![1, 4],
            avgpool: vec![false, true],
            epochs: 10,
            epoch_length: 1250,
            batch_size: 128,
            eval_period_iterations: 50,
            dataset_percent: 100.0,
            dataset_seed: 0,
            compare_random_init: false,
        }
    }
}

impl LinearProbeConfig {
    /// Total iterations `epochs · epoch_length`.
    pub fn total_iterations(&self) -> usize {
        self.epochs * self.epoch_length
    }
}

const ARCHS: [&str; 4] = ViT3dConfig::PRESETS;
/// Bounds that keep a probe run finite and its lists meaningful.
const MAX_ITERATIONS: u64 = 1 << 32;
const MAX_BLOCKS: u64 = 64;

/// Reads `probe:`; `None` when absent. A `linear_probe` task without it is an
/// error at `task:`.
pub fn compile(
    doc: Option<&ProbeDoc>,
    ctx: &TaskContext<'_>,
    errors: &mut Vec<RecipeError>,
) -> Option<LinearProbeConfig> {
    let file = ctx.file;
    let Some(d) = doc else {
        if ctx.task.value == "linear_probe" {
            errors.push(RecipeError::at(
                file,
                &ctx.task.referenced,
                "task `linear_probe` needs a `probe:` section (at least probe.pretrained_weights)",
            ));
        }
        return None;
    };
    let mut p = LinearProbeConfig::default();
    let mut err = |loc: &Location, m: String| {
        errors.push(RecipeError::at(file, loc, m));
    };
    p.pretrained_weights.clone_from(&d.pretrained_weights.value);
    if d.pretrained_weights.value.trim().is_empty() {
        err(
            &d.pretrained_weights.referenced,
            "probe.pretrained_weights is empty".into(),
        );
    }
    if let Some(a) = &d.arch {
        if !ARCHS.contains(&a.value.as_str()) {
            let hint = hint(&a.value, ARCHS);
            err(
                &a.referenced,
                format!("probe.arch `{}` is not one of {ARCHS:?}{hint}", a.value),
            );
        }
        p.arch.clone_from(&a.value);
    }
    if let Some(o) = &d.output_dir {
        p.output_dir.clone_from(&o.value);
    }
    if let Some(s) = &d.image_size {
        p.image_size = s.value as usize;
    }
    let mut count = |v: &Option<Spanned<u64>>, what: &str, out: &mut usize| {
        if let Some(v) = v {
            if v.value < 1 {
                err(&v.referenced, format!("probe.{what} must be at least 1"));
            }
            *out = v.value as usize;
        }
    };
    count(&d.epochs, "epochs", &mut p.epochs);
    count(&d.epoch_length, "epoch_length", &mut p.epoch_length);
    count(&d.batch_size, "batch_size", &mut p.batch_size);
    count(
        &d.eval_period_iterations,
        "eval_period_iterations",
        &mut p.eval_period_iterations,
    );
    if let Some(lrs) = &d.learning_rates {
        if lrs.value.is_empty() {
            err(
                &lrs.referenced,
                "probe.learning_rates is empty: give at least one".into(),
            );
        }
        for lr in &lrs.value {
            if !(lr.value.is_finite() && lr.value > 0.0 && lr.value <= 100.0) {
                err(
                    &lr.referenced,
                    format!(
                        "probe.learning_rates: {} must be positive and at most 100",
                        lr.value
                    ),
                );
            }
        }
        p.learning_rates = lrs.value.iter().map(|v| v.value).collect();
    }
    if let Some(n) = &d.n_last_blocks {
        if n.value.is_empty() {
            err(
                &n.referenced,
                "probe.n_last_blocks is empty: give at least one count (3DINO: [1, 4])".into(),
            );
        }
        let mut seen = Vec::new();
        for b in &n.value {
            if !(1..=MAX_BLOCKS).contains(&b.value) {
                err(
                    &b.referenced,
                    format!(
                        "probe.n_last_blocks: {} must be in 1..={MAX_BLOCKS}",
                        b.value
                    ),
                );
            } else if seen.contains(&b.value) {
                err(
                    &b.referenced,
                    format!("probe.n_last_blocks: {} is listed twice", b.value),
                );
            }
            seen.push(b.value);
        }
        p.n_last_blocks = n.value.iter().map(|v| v.value as usize).collect();
    }
    if let Some(a) = &d.avgpool {
        let v = &a.value;
        if v.is_empty() || v.len() > 2 || (v.len() == 2 && v[0] == v[1]) {
            err(
                &a.referenced,
                "probe.avgpool must list `false`, `true` or both, once each".into(),
            );
        }
        p.avgpool.clone_from(&a.value);
    }
    if let Some(pc) = &d.dataset_percent {
        if !(pc.value > 0.0 && pc.value <= 100.0) {
            err(
                &pc.referenced,
                "probe.dataset_percent must be in (0, 100]".into(),
            );
        }
        p.dataset_percent = pc.value;
    }
    if let Some(s) = &d.dataset_seed {
        p.dataset_seed = s.value;
    }
    if let Some(c) = &d.compare_random_init {
        p.compare_random_init = c.value;
    }
    if (p.epochs as u64)
        .checked_mul(p.epoch_length as u64)
        .is_none_or(|n| n > MAX_ITERATIONS)
    {
        let loc = d
            .epochs
            .as_ref()
            .or(d.epoch_length.as_ref())
            .map_or(&ctx.task.referenced, |v| &v.referenced);
        err(
            loc,
            format!("probe.epochs x probe.epoch_length must be at most {MAX_ITERATIONS}"),
        );
    }
    Some(p)
}

impl std::fmt::Display for LinearProbeConfig {
    /// The line `recipe check` prints.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let p = self;
        writeln!(
            f,
            "linear probe: ViT-{} from {}, image {}, {} classifiers (n_last_blocks {:?} x avgpool {:?} x {} lrs), {} epochs x {} iterations, batch {}, validation every {} it, output {}",
            p.arch,
            p.pretrained_weights,
            p.image_size,
            p.n_last_blocks.len() * p.avgpool.len() * p.learning_rates.len(),
            p.n_last_blocks,
            p.avgpool,
            p.learning_rates.len(),
            p.epochs,
            p.epoch_length,
            p.batch_size,
            p.eval_period_iterations,
            p.output_dir
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
    fn defaults_are_linear3d_and_values_are_read() {
        let (_, task) = compile_str(
            &format!("{HEAD}probe:\n  pretrained_weights: w.pth\n"),
            Path::new("p.yaml"),
        )
        .unwrap();
        let Task::LinearProbe(p) = task else {
            panic!("{task:?}")
        };
        assert_eq!(p.learning_rates.len(), 13);
        assert_eq!(p.learning_rates[0], 1e-5);
        assert_eq!(p.learning_rates[12], 0.1);
        assert_eq!(p.n_last_blocks, [1, 4]);
        assert_eq!(p.avgpool, [false, true]);
        assert_eq!((p.epochs, p.epoch_length, p.batch_size), (10, 1250, 128));
        assert_eq!(p.eval_period_iterations, 50);
        assert_eq!(p.total_iterations(), 12_500);

        let text = format!(
            "{HEAD}probe:\n  pretrained_weights: ../out/demo\n  arch: tiny\n  learning_rates: [0.1, 0.01]\n  n_last_blocks: [4]\n  avgpool: [true]\n  epochs: 2\n  epoch_length: 7\n  batch_size: 16\n  image_size: 32\n  compare_random_init: true\n"
        );
        let Task::LinearProbe(p) = compile_str(&text, Path::new("p.yaml")).unwrap().1 else {
            panic!("not a linear probe")
        };
        assert_eq!(p.pretrained_weights, "../out/demo");
        assert_eq!(p.arch, "tiny");
        assert_eq!(p.learning_rates, [0.1, 0.01]);
        assert_eq!(
            (p.n_last_blocks.as_slice(), p.avgpool.as_slice()),
            (&[4usize][..], &[true][..])
        );
        assert_eq!(
            (p.total_iterations(), p.batch_size, p.image_size),
            (14, 16, 32)
        );
        assert!(p.compare_random_init);
    }

    #[test]
    fn bad_values_are_reported_at_their_line_and_column() {
        // HEAD has 5 lines: `probe:` is line 6.
        let text = format!(
            "{HEAD}probe:\n  pretrained_weights: w.pth\n  arch: tinny\n  learning_rates: [0.1, -0.5, 0]\n  n_last_blocks: [1, 0, 1]\n  avgpool: []\n  epochs: 0\n  dataset_percent: 120\n"
        );
        let e = errors(&text);
        assert!(e.contains("p.yaml:8:9: probe.arch `tinny`"), "{e}");
        assert!(e.contains("did you mean `tiny`"), "{e}");
        assert!(
            e.contains("p.yaml:9:25: probe.learning_rates: -0.5 must be positive"),
            "{e}"
        );
        assert!(
            e.contains("p.yaml:9:31: probe.learning_rates: 0 must be positive"),
            "{e}"
        );
        assert!(
            e.contains("p.yaml:10:22: probe.n_last_blocks: 0 must be in 1..=64"),
            "{e}"
        );
        assert!(
            e.contains("p.yaml:10:25: probe.n_last_blocks: 1 is listed twice"),
            "{e}"
        );
        assert!(e.contains("p.yaml:11:12: probe.avgpool must list"), "{e}");
        assert!(
            e.contains("p.yaml:12:11: probe.epochs must be at least 1"),
            "{e}"
        );
        assert!(
            e.contains("p.yaml:13:20: probe.dataset_percent must be in (0, 100]"),
            "{e}"
        );
        // Misspelt keys name the valid ones.
        let e = errors(&format!(
            "{HEAD}probe:\n  pretrained_weights: w.pth\n  learning_rate: [0.1]\n"
        ));
        assert!(
            e.contains("p.yaml:8:3: unknown field `learning_rate`"),
            "{e}"
        );
        assert!(e.contains("learning_rates"), "{e}");
        // The task needs the section; weights are required.
        let e = errors(HEAD);
        assert!(
            e.contains("p.yaml:1:7: task `linear_probe` needs a `probe:` section"),
            "{e}"
        );
        let e = errors(&format!("{HEAD}probe:\n  arch: tiny\n"));
        assert!(e.contains("pretrained_weights"), "{e}");
    }
}
