//! `ConvTranspose3d` with kernel = stride (MONAI's UNETR up-sampler, 2³ s2):
//! the output blocks do not overlap, so it is a matmul and a reshuffle,
//! differentiable through candle's matmul and permute.

use candle_core::{Module, Tensor};
use candle_nn::{Init, VarBuilder};

/// `ConvTranspose3d(in, out, kernel = stride = s)`, optional bias (MONAI's
/// UNETR uses s = 2 without bias). Every input voxel scatters into its own
/// `s³` output block, so it is one matmul and a reshuffle. Weight
/// `(in, out, s, s, s)` as PyTorch.
#[derive(Debug, Clone)]
pub struct ConvTranspose3d {
    weight: Tensor,
    bias: Option<Tensor>,
    scale: usize,
}

impl ConvTranspose3d {
    /// Creates (or loads) `weight (in, out, s, s, s)` and `bias (out)` under
    /// `vb` (PyTorch's init: U(±1/√(out·s³)), the transposed fan-in).
    ///
    /// # Errors
    /// Zero sizes; a failed variable lookup.
    pub fn new(
        vb: VarBuilder,
        in_ch: usize,
        out_ch: usize,
        scale: usize,
        bias: bool,
    ) -> candle_core::Result<Self> {
        if in_ch == 0 || out_ch == 0 || scale == 0 {
            candle_core::bail!("ConvTranspose3d: zero size in ({in_ch}, {out_ch}, {scale})");
        }
        let bound = 1.0 / ((out_ch * scale.pow(3)) as f64).sqrt();
        let init = Init::Uniform {
            lo: -bound,
            up: bound,
        };
        let weight = vb.get_with_hints((in_ch, out_ch, scale, scale, scale), "weight", init)?;
        let bias = if bias {
            Some(vb.get_with_hints(out_ch, "bias", init)?)
        } else {
            None
        };
        Ok(ConvTranspose3d {
            weight,
            bias,
            scale,
        })
    }

    /// MONAI's UNETR up-sampler: kernel 2, stride 2, no bias.
    ///
    /// # Errors
    /// As [`ConvTranspose3d::new`].
    pub fn x2(vb: VarBuilder, in_ch: usize, out_ch: usize) -> candle_core::Result<Self> {
        Self::new(vb, in_ch, out_ch, 2, false)
    }
}

impl Module for ConvTranspose3d {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (b, c, d, h, w) = x.dims5()?;
        let s = self.scale;
        let o = self.weight.dim(1)?;
        // (B, DHW, C) × (C, O·s³) -> (B, D, H, W, O, s, s, s)
        let xs = x.reshape((b, c, d * h * w))?.transpose(1, 2)?;
        let wm = self.weight.reshape((c, o * s * s * s))?;
        let y = xs
            .broadcast_matmul(&wm)?
            .reshape(vec![b, d, h, w, o, s, s, s])?;
        // -> (B, O, D, s, H, s, W, s)
        let y = y
            .permute([0, 4, 1, 5, 2, 6, 3, 7])?
            .contiguous()?
            .reshape((b, o, s * d, s * h, s * w))?;
        match &self.bias {
            Some(bias) => y.broadcast_add(&bias.reshape((1, (), 1, 1, 1))?),
            None => Ok(y),
        }
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Module, Tensor, Var};
    use candle_nn::{VarBuilder, VarMap};

    use super::*;
    use crate::seg::test_util::{check_fd, f64s, tensor};

    /// PyTorch's ConvTranspose3d(k = s = stride, padding 0) in f64:
    /// out[b, o, s·z + a, s·y + e, s·x + f] = bias[o] + Σ_c x[b, c, z, y, x]·w[c, o, a, e, f].
    fn reference(
        x: &[f64],
        xs: [usize; 5],
        w: &[f64],
        bias: &[f64],
        o: usize,
        s: usize,
    ) -> Vec<f64> {
        let [b, c, d, h, wd] = xs;
        let (od, oh, ow) = (s * d, s * h, s * wd);
        let mut out = vec![0.0; b * o * od * oh * ow];
        for bi in 0..b {
            for oi in 0..o {
                for z in 0..od {
                    for y in 0..oh {
                        for xx in 0..ow {
                            let mut acc = bias.get(oi).copied().unwrap_or(0.0);
                            for ci in 0..c {
                                let xi = (((bi * c + ci) * d + z / s) * h + y / s) * wd + xx / s;
                                let wi = (((ci * o + oi) * s + z % s) * s + y % s) * s + xx % s;
                                acc += x[xi] * w[wi];
                            }
                            out[(((bi * o + oi) * od + z) * oh + y) * ow + xx] = acc;
                        }
                    }
                }
            }
        }
        out
    }

    #[test]
    fn scatters_each_voxel_into_its_block() {
        let xs = [2, 3, 2, 3, 4];
        let x = tensor(&xs, 6, DType::F32);
        for (s, bias) in [(2, false), (2, true), (3, true), (1, false)] {
            let vm = VarMap::new();
            let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
            let up = ConvTranspose3d::new(vb.pp("conv"), 3, 2, s, bias).unwrap();
            let got = up.forward(&x).unwrap();
            assert_eq!(got.dims(), &[2, 2, s * 2, s * 3, s * 4]);
            let data = vm.data().lock().unwrap();
            let w = f64s(data["conv.weight"].as_tensor());
            let bv = data
                .get("conv.bias")
                .map(|b| f64s(b.as_tensor()))
                .unwrap_or_default();
            let want = reference(&f64s(&x), xs, &w, &bv, 2, s);
            for (i, (g, w)) in f64s(&got).iter().zip(&want).enumerate() {
                assert!((g - w).abs() < 1e-5, "s={s} [{i}]: {g} vs {w}");
            }
        }
    }

    #[test]
    fn gradients_match_central_differences() {
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F64, &Device::Cpu);
        let up = ConvTranspose3d::x2(vb, 2, 3).unwrap();
        let shape = [1, 2, 2, 1, 3];
        let x = Var::from_tensor(&tensor(&shape, 7, DType::F64)).unwrap();
        let r = tensor(&[1, 3, 4, 2, 6], 8, DType::F64);
        let loss = |t: &Tensor| (up.forward(t)? * &r)?.sum_all();
        let grads = loss(x.as_tensor()).unwrap().backward().unwrap();
        let g = f64s(grads.get(x.as_tensor()).unwrap());
        check_fd(&f64s(x.as_tensor()), &shape, &g, loss, 1e-6);
        let w = vm.data().lock().unwrap()["weight"].as_tensor().clone();
        assert!(grads.get(&w).is_some(), "the weight learns");
    }
}
