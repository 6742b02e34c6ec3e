//! Recipe validation and the compiled plan: every problem reported with
//! `FILE:LINE:COLUMN` before any data is read, defaults filled in, the cached
//! prefix split from the random tail, and a canonical prefix hash.

use std::path::Path;

use serde_saphyr::{Location, Spanned};

use super::view_sizes::{self, SizeSource};

use super::document::RecipeDoc;
use super::error::{RecipeError, RecipeErrors, hint};
use super::value::ParamValue;
use crate::exec::op::Op;
use crate::transforms::registry;
use crate::transforms::spec::{Args, ParamDefault, ParamKind, Params, TransformSpec};

/// Version of the plan encoding folded into the prefix hash.
const PLAN_FORMAT: &str = "dino3d-plan-v1";

/// A validated transform with every parameter resolved and its op built.
#[derive(Debug, Clone)]
pub struct Step {
    /// The transform's spec.
    pub spec: &'static TransformSpec,
    /// Parameters by name, defaults filled; absent optional parameters omitted.
    pub params: Params,
    /// Line of the step in the recipe.
    pub line: u32,
    /// Nested steps (`OneOf`, `RandomApply`).
    pub children: Vec<Step>,
    /// Unique number of the step within the recipe (pre-order): the
    /// `transform` field of its random draws.
    pub id: u32,
    /// What runs it (built from `params` by the transform's spec).
    pub op: std::sync::Arc<dyn Op>,
}

/// Steps are equal when they name the same transform with the same
/// parameters at the same place (the op is a function of those).
impl PartialEq for Step {
    fn eq(&self, other: &Self) -> bool {
        self.spec == other.spec
            && self.params == other.params
            && self.line == other.line
            && self.children == other.children
            && self.id == other.id
    }
}

/// Which collated tensor a view's crops join.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ViewRole {
    /// The teacher and student both see it (3DINO: 2 per sample, 96³).
    Global,
    /// Only the student sees it (3DINO: 8 per sample, 48³).
    Local,
}

/// A compiled `views:` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct ViewPlan {
    /// Its name.
    pub name: String,
    /// Global or local.
    pub role: ViewRole,
    /// Crops of this family per sample.
    pub count: usize,
    /// Its transforms, starting with the crop.
    pub steps: Vec<Step>,
    /// The spatial size of its crops, when the recipe alone tells it.
    pub crop_size: Option<[usize; 3]>,
}

/// Batching and iBOT masking settings, defaults filled.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchPlan {
    /// Samples per batch.
    pub size: usize,
    /// Worker threads (0: all cores).
    pub threads: usize,
    /// Batches prepared ahead.
    pub prefetch: usize,
    /// Fraction of global crops that get masks.
    pub mask_sample_probability: f64,
    /// Masked-token fraction range.
    pub mask_ratio: (f64, f64),
    /// Patch edge of the model (token grid = crop / patch).
    pub patch_size: usize,
}

impl std::default::Default for BatchPlan {
    fn default() -> Self {
        BatchPlan {
            size: 1,
            threads: 0,
            prefetch: 2,
            mask_sample_probability: 0.5,
            mask_ratio: (0.2, 0.75),
            patch_size: 16,
        }
    }
}

/// A compiled recipe's sections every task shares (the task and its own
/// sections are the tasks crate's).
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The seed.
    pub seed: u64,
    /// Manifest path, if given.
    pub manifest: Option<String>,
    /// Every step in order.
    pub steps: Vec<Step>,
    /// How many leading steps the cache persists.
    pub prefix_len: usize,
    /// Canonical hash of the prefix (hex xxh3-128).
    pub prefix_hash: String,
    /// Multi-crop views (empty: one sample per item, the pipeline's output).
    pub views: Vec<ViewPlan>,
    /// Batching.
    pub batch: BatchPlan,
    /// Keys whose data are label maps.
    pub label_keys: Vec<String>,
    /// Keys each manifest entry provides.
    pub keys: Vec<String>,
    /// Items whose smallest spatial axis is at most this are dropped.
    pub min_axis: Option<u64>,
    /// Most voxels one volume may hold (`data.max_voxels`).
    pub max_voxels: u64,
    /// The cache folder, as written (relative to the recipe's folder).
    pub cache_dir: Option<String>,
    /// Codec of new cache entries (`lz4` or `zstd`; None: the cache's default).
    pub cache_codec: Option<String>,
    /// Chunk edges (x, y, z) of new cache entries (None: the cache's default).
    pub cache_chunk: Option<[usize; 3]>,
}

