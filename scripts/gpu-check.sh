#!/usr/bin/env bash
# GPU checks for the `cuda` feature of dino3d-model, in two halves because
# the GPU machine has no Rust toolchain and this one has no GPU:
#
#   scripts/gpu-check.sh --build [DIR]   here: build the GPU kernel tests and
#                                        benchmark (release, stripped) and
#                                        copy the executables into DIR
#                                        (default gpu-bin/, git-ignored)
#   scripts/gpu-check.sh --run [DIR]     on the GPU machine: print the device,
#                                        run the tests and the benchmark from
#                                        DIR, then the training step if built;
#                                        exit 1 if any step failed
#   scripts/gpu-check.sh --build-step [DIR]
#                                        here, with a CUDA toolkit (CUDA_HOME,
#                                        nvcc on PATH): the training-step
#                                        benchmark on candle's CUDA backend
#                                        (`candle-cuda` feature), xz-compressed
#   scripts/gpu-check.sh --run-loader [DIR]
#                                        on the GPU machine: the data loader
#                                        alone (CPU only): `dino-run pipeline
#                                        run` at 1, 4, 8 and 16 threads
#   scripts/gpu-check.sh --run-step [DIR]
#                                        on the GPU machine: the training step
#                                        alone (ViT-S, then ViT-L at batch 8
#                                        and 32, TF32), with PyTorch's same
#                                        step at batch 32 for comparison
#
# --build needs cargo and python3 but no CUDA toolkit (cudarc loads the
# driver and NVRTC at run time). --run needs an NVIDIA driver and NVRTC
# (libnvrtc.so.13 or .12; the CUDA toolkit's lib64 folders are added to
# LD_LIBRARY_PATH). On the GPU machine a "skipped: no CUDA device" test
# counts as a failure unless DINO3D_ALLOW_SKIP=1.
#
# The toolkit can come from pip wheels (nvidia-cuda-nvcc, -runtime, -crt,
# -cccl, nvidia-nvvm, -cuda-nvrtc, -cublas, -curand of one CUDA release) merged
# into one folder, plus a libcuda.so stub in lib/stubs for the linker; the
# real libraries are found at run time (the GPU machine's PyTorch has them).
#
# Env for --run: STEP_TIMEOUT (seconds per step, default 300),
# DINO3D_BENCH_EMA_PARAMS, DINO3D_BENCH_ITERS (see the benchmark).
set -u

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODE="${1:-}"
DIR="${2:-$ROOT/gpu-bin}"
case "$DIR" in /*) ;; *) DIR="$PWD/$DIR" ;; esac
MAX_BYTES=$((50 * 1024 * 1024))

usage() {
    sed -n '2,24p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    exit 2
}

build() {
    set -e
    cd "$ROOT"
    echo "== building GPU test and bench executables (release, no debug info, stripped)"
    rm -rf "$DIR"
    mkdir -p "$DIR"
    local json="$DIR/.cargo-messages.json"
    # The bench target is built by `cargo test` too, so one profile serves all
    # three executables; both profile names are overridden to be safe.
    CARGO_PROFILE_RELEASE_DEBUG=false CARGO_PROFILE_RELEASE_STRIP=true \
    CARGO_PROFILE_BENCH_DEBUG=false CARGO_PROFILE_BENCH_STRIP=true \
        cargo test -p dino3d-model --features cuda --release --no-run \
        --lib --test cuda_kernels --bench cuda_kernels \
        --message-format=json-render-diagnostics >"$json"
    # Pick the executables from cargo's JSON messages (field `executable`).
    python3 - "$json" "$DIR" <<'PY'
import json, shutil, sys, os
messages, out = sys.argv[1], sys.argv[2]
names = {("lib", "dino3d_model"): "model_unit_tests",
         ("test", "cuda_kernels"): "cuda_kernels_test",
         ("bench", "cuda_kernels"): "cuda_kernels_bench"}
found = {}
for line in open(messages):
    m = json.loads(line)
    if m.get("reason") != "compiler-artifact" or not m.get("executable"):
        continue
    kind = m["target"]["kind"][0]
    key = (kind, m["target"]["name"].replace("-", "_"))
    if key in names:
        found[names[key]] = m["executable"]
missing = sorted(set(names.values()) - set(found))
if missing:
    sys.exit(f"cargo produced no executable for: {', '.join(missing)}")
for name, exe in sorted(found.items()):
    dst = os.path.join(out, name)
    shutil.copy2(exe, dst)
    os.chmod(dst, 0o755)
    print(f"  {exe} -> {dst}")
PY
    rm -f "$json"
    # The loader's thread scaling runs on the GPU host's cores too (issue 23).
    echo "== building dino-run (CPU build, stripped and xz-compressed)"
    cargo build --release -q --bin dino-run
    strip -o "$DIR/dino-run" "${CARGO_TARGET_DIR:-$ROOT/target}/release/dino-run"
    xz -T2 -6 -f "$DIR/dino-run"
    {
        echo "commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (dirty)')"
        echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -m)"
        echo "rustc: $(rustc --version)"
        echo "run: scripts/gpu-check.sh --run $(basename "$DIR")"
    } >"$DIR/BUILD_INFO"
    set +e
    echo "== $DIR"
    ls -l "$DIR"
    local total
    total=$(du -cb "$DIR"/* | tail -1 | cut -f1)
    echo "total: $total bytes ($((total / 1024 / 1024)) MiB)"
    if [ "$total" -gt "$MAX_BYTES" ]; then
        echo "error: $DIR is larger than 50 MiB" >&2
        exit 1
    fi
}

build_step() {
    set -e
    cd "$ROOT"
    command -v nvcc >/dev/null || { echo "error: --build-step needs nvcc on PATH" >&2; exit 2; }
    echo "== building the training-step benchmark with candle's CUDA backend"
    mkdir -p "$DIR"
    local json="$DIR/.cargo-messages.json"
    CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}" CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target-cuda}" \
    CARGO_PROFILE_RELEASE_DEBUG=false CARGO_PROFILE_RELEASE_STRIP=true \
        cargo build --release -p dino3d-model --features candle-cuda --bench train_step \
        --message-format=json-render-diagnostics >"$json"
    local exe
    exe=$(python3 -c 'import json,sys
for l in open(sys.argv[1]):
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "train_step":
        print(m["executable"])' "$json" | tail -1)
    rm -f "$json"
    cp "$exe" "$DIR/train_step_cuda"
    xz -T2 -6 -f "$DIR/train_step_cuda"
    ls -l "$DIR/train_step_cuda.xz"
}

FAILED=()

# step NAME CMD...: prints the step, runs it under a timeout, records failure.
step() {
    local name="$1"
    shift
    echo
    echo "=== [$name] $*"
    local start=$SECONDS
    timeout "${STEP_TIMEOUT:-300}" "$@"
    local rc=$?
    echo "=== [$name] exit $rc after $((SECONDS - start)) s"
    if [ "$rc" -ne 0 ]; then
        FAILED+=("$name (exit $rc)")
    fi
    return 0
}

# Like step, with the output also scanned: a run that printed "skipped: no
# CUDA device" fails too (a GPU is expected where --run is used).
test_step() {
    local name="$1"
    shift
    local log
    log=$(mktemp)
    echo
    echo "=== [$name] $*"
    local start=$SECONDS
    timeout "${STEP_TIMEOUT:-300}" "$@" 2>&1 | tee "$log"
    local rc=${PIPESTATUS[0]}
    echo "=== [$name] exit $rc after $((SECONDS - start)) s"
    if [ "$rc" -ne 0 ]; then
        FAILED+=("$name (exit $rc)")
    elif grep -q "skipped: no CUDA device" "$log" && [ "${DINO3D_ALLOW_SKIP:-0}" != 1 ]; then
        echo "=== [$name] skipped: no usable CUDA device (see above)"
        FAILED+=("$name (skipped: no CUDA device)")
    fi
    rm -f "$log"
}

# The training step on candle's CUDA backend, then PyTorch's at batch 32.
run_train_step() {
    [ -f "$DIR/train_step_cuda.xz" ] || { echo "no $DIR/train_step_cuda.xz: skipping the training step"; return 0; }
    xz -dkf "$DIR/train_step_cuda.xz" && chmod +x "$DIR/train_step_cuda"
    # cuBLAS, cuRAND, NVRTC and the runtime from PyTorch's wheels.
    local lib
    lib=$(find /opt /usr -name 'libcublasLt.so.13' 2>/dev/null | head -1)
    [ -n "$lib" ] && export LD_LIBRARY_PATH="$(dirname "$lib")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    step "step libraries" bash -c "ldd '$DIR/train_step_cuda' | grep -E 'cuda|cublas|curand|nvrtc'"
    local mem_log="${OUT:-/tmp}/gpu_memory.csv"
    nvidia-smi --query-gpu=timestamp,memory.used --format=csv -lms 250 >"$mem_log" 2>/dev/null &
    local smi=$!
    step "train step ViT-S b2 f32" env DEVICE=cuda:0 ARCH=small BATCH=2 "$DIR/train_step_cuda"
    step "train step ViT-L b8 tf32" env DEVICE=cuda:0 TF32=1 ARCH=large BATCH=8 "$DIR/train_step_cuda"
    step "train step ViT-L b32 tf32" env DEVICE=cuda:0 TF32=1 ARCH=large BATCH=32 "$DIR/train_step_cuda"
    kill "$smi" 2>/dev/null
    echo "peak GPU memory in use (MiB): $(cut -d, -f2 "$mem_log" | grep -o '[0-9]*' | sort -n | tail -1)"
    if command -v python3 >/dev/null && [ -f "$ROOT/benches/train_step_torch.py" ]; then
        step "torch ViT-L b32 tf32" python3 "$ROOT/benches/train_step_torch.py" --device cuda --tf32 --arch large --batch 32 --steps 3 --warmup 1
        step "torch ViT-L b32 bf16" python3 "$ROOT/benches/train_step_torch.py" --device cuda --bf16 --arch large --batch 32 --steps 3 --warmup 1
    fi
}

# The loader on this host's cores (CPU only, issue 23): the bundled brains
# from a warm cache, batches of 32, at 1, 4, 8 and 16 threads (as many as the
# host has); the lines go to $OUT/loader_scaling.txt as well.
run_loader() {
    [ -f "$DIR/dino-run.xz" ] || { echo "no $DIR/dino-run.xz: skipping the loader"; return 0; }
    xz -dkf "$DIR/dino-run.xz" && chmod +x "$DIR/dino-run"
    local cache="${TMPDIR:-/tmp}/dino3d-loader-cache" log="${OUT:-/tmp}/loader_scaling.txt"
    local recipe="$ROOT/recipes/pretrain.yaml"
    echo "host: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)" | tee -a "$log"
    step "loader: warm the cache" "$DIR/dino-run" cache warm "$recipe" --set "cache.dir=$cache"
    local t
    for t in 1 4 8 16; do
        [ "$t" -le "$(nproc)" ] || continue
        step "loader: $t thread(s)" bash -c "'$DIR/dino-run' pipeline run '$recipe' --set 'cache.dir=$cache' \
            --set batch.size=32 --batches $((8 * t)) --threads $t 2>/dev/null | tee -a '$log'"
    done
}

run() {
    if [ ! -d "$DIR" ]; then
        echo "error: no folder $DIR; run scripts/gpu-check.sh --build first" >&2
        exit 2
    fi
    echo "== dino3d GPU check, $(date -u +%Y-%m-%dT%H:%M:%SZ), host $(hostname)"
    [ -f "$DIR/BUILD_INFO" ] && cat "$DIR/BUILD_INFO"

    # NVRTC is found through the loader: add the toolkit's library folders.
    local extra="" d nvcc_dir
    nvcc_dir=$(command -v nvcc >/dev/null 2>&1 && dirname "$(readlink -f "$(command -v nvcc)")" || true)
    for d in "${CUDA_HOME:-}/lib64" "${CUDA_PATH:-}/lib64" ${nvcc_dir:+"$nvcc_dir/../lib64"} \
        /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/local/cuda-13*/lib64 \
        /usr/local/cuda-12*/lib64; do
        if [ -d "$d" ] && ls "$d"/libnvrtc.so* >/dev/null 2>&1; then
            extra="$extra:$(readlink -f "$d")"
        fi
    done
    export LD_LIBRARY_PATH="${extra#:}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"

    # The executables were linked against glibc 2.34+ (Debian 12).
    step "glibc" bash -c 'ldd --version | head -1'
    step "nvidia-smi" nvidia-smi
    step "nvcc" bash -c 'command -v nvcc && nvcc --version || { echo "no nvcc on PATH (not needed: NVRTC is)"; true; }'
    step "libraries" bash -c 'ldconfig -p | grep -E "libcuda\.so|libnvrtc" || true; for d in ${LD_LIBRARY_PATH//:/ }; do ls -1 "$d"/libnvrtc.so* 2>/dev/null; done; true'
    test_step "unit tests (cuda::, kernels_ref::)" "$DIR/model_unit_tests" cuda:: kernels_ref:: --test-threads=1 --nocapture
    test_step "GPU kernels vs CPU references" "$DIR/cuda_kernels_test" --test-threads=1 --nocapture
    test_step "kernel benchmark" "$DIR/cuda_kernels_bench"
    run_train_step
    run_loader
    finish
}

# The summary: every step passed (exit 0) or the failed ones (exit 1).
finish() {
    echo
    if [ "${#FAILED[@]}" -eq 0 ]; then
        echo "== GPU check: all steps passed"
        exit 0
    fi
    echo "== GPU check: ${#FAILED[@]} step(s) failed:"
    printf '   - %s\n' "${FAILED[@]}"
    exit 1
}

case "$MODE" in
    --build) build ;;
    --run) run ;;
    --build-step) build_step ;;
    --run-step) step "nvidia-smi" nvidia-smi; run_train_step; finish ;;
    --run-loader) run_loader; finish ;;
    *) usage ;;
esac
