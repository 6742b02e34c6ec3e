//! 3-D multi-scale deformable attention (Deformable DETR's `MSDeformAttn`,
//! as ViT-Adapter uses it), and its trilinear sampling custom op.
//!
//! Every query `q` has a reference point `r_q ∈ [0, 1]³` (the normalised
//! centre of its voxel). For head `h`, level `l` and point `p` a linear layer
//! of the query gives an offset `Δ` (3 numbers) and an attention logit; the
//! sampling location is `r_q + Δ / size_l` (per axis), the weights are a
//! softmax over the levels × points of each head, and the output is
//! `Σ_{l,p} A · trilinear(value_l[h], location)` with zero padding and
//! `align_corners=False` (continuous voxel coordinate `location·size − ½`),
//! heads concatenated, then an output projection.
//!
//! **Axis order.** 3DINO orders its reference points and offsets `(w, h, d)`
//! but hands them to the 5-D `grid_sample`, which reads a grid's components
//! as (last axis, middle, first); its samples therefore land at an
//! axis-permuted location. We sample at the intended location: component `k`
//! of a reference point or offset is a coordinate along axis `k` of the
//! `(X, Y, Z)` volume. A 3DINO checkpoint's `sampling_offsets` rows would
//! need their xyz components permuted to reproduce its outputs exactly.

use candle_core::{
    CpuStorage, CustomOp2, D, DType, Device, Layout, Module, Shape, Tensor, WithDType,
};
use candle_nn::{Init, VarBuilder};
use rayon::prelude::*;

use super::Proj;
use crate::{ModelError, Result};

/// Trilinear sampling of token-layout volumes at normalised locations.
///
/// - `values (G, ΣN_l, D)`: `G` independent groups (batch × heads), the
///   levels' voxels concatenated in `shapes` order, each level row-major
///   (last axis fastest) as the patch embedding orders tokens;
/// - `locations (G, Q, L, P, 3)`: per query, level and point, a location in
///   `[0, 1]³` of level `l` (outside samples zeros).
///
/// Returns `(G, Q, L, P, D)`. CPU only (f32, f64); gradients flow to both
/// operands.
///
/// # Errors
/// Shapes that do not fit `shapes`; another device or dtype.
pub fn deform_sample(
    values: &Tensor,
    locations: &Tensor,
    shapes: &[[usize; 3]],
) -> candle_core::Result<Tensor> {
    let op = DeformSample::new(values.dims(), locations.dims(), shapes)?;
    values.contiguous()?.apply_op2(&locations.contiguous()?, op)
}

/// The geometry of one [`deform_sample`] call.
#[derive(Debug, Clone)]
struct DeformSample {
    shapes: Vec<[usize; 3]>,
    /// First voxel row of each level in `values`.
    starts: Vec<usize>,
    groups: usize,
    voxels: usize,
    dim: usize,
    queries: usize,
    points: usize,
}

impl DeformSample {
    fn new(vd: &[usize], ld: &[usize], shapes: &[[usize; 3]]) -> candle_core::Result<Self> {
        let mut starts = Vec::with_capacity(shapes.len());
        let mut voxels = 0;
        for s in shapes {
            starts.push(voxels);
            voxels += s.iter().product::<usize>();
        }
        let ok = vd.len() == 3
            && ld.len() == 5
            && vd[0] == ld[0]
            && vd[1] == voxels
            && ld[2] == shapes.len()
            && ld[4] == 3
            && !shapes.is_empty();
        if !ok {
            candle_core::bail!(
                "deform_sample: values {vd:?}, locations {ld:?} and levels {shapes:?} do not fit \
                 (G, ΣN, D) and (G, Q, L, P, 3)"
            );
        }
        Ok(DeformSample {
            shapes: shapes.to_vec(),
            starts,
            groups: vd[0],
            voxels,
            dim: vd[2],
            queries: ld[1],
            points: ld[3],
        })
    }

    /// Samples per group: `Q · L · P`.
    fn samples(&self) -> usize {
        self.queries * self.shapes.len() * self.points
    }

