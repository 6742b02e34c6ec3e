//! safetensors files: atomic writes with a checksum of every tensor,
//! verified loads, `VarMap` save and load.
//!
//! Each file dino3d writes carries, in the safetensors metadata under
//! [`CHECKSUMS_KEY`], the xxh3-64 of every tensor's stored bytes. A load
//! checks them all, so a flipped bit in a weight or an optimiser moment is
//! reported (and a training run falls back to its previous checkpoint)
//! instead of training on it. Files without the key (written by other
//! tools, or by dino3d before it) load unchecked.

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

fn io_err(path: &Path, source: std::io::Error) -> ModelError {
    ModelError::CheckpointIo {
        path: path.to_path_buf(),
        source,
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
        // The safetensors crate writes through a private temporary file
        // (mode 0600); a plain `File::create` tells which mode the user's
        // umask gives new files, and the output gets that one.
        let mode = File::create(&tmp)
            .and_then(|f| f.metadata())
            .map_err(|e| io_err(path, e))?
            .permissions();
        let metadata = HashMap::from([(CHECKSUMS_KEY.to_string(), checksums(tensors)?)]);
        safetensors::serialize_to_file(tensors.iter(), Some(metadata), &tmp).map_err(
            |e| match e {
                safetensors::SafeTensorError::IoError(e) => io_err(path, e),
                e => ckpt_err(path, e),
            },
        )?;
        std::fs::set_permissions(&tmp, mode).map_err(|e| io_err(path, e))?;
        File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(|e| io_err(path, e))?;
        std::fs::rename(&tmp, path).map_err(|e| io_err(path, e))?;
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

/// The metadata key holding the tensors' checksums (a JSON object of
/// tensor name to xxh3-64 hex of its stored bytes).
pub const CHECKSUMS_KEY: &str = "dino3d.xxh3";

/// The checksum of every tensor, as the JSON text stored in the metadata.
fn checksums(tensors: &HashMap<String, Tensor>) -> Result<String> {
    let sums: std::collections::BTreeMap<&str, String> = tensors
        .iter()
        .map(|(k, t)| {
            let bytes = safetensors::View::data(t);
            (
                k.as_str(),
                format!("{:016x}", xxhash_rust::xxh3::xxh3_64(&bytes)),
            )
        })
        .collect();
    Ok(serde_json::to_string(&sums).expect("a map of strings serialises"))
}

/// Reads every tensor of a safetensors file onto `device`, checking each
/// against its stored checksum when the file has them.
///
/// # Errors
/// An unreadable or malformed file, or a tensor whose bytes do not match
/// its checksum (named in the message).
pub fn load_tensors(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    let bytes = std::fs::read(path).map_err(|e| ckpt_err(path, e))?;
    verify_checksums(&bytes, path)?;
    candle_core::safetensors::load_buffer(&bytes, device).map_err(|e| ckpt_err(path, e))
}

/// Checks the tensors of a safetensors file's `bytes` against the
/// checksums in its metadata (nothing to check without them).
fn verify_checksums(bytes: &[u8], path: &Path) -> Result<()> {
    let (_, meta) =
        safetensors::SafeTensors::read_metadata(bytes).map_err(|e| ckpt_err(path, e))?;
    let Some(text) = meta.metadata().as_ref().and_then(|m| m.get(CHECKSUMS_KEY)) else {
        return Ok(());
    };
    let sums: HashMap<String, String> = serde_json::from_str(text)
        .map_err(|e| ckpt_err(path, format!("{CHECKSUMS_KEY} metadata: {e}")))?;
    let file = safetensors::SafeTensors::deserialize(bytes).map_err(|e| ckpt_err(path, e))?;
    let names = file.names();
    if names.len() != sums.len() {
        return Err(ckpt_err(
            path,
            format!(
                "{} tensors for {} checksums: tensors were added or lost",
                names.len(),
                sums.len()
            ),
        ));
    }
    for name in names {
        let view = file.tensor(name).map_err(|e| ckpt_err(path, e))?;
        let got = format!("{:016x}", xxhash_rust::xxh3::xxh3_64(view.data()));
        match sums.get(name) {
            Some(want) if *want == got => {}
            Some(_) => {
                return Err(ckpt_err(
                    path,
                    format!("tensor `{name}` does not match its checksum (damaged file)"),
                ));
            }
            None => return Err(ckpt_err(path, format!("tensor `{name}` has no checksum"))),
        }
    }
    Ok(())
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

#[cfg(test)]
mod checksum_tests {
    use super::*;

    fn tensors() -> HashMap<String, Tensor> {
        [
            (
                "a".to_string(),
                Tensor::arange(0f32, 300.0, &Device::Cpu).unwrap(),
            ),
            (
                "b".to_string(),
                Tensor::new(&[7u32, 8, 9], &Device::Cpu).unwrap(),
            ),
        ]
        .into()
    }

    /// Every tensor is checked: a bit flipped anywhere in any tensor's data
    /// is an error naming that tensor; the intact file loads the same values.
    #[test]
    fn every_flipped_bit_of_tensor_data_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.safetensors");
        save_tensors(&tensors(), &path).unwrap();
        let good = std::fs::read(&path).unwrap();
        let back = load_tensors(&path, &Device::Cpu).unwrap();
        assert_eq!(
            back["a"].to_vec1::<f32>().unwrap(),
            tensors()["a"].to_vec1::<f32>().unwrap()
        );
        let header = 8 + u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
        for at in header..good.len() {
            let mut bad = good.clone();
            bad[at] ^= 0x10;
            std::fs::write(&path, &bad).unwrap();
            let err = load_tensors(&path, &Device::Cpu).unwrap_err().to_string();
            assert!(
                err.contains("does not match its checksum"),
                "byte {at}: {err}"
            );
        }
    }

    /// Checkpoints get the mode the umask gives any new file (the
    /// safetensors crate alone leaves them 0600).
    #[test]
    fn written_files_follow_the_umask() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.safetensors");
        save_tensors(&tensors(), &path).unwrap();
        let plain = dir.path().join("plain");
        File::create(&plain).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions();
        assert_eq!(mode(&path), mode(&plain));
    }

    /// Files without checksums (other tools, older dino3d) still load.
    #[test]
    fn files_without_checksums_load_unchecked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plain.safetensors");
        candle_core::safetensors::save(&tensors(), &path).unwrap();
        assert_eq!(load_tensors(&path, &Device::Cpu).unwrap().len(), 2);
    }
}
