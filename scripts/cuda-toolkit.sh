#!/usr/bin/env bash
# Makes a CUDA 13.0 compiler toolkit out of NVIDIA's pip wheels, for building the
# `cuda` feature on a machine with no GPU and no system toolkit:
#
#   scripts/cuda-toolkit.sh [DIR]      (default /tmp/dino3d-cuda-13.0)
#
# then, as the script prints at the end:
#
#   export CUDA_HOME=DIR PATH=DIR/bin:$PATH LIBRARY_PATH=DIR/lib
#
# 13.0 on purpose: candle's kernels are compiled to PTX by this nvcc at build
# time, and a driver JIT-compiles only PTX of its own CUDA release or older
# (the lent GPU machines run driver 580, CUDA 13.0). A newer nvcc builds
# binaries whose candle kernels fail to load there.
#
# The compiler and the static CUDA runtime (candle's MoE kernels link it)
# are all that is needed: cudarc (candle's and ours) opens the driver,
# cuBLAS, cuRAND, NVRTC and NCCL at run time (vendor/candle-core/PATCHED.md,
# item 5), so nothing is linked against them here; the GPU machine's own
# copies (PyTorch's wheels) are found there through LD_LIBRARY_PATH.
# Takes about 15 s and 0.3 GB; rerunning it on a complete DIR is a no-op.
set -euo pipefail

DIR="${1:-/tmp/dino3d-cuda-13.0}"
if [ -x "$DIR/bin/nvcc" ] && [ -e "$DIR/lib/libcudart.a" ] && [ -f "$DIR/.complete" ]; then
    echo "toolkit already in $DIR"
else
    start=$SECONDS
    rm -rf "$DIR" "$DIR.wheels"
    mkdir -p "$DIR"
    # One CUDA release (13.0) for everything nvcc touches; the libraries'
    # own version numbers differ, their 13.0 releases are pinned.
    python3 -m pip install --quiet --no-deps --target "$DIR.wheels" \
        'nvidia-cuda-nvcc==13.0.88' 'nvidia-cuda-crt==13.0.88' \
        'nvidia-cuda-runtime==13.0.96' 'nvidia-cuda-cccl==13.0.85' \
        'nvidia-nvvm==13.0.88'
    # The wheels put each component under nvidia/cu13/{bin,include,lib,nvvm};
    # merge them into one CUDA_HOME.
    cp -a "$DIR.wheels"/nvidia/cu13/. "$DIR"/
    rm -rf "$DIR.wheels"
    [ -d "$DIR/lib64" ] || ln -s lib "$DIR/lib64"
    # candle's MoE kernels are a static library that calls the CUDA runtime
    # (`-lcudart`): this name makes the linker take the static runtime, so
    # the binary needs no libcudart.so where it runs.
    ln -sf libcudart_static.a "$DIR/lib/libcudart.a"
    "$DIR/bin/nvcc" --version | tail -2
    touch "$DIR/.complete"
    echo "made in $((SECONDS - start)) s, $(du -sh "$DIR" | cut -f1)"
fi
echo "export CUDA_HOME=$DIR PATH=$DIR/bin:\$PATH LIBRARY_PATH=$DIR/lib\${LIBRARY_PATH:+:\$LIBRARY_PATH}"