    /// Calls `f(voxel row, weight, d weight / d location)` for the up to 8
    /// in-range corners around `loc` in level `l`.
    fn corners(&self, l: usize, loc: [f64; 3], mut f: impl FnMut(usize, f64, [f64; 3])) {
        let s = self.shapes[l];
        let mut base = [0i64; 3];
        let mut frac = [0f64; 3];
        for k in 0..3 {
            let c = loc[k] * s[k] as f64 - 0.5;
            if !c.is_finite() {
                return;
            }
            let f0 = c.floor();
            base[k] = f0 as i64;
            frac[k] = c - f0;
        }
        for corner in 0..8 {
            let mut idx = [0usize; 3];
            let mut w = [0f64; 3];
            // d w_k / d loc_k: ±size_k (the coordinate is loc·size − ½).
            let mut dw = [0f64; 3];
            let mut inside = true;
            for k in 0..3 {
                let hi = (corner >> (2 - k)) & 1 == 1;
                let i = base[k] + i64::from(hi);
                if i < 0 || i >= s[k] as i64 {
                    inside = false;
                    break;
                }
                idx[k] = i as usize;
                (w[k], dw[k]) = if hi {
                    (frac[k], s[k] as f64)
                } else {
                    (1.0 - frac[k], -(s[k] as f64))
                };
            }
            if !inside {
                continue;
            }
            let row = self.starts[l] + (idx[0] * s[1] + idx[1]) * s[2] + idx[2];
            let weight = w[0] * w[1] * w[2];
            let grad = [
                dw[0] * w[1] * w[2],
                w[0] * dw[1] * w[2],
                w[0] * w[1] * dw[2],
            ];
            f(row, weight, grad);
        }
    }

    fn location<T: WithDType>(loc: &[T]) -> [f64; 3] {
        [loc[0].to_f64(), loc[1].to_f64(), loc[2].to_f64()]
    }

    fn forward<T: WithDType>(&self, v: &[T], loc: &[T]) -> Vec<T> {
        let (d, ns, levels) = (self.dim, self.samples(), self.shapes.len());
        let mut out = vec![T::zero(); self.groups * ns * d];
        if d == 0 || ns == 0 {
            return out;
        }
        out.par_chunks_mut(ns * d)
            .zip(v.par_chunks(self.voxels * d).zip(loc.par_chunks(ns * 3)))
            .for_each(|(og, (vg, lg))| {
                let mut acc = vec![0f64; d];
                for (si, o) in og.chunks_mut(d).enumerate() {
                    let l = (si / self.points) % levels;
                    acc.iter_mut().for_each(|a| *a = 0.0);
                    self.corners(l, Self::location(&lg[si * 3..]), |row, w, _| {
                        for (a, x) in acc.iter_mut().zip(&vg[row * d..(row + 1) * d]) {
                            *a += w * x.to_f64();
                        }
                    });
                    for (o, a) in o.iter_mut().zip(&acc) {
                        *o = T::from_f64(*a);
                    }
                }
            });
        out
    }

    /// `(d values, d locations)` for the upstream gradient `g`.
    fn backward<T: WithDType>(&self, v: &[T], loc: &[T], g: &[T]) -> (Vec<T>, Vec<T>) {
        let (d, ns, levels) = (self.dim, self.samples(), self.shapes.len());
        let mut dv = vec![T::zero(); v.len()];
        let mut dloc = vec![T::zero(); loc.len()];
        if d == 0 || ns == 0 {
            return (dv, dloc);
        }
        dv.par_chunks_mut(self.voxels * d)
            .zip(dloc.par_chunks_mut(ns * 3))
            .zip(v.par_chunks(self.voxels * d))
            .zip(loc.par_chunks(ns * 3).zip(g.par_chunks(ns * d)))
            .for_each(|(((dvg, dlg), vg), (lg, gg))| {
                let mut acc = vec![0f64; dvg.len()];
                for si in 0..ns {
                    let l = (si / self.points) % levels;
                    let gs = &gg[si * d..(si + 1) * d];
                    let mut dl = [0f64; 3];
                    self.corners(l, Self::location(&lg[si * 3..]), |row, w, dw| {
                        let mut vg_dot = 0.0;
                        let vrow = &vg[row * d..(row + 1) * d];
                        for ((a, x), gv) in acc[row * d..(row + 1) * d].iter_mut().zip(vrow).zip(gs)
                        {
                            let gv = gv.to_f64();
                            *a += w * gv;
                            vg_dot += x.to_f64() * gv;
                        }
                        for k in 0..3 {
                            dl[k] += dw[k] * vg_dot;
                        }
                    });
                    for k in 0..3 {
                        dlg[si * 3 + k] = T::from_f64(dl[k]);
                    }
                }
                for (o, a) in dvg.iter_mut().zip(&acc) {
                    *o = T::from_f64(*a);
                }
            });
        (dv, dloc)
    }
}

/// The sampling on CUDA tensors (feature `cuda`): the geometry in the
/// kernels' terms and the backward as a candle op.
#[cfg(feature = "cuda")]
mod on_gpu {
    use candle_core::{CpuStorage, CudaStorage, CustomOp3, Layout, Shape};

    use super::DeformSample;
    use crate::cuda::deform::{DeformGeometry, deform_bwd};
    pub(super) use crate::cuda::storage::{gpu_of, view, wrap};