impl std::fmt::Display for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The tasks crate prints "task NAME, " before this line.
        writeln!(f, "seed {}", self.seed)?;
        if let Some(m) = &self.manifest {
            writeln!(f, "manifest {m}")?;
        }
        writeln!(
            f,
            "cached prefix ({} steps, hash {}):",
            self.prefix_len, self.prefix_hash
        )?;
        for (i, s) in self.steps.iter().enumerate() {
            if i == self.prefix_len {
                writeln!(f, "random tail (per sample):")?;
            }
            write_step(f, s, &format!("{:>2}.", i + 1), 2)?;
        }
        if self.prefix_len == self.steps.len() {
            writeln!(f, "random tail (per sample): none")?;
        }
        for v in &self.views {
            let role = match v.role {
                ViewRole::Global => "global",
                ViewRole::Local => "local",
            };
            writeln!(f, "view {} ({role}, x{}):", v.name, v.count)?;
            for (i, s) in v.steps.iter().enumerate() {
                write_step(f, s, &format!("{:>2}.", i + 1), 2)?;
            }
        }
        let b = &self.batch;
        writeln!(
            f,
            "batch {} (threads {}, prefetch {}), iBOT masks on {} of global crops, ratio {:?}, patch {}",
            b.size,
            if b.threads == 0 {
                "all".to_string()
            } else {
                b.threads.to_string()
            },
            b.prefetch,
            b.mask_sample_probability,
            b.mask_ratio,
            b.patch_size
        )?;
        Ok(())
    }
}

fn write_step(
    f: &mut std::fmt::Formatter<'_>,
    s: &Step,
    label: &str,
    indent: usize,
) -> std::fmt::Result {
    let params: Vec<String> = s
        .params
        .iter()
        .map(|(k, v)| format!("{k}={}", canonical(v)))
        .collect();
    let random = if s.spec.is_random { " [random]" } else { "" };
    writeln!(
        f,
        "{:indent$}{label} {}{} {}",
        "",
        s.spec.name,
        random,
        params.join(" ")
    )?;
    for c in &s.children {
        write_step(f, c, "-", indent + 5)?;
    }
    Ok(())
}

/// A canonical text form of a value: numbers as shortest round-trip f64, so
/// `1`, `1.0` and `1.00` hash the same.
fn canonical(v: &ParamValue) -> String {
    match v {
        ParamValue::Bool(b) => b.to_string(),
        ParamValue::Int(i) => format!("{:?}", *i as f64),
        ParamValue::Float(x) => format!("{x:?}"),
        ParamValue::Str(s) => format!("{s:?}"),
        ParamValue::List(l) => format!(
            "[{}]",
            l.iter().map(canonical).collect::<Vec<_>>().join(",")
        ),
    }
}

/// What a recipe's task sections see of the rest while they are compiled
/// (see [`compile_doc_with`]).
#[derive(Debug, Clone, Copy)]
pub struct TaskContext<'a> {
    /// The recipe file, for error positions.
    pub file: &'a Path,
    /// `task:` as written.
    pub task: &'a Spanned<String>,
    /// The compiled `batch:` section (its patch size sets the iBOT mask grid).
    pub batch: &'a BatchPlan,
    /// The compiled `views:` (their crop sizes set the model's position grid).
    pub views: &'a [ViewPlan],
}

/// Parses a recipe's text into a document (the pipeline's [`RecipeDoc`], or
/// a caller's document that holds it); serde's first error becomes a
/// `FILE:LINE:COLUMN` error with the nearest valid name for an unknown key.
///
/// # Errors
/// The first problem serde meets.
pub fn parse_str<T: serde::de::DeserializeOwned>(
    text: &str,
    file: &Path,
) -> Result<T, RecipeErrors> {
    serde_saphyr::from_str(text).map_err(|e| {
        let mut error = parse_error(&e, file);
        // serde says "invalid u64" or "expected string scalar" without the
        // key: name it from the line.
        if (error.message.starts_with("invalid") || error.message.starts_with("expected"))
            && let Some(key) = key_on_line(text, error.line)
        {
            error.message = format!("`{key}`: {}", error.message);
        }
        RecipeErrors(vec![error])
    })
}

/// The mapping key written on `line` (1-based) of `text`, if any.
fn key_on_line(text: &str, line: u32) -> Option<&str> {
    let written = text.lines().nth((line as usize).checked_sub(1)?)?;
    let (key, _) = written
        .trim_start()
        .trim_start_matches("- ")
        .split_once(':')?;
    let key = key.trim();
    (!key.is_empty() && !key.contains([' ', '[', '{', '"', '\''])).then_some(key)
}

/// Parses and validates a recipe's text.
///
/// # Errors
/// Every problem found, each with file, line and column.
pub fn compile_str(text: &str, file: &Path) -> Result<Plan, RecipeErrors> {
    let doc: RecipeDoc = parse_str(text, file)?;
    compile_doc(&doc, file)
}

