//! 3-D convolutions for the segmentation decoders. candle has no conv3d: the
//! stride-1 "same" convolution is a custom op (im2col + matmul, tiled along
//! depth, with its own backward pass), the ×2 transposed convolution a
//! matmul and a reshuffle.
//!
//! Layout `(B, C, D, H, W)`; weights `(out, in, k, k, k)` as PyTorch's
//! `Conv3d`, so MONAI/3DINO state dicts map by name.

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Module, Shape, Tensor};

use super::im2col::{COL_BUDGET, conv3d_cpu, conv3d_kernel_grad};
use candle_nn::{Init, VarBuilder};

/// `Conv3d(in, out, k, stride 1, padding k/2)`, optional bias.
#[derive(Debug, Clone)]
pub struct Conv3d {
    weight: Tensor,
    bias: Option<Tensor>,
    kernel: usize,
}

impl Conv3d {
    /// Creates (or loads) `weight (out, in, k, k, k)` and `bias (out)` under
    /// `vb`. `kernel` must be odd (same-size output, as MONAI pads k/2).
    ///
    /// # Errors
    /// An even kernel; a failed variable lookup.
    pub fn new(
        vb: VarBuilder,
        in_ch: usize,
        out_ch: usize,
        kernel: usize,
        bias: bool,
    ) -> candle_core::Result<Conv3d> {
        if kernel.is_multiple_of(2) {
            candle_core::bail!("Conv3d: kernel {kernel} must be odd");
        }
        // PyTorch's default: kaiming-uniform(a = √5) = U(±1/√fan_in).
        let fan_in = (in_ch * kernel.pow(3)) as f64;
        let bound = 1.0 / fan_in.sqrt();
        let init = Init::Uniform {
            lo: -bound,
            up: bound,
        };
        let weight = vb.get_with_hints((out_ch, in_ch, kernel, kernel, kernel), "weight", init)?;
        let bias = if bias {
            Some(vb.get_with_hints(out_ch, "bias", init)?)
        } else {
            None
        };
        Ok(Conv3d {
            weight,
            bias,
            kernel,
        })
    }
}

impl Module for Conv3d {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let y = conv3d_same(x, &self.weight, self.kernel)?;
        match &self.bias {
            Some(b) => y.broadcast_add(&b.reshape((1, (), 1, 1, 1))?),
            None => Ok(y),
        }
    }
}

/// Stride-1, zero-padded ("same") 3-D convolution of `x (B, C, D, H, W)` with
/// `w (O, C, k, k, k)`, `k` odd, differentiable in both (CPU, f32 or f64).
///
/// A custom op: the forward pass is im2col + matmul ([`super::im2col`]); the
/// backward pass is written out too, because candle's conv2d backward goes
/// through its CPU `conv_transpose2d`, a direct loop far slower than the
/// forward. The input gradient is the same convolution of the output
/// gradient with the kernel flipped in space and its channels swapped; the
/// kernel gradient is the output gradient times the column matrix.
///
/// # Errors
/// Shape mismatches; devices other than the CPU.
pub fn conv3d_same(x: &Tensor, w: &Tensor, k: usize) -> candle_core::Result<Tensor> {
    let (_, c, ..) = x.dims5()?;
    let (_, wc, k0, k1, k2) = w.dims5()?;
    if wc != c || [k0, k1, k2] != [k; 3] || k.is_multiple_of(2) {
        candle_core::bail!(
            "conv3d: input with {c} channels, kernel {:?} (odd cube of side {k} expected)",
            w.dims()
        );
    }
    x.contiguous()?
        .apply_op2(&w.contiguous()?, Conv3dSame { k })
}

/// The custom op behind [`conv3d_same`].
struct Conv3dSame {
    k: usize,
}

/// The contiguous element range of a layout.
fn range(l: &Layout) -> candle_core::Result<std::ops::Range<usize>> {
    let (start, end) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("conv3d: non-contiguous input".into()))?;
    Ok(start..end)
}

