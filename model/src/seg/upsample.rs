//! Trilinear resizing with PyTorch's `align_corners=False` semantics,
//! differentiable: each axis is a matmul with a two-tap interpolation
//! matrix, so candle's matmul backward gives the gradient.
//!
//! For output index `i` on an axis of `n_in → n_out`, the source coordinate
//! is `max(0, (i + ½)·n_in/n_out − ½)`; it blends `floor` and `floor + 1`
//! (clamped to the last index) linearly. With integer factors this is
//! exactly `F.interpolate(scale_factor=…)` too.

use candle_core::{DType, Device, Tensor};

/// The `(n_out, n_in)` two-tap interpolation matrix of one axis.
///
/// # Errors
/// Zero sizes.
pub fn linear_interp_matrix(
    n_in: usize,
    n_out: usize,
    dtype: DType,
    device: &Device,
) -> candle_core::Result<Tensor> {
    if n_in == 0 || n_out == 0 {
        candle_core::bail!("interpolation between {n_in} and {n_out} samples");
    }
    let scale = n_in as f64 / n_out as f64;
    let mut m = vec![0f64; n_out * n_in];
    for i in 0..n_out {
        let src = ((i as f64 + 0.5) * scale - 0.5).max(0.0);
        let i0 = (src.floor() as usize).min(n_in - 1);
        let i1 = (i0 + 1).min(n_in - 1);
        let l1 = src - i0 as f64;
        m[i * n_in + i0] += 1.0 - l1;
        m[i * n_in + i1] += l1;
    }
    Tensor::from_vec(m, (n_out, n_in), device)?.to_dtype(dtype)
}

/// Resizes `x (B, C, D, H, W)` to `size` trilinearly (`align_corners=False`).
///
/// # Errors
/// A tensor that is not 5-D; zero sizes.
pub fn upsample_trilinear(x: &Tensor, size: [usize; 3]) -> candle_core::Result<Tensor> {
    let dims = x.dims5()?;
    let mut y = x.clone();
    let mut cur = [dims.0, dims.1, dims.2, dims.3, dims.4];
    for (axis, &n_out) in [4usize, 3, 2]
        .iter()
        .zip([size[2], size[1], size[0]].iter())
    {
        let n_in = cur[*axis];
        if n_in == n_out {
            continue;
        }
        let m = linear_interp_matrix(n_in, n_out, x.dtype(), x.device())?;
        // Move the axis last, interpolate, move it back.
        let moved = if *axis == 4 {
            y
        } else {
            y.transpose(*axis, 4)?
        }
        .contiguous()?;
        let lead: Vec<usize> = moved.dims()[..4].to_vec();
        let rows = lead.iter().product::<usize>();
        let out = moved.reshape((rows, n_in))?.matmul(&m.t()?)?;
        let mut out_dims = lead;
        out_dims.push(n_out);
        let out = out.reshape(out_dims)?;
        y = if *axis == 4 {
            out
        } else {
            out.transpose(*axis, 4)?
        };
        cur[*axis] = n_out;
    }
    y.contiguous()
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor, Var};

    use super::*;
    use crate::seg::test_util::{assert_close, check_fd, f64s, tensor};

    /// PyTorch's source index and taps for one axis, in f64.
    fn taps(i: usize, n_in: usize, n_out: usize) -> (usize, usize, f64) {
        let src = ((i as f64 + 0.5) * n_in as f64 / n_out as f64 - 0.5).max(0.0);
        let i0 = src as usize;
        let i1 = if i0 < n_in - 1 { i0 + 1 } else { i0 };
        (i0, i1, src - i0 as f64)
    }

    /// Naive trilinear (8 corners) reference.
    fn reference(x: &[f64], dims: [usize; 5], size: [usize; 3]) -> Vec<f64> {
        let [b, c, d, h, w] = dims;
        let [od, oh, ow] = size;
        let mut out = Vec::with_capacity(b * c * od * oh * ow);
        for bc in 0..b * c {
            for z in 0..od {
                let (z0, z1, lz) = taps(z, d, od);
                for y in 0..oh {
                    let (y0, y1, ly) = taps(y, h, oh);
                    for xx in 0..ow {
                        let (x0, x1, lx) = taps(xx, w, ow);
                        let at =
                            |zi: usize, yi: usize, xi: usize| x[((bc * d + zi) * h + yi) * w + xi];
                        let mut s = 0.0;
                        for (zi, wz) in [(z0, 1.0 - lz), (z1, lz)] {
                            for (yi, wy) in [(y0, 1.0 - ly), (y1, ly)] {
                                for (xi, wx) in [(x0, 1.0 - lx), (x1, lx)] {
                                    s += wz * wy * wx * at(zi, yi, xi);
                                }
                            }
                        }
                        out.push(s);
                    }
                }
            }
        }
        out
    }

    #[test]
    fn matches_pytorch_on_a_known_case() {
        let x = Tensor::new(&[0.0f64, 1.0], &Device::Cpu)
            .unwrap()
            .reshape((1, 1, 1, 1, 2))
            .unwrap();
        let y = f64s(&upsample_trilinear(&x, [1, 1, 4]).unwrap());
        assert_eq!(y, vec![0.0, 0.25, 0.75, 1.0]);
    }

    #[test]
    fn matches_the_corner_reference() {
        let dims = [2, 3, 5, 6, 7];
        let x = tensor(&dims, 41, DType::F32);
        for size in [[10, 12, 14], [20, 24, 28], [7, 6, 9], [3, 4, 2], [5, 6, 7]] {
            let got = f64s(&upsample_trilinear(&x, size).unwrap());
            let want = reference(&f64s(&x), dims, size);
            assert_close(&got, &want, 1e-6, &format!("{size:?}"));
        }
    }

    #[test]
    fn gradients_match_central_differences() {
        let shape = [1, 2, 2, 3, 4];
        let x = Var::from_tensor(&tensor(&shape, 42, DType::F64)).unwrap();
        let r = tensor(&[1, 2, 5, 6, 8], 43, DType::F64);
        let loss = |t: &Tensor| (upsample_trilinear(t, [5, 6, 8])? * &r)?.sum_all();
        let grads = loss(x.as_tensor()).unwrap().backward().unwrap();
        let g = f64s(grads.get(x.as_tensor()).unwrap());
        check_fd(&f64s(x.as_tensor()), &shape, &g, loss, 1e-6);
    }
}
