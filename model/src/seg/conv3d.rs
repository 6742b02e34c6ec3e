//! 3-D convolution for the segmentation decoders (candle has none).
//!
//! On the CPU (f32/f64) it is a custom op with a hand-written backward
//! pass, im2col + matmul in both directions over a few output depth slices
//! at a time (see `conv3d_cpu`). Elsewhere it is the sum over the kernel's
//! depth taps `kz` of candle conv2d's of the depth slabs `z·stride + kz`,
//! with depth folded into the batch `(B·D', C, H, W)`, differentiated by
//! candle. Either way no im2col exceeds [`IM2COL_BUDGET`] elements (at 112³
//! the full 27×C×S³ never exists).
//!
//! On the conv2d path padding is applied explicitly and the input trimmed
//! to the extent the kernel actually visits, so candle's conv2d runs with
//! padding 0 and an exact output size: its backward then needs no output
//! padding (which it derives from the height alone and gets wrong for
//! strided convolutions of odd-by-even planes).
//!
//! A 1×1×1, stride-1 convolution is a plain matmul over channels.
//!
//! Layout `(B, C, D, H, W)`; weights `(out, in/groups, k, k, k)` as
//! PyTorch's `Conv3d`, so MONAI/3DINO state dicts map by name.

use candle_core::{DType, Module, Tensor};
use candle_nn::{Init, VarBuilder};

use super::conv3d_cpu::Conv3dIm2col;

/// The largest im2col (elements) one step may build (16 Mi f32 = 64 MiB);
/// the output is processed in chunks of depth slices below it.
pub const IM2COL_BUDGET: usize = 1 << 24;

/// Stride, zero padding and groups of a [`Conv3d`] (the same on every axis).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv3dConfig {
    /// Stride (≥ 1).
    pub stride: usize,
    /// Zero padding on both sides of every axis.
    pub padding: usize,
    /// Channel groups: 1 for a dense convolution, `in == out` for depthwise.
    pub groups: usize,
}

impl Default for Conv3dConfig {
    fn default() -> Self {
        Conv3dConfig {
            stride: 1,
            padding: 0,
            groups: 1,
        }
    }
}

impl Conv3dConfig {
    /// Stride 1 and padding `k/2`: MONAI's "same" convolution for odd `k`.
    pub fn same(kernel: usize) -> Self {
        Conv3dConfig {
            padding: kernel / 2,
            ..Default::default()
        }
    }
}

/// `Conv3d(in, out, k, stride, padding, groups)`, optional bias.
#[derive(Debug, Clone)]
pub struct Conv3d {
    weight: Tensor,
    bias: Option<Tensor>,
    cfg: Conv3dConfig,
}

impl Conv3d {
    /// Creates (or loads) `weight (out, in/groups, k, k, k)` and `bias (out)`
    /// under `vb`, initialised as PyTorch does (kaiming-uniform with a = √5,
    /// i.e. U(±1/√fan_in), for both).
    ///
    /// # Errors
    /// Zero sizes or stride; channels not divisible by `groups`; a failed
    /// variable lookup.
    pub fn new(
        vb: VarBuilder,
        in_ch: usize,
        out_ch: usize,
        kernel: usize,
        bias: bool,
        cfg: Conv3dConfig,
    ) -> candle_core::Result<Conv3d> {
        if in_ch == 0 || out_ch == 0 || kernel == 0 || cfg.stride == 0 || cfg.groups == 0 {
            candle_core::bail!("Conv3d: zero size in ({in_ch}, {out_ch}, {kernel}, {cfg:?})");
        }
        if !in_ch.is_multiple_of(cfg.groups) || !out_ch.is_multiple_of(cfg.groups) {
            candle_core::bail!(
                "Conv3d: {in_ch} → {out_ch} channels in {} groups",
                cfg.groups
            );
        }
        let fan_in = (in_ch / cfg.groups * kernel.pow(3)) as f64;
        let bound = 1.0 / fan_in.sqrt();
        let init = Init::Uniform {
            lo: -bound,
            up: bound,
        };
        let weight = vb.get_with_hints(
            (out_ch, in_ch / cfg.groups, kernel, kernel, kernel),
            "weight",
            init,
        )?;
        let bias = if bias {
            Some(vb.get_with_hints(out_ch, "bias", init)?)
        } else {
            None
        };
        Ok(Conv3d { weight, bias, cfg })
    }