    impl DeformSample {
        /// The geometry in the kernels' `int`s (an error past them, never a
        /// silently wrapped size).
        pub(super) fn geometry(&self) -> candle_core::Result<DeformGeometry> {
            let int = |v: usize| {
                i32::try_from(v).map_err(|_| {
                    candle_core::Error::Msg(format!(
                        "deform_sample: size {v} too large for the GPU"
                    ))
                })
            };
            let levels = self
                .shapes
                .iter()
                .zip(&self.starts)
                .map(|(s, &start)| Ok([int(s[0])?, int(s[1])?, int(s[2])?, int(start)?]))
                .collect::<candle_core::Result<Vec<_>>>()?;
            Ok(DeformGeometry {
                levels,
                groups: self.groups,
                voxels: self.voxels,
                dim: self.dim,
                samples: self.samples(),
                points: self.points,
            })
        }
    }

    /// `(values, locations, upstream gradient)` → `[d values | d locations]`.
    pub(super) struct DeformGrad(pub(super) DeformSample);

    impl CustomOp3 for DeformGrad {
        fn name(&self) -> &'static str {
            "deform-sample-3d-grad"
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
            candle_core::bail!("deform-sample-3d-grad: CUDA tensors only")
        }

        fn cuda_fwd(
            &self,
            vs: &CudaStorage,
            vl: &Layout,
            ls: &CudaStorage,
            ll: &Layout,
            gs: &CudaStorage,
            gl: &Layout,
        ) -> candle_core::Result<(CudaStorage, Shape)> {
            let gpu = gpu_of(vs)?;
            let out = deform_bwd(
                &gpu,
                &self.0.geometry()?,
                &view(vs, vl)?,
                &view(ls, ll)?,
                &view(gs, gl)?,
            );
            let len = vl.shape().elem_count() + ll.shape().elem_count();
            Ok((wrap(out, vs)?, Shape::from(len)))
        }
    }
}

/// The contiguous data of a CPU storage.
fn data<'a, T: WithDType>(s: &'a [T], l: &Layout) -> candle_core::Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&s[a..b]),
        None => candle_core::bail!("deform_sample: non-contiguous operand"),
    }
}

impl CustomOp2 for DeformSample {
    fn name(&self) -> &'static str {
        "deform-sample-3d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let shape = Shape::from(vec![
            self.groups,
            self.queries,
            self.shapes.len(),
            self.points,
            self.dim,
        ]);
        let out = match (s1, s2) {
            (CpuStorage::F32(v), CpuStorage::F32(l)) => {
                CpuStorage::F32(self.forward(data(v, l1)?, data(l, l2)?))
            }
            (CpuStorage::F64(v), CpuStorage::F64(l)) => {
                CpuStorage::F64(self.forward(data(v, l1)?, data(l, l2)?))
            }
            _ => candle_core::bail!("deform_sample: f32 or f64 operands of one type"),
        };
        Ok((out, shape))
    }

    /// `deform.cu` on candle's buffers (f32).
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        use on_gpu::{gpu_of, view};
        let gpu = gpu_of(s1)?;
        let out = crate::cuda::deform::deform_fwd(
            &gpu,
            &self.geometry()?,
            &view(s1, l1)?,
            &view(s2, l2)?,
        );
        let shape = Shape::from(vec![
            self.groups,
            self.queries,
            self.shapes.len(),
            self.points,
            self.dim,
        ]);
        Ok((on_gpu::wrap(out, s1)?, shape))
    }

    fn bwd(
        &self,
        v: &Tensor,
        loc: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        type Grads = (Option<Tensor>, Option<Tensor>);
        #[cfg(feature = "cuda")]
        if v.device().is_cuda() {
            let packed =
                v.apply_op3_no_bwd(loc, &g.contiguous()?, &on_gpu::DeformGrad(self.clone()))?;
            let (nv, nl) = (v.elem_count(), loc.elem_count());
            let dv = packed.narrow(0, 0, nv)?.reshape(v.shape())?;
            let dl = packed.narrow(0, nv, nl)?.reshape(loc.shape())?;
            return Ok((v.track_op().then_some(dv), loc.track_op().then_some(dl)));
        }
        fn run<T: WithDType>(
            op: &DeformSample,
            (v, loc, g): (&Tensor, &Tensor, &Tensor),
        ) -> candle_core::Result<Grads> {
            let flat = |t: &Tensor| t.flatten_all()?.to_vec1::<T>();
            let (dv, dl) = op.backward(&flat(v)?, &flat(loc)?, &flat(g)?);
            // Operands without a graph (e.g. fixed locations) need no gradient.
            let wrap = |x: Vec<T>, t: &Tensor| {
                t.track_op()
                    .then(|| Tensor::from_vec(x, t.shape(), t.device()))
                    .transpose()
            };
            Ok((wrap(dv, v)?, wrap(dl, loc)?))
        }
        match v.dtype() {
            DType::F32 => run::<f32>(self, (v, loc, g)),
            DType::F64 => run::<f64>(self, (v, loc, g)),
            dt => candle_core::bail!("deform_sample: unsupported dtype {dt:?}"),
        }
    }
}

