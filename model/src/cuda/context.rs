//! [`GpuContext`]: candle's CUDA device seen from dino3d's kernels: its
//! stream, its compute capability, and our kernel modules loaded into its
//! context.
//!
//! There is one CUDA runtime in a process: candle's. Our kernels are
//! compiled by NVRTC (once per process and compute capability) and loaded
//! through candle's `CudaDevice`, so they run on the stream every candle op
//! of that device runs on, in order with them, on the same buffers.

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex, OnceLock};

use candle_core::{CudaDevice, Device};
use cudarc::driver::{CudaFunction, CudaSlice, CudaStream, LaunchConfig, sys};

use super::sources::{KernelSource, compile_ptx, panic_text};
use crate::{ModelError, Result};

/// Threads per block of the elementwise grid-stride kernels.
pub(crate) const STRIDE_BLOCK: u32 = 256;

/// Threads per block of the one-block-per-row kernels: a power of two, at
/// most `D3_MAX_BLOCK` in `reduce.cuh` (their reductions' buffer size).
pub(crate) const ROW_BLOCK: u32 = 1024;

/// A CUDA device (candle's) as our kernels use it.
///
/// Cheap to make from a candle device ([`GpuContext::from_device`]): it
/// holds candle's `CudaDevice` handle and three numbers.
#[derive(Debug, Clone)]
pub struct GpuContext {
    device: CudaDevice,
    stream: Arc<CudaStream>,
    name: String,
    compute_capability: (i32, i32),
    sm_count: u32,
}

impl GpuContext {
    /// Opens device `ordinal` as candle's `Device::new_cuda` does.
    ///
    /// # Errors
    /// [`ModelError::NoCudaDevice`] when the CUDA driver or NVRTC library
    /// cannot be loaded, the driver does not initialise, or no device has
    /// this ordinal; [`ModelError::Cuda`] when a later driver call fails.
    pub fn new(ordinal: usize) -> Result<Self> {
        require_driver()?;
        // cudarc panics (rather than erring) on a missing library or driver
        // symbol; turn that into an error so callers can fall back to the CPU.
        let device = catch_unwind(AssertUnwindSafe(|| Device::new_cuda(ordinal)))
            .map_err(|p| ModelError::NoCudaDevice(panic_text(p.as_ref())))?
            .map_err(|e| ModelError::NoCudaDevice(format!("device {ordinal}: {e}")))?;
        Self::from_device(&device)
    }

    /// The context of a candle device (`Device::Cuda`).
    ///
    /// # Errors
    /// [`ModelError::Input`] for a CPU or Metal device; [`ModelError::Cuda`]
    /// when the driver cannot describe the device.
    pub fn from_device(device: &Device) -> Result<Self> {
        match device {
            Device::Cuda(d) => Self::from_cuda(d),
            other => Err(ModelError::Input(format!(
                "a CUDA device was expected, not {:?}",
                other.location()
            ))),
        }
    }

    /// The context of candle's `CudaDevice` (e.g. a storage's device inside
    /// a custom op).
    pub(crate) fn from_cuda(device: &CudaDevice) -> Result<Self> {
        let stream = device.cuda_stream();
        let (name, compute_capability, sm_count) = describe(&stream)?;
        Ok(Self {
            device: device.clone(),
            stream,
            name,
            compute_capability,
            sm_count,
        })
    }

    /// The candle device: tensors made on it live in this context, and
    /// candle's ops on them run on [`GpuContext::stream`].
    pub fn device(&self) -> Device {
        Device::Cuda(self.device.clone())
    }

    /// The device ordinal.
    pub fn ordinal(&self) -> usize {
        self.stream.context().ordinal()
    }

    /// The device's name, e.g. `NVIDIA H100 80GB HBM3`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `(major, minor)` compute capability, e.g. `(9, 0)` for an H100.
    pub fn compute_capability(&self) -> (i32, i32) {
        self.compute_capability
    }

    /// Number of streaming multiprocessors.
    pub fn sm_count(&self) -> u32 {
        self.sm_count
    }

    /// candle's stream for this device: every kernel is queued on it.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Copies `host` to a new device buffer.
    ///
    /// # Errors
    /// [`ModelError::Cuda`] when allocation or the copy fails.
    pub fn upload(&self, host: &[f32]) -> Result<CudaSlice<f32>> {
        self.stream.clone_htod(host).map_err(cuda_err("upload"))
    }

    /// Copies a device buffer back to the host (waits for queued work).
    ///
    /// # Errors
    /// [`ModelError::Cuda`] when the copy or an earlier kernel failed.
    pub fn download(&self, dev: &CudaSlice<f32>) -> Result<Vec<f32>> {
        self.stream.clone_dtoh(dev).map_err(cuda_err("download"))
    }

