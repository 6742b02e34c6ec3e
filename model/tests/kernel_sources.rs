//! Every GPU kernel module compiles with NVRTC, on a machine without a GPU,
//! for the compute capabilities 3DINO users train on (A100: 8.0, H100/H200:
//! 9.0), and its PTX has every entry point the Rust side launches. A typo in
//! a `.cu` file fails here, not on a lent GPU machine.
//!
//! Needs the `nvrtc` feature (NVRTC loaded at run time: no toolkit to build)
//! and NVRTC 13 on the library path (a pip wheel is enough), as `.ci/run`
//! provides:
//!
//! ```text
//! pip install nvidia-cuda-nvrtc  # CUDA 13's NVRTC
//! LD_LIBRARY_PATH=<site-packages>/nvidia/cu13/lib \
//!     cargo test -p dino3d-model --features nvrtc --test kernel_sources
//! ```
//!
//! Without NVRTC the test fails, saying so: it is run only where it is meant
//! to be.
#![cfg(any(feature = "nvrtc", feature = "cuda"))]

#[test]
fn every_kernel_module_compiles_and_has_its_entry_points() {
    for arch in [(8, 0), (9, 0)] {
        let modules = dino3d_model::cuda::compile_all(arch).unwrap_or_else(|e| {
            panic!("compute capability {arch:?}: {e}");
        });
        assert_eq!(
            modules.len(),
            7,
            "ema, koleo, sinkhorn_ce, fused, adamw, deform, attention"
        );
        for (name, ptx, kernels) in modules {
            let target = format!(".target sm_{}{}", arch.0, arch.1);
            assert!(ptx.contains(&target), "{name}: no `{target}` in its PTX");
            assert!(!kernels.is_empty(), "{name} lists no entry points");
            for k in kernels {
                assert!(
                    ptx.contains(&format!(".entry {k}(")),
                    "{name}: no entry point {k} in its PTX for {arch:?}"
                );
            }
        }
    }
}
