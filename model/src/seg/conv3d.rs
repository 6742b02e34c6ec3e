//! 3-D convolutions for the segmentation decoders. candle has no conv3d, but
//! its conv2d has a backward pass: a stride-1 3-D convolution is the sum over
//! the kernel's depth taps of 2-D convolutions of depth-shifted slabs, with
//! depth folded into the batch. Memory stays at one slab's im2col, and the
//! gradients come from candle's conv2d backward.
//!
//! Layout `(B, C, D, H, W)`; weights `(out, in, k, k, k)` as PyTorch's
//! `Conv3d`, so MONAI/3DINO state dicts map by name.

use candle_core::{Module, Tensor};
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
/// `w (O, C, k, k, k)`, `k` odd.
///
/// # Errors
/// Shape mismatches.
pub fn conv3d_same(x: &Tensor, w: &Tensor, k: usize) -> candle_core::Result<Tensor> {
    let (b, c, d, h, wd) = x.dims5()?;
    let (o, wc, ..) = w.dims5()?;
    if wc != c {
        candle_core::bail!("conv3d: input has {c} channels, the kernel {wc}");
    }
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
