//! `--device cpu|cuda[:N]`: where a task's model runs.

use anyhow::{Context, bail};
use dino3d_model::candle_core::Device;

/// The device named on the command line: `cpu`, `cuda` (GPU 0) or `cuda:N`.
/// CUDA needs a build with `--features cuda` and a GPU.
pub(crate) fn parse(name: &str) -> anyhow::Result<Device> {
    let name = name.trim();
    if name == "cpu" {
        return Ok(Device::Cpu);
    }
    let Some(rest) = name.strip_prefix("cuda") else {
        bail!("--device {name}: expected cpu, cuda or cuda:N");
    };
    let ordinal = match rest.strip_prefix(':') {
        None if rest.is_empty() => 0,
        Some(n) => n
            .parse::<usize>()
            .with_context(|| format!("--device {name}: `{n}` is not a GPU number"))?,
        None => bail!("--device {name}: expected cpu, cuda or cuda:N"),
    };
    #[cfg(feature = "cuda")]
    {
        // Through dino3d's context: a missing driver or NVRTC is an error
        // here, where candle's loader would panic.
        let gpu = dino3d_model::cuda::GpuContext::new(ordinal)
            .with_context(|| format!("--device {name}: no usable CUDA device"))?;
        Ok(gpu.device())
    }
    #[cfg(not(feature = "cuda"))]
    bail!(
        "--device {name}: this dino-run was built without CUDA (GPU {ordinal}); rebuild with \
         `cargo build --release --features cuda` (needs nvcc: scripts/cuda-toolkit.sh)"
    )
}

/// Refuses a GPU for a task that has no model to put on one (`prepare`:
/// decoding and the deterministic prefix, on the CPU's threads).
pub(crate) fn require_cpu(device: &Device, task: &str) -> anyhow::Result<()> {
    if !device.is_cpu() {
        bail!(
            "task `{task}` has no model to run on a GPU (it decodes and transforms volumes \
             on the CPU's threads); drop --device"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_parsed_and_bad_ones_refused() {
        assert!(parse("cpu").unwrap().is_cpu());
        for bad in ["gpu", "cuda:x", "cuda0", "cuda:-1"] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(e.contains(&format!("--device {bad}")), "{e}");
        }
        if !cfg!(feature = "cuda") {
            let e = parse("cuda:1").unwrap_err().to_string();
            assert!(e.contains("built without CUDA"), "{e}");
        }
        assert!(require_cpu(&Device::Cpu, "prepare").is_ok());
    }
}
