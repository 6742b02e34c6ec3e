//! Teacher EMA: `t ← m·t + (1 − m)·s` for every parameter.

use candle_core::{CpuStorage, DType, InplaceOp2, Layout, Tensor, Var};
use rayon::prelude::*;

use crate::{ModelError, Result};

/// Updates each teacher variable from the student variable of the same name.
/// Both maps must hold exactly the same names and shapes.
pub fn ema_update(
    teacher: &candle_nn::VarMap,
    student: &candle_nn::VarMap,
    momentum: f64,
) -> Result<()> {
    let t = teacher.data().lock().expect("VarMap lock poisoned");
    let s = student.data().lock().expect("VarMap lock poisoned");
    if t.len() != s.len() {
        return Err(ModelError::Input(format!(
            "EMA: teacher has {} parameters, student {}",
            t.len(),
            s.len()
        )));
    }
    for (name, tv) in t.iter() {
        let sv = s
            .get(name)
            .ok_or_else(|| ModelError::Input(format!("EMA: student has no {name}")))?;
        ema_update_var(tv, sv, momentum)?;
    }
    Ok(())
}

/// `teacher ← momentum·teacher + (1 − momentum)·student` for one variable.
pub fn ema_update_var(teacher: &Var, student: &Var, momentum: f64) -> Result<()> {
    if teacher.dims() != student.dims() {
        return Err(ModelError::Input(format!(
            "EMA: shapes differ {:?} vs {:?}",
            teacher.dims(),
            student.dims()
        )));
    }
    let t = teacher.as_tensor();
    let s = student.as_tensor().detach().to_dtype(t.dtype())?;
    if fusable(t, &s) {
        // One multithreaded pass over the teacher's own storage, instead of
        // three single-threaded tensor ops that each allocate, and a copy.
        t.inplace_op2(&s, &EmaInPlace { momentum })?;
        return Ok(());
    }
    let t = t.detach();
    teacher.set(&((t * momentum)? + (s * (1.0 - momentum))?)?)?;
    Ok(())
}

/// f32 on the CPU (or, with the `cuda` feature, on one CUDA device), both
/// contiguous and of one length: the in-place pass applies.
fn fusable(t: &Tensor, s: &Tensor) -> bool {
    let device_ok = t.device().is_cpu() || (cfg!(feature = "cuda") && t.device().is_cuda());
    device_ok
        && t.device().same_device(s.device())
        && t.dtype() == DType::F32
        && s.dtype() == DType::F32
        && t.is_contiguous()
        && s.is_contiguous()
        && t.elem_count() == s.elem_count()
}

/// Elements per parallel task.
const CHUNK: usize = 1 << 14;

/// `t ← m·t + (1 − m)·s` in place, with the tensor path's f32 arithmetic
/// (two products rounded to f32, then their sum), so both paths agree bit
/// for bit (up to the sign of a zero result).
struct EmaInPlace {
    momentum: f64,
}

impl InplaceOp2 for EmaInPlace {
    fn name(&self) -> &'static str {
        "ema-in-place"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<()> {
        let (CpuStorage::F32(teacher), CpuStorage::F32(student)) = (s1, s2) else {
            candle_core::bail!("ema-in-place: f32 tensors only");
        };
        let (Some(tr), Some(sr)) = (l1.contiguous_offsets(), l2.contiguous_offsets()) else {
            candle_core::bail!("ema-in-place: contiguous tensors only");
        };
        let (t, s) = (&mut teacher[tr.0..tr.1], &student[sr.0..sr.1]);
        if t.len() != s.len() {
            candle_core::bail!("ema-in-place: {} vs {} elements", t.len(), s.len());
        }
        let (m, one_m) = (self.momentum as f32, (1.0 - self.momentum) as f32);
        t.par_chunks_mut(CHUNK)
            .zip(s.par_chunks(CHUNK))
            .for_each(|(t, s)| {
                for (t, &s) in t.iter_mut().zip(s) {
                    *t = *t * m + s * one_m;
                }
            });
        Ok(())
    }

    /// The fused GPU kernel on the tensors' own buffers (same rounding as
    /// the CPU pass: bit-identical, `tests/cuda_kernels.rs`).
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &mut candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<()> {
        use crate::cuda::storage::{gpu_of, to_candle};
        let (Some(tr), Some(sr)) = (l1.contiguous_offsets(), l2.contiguous_offsets()) else {
            candle_core::bail!("ema-in-place: contiguous tensors only");
        };
        let gpu = gpu_of(s1)?;
        let student = s2.as_cuda_slice::<f32>()?.slice(sr.0..sr.1);
        let teacher = s1.as_cuda_slice_mut::<f32>()?;
        crate::cuda::ema_update_view(
            &gpu,
            &mut teacher.slice_mut(tr.0..tr.1),
            &student,
            self.momentum,
        )
        .map_err(to_candle)
    }
}
