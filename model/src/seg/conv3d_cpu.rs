//! The CPU path of [`conv3d`](super::conv3d::conv3d): a candle custom op
//! with a hand-written backward pass, im2col + matmul in both directions.
//!
//! candle's own conv2d backward on CPU runs its transposed convolution as
//! one dot product per output element (no blocked matmul), which made a
//! UNETR backward step 6–10× slower than its forward. Here every pass is
//! a matmul over an im2col that covers a few output depth slices at a time
//! (at most `budget` elements, so 112³ volumes never build the full
//! `27·C·S³` matrix):
//!
//! - forward: `y[b, g] = W_g (O_g × K_g) · cols (K_g × n)`, with
//!   `K_g = (C/groups)·k³`;
//! - weight gradient: `dW_g += dy[b, g] (O_g × n) · colsᵀ`;
//! - input gradient: `dcols = W_gᵀ · dy[b, g]`, scattered back (col2im).
//!
//! f32 and f64 storage; the im2col and col2im loops run in parallel over
//! rows/channels with rayon, the matmuls are candle's.

use candle_core::{CpuStorage, CustomOp2, Device, Layout, Shape, Tensor, WithDType};
use rayon::prelude::*;

use super::conv3d::Conv3dConfig;

/// Sizes of one convolution.
#[derive(Debug, Clone, Copy)]
struct Geo {
    b: usize,
    c: usize,
    d: usize,
    h: usize,
    w: usize,
    o: usize,
    k: usize,
    s: usize,
    p: usize,
    groups: usize,
    od: usize,
    oh: usize,
    ow: usize,
}

impl Geo {
    fn new(xd: &[usize], wd: &[usize], cfg: Conv3dConfig) -> candle_core::Result<Geo> {
        let (&[b, c, d, h, w], &[o, _, k, _, _]) = (xd, wd) else {
            candle_core::bail!("conv3d: expected 5-D input and kernel, got {xd:?} {wd:?}");
        };
        let len = |n: usize| (n + 2 * cfg.padding - k) / cfg.stride + 1;
        Ok(Geo {
            b,
            c,
            d,
            h,
            w,
            o,
            k,
            s: cfg.stride,
            p: cfg.padding,
            groups: cfg.groups,
            od: len(d),
            oh: len(h),
            ow: len(w),
        })
    }

    /// Input channels per group.
    fn cg(&self) -> usize {
        self.c / self.groups
    }

    /// Output channels per group.
    fn og(&self) -> usize {
        self.o / self.groups
    }

    /// Rows of a group's im2col.
    fn kg(&self) -> usize {
        self.cg() * self.k * self.k * self.k
    }

    /// Output voxels per output depth slice.
    fn plane(&self) -> usize {
        self.oh * self.ow
    }

    /// Output depth slices per chunk so that an im2col stays within `budget`.
    fn slices(&self, budget: usize) -> usize {
        (budget / (self.kg() * self.plane()).max(1)).clamp(1, self.od)
    }

    /// The output positions `lo..hi` of an axis (`n_in` input, `n_out`
    /// output samples) whose tap `kk` lands inside the input.
    fn valid(&self, kk: usize, n_in: usize, n_out: usize) -> (usize, usize) {
        let lo = self.p.saturating_sub(kk).div_ceil(self.s);
        let hi = if n_in + self.p > kk {
            ((n_in + self.p - kk - 1) / self.s + 1).min(n_out)
        } else {
            0
        };
        (lo, hi.max(lo))
    }

    /// Calls `f(out_offset, in_offset, len)` for every run of output voxels
    /// (within `nz` slices from `z0`) that tap (kz, ky, kx) reads from one
    /// input row; input elements of a run are `stride` apart.
    #[inline]
    fn runs(
        &self,
        (kz, ky, kx): (usize, usize, usize),
        z0: usize,
        nz: usize,
        mut f: impl FnMut(usize, usize, usize),
    ) {
        let (zlo, zhi) = self.valid(kz, self.d, self.od);
        let (ylo, yhi) = self.valid(ky, self.h, self.oh);
        let (xlo, xhi) = self.valid(kx, self.w, self.ow);
        if xhi == xlo {
            return;
        }
        for z in zlo.max(z0)..zhi.min(z0 + nz) {
            let iz = z * self.s + kz - self.p;
            for y in ylo..yhi {
                let iy = y * self.s + ky - self.p;
                let ix = xlo * self.s + kx - self.p;
                f(
                    ((z - z0) * self.oh + y) * self.ow + xlo,
                    (iz * self.h + iy) * self.w + ix,
                    xhi - xlo,
                );
            }
        }
    }