impl CustomOp2 for Conv3dSame {
    fn name(&self) -> &'static str {
        "conv3d-same"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (b, c, d, h, w) = l1.shape().dims5()?;
        let o = l2.shape().dims()[0];
        let dims = [b, c, d, h, w];
        let (r1, r2) = (range(l1)?, range(l2)?);
        let out = match (s1, s2) {
            (CpuStorage::F32(x), CpuStorage::F32(k)) => {
                CpuStorage::F32(conv3d_cpu(&x[r1], dims, &k[r2], o, self.k, COL_BUDGET)?)
            }
            (CpuStorage::F64(x), CpuStorage::F64(k)) => {
                CpuStorage::F64(conv3d_cpu(&x[r1], dims, &k[r2], o, self.k, COL_BUDGET)?)
            }
            _ => candle_core::bail!("conv3d: f32 or f64 input and kernel of one type"),
        };
        Ok((out, Shape::from((b, o, d, h, w))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let k = self.k;
        let (x, w, grad) = (x.detach(), w.detach(), grad.detach().contiguous()?);
        let rev: Vec<u32> = (0..k as u32).rev().collect();
        let idx = Tensor::from_vec(rev, k, w.device())?;
        let flipped = w
            .index_select(&idx, 2)?
            .index_select(&idx, 3)?
            .index_select(&idx, 4)?
            .transpose(0, 1)?
            .contiguous()?;
        let gx = conv3d_same(&grad, &flipped, k)?;
        let (b, c, d, h, wd) = x.dims5()?;
        let o = grad.dim(1)?;
        let dims = [b, c, d, h, wd];
        let gw = match x.dtype() {
            DType::F32 => conv3d_kernel_grad(
                &x.flatten_all()?.to_vec1::<f32>()?,
                dims,
                &grad.flatten_all()?.to_vec1::<f32>()?,
                o,
                k,
                COL_BUDGET,
            )?,
            DType::F64 => conv3d_kernel_grad(
                &x.flatten_all()?.to_vec1::<f64>()?,
                dims,
                &grad.flatten_all()?.to_vec1::<f64>()?,
                o,
                k,
                COL_BUDGET,
            )?,
            other => candle_core::bail!("conv3d: {other:?} is not supported"),
        };
        Ok((Some(gx), Some(gw.reshape((o, c, k, k, k))?)))
    }
}

/// `ConvTranspose3d(in, out, kernel 2, stride 2, no bias)` as MONAI's UNETR
/// uses it: every input voxel scatters into its own 2×2×2 output block, so it
/// is one matmul and a reshuffle. Weight `(in, out, 2, 2, 2)` as PyTorch.
#[derive(Debug, Clone)]
pub struct ConvTranspose3dX2 {
    weight: Tensor,
}

impl ConvTranspose3dX2 {
    /// Creates (or loads) `weight (in, out, 2, 2, 2)` under `vb`.
    ///
    /// # Errors
    /// A failed variable lookup.
    pub fn new(vb: VarBuilder, in_ch: usize, out_ch: usize) -> candle_core::Result<Self> {
        // PyTorch computes fan_in from weight.size(1) * k³ for transposed convs.
        let bound = 1.0 / ((out_ch * 8) as f64).sqrt();
        let weight = vb.get_with_hints(
            (in_ch, out_ch, 2, 2, 2),
            "weight",
            Init::Uniform {
                lo: -bound,
                up: bound,
            },
        )?;
        Ok(ConvTranspose3dX2 { weight })
    }
}

impl Module for ConvTranspose3dX2 {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (b, c, d, h, w) = x.dims5()?;
        let o = self.weight.dim(1)?;
        // (B, DHW, C) × (C, O·8) -> (B, D, H, W, O, 2, 2, 2)
        let xs = x.reshape((b, c, d * h * w))?.transpose(1, 2)?;
        let wm = self.weight.reshape((c, o * 8))?;
        let y = xs
            .broadcast_matmul(&wm)?
            .reshape(vec![b, d, h, w, o, 2, 2, 2])?;
        // -> (B, O, D, 2, H, 2, W, 2)
        let y = y.permute([0, 4, 1, 5, 2, 6, 3, 7])?.contiguous()?;
        y.reshape((b, o, 2 * d, 2 * h, 2 * w))
    }
}