/// Normalised voxel centres `((i + ½)/X, (j + ½)/Y, (k + ½)/Z)` of the
/// levels in `shapes`, concatenated in token order: `(ΣN_l, 3)`.
///
/// # Errors
/// Never for valid sizes.
pub fn reference_points(
    shapes: &[[usize; 3]],
    dtype: DType,
    device: &Device,
) -> candle_core::Result<Tensor> {
    let mut v = Vec::new();
    for s in shapes {
        for i in 0..s[0] {
            for j in 0..s[1] {
                for k in 0..s[2] {
                    v.extend([
                        (i as f64 + 0.5) / s[0] as f64,
                        (j as f64 + 0.5) / s[1] as f64,
                        (k as f64 + 0.5) / s[2] as f64,
                    ]);
                }
            }
        }
    }
    let n = v.len() / 3;
    Tensor::from_vec(v, (n, 3), device)?.to_dtype(dtype)
}

/// A token layout: the level grids in token order and the reference
/// points of their voxels (as queries).
#[derive(Debug, Clone)]
pub struct Levels {
    /// Level grids `(X, Y, Z)`, concatenated in this order.
    pub shapes: Vec<[usize; 3]>,
    /// [`reference_points`] of `shapes`: `(ΣN_l, 3)`.
    pub reference: Tensor,
}

impl Levels {
    /// The layout of `shapes` with reference points in `dtype` on `device`.
    ///
    /// # Errors
    /// Never for valid sizes.
    pub fn new(shapes: &[[usize; 3]], dtype: DType, device: &Device) -> Result<Self> {
        Ok(Levels {
            shapes: shapes.to_vec(),
            reference: reference_points(shapes, dtype, device)?,
        })
    }

    /// Tokens per level.
    pub fn counts(&self) -> Vec<usize> {
        self.shapes.iter().map(|s| s.iter().product()).collect()
    }

    /// Total tokens.
    pub fn tokens(&self) -> usize {
        self.counts().iter().sum()
    }
}

/// Sizes of an [`MsDeformAttn`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MsDeformAttnConfig {
    /// Query and output width (the ViT's E).
    pub dim: usize,
    /// Value levels L.
    pub levels: usize,
    /// Attention heads H.
    pub heads: usize,
    /// Sampling points P per head and level.
    pub points: usize,
    /// Value width = `dim · value_ratio`, split over the heads.
    pub value_ratio: f64,
}

impl MsDeformAttnConfig {
    /// The value width.
    pub fn value_dim(&self) -> usize {
        (self.dim as f64 * self.value_ratio) as usize
    }
}

/// 3-D multi-scale deformable attention. Names (PyTorch's):
/// `sampling_offsets.{weight,bias}` `(H·L·P·3, E)`,
/// `attention_weights.{weight,bias}` `(H·L·P, E)`,
/// `value_proj.{weight,bias}` `(V, E)`, `output_proj.{weight,bias}` `(E, V)`;
/// offsets laid out `(H, L, P, xyz)`.
#[derive(Debug, Clone)]
pub struct MsDeformAttn {
    cfg: MsDeformAttnConfig,
    sampling_offsets: Proj,
    attention_weights: Proj,
    value_proj: Proj,
    output_proj: Proj,
}

/// The initial offset bias: head `h` points to cube corner `h mod 8`
/// (`x = ±1` from bit 2, `y` from bit 1, `z` from bit 0 of the corner
/// index), scaled by `p + 1` for point `p`, the same on every level.
fn offset_bias_init(heads: usize, levels: usize, points: usize) -> Vec<f64> {
    let mut b = Vec::with_capacity(heads * levels * points * 3);
    for h in 0..heads {
        let corner = h % 8;
        let dir = [2, 1, 0].map(|bit| if (corner >> bit) & 1 == 1 { 1.0 } else { -1.0 });
        for _ in 0..levels {
            for p in 0..points {
                b.extend(dir.map(|x| x * (p + 1) as f64));
            }
        }
    }
    b
}

impl MsDeformAttn {
    /// Creates (or loads) the layer under `vb` with Deformable DETR's
    /// initialisation (zero offset weights, cube-corner offset bias, zero
    /// attention logits, Xavier-uniform value and output projections).
    ///
    /// # Errors
    /// Zero sizes, a value width not divisible by the heads; a failed
    /// variable lookup.
    pub fn new(cfg: MsDeformAttnConfig, vb: VarBuilder) -> Result<Self> {
        let MsDeformAttnConfig {
            dim,
            levels,
            heads,
            points,
            ..
        } = cfg;
        let vd = cfg.value_dim();
        if dim == 0 || levels == 0 || heads == 0 || points == 0 || vd == 0 {
            return Err(ModelError::Config(format!(
                "MSDeformAttn sizes must be positive: {cfg:?}"
            )));
        }
        if !vd.is_multiple_of(heads) {
            return Err(ModelError::Config(format!(
                "MSDeformAttn: value width {vd} is not divisible by {heads} heads"
            )));
        }
        let hlp = heads * levels * points;
        let zero = Init::Const(0.0);
        let sampling_offsets = Proj::with_bias_values(
            vb.pp("sampling_offsets"),
            (dim, hlp * 3),
            zero,
            &offset_bias_init(heads, levels, points),
        )?;
        let xavier = |i: usize, o: usize| {
            let a = (6.0 / (i + o) as f64).sqrt();
            Init::Uniform { lo: -a, up: a }
        };
        Ok(MsDeformAttn {
            cfg,
            sampling_offsets,
            attention_weights: Proj::new(vb.pp("attention_weights"), dim, hlp, zero, zero)?,
            value_proj: Proj::new(vb.pp("value_proj"), dim, vd, xavier(dim, vd), zero)?,
            output_proj: Proj::new(vb.pp("output_proj"), vd, dim, xavier(vd, dim), zero)?,
        })
    }

