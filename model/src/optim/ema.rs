//! Teacher EMA: `t ← m·t + (1 − m)·s` for every parameter.

use candle_core::Var;

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
    let t = teacher.as_tensor().detach();
    let s = student.as_tensor().detach().to_dtype(t.dtype())?;
    teacher.set(&((t * momentum)? + (s * (1.0 - momentum))?)?)?;
    Ok(())
}