    /// Kernel offsets of im2col row `t` within a channel.
    fn offsets(&self, t: usize) -> (usize, usize, usize) {
        let k = self.k;
        (t / (k * k), (t / k) % k, t % k)
    }

    /// The im2col `(K_g, nz·plane)` of sample `bi`, group `gi`, output
    /// slices `z0..z0 + nz`, from `x` (contiguous `(B, C, D, H, W)`).
    fn im2col<T: WithDType>(&self, x: &[T], bi: usize, gi: usize, z0: usize, nz: usize) -> Vec<T> {
        let n = nz * self.plane();
        let k3 = self.k * self.k * self.k;
        let vol = self.d * self.h * self.w;
        let s = self.s;
        let mut cols = vec![T::zero(); self.kg() * n];
        cols.par_chunks_mut(n).enumerate().for_each(|(r, row)| {
            let cl = r / k3;
            let src = &x[(bi * self.c + gi * self.cg() + cl) * vol..][..vol];
            self.runs(self.offsets(r % k3), z0, nz, |o, i, len| {
                let dst = &mut row[o..o + len];
                if s == 1 {
                    dst.copy_from_slice(&src[i..i + len]);
                } else {
                    for (j, d) in dst.iter_mut().enumerate() {
                        *d = src[i + j * s];
                    }
                }
            });
        });
        cols
    }

    /// Adds the columns `(K_g, nz·plane)` back into `dx` (col2im) for sample
    /// `bi`, group `gi`, output slices `z0..z0 + nz`.
    fn col2im<T: WithDType>(
        &self,
        cols: &[T],
        dx: &mut [T],
        bi: usize,
        gi: usize,
        z0: usize,
        nz: usize,
    ) {
        let n = nz * self.plane();
        let k3 = self.k * self.k * self.k;
        let vol = self.d * self.h * self.w;
        let s = self.s;
        let start = (bi * self.c + gi * self.cg()) * vol;
        dx[start..start + self.cg() * vol]
            .par_chunks_mut(vol)
            .enumerate()
            .for_each(|(cl, dst)| {
                for t in 0..k3 {
                    let row = &cols[(cl * k3 + t) * n..][..n];
                    self.runs(self.offsets(t), z0, nz, |o, i, len| {
                        for (j, v) in row[o..o + len].iter().enumerate() {
                            dst[i + j * s] += *v;
                        }
                    });
                }
            });
    }

    /// The weight of group `gi` as an `(O_g, K_g)` tensor.
    fn group_weight<T: WithDType>(&self, w: &[T], gi: usize) -> candle_core::Result<Tensor> {
        let (og, kg) = (self.og(), self.kg());
        Tensor::from_slice(&w[gi * og * kg..][..og * kg], (og, kg), &Device::Cpu)
    }

    fn forward<T: WithDType>(
        &self,
        x: &[T],
        w: &[T],
        budget: usize,
    ) -> candle_core::Result<Vec<T>> {
        let (og, plane, ovol) = (self.og(), self.plane(), self.od * self.plane());
        let mut y = vec![T::zero(); self.b * self.o * ovol];
        let step = self.slices(budget);
        for gi in 0..self.groups {
            let wgt = self.group_weight(w, gi)?.t()?;
            for bi in 0..self.b {
                for z0 in (0..self.od).step_by(step) {
                    let nz = step.min(self.od - z0);
                    let n = nz * plane;
                    let cols = Tensor::from_vec(
                        self.im2col(x, bi, gi, z0, nz),
                        (self.kg(), n),
                        &Device::Cpu,
                    )?;
                    // colsᵀ·W_gᵀ (n × O_g): the faster gemm shape for small O_g.
                    let out = cols.t()?.matmul(&wgt)?.flatten_all()?.to_vec1::<T>()?;
                    for ol in 0..og {
                        let at = (bi * self.o + gi * og + ol) * ovol + z0 * plane;
                        for (j, v) in y[at..at + n].iter_mut().enumerate() {
                            *v = out[j * og + ol];
                        }
                    }
                }
            }
        }
        Ok(y)
    }