    /// The weight `(out, in/groups, k, k, k)`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The bias `(out)`, if any.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }
}

impl Module for Conv3d {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let y = conv3d(x, &self.weight, self.cfg)?;
        match &self.bias {
            Some(b) => y.broadcast_add(&b.reshape((1, (), 1, 1, 1))?),
            None => Ok(y),
        }
    }
}

/// Output length of a convolution along one axis.
fn out_len(n: usize, k: usize, stride: usize, padding: usize) -> candle_core::Result<usize> {
    let padded = n + 2 * padding;
    if padded < k {
        candle_core::bail!("conv3d: kernel {k} larger than the padded axis {padded}");
    }
    Ok((padded - k) / stride + 1)
}

/// 3-D convolution of `x (B, C, D, H, W)` with `w (O, C/groups, k, k, k)`
/// (cubic kernel), zero padding and stride from `cfg`; no bias.
///
/// # Errors
/// Shape mismatches; a kernel larger than the padded input.
pub fn conv3d(x: &Tensor, w: &Tensor, cfg: Conv3dConfig) -> candle_core::Result<Tensor> {
    conv3d_budget(x, w, cfg, IM2COL_BUDGET)
}

/// [`conv3d`] with an explicit im2col budget (elements per step).
pub(crate) fn conv3d_budget(
    x: &Tensor,
    w: &Tensor,
    cfg: Conv3dConfig,
    budget: usize,
) -> candle_core::Result<Tensor> {
    let (b, c, d, h, wd) = x.dims5()?;
    let (o, wc, k, k1, k2) = w.dims5()?;
    let Conv3dConfig {
        stride: s,
        padding: p,
        groups,
    } = cfg;
    if k != k1 || k != k2 {
        candle_core::bail!("conv3d: only cubic kernels, got {:?}", w.dims());
    }
    if s == 0 || groups == 0 || wc * groups != c || !o.is_multiple_of(groups) {
        candle_core::bail!(
            "conv3d: input {c} channels, kernel {:?}, config {cfg:?}",
            w.dims()
        );
    }
    for n in [d, h, wd] {
        out_len(n, k, s, p)?;
    }
    if k == 1 && s == 1 && p == 0 && groups == 1 {
        // A 1×1×1 convolution is a matmul over channels.
        let w2 = w.reshape((o, c))?;
        let xs = x.reshape((b, c, d * h * wd))?;
        return w2.broadcast_matmul(&xs)?.reshape((b, o, d, h, wd));
    }
    if x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64) && x.dtype() == w.dtype()
    {
        return x
            .contiguous()?
            .apply_op2(&w.contiguous()?, Conv3dIm2col { cfg, budget });
    }
    conv3d_slabs(x, w, cfg, budget)
}

