//! safetensors files: atomic writes, `VarMap` save and load.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use crate::{ModelError, Result};

fn ckpt_err(path: &Path, reason: impl std::fmt::Display) -> ModelError {
    ModelError::Checkpoint {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// Writes `tensors` to `path` atomically: a temporary file in the same
/// directory, fsync, rename over `path`, fsync of the directory. A crash
/// leaves either the old file or the new one, never a torn one.
pub fn save_tensors(tensors: &HashMap<String, Tensor>, path: &Path) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = path
        .file_name()
        .ok_or_else(|| ckpt_err(path, "not a file path"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(format!(".tmp{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let result = (|| -> Result<()> {
        candle_core::safetensors::save(tensors, &tmp).map_err(|e| ckpt_err(path, e))?;
        File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(|e| ckpt_err(path, e))?;
        std::fs::rename(&tmp, path).map_err(|e| ckpt_err(path, e))?;
        // Make the rename itself durable (not supported on every platform).
        if let Ok(d) = File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Reads every tensor of a safetensors file onto `device`.
pub fn load_tensors(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    candle_core::safetensors::load(path, device).map_err(|e| ckpt_err(path, e))
}

/// Saves every variable of `varmap` (atomically).
pub fn save_varmap(varmap: &candle_nn::VarMap, path: &Path) -> Result<()> {
    let tensors: HashMap<String, Tensor> = varmap
        .data()
        .lock()
        .expect("VarMap lock poisoned")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
        .collect();
    save_tensors(&tensors, path)
}

/// What [`load_into_varmap`] matched.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Variables set from the tensors.
    pub loaded: Vec<String>,
    /// Variables with no tensor of their name (left unchanged).
    pub missing: Vec<String>,
    /// Tensors with no variable of their name (ignored).
    pub unexpected: Vec<String>,
}

impl LoadReport {
    /// Error unless every variable was loaded and every tensor used.
    pub fn ensure_complete(&self) -> Result<()> {
        if self.missing.is_empty() && self.unexpected.is_empty() {
            return Ok(());
        }
        Err(ModelError::Input(format!(
            "weights do not match the model: missing {:?}, unexpected {:?}",
            self.missing, self.unexpected
        )))
    }
}

/// Sets the variables of `varmap` from same-named tensors (converted to the
/// variable's dtype and device). A shape mismatch is an error; names present
/// on one side only are reported, not errors (PyTorch `strict=False`).
pub fn load_into_varmap(
    varmap: &candle_nn::VarMap,
    tensors: &HashMap<String, Tensor>,
) -> Result<LoadReport> {
    let vars = varmap.data().lock().expect("VarMap lock poisoned");
    let mut report = LoadReport::default();
    for (name, var) in vars.iter() {
        let Some(t) = tensors.get(name) else {
            report.missing.push(name.clone());
            continue;
        };
        if t.dims() != var.dims() {
            return Err(ModelError::Input(format!(
                "{name}: checkpoint shape {:?}, model shape {:?}",
                t.dims(),
                var.dims()
            )));
        }
        var.set(&t.to_dtype(var.dtype())?.to_device(var.device())?)?;
        report.loaded.push(name.clone());
    }
    report.unexpected = tensors
        .keys()
        .filter(|k| !vars.contains_key(*k))
        .cloned()
        .collect();
    report.loaded.sort();
    report.missing.sort();
    report.unexpected.sort();
    Ok(report)
}

/// Loads a safetensors file written by [`save_varmap`] into `varmap`,
/// requiring an exact name match.
pub fn load_varmap(varmap: &candle_nn::VarMap, path: &Path) -> Result<()> {
    let device = varmap
        .all_vars()
        .first()
        .map(|v| v.device().clone())
        .unwrap_or(Device::Cpu);
    let tensors = load_tensors(path, &device)?;
    load_into_varmap(varmap, &tensors)?.ensure_complete()
}
