//! The fused ops on a CUDA device (feature `cuda`): their forward passes'
//! `cuda_fwd` and their backward passes as candle ops, all through the
//! kernels of [`crate::cuda::fused`] on candle's stream and buffers. The CPU
//! kernels beside this file are their references (`tests` below run on a
//! GPU and print "skipped: no CUDA device" elsewhere).

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CudaStorage, CustomOp2, CustomOp3, Layout, Shape, Tensor};

use crate::cuda::fused as kernels;
pub(super) use crate::cuda::storage::{gpu_of, view, view_bf16, wrap};

/// f32 or bf16 on a CUDA device: the GELU's GPU twin applies (bf16 computed
/// in f32, as on the CPU).
pub(super) fn gelu_fusable_on_gpu(t: &Tensor) -> bool {
    t.device().is_cuda()
        && matches!(
            t.dtype(),
            candle_core::DType::F32 | candle_core::DType::BF16
        )
}

/// f32 on a CUDA device: the GPU twins apply.
pub(super) fn fusable_on_gpu(t: &Tensor) -> bool {
    t.device().is_cuda() && t.dtype() == candle_core::DType::F32
}

/// GELU's input gradient on the GPU.
pub(super) fn gelu_grad(x: &Tensor, g: &Tensor) -> candle_core::Result<Tensor> {
    x.apply_op2_no_bwd(&g.contiguous()?, &GeluGrad)
}

/// Softmax's input gradient on the GPU, from its output `y`.
pub(super) fn softmax_grad(y: &Tensor, g: &Tensor, scale: f64) -> candle_core::Result<Tensor> {
    y.apply_op2_no_bwd(&g.contiguous()?, &SoftmaxGrad { scale })
}

/// LayerNorm's `(dx, dw, db)` on the GPU (one packed kernel output, split).
pub(super) fn layer_norm_grads(
    x: &Tensor,
    w: &Tensor,
    g: &Tensor,
    eps: f64,
) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
    let packed = x.apply_op3_no_bwd(w, &g.contiguous()?, &LayerNormGrad { eps })?;
    let (n, d) = (x.elem_count(), w.elem_count());
    Ok((
        packed.narrow(0, 0, n)?.reshape(x.shape())?,
        packed.narrow(0, n, d)?.reshape(w.shape())?,
        packed.narrow(0, n + d, d)?.reshape(w.shape())?,
    ))
}

struct GeluGrad;

impl CustomOp2 for GeluGrad {
    fn name(&self) -> &'static str {
        "fused-gelu-erf-grad"
    }
    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("fused-gelu-erf-grad: CUDA tensors only")
    }
    fn cuda_fwd(
        &self,
        xs: &CudaStorage,
        xl: &Layout,
        gs: &CudaStorage,
        gl: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let gpu = gpu_of(xs)?;
        let dx = if xs.dtype() == candle_core::DType::BF16 {
            let dx = kernels::gelu_bwd(&gpu, &view_bf16(xs, xl)?, &view_bf16(gs, gl)?);
            wrap(dx, xs)?
        } else {
            wrap(kernels::gelu_bwd(&gpu, &view(xs, xl)?, &view(gs, gl)?), xs)?
        };
        Ok((dx, xl.shape().clone()))
    }
}

struct SoftmaxGrad {
    scale: f64,
}

impl CustomOp2 for SoftmaxGrad {
    fn name(&self) -> &'static str {
        "fused-softmax-grad"
    }
    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("fused-softmax-grad: CUDA tensors only")
    }
    fn cuda_fwd(
        &self,
        ys: &CudaStorage,
        yl: &Layout,
        gs: &CudaStorage,
        gl: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let gpu = gpu_of(ys)?;
        let n = yl.shape().dims().last().copied().unwrap_or(1);
        let dx = kernels::softmax_bwd(&gpu, &view(ys, yl)?, &view(gs, gl)?, n, self.scale);
        Ok((wrap(dx, ys)?, yl.shape().clone()))
    }
}

struct LayerNormGrad {
    eps: f64,
}

impl CustomOp3 for LayerNormGrad {
    fn name(&self) -> &'static str {
        "fused-layer-norm-grad"
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
        candle_core::bail!("fused-layer-norm-grad: CUDA tensors only")
    }
    fn cuda_fwd(
        &self,
        xs: &CudaStorage,
        xl: &Layout,
        ws: &CudaStorage,
        wl: &Layout,
        gs: &CudaStorage,
        gl: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let gpu = gpu_of(xs)?;
        let out = kernels::layer_norm_bwd(
            &gpu,
            &view(xs, xl)?,
            &view(ws, wl)?,
            &view(gs, gl)?,
            self.eps,
        );
        let len = xl.shape().elem_count() + 2 * wl.shape().elem_count();
        Ok((wrap(out, xs)?, Shape::from(len)))
    }
}

#[cfg(test)]
mod tests {
    //! GPU twins against the CPU kernels, on one CUDA device; where none is
    //! usable each test prints "skipped: no CUDA device" and passes
    //! (`scripts/gpu-check.sh --run` counts that as a failure on the GPU
    //! machine).

    use candle_core::{Device, Tensor, Var};

    use crate::kernels_ref::testing::{max_rel_err, normal};