/// The device-generic path: Σ over depth taps of candle conv2d's on
/// depth-shifted slabs (candle's own conv2d backward).
pub(crate) fn conv3d_slabs(
    x: &Tensor,
    w: &Tensor,
    cfg: Conv3dConfig,
    budget: usize,
) -> candle_core::Result<Tensor> {
    let (b, c, d, h, wd) = x.dims5()?;
    let (o, wc, k, _, _) = w.dims5()?;
    let Conv3dConfig {
        stride: s,
        padding: p,
        groups,
    } = cfg;
    let (od, oh, ow) = (
        out_len(d, k, s, p)?,
        out_len(h, k, s, p)?,
        out_len(wd, k, s, p)?,
    );
    // Pad, then keep exactly the extent the kernel visits: (out − 1)·s + k.
    let x = if p > 0 {
        x.pad_with_zeros(2, p, p)?
            .pad_with_zeros(3, p, p)?
            .pad_with_zeros(4, p, p)?
    } else {
        x.clone()
    };
    let (uh, uw) = ((oh - 1) * s + k, (ow - 1) * s + k);
    let x = x.narrow(3, 0, uh)?.narrow(4, 0, uw)?;
    // Depth next to the batch: (B, Dp, C, uh, uw), copied once if strided.
    let xd = x.permute((0, 2, 1, 3, 4))?;
    let xd = if s == 1 { xd } else { xd.contiguous()? };
    // Rows per conv2d call so that its im2col (rows·oh·ow·C/g·k²) fits.
    let per_row = (oh * ow * wc * k * k).max(1);
    let rows = (b * od).min((budget / per_row).max(1));
    let mut acc: Option<Tensor> = None;
    for kz in 0..k {
        let slab = if s == 1 {
            xd.narrow(1, kz, od)?.contiguous()?
        } else {
            let idx: Vec<u32> = (0..od).map(|z| (kz + z * s) as u32).collect();
            let idx = Tensor::from_vec(idx, od, x.device())?;
            xd.index_select(&idx, 1)?
        };
        let slab = slab.reshape((b * od, c, uh, uw))?;
        let wk = w.narrow(2, kz, 1)?.squeeze(2)?.contiguous()?;
        let y = conv2d_chunked(&slab, &wk, s, groups, rows)?;
        acc = Some(match acc {
            Some(a) => (a + y)?,
            None => y,
        });
    }
    let y = match acc {
        Some(y) => y,
        None => candle_core::bail!("conv3d: empty kernel"),
    };
    y.reshape((b, od, o, oh, ow))?
        .permute((0, 2, 1, 3, 4))?
        .contiguous()
}