    /// `(dx, dW)` for upstream gradient `g` (contiguous `(B, O, D', H', W')`);
    /// either is skipped (left empty) when not `need`ed.
    fn backward<T: WithDType>(
        &self,
        x: &[T],
        w: &[T],
        g: &[T],
        budget: usize,
        (need_dx, need_dw): (bool, bool),
    ) -> candle_core::Result<(Vec<T>, Vec<T>)> {
        let (og, kg, plane, ovol) = (self.og(), self.kg(), self.plane(), self.od * self.plane());
        let mut dx = if need_dx {
            vec![T::zero(); x.len()]
        } else {
            Vec::new()
        };
        let mut dw = Vec::with_capacity(if need_dw { w.len() } else { 0 });
        let step = self.slices(budget);
        for gi in 0..self.groups {
            let wgt = self.group_weight(w, gi)?.t()?.contiguous()?;
            let mut dwg: Option<Tensor> = None;
            for bi in 0..self.b {
                for z0 in (0..self.od).step_by(step) {
                    let nz = step.min(self.od - z0);
                    let n = nz * plane;
                    let mut gc = Vec::with_capacity(og * n);
                    for ol in 0..og {
                        let at = (bi * self.o + gi * og + ol) * ovol + z0 * plane;
                        gc.extend_from_slice(&g[at..at + n]);
                    }
                    let gc = Tensor::from_vec(gc, (og, n), &Device::Cpu)?;
                    if need_dw {
                        let cols = Tensor::from_vec(
                            self.im2col(x, bi, gi, z0, nz),
                            (kg, n),
                            &Device::Cpu,
                        )?;
                        let part = gc.matmul(&cols.t()?)?;
                        dwg = Some(match dwg {
                            Some(a) => (a + part)?,
                            None => part,
                        });
                    }
                    if need_dx {
                        let dcols = wgt.matmul(&gc)?.flatten_all()?.to_vec1::<T>()?;
                        self.col2im(&dcols, &mut dx, bi, gi, z0, nz);
                    }
                }
            }
            match dwg {
                Some(t) => dw.extend(t.flatten_all()?.to_vec1::<T>()?),
                None if need_dw => dw.extend(std::iter::repeat_n(T::zero(), og * kg)),
                None => {}
            }
        }
        Ok((dx, dw))
    }
}

/// The contiguous data of a CPU storage.
fn data<'a, T: WithDType>(s: &'a [T], l: &Layout) -> candle_core::Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&s[a..b]),
        None => candle_core::bail!("conv3d: non-contiguous operand"),
    }
}

/// conv3d as a custom op (CPU; f32 and f64).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Conv3dIm2col {
    pub(crate) cfg: Conv3dConfig,
    pub(crate) budget: usize,
}

