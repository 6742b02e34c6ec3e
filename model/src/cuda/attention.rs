//! Attention without a stored score matrix on the GPU (`attention.cu`,
//! head dimension 64), as a candle op with its backward: the reference is
//! [`crate::kernels_ref::attention_fwd`] / [`crate::kernels_ref::attention_bwd`].
//!
//! Not yet used by the model: [`flash_attention`] is held to candle's
//! composed attention by `tests/cuda_kernels.rs` first (on a GPU), then
//! measured against it, before `Attention` takes it.

use candle_core::{CpuStorage, CudaStorage, CustomOp2, CustomOp3, Layout, Shape, Tensor};
use cudarc::driver::{CudaSlice, CudaView, LaunchConfig, PushKernelArg};

use super::context::{GpuContext, cuda_err};
use super::sources::ATTENTION;
use super::storage::{gpu_of, view, wrap};
use crate::{ModelError, Result};

/// The kernels' head dimension.
pub const HEAD_DIM: usize = 64;
/// Most batch x head groups one call takes (the grid's y axis).
pub const MAX_GROUPS: usize = 65_535;

/// Whether the kernel takes `groups` (batch × heads) of `tokens` tokens with
/// head dimension `head_dim`: the limits `flash_attention` checks.
pub fn fits(groups: usize, tokens: usize, head_dim: usize) -> bool {
    head_dim == HEAD_DIM && groups <= MAX_GROUPS && i32::try_from(tokens).is_ok()
}
/// Rows (warps) per block, as `D3_WARPS` in `attention.cu`.
const WARPS: usize = 8;

/// `softmax(scale·q kᵀ) v` over the last two axes of CUDA f32 tensors
/// `(…, T, 64)`, without the `T × T` matrix; differentiable in q, k and v.
///
/// # Errors
/// Another device, dtype or head dimension; mismatched shapes.
pub fn flash_attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    let dims = q.dims();
    if dims.len() < 2 || dims[dims.len() - 1] != HEAD_DIM || k.dims() != dims || v.dims() != dims {
        return Err(ModelError::Input(format!(
            "flash_attention: q {:?}, k {:?}, v {:?} must be one shape (…, T, {HEAD_DIM})",
            dims,
            k.dims(),
            v.dims()
        )));
    }
    let t = dims[dims.len() - 2];
    let groups = q.elem_count() / (t * HEAD_DIM).max(1);
    let op = Flash {
        groups,
        tokens: t,
        scale: scale as f32,
    };
    let packed = q
        .contiguous()?
        .apply_op3(&k.contiguous()?, &v.contiguous()?, op)?;
    Ok(packed.narrow(0, 0, q.elem_count())?.reshape(dims)?)
}

/// The forward: `[o | lse]` packed in one output.
#[derive(Debug, Clone, Copy)]
struct Flash {
    groups: usize,
    tokens: usize,
    scale: f32,
}

impl Flash {
    fn len(&self) -> usize {
        self.groups * self.tokens * HEAD_DIM
    }

    fn grid(&self) -> Result<LaunchConfig> {
        let (x, y) = (self.tokens.div_ceil(WARPS), self.groups);
        // The grid's y axis holds at most 65,535 blocks.
        let (Ok(x), Ok(y)) = (u32::try_from(x), u32::try_from(y)) else {
            return Err(ModelError::Input("flash_attention: too many rows".into()));
        };
        if y as usize > MAX_GROUPS {
            return Err(ModelError::Input(format!(
                "flash_attention: {y} batch x head groups, at most {MAX_GROUPS}"
            )));
        }
        Ok(LaunchConfig {
            grid_dim: (x.max(1), y.max(1), 1),
            block_dim: (32 * WARPS as u32, 1, 1),
            shared_mem_bytes: 0,
        })
    }

    fn forward(
        &self,
        gpu: &GpuContext,
        q: &CudaView<'_, f32>,
        k: &CudaView<'_, f32>,
        v: &CudaView<'_, f32>,
    ) -> Result<CudaSlice<f32>> {
        let n = self.len();
        let mut out = gpu
            .stream()
            .alloc_zeros::<f32>((n + self.groups * self.tokens).max(1))
            .map_err(cuda_err("attention alloc"))?;
        if n == 0 {
            return Ok(out);
        }
        let t =
            i32::try_from(self.tokens).map_err(|_| ModelError::Input("too many tokens".into()))?;
        let (mut o, mut lse) = out.split_at_mut(n);
        let f = gpu.function(ATTENTION, "attn_fwd_f32")?;
        let mut launch = gpu.stream().launch_builder(&f);
        launch
            .arg(q)
            .arg(k)
            .arg(v)
            .arg(&mut o)
            .arg(&mut lse)
            .arg(&t)
            .arg(&self.scale);
        // SAFETY: matches `attn_fwd_f32(const float*, const float*, const
        // float*, float*, float*, int, float)`; q, k, v and o hold G·T·64
        // f32, lse G·T; the grid covers (T/8, G) and rows past T only load.
        unsafe { launch.launch(self.grid()?) }.map_err(cuda_err("launch attn_fwd_f32"))?;
        Ok(out)
    }