/// candle's conv2d (padding 0) over the batch in chunks of `rows`.
fn conv2d_chunked(
    x: &Tensor,
    w: &Tensor,
    stride: usize,
    groups: usize,
    rows: usize,
) -> candle_core::Result<Tensor> {
    let n = x.dim(0)?;
    if rows >= n {
        return x.conv2d(w, 0, stride, 1, groups);
    }
    let parts = (0..n)
        .step_by(rows)
        .map(|start| {
            x.narrow(0, start, rows.min(n - start))?
                .conv2d(w, 0, stride, 1, groups)
        })
        .collect::<candle_core::Result<Vec<_>>>()?;
    Tensor::cat(&parts, 0)
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Module, Tensor, Var};
    use candle_nn::{VarBuilder, VarMap};

    use super::*;
    use crate::seg::test_util::{assert_close, f64s, tensor};

    /// Naive zero-padded, strided, grouped conv3d in f64:
    /// x (B, C, D, H, W), w (O, C/g, k, k, k).
    fn reference(
        x: &[f64],
        xs: [usize; 5],
        w: &[f64],
        o: usize,
        k: usize,
        cfg: Conv3dConfig,
    ) -> Vec<f64> {
        let [b, c, d, h, wd] = xs;
        let (s, p, g) = (cfg.stride, cfg.padding as isize, cfg.groups);
        let (cg, og) = (c / g, o / g);
        let len = |n: usize| (n + 2 * cfg.padding - k) / s + 1;
        let (od, oh, ow) = (len(d), len(h), len(wd));
        let mut out = vec![0.0; b * o * od * oh * ow];
        for bi in 0..b {
            for oi in 0..o {
                let group = oi / og;
                for z in 0..od {
                    for y in 0..oh {
                        for xx in 0..ow {
                            let mut acc = 0.0;
                            for cl in 0..cg {
                                let ci = group * cg + cl;
                                for kz in 0..k {
                                    for ky in 0..k {
                                        for kx in 0..k {
                                            let iz = (z * s + kz) as isize - p;
                                            let iy = (y * s + ky) as isize - p;
                                            let ix = (xx * s + kx) as isize - p;
                                            if iz < 0
                                                || iy < 0
                                                || ix < 0
                                                || iz >= d as isize
                                                || iy >= h as isize
                                                || ix >= wd as isize
                                            {
                                                continue;
                                            }
                                            let xi = (((bi * c + ci) * d + iz as usize) * h
                                                + iy as usize)
                                                * wd
                                                + ix as usize;
                                            let wi = (((oi * cg + cl) * k + kz) * k + ky) * k + kx;
                                            acc += x[xi] * w[wi];
                                        }
                                    }
                                }
                            }
                            out[(((bi * o + oi) * od + z) * oh + y) * ow + xx] = acc;
                        }
                    }
                }
            }
        }
        out
    }

    fn cfg(stride: usize, padding: usize, groups: usize) -> Conv3dConfig {
        Conv3dConfig {
            stride,
            padding,
            groups,
        }
    }

    #[test]
    fn matches_the_loop_reference() {
        let xs = [2, 3, 5, 6, 7];
        let x = tensor(&xs, 1, DType::F32);
        let cases = [
            (3, cfg(1, 1, 1)),
            (3, cfg(1, 0, 1)),
            (3, cfg(2, 1, 1)),
            (3, cfg(2, 0, 1)),
            (1, cfg(1, 0, 1)),
            (1, cfg(2, 0, 1)),
            (5, cfg(1, 2, 1)),
            (2, cfg(2, 0, 1)),
            (3, cfg(1, 1, 3)),
            (3, cfg(2, 1, 3)),
        ];
        for (k, c) in cases {
            let o = if c.groups == 1 { 4 } else { 6 };
            let w = tensor(&[o, 3 / c.groups, k, k, k], 2, DType::F32);
            let got = conv3d(&x, &w, c).unwrap();
            let want = reference(&f64s(&x), xs, &f64s(&w), o, k, c);
            assert_close(&f64s(&got), &want, 1e-5, &format!("k={k} {c:?}"));
            // A tiny im2col budget (one row per conv2d call) changes nothing.
            let chunked = conv3d_budget(&x, &w, c, 1).unwrap();
            assert_close(
                &f64s(&chunked),
                &want,
                1e-5,
                &format!("chunked k={k} {c:?}"),
            );
        }
    }

    /// Gradients of L = Σ conv(x, w)·r in f64 against central differences of
    /// the loop reference (independent of candle's backward).
    type ConvFn = fn(&Tensor, &Tensor, Conv3dConfig, usize) -> candle_core::Result<Tensor>;

    fn check_gradients(
        conv: ConvFn,
        xs: [usize; 5],
        o: usize,
        k: usize,
        c: Conv3dConfig,
        budget: usize,
    ) {
        let x = Var::from_tensor(&tensor(&xs, 3, DType::F64)).unwrap();
        let w = Var::from_tensor(&tensor(&[o, xs[1] / c.groups, k, k, k], 4, DType::F64)).unwrap();
        let y = conv(x.as_tensor(), w.as_tensor(), c, budget).unwrap();
        let r = tensor(y.dims(), 5, DType::F64);
        let grads = (y * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let (xv, wv, rv) = (f64s(x.as_tensor()), f64s(w.as_tensor()), f64s(&r));
        let l = |xv: &[f64], wv: &[f64]| -> f64 {
            reference(xv, xs, wv, o, k, c)
                .iter()
                .zip(&rv)
                .map(|(a, b)| a * b)
                .sum()
        };
        let h = 1e-6;
        let what = format!("{xs:?} k={k} {c:?}");
        let gx = f64s(grads.get(x.as_tensor()).unwrap());
        for i in (0..xv.len()).step_by(5) {
            let (mut p, mut m) = (xv.clone(), xv.clone());
            p[i] += h;
            m[i] -= h;
            let fd = (l(&p, &wv) - l(&m, &wv)) / (2.0 * h);
            assert!(
                (gx[i] - fd).abs() < 1e-6,
                "{what} dL/dx[{i}]: {} vs {fd}",
                gx[i]
            );
        }
        let gw = f64s(grads.get(w.as_tensor()).unwrap());
        for i in (0..wv.len()).step_by(3) {
            let (mut p, mut m) = (wv.clone(), wv.clone());
            p[i] += h;
            m[i] -= h;
            let fd = (l(&xv, &p) - l(&xv, &m)) / (2.0 * h);
            assert!(
                (gw[i] - fd).abs() < 1e-6,
                "{what} dL/dw[{i}]: {} vs {fd}",
                gw[i]
            );
        }
    }

    #[test]
    fn gradients_match_central_differences() {
        let xs = [2, 2, 4, 5, 6];
        for conv in [conv3d_budget as ConvFn, conv3d_slabs] {
            check_gradients(conv, xs, 3, 3, cfg(1, 1, 1), IM2COL_BUDGET);
            // Strided over planes of odd and even sizes (candle's own output
            // padding would be wrong here on the conv2d path).
            check_gradients(conv, xs, 3, 3, cfg(2, 1, 1), IM2COL_BUDGET);
            check_gradients(conv, xs, 3, 3, cfg(2, 0, 1), IM2COL_BUDGET);
            check_gradients(conv, xs, 2, 1, cfg(1, 0, 1), IM2COL_BUDGET);
            check_gradients(conv, xs, 2, 1, cfg(2, 0, 1), IM2COL_BUDGET);
            check_gradients(conv, xs, 2, 3, cfg(1, 1, 2), IM2COL_BUDGET);
            check_gradients(conv, xs, 4, 3, cfg(2, 1, 2), IM2COL_BUDGET);
            check_gradients(conv, xs, 3, 3, cfg(1, 1, 1), 1);
            // Fewer outputs than inputs (the CPU op's transposed-conv dx).
            check_gradients(conv, [2, 3, 4, 5, 6], 2, 3, cfg(1, 1, 1), IM2COL_BUDGET);
            check_gradients(conv, [1, 3, 4, 5, 6], 1, 3, cfg(1, 0, 1), 1);
            check_gradients(conv, [1, 4, 6, 5, 7], 2, 5, cfg(1, 2, 1), IM2COL_BUDGET);
        }
        // A plain (untracked) input gets no gradient, the kernel still does.
        let x = tensor(&xs, 3, DType::F64);
        let w = Var::from_tensor(&tensor(&[3, 2, 3, 3, 3], 4, DType::F64)).unwrap();
        let grads = conv3d(&x, w.as_tensor(), cfg(1, 1, 1))
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        assert!(grads.get(&x).is_none());
        assert!(grads.get(w.as_tensor()).is_some());
    }

    #[test]
    fn layer_adds_its_bias_and_names_its_parameters() {
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        let conv = Conv3d::new(vb.pp("conv"), 3, 4, 3, true, Conv3dConfig::same(3)).unwrap();
        let x = tensor(&[1, 3, 4, 4, 4], 6, DType::F32);
        let y = conv.forward(&x).unwrap();
        assert_eq!(y.dims(), &[1, 4, 4, 4, 4]);
        let no_bias = conv3d(&x, conv.weight(), Conv3dConfig::same(3)).unwrap();
        let diff = (y - no_bias).unwrap().mean((0, 2, 3, 4)).unwrap();
        assert_close(&f64s(&diff), &f64s(conv.bias().unwrap()), 1e-5, "bias");
        let mut names: Vec<String> = vm.data().lock().unwrap().keys().cloned().collect();
        names.sort();
        assert_eq!(names, ["conv.bias", "conv.weight"]);
        assert!(Conv3d::new(vb.pp("bad"), 3, 4, 3, false, cfg(1, 1, 2)).is_err());
        assert!(
            conv3d(
                &tensor(&[1, 3, 2, 2, 2], 7, DType::F32),
                conv.weight(),
                cfg(1, 0, 1)
            )
            .is_err()
        );
    }
}
