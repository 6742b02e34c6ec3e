//! Fused CPU kernels with hand-written backward passes for the ViT's
//! elementwise layers: LayerNorm, softmax, exact GELU, the heads' weight
//! normalisation and the DINO/iBOT cross terms; and, as single graph nodes
//! on any device (composed ops on detached inputs, a written-out backward),
//! LayerScale with its residual add (`residual.rs`) and a linear layer's
//! product with its bias add (`linear_bias.rs`), so that the graph keeps
//! none of their intermediates (`attached.rs`).
//!
//! candle composes these from primitive ops (LayerNorm and softmax because its
//! fused kernels have no backward, GELU's backward always), and every primitive
//! is a full pass over the tensor into a freshly allocated output: about ten
//! passes for a LayerNorm forward, a dozen for a GELU backward. Here each is
//! one row-parallel pass forward and one backward.
//!
//! Each row is computed by one thread with a fixed order of operations, and the
//! only cross-row reductions (LayerNorm's weight and bias gradients) sum fixed
//! blocks of rows in block order, so results do not depend on the thread count.
//! The ops run on CPU tensors of f32 or f64; with the `cuda` feature, GELU,
//! softmax and LayerNorm also run on CUDA f32 tensors through their GPU
//! twins (`on_gpu.rs`, kernels in `cuda/fused.cu`). Anything else (other
//! devices, other dtypes) takes candle's composed, differentiable path.

mod attached;
mod cross_terms;
mod fast_math;
mod gelu;
mod layer_norm;
mod linear_bias;
#[cfg(feature = "cuda")]
mod on_gpu;
mod residual;
mod softmax;
mod weight_norm;

pub(crate) use cross_terms::cross_terms;
pub(crate) use gelu::gelu_erf;
pub(crate) use layer_norm::layer_norm;
pub(crate) use linear_bias::{Product, linear_bias};
pub(crate) use residual::add_scaled_branch;
pub(crate) use softmax::softmax_last_dim;
pub(crate) use weight_norm::weight_norm;

use candle_core::{CpuStorage, DType, Layout, Storage, Tensor, WithDType};

/// The float types the fused kernels run on.
pub(crate) trait Float: WithDType {
    fn exp(self) -> Self;
    /// `exp` that inlines into a vectorised loop, for loops whose other
    /// calls (GELU's erf) are inline too.
    fn exp_inline(self) -> Self;
    fn erf(self) -> Self;
}

impl Float for f32 {
    fn exp(self) -> Self {
        // libm's scalar expf: as fast as the 4-lane SSE2 `exp_f32` in the
        // softmax and cross-term loops (measured), and correctly rounded
        // more often.
        f32::exp(self)
    }
    #[inline(always)]
    fn exp_inline(self) -> Self {
        fast_math::exp_f32(self)
    }
    #[inline(always)]
    fn erf(self) -> Self {
        fast_math::erf_f32(self)
    }
}

impl Float for f64 {
    fn exp(self) -> Self {
        f64::exp(self)
    }
    fn exp_inline(self) -> Self {
        f64::exp(self)
    }
    fn erf(self) -> Self {
        candle_core::cpu::erf::erf_f64(self)
    }
}

/// Whether `t` can take the fused CPU path.
fn fusable(t: &Tensor) -> bool {
    t.device().is_cpu() && matches!(t.dtype(), DType::F32 | DType::F64)
}

/// Whether `t` can take the fused CPU path or (feature `cuda`; GELU,
/// softmax and LayerNorm only) their CUDA twins.
fn fusable_anywhere(t: &Tensor) -> bool {
    #[cfg(feature = "cuda")]
    if on_gpu::fusable_on_gpu(t) {
        return true;
    }
    fusable(t)
}

/// The elements of a contiguous CPU storage under `layout`.
fn cpu_rows<'a, T: WithDType>(s: &'a CpuStorage, layout: &Layout) -> candle_core::Result<&'a [T]> {
    let Some((a, b)) = layout.contiguous_offsets() else {
        candle_core::bail!("fused op: non-contiguous input");
    };
    Ok(&T::cpu_storage_as_slice(s)?[a..b])
}

/// [`cpu_rows`] of a tensor's storage (for the backward passes, which get
/// tensors rather than storages).
fn cpu_slice<'a, T: WithDType>(s: &'a Storage, layout: &Layout) -> candle_core::Result<&'a [T]> {
    let Storage::Cpu(cpu) = s else {
        candle_core::bail!("fused op: CPU tensors only");
    };
    cpu_rows(cpu, layout)
}

/// Σ f(aᵢ, bᵢ, cᵢ) over equal-length rows in f64, with eight interleaved
/// partial sums: a fixed order (the same on every thread) that the compiler
/// can vectorise.
#[inline]
fn sum3_f64<T: WithDType>(a: &[T], b: &[T], c: &[T], f: impl Fn(T, T, T) -> f64) -> f64 {
    let n = a.len();
    let (b, c) = (&b[..n], &c[..n]);
    let mut acc = [0.0f64; 8];
    let body = n - n % 8;
    for ((xa, xb), xc) in a[..body]
        .chunks_exact(8)
        .zip(b[..body].chunks_exact(8))
        .zip(c[..body].chunks_exact(8))
    {
        for j in 0..8 {
            acc[j] += f(xa[j], xb[j], xc[j]);
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for i in body..n {
        s += f(a[i], b[i], c[i]);
    }
    s
}

/// Σ f(aᵢ) over a row in f64 (see [`sum3_f64`]).
#[inline]
fn sum_f64<T: WithDType>(a: &[T], f: impl Fn(T) -> f64) -> f64 {
    sum3_f64(a, a, a, |v, _, _| f(v))
}

/// Asserts that `run` gives the same bits on a 1-thread and a 4-thread rayon
/// pool (the fused ops' determinism promise).
#[cfg(test)]
pub(crate) fn assert_same_bits_on_1_and_4_threads(run: impl Fn() -> Vec<Tensor> + Sync) {
    let on = |threads: usize| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("a rayon pool")
            .install(|| {
                run()
                    .iter()
                    .map(|t| {
                        let v = t.flatten_all().expect("flatten");
                        v.to_dtype(DType::F64)
                            .and_then(|v| v.to_vec1::<f64>())
                            .expect("values")
                            .iter()
                            .map(|x| x.to_bits())
                            .collect::<Vec<u64>>()
                    })
                    .collect::<Vec<_>>()
            })
    };
    assert_eq!(on(1), on(4), "results differ between 1 and 4 threads");
}
