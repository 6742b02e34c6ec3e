//! A value computed by ordinary ops, recorded in the graph as one node over
//! three operands with a written-out backward, so that the graph keeps none
//! of the ops' intermediates (`Tensor::attach_op3_arc`, a dino3d patch of
//! candle). The nodes of `residual.rs` and `linear_bias.rs` are built so.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};

/// The backward of an attached node: the gradients of its three operands
/// given the output's, each `None` for an operand that needs none.
pub(super) trait Backward: Send + Sync + 'static {
    /// The node's name in candle's graph.
    const NAME: &'static str;

    /// The operands arrive detached: a gradient computed from a tracked
    /// tensor would carry a graph holding its temporaries (and the output's
    /// gradient) until the backward ends. `tracked` says which operands
    /// were in the graph.
    fn backward(
        &self,
        operands: [&Tensor; 3],
        tracked: [bool; 3],
        grad: &Tensor,
    ) -> Result<[Option<Tensor>; 3]>;
}

/// `composed(a, b, c)`, as one node whose backward is `backward` when an
/// operand is tracked; else the composed ops (which then keep nothing).
/// `composed` must be differentiable by `backward` and run the same on
/// detached operands, which is how the node's value is computed.
pub(super) fn attach<B: Backward>(
    [a, b, c]: [&Tensor; 3],
    composed: impl Fn(&Tensor, &Tensor, &Tensor) -> Result<Tensor>,
    backward: B,
) -> Result<Tensor> {
    if !(a.track_op() || b.track_op() || c.track_op()) {
        return composed(a, b, c);
    }
    let value = composed(&a.detach(), &b.detach(), &c.detach())?;
    a.attach_op3_arc(b, c, &value, Arc::new(Box::new(Node(backward))))
}

/// [`Backward`] as candle's custom op: a backward only (the forward value
/// is attached, never computed by the op).
struct Node<B>(B);

impl<B: Backward> CustomOp3 for Node<B> {
    fn name(&self) -> &'static str {
        B::NAME
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        candle_core::bail!("{}: the value is attached, not computed by the op", B::NAME)
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        c: &Tensor,
        _out: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let tracked = [a.track_op(), b.track_op(), c.track_op()];
        let [da, db, dc] =
            self.0
                .backward([&a.detach(), &b.detach(), &c.detach()], tracked, grad)?;
        Ok((da, db, dc))
    }
}
