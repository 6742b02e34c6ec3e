//! The CUDA C sources of every kernel module and their compilation to PTX by
//! NVRTC, which needs neither a GPU nor a toolkit (features `cuda` and
//! `nvrtc`; the second exists for [`compile_all`]'s CPU-only test).

use std::panic::{AssertUnwindSafe, catch_unwind};

use cudarc::nvrtc::{CompileOptions, Ptx, compile_ptx_with_opts};

use crate::{ModelError, Result};

/// Block reductions prepended to every kernel source.
const REDUCE_CUH: &str = include_str!("reduce.cuh");

/// CUDA C source of one kernel module, compiled once per process and
/// compute capability.
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

/// The fused teacher EMA (`ema.cu`).
pub(crate) const EMA: KernelSource = KernelSource {
    name: "ema",
    src: include_str!("ema.cu"),
    kernels: &["ema_update_f32"],
};

/// The KoLeo forward (`koleo.cu`).
pub(crate) const KOLEO: KernelSource = KernelSource {
    name: "koleo",
    src: include_str!("koleo.cu"),
    kernels: &["koleo_normalize", "koleo_nn_logdist", "koleo_mean"],
};

/// Sinkhorn-Knopp, alone or fused with the student cross-entropy
/// (`sinkhorn_ce.cu`).
pub(crate) const SINKHORN_CE: KernelSource = KernelSource {
    name: "sinkhorn_ce",
    src: include_str!("sinkhorn_ce.cu"),
    kernels: &[
        "sk_exp",
        "sk_proto_scale",
        "sk_proto_sums",
        "sk_sample_scale",
        "sk_targets",
        "sk_finish_ce_grad",
        "sk_finish_ce",
    ],
};

/// The CUDA twins of the fused CPU ops: GELU (f32 and bf16), softmax,
/// LayerNorm and the segmentation's instance norm, forward and backward
/// (`fused.cu`).
pub(crate) const FUSED: KernelSource = KernelSource {
    name: "fused",
    src: include_str!("fused.cu"),
    kernels: &[
        "gelu_fwd_f32",
        "gelu_bwd_f32",
        "gelu_fwd_bf16",
        "gelu_bwd_bf16",
        "softmax_fwd_f32",
        "softmax_bwd_f32",
        "ln_fwd_f32",
        "ln_bwd_dx_f32",
        "ln_bwd_wb_partial_f32",
        "ln_bwd_wb_sum_f32",
        "in_fwd_f32",
        "in_bwd_f32",
    ],
};

/// The AdamW update, in place (`adamw.cu`).
pub(crate) const ADAMW: KernelSource = KernelSource {
    name: "adamw",
    src: include_str!("adamw.cu"),
    kernels: &["adamw_f32"],
};

/// The ViT-Adapter's trilinear deformable sampling, forward and backward
/// (`deform.cu`).
pub(crate) const DEFORM: KernelSource = KernelSource {
    name: "deform",
    src: include_str!("deform.cu"),
    kernels: &[
        "deform_fwd_f32",
        "deform_bwd_values_f32",
        "deform_bwd_loc_f32",
    ],
};

/// Attention without a stored score matrix, head dimension 64, forward and
/// backward (`attention.cu`).
pub(crate) const ATTENTION: KernelSource = KernelSource {
    name: "attention",
    src: include_str!("attention.cu"),
    kernels: &[
        "attn_fwd_f32",
        "attn_bwd_dot_f32",
        "attn_bwd_dq_f32",
        "attn_bwd_dkv_f32",
    ],
};

/// Every kernel module, for [`compile_all`].
pub(crate) const ALL: [KernelSource; 7] =
    [EMA, KOLEO, SINKHORN_CE, FUSED, ADAMW, DEFORM, ATTENTION];

/// `source` (with `reduce.cuh`) compiled by NVRTC to PTX for a compute
/// capability; needs NVRTC only, no driver or GPU.
pub(crate) fn compile_ptx(source: KernelSource, (major, minor): (i32, i32)) -> Result<Ptx> {
    require_nvrtc()?;
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

/// cudarc panics (rather than erring) when a library it loads at run time is
/// missing: check first.
fn require_nvrtc() -> Result<()> {
    // SAFETY: `is_culib_present` only tries to dlopen NVRTC under its usual
    // names and drops it again; no symbol is called. The library's
    // initialisers are the vendor's and expect to be run by any process.
    // Tested by `tests/kernel_sources.rs` (with NVRTC) and by the cuda
    // tests' missing-device checks (without it).
    if unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        Ok(())
    } else {
        Err(ModelError::NoCudaDevice(
            "the NVRTC library (libnvrtc.so) cannot be loaded; add its folder (the \
             CUDA toolkit's lib64, or a pip wheel's nvidia/.../lib) to LD_LIBRARY_PATH"
                .into(),
        ))
    }
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
    ALL.iter()
        .map(|&source| {
            let ptx = compile_ptx(source, compute_capability)?;
            Ok((source.name, ptx.to_src(), source.kernels))
        })
        .collect()
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

pub(crate) fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panic in the CUDA loader".into())
}