    /// `[dq | dk | dv]` from `[q | k | v]`, `[o | lse]` and `dO`.
    #[allow(clippy::too_many_arguments)]
    fn backward(
        &self,
        gpu: &GpuContext,
        q: &CudaView<'_, f32>,
        k: &CudaView<'_, f32>,
        v: &CudaView<'_, f32>,
        o: &CudaView<'_, f32>,
        lse: &CudaView<'_, f32>,
        d_out: &CudaView<'_, f32>,
    ) -> Result<CudaSlice<f32>> {
        let n = self.len();
        let stream = gpu.stream();
        let mut grads = stream
            .alloc_zeros::<f32>((3 * n).max(1))
            .map_err(cuda_err("attention alloc"))?;
        if n == 0 {
            return Ok(grads);
        }
        let t =
            i32::try_from(self.tokens).map_err(|_| ModelError::Input("too many tokens".into()))?;
        let mut dd = stream
            .alloc_zeros::<f32>(self.groups * self.tokens)
            .map_err(cuda_err("attention alloc"))?;
        let cfg = self.grid()?;
        {
            let f = gpu.function(ATTENTION, "attn_bwd_dot_f32")?;
            let mut launch = stream.launch_builder(&f);
            launch.arg(d_out).arg(o).arg(&mut dd).arg(&t);
            // SAFETY: matches `attn_bwd_dot_f32(const float*, const float*,
            // float*, int)`; dO and o hold G·T·64 f32, dd G·T.
            unsafe { launch.launch(cfg) }.map_err(cuda_err("launch attn_bwd_dot_f32"))?;
        }
        let (mut dq, mut rest) = grads.split_at_mut(n);
        let (mut dk, mut dv) = rest.split_at_mut(n);
        {
            let f = gpu.function(ATTENTION, "attn_bwd_dq_f32")?;
            let mut launch = stream.launch_builder(&f);
            launch
                .arg(q)
                .arg(k)
                .arg(v)
                .arg(d_out)
                .arg(lse)
                .arg(&dd)
                .arg(&mut dq)
                .arg(&t)
                .arg(&self.scale);
            // SAFETY: matches `attn_bwd_dq_f32(const float* ×6, float*, int,
            // float)`; the (G, T, 64) operands hold G·T·64 f32, lse and dd G·T.
            unsafe { launch.launch(cfg) }.map_err(cuda_err("launch attn_bwd_dq_f32"))?;
        }
        {
            let f = gpu.function(ATTENTION, "attn_bwd_dkv_f32")?;
            let mut launch = stream.launch_builder(&f);
            launch
                .arg(q)
                .arg(k)
                .arg(v)
                .arg(d_out)
                .arg(lse)
                .arg(&dd)
                .arg(&mut dk)
                .arg(&mut dv)
                .arg(&t)
                .arg(&self.scale);
            // SAFETY: matches `attn_bwd_dkv_f32(const float* ×6, float*,
            // float*, int, float)`; sizes as above, one warp per key row.
            unsafe { launch.launch(cfg) }.map_err(cuda_err("launch attn_bwd_dkv_f32"))?;
        }
        Ok(grads)
    }
}

impl CustomOp3 for Flash {
    fn name(&self) -> &'static str {
        "flash-attention"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("flash-attention: CUDA tensors only")
    }

    fn cuda_fwd(
        &self,
        qs: &CudaStorage,
        ql: &Layout,
        ks: &CudaStorage,
        kl: &Layout,
        vs: &CudaStorage,
        vl: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let gpu = gpu_of(qs)?;
        let out = self.forward(&gpu, &view(qs, ql)?, &view(ks, kl)?, &view(vs, vl)?);
        Ok((
            wrap(out, qs)?,
            Shape::from(self.len() + self.groups * self.tokens),
        ))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let n = self.len();
        // Two packed operands (a custom op takes at most three): [q | k | v]
        // and [o | lse | dO].
        let qkv = Tensor::cat(&[q.flatten_all()?, k.flatten_all()?, v.flatten_all()?], 0)?;
        let d_out = grad.narrow(0, 0, n)?;
        let saved = Tensor::cat(&[res.detach(), d_out.contiguous()?], 0)?;
        let grads = qkv.apply_op2_no_bwd(&saved, &FlashGrad(*self))?;
        let part = |i: usize, like: &Tensor| grads.narrow(0, i * n, n)?.reshape(like.shape());
        Ok((Some(part(0, q)?), Some(part(1, k)?), Some(part(2, v)?)))
    }
}

/// The backward: `[q | k | v]`, `[o | lse | dO]` → `[dq | dk | dv]`.
struct FlashGrad(Flash);

impl CustomOp2 for FlashGrad {
    fn name(&self) -> &'static str {
        "flash-attention-grad"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("flash-attention-grad: CUDA tensors only")
    }

    fn cuda_fwd(
        &self,
        a: &CudaStorage,
        al: &Layout,
        b: &CudaStorage,
        bl: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let f = self.0;
        let (n, rows) = (f.len(), f.groups * f.tokens);
        let gpu = gpu_of(a)?;
        let (qkv, saved) = (view(a, al)?, view(b, bl)?);
        let out = f.backward(
            &gpu,
            &qkv.slice(..n),
            &qkv.slice(n..2 * n),
            &qkv.slice(2 * n..3 * n),
            &saved.slice(..n),
            &saved.slice(n..n + rows),
            &saved.slice(n + rows..2 * n + rows),
        );
        Ok((wrap(out, a)?, Shape::from(3 * n)))
    }
}
