//! Stride-1 "same" 3-D convolution on the CPU as im2col + matmul, tiled
//! along depth so the column matrix stays under [`COL_BUDGET`] elements:
//! each column row is the input shifted by one kernel offset, built from
//! row copies, and candle's (multithreaded) matmul does the arithmetic.

use candle_core::{Device, Tensor, WithDType};

/// Most elements of one column tile (64 MiB of f32).
pub(crate) const COL_BUDGET: usize = 16 << 20;

/// Output depth slices per tile for `rows` column rows of `plane` voxels.
fn tile_depth(budget: usize, rows: usize, plane: usize, depth: usize) -> usize {
    (budget / (rows * plane).max(1)).clamp(1, depth)
}

/// Columns `(C·k³, nz·H·W)` of one volume `x (C, D, H, W)` for output depths
/// `z0..z0 + nz`: row `(c, kd, kh, kw)` holds `x[c, z + kd − p, y + kh − p,
/// w + kw − p]`, zero outside.
fn columns<T: WithDType>(x: &[T], dims: [usize; 4], k: usize, z0: usize, nz: usize) -> Vec<T> {
    let [c, d, h, w] = dims;
    let p = k / 2;
    let plane = h * w;
    let n = nz * plane;
    let mut col = vec![T::zero(); c * k * k * k * n];
    let mut row = 0;
    for ci in 0..c {
        for kd in 0..k {
            for kh in 0..k {
                for kw in 0..k {
                    let dst = &mut col[row * n..(row + 1) * n];
                    for zi in 0..nz {
                        let sz = (z0 + zi + kd) as isize - p as isize;
                        if sz < 0 || sz >= d as isize {
                            continue;
                        }
                        for yi in 0..h {
                            let sy = (yi + kh) as isize - p as isize;
                            if sy < 0 || sy >= h as isize {
                                continue;
                            }
                            // Output x range whose source x + kw − p is inside.
                            let lo = p.saturating_sub(kw);
                            let hi = (w + p).saturating_sub(kw).min(w);
                            if lo >= hi {
                                continue;
                            }
                            let src = ((ci * d + sz as usize) * h + sy as usize) * w;
                            let s0 = src + lo + kw - p;
                            let d0 = zi * plane + yi * w;
                            dst[d0 + lo..d0 + hi].copy_from_slice(&x[s0..s0 + hi - lo]);
                        }
                    }
                    row += 1;
                }
            }
        }
    }
    col
}

/// `x (B, C, D, H, W)` ⋆ `w (O, C, k, k, k)` → `(B, O, D, H, W)`, all
/// contiguous, `k` odd.
pub(crate) fn conv3d_cpu<T: WithDType>(
    x: &[T],
    xdims: [usize; 5],
    w: &[T],
    o: usize,
    k: usize,
    budget: usize,
) -> candle_core::Result<Vec<T>> {
    let [b, c, d, h, wd] = xdims;
    let rows = c * k * k * k;
    let plane = h * wd;
    let dev = &Device::Cpu;
    let wt = Tensor::from_slice(w, (o, rows), dev)?;
    let mut out = vec![T::zero(); b * o * d * plane];
    let tz = tile_depth(budget, rows, plane, d);
    for bi in 0..b {
        let xb = &x[bi * c * d * plane..(bi + 1) * c * d * plane];
        let ob = &mut out[bi * o * d * plane..(bi + 1) * o * d * plane];
        for z0 in (0..d).step_by(tz) {
            let nz = tz.min(d - z0);
            let n = nz * plane;
            let col = Tensor::from_vec(columns(xb, [c, d, h, wd], k, z0, nz), (rows, n), dev)?;
            let y: Vec<T> = wt.matmul(&col)?.flatten_all()?.to_vec1()?;
            for oi in 0..o {
                let at = (oi * d + z0) * plane;
                ob[at..at + n].copy_from_slice(&y[oi * n..(oi + 1) * n]);
            }
        }
    }
    Ok(out)
}

/// The kernel gradient `Σ grad (B, O, D, H, W) ⊗ columns(x)` as `(O, C·k³)`.
pub(crate) fn conv3d_kernel_grad<T: WithDType>(
    x: &[T],
    xdims: [usize; 5],
    grad: &[T],
    o: usize,
    k: usize,
    budget: usize,
) -> candle_core::Result<Tensor> {
    let [b, c, d, h, wd] = xdims;
    let rows = c * k * k * k;
    let plane = h * wd;
    let dev = &Device::Cpu;
    let tz = tile_depth(budget, rows, plane, d);
    let mut acc: Option<Tensor> = None;
    for bi in 0..b {
        let xb = &x[bi * c * d * plane..(bi + 1) * c * d * plane];
        let gb = &grad[bi * o * d * plane..(bi + 1) * o * d * plane];
        for z0 in (0..d).step_by(tz) {
            let nz = tz.min(d - z0);
            let n = nz * plane;
            let col = Tensor::from_vec(columns(xb, [c, d, h, wd], k, z0, nz), (rows, n), dev)?;
            let mut g = Vec::with_capacity(o * n);
            for oi in 0..o {
                let at = (oi * d + z0) * plane;
                g.extend_from_slice(&gb[at..at + n]);
            }
            let g = Tensor::from_vec(g, (o, n), dev)?;
            let part = g.matmul(&col.t()?)?;
            acc = Some(match acc {
                Some(a) => (a + part)?,
                None => part,
            });
        }
    }
    acc.ok_or_else(|| candle_core::Error::Msg("conv3d: empty batch".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels_ref::testing::uniform;

    #[test]
    fn depth_tiles_give_the_untiled_result() {
        let dims = [2, 3, 7, 5, 4];
        let (o, k) = (2, 3);
        let x: Vec<f64> = uniform(dims.iter().product(), 1, 1.0)
            .into_iter()
            .map(f64::from)
            .collect();
        let w: Vec<f64> = uniform(o * 3 * 27, 2, 1.0)
            .into_iter()
            .map(f64::from)
            .collect();
        let g: Vec<f64> = uniform(2 * o * 7 * 5 * 4, 3, 1.0)
            .into_iter()
            .map(f64::from)
            .collect();
        let whole = conv3d_cpu(&x, dims, &w, o, k, COL_BUDGET).unwrap();
        // One output slice (3·27 rows × 20 voxels) per tile.
        let tiled = conv3d_cpu(&x, dims, &w, o, k, 81 * 20).unwrap();
        assert_eq!(whole, tiled);
        let gw = |budget| -> Vec<f64> {
            conv3d_kernel_grad(&x, dims, &g, o, k, budget)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap()
        };
        let (a, b) = (gw(COL_BUDGET), gw(81 * 20 * 2));
        for (p, q) in a.iter().zip(&b) {
            assert!((p - q).abs() < 1e-12);
        }
    }
}
