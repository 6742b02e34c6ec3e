//! Data-parallel gradient averaging: every rank ends with the mean of all
//! ranks' gradients, so identical optimiser steps keep the replicas equal.

use candle_core::{DType, Tensor, Var, backprop::GradStore};

use super::{Collective, ReduceOp};
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

/// Averages the gradients of `vars` over all ranks, in one all-reduce (one
/// bucket: at this crate's sizes the latency of many small calls dominates).
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
    let mut present = Vec::with_capacity(vars.len());
    let mut parts = Vec::with_capacity(vars.len());
    for v in vars {
        match grads.get(v.as_tensor()) {
            Some(g) => {
                present.push(1f32);
                parts.push(g.to_dtype(wire)?.flatten_all()?);
            }
            None => {
                present.push(0.0);
                parts.push(Tensor::zeros(v.elem_count(), wire, v.device())?);
            }
        }
    }
    // Which parameters have a gradient anywhere; then the gradients, as one
    // bucket on the parameters' device (NCCL reduces it there).
    comm.all_reduce_f32(&mut present, ReduceOp::Sum)?;
    let bucket = comm.all_reduce_tensor(&Tensor::cat(&parts, 0)?, ReduceOp::Mean)?;
    let mut at = 0;
    for (v, &anywhere) in vars.iter().zip(&present) {
        let n = v.elem_count();
        if anywhere > 0.0 {
            let g = bucket
                .narrow(0, at, n)?
                .reshape(v.dims())?
                .to_dtype(v.dtype())?;
            grads.insert(v.as_tensor(), g);
        }
        at += n;
    }
    Ok(())
}
