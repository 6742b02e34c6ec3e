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
#                                        DIR; exit 1 if any step failed
#
# --build needs cargo and python3 but no CUDA toolkit (cudarc loads the
# driver and NVRTC at run time). --run needs an NVIDIA driver and NVRTC
# (libnvrtc.so.13 or .12; the CUDA toolkit's lib64 folders are added to
# LD_LIBRARY_PATH). On the GPU machine a "skipped: no CUDA device" test
# counts as a failure unless DINO3D_ALLOW_SKIP=1.
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
    sed -n '2,20p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
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
    *) usage ;;
esac
