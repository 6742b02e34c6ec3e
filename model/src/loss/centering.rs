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
    let logits = teacher_logits.detach().to_dtype(DType::F32)?;
    if logits.device().is_cpu() {
        let l = logits.flatten_all()?.to_vec1::<f32>()?;
        let q = sinkhorn_cpu(&l, n, k, temp, iterations);
        return Ok(Tensor::from_vec(q, (n, k), logits.device())?.to_dtype(dtype)?);
    }
    #[cfg(feature = "cuda")]
    if logits.device().is_cuda() && iterations > 0 {
        // Our kernels on candle's stream: 2 + 2·iterations launches instead
        // of a dozen composed passes per iteration.
        return Ok(crate::cuda::sinkhorn_knopp_tensor(&logits, temp, iterations)?.to_dtype(dtype)?);
    }
    Ok(sinkhorn_composed(&logits, temp, iterations)?.to_dtype(dtype)?)
}

/// [`sinkhorn_knopp`] from candle ops (any device), on f32 logits `(n, K)`.
pub(super) fn sinkhorn_composed(logits: &Tensor, temp: f64, iterations: usize) -> Result<Tensor> {
    let (n, k) = logits.dims2()?;
    let q = (logits / temp)?.exp()?.t()?;
    let mut q = q.broadcast_div(&q.sum_all()?)?;
    for _ in 0..iterations {
        q = (q.broadcast_div(&q.sum_keepdim(1)?)? / k as f64)?;
        q = (q.broadcast_div(&q.sum_keepdim(0)?)? / n as f64)?;
    }
    Ok((q * n as f64)?.t()?.contiguous()?)
}

/// [`sinkhorn_knopp`] on the CPU in a few passes over one `(n, K)` buffer:
/// the composed version walks the transposed matrix about a dozen times with
/// strided reductions. Values are f32 as in 3DINO; the sums are f64 in a fixed
/// order (each column's over rows in order, each row's left to right), so the
/// result does not depend on the thread count.
pub(super) fn sinkhorn_cpu(
    logits: &[f32],
    n: usize,
    k: usize,
    temp: f64,
    iterations: usize,
) -> Vec<f32> {
    let mut alone = |_: &mut [f64]| Ok::<(), std::convert::Infallible>(());
    let Ok(q) = sinkhorn_cpu_reduced(logits, n, k, temp, iterations, &mut alone);
    q
}

/// [`sinkhorn_cpu`] with every sum over samples passed through `reduce`
/// (the sample count, the grand total, the prototype sums): an all-reduce
/// makes this rank's `n` rows part of one Sinkhorn-Knopp over all ranks'
/// rows, as 3DINO's distributed version. Per-sample sums stay local.
pub(super) fn sinkhorn_cpu_reduced<E>(
    logits: &[f32],
    n: usize,
    k: usize,
    temp: f64,
    iterations: usize,
    reduce: &mut dyn FnMut(&mut [f64]) -> std::result::Result<(), E>,
) -> std::result::Result<Vec<f32>, E> {
    use rayon::prelude::*;
    let mut count = [n as f64];
    reduce(&mut count)?;
    let n_total = count[0] as usize;
    let inv_temp = (1.0 / temp) as f32;
    let mut q: Vec<f32> = logits.par_iter().map(|v| (v * inv_temp).exp()).collect();
    let row_sums = |q: &[f32]| -> Vec<f64> {
        q.par_chunks(k)
            .map(|r| r.iter().map(|&v| f64::from(v)).sum::<f64>())
            .collect()
    };
    let mut total = [row_sums(&q).iter().sum::<f64>()];
    reduce(&mut total)?;
    let total = total[0] as f32;
    q.par_iter_mut().for_each(|v| *v /= total);
    const COLUMN_BLOCK: usize = 1024;
    for _ in 0..iterations {
        // Prototypes (columns) to sum 1/K.
        let mut cols = vec![0f64; k];
        cols.par_chunks_mut(COLUMN_BLOCK)
            .enumerate()
            .for_each(|(b, acc)| {
                let (c0, w) = (b * COLUMN_BLOCK, acc.len());
                for row in q.chunks(k) {
                    for (a, &v) in acc.iter_mut().zip(&row[c0..c0 + w]) {
                        *a += f64::from(v);
                    }
                }
            });
        reduce(&mut cols)?;
        let cols: Vec<f32> = cols.iter().map(|&c| c as f32).collect();
        q.par_chunks_mut(k).for_each(|row| {
            for (v, &c) in row.iter_mut().zip(&cols) {
                *v = *v / c / k as f32;
            }
        });
        // Samples (rows) to sum 1/n_total.
        let rows = row_sums(&q);
        q.par_chunks_mut(k).zip(rows).for_each(|(row, r)| {
            let r = r as f32;
            for v in row.iter_mut() {
                *v = *v / r / n_total as f32;
            }
        });
    }
    q.par_iter_mut().for_each(|v| *v *= n_total as f32);
    Ok(q)
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
        self.blend(&batch)
    }

    /// `c ← m·c + (1 − m)·batch` for a batch mean `(1, K)`.
    pub(super) fn blend(&mut self, batch: &Tensor) -> Result<()> {
        self.center = ((&self.center * self.momentum)? + (batch * (1.0 - self.momentum))?)?;
        Ok(())
    }
}
