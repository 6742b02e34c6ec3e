//! The AdamW update as one multithreaded pass over each f32 parameter on the
//! CPU, in place: the parameter and both moments are rewritten where they
//! are stored. The tensor path does ~10 tensor operations, each allocating
//! and walking the whole parameter on one thread (AdamW took ~2 s of a
//! 12 s ViT-S step). An earlier fused pass still allocated three new
//! tensors and copied the parameter back. Same arithmetic, in the same
//! order and precision, as the tensor path in `adamw.rs`, which still serves
//! other devices and dtypes.

use std::cell::RefCell;

use candle_core::{CpuStorage, InplaceOp1, Layout, Storage, Tensor};
use rayon::prelude::*;

use crate::Result;

/// The scalars of one update.
#[derive(Debug, Clone, Copy)]
pub(super) struct Scalars {
    pub b1: f64,
    pub b2: f64,
    pub eps: f64,
    pub lr: f64,
    pub wd: f64,
    pub bc1: f64,
    pub bc2_sqrt: f64,
}

impl Scalars {
    /// The f32 factors of the update, `[b1, 1 − b1, b2, 1 − b2, √bc2, eps,
    /// lr/bc1, 1 − lr·wd]`, each computed in f64 and rounded once (the CPU
    /// pass and its CUDA twin use these same values).
    fn factors(&self) -> [f32; 8] {
        [
            self.b1 as f32,
            (1.0 - self.b1) as f32,
            self.b2 as f32,
            (1.0 - self.b2) as f32,
            self.bc2_sqrt as f32,
            self.eps as f32,
            (self.lr / self.bc1) as f32,
            (1.0 - self.lr * self.wd) as f32,
        ]
    }
}

/// Elements per parallel task.
const CHUNK: usize = 1 << 14;

/// Runs `f` on the contiguous f32 CPU data of `t`, or returns `None`.
fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Option<R> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(CpuStorage::F32(data)) = &*storage else {
        return None;
    };
    let (start, end) = layout.contiguous_offsets()?;
    Some(f(&data[start..end]))
}

/// Whether `t` is a contiguous f32 CPU tensor of `n` elements.
fn is_cpu_f32(t: &Tensor, n: usize) -> bool {
    t.device().is_cpu()
        && t.dtype() == candle_core::DType::F32
        && t.is_contiguous()
        && t.elem_count() == n
}

/// Runs a closure on a tensor's own f32 storage, mutably, through candle's
/// in-place op hook (which holds the storage's write lock meanwhile).
struct WithMutF32<F>(RefCell<Option<F>>);

impl<F: FnOnce(&mut [f32]) -> candle_core::Result<()>> InplaceOp1 for WithMutF32<F> {
    fn name(&self) -> &'static str {
        "with-mut-f32"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("with-mut-f32: an f32 tensor only");
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("with-mut-f32: a contiguous tensor only");
        };
        let f = self.0.borrow_mut().take().expect("called once");
        f(&mut data[start..end])
    }
}

fn with_mut_f32(
    t: &Tensor,
    f: impl FnOnce(&mut [f32]) -> candle_core::Result<()>,
) -> candle_core::Result<()> {
    t.inplace_op1(&WithMutF32(RefCell::new(Some(f))))
}

/// Updates `param`, `exp_avg` and `exp_avg_sq` in place from `grad` when
/// all four are contiguous CPU f32 tensors of one size; returns `false`
/// (touching nothing) otherwise, and the caller takes the tensor path. No
/// two of the four may share storage: the optimiser allocates its moments
/// and copies what it loads or hands out, and a gradient is a tensor of its
/// own (each storage is locked for the pass, the three updated ones for
/// writing).
pub(super) fn adamw_in_place(
    p: &Tensor,
    g: &Tensor,
    m: &Tensor,
    v: &Tensor,
    k: Scalars,
) -> Result<bool> {
    let n = p.elem_count();
    #[cfg(feature = "cuda")]
    if on_gpu::adamw_in_place(p, g, m, v, k)? {
        return Ok(true);
    }
    if ![p, g, m, v].iter().all(|t| is_cpu_f32(t, n)) {
        return Ok(false);
    }
    let [b1, one_b1, b2, one_b2, bc2_sqrt, eps, step, decay] = k.factors();
    let update = |p: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32]| {
        p.par_chunks_mut(CHUNK)
            .zip(m.par_chunks_mut(CHUNK))
            .zip(v.par_chunks_mut(CHUNK))
            .zip(g.par_chunks(CHUNK))
            .for_each(|(((p, m), v), g)| {
                for (((p, m), v), &g) in p.iter_mut().zip(m).zip(v).zip(g) {
                    let mi = *m * b1 + g * one_b1;
                    let vi = *v * b2 + g * g * one_b2;
                    let denom = vi.sqrt() / bc2_sqrt + eps;
                    *m = mi;
                    *v = vi;
                    *p = *p * decay - mi / denom * step;
                }
            });
    };
    with_mut_f32(p, |ps| {
        with_mut_f32(m, |ms| {
            with_mut_f32(v, |vs| {
                with_f32(g, |gs| update(ps, ms, vs, gs))
                    .ok_or_else(|| candle_core::Error::Msg("adamw: gradient not f32".into()))
            })
        })
    })?;
    Ok(true)
}