/// Reads, parses and validates a recipe file.
///
/// # Errors
/// Every problem found, each with file, line and column.
pub fn compile_file(file: &Path) -> Result<Plan, RecipeErrors> {
    read_and_compile(file, &[], compile_str)
}

/// Reads a recipe, applies `--set` overrides (see [`super::overrides`]) and
/// validates it; error positions refer to the file as written (or name the
/// override that caused them).
///
/// # Errors
/// Every problem found.
pub fn compile_file_with(file: &Path, sets: &[String]) -> Result<Plan, RecipeErrors> {
    read_and_compile(file, sets, compile_str)
}

/// Reads a recipe file, applies `--set` overrides and hands the text to
/// `compile`, mapping error positions back to the file as written (an error
/// on an inserted line names its override instead).
///
/// # Errors
/// An unreadable file, a bad override, or what `compile` reports.
pub fn read_and_compile<T>(
    file: &Path,
    sets: &[String],
    compile: impl FnOnce(&str, &Path) -> Result<T, RecipeErrors>,
) -> Result<T, RecipeErrors> {
    let at_top = |message: String| {
        RecipeErrors(vec![RecipeError {
            file: file.to_path_buf(),
            line: 0,
            column: 0,
            message,
        }])
    };
    let text = std::fs::read_to_string(file).map_err(|e| at_top(e.to_string()))?;
    if sets.is_empty() {
        return compile(&text, file);
    }
    let (edited, inserted) = super::overrides::apply(&text, sets).map_err(at_top)?;
    compile(&edited, file).map_err(|RecipeErrors(errors)| {
        RecipeErrors(
            errors
                .into_iter()
                .map(|mut e| {
                    if let Some(set) = inserted.replaced_by(e.line) {
                        e.message = format!("{} (from --set {set})", e.message);
                    }
                    match inserted.original(e.line) {
                        Ok(line) => e.line = line,
                        Err(set) => {
                            e.message = format!("{} (from --set {set})", e.message);
                            e.line = 0;
                            e.column = 0;
                        }
                    }
                    e
                })
                .collect(),
        )
    })
}

fn parse_error(e: &serde_saphyr::Error, file: &Path) -> RecipeError {
    let (line, column) = e
        .location()
        .map_or((0, 0), |l| (l.line() as u32, l.column() as u32));
    let full = e.to_string();
    let first = full.lines().next().unwrap_or_default();
    // serde-saphyr says "error: line L column C: msg"; keep only msg.
    let message = first.split_once(": ").map_or(first, |(_, rest)| rest);
    let message = message
        .split_once(": ")
        .filter(|(pre, _)| pre.starts_with("line "))
        .map_or(message, |(_, m)| m);
    let mut message = plain_message(e).unwrap_or_else(|| message.to_string());
    // "unknown field `x`, expected one of a, b": add the nearest name.
    if let Some(rest) = message.strip_prefix("unknown field `")
        && let Some((name, tail)) = rest.split_once('`')
    {
        let candidates: Vec<&str> = tail
            .trim_start_matches(", expected one of ")
            .trim_start_matches(", expected ")
            .split(", ")
            .map(|c| c.trim_matches('`'))
            .collect();
        let h = hint(name, candidates);
        message.push_str(&h);
    }
    RecipeError {
        file: file.to_path_buf(),
        line,
        column,
        message,
    }
}

/// serde-saphyr's texts that speak to its API user rather than to a recipe's
/// author, said for the author.
fn plain_message(e: &serde_saphyr::Error) -> Option<String> {
    use serde_saphyr::Error as E;
    let mut e = e;
    while let E::WithSnippet { error, .. } | E::AliasError { error, .. } = e {
        e = error;
    }
    match e {
        E::DuplicateMappingKey { key: Some(k), .. } => Some(format!(
            "`{k}` appears twice here: each key may be given once"
        )),
        E::DuplicateMappingKey { key: None, .. } => {
            Some("a key appears twice here: each key may be given once".into())
        }
        E::Budget { breach, .. } => {
            // The breach's variant names the limit (events, depth, aliases...).
            let limit = format!("{breach:?}");
            let limit = limit
                .split([' ', '{'])
                .next()
                .unwrap_or_default()
                .to_lowercase();
            Some(format!(
                "the YAML is too large or too deeply nested for a recipe (its {limit} limit)"
            ))
        }
        // The YAML scanner's own limit on `[[[...]]]` nesting.
        _ if e.to_string().contains("recursion limit exceeded") => {
            Some("the YAML is too deeply nested for a recipe".into())
        }
        _ => None,
    }
}

