//! Teacher-target centring: Sinkhorn-Knopp (3DINO's choice) and the softmax
//! centring with an EMA centre.

use candle_core::{D, DType, Tensor};

use crate::{ModelError, Result};

/// Sinkhorn-Knopp teacher probabilities `(n, K)` from teacher logits `(n, K)`.
///
/// In f32 and without max-subtraction, as 3DINO: `Q = exp(logits/temp)ᵀ`
/// (K×n), `Q /= ΣQ`, then `iterations` times: rows (prototypes) to sum `1/K`,
/// columns (samples) to sum `1/n`; finally `Q·n`, transposed. Each returned
/// row sums to 1. The result is detached and in the input's dtype.
pub fn sinkhorn_knopp(teacher_logits: &Tensor, temp: f64, iterations: usize) -> Result<Tensor> {
    let (n, k) = teacher_logits.dims2()?;
    if n == 0 || k == 0 {
        return Err(ModelError::Input(
            "Sinkhorn-Knopp on an empty tensor".into(),
        ));
    }
    let dtype = teacher_logits.dtype();
    let q = (teacher_logits.detach().to_dtype(DType::F32)? / temp)?
        .exp()?
        .t()?;
    let mut q = q.broadcast_div(&q.sum_all()?)?;
    for _ in 0..iterations {
        q = (q.broadcast_div(&q.sum_keepdim(1)?)? / k as f64)?;
        q = (q.broadcast_div(&q.sum_keepdim(0)?)? / n as f64)?;
    }
    Ok((q * n as f64)?.t()?.contiguous()?.to_dtype(dtype)?)
}

/// DINO's softmax centring: `softmax((t − c)/temp)` with centre `c` an EMA
/// (momentum 0.9 in 3DINO) of the teacher logits' batch mean.
#[derive(Debug, Clone)]
pub struct SoftmaxCentering {
    center: Tensor,
    momentum: f64,
}

impl SoftmaxCentering {
    /// Zero centre `(1, K)` on `device`.
    pub fn new(k: usize, momentum: f64, device: &candle_core::Device) -> Result<Self> {
        Ok(Self {
            center: Tensor::zeros((1, k), DType::F32, device)?,
            momentum,
        })
    }

    /// The current centre `(1, K)`.
    pub fn center(&self) -> &Tensor {
        &self.center
    }

    /// Replaces the centre (resuming from a checkpoint); it must be `(1, K)`.
    pub fn set_center(&mut self, center: Tensor) -> Result<()> {
        if center.dims() != self.center.dims() {
            return Err(ModelError::Input(format!(
                "centre has shape {:?}, expected {:?}",
                center.dims(),
                self.center.dims()
            )));
        }
        self.center = center
            .to_dtype(DType::F32)?
            .to_device(self.center.device())?;
        Ok(())
    }

    /// Teacher probabilities with the current centre (detached). Call
    /// before [`Self::update`] with the same batch: DINOv2 applies a batch's
    /// centre update only from the next batch on.
    pub fn probs(&self, teacher_logits: &Tensor, temp: f64) -> Result<Tensor> {
        let c = self.center.to_dtype(teacher_logits.dtype())?;
        let z = (teacher_logits.detach().broadcast_sub(&c)? / temp)?;
        Ok(candle_nn::ops::softmax(&z, D::Minus1)?)
    }

    /// `c ← m·c + (1 − m)·mean_rows(logits)`.
    pub fn update(&mut self, teacher_logits: &Tensor) -> Result<()> {
        let batch = teacher_logits
            .detach()
            .to_dtype(DType::F32)?
            .mean_keepdim(0)?;
        self.center = ((&self.center * self.momentum)? + (batch * (1.0 - self.momentum))?)?;
        Ok(())
    }
}
