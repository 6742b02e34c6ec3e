//! [`GpuContext`]: one CUDA device, one stream, and the kernel modules
//! compiled for it by NVRTC on first use.
//!
//! The driver (`libcuda`) and NVRTC (`libnvrtc`) are loaded at run time by
//! cudarc, so building needs no CUDA toolkit; a machine without them gets
//! [`ModelError::NoCudaDevice`] from [`GpuContext::new`], never a panic.

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex};

use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, sys};
use cudarc::nvrtc::{CompileOptions, Ptx, compile_ptx_with_opts};

use crate::{ModelError, Result};

/// Threads per block of the elementwise grid-stride kernels.
pub(crate) const STRIDE_BLOCK: u32 = 256;

/// Threads per block of the one-block-per-row kernels: a power of two, at
/// most `D3_MAX_BLOCK` in `reduce.cuh` (their reductions' buffer size).
pub(crate) const ROW_BLOCK: u32 = 1024;

/// Block reductions prepended to every kernel source.
const REDUCE_CUH: &str = include_str!("reduce.cuh");

/// CUDA C source of one kernel module, compiled once per [`GpuContext`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct KernelSource {
    /// Module name (cache key and NVRTC program name).
    pub(crate) name: &'static str,
    /// The `.cu` text (without `reduce.cuh`).
    pub(crate) src: &'static str,
    /// The entry points the Rust side launches (checked in [`compile_all`]'s
    /// test, so a renamed kernel fails before it reaches a GPU).
    pub(crate) kernels: &'static [&'static str],
}

/// A CUDA device with one stream and a cache of compiled kernel modules.
///
/// All kernels of [`crate::cuda`] are queued on [`GpuContext::stream`];
/// results are ready after [`GpuContext::synchronize`] or a download.
#[derive(Debug)]
pub struct GpuContext {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    name: String,
    compute_capability: (i32, i32),
    sm_count: u32,
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
}

impl GpuContext {
    /// Opens device `ordinal` (its primary context) and a new stream.
    ///
    /// # Errors
    /// [`ModelError::NoCudaDevice`] when the CUDA driver or NVRTC library
    /// cannot be loaded, the driver does not initialise, or no device has
    /// this ordinal; [`ModelError::Cuda`] when a later driver call fails.
    pub fn new(ordinal: usize) -> Result<Self> {
        // SAFETY: `is_culib_present` only tries to dlopen the driver library
        // under its usual names and drops it again; no symbol is called. The
        // library's initialisers are the vendor's and expect to be run by
        // any process. Tested by `tests::missing_devices_are_reported`.
        if !unsafe { sys::is_culib_present() } {
            return Err(ModelError::NoCudaDevice(
                "the CUDA driver library (libcuda.so) cannot be loaded".into(),
            ));
        }
        // SAFETY: as above, for the NVRTC library.
        if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
            return Err(ModelError::NoCudaDevice(
                "the NVRTC library (libnvrtc.so) cannot be loaded; add the CUDA \
                 toolkit's lib64 folder to LD_LIBRARY_PATH"
                    .into(),
            ));
        }
        // cudarc panics (rather than erring) on a missing driver symbol; turn
        // that into an error so callers can fall back to the CPU.
        let ctx = catch_unwind(AssertUnwindSafe(|| CudaContext::new(ordinal)))
            .map_err(|p| ModelError::NoCudaDevice(panic_text(p.as_ref())))?
            .map_err(|e| ModelError::NoCudaDevice(format!("device {ordinal}: {e}")))?;
        let stream = ctx.new_stream().map_err(cuda_err("create stream"))?;
        let name = ctx.name().map_err(cuda_err("device name"))?;
        let compute_capability = ctx
            .compute_capability()
            .map_err(cuda_err("compute capability"))?;
        let sm_count = ctx
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(cuda_err("multiprocessor count"))?;
        Ok(Self {
            ctx,
            stream,
            name,
            compute_capability,
            sm_count: u32::try_from(sm_count.max(1)).unwrap_or(1),
            modules: Mutex::new(HashMap::new()),
        })
    }

    /// The device ordinal.
    pub fn ordinal(&self) -> usize {
        self.ctx.ordinal()
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

    /// The stream every kernel is queued on.
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

    /// A kernel of `source`, compiling and loading the module on first use.
    pub(crate) fn function(&self, source: KernelSource, kernel: &str) -> Result<CudaFunction> {
        debug_assert!(
            source.kernels.contains(&kernel),
            "kernel {kernel} is not listed in {}'s entry points",
            source.name
        );
        let module = {
            let mut modules = self.modules.lock().unwrap_or_else(|e| e.into_inner());
            match modules.get(source.name) {
                Some(m) => m.clone(),
                None => {
                    let m = self.compile(source)?;
                    modules.insert(source.name, m.clone());
                    m
                }
            }
        };
        module
            .load_function(kernel)
            .map_err(cuda_err(&format!("load kernel {}::{kernel}", source.name)))
    }

    /// Grid size for a grid-stride loop over `len` elements: enough blocks
    /// to fill every SM several times, never more than the work needs.
    pub(crate) fn stride_grid(&self, len: usize) -> u32 {
        let needed = len.div_ceil(STRIDE_BLOCK as usize).max(1);
        let cap = self.sm_count as usize * 16;
        needed.min(cap) as u32
    }

    fn compile(&self, source: KernelSource) -> Result<Arc<CudaModule>> {
        let ptx = compile_ptx(source, self.compute_capability)?;
        self.ctx
            .load_module(ptx)
            .map_err(cuda_err(&format!("load module {}", source.name)))
    }
}

