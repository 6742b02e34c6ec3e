//! `OneOf` and `RandomApply`: steps that hold other steps under
//! `transforms:` and choose whether or which of them run (MONAI's
//! compositions; each draws once per sample from its own stream).

use rand::Rng;

use super::error::TransformError;
use super::image::Image;
use super::rng::DrawKey;
use crate::exec::Sample;
use crate::exec::op::{CompiledStep, Context, Op, StepRng, run_nested};
use crate::transforms::spec::same_size;
use crate::transforms::spec::{Args, ParamDefault, ParamError, ParamKind, TransformSpec, param};

/// `OneOf`: apply one nested step, chosen with probability proportional to
/// its weight.
#[derive(Debug, Clone)]
pub struct OneOf {
    /// Cumulative weights, normalised to end at 1.
    pub cumulative: Vec<f64>,
    /// The alternatives.
    pub children: Vec<CompiledStep>,
}

impl Op for OneOf {
    fn apply(&self, _: &mut Image, _: &mut StepRng, _: bool) -> Result<(), TransformError> {
        // Never called per key: `apply_sample` runs the chosen step.
        Ok(())
    }

    fn apply_sample(
        &self,
        step: &CompiledStep,
        sample: Sample,
        key: DrawKey,
        ctx: &Context,
    ) -> Result<Vec<Sample>, TransformError> {
        let u = key.for_transform(step.id).rng().random::<f64>();
        let pick = self
            .cumulative
            .iter()
            .position(|&c| u < c)
            .unwrap_or(self.children.len() - 1);
        run_nested(&self.children[pick..=pick], sample, key, ctx)
    }

    fn children(&self) -> &[CompiledStep] {
        &self.children
    }

    fn with_children(&self, children: Vec<CompiledStep>) -> Option<Box<dyn Op>> {
        Some(Box::new(OneOf {
            cumulative: self.cumulative.clone(),
            children,
        }))
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// `RandomApply`: apply all nested steps in order, or none.
#[derive(Debug, Clone)]
pub struct RandomApply {
    /// Probability.
    pub prob: f64,
    /// The steps.
    pub children: Vec<CompiledStep>,
}

impl Op for RandomApply {
    fn apply(&self, _: &mut Image, _: &mut StepRng, _: bool) -> Result<(), TransformError> {
        // Never called per key: `apply_sample` runs the nested steps.
        Ok(())
    }

    fn apply_sample(
        &self,
        step: &CompiledStep,
        sample: Sample,
        key: DrawKey,
        ctx: &Context,
    ) -> Result<Vec<Sample>, TransformError> {
        if key.for_transform(step.id).rng().random::<f64>() >= self.prob {
            return Ok(vec![sample]);
        }
        run_nested(&self.children, sample, key, ctx)
    }

    fn children(&self) -> &[CompiledStep] {
        &self.children
    }

    fn with_children(&self, children: Vec<CompiledStep>) -> Option<Box<dyn Op>> {
        Some(Box::new(RandomApply {
            prob: self.prob,
            children,
        }))
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// The recipe's `OneOf`.
pub const ONE_OF: TransformSpec = TransformSpec {
    name: "OneOf",
    is_random: true,
    params: &[param("weights", ParamKind::Weights, ParamDefault::Absent)],
    summary: "apply one of `transforms`, chosen with probability proportional to weights",
    check: None,
    nests: true,
    output_size: same_size,
    build: |a: &Args<'_>| {
        let n = a.n_children();
        let weights = a.numbers("weights")?.unwrap_or(vec![1.0; n]);
        if weights.len() != n || n == 0 {
            return Err(ParamError::Length {
                name: "weights".into(),
                want: n,
                got: weights.len(),
            });
        }
        let total: f64 = weights.iter().sum();
        let cumulative = weights
            .iter()
            .scan(0.0, |acc, w| {
                *acc += w / total;
                Some(*acc)
            })
            .collect();
        Ok(Box::new(OneOf {
            cumulative,
            children: a.children(),
        }))
    },
};

/// The recipe's `RandomApply`.
pub const RANDOM_APPLY: TransformSpec = TransformSpec {
    name: "RandomApply",
    is_random: true,
    params: &[param(
        "prob",
        ParamKind::Float { min: 0.0, max: 1.0 },
        ParamDefault::Num(0.5),
    )],
    summary: "with probability prob, apply all of `transforms` in order",
    check: None,
    nests: true,
    output_size: same_size,
    build: |a: &Args<'_>| {
        Ok(Box::new(RandomApply {
            prob: a.num("prob")?,
            children: a.children(),
        }))
    },
};
