//! PyTorch `.pth` files (the zip format of `torch.save`, torch ≥ 1.6):
//! `<archive>/data.pkl` holds the pickled object, `<archive>/data/<key>` the
//! raw little-endian storages. The pickle goes through the restricted
//! unpickler, so loading never executes code.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use candle_core::{Device, Tensor};

use super::pickle::{Value, unpickle};
use crate::{ModelError, Result};

fn ckpt_err(path: &Path, reason: impl std::fmt::Display) -> ModelError {
    ModelError::Checkpoint {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// Every tensor of a `.pth` file, with nested dict keys joined by `.`
/// (`{"teacher": {"backbone.norm.weight": t}}` → `teacher.backbone.norm.weight`),
/// in file order. Non-tensor leaves (ints, strings, lists…) are skipped.
pub fn read_pth(path: &Path, device: &Device) -> Result<Vec<(String, Tensor)>> {
    let file = std::fs::File::open(path).map_err(|e| ckpt_err(path, e))?;
    let file_len = file.metadata().map_err(|e| ckpt_err(path, e))?.len();
    let mut zip = zip::ZipArchive::new(file).map_err(|e| {
        ckpt_err(
            path,
            format!("not a torch zip archive ({e}); the legacy pre-1.6 format is not supported"),
        )
    })?;
    let pkl_name = zip
        .file_names()
        .filter_map(|n| n.ok().map(|n| n.to_string()))
        .filter(|n| n.ends_with("data.pkl") && n.matches('/').count() <= 1)
        .min_by_key(|n| n.len())
        .ok_or_else(|| ckpt_err(path, "no data.pkl in the archive"))?;
    let prefix = pkl_name
        .strip_suffix("data.pkl")
        .expect("suffix")
        .to_string();
    let mut read_entry = |name: &str| -> Result<Vec<u8>> {
        let mut f = zip
            .by_name(name)
            .map_err(|e| ckpt_err(path, format!("{name}: {e}")))?;
        // The declared size is the file's word, not a fact: allocate no more
        // than the archive holds up front (a 40 KB file declared 2.4 GB to
        // the fuzzer), and read no more than was declared.
        let declared = f.size();
        let mut buf = Vec::with_capacity(declared.min(file_len) as usize);
        (&mut f)
            .take(declared.saturating_add(1))
            .read_to_end(&mut buf)
            .map_err(|e| ckpt_err(path, format!("{name}: {e}")))?;
        if buf.len() as u64 != declared {
            return Err(ckpt_err(
                path,
                format!("{name}: declares {declared} bytes but holds {}", buf.len()),
            ));
        }
        Ok(buf)
    };
    if let Ok(order) = read_entry(&format!("{prefix}byteorder"))
        && order != b"little"
    {
        return Err(ckpt_err(path, "big-endian checkpoints are not supported"));
    }
    let root = unpickle(&read_entry(&pkl_name)?)?;
    let mut leaves = Vec::new();
    flatten(&root, String::new(), &mut leaves);
    // Storages may be shared between tensors: read each once.
    let mut storages: HashMap<String, Tensor> = HashMap::new();
    let mut out = Vec::with_capacity(leaves.len());
    for (name, t) in leaves {
        let key = &t.storage.key;
        if !storages.contains_key(key) {
            let bytes = read_entry(&format!("{prefix}data/{key}"))?;
            let elem = t.storage.dtype.size_in_bytes();
            if bytes.len() != t.storage.numel * elem {
                return Err(ckpt_err(
                    path,
                    format!(
                        "storage {key}: {} bytes for {} elements of {:?}",
                        bytes.len(),
                        t.storage.numel,
                        t.storage.dtype
                    ),
                ));
            }
            let flat =
                Tensor::from_raw_buffer(&bytes, t.storage.dtype, &[t.storage.numel], &Device::Cpu)?;
            storages.insert(key.clone(), flat);
        }
        let view = strided_view(&storages[key], &t.size, &t.stride, t.offset)
            .map_err(|e| ckpt_err(path, format!("{name}: {e}")))?;
        out.push((name, view.to_device(device)?));
    }
    Ok(out)
}

fn flatten(v: &Value, prefix: String, out: &mut Vec<(String, super::pickle::TensorRef)>) {
    match v {
        Value::Tensor(t) => out.push((prefix, t.clone())),
        Value::Dict(items) => {
            for (k, v) in items {
                let k = match k {
                    Value::Str(s) => s.clone(),
                    Value::Int(i) => i.to_string(),
                    _ => continue,
                };
                let name = if prefix.is_empty() {
                    k
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(v, name, out);
            }
        }
        _ => {}
    }
}

/// The tensor `storage.as_strided(size, stride, offset)`, made contiguous.
fn strided_view(
    storage: &Tensor,
    size: &[usize],
    stride: &[usize],
    offset: usize,
) -> Result<Tensor> {
    let numel: usize = size.iter().product();
    let len = storage.dim(0)?;
    if numel == 0 {
        return Ok(Tensor::zeros(size, storage.dtype(), storage.device())?);
    }
    let last = offset
        + size
            .iter()
            .zip(stride)
            .map(|(n, s)| (n - 1) * s)
            .sum::<usize>();
    if last >= len {
        return Err(ModelError::Input(format!(
            "view (size {size:?}, stride {stride:?}, offset {offset}) exceeds its storage of {len}"
        )));
    }
    let mut contiguous = vec![1usize; size.len()];
    for i in (0..size.len().saturating_sub(1)).rev() {
        contiguous[i] = contiguous[i + 1] * size[i + 1];
    }
    // Strides of size-1 axes do not matter.
    let is_contiguous = size
        .iter()
        .zip(stride.iter().zip(&contiguous))
        .all(|(&n, (&s, &c))| n == 1 || s == c);
    if is_contiguous {
        return Ok(storage.narrow(0, offset, numel)?.reshape(size)?);
    }
    // General strides: gather by explicit element indices (row-major walk).
    let mut idx = Vec::with_capacity(numel);
    let mut pos = vec![0usize; size.len()];
    for _ in 0..numel {
        let at = offset + pos.iter().zip(stride).map(|(p, s)| p * s).sum::<usize>();
        idx.push(u32::try_from(at).map_err(|_| ModelError::Input("storage too large".into()))?);
        for d in (0..size.len()).rev() {
            pos[d] += 1;
            if pos[d] < size[d] {
                break;
            }
            pos[d] = 0;
        }
    }
    let idx = Tensor::from_vec(idx, numel, storage.device())?;
    Ok(storage.index_select(&idx, 0)?.reshape(size)?)
}
