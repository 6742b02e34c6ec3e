//! Ops: what a compiled step runs. Each transform's file implements [`Op`]
//! for its parameters and builds it from a validated recipe step (see
//! `crate::transforms::spec`); a [`CompiledStep`] is an op with the keys it
//! applies to and its draw number, and [`run_steps`] runs a list of them on a
//! sample with the draw key of its (sample, view, step).

use std::any::Any;
use std::sync::Arc;

use rand_chacha::ChaCha8Rng;

use crate::recipe::Step;
use crate::transforms::spec::step_keys;
use crate::transforms::{AxisMap, DrawKey, Image, TransformError};

use super::sample::Sample;

/// The random stream a step draws from.
pub type StepRng = ChaCha8Rng;

/// What plan passes may do with an op.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Nothing special.
    Plain,
    /// A flip or quarter turn: [`Op::axis_move`] gives its draw, so runs of
    /// them compose into one gather (`compose_flips`).
    AxisMove,
    /// A crop: [`Op::crop_of`] cuts from a borrowed image, so a view's first
    /// crop reads the shared prepared sample (`crop_views_from_shared_sample`).
    Crop,
}

/// A transform with its parameters, ready to run.
pub trait Op: std::fmt::Debug + Send + Sync + Any {
    /// Transforms one key's image. `rng` is the step's stream, restarted for
    /// each key, so keys of the same shape get identical draws (MONAI's
    /// dictionary transforms); `is_label` says the key holds a label map
    /// (nearest interpolation).
    ///
    /// # Errors
    /// What went wrong (the caller adds the file and the step).
    fn apply(
        &self,
        img: &mut Image,
        rng: &mut StepRng,
        is_label: bool,
    ) -> Result<(), TransformError>;

    /// Transforms a whole sample: [`Op::apply`] on each of the step's keys.
    /// Ops that choose among nested steps or make several samples override it.
    ///
    /// # Errors
    /// As [`Op::apply`], or a step key missing from the sample.
    fn apply_sample(
        &self,
        step: &CompiledStep,
        mut sample: Sample,
        key: DrawKey,
        ctx: &Context,
    ) -> Result<Vec<Sample>, TransformError> {
        for k in &step.keys {
            let is_label = ctx.is_label(k);
            let Some(img) = sample.get_mut(k) else {
                return Err(TransformError::MissingKey { key: k.clone() });
            };
            self.apply(img, &mut key.for_transform(step.id).rng(), is_label)?;
        }
        Ok(vec![sample])
    }

    /// What passes may do with it.
    fn role(&self) -> Role {
        Role::Plain
    }

    /// For flips and quarter turns: the axis move drawn from `rng` (the
    /// `compose_flips` pass runs a run of them as one gather).
    fn axis_move(&self, _rng: &mut StepRng) -> Option<AxisMap> {
        None
    }

    /// For crops: the crop of a borrowed image, so a view's first crop reads
    /// the shared prepared sample instead of a copy of it (the
    /// `crop_views_from_shared_sample` pass). Same draws and result as
    /// [`Op::apply`] on a copy.
    fn crop_of(&self, _img: &Image, _rng: &mut StepRng) -> Option<Image> {
        None
    }

    /// The steps this op nests (`OneOf`, `RandomApply`), for passes that
    /// rewrite them.
    fn children(&self) -> &[CompiledStep] {
        &[]
    }

    /// The same op over rewritten nested steps (None: it nests nothing).
    fn with_children(&self, _children: Vec<CompiledStep>) -> Option<Box<dyn Op>> {
        None
    }

    /// The op as `Any`, for passes that recognise particular ops.
    fn as_any(&self) -> &dyn Any;
}

/// An [`Op`] with the keys it applies to and its draw number.
#[derive(Debug, Clone)]
pub struct CompiledStep {
    /// The transform's name.
    pub name: &'static str,
    /// The operation.
    pub op: Arc<dyn Op>,
    /// The keys it transforms.
    pub keys: Vec<String>,
    /// The `transform` field of its draw keys.
    pub id: u32,
}

impl CompiledStep {
    /// The step of a validated recipe step (its op was built by the compiler).
    pub fn new(step: &Step) -> CompiledStep {
        CompiledStep {
            name: step.spec.name,
            op: step.op.clone(),
            keys: step_keys(&step.params),
            id: step.id,
        }
    }

    /// The op as `T`, if it is one.
    pub fn op_as<T: Op>(&self) -> Option<&T> {
        self.op.as_any().downcast_ref::<T>()
    }
}

/// Which keys hold label maps (nearest interpolation).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Context {
    /// Label keys.
    pub label_keys: Vec<String>,
}

impl Context {
    /// Whether `key` holds a label map.
    pub fn is_label(&self, key: &str) -> bool {
        self.label_keys.iter().any(|k| k == key)
    }
}

/// Runs `steps` on `sample`; a step producing several samples (e.g.
/// `RandCropByPosNegLabel` with `num_samples > 1`) multiplies the rest.
///
/// # Errors
/// The failing step's name and why.
pub fn run_steps(
    steps: &[CompiledStep],
    sample: Sample,
    key: DrawKey,
    ctx: &Context,
) -> Result<Vec<Sample>, (String, TransformError)> {
    let mut current = vec![sample];
    for step in steps {
        let mut next = Vec::with_capacity(current.len());
        for s in current {
            next.extend(
                step.op
                    .apply_sample(step, s, key, ctx)
                    .map_err(|e| (step.name.to_string(), e))?,
            );
        }
        current = next;
    }
    Ok(current)
}

/// [`run_steps`] for nested steps: a failure names the nested step.
///
/// # Errors
/// [`TransformError::Nested`].
pub fn run_nested(
    steps: &[CompiledStep],
    sample: Sample,
    key: DrawKey,
    ctx: &Context,
) -> Result<Vec<Sample>, TransformError> {
    run_steps(steps, sample, key, ctx).map_err(|(step, e)| TransformError::Nested {
        step,
        source: Box::new(e),
    })
}

/// An empty image (to take another's place while it is moved).
pub(crate) fn empty_image() -> Image {
    Image {
        data: Vec::new(),
        shape: [0; 4],
        spacing: [1.0; 3],
        affine: crate::nifti::affine::IDENTITY,
    }
}
