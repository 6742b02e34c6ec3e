//! Compute precision of the training step, as PyTorch's autocast and 3DINO's
//! mixed precision do it: parameters, optimiser state, LayerNorm, softmax,
//! losses, Sinkhorn-Knopp, AdamW and the EMA stay f32; under `bf16` the
//! matmuls (linear layers, patch embedding, attention, the heads'
//! prototypes) take bf16 operands with f32 accumulation and hand f32 on.
//!
//! The setting is per thread and scoped ([`autocast`] returns a guard), like
//! `torch.autocast`: the training loop sets it once, tests on other threads
//! are not affected.

use std::cell::Cell;

use candle_core::{DType, Tensor};

/// The step's compute precision (recipe key `train.precision`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// Everything in f32.
    #[default]
    F32,
    /// f32 tensors, matmuls on tensor cores in TF32 (CUDA; f32 on the CPU).
    Tf32,
    /// Matmuls in bf16 with f32 accumulation; everything else f32.
    Bf16,
}

impl Precision {
    /// Recipe names, in the order of the variants.
    pub const NAMES: [&'static str; 3] = ["f32", "tf32", "bf16"];

    /// Its recipe name.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => Self::NAMES[0],
            Self::Tf32 => Self::NAMES[1],
            Self::Bf16 => Self::NAMES[2],
        }
    }

    /// Looks a precision up by its recipe name.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "f32" => Some(Self::F32),
            "tf32" => Some(Self::Tf32),
            "bf16" => Some(Self::Bf16),
            _ => None,
        }
    }
}

thread_local! {
    static CURRENT: Cell<Precision> = const { Cell::new(Precision::F32) };
}

/// The precision in force on this thread.
pub fn current() -> Precision {
    CURRENT.with(Cell::get)
}

/// Restores the previous precision when dropped.
#[derive(Debug)]
#[must_use = "the precision holds only while the guard lives"]
pub struct AutocastGuard {
    previous: Precision,
}

impl Drop for AutocastGuard {
    fn drop(&mut self) {
        set(self.previous);
    }
}

/// Sets `p` on this thread until the guard is dropped. TF32 is also
/// switched in candle's CUDA matmuls (a process-wide setting there).
pub fn autocast(p: Precision) -> AutocastGuard {
    let previous = current();
    set(p);
    AutocastGuard { previous }
}

fn set(p: Precision) {
    CURRENT.with(|c| c.set(p));
    #[cfg(feature = "cuda")]
    candle_core::cuda::set_gemm_reduced_precision_f32(p == Precision::Tf32);
}

/// `a · b` (candle's matmul, batched over leading axes) in the precision in
/// force: under bf16, float operands are cast to bf16, multiplied with f32
/// accumulation, and the product is cast back to `a`'s dtype. The casts have
/// gradients, so the backward's matmuls run in bf16 too and the parameters
/// receive f32 gradients.
///
/// A bf16 `a` (an activation kept in bf16, such as the MLP's hidden layer)
/// gives an f32 product, so the residual stream stays f32.
pub(crate) fn matmul(a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    match bf16_product_dtype(a.dtype()) {
        Some(out) => matmul_bf16(a, b)?.to_dtype(out),
        None => a.matmul(b),
    }
}

/// The dtype [`matmul`] casts its bf16 product to for a left operand of
/// dtype `a`, or `None` when it multiplies in `a`'s own dtype (no bf16
/// autocast in force, or a non-float operand).
pub(crate) fn bf16_product_dtype(a: DType) -> Option<DType> {
    if current() != Precision::Bf16 {
        return None;
    }
    match a {
        DType::F32 | DType::F64 => Some(a),
        DType::BF16 => Some(DType::F32),
        _ => None,
    }
}

/// `a · b` with bf16 operands and f32 accumulation, the product left in
/// bf16: autocast's matmul output, for a layer whose consumer takes bf16.
pub(crate) fn matmul_bf16(a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    a.to_dtype(DType::BF16)?.matmul(&b.to_dtype(DType::BF16)?)
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor, Var};

    use super::*;
    use crate::kernels_ref::testing::{max_rel_err, normal};

    #[test]
    fn names_round_trip_and_the_guard_restores() {
        for (i, n) in Precision::NAMES.iter().enumerate() {
            let p = Precision::from_name(n).unwrap();
            assert_eq!(p.name(), *n);
            assert_eq!(Precision::NAMES[i], p.name());
        }
        assert_eq!(Precision::from_name("fp16"), None);
        assert_eq!(current(), Precision::F32);
        {
            let _outer = autocast(Precision::Bf16);
            assert_eq!(current(), Precision::Bf16);
            {
                let _inner = autocast(Precision::Tf32);
                assert_eq!(current(), Precision::Tf32);
            }
            assert_eq!(current(), Precision::Bf16);
        }
        assert_eq!(current(), Precision::F32);
        // Per thread: another thread sees its own default.
        let _g = autocast(Precision::Bf16);
        assert_eq!(std::thread::spawn(current).join().unwrap(), Precision::F32);
    }

    /// Under bf16 the product is the f32 product up to bf16 rounding of the
    /// operands (8 significant bits: relative error about 2⁻⁸ per operand),
    /// the output dtype is f32, and both operands get f32 gradients equal to
    /// the f32 ones up to the same rounding; under f32 and tf32 (CPU) it is
    /// candle's matmul exactly.
    #[test]
    fn bf16_matmul_is_the_f32_product_up_to_operand_rounding() {
        let dev = Device::Cpu;
        let a =
            Var::from_tensor(&Tensor::from_vec(normal(6 * 64, 1), (6, 64), &dev).unwrap()).unwrap();
        let b =
            Var::from_tensor(&Tensor::from_vec(normal(64 * 5, 2), (64, 5), &dev).unwrap()).unwrap();
        let run = |p: Precision| {
            let _g = autocast(p);
            let y = matmul(a.as_tensor(), b.as_tensor()).unwrap();
            assert_eq!(y.dtype(), DType::F32);
            let grads = (&y * &y).unwrap().sum_all().unwrap().backward().unwrap();
            let v = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let ga = grads.get(a.as_tensor()).unwrap();
            assert_eq!(ga.dtype(), DType::F32);
            (v(&y), v(ga), v(grads.get(b.as_tensor()).unwrap()))
        };
        let exact = run(Precision::F32);
        assert_eq!(run(Precision::Tf32), exact, "tf32 is f32 on the CPU");
        let half = run(Precision::Bf16);
        let want = a.as_tensor().matmul(b.as_tensor()).unwrap();
        assert_eq!(
            exact.0,
            want.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
        for (name, got, want) in [
            ("product", &half.0, &exact.0),
            ("grad a", &half.1, &exact.1),
            ("grad b", &half.2, &exact.2),
        ] {
            let err = max_rel_err(got, want);
            // Two or three bf16 roundings in a row (operands, product, the
            // backward's operands): well under 2⁻⁵.
            assert!(err < 3e-2, "{name}: rel err {err:.3e}");
            assert!(
                err > 1e-5,
                "{name}: rel err {err:.3e}, so bf16 was not used"
            );
        }
    }
}