/// Validates a parsed recipe.
///
/// # Errors
/// Every problem found, sorted by position.
pub fn compile_doc(doc: &RecipeDoc, file: &Path) -> Result<Plan, RecipeErrors> {
    compile_doc_with(doc, file, |_, _| ()).map(|(plan, ())| plan)
}

/// Validates a parsed recipe and, through `sections`, its task's sections
/// (called once, after `batch:`, with the same error list, so every problem
/// of the recipe comes out sorted by position together).
///
/// # Errors
/// Every problem found, sorted by position.
pub fn compile_doc_with<T>(
    doc: &RecipeDoc,
    file: &Path,
    sections: impl FnOnce(&TaskContext<'_>, &mut Vec<RecipeError>) -> T,
) -> Result<(Plan, T), RecipeErrors> {
    let mut errors = Vec::new();
    let keys: Vec<String> = doc
        .data
        .as_ref()
        .and_then(|d| d.keys.as_ref())
        .map_or_else(|| vec!["image".to_string()], |k| k.value.clone());
    let mut steps = Vec::new();
    let mut next_id = 0u32;
    for entry in &doc.pipeline {
        if let Some(step) = compile_step(entry, &keys, file, &mut errors, &mut next_id) {
            steps.push(step);
        }
    }
    let (views, view_sizes) = compile_views(doc, &keys, file, &mut errors, &mut next_id);
    let batch = compile_batch(doc, file, &mut errors);
    super::view_sizes::check(&views, &view_sizes, batch.patch_size, file, &mut errors);
    let task = sections(
        &TaskContext {
            file,
            task: &doc.task,
            batch: &batch,
            views: &views,
        },
        &mut errors,
    );
    let label_keys = match doc.data.as_ref().and_then(|d| d.label_keys.as_ref()) {
        Some(l) => {
            for k in l.value.iter().filter(|k| !keys.contains(k)) {
                errors.push(RecipeError::at(
                    file,
                    &l.referenced,
                    format!("label key `{k}` is not one of the data keys {keys:?}"),
                ));
            }
            l.value.clone()
        }
        None => keys.iter().filter(|k| *k == "label").cloned().collect(),
    };
    if doc.pipeline.is_empty() {
        errors.push(RecipeError::at(
            file,
            &doc.task.referenced,
            "`pipeline` is empty",
        ));
    } else if steps.first().is_some_and(|s| s.spec.name != "LoadImage") {
        let loc = &doc.pipeline[0].referenced;
        errors.push(RecipeError::at(
            file,
            loc,
            "the pipeline must start with LoadImage",
        ));
    }
    let (cache_codec, cache_chunk) = cache_layout(doc, file, &mut errors);
    let max_voxels = match doc.data.as_ref().and_then(|d| d.max_voxels.as_ref()) {
        Some(m) if m.value == 0 => {
            errors.push(RecipeError::at(
                file,
                &m.referenced,
                "data.max_voxels must be at least 1",
            ));
            0
        }
        Some(m) => m.value,
        None => crate::nifti::DEFAULT_MAX_VOXELS,
    };
    let leading_deterministic = steps.iter().take_while(|s| !s.spec.is_random).count();
    let prefix_len = match doc.cache.as_ref().and_then(|c| c.prefix.as_ref()) {
        None => leading_deterministic,
        Some(Spanned {
            value: ParamValue::Str(s),
            ..
        }) if s == "auto" => leading_deterministic,
        Some(Spanned {
            value: ParamValue::Int(n),
            referenced,
            ..
        }) => {
            if *n < 0 || *n as usize > steps.len() {
                errors.push(RecipeError::at(
                    file,
                    referenced,
                    format!("cache prefix {n} is outside 0..={}", steps.len()),
                ));
            }
            (*n).clamp(0, steps.len() as i64) as usize
        }
        Some(other) => {
            errors.push(RecipeError::at(
                file,
                &other.referenced,
                format!(
                    "cache prefix must be `auto` or a count, not {}",
                    other.value.kind()
                ),
            ));
            leading_deterministic
        }
    };
    if !errors.is_empty() {
        errors.sort_by_key(|e| (e.line, e.column));
        return Err(RecipeErrors(errors));
    }
    let seed = doc.seed.as_ref().map_or(0, |s| s.value);
    let prefix_hash = prefix_hash(&steps[..prefix_len], seed);
    let plan = Plan {
        seed,
        manifest: doc
            .data
            .as_ref()
            .and_then(|d| d.manifest.as_ref())
            .map(|m| m.value.clone()),
        steps,
        prefix_len,
        prefix_hash,
        views,
        batch,
        label_keys,
        keys,
        min_axis: doc
            .data
            .as_ref()
            .and_then(|d| d.min_axis.as_ref())
            .map(|m| m.value),
        max_voxels,
        cache_dir: doc.cache.as_ref().map(|c| c.dir.value.clone()),
        cache_codec,
        cache_chunk,
    };
    Ok((plan, task))
}

/// Chunk edges accepted for cache entries: below 4 the index outweighs the
/// data, above 256 one voxel read decodes megabytes.
const CACHE_CHUNKS: std::ops::RangeInclusive<u64> = 4..=256;

/// `cache.codec` and `cache.chunk`, checked.
fn cache_layout(
    doc: &RecipeDoc,
    file: &Path,
    errors: &mut Vec<RecipeError>,
) -> (Option<String>, Option<[usize; 3]>) {
    let Some(cache) = doc.cache.as_ref() else {
        return (None, None);
    };
    // The cache crate owns the codec list: a new codec needs no change here.
    let codecs = dino3d_cache::Codec::ALL.map(dino3d_cache::Codec::name);
    let codec = cache.codec.as_ref().map(|c| {
        if dino3d_cache::Codec::from_name(&c.value).is_none() {
            errors.push(RecipeError::at(
                file,
                &c.referenced,
                format!(
                    "unknown cache codec `{}` ({}){}",
                    c.value,
                    codecs.join(" or "),
                    super::error::hint(&c.value, codecs)
                ),
            ));
        }
        c.value.clone()
    });
    let in_range = |e: i64| u64::try_from(e).is_ok_and(|e| CACHE_CHUNKS.contains(&e));
    let chunk = cache.chunk.as_ref().and_then(|c| {
        let edges = chunk_edges(&c.value);
        let error = match edges {
            None => Some(
                "cache chunk must be one integer edge or a list of three integers [x, y, z]".into(),
            ),
            Some(edges) => edges.iter().find(|&&e| !in_range(e)).map(|e| {
                format!(
                    "cache chunk {e} is outside {}..={}",
                    CACHE_CHUNKS.start(),
                    CACHE_CHUNKS.end()
                )
            }),
        };
        if let Some(message) = error {
            errors.push(RecipeError::at(file, &c.referenced, message));
            return None;
        }
        edges.map(|e| e.map(|e| e as usize))
    });
    (codec, chunk)
}

/// `cache.chunk` as x, y, z edges: one edge for all three axes, or a list
/// of three (`None`: neither).
fn chunk_edges(value: &ParamValue) -> Option<[i64; 3]> {
    let edge = |v: &ParamValue| match v {
        ParamValue::Int(i) => Some(*i),
        _ => None,
    };
    match value {
        ParamValue::List(items) => match &items[..] {
            [x, y, z] => Some([edge(x)?, edge(y)?, edge(z)?]),
            _ => None,
        },
        one => edge(one).map(|e| [e; 3]),
    }
}

fn compile_views(
    doc: &RecipeDoc,
    keys: &[String],
    file: &Path,
    errors: &mut Vec<RecipeError>,
    next_id: &mut u32,
) -> (Vec<ViewPlan>, Vec<SizeSource>) {
    let mut views = Vec::new();
    let mut sources = Vec::new();
    for v in &doc.views {
        let role = match v.value.role.value.as_str() {
            "global" => ViewRole::Global,
            "local" => ViewRole::Local,
            other => {
                errors.push(RecipeError::at(
                    file,
                    &v.value.role.referenced,
                    format!(
                        "view role must be `global` or `local`, not `{other}`{}",
                        hint(other, ["global", "local"])
                    ),
                ));
                continue;
            }
        };
        let count = v.value.count.as_ref().map_or(1, |c| c.value);
        if count == 0 || count > 1024 {
            let at = &v
                .value
                .count
                .as_ref()
                .expect("count given when 0")
                .referenced;
            errors.push(RecipeError::at(
                file,
                at,
                format!("view count {count} is outside 1..=1024"),
            ));
        }
        if v.value.pipeline.is_empty() {
            errors.push(RecipeError::at(
                file,
                &v.value.name.referenced,
                format!("view `{}` has an empty pipeline", v.value.name.value),
            ));
        }
        let mut steps = Vec::new();
        let mut size = None;
        let mut size_at = v.value.name.referenced;
        for entry in &v.value.pipeline {
            if let Some(step) = compile_step(entry, keys, file, errors, next_id) {
                let after = view_sizes::output_size(std::slice::from_ref(&step), size);
                if after.is_some() && after != size {
                    size_at = size_parameter(entry);
                }
                size = after;
                if step.spec.name == "LoadImage" {
                    errors.push(RecipeError::at(
                        file,
                        &entry.referenced,
                        "views start from the prepared sample: LoadImage belongs in `pipeline`",
                    ));
                }
                steps.push(step);
            }
        }
        let complete = steps.len() == v.value.pipeline.len();
        if complete && size.is_some() {
            sources.push(SizeSource {
                view: views.len(),
                at: size_at,
            });
        }
        views.push(ViewPlan {
            name: v.value.name.value.clone(),
            role,
            count: count as usize,
            steps,
            crop_size: size
                .filter(|_| complete)
                .map(|s| s.map(|side| side as usize)),
        });
    }
    if !views.is_empty() && !views.iter().any(|v| v.role == ViewRole::Global) {
        errors.push(RecipeError::at(
            file,
            &doc.views[0].referenced,
            "views need at least one `global` view",
        ));
    }
    (views, sources)
}

/// The position of a step's size parameter (the step's own without one).
fn size_parameter(entry: &Spanned<super::value::SpannedMap>) -> Location {
    entry
        .value
        .fields
        .iter()
        .find(|(k, _)| matches!(k.value.as_str(), "size" | "spatial_size" | "roi_size"))
        .map_or(entry.referenced, |(_, v)| v.referenced)
}

fn compile_batch(doc: &RecipeDoc, file: &Path, errors: &mut Vec<RecipeError>) -> BatchPlan {
    let mut plan = BatchPlan::default();
    let Some(b) = &doc.batch else {
        return plan;
    };
    let mut positive = |v: &Spanned<u64>, what: &str| {
        if v.value == 0 {
            errors.push(RecipeError::at(
                file,
                &v.referenced,
                format!("batch {what} must be at least 1"),
            ));
        }
        v.value as usize
    };
    plan.size = positive(&b.size, "size");
    if let Some(p) = &b.prefetch {
        plan.prefetch = positive(p, "prefetch");
    }
    if let Some(ps) = &b.patch_size {
        plan.patch_size = positive(ps, "patch_size");
    }
    if let Some(t) = &b.threads {
        plan.threads = t.value as usize;
    }
    if let Some(p) = &b.mask_sample_probability {
        if !(0.0..=1.0).contains(&p.value) {
            errors.push(RecipeError::at(
                file,
                &p.referenced,
                "mask_sample_probability must be in [0, 1]",
            ));
        }
        plan.mask_sample_probability = p.value;
    }
    if let Some(r) = &b.mask_ratio {
        match r.value[..] {
            [lo, hi] if (0.0..=hi).contains(&lo) && hi <= 1.0 => plan.mask_ratio = (lo, hi),
            _ => errors.push(RecipeError::at(
                file,
                &r.referenced,
                "mask_ratio must be [lo, hi] with 0 <= lo <= hi <= 1",
            )),
        }
    }
    plan
}

/// The canonical hash of a prefix: step names and every parameter (defaults
/// filled, sorted, numbers normalised), the plan format version, and the seed
/// when a random step is cached (its draw is then frozen per volume).
fn prefix_hash(prefix: &[Step], seed: u64) -> String {
    fn encode(text: &mut String, s: &Step) {
        text.push_str(s.spec.name);
        for (k, v) in &s.params {
            text.push_str(&format!(" {k}={}", canonical(v)));
        }
        if !s.children.is_empty() {
            text.push_str(" (");
            for c in &s.children {
                encode(text, c);
                text.push(';');
            }
            text.push(')');
        }
    }
    let mut text = String::from(PLAN_FORMAT);
    for s in prefix {
        text.push('\n');
        encode(&mut text, s);
    }
    if prefix.iter().any(|s| s.spec.is_random) {
        text.push_str(&format!("\nseed={seed}"));
    }
    format!("{:032x}", xxhash_rust::xxh3::xxh3_128(text.as_bytes()))
}

fn compile_step(
    entry: &Spanned<super::value::SpannedMap>,
    keys: &[String],
    file: &Path,
    errors: &mut Vec<RecipeError>,
    next_id: &mut u32,
) -> Option<Step> {
    let id = *next_id;
    *next_id += 1;
    let fields = &entry.value.fields;
    let Some((_, name)) = fields.iter().find(|(k, _)| k.value == "name") else {
        errors.push(RecipeError::at(
            file,
            &entry.referenced,
            "transform without a `name`",
        ));
        return None;
    };
    let ParamValue::Str(name_text) = &name.value else {
        errors.push(RecipeError::at(
            file,
            &name.referenced,
            "`name` must be a transform name",
        ));
        return None;
    };
    let Some(spec) = registry::find(name_text) else {
        let names = registry::TRANSFORMS.iter().map(|t| t.name);
        errors.push(RecipeError::at(
            file,
            &name.referenced,
            format!("unknown transform `{name_text}`{}", hint(name_text, names)),
        ));
        return None;
    };
    let mut params = Params::new();
    let before = errors.len();
    for (key, value) in fields.iter().filter(|(k, _)| k.value != "name") {
        let Some(ps) = spec.params.iter().find(|p| p.name == key.value) else {
            errors.push(RecipeError::at(
                file,
                &key.referenced,
                format!(
                    "{} has no parameter `{}`{}",
                    spec.name,
                    key.value,
                    hint(&key.value, spec.params.iter().map(|p| p.name))
                ),
            ));
            continue;
        };
        match check_value(&ps.kind, &value.value, keys) {
            Ok(v) => {
                params.insert(ps.name, v);
            }
            Err(why) => errors.push(RecipeError::at(
                file,
                &value.referenced,
                format!("{}.{}: {why}", spec.name, ps.name),
            )),
        }
    }
    for ps in spec.params {
        if params.contains_key(ps.name) {
            continue;
        }
        let default = match ps.default {
            ParamDefault::Required => {
                if !fields.iter().any(|(k, _)| k.value == ps.name) {
                    errors.push(RecipeError::at(
                        file,
                        &name.referenced,
                        format!("{} needs parameter `{}`", spec.name, ps.name),
                    ));
                }
                continue;
            }
            other => match other.value() {
                Some(v) => v,
                None => continue,
            },
        };
        params.insert(ps.name, default);
    }
    let mut children = Vec::new();
    match (&entry.value.children, spec.nests) {
        (Some((_, steps)), true) if !steps.is_empty() => {
            for child in steps {
                if let Some(c) = compile_step(child, keys, file, errors, next_id) {
                    children.push(c);
                }
            }
        }
        (children, true) => {
            let at = children
                .as_ref()
                .map_or(&name.referenced, |(k, _)| &k.referenced);
            errors.push(RecipeError::at(
                file,
                at,
                format!("{} needs a non-empty list `transforms`", spec.name),
            ));
        }
        (Some((key, _)), false) => errors.push(RecipeError::at(
            file,
            &key.referenced,
            format!("{} does not take nested `transforms`", spec.name),
        )),
        (None, false) => {}
    }
    if let Some(ParamValue::List(w)) = params.get("weights")
        && w.len() != children.len()
    {
        errors.push(RecipeError::at(
            file,
            &name.referenced,
            format!(
                "OneOf has {} weights for {} transforms",
                w.len(),
                children.len()
            ),
        ));
    }
    if errors.len() == before
        && let Some(check) = spec.check
        && let Err(why) = check(&params)
    {
        errors.push(RecipeError::at(
            file,
            &name.referenced,
            format!("{}.{why}", spec.name),
        ));
    }
    if errors.len() != before {
        return None;
    }
    let op = match (spec.build)(&Args::new(&params, &children)) {
        Ok(op) => std::sync::Arc::from(op),
        Err(why) => {
            errors.push(RecipeError::at(
                file,
                &name.referenced,
                format!("{}: {why}", spec.name),
            ));
            return None;
        }
    };
    Some(Step {
        spec,
        params,
        line: entry.referenced.line() as u32,
        children,
        id,
        op,
    })
}

/// Checks one value against its kind, returning it in canonical form.
fn check_value(kind: &ParamKind, v: &ParamValue, keys: &[String]) -> Result<ParamValue, String> {
    match (kind, v) {
        (ParamKind::Float { min, max }, v) => match v.as_f64() {
            Some(x) if x.is_finite() && (*min..=*max).contains(&x) => Ok(ParamValue::Float(x)),
            Some(x) => Err(format!("{x} is outside [{min}, {max}]")),
            None => Err(format!("expected a number, found {}", v.kind())),
        },
        (ParamKind::Int { min, max }, ParamValue::Int(i)) => {
            if (*min..=*max).contains(i) {
                Ok(ParamValue::Float(*i as f64))
            } else {
                Err(format!("{i} is outside [{min}, {max}]"))
            }
        }
        (ParamKind::Int { .. }, v) => Err(format!("expected an integer, found {}", v.kind())),
        (ParamKind::Bool, ParamValue::Bool(b)) => Ok(ParamValue::Bool(*b)),
        (ParamKind::Bool, v) => Err(format!("expected true or false, found {}", v.kind())),
        (ParamKind::Choice(options), v) => {
            let text = match v {
                ParamValue::Str(s) => s.clone(),
                ParamValue::Bool(b) => b.to_string(),
                other => {
                    return Err(format!(
                        "expected one of {options:?}, found {}",
                        other.kind()
                    ));
                }
            };
            if options.contains(&text.as_str()) {
                Ok(ParamValue::Str(text))
            } else {
                Err(format!(
                    "`{text}` is not one of {options:?}{}",
                    hint(&text, options.iter().copied())
                ))
            }
        }
        (ParamKind::Int3, ParamValue::List(items)) if items.len() == 3 => items
            .iter()
            .map(|i| match i {
                ParamValue::Int(i) => Ok(ParamValue::Float(*i as f64)),
                other => Err(format!("expected 3 integers, found {}", other.kind())),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(ParamValue::List),
        (ParamKind::Int3, v) => Err(format!("expected a list of 3 integers, found {}", v.kind())),
        (ParamKind::AxCodes, ParamValue::Str(s)) => crate::transforms::parse_axcodes(s)
            .map(|c| ParamValue::Str(c.iter().collect()))
            .map_err(|e| e.to_string()),
        (ParamKind::AxCodes, v) => Err(format!(
            "expected axis codes such as RAS, found {}",
            v.kind()
        )),
        (ParamKind::Axes, v) => {
            let items = match v {
                ParamValue::List(items) => items.clone(),
                single => vec![single.clone()],
            };
            let mut axes = Vec::new();
            for item in &items {
                match item {
                    ParamValue::Int(a @ 0..=2) if !axes.contains(a) => axes.push(*a),
                    ParamValue::Int(a @ 0..=2) => return Err(format!("axis {a} is listed twice")),
                    other => {
                        return Err(format!("expected spatial axes 0, 1 or 2, found {other:?}"));
                    }
                }
            }
            Ok(ParamValue::List(
                axes.into_iter()
                    .map(|a| ParamValue::Float(a as f64))
                    .collect(),
            ))
        }
        (ParamKind::Range { min, max }, ParamValue::List(items)) if items.len() == 2 => {
            let (Some(lo), Some(hi)) = (items[0].as_f64(), items[1].as_f64()) else {
                return Err("expected a range [lo, hi] of two numbers".into());
            };
            if !(lo.is_finite() && hi.is_finite() && *min <= lo && lo <= hi && hi <= *max) {
                return Err(format!(
                    "[{lo}, {hi}] must satisfy {min} <= lo <= hi <= {max}"
                ));
            }
            Ok(ParamValue::List(vec![
                ParamValue::Float(lo),
                ParamValue::Float(hi),
            ]))
        }
        (ParamKind::Range { .. }, v) => {
            Err(format!("expected a range [lo, hi], found {}", v.kind()))
        }
        (ParamKind::Float3, ParamValue::List(items)) if items.len() == 3 => items
            .iter()
            .map(|i| match i.as_f64() {
                Some(x) if x.is_finite() => Ok(ParamValue::Float(x)),
                _ => Err(format!("expected 3 numbers, found {}", i.kind())),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(ParamValue::List),
        (ParamKind::Float3, v) => Err(format!("expected a list of 3 numbers, found {}", v.kind())),
        (ParamKind::Weights, ParamValue::List(items)) if !items.is_empty() => {
            let w = items
                .iter()
                .map(|i| match i.as_f64() {
                    Some(x) if x.is_finite() && x >= 0.0 => Ok(ParamValue::Float(x)),
                    _ => Err("weights must be non-negative numbers".to_string()),
                })
                .collect::<Result<Vec<_>, _>>()?;
            if w.iter().all(|x| x.as_f64() == Some(0.0)) {
                return Err("weights cannot all be 0".into());
            }
            Ok(ParamValue::List(w))
        }
        (ParamKind::Weights, v) => Err(format!("expected a list of weights, found {}", v.kind())),
        (ParamKind::Key, ParamValue::Str(k)) => {
            if keys.contains(k) {
                Ok(ParamValue::Str(k.clone()))
            } else {
                Err(format!(
                    "key `{k}` is not provided by the data (keys: {keys:?}){}",
                    hint(k, keys.iter().map(String::as_str))
                ))
            }
        }
        (ParamKind::Key, v) => Err(format!("expected a key name, found {}", v.kind())),
        (ParamKind::Keys, v) => {
            let list = match v {
                ParamValue::Str(s) => vec![s.clone()],
                ParamValue::List(items) => items
                    .iter()
                    .map(|i| match i {
                        ParamValue::Str(s) => Ok(s.clone()),
                        other => Err(format!("keys must be names, found {}", other.kind())),
                    })
                    .collect::<Result<Vec<_>, _>>()?,
                other => return Err(format!("expected key names, found {}", other.kind())),
            };
            for k in &list {
                if !keys.contains(k) {
                    return Err(format!(
                        "key `{k}` is not provided by the data (keys: {keys:?}){}",
                        hint(k, keys.iter().map(String::as_str))
                    ));
                }
            }
            Ok(ParamValue::List(
                list.into_iter().map(ParamValue::Str).collect(),
            ))
        }
    }
}