/// The same update on CUDA tensors (feature `cuda`): `adamw.cu`, in place on
/// the tensors' own buffers, bit-identical to the CPU pass.
#[cfg(feature = "cuda")]
mod on_gpu {
    use std::cell::RefCell;

    use candle_core::{CpuStorage, CudaStorage, InplaceOp1, Layout, Storage, Tensor};
    use cudarc::driver::CudaViewMut;

    use super::Scalars;
    use crate::Result;
    use crate::cuda::GpuContext;
    use crate::cuda::adamw::{AdamWFactors, adamw_update_view};
    use crate::cuda::storage::{gpu_of, to_candle};

    fn is_cuda_f32(t: &Tensor, like: &Tensor) -> bool {
        t.device().is_cuda()
            && t.device().same_device(like.device())
            && t.dtype() == candle_core::DType::F32
            && t.is_contiguous()
            && t.elem_count() == like.elem_count()
    }

    type Body<'f> = dyn for<'a, 'b> FnOnce(&'a mut CudaViewMut<'b, f32>, &'a GpuContext) -> candle_core::Result<()>
        + 'f;

    /// A closure on a CUDA tensor's own f32 buffer, mutably, through
    /// candle's in-place hook (the storage's write lock is held meanwhile).
    struct WithMutCuda<'f>(RefCell<Option<Box<Body<'f>>>>);

    impl InplaceOp1 for WithMutCuda<'_> {
        fn name(&self) -> &'static str {
            "with-mut-cuda-f32"
        }

        fn cpu_fwd(&self, _: &mut CpuStorage, _: &Layout) -> candle_core::Result<()> {
            candle_core::bail!("with-mut-cuda-f32: CUDA tensors only")
        }

        fn cuda_fwd(&self, storage: &mut CudaStorage, layout: &Layout) -> candle_core::Result<()> {
            let Some((start, end)) = layout.contiguous_offsets() else {
                candle_core::bail!("with-mut-cuda-f32: a contiguous tensor only");
            };
            let gpu = gpu_of(storage)?;
            let f = self.0.borrow_mut().take().expect("called once");
            let mut view = storage.as_cuda_slice_mut::<f32>()?.slice_mut(start..end);
            f(&mut view, &gpu)
        }
    }

    fn with_mut_cuda<'f>(
        t: &Tensor,
        f: impl for<'a, 'b> FnOnce(
            &'a mut CudaViewMut<'b, f32>,
            &'a GpuContext,
        ) -> candle_core::Result<()>
        + 'f,
    ) -> candle_core::Result<()> {
        t.inplace_op1(&WithMutCuda(RefCell::new(Some(Box::new(f)))))
    }

    /// [`super::adamw_in_place`] for four contiguous f32 tensors on one CUDA
    /// device; `false` (nothing touched) for anything else.
    pub(super) fn adamw_in_place(
        p: &Tensor,
        g: &Tensor,
        m: &Tensor,
        v: &Tensor,
        k: Scalars,
    ) -> Result<bool> {
        if ![p, g, m, v].iter().all(|t| is_cuda_f32(t, p)) {
            return Ok(false);
        }
        let [b1, one_b1, b2, one_b2, bc2_sqrt, eps, step, decay] = k.factors();
        let factors = AdamWFactors {
            b1,
            one_b1,
            b2,
            one_b2,
            bc2_sqrt,
            eps,
            step,
            decay,
        };
        with_mut_cuda(p, |ps, gpu| {
            with_mut_cuda(m, |ms, _| {
                with_mut_cuda(v, |vs, _| {
                    let (gs, gl) = g.storage_and_layout();
                    let Storage::Cuda(gc) = &*gs else {
                        candle_core::bail!("adamw: the gradient is not on the GPU");
                    };
                    let Some((a, b)) = gl.contiguous_offsets() else {
                        candle_core::bail!("adamw: a non-contiguous gradient");
                    };
                    let gview = gc.as_cuda_slice::<f32>()?.slice(a..b);
                    adamw_update_view(gpu, ps, ms, vs, &gview, factors).map_err(to_candle)
                })
            })
        })?;
        Ok(true)
    }
}