    /// The configuration.
    pub fn config(&self) -> MsDeformAttnConfig {
        self.cfg
    }

    /// `query (B, Q, E)` with reference points `(Q, 3)` (see
    /// [`reference_points`]) attending to `input (B, ΣN_l, E)`, the levels
    /// `shapes` concatenated in token order; returns `(B, Q, E)`.
    ///
    /// # Errors
    /// Shapes that do not fit.
    pub fn forward(
        &self,
        query: &Tensor,
        reference: &Tensor,
        input: &Tensor,
        shapes: &[[usize; 3]],
    ) -> Result<Tensor> {
        let MsDeformAttnConfig {
            levels: l,
            heads: h,
            points: p,
            ..
        } = self.cfg;
        let (b, q, _) = query.dims3()?;
        let (bi, nv, _) = input.dims3()?;
        if shapes.len() != l || bi != b || reference.dims() != [q, 3] {
            return Err(ModelError::Input(format!(
                "MSDeformAttn({l} levels): query {:?}, reference {:?}, input {:?}, levels {shapes:?}",
                query.dims(),
                reference.dims(),
                input.dims()
            )));
        }
        let dh = self.cfg.value_dim() / h;
        let value = self
            .value_proj
            .forward(input)?
            .reshape((b, nv, h, dh))?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b * h, nv, dh))?;
        // Offsets are in voxels of their level: divide by the level's size.
        let inv: Vec<f64> = shapes
            .iter()
            .flat_map(|s| s.map(|n| 1.0 / n as f64))
            .collect();
        let inv = Tensor::from_vec(inv, vec![1, 1, 1, l, 1, 3], query.device())?
            .to_dtype(query.dtype())?;
        let loc = self
            .sampling_offsets
            .forward(query)?
            .reshape(vec![b, q, h, l, p, 3])?
            .broadcast_mul(&inv)?
            .broadcast_add(&reference.reshape(vec![1, q, 1, 1, 1, 3])?)?
            .permute(vec![0, 2, 1, 3, 4, 5])?
            .contiguous()?
            .reshape(vec![b * h, q, l, p, 3])?;
        let attn = self
            .attention_weights
            .forward(query)?
            .reshape((b, q, h, l * p))?;
        // Composed softmax: `softmax_last_dim` has no backward in candle.
        let attn = candle_nn::ops::softmax(&attn, D::Minus1)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b * h * q, l * p, 1))?;
        let samples = deform_sample(&value, &loc, shapes)?.reshape((b * h * q, l * p, dh))?;
        let out = samples
            .broadcast_mul(&attn)?
            .sum(1)?
            .reshape((b, h, q, dh))?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b, q, h * dh))?;
        Ok(self.output_proj.forward(&out)?)
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor, Var};
    use candle_nn::{VarBuilder, VarMap};

    use super::*;
    use crate::kernels_ref::testing::uniform;
    use crate::seg::test_util::{assert_close, check_fd, f64s, tensor};

    /// A plain loop over the eight corners with explicit bounds checks.
    fn reference(
        v: &[f64],
        loc: &[f64],
        (g, q, p, d): (usize, usize, usize, usize),
        shapes: &[[usize; 3]],
    ) -> Vec<f64> {
        let nv: usize = shapes.iter().map(|s| s.iter().product::<usize>()).sum();
        let mut out = Vec::new();
        for gi in 0..g {
            for qi in 0..q {
                let mut start = 0;
                for (li, s) in shapes.iter().enumerate() {
                    for pi in 0..p {
                        let at = (((gi * q + qi) * shapes.len() + li) * p + pi) * 3;
                        let c: Vec<f64> = (0..3).map(|k| loc[at + k] * s[k] as f64 - 0.5).collect();
                        let voxel = |x: i64, y: i64, z: i64, di: usize| -> f64 {
                            let inside = (0..s[0] as i64).contains(&x)
                                && (0..s[1] as i64).contains(&y)
                                && (0..s[2] as i64).contains(&z);
                            if !inside {
                                return 0.0;
                            }
                            let row =
                                start + ((x as usize * s[1]) + y as usize) * s[2] + z as usize;
                            v[(gi * nv + row) * d + di]
                        };
                        let (x0, y0, z0) = (c[0].floor(), c[1].floor(), c[2].floor());
                        let (fx, fy, fz) = (c[0] - x0, c[1] - y0, c[2] - z0);
                        for di in 0..d {
                            let mut acc = 0.0;
                            for (dx, wx) in [(0, 1.0 - fx), (1, fx)] {
                                for (dy, wy) in [(0, 1.0 - fy), (1, fy)] {
                                    for (dz, wz) in [(0, 1.0 - fz), (1, fz)] {
                                        acc += wx
                                            * wy
                                            * wz
                                            * voxel(
                                                x0 as i64 + dx,
                                                y0 as i64 + dy,
                                                z0 as i64 + dz,
                                                di,
                                            );
                                    }
                                }
                            }
                            out.push(acc);
                        }
                    }
                    start += s.iter().product::<usize>();
                }
            }
        }
        out
    }

    const SHAPES: [[usize; 3]; 2] = [[3, 4, 2], [2, 1, 3]];

    /// Locations in [−0.3, 1.3): some fall outside (zero padding).
    fn locations(shape: &[usize], seed: u64) -> Tensor {
        let n = shape.iter().product();
        let v: Vec<f64> = uniform(n, seed, 0.8)
            .iter()
            .map(|&x| f64::from(x) + 0.5)
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn sampling_matches_a_loop_reference_with_zero_padding() {
        let (g, q, p, d) = (3, 5, 2, 4);
        let nv = 24 + 6;
        let v = tensor(&[g, nv, d], 1, DType::F64);
        let loc = locations(&[g, q, 2, p, 3], 2);
        let lv = f64s(&loc);
        assert!(lv.iter().any(|&x| x < 0.0) && lv.iter().any(|&x| x > 1.0));
        let got = deform_sample(&v, &loc, &SHAPES).unwrap();
        assert_eq!(got.dims(), &[g, q, 2, p, d]);
        let want = reference(&f64s(&v), &lv, (g, q, p, d), &SHAPES);
        assert_close(&f64s(&got), &want, 1e-12, "samples");
        // A location far outside samples exactly zero.
        let far = Tensor::full(5f64, (g, q, 2, p, 3), &Device::Cpu).unwrap();
        assert!(
            f64s(&deform_sample(&v, &far, &SHAPES).unwrap())
                .iter()
                .all(|&x| x == 0.0)
        );
        // f32 agrees.
        let got32 = deform_sample(
            &v.to_dtype(DType::F32).unwrap(),
            &loc.to_dtype(DType::F32).unwrap(),
            &SHAPES,
        )
        .unwrap();
        assert_close(&f64s(&got32), &want, 1e-5, "f32 samples");
        // Shapes that do not fit are refused.
        assert!(deform_sample(&v, &loc, &SHAPES[..1]).is_err());
    }

    #[test]
    fn sampling_gradients_match_finite_differences() {
        let (g, q, p, d) = (2, 4, 2, 3);
        let vshape = [g, 30, d];
        let lshape = [g, q, 2, p, 3];
        let v = Var::from_tensor(&tensor(&vshape, 3, DType::F64)).unwrap();
        let loc = Var::from_tensor(&locations(&lshape, 4)).unwrap();
        let r = tensor(&[g, q, 2, p, d], 5, DType::F64);
        let grads = (deform_sample(v.as_tensor(), loc.as_tensor(), &SHAPES).unwrap() * &r)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let gv = f64s(grads.get(v.as_tensor()).unwrap());
        let gl = f64s(grads.get(loc.as_tensor()).unwrap());
        assert!(gv.iter().any(|&x| x != 0.0) && gl.iter().any(|&x| x != 0.0));
        let lt = loc.as_tensor().clone();
        let vt = v.as_tensor().clone();
        check_fd(
            &f64s(&vt),
            &vshape,
            &gv,
            |t| (deform_sample(t, &lt, &SHAPES)? * &r)?.sum_all(),
            1e-6,
        );
        check_fd(
            &f64s(&lt),
            &lshape,
            &gl,
            |t| (deform_sample(&vt, t, &SHAPES)? * &r)?.sum_all(),
            1e-6,
        );
        // Fixed locations get no gradient; values still do.
        let grads = deform_sample(v.as_tensor(), &lt.detach(), &SHAPES)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        assert!(grads.get(v.as_tensor()).is_some());
    }

    #[test]
    fn reference_points_are_voxel_centres() {
        let r = f64s(&reference_points(&[[2, 1, 4], [1, 1, 1]], DType::F64, &Device::Cpu).unwrap());
        assert_eq!(r.len(), 9 * 3);
        assert_eq!(&r[..3], &[0.25, 0.5, 0.125]);
        assert_eq!(&r[3..6], &[0.25, 0.5, 0.375]);
        assert_eq!(&r[21..24], &[0.75, 0.5, 0.875]);
        assert_eq!(&r[24..], &[0.5, 0.5, 0.5]);
    }

    fn layer(vm: &VarMap, levels: usize, points: usize) -> MsDeformAttn {
        MsDeformAttn::new(
            MsDeformAttnConfig {
                dim: 8,
                levels,
                heads: 2,
                points,
                value_ratio: 0.5,
            },
            VarBuilder::from_varmap(vm, DType::F64, &Device::Cpu),
        )
        .unwrap()
    }

    #[test]
    fn initialisation_follows_deformable_detr() {
        let vm = VarMap::new();
        let _ = layer(&vm, 2, 3);
        let data = vm.data().lock().unwrap();
        let b = f64s(data["sampling_offsets.bias"].as_tensor());
        assert_eq!(b.len(), 2 * 2 * 3 * 3);
        // Head 0 → corner (−,−,−), head 1 → (−,−,+); point p scaled by p + 1.
        assert_eq!(&b[..9], &[-1., -1., -1., -2., -2., -2., -3., -3., -3.]);
        assert_eq!(&b[9..12], &[-1., -1., -1.], "same on the next level");
        assert_eq!(&b[18..21], &[-1., -1., 1.]);
        for n in [
            "sampling_offsets.weight",
            "attention_weights.weight",
            "attention_weights.bias",
            "value_proj.bias",
            "output_proj.bias",
        ] {
            assert!(f64s(data[n].as_tensor()).iter().all(|&x| x == 0.0), "{n}");
        }
        let w = f64s(data["value_proj.weight"].as_tensor());
        let bound = (6.0f64 / 12.0).sqrt();
        assert!(w.iter().all(|x| x.abs() <= bound) && w.iter().any(|&x| x != 0.0));
        assert_eq!(data["value_proj.weight"].dims(), &[4, 8]);
        assert_eq!(data["output_proj.weight"].dims(), &[8, 4]);
        let corners: Vec<[f64; 3]> = offset_bias_init(8, 1, 1)
            .chunks(3)
            .map(|c| [c[0], c[1], c[2]])
            .collect();
        for (i, a) in corners.iter().enumerate() {
            assert!(a.iter().all(|x| x.abs() == 1.0));
            assert!(corners[..i].iter().all(|b| b != a), "8 distinct corners");
        }
    }

    #[test]
    fn zero_offsets_and_one_point_read_the_value_at_the_reference() {
        // Queries on the same grid as the single value level; with zero
        // offsets each query samples exactly its own voxel, so the output
        // is output_proj(value_proj(input)) token by token.
        let vm = VarMap::new();
        let attn = layer(&vm, 1, 1);
        {
            let data = vm.data().lock().unwrap();
            let bias = data["sampling_offsets.bias"].as_tensor();
            data["sampling_offsets.bias"]
                .set(&bias.zeros_like().unwrap())
                .unwrap();
            for n in ["value_proj.bias", "output_proj.bias"] {
                let t = data[n].as_tensor();
                data[n].set(&tensor(t.dims(), 9, DType::F64)).unwrap();
            }
        }
        let shape = [3, 2, 2];
        let input = tensor(&[2, 12, 8], 6, DType::F64);
        let query = tensor(&[2, 12, 8], 7, DType::F64);
        let refs = reference_points(&[shape], DType::F64, &Device::Cpu).unwrap();
        let got = attn.forward(&query, &refs, &input, &[shape]).unwrap();
        let data = vm.data().lock().unwrap();
        let w = |n: &str| data[n].as_tensor().clone();
        let value = input
            .broadcast_matmul(&w("value_proj.weight").t().unwrap())
            .unwrap()
            .broadcast_add(&w("value_proj.bias"))
            .unwrap();
        let want = value
            .broadcast_matmul(&w("output_proj.weight").t().unwrap())
            .unwrap()
            .broadcast_add(&w("output_proj.bias"))
            .unwrap();
        assert_close(&f64s(&got), &f64s(&want), 1e-12, "output");
        drop(data);
        // Levels that do not match the input's token count are refused.
        assert!(attn.forward(&query, &refs, &input, &[[2, 2, 4]]).is_err());
    }

    /// One trilinear sample (zero padding) of channels `c0..c0 + n` of the
    /// level starting at voxel row `start` of `v` (rows of `d` values).
    fn sample_one(
        v: &[f64],
        (d, c0, n): (usize, usize, usize),
        start: usize,
        s: [usize; 3],
        loc: [f64; 3],
    ) -> Vec<f64> {
        let mut out = vec![0.0; n];
        let c: Vec<f64> = (0..3).map(|k| loc[k] * s[k] as f64 - 0.5).collect();
        for corner in 0..8usize {
            let mut w = 1.0;
            let mut idx = [0i64; 3];
            for k in 0..3 {
                let hi = (corner >> k) & 1;
                idx[k] = c[k].floor() as i64 + hi as i64;
                let f = c[k] - c[k].floor();
                w *= if hi == 1 { f } else { 1.0 - f };
            }
            if (0..3).all(|k| (0..s[k] as i64).contains(&idx[k])) {
                let row =
                    start + ((idx[0] as usize * s[1]) + idx[1] as usize) * s[2] + idx[2] as usize;
                for (i, o) in out.iter_mut().enumerate() {
                    *o += w * v[row * d + c0 + i];
                }
            }
        }
        out
    }

    #[test]
    fn random_weights_match_a_loop_reference() {
        let (e, h, l, p, vd) = (8, 2, 2, 3, 4);
        let dh = vd / h;
        let vm = VarMap::new();
        let attn = layer(&vm, l, p);
        {
            let data = vm.data().lock().unwrap();
            for (i, (name, var)) in data.iter().enumerate() {
                let t = tensor(var.dims(), 40 + i as u64, DType::F64);
                let t = if name.starts_with("sampling_offsets") {
                    (t * 0.3).unwrap()
                } else {
                    t
                };
                var.set(&t).unwrap();
            }
        }
        let shapes = [[3, 2, 4], [1, 2, 2]];
        let (b, q, nv) = (2, 5, 28);
        let query = tensor(&[b, q, e], 50, DType::F64);
        let input = tensor(&[b, nv, e], 51, DType::F64);
        let refs = tensor(&[q, 3], 52, DType::F64).affine(0.5, 0.5).unwrap();
        let got = f64s(&attn.forward(&query, &refs, &input, &shapes).unwrap());

        let data = vm.data().lock().unwrap();
        let w = |n: &str| f64s(data[n].as_tensor());
        let lin = |x: &[f64], wn: &str, bn: &str, o: usize| -> Vec<f64> {
            let (wt, bt) = (w(wn), w(bn));
            let i = x.len();
            (0..o)
                .map(|r| bt[r] + (0..i).map(|j| wt[r * i + j] * x[j]).sum::<f64>())
                .collect()
        };
        let (qv, iv, rv) = (f64s(&query), f64s(&input), f64s(&refs));
        let mut want = Vec::new();
        for bi in 0..b {
            let value: Vec<f64> = (0..nv)
                .flat_map(|n| {
                    let x = &iv[(bi * nv + n) * e..(bi * nv + n + 1) * e];
                    lin(x, "value_proj.weight", "value_proj.bias", vd)
                })
                .collect();
            for qi in 0..q {
                let x = &qv[(bi * q + qi) * e..(bi * q + qi + 1) * e];
                let off = lin(
                    x,
                    "sampling_offsets.weight",
                    "sampling_offsets.bias",
                    h * l * p * 3,
                );
                let logit = lin(
                    x,
                    "attention_weights.weight",
                    "attention_weights.bias",
                    h * l * p,
                );
                let mut heads = vec![0.0; vd];
                for hi in 0..h {
                    let lg = &logit[hi * l * p..(hi + 1) * l * p];
                    let m = lg.iter().cloned().fold(f64::MIN, f64::max);
                    let z: f64 = lg.iter().map(|v| (v - m).exp()).sum();
                    let mut start = 0;
                    for (li, s) in shapes.iter().enumerate() {
                        for pi in 0..p {
                            let j = (hi * l + li) * p + pi;
                            let a = (lg[li * p + pi] - m).exp() / z;
                            let loc: [f64; 3] = std::array::from_fn(|k| {
                                rv[qi * 3 + k] + off[j * 3 + k] / s[k] as f64
                            });
                            let smp = sample_one(&value, (vd, hi * dh, dh), start, *s, loc);
                            for (o, v) in heads[hi * dh..(hi + 1) * dh].iter_mut().zip(smp) {
                                *o += a * v;
                            }
                        }
                        start += s.iter().product::<usize>();
                    }
                }
                want.extend(lin(&heads, "output_proj.weight", "output_proj.bias", e));
            }
        }
        assert_close(&got, &want, 1e-10, "MSDeformAttn");
        drop(data);
        // The query's gradient (through offsets, logits and the sampling
        // op's location gradient) against central differences.
        let qvar = Var::from_tensor(&query).unwrap();
        let r = tensor(&[b, q, e], 53, DType::F64);
        let loss = |t: &Tensor| (attn.forward(t, &refs, &input, &shapes).unwrap() * &r)?.sum_all();
        let g = loss(qvar.as_tensor()).unwrap().backward().unwrap();
        let g = f64s(g.get(qvar.as_tensor()).unwrap());
        assert!(g.iter().any(|&x| x != 0.0));
        check_fd(&qv, &[b, q, e], &g, loss, 1e-6);
    }
}