    /// Waits for everything queued on the stream.
    ///
    /// # Errors
    /// [`ModelError::Cuda`] when a queued kernel failed.
    pub fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().map_err(cuda_err("synchronize"))
    }

    /// A kernel of `source`, loaded into candle's context on first use (its
    /// module cache, keyed by module name) from PTX compiled once per
    /// process and compute capability.
    pub(crate) fn function(&self, source: KernelSource, kernel: &str) -> Result<CudaFunction> {
        debug_assert!(
            source.kernels.contains(&kernel),
            "kernel {kernel} is not listed in {}'s entry points",
            source.name
        );
        let ptx = cached_ptx(source, self.compute_capability)?;
        Ok(self
            .device
            .get_or_load_custom_func(kernel, &module_name(source), &ptx)?
            .into_cuda_function())
    }

    /// Launch shape of a grid-stride loop over `len` elements: blocks of
    /// `STRIDE_BLOCK` threads, enough to fill every SM several times, never
    /// more than the work needs.
    pub(crate) fn stride_config(&self, len: usize) -> LaunchConfig {
        let needed = len.div_ceil(STRIDE_BLOCK as usize).max(1);
        let cap = self.sm_count as usize * 16;
        LaunchConfig {
            grid_dim: (needed.min(cap) as u32, 1, 1),
            block_dim: (STRIDE_BLOCK, 1, 1),
            shared_mem_bytes: 0,
        }
    }
}

/// `(name, compute capability, SM count)` of a stream's device, asked of the
/// driver once per ordinal (custom ops make a context for every launch).
fn describe(stream: &CudaStream) -> Result<(String, (i32, i32), u32)> {
    type Facts = (String, (i32, i32), u32);
    static KNOWN: OnceLock<Mutex<HashMap<usize, Facts>>> = OnceLock::new();
    let ctx = stream.context();
    let known = KNOWN.get_or_init(Default::default);
    if let Some(f) = known
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&ctx.ordinal())
    {
        return Ok(f.clone());
    }
    let name = ctx.name().map_err(cuda_err("device name"))?;
    let cc = ctx
        .compute_capability()
        .map_err(cuda_err("compute capability"))?;
    let sm = ctx
        .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
        .map_err(cuda_err("multiprocessor count"))?;
    let facts = (name, cc, u32::try_from(sm.max(1)).unwrap_or(1));
    known
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(ctx.ordinal(), facts.clone());
    Ok(facts)
}

/// Our modules' names in candle's module cache, apart from candle's own.
fn module_name(source: KernelSource) -> String {
    format!("dino3d_{}", source.name)
}

/// PTX of `source` for a compute capability, compiled on first request.
fn cached_ptx(source: KernelSource, cc: (i32, i32)) -> Result<Arc<String>> {
    type Cache = Mutex<HashMap<(&'static str, (i32, i32)), Arc<String>>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(ptx) = cache
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&(source.name, cc))
    {
        return Ok(ptx.clone());
    }
    // Compiled outside the lock: a race compiles twice and keeps one.
    let ptx = Arc::new(compile_ptx(source, cc)?.to_src());
    let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
    Ok(cache.entry((source.name, cc)).or_insert(ptx).clone())
}

/// The driver and NVRTC are opened at run time (cudarc's dynamic loading):
/// check that they exist before cudarc would panic on them.
fn require_driver() -> Result<()> {
    // SAFETY: `is_culib_present` only tries to dlopen the library under its
    // usual names and drops it again; no symbol is called. The library's
    // initialisers are the vendor's and expect to be run by any process.
    // Tested by `tests::missing_devices_are_reported` on every machine.
    if !unsafe { sys::is_culib_present() } {
        return Err(ModelError::NoCudaDevice(
            "the CUDA driver library (libcuda.so) cannot be loaded".into(),
        ));
    }
    // SAFETY: as above, for the NVRTC library.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err(ModelError::NoCudaDevice(
            "the NVRTC library (libnvrtc.so) cannot be loaded; add the CUDA \
             toolkit's lib64 folder (or PyTorch's nvidia/cu13/lib) to LD_LIBRARY_PATH"
                .into(),
        ));
    }
    Ok(())
}

/// Maps a cudarc error to [`ModelError::Cuda`] with `op` as context.
pub(crate) fn cuda_err<E: std::fmt::Debug>(op: &str) -> impl FnOnce(E) -> ModelError + '_ {
    move |e| ModelError::Cuda {
        op: op.to_string(),
        reason: format!("{e:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs on every machine: without a driver both calls report
    /// `NoCudaDevice`; with one, ordinal 0 opens and a huge ordinal does not.
    #[test]
    fn missing_devices_are_reported() {
        match GpuContext::new(0) {
            Ok(gpu) => {
                assert!(gpu.compute_capability().0 >= 3);
                assert!(gpu.sm_count() >= 1);
                assert!(!gpu.name().is_empty());
                assert!(matches!(gpu.device(), Device::Cuda(_)));
            }
            Err(e) => assert!(matches!(e, ModelError::NoCudaDevice(_)), "{e}"),
        }
        let err = GpuContext::new(100_000).unwrap_err();
        assert!(matches!(err, ModelError::NoCudaDevice(_)), "{err}");
        let err = GpuContext::from_device(&Device::Cpu).unwrap_err();
        assert!(matches!(err, ModelError::Input(_)), "{err}");
    }
}
