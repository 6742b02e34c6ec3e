//! Flat teacher EMA: the reference for the fused GPU update.

use crate::{ModelError, Result};

/// `teacher[i] ← m·teacher[i] + (1 − m)·student[i]` over one flat buffer
/// holding every parameter.
///
/// Rounds like [`crate::optim::ema_update_var`] on f32 tensors (`m` and
/// `1 − m` are taken in f64, then rounded to f32; each product and the sum
/// are rounded separately), so the GPU kernel can match it bit for bit.
///
/// # Errors
/// [`ModelError::Input`] when the two buffers differ in length.
pub fn ema_update_flat(teacher: &mut [f32], student: &[f32], momentum: f64) -> Result<()> {
    if teacher.len() != student.len() {
        return Err(ModelError::Input(format!(
            "EMA: teacher buffer has {} values, student {}",
            teacher.len(),
            student.len()
        )));
    }
    let (m, one_minus) = ema_factors(momentum);
    for (t, &s) in teacher.iter_mut().zip(student) {
        *t = *t * m + s * one_minus;
    }
    Ok(())
}

/// `(m, 1 − m)` as f32, the second computed in f64 first (candle's rounding).
pub(crate) fn ema_factors(momentum: f64) -> (f32, f32) {
    (momentum as f32, (1.0 - momentum) as f32)
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor, Var};

    use super::*;
    use crate::kernels_ref::testing::uniform;
    use crate::optim::ema_update_var;

    #[test]
    fn matches_the_var_update_bit_for_bit() {
        let t0 = uniform(1000, 1, 2.0);
        let s = uniform(1000, 2, 2.0);
        let tv = Var::from_tensor(&Tensor::from_slice(&t0, 1000, &Device::Cpu).unwrap()).unwrap();
        let sv = Var::from_tensor(&Tensor::from_slice(&s, 1000, &Device::Cpu).unwrap()).unwrap();
        ema_update_var(&tv, &sv, 0.996).unwrap();
        let want: Vec<f32> = tv.as_tensor().to_vec1().unwrap();
        let mut got = t0.clone();
        ema_update_flat(&mut got, &s, 0.996).unwrap();
        assert_eq!(got, want);
    }

    #[test]
    fn momentum_one_keeps_the_teacher_and_zero_copies_the_student() {
        let mut t = vec![1.0, -2.0, 3.5];
        ema_update_flat(&mut t, &[9.0, 9.0, 9.0], 1.0).unwrap();
        assert_eq!(t, [1.0, -2.0, 3.5]);
        ema_update_flat(&mut t, &[4.0, 5.0, 6.0], 0.0).unwrap();
        assert_eq!(t, [4.0, 5.0, 6.0]);
    }

    #[test]
    fn different_lengths_are_refused() {
        let err = ema_update_flat(&mut [0.0; 3], &[0.0; 2], 0.9).unwrap_err();
        assert!(matches!(err, ModelError::Input(_)), "{err}");
    }
}
