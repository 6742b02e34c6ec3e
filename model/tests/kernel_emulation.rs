//! The CUDA kernels' own source run on the CPU, no GPU and no toolkit
//! needed: `kernel_emulation/emulate.hpp` gives a C++ compiler CUDA's
//! execution model (a block's threads as `std::thread`s, `__shared__` arrays,
//! `__syncthreads` as a barrier, warp sums, float `atomicAdd`), and the
//! harnesses beside it run every kernel of `src/cuda/fused.cu` (GELU f32 and
//! bf16, softmax, LayerNorm with its weight and bias gradients, the instance
//! norm), `attention.cu` (the attention without a score matrix, forward and
//! backward), `deform.cu` (the ViT-Adapter's trilinear sampling, forward and
//! backward) and `adamw.cu` unchanged against float64 formulas written out
//! there. (EMA, KoLeo and Sinkhorn-Knopp have matched their references on a
//! GPU.) A logic slip in a kernel (an index, a
//! sign, a reduction) fails here, not first on a lent GPU. It says nothing of
//! what only a GPU shows (warp scheduling, memory limits, speed): the GPU
//! tests in `cuda_kernels.rs` and `fused::on_gpu` still hold the kernels to
//! the CPU ops there.

use std::path::Path;
use std::process::Command;

/// Harnesses beside this file and the kernel source each one covers.
const HARNESSES: [(&str, &str); 4] = [
    ("fused.cpp", "fused.cu"),
    ("attention.cpp", "attention.cu"),
    ("deform.cpp", "deform.cu"),
    ("adamw.cpp", "adamw.cu"),
];

/// The entry points (`__global__` functions) of a kernel source.
fn entry_points(source: &str) -> Vec<&str> {
    source
        .split("__global__ void")
        .skip(1)
        .filter_map(|rest| {
            let rest = rest.trim_start();
            let rest = match rest.strip_prefix("__launch_bounds__(") {
                Some(after) => &after[after.find(')')? + 1..],
                None => rest,
            };
            rest.split('(').next().map(str::trim)
        })
        .collect()
}

#[test]
fn kernels_match_float64_under_emulation() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    if Command::new(&cxx).arg("--version").output().is_err() {
        // The machines this project builds on have g++ (C crates need gcc):
        // in CI a missing one is a failure, elsewhere a loud skip.
        assert!(
            std::env::var_os("CI").is_none(),
            "no C++ compiler `{cxx}` (set CXX)"
        );
        println!("skipped: no C++ compiler `{cxx}` (set CXX)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for (harness, kernel_source) in HARNESSES {
        let exe = dir.path().join(harness.trim_end_matches(".cpp"));
        let built = Command::new(&cxx)
            // No FMA contraction: AdamW's kernel rounds each operation.
            .args([
                "-std=c++20",
                "-O2",
                "-ffp-contract=off",
                "-pthread",
                "-Wall",
                "-Wextra",
            ])
            .arg("-I")
            .arg(root.join("src/cuda"))
            .arg(root.join("tests/kernel_emulation").join(harness))
            .arg("-o")
            .arg(&exe)
            .output()
            .unwrap();
        assert!(
            built.status.success(),
            "compiling {harness} failed:\n{}",
            String::from_utf8_lossy(&built.stderr)
        );
        let run = Command::new(&exe).output().unwrap();
        let report = String::from_utf8_lossy(&run.stdout);
        println!("{report}");
        assert!(run.status.success(), "{harness}:\n{report}");
        // Every kernel of the source was compared (a kernel added there
        // needs a comparison in its harness too).
        let source = std::fs::read_to_string(root.join("src/cuda").join(kernel_source)).unwrap();
        let kernels = entry_points(&source);
        assert!(!kernels.is_empty(), "{kernel_source}: no kernels found");
        for k in kernels {
            assert!(
                report.contains(k),
                "{kernel_source}'s kernel `{k}` has no comparison in kernel_emulation/{harness}"
            );
        }
    }
}

#[test]
fn entry_points_are_read_from_kernel_sources() {
    let src = "extern \"C\" __global__ void a_f32(int x) {}\n\
               extern \"C\" __global__ void __launch_bounds__(D3_WARPS * 32)\nb_f32(int y) {}";
    assert_eq!(entry_points(src), ["a_f32", "b_f32"]);
}
