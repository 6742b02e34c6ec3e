//! The CUDA kernels' own source run on the CPU, no GPU and no toolkit
//! needed: `kernel_emulation/emulate.hpp` gives a C++ compiler CUDA's
//! execution model (a block's threads as `std::thread`s, `__shared__` arrays,
//! `__syncthreads` as a barrier), and `kernel_emulation/fused.cpp` runs every
//! kernel of `src/cuda/fused.cu` unchanged against float64 formulas written
//! out beside it: GELU (f32, bf16), softmax, LayerNorm with its weight and
//! bias gradients, the instance norm. A logic slip in a kernel (an index, a
//! sign, a reduction) fails here, not first on a lent GPU. It says nothing of
//! what only a GPU shows (warp scheduling, memory limits, speed): the GPU
//! tests in `cuda_kernels.rs` and `fused::on_gpu` still hold the kernels to
//! the CPU ops there.

use std::path::Path;
use std::process::Command;

#[test]
fn fused_kernels_match_float64_under_emulation() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    if Command::new(&cxx).arg("--version").output().is_err() {
        // The machines this project builds on have g++ (C crates need gcc);
        // say loudly where one is missing rather than fail the suite.
        println!("skipped: no C++ compiler `{cxx}` (set CXX)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("fused");
    let built = Command::new(&cxx)
        .args(["-std=c++20", "-O2", "-pthread", "-Wall", "-Wextra", "-I"])
        .arg(root.join("src/cuda"))
        .arg(root.join("tests/kernel_emulation/fused.cpp"))
        .arg("-o")
        .arg(&exe)
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "compiling the emulated kernels failed:\n{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let run = Command::new(&exe).output().unwrap();
    let report = String::from_utf8_lossy(&run.stdout);
    println!("{report}");
    assert!(run.status.success(), "{report}");
    // Every kernel of fused.cu was compared (a kernel added there needs a
    // comparison here too).
    let source = std::fs::read_to_string(root.join("src/cuda/fused.cu")).unwrap();
    let kernels: Vec<&str> = source
        .split("__global__ void")
        .skip(1)
        .filter_map(|rest| {
            let rest = rest
                .trim_start()
                .trim_start_matches("__launch_bounds__(D3_MAX_BLOCK)");
            rest.split('(').next().map(str::trim)
        })
        .collect();
    assert!(kernels.len() >= 12, "{kernels:?}");
    for k in kernels {
        assert!(
            report.contains(k),
            "fused.cu's kernel `{k}` has no comparison in kernel_emulation/fused.cpp"
        );
    }
}
