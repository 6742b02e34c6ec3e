//! Data-parallel gradient averaging: every rank ends with the mean of all
//! ranks' gradients, so identical optimiser steps keep the replicas equal.

use candle_core::{DType, Var, backprop::GradStore};

use super::{BucketPlan, Collective, GradientSync};
use crate::Result;

/// The dtypes gradients may cross the ranks in: f32, or bf16 (half the bytes).
///
/// # Errors
/// Any other dtype.
pub(crate) fn check_wire(wire: DType) -> Result<()> {
    if matches!(wire, DType::F32 | DType::BF16) {
        Ok(())
    } else {
        Err(crate::ModelError::Config(format!(
            "gradients are reduced in f32 or bf16, not {wire:?}"
        )))
    }
}

/// Averages the gradients of `vars` over all ranks, after the backward, in
/// one all-reduce ([`GradientSync`] with a single bucket; the training step
/// uses the bucketed form that starts during the backward).
///
/// `vars` must be in the same order on every rank (the optimiser's sorted
/// names). A parameter without a gradient on some rank counts as zero
/// there; one without a gradient on every rank keeps none, so the optimiser
/// skips it as a single process would. Gradients travel and are reduced
/// in `wire` (f32, or bf16 for half the bytes, as DINOv2's backbone reduces
/// in 16 bits) and are returned in the parameter's dtype.
///
/// # Errors
/// A `wire` other than f32 or bf16; a failed collective.
pub fn average_gradients(
    grads: &mut GradStore,
    vars: &[&Var],
    comm: &dyn Collective,
    wire: DType,
) -> Result<()> {
    check_wire(wire)?;
    if comm.world_size() <= 1 || vars.is_empty() {
        return Ok(());
    }
    let plan = BucketPlan::single(vars.len());
    GradientSync::new(vars, &plan, comm, wire)?.finish(grads)?;
    Ok(())
}
