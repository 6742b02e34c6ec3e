//! 3-D convolutions for the segmentation decoders. candle has no conv3d, but
//! its conv2d has a backward pass: a stride-1 3-D convolution is the sum over
//! the kernel's depth taps of 2-D convolutions of depth-shifted slabs, with
//! depth folded into the batch. Memory stays at one slab's im2col, and the
//! gradients come from candle's conv2d backward.
//!
//! Layout `(B, C, D, H, W)`; weights `(out, in, k, k, k)` as PyTorch's
//! `Conv3d`, so MONAI/3DINO state dicts map by name.

use candle_core::{CpuStorage, CustomOp2, Device, Layout, Module, Shape, Tensor};
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
/// `w (O, C, k, k, k)`, `k` odd, differentiable in both.
///
/// The forward pass is candle's conv2d over depth slabs; the backward pass
/// is written out (a custom op) because candle's conv2d backward goes
/// through its CPU `conv_transpose2d`, a direct loop about 50× slower than
/// the forward: the input gradient is the same convolution of the output
/// gradient with the flipped, transposed kernel, and the kernel gradient is
/// one matmul per kernel offset.
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

/// The forward computation on plain tensors (no graph).
fn conv3d_forward(x: &Tensor, w: &Tensor, k: usize) -> candle_core::Result<Tensor> {
    let (b, c, d, h, wd) = x.dims5()?;
    let o = w.dim(0)?;
    let p = k / 2;
    if k == 1 {
        // A 1×1×1 convolution is a matmul over channels.
        let w2 = w.reshape((o, c))?;
        let xs = x.reshape((b, c, d * h * wd))?;
        return w2.broadcast_matmul(&xs)?.reshape((b, o, d, h, wd));
    }
    // Depth next to the batch, then zero-padded: (B, D + 2p, C, H, W).
    let xd = x.permute((0, 2, 1, 3, 4))?.pad_with_zeros(1, p, p)?;
    let mut acc: Option<Tensor> = None;
    for kd in 0..k {
        let slab = xd
            .narrow(1, kd, d)?
            .contiguous()?
            .reshape((b * d, c, h, wd))?;
        let wk = w.narrow(2, kd, 1)?.squeeze(2)?.contiguous()?;
        let y = slab.conv2d(&wk, p, 1, 1, 1)?;
        acc = Some(match acc {
            Some(a) => (a + y)?,
            None => y,
        });
    }
    let y = acc.expect("k >= 1");
    y.reshape((b, d, o, h, wd))?
        .permute((0, 2, 1, 3, 4))?
        .contiguous()
}

/// The custom op behind [`conv3d_same`].
struct Conv3dSame {
    k: usize,
}

/// A contiguous CPU storage as a tensor (copied).
fn cpu_tensor(s: &CpuStorage, l: &Layout) -> candle_core::Result<Tensor> {
    let (start, end) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("conv3d: non-contiguous input".into()))?;
    let dev = &Device::Cpu;
    match s {
        CpuStorage::F32(v) => Tensor::from_slice(&v[start..end], l.shape(), dev),
        CpuStorage::F64(v) => Tensor::from_slice(&v[start..end], l.shape(), dev),
        _ => candle_core::bail!("conv3d: f32 or f64 only"),
    }
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
        let y = conv3d_forward(&cpu_tensor(s1, l1)?, &cpu_tensor(s2, l2)?, self.k)?;
        let (storage, _) = y.storage_and_layout();
        match &*storage {
            candle_core::Storage::Cpu(c) => Ok((c.clone(), y.shape().clone())),
            _ => candle_core::bail!("conv3d: expected a CPU result"),
        }
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
        // dL/dx: correlate the output gradient with the kernel flipped in
        // space and with in/out channels swapped.
        let rev: Vec<u32> = (0..k as u32).rev().collect();
        let idx = Tensor::from_vec(rev, k, w.device())?;
        let flipped = w
            .index_select(&idx, 2)?
            .index_select(&idx, 3)?
            .index_select(&idx, 4)?
            .transpose(0, 1)?
            .contiguous()?;
        let gx = conv3d_forward(&grad, &flipped, k)?;
        // dL/dw[:, :, kd] = Σ_depth conv2d(x slab shifted by kd, grad slab):
        // candle's own conv2d kernel-gradient formula, once per depth tap,
        // with depth folded into the conv2d channels.
        let (b, c, d, h, wd) = x.dims5()?;
        let o = grad.dim(1)?;
        let p = k / 2;
        // (O, B·D, H, W) and (B, D + 2p, C, H, W).
        let g = grad
            .permute((1, 0, 2, 3, 4))?
            .contiguous()?
            .reshape((o, b * d, h, wd))?;
        let xd = x.permute((0, 2, 1, 3, 4))?.pad_with_zeros(1, p, p)?;
        let mut taps = Vec::with_capacity(k);
        for kd in 0..k {
            let slab = xd
                .narrow(1, kd, d)?
                .permute((2, 0, 1, 3, 4))?
                .contiguous()?
                .reshape((c, b * d, h, wd))?;
            // (C, O, k, k) -> (O, C, k, k)
            taps.push(slab.conv2d(&g, p, 1, 1, 1)?.transpose(0, 1)?);
        }
        let gw = Tensor::stack(&taps, 2)?.contiguous()?;
        Ok((Some(gx), Some(gw)))
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
