//! Multi-head self-attention with a fused qkv projection.

use std::cell::Cell;

use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;

use crate::linear::Linear;

/// How `softmax(q kᵀ/√d) v` is computed (recipe key `train.attention`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AttentionKernel {
    /// Two matmuls around the fused softmax, the `T × T` probabilities
    /// stored for the backward (the default, every device).
    #[default]
    Composed,
    /// On CUDA f32 tensors with head dimension 64, when no attention map is
    /// asked for: `cuda::flash_attention`, which stores no `T × T` matrix;
    /// elsewhere the composed path.
    Fused,
}

impl AttentionKernel {
    /// Recipe names, in the order of the variants.
    pub const NAMES: [&'static str; 2] = ["composed", "fused"];

    /// Its recipe name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Composed => Self::NAMES[0],
            Self::Fused => Self::NAMES[1],
        }
    }

    /// Looks a kernel up by its recipe name.
    pub fn from_name(name: &str) -> Option<Self> {
        [Self::Composed, Self::Fused]
            .into_iter()
            .find(|k| k.name() == name)
    }
}

thread_local! {
    static KERNEL: Cell<AttentionKernel> = const { Cell::new(AttentionKernel::Composed) };
}

/// Restores the previous attention kernel when dropped.
#[derive(Debug)]
#[must_use = "the kernel holds only while the guard lives"]
pub struct AttentionKernelGuard {
    previous: AttentionKernel,
}

impl Drop for AttentionKernelGuard {
    fn drop(&mut self) {
        KERNEL.with(|k| k.set(self.previous));
    }
}

/// The kernel in force on this thread.
pub(crate) fn current_kernel() -> AttentionKernel {
    KERNEL.with(Cell::get)
}

/// Uses `kernel` on this thread until the guard is dropped (scoped and per
/// thread, as [`crate::precision::autocast`]).
pub fn use_attention_kernel(kernel: AttentionKernel) -> AttentionKernelGuard {
    let previous = KERNEL.with(|k| k.replace(kernel));
    AttentionKernelGuard { previous }
}

/// Whether the fused kernel takes attention over `groups` (batch × heads)
/// of `tokens` tokens with head dimension `head_dim` on `device` (its
/// operands f32), with no probabilities asked for.
#[cfg(feature = "cuda")]
fn fused_applies(
    device: &candle_core::Device,
    groups: usize,
    tokens: usize,
    head_dim: usize,
) -> bool {
    // Shapes past the kernel's grid take the composed path; any other
    // failure of the kernel is an error, not hidden by a fallback.
    current_kernel() == AttentionKernel::Fused
        && device.is_cuda()
        && crate::cuda::attention_fits(groups, tokens, head_dim)
}

#[cfg(not(feature = "cuda"))]
fn fused_applies(_: &candle_core::Device, _: usize, _: usize, _: usize) -> bool {
    false
}

/// The fused kernel's output when it applies to `q` (same shape for k, v).
#[cfg(feature = "cuda")]
fn fused(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> candle_core::Result<Option<Tensor>> {
    let (tokens, head_dim) = (
        q.dim(candle_core::D::Minus2)?,
        q.dim(candle_core::D::Minus1)?,
    );
    let groups = q.elem_count() / (tokens * head_dim).max(1);
    if q.dtype() != candle_core::DType::F32 || !fused_applies(q.device(), groups, tokens, head_dim)
    {
        return Ok(None);
    }
    crate::cuda::flash_attention(q, k, v, scale)
        .map(Some)
        .map_err(|e| candle_core::Error::Msg(e.to_string()))
}

#[cfg(not(feature = "cuda"))]
fn fused(_: &Tensor, _: &Tensor, _: &Tensor, _: f64) -> candle_core::Result<Option<Tensor>> {
    Ok(None)
}

/// `proj(softmax(q kᵀ / √d_head) v)`; names `qkv` and `proj` as in DINOv2.
#[derive(Debug, Clone)]
pub(crate) struct Attention {
    qkv: Linear,
    proj: Linear,
    num_heads: usize,
}

impl Attention {
    pub(crate) fn new(
        vb: VarBuilder,
        dim: usize,
        num_heads: usize,
        qkv_bias: bool,
    ) -> candle_core::Result<Self> {
        Ok(Self {
            qkv: Linear::new(vb.pp("qkv"), dim, 3 * dim, qkv_bias)?,
            proj: Linear::new(vb.pp("proj"), dim, dim, true)?,
            num_heads,
        })
    }

    /// `x (B, T, E)` → output `(B, T, E)` and, if `probs`, the attention
    /// probabilities `(B, heads, T, T)` (without them the fused kernel may
    /// run, see [`AttentionKernel`]).
    pub(crate) fn forward(
        &self,
        x: &Tensor,
        probs: bool,
    ) -> candle_core::Result<(Tensor, Option<Tensor>)> {
        let (b, t, e) = x.dims3()?;
        let h = self.num_heads;
        let hd = e / h;
        // Under bf16 autocast the composed path keeps q, k, v and the heads'
        // output in bf16 only, as autocast does (the fused kernel takes f32).
        let may_fuse = !probs && fused_applies(x.device(), b * h, t, hd);
        let bf16 = crate::precision::current() == crate::precision::Precision::Bf16 && !may_fuse;
        let qkv = if bf16 {
            self.qkv.forward_bf16(x)?
        } else {
            self.qkv.forward(x)?
        };
        // (B, T, 3, H, hd) → (3, B, H, T, hd)
        let qkv = qkv.reshape((b, t, 3, h, hd))?.permute((2, 0, 3, 1, 4))?;
        let q = qkv.get(0)?.contiguous()?;
        let k = qkv.get(1)?.contiguous()?;
        let v = qkv.get(2)?.contiguous()?;
        let scale = (hd as f64).powf(-0.5);
        let fused_out = if probs {
            None
        } else {
            fused(&q, &k, &v, scale)?
        };
        let (out, attn) = match fused_out {
            Some(out) => (out, None),
            None => {
                let logits = crate::precision::matmul(&q, &k.t()?)?;
                // The 1/√d scale is folded into the fused softmax (no pass over q).
                let attn = crate::fused::softmax_last_dim(&logits, scale)?;
                let out = if bf16 {
                    crate::precision::matmul_bf16(&attn, &v)?
                } else {
                    crate::precision::matmul(&attn, &v)?
                };
                (out, Some(attn))
            }
        };
        let out = out.transpose(1, 2)?.contiguous()?.reshape((b, t, e))?;
        Ok((self.proj.forward(&out)?, attn.filter(|_| probs)))
    }
}