    fn gpu() -> Option<Device> {
        match crate::cuda::GpuContext::new(0) {
            Ok(g) => Some(g.device()),
            Err(e) => {
                println!("skipped: no CUDA device ({e})");
                None
            }
        }
    }

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    /// Forward value and every input gradient of `f`, on `dev`, for inputs
    /// `xs` (a weighted sum of the output as the loss, so gradients are not
    /// uniform).
    fn run(
        dev: &Device,
        xs: &[(Vec<f32>, Vec<usize>)],
        f: &dyn Fn(&[Tensor]) -> Tensor,
    ) -> (Vec<f32>, Vec<Vec<f32>>) {
        let vars: Vec<Var> = xs
            .iter()
            .map(|(v, s)| {
                Var::from_tensor(&Tensor::from_slice(v, s.as_slice(), dev).unwrap()).unwrap()
            })
            .collect();
        let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let y = f(&ts);
        let weights = Tensor::from_vec(normal(y.elem_count(), 99), y.shape(), dev).unwrap();
        let loss = (&y * &weights).unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        let g = ts
            .iter()
            .map(|t| values(grads.get(t).expect("a gradient")))
            .collect();
        (values(&y), g)
    }

    fn compare(
        name: &str,
        xs: &[(Vec<f32>, Vec<usize>)],
        f: &dyn Fn(&[Tensor]) -> Tensor,
        bound: f64,
    ) {
        let Some(dev) = gpu() else { return };
        let (y_cpu, g_cpu) = run(&Device::Cpu, xs, f);
        let (y_gpu, g_gpu) = run(&dev, xs, f);
        let err = max_rel_err(&y_gpu, &y_cpu);
        println!("{name} forward: rel err {err:.3e}");
        assert!(err <= bound, "{name} forward: {err:.3e} > {bound:.0e}");
        for (i, (a, b)) in g_gpu.iter().zip(&g_cpu).enumerate() {
            let err = max_rel_err(a, b);
            println!("{name} gradient {i}: rel err {err:.3e}");
            assert!(err <= bound, "{name} gradient {i}: {err:.3e} > {bound:.0e}");
        }
    }

    #[test]
    fn gelu_on_the_gpu_matches_the_cpu_kernel() {
        let n = 100_003;
        compare(
            "gelu",
            &[(normal(n, 1), vec![n])],
            &|t| super::super::gelu_erf(&t[0]).unwrap(),
            1e-5,
        );
    }

    /// bf16 GELU (the MLP's hidden layer under bf16 autocast): the GPU's
    /// forward and input gradient against the CPU's bf16 path, both
    /// computed in f32 and rounded once; their erf and exp differ in the
    /// last f32 bits, so a value may round to the neighbouring bf16 (one
    /// bf16 step: 2⁻⁸ to 2⁻⁷ of the value), no further.
    #[test]
    fn bf16_gelu_on_the_gpu_matches_the_cpu_kernel() {
        use candle_core::DType;
        let Some(dev) = gpu() else { return };
        let n = 100_003;
        let run = |dev: &Device| {
            let x = Tensor::from_vec(normal(n, 3), n, &Device::Cpu)
                .unwrap()
                .affine(3.0, 0.0)
                .unwrap()
                .to_dtype(DType::BF16)
                .unwrap()
                .to_device(dev)
                .unwrap();
            let x = Var::from_tensor(&x).unwrap();
            let y = super::super::gelu_erf(x.as_tensor()).unwrap();
            assert_eq!(y.dtype(), DType::BF16);
            let w = Tensor::from_vec(normal(n, 4), n, &Device::Cpu)
                .unwrap()
                .to_dtype(DType::BF16)
                .unwrap()
                .to_device(dev)
                .unwrap();
            let grads = (&y * &w).unwrap().sum_all().unwrap().backward().unwrap();
            let dx = grads.get(x.as_tensor()).unwrap();
            assert_eq!(dx.dtype(), DType::BF16);
            let f = |t: &Tensor| {
                t.to_dtype(DType::F32)
                    .unwrap()
                    .to_device(&Device::Cpu)
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
            };
            (f(&y), f(dx))
        };
        let (cpu, cuda) = (run(&Device::Cpu), run(&dev));
        for (name, a, b) in [("forward", &cuda.0, &cpu.0), ("dx", &cuda.1, &cpu.1)] {
            let worst = a
                .iter()
                .zip(b)
                .map(|(x, y)| f64::from((x - y).abs()) / f64::from(y.abs()).max(1e-3))
                .fold(0.0, f64::max);
            println!("bf16 gelu on the GPU, {name}: worst rel err {worst:.3e}");
            assert!(
                worst <= 2f64.powi(-7) * 1.01,
                "bf16 gelu {name}: {worst:.3e}"
            );
        }
    }

    #[test]
    fn softmax_on_the_gpu_matches_the_cpu_kernel() {
        for (rows, n, scale) in [(37, 1000, 0.125), (512, 217, 1.0), (3, 2049, -0.5)] {
            compare(
                &format!("softmax {rows}x{n} scale {scale}"),
                &[(normal(rows * n, 2), vec![rows, n])],
                &|t| super::super::softmax_last_dim(&t[0], scale).unwrap(),
                1e-4,
            );
        }
    }

    #[test]
    fn layer_norm_on_the_gpu_matches_the_cpu_kernel() {
        for (rows, d) in [(300, 384), (65, 1024), (7, 1500)] {
            let w: Vec<f32> = normal(d, 4).iter().map(|v| 1.0 + 0.1 * v).collect();
            compare(
                &format!("layer_norm {rows}x{d}"),
                &[
                    (
                        normal(rows * d, 3).iter().map(|v| 3.0 * v + 1.0).collect(),
                        vec![rows, d],
                    ),
                    (w, vec![d]),
                    (normal(d, 5), vec![d]),
                ],
                &|t| super::super::layer_norm(&t[0], &t[1], &t[2], 1e-6).unwrap(),
                1e-4,
            );
        }
    }
}