/// `source` (with `reduce.cuh`) compiled by NVRTC to PTX for a compute
/// capability; needs NVRTC only, no driver or GPU.
fn compile_ptx(source: KernelSource, (major, minor): (i32, i32)) -> Result<Ptx> {
    let opts = CompileOptions {
        name: Some(format!("{}.cu", source.name)),
        options: vec![format!("--gpu-architecture=compute_{major}{minor}")],
        ..Default::default()
    };
    let text = format!("{REDUCE_CUH}\n{}", source.src);
    catch_unwind(AssertUnwindSafe(|| compile_ptx_with_opts(text, opts)))
        .map_err(|p| ModelError::Cuda {
            op: format!("compile {}", source.name),
            reason: panic_text(p.as_ref()),
        })?
        .map_err(|e| ModelError::Cuda {
            op: format!("compile {}", source.name),
            reason: compile_error_text(&e),
        })
}

/// Every kernel module of [`crate::cuda`] compiled to PTX for compute
/// capability `(major, minor)` without a GPU: `(module, PTX text, entry
/// points the Rust side launches)`. Lets a CPU-only machine with NVRTC (a pip
/// wheel is enough) catch a kernel that does not compile, or an entry point
/// that is missing, before a GPU is involved (`tests/kernel_sources.rs`).
///
/// # Errors
/// [`ModelError::NoCudaDevice`] when NVRTC cannot be loaded;
/// [`ModelError::Cuda`] with NVRTC's log when a module does not compile.
pub fn compile_all(
    compute_capability: (i32, i32),
) -> Result<Vec<(&'static str, String, &'static [&'static str])>> {
    // SAFETY: as in `GpuContext::new`: only a dlopen of NVRTC under its usual
    // names, no symbol called.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err(ModelError::NoCudaDevice(
            "the NVRTC library (libnvrtc.so) cannot be loaded; add its folder (the \
             CUDA toolkit's lib64, or a pip wheel's nvidia/.../lib) to LD_LIBRARY_PATH"
                .into(),
        ));
    }
    super::KERNEL_SOURCES
        .iter()
        .map(|&source| {
            let ptx = compile_ptx(source, compute_capability)?;
            Ok((source.name, ptx.to_src(), source.kernels))
        })
        .collect()
}

/// Maps a cudarc error to [`ModelError::Cuda`] with `op` as context.
pub(crate) fn cuda_err<E: std::fmt::Debug>(op: &str) -> impl FnOnce(E) -> ModelError + '_ {
    move |e| ModelError::Cuda {
        op: op.to_string(),
        reason: format!("{e:?}"),
    }
}

fn compile_error_text(e: &cudarc::nvrtc::CompileError) -> String {
    match e {
        cudarc::nvrtc::CompileError::CompileError {
            nvrtc,
            options,
            log,
        } => format!(
            "{nvrtc:?} with options {options:?}:\n{}",
            log.to_string_lossy()
        ),
        other => format!("{other:?}"),
    }
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panic in the CUDA loader".into())
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
            }
            Err(e) => assert!(matches!(e, ModelError::NoCudaDevice(_)), "{e}"),
        }
        let err = GpuContext::new(100_000).unwrap_err();
        assert!(matches!(err, ModelError::NoCudaDevice(_)), "{err}");
    }
}