impl CustomOp2 for Conv3dIm2col {
    fn name(&self) -> &'static str {
        "conv3d-im2col"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let geo = Geo::new(l1.dims(), l2.dims(), self.cfg)?;
        let shape = Shape::from((geo.b, geo.o, geo.od, geo.oh, geo.ow));
        let out = match (s1, s2) {
            (CpuStorage::F32(x), CpuStorage::F32(w)) => {
                CpuStorage::F32(geo.forward(data(x, l1)?, data(w, l2)?, self.budget)?)
            }
            (CpuStorage::F64(x), CpuStorage::F64(w)) => {
                CpuStorage::F64(geo.forward(data(x, l1)?, data(w, l2)?, self.budget)?)
            }
            _ => candle_core::bail!("conv3d: f32 or f64 operands of one type"),
        };
        Ok((out, shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let geo = Geo::new(x.dims(), w.dims(), self.cfg)?;
        // Inputs without a graph (a raw image, a frozen kernel) need no gradient.
        let need = (x.track_op(), w.track_op());
        type Grads = (Option<Tensor>, Option<Tensor>);
        fn run<T: WithDType>(
            geo: &Geo,
            (x, w, g): (&Tensor, &Tensor, &Tensor),
            budget: usize,
            need: (bool, bool),
        ) -> candle_core::Result<Grads> {
            let flat = |t: &Tensor| t.flatten_all()?.to_vec1::<T>();
            let (xv, wv, gv) = (flat(x)?, flat(w)?, flat(g)?);
            // Fewer output than input channels (stride 1): dx as the forward
            // convolution of g with the flipped, transposed kernel, whose
            // im2col has O·k³ rows instead of C·k³.
            if need.0 && geo.s == 1 && geo.groups == 1 && geo.o < geo.c && geo.p < geo.k {
                let (_, dw) = geo.backward(&xv, &wv, &gv, budget, (false, need.1))?;
                let (k, k3) = (geo.k, geo.k * geo.k * geo.k);
                let mut wf = vec![T::zero(); wv.len()];
                for o in 0..geo.o {
                    for c in 0..geo.c {
                        for t in 0..k3 {
                            wf[(c * geo.o + o) * k3 + (k3 - 1 - t)] = wv[(o * geo.c + c) * k3 + t];
                        }
                    }
                }
                let cfg = Conv3dConfig {
                    stride: 1,
                    padding: k - 1 - geo.p,
                    groups: 1,
                };
                let tgeo = Geo::new(g.dims(), &[geo.c, geo.o, k, k, k], cfg)?;
                let dx = tgeo.forward(&gv, &wf, budget)?;
                let dw = need
                    .1
                    .then(|| Tensor::from_vec(dw, w.shape(), w.device()))
                    .transpose()?;
                return Ok((Some(Tensor::from_vec(dx, x.shape(), x.device())?), dw));
            }
            let (dx, dw) = geo.backward(&xv, &wv, &gv, budget, need)?;
            let wrap = |v: Vec<T>, t: &Tensor, needed: bool| {
                needed
                    .then(|| Tensor::from_vec(v, t.shape(), t.device()))
                    .transpose()
            };
            Ok((wrap(dx, x, need.0)?, wrap(dw, w, need.1)?))
        }
        match x.dtype() {
            candle_core::DType::F32 => run::<f32>(&geo, (x, w, g), self.budget, need),
            candle_core::DType::F64 => run::<f64>(&geo, (x, w, g), self.budget, need),
            dt => candle_core::bail!("conv3d: unsupported dtype {dt:?}"),
        }
    }
}

#[cfg(test)]
mod timing {
    use std::time::Instant;

    use super::*;

    #[test]
    #[ignore = "timing; run by hand"]
    fn im2col_vs_matmul_timing() {
        let cfg = Conv3dConfig::same(3);
        let geo = Geo::new(&[2, 32, 64, 64, 64], &[16, 32, 3, 3, 3], cfg).unwrap();
        let x = vec![1f32; 2 * 32 * 64 * 64 * 64];
        let step = geo.slices(super::super::conv3d::IM2COL_BUDGET);
        let t0 = Instant::now();
        let mut cols = Vec::new();
        for z0 in (0..64).step_by(step) {
            cols = geo.im2col(&x, 0, 0, z0, step);
        }
        let t1 = Instant::now();
        let w = Tensor::ones((16, geo.kg()), candle_core::DType::F32, &Device::Cpu).unwrap();
        let c = Tensor::from_vec(cols, (geo.kg(), step * 4096), &Device::Cpu).unwrap();
        let t2 = Instant::now();
        for _ in 0..64 / step {
            let _ = w.matmul(&c).unwrap();
        }
        let t3 = Instant::now();
        for _ in 0..64 / step {
            let _ = c.t().unwrap().matmul(&w.t().unwrap()).unwrap();
        }
        let t4 = Instant::now();
        println!(
            "per sample: im2col {:.3} s, W·cols {:.3} s, colsᵀ·Wᵀ {:.3} s (step {step}, threads {})",
            (t1 - t0).as_secs_f64(),
            (t3 - t2).as_secs_f64(),
            (t4 - t3).as_secs_f64(),
            rayon::current_num_threads()
        );
    }
}
