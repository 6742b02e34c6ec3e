#!/usr/bin/env bash
# GPU checks for the `cuda` feature (candle's CUDA backend, dino3d's kernels
# as candle ops on its device, NCCL), in two halves because the GPU machine
# has no Rust toolchain and this one has no GPU:
#
#   scripts/gpu-check.sh --build [DIR]   here: build the GPU unit tests, the
#                                        kernel tests and benchmark, the
#                                        training-step benchmark and dino-run
#                                        with `--features cuda` (release,
#                                        stripped, xz-compressed) into DIR
#                                        (default gpu-bin/, git-ignored)
#   scripts/gpu-check.sh --run [DIR]     on the GPU machine: print the device,
#                                        then, most needed first: the tests
#                                        and the kernel benchmark from DIR,
#                                        the loader's thread scaling, the
#                                        training step against PyTorch's
#                                        (bf16 at 32 and 64, fused attention,
#                                        NCCL), the tasks, embed's rate for
#                                        ViT-L at 112^3, the other step
#                                        rows; exit 1 if any step
#                                        failed, 3 if the budget left some
#                                        unrun (BUDGET_S below)
#   scripts/gpu-check.sh --run-tests|--run-tasks [DIR]
#                                        on the GPU machine: only the tests and
#                                        the kernel benchmark, or only the
#                                        tasks (demo pretraining and its
#                                        data wait, embed, segmentation on
#                                        cuda:0 vs the CPU; embed's rate for
#                                        ViT-L at 112^3);
#                                        --run is all of them (one call may
#                                        not fit the device's 10 minutes)
#   scripts/gpu-check.sh --run-loader [DIR]
#                                        on the GPU machine: the data loader
#                                        alone (CPU only): `dino-run pipeline
#                                        run` at 1, 4, 8 and 16 threads
#   scripts/gpu-check.sh --run-step [DIR]
#                                        on the GPU machine: the training step
#                                        alone (ViT-S, then ViT-L at batch 8
#                                        and 32 in TF32, at 32 in bf16, at 32
#                                        and 64 in bf16 with activation
#                                        checkpointing, at 32 with the fused
#                                        attention), with PyTorch's step
#                                        at 32 and 64 and each step's peak
#                                        GPU memory
#
# --build needs cargo, python3 and nvcc (CUDA 13.0; without one on PATH it
# makes one from pip wheels with scripts/cuda-toolkit.sh): candle compiles
# its kernels to PTX at build time. CUDA_COMPUTE_CAP picks their target
# (default 90, H100/H200; 80 for A100s, whose PTX also runs on 90).
# Nothing is linked against CUDA libraries: cudarc opens the driver, cuBLAS,
# cuRAND, NVRTC and NCCL at run time, and --run finds them on the GPU
# machine (PyTorch's wheels; CUDA_LIB_SEARCH, a list of folders, narrows
# the search) and puts their folders on LD_LIBRARY_PATH. On
# the GPU machine a "skipped: no CUDA device" test counts as a failure
# unless DINO3D_ALLOW_SKIP=1.
#
# Env for --run: BUDGET_S (seconds for the whole run: each step's timeout
# is cut to what is left, and a step that would get under MIN_STEP_S,
# default 20, is listed as not run instead of started, so a device call
# returns inside its own limit with everything that finished; unset: no
# budget), OUT (a folder: the whole log is copied to OUT/gpu-check.log,
# and the loader's and memory lines go there too), STEP_TIMEOUT (seconds
# per step, default 300; a step still alive KILL_AFTER_S, default 10, after
# its timeout is killed; the budget keeps that grace), GPU_DEVICE
# (the device the tasks compare with the CPU, default cuda:0; `cpu` checks
# the script itself on a machine without a GPU),
# DINO3D_BENCH_EMA_PARAMS, DINO3D_BENCH_ITERS (see the benchmark).
#
# On a lent device machine (minutes of device time in all, start-up
# included, at most 10 per command), one command with gpu-bin carried and a
# budget under the command's limit, so the summary and OUT come back:
#
#   BUDGET_S=540 scripts/gpu-check.sh --run gpu-bin      (timeout 600 s)
set -u

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODE="${1:-}"
DIR="${2:-$ROOT/gpu-bin}"
case "$DIR" in /*) ;; *) DIR="$PWD/$DIR" ;; esac
MAX_BYTES=$((50 * 1024 * 1024))

usage() {
    sed -n '2,/^set -u/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
    exit 2
}

build() {
    set -e
    cd "$ROOT"
    if ! command -v nvcc >/dev/null; then
        eval "$("$ROOT/scripts/cuda-toolkit.sh" | tail -1)"
    fi
    export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
    local start=$SECONDS
    echo "== building the GPU executables (--features cuda, release, stripped; sm_$CUDA_COMPUTE_CAP)"
    rm -rf "$DIR"
    mkdir -p "$DIR"
    local json="$DIR/.cargo-messages.json"
    # The bench targets are built by `cargo test` too, so one profile serves
    # all; both profile names are overridden to be safe.
    CARGO_PROFILE_RELEASE_DEBUG=false CARGO_PROFILE_RELEASE_STRIP=true \
    CARGO_PROFILE_BENCH_DEBUG=false CARGO_PROFILE_BENCH_STRIP=true \
        cargo test -p dino3d-model --features cuda --release --no-run \
        --lib --test cuda_kernels --bench cuda_kernels --bench train_step \
        --message-format=json-render-diagnostics >"$json"
    # Pick the executables from cargo's JSON messages (field `executable`).
    python3 - "$json" "$DIR" <<'PY'
import json, shutil, sys, os
messages, out = sys.argv[1], sys.argv[2]
names = {("lib", "dino3d_model"): "model_unit_tests",
         ("test", "cuda_kernels"): "cuda_kernels_test",
         ("bench", "cuda_kernels"): "cuda_kernels_bench",
         ("bench", "train_step"): "train_step_cuda"}
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
    # dino-run with CUDA: `--device cuda:0` pretraining, and the loader's
    # thread scaling on the GPU host's cores (issue 23).
    echo "== building dino-run --features cuda"
    cargo build --release -q --features cuda --bin dino-run
    strip -o "$DIR/dino-run" "${CARGO_TARGET_DIR:-$ROOT/target}/release/dino-run"
    local exe
    for exe in "$DIR"/*; do
        xz -T2 -6 -f "$exe"
    done
    {
        echo "commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (dirty)')"
        echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -m) in $((SECONDS - start)) s, sm_$CUDA_COMPUTE_CAP"
        echo "rustc: $(rustc --version)"
        echo "nvcc: $(nvcc --version | tail -1)"
        echo "run: scripts/gpu-check.sh --run $(basename "$DIR")"
    } >"$DIR/BUILD_INFO"
    set +e
    echo "== $DIR (built in $((SECONDS - start)) s)"
    ls -l "$DIR"
    local total
    total=$(du -cb "$DIR"/* | tail -1 | cut -f1)
    echo "total: $total bytes ($((total / 1024 / 1024)) MiB)"
    if [ "$total" -gt "$MAX_BYTES" ]; then
        echo "error: $DIR is larger than 50 MiB" >&2
        exit 1
    fi
}

# Unpacks DIR's executables (once).
unpack() {
    local f
    for f in "$DIR"/*.xz; do
        [ -e "$f" ] || continue
        [ -x "${f%.xz}" ] || { xz -dkf "$f" && chmod +x "${f%.xz}"; }
    done
}

# The CUDA libraries cudarc opens (driver aside): cuBLAS(Lt) 13, cuRAND 10,
# NVRTC 13 and NCCL 2, wherever this machine has them (a toolkit, PyTorch's
# wheels), their folders put first on LD_LIBRARY_PATH. cudarc asks for
# `libnccl.so`, which a wheel does not have: a link to `libnccl.so.2` in a
# folder of its own stands in.
cuda_libs() {
    local extra="" lib d
    for lib in libcublasLt.so.13 libcublas.so.13 libcurand.so.10 libnvrtc.so.13 libnccl.so.2; do
        # shellcheck disable=SC2086 # CUDA_LIB_SEARCH is a list of folders
        d=$(timeout 60 find ${CUDA_LIB_SEARCH:-"${CUDA_HOME:-/nonexistent}" /usr/local/cuda* /usr/lib /opt /root /home} \
            -name "$lib" -print -quit 2>/dev/null)
        [ -n "$d" ] && extra="$extra:$(dirname "$(readlink -f "$d")")"
        if [ "$lib" = libnccl.so.2 ] && [ -n "$d" ]; then
            local link="${TMPDIR:-/tmp}/dino3d-nccl-link"
            mkdir -p "$link" && ln -sf "$(readlink -f "$d")" "$link/libnccl.so"
            extra="$extra:$link"
        fi
    done
    export LD_LIBRARY_PATH="${extra#:}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
}

FAILED=()
NOT_RUN=()
BUDGET_END=""
if [ -n "${BUDGET_S:-}" ]; then
    BUDGET_END=$((SECONDS + BUDGET_S))
fi

# step_limit: prints the seconds the next step may run (STEP_TIMEOUT, cut
# to what the budget has left); fails when that would be under MIN_STEP_S.
step_limit() {
    local limit="${STEP_TIMEOUT:-300}"
    if [ -n "$BUDGET_END" ]; then
        # A step may outlive its timeout by the kill grace: keep that inside.
        local left=$((BUDGET_END - SECONDS - ${KILL_AFTER_S:-10}))
        [ "$left" -ge "${MIN_STEP_S:-20}" ] || return 1
        [ "$left" -ge "$limit" ] || limit=$left
    fi
    echo "$limit"
}

# missing NAME WHY: a step that cannot run here (a missing executable or
# tool) fails, so a run never reports "all passed" without it.
missing() {
    echo
    echo "=== [$1] cannot run: $2"
    FAILED+=("$1 ($2)")
}

# budget_spent NAME: lists NAME as not run (the budget is spent).
budget_spent() {
    echo
    echo "=== [$1] not run: the budget (BUDGET_S=$BUDGET_S) is spent"
    NOT_RUN+=("$1")
}

# record NAME RC LIMIT: a failed step, with a timeout the budget cut named so.
record() {
    [ "$2" -ne 0 ] || return 0
    # 124: stopped at the timeout; 137: killed after the grace.
    if { [ "$2" -eq 124 ] || [ "$2" -eq 137 ]; } && [ "$3" -lt "${STEP_TIMEOUT:-300}" ]; then
        FAILED+=("$1 (cut after $3 s by the budget)")
    else
        FAILED+=("$1 (exit $2)")
    fi
}

# step NAME CMD...: prints the step, runs it under a timeout, records
# failure; returns 1 only when the budget left it unrun.
step() {
    local name="$1" limit
    shift
    limit=$(step_limit) || { budget_spent "$name"; return 1; }
    echo
    echo "=== [$name] $*"
    local start=$SECONDS
    timeout -k "${KILL_AFTER_S:-10}" "$limit" "$@"
    local rc=$?
    echo "=== [$name] exit $rc after $((SECONDS - start)) s"
    record "$name" "$rc" "$limit"
    return 0
}

# Like step, with the output also scanned: a run that printed "skipped: no
# CUDA device" fails too (a GPU is expected where --run is used).
test_step() {
    local name="$1" limit
    shift
    limit=$(step_limit) || { budget_spent "$name"; return 0; }
    local log
    log=$(mktemp)
    echo
    echo "=== [$name] $*"
    local start=$SECONDS
    timeout -k "${KILL_AFTER_S:-10}" "$limit" "$@" 2>&1 | tee "$log"
    local rc=${PIPESTATUS[0]}
    echo "=== [$name] exit $rc after $((SECONDS - start)) s"
    if [ "$rc" -ne 0 ]; then
        record "$name" "$rc" "$limit"
    elif grep -q "skipped: no CUDA device" "$log" && [ "${DINO3D_ALLOW_SKIP:-0}" != 1 ]; then
        echo "=== [$name] skipped: no usable CUDA device (see above)"
        FAILED+=("$name (skipped: no CUDA device)")
    fi
    rm -f "$log"
}

# The training step on candle's CUDA backend, then PyTorch's at batch 32.
run_train_step() {
    [ -f "$DIR/train_step_cuda.xz" ] || { missing "training step" "no $DIR/train_step_cuda.xz"; return 0; }
    unpack
    # PHASES=1: each step's phases too (teacher, student, backward, clip,
    # adamw, ema; six device waits per step, microseconds each).
    local bin="$DIR/train_step_cuda"
    export PHASES=1
    # Rows in the order of what they answer, so a budget cuts the least
    # needed: a small smoke step, then issue 20's targets (ours against
    # PyTorch in bf16 at batch 32 and 64, and the memory), then the rest.
    gpu_step "train step ViT-S b2 f32" env DEVICE=cuda:0 ARCH=small BATCH=2 "$bin"
    gpu_step "train step ViT-L b32 bf16" env DEVICE=cuda:0 PRECISION=bf16 ARCH=large BATCH=32 "$bin"
    torch_step "torch ViT-L b32 bf16" --bf16 --batch 32
    # bf16 activations (the MLP's hidden layer, q, k, v in bf16 only): does
    # batch 64 fit without checkpointing, next to PyTorch's 54 GiB? Out of
    # memory fails this row; the checkpointed row below still answers.
    gpu_step "train step ViT-L b64 bf16" env DEVICE=cuda:0 PRECISION=bf16 ARCH=large BATCH=64 STEPS=2 "$bin"
    # Activation checkpointing (train.activation_checkpointing): whether
    # batch 64 fits (PyTorch: 54 GiB at 64), and the memory it saves at 32.
    gpu_step "train step ViT-L b64 bf16 checkpointed" env DEVICE=cuda:0 PRECISION=bf16 CHECKPOINT=1 ARCH=large BATCH=64 STEPS=2 "$bin"
    torch_step "torch ViT-L b64 bf16" --bf16 --batch 64
    # The fused attention kernel (train.attention: fused) against the above.
    gpu_step "train step ViT-L b32 bf16 fused attention" env DEVICE=cuda:0 PRECISION=bf16 ATTENTION=fused ARCH=large BATCH=32 "$bin"
    # The same step through NCCL in a world of one (issue 25): the gradient
    # buckets' cost in the real step, and the all-reduce left after the
    # backward (phase all_reduce).
    gpu_step "train step ViT-L b32 bf16 NCCL world of one" env DEVICE=cuda:0 PRECISION=bf16 ARCH=large BATCH=32 STEPS=2 NCCL=1 "$bin"
    unset PHASES
}

# The rest of the training-step rows: checkpointing's memory at 32, TF32.
run_train_step_rest() {
    [ -f "$DIR/train_step_cuda.xz" ] || return 0
    unpack
    local bin="$DIR/train_step_cuda"
    export PHASES=1
    gpu_step "train step ViT-L b32 bf16 checkpointed" env DEVICE=cuda:0 PRECISION=bf16 CHECKPOINT=1 ARCH=large BATCH=32 "$bin"
    gpu_step "train step ViT-L b32 tf32" env DEVICE=cuda:0 TF32=1 ARCH=large BATCH=32 "$bin"
    torch_step "torch ViT-L b32 tf32" --tf32 --batch 32
    gpu_step "train step ViT-L b32 tf32 fused attention" env DEVICE=cuda:0 TF32=1 ATTENTION=fused ARCH=large BATCH=32 "$bin"
    gpu_step "train step ViT-L b8 tf32" env DEVICE=cuda:0 TF32=1 ARCH=large BATCH=8 "$bin"
    unset PHASES
}

# torch_step NAME ARGS...: PyTorch's ViT-L step (benches/train_step_torch.py)
# as a gpu_step, where this machine has python3.
torch_step() {
    local name="$1"
    shift
    command -v python3 >/dev/null || { missing "$name" "no python3"; return 0; }
    gpu_step "$name" python3 "$ROOT/benches/train_step_torch.py" --device cuda --arch large \
        --steps 3 --warmup 1 "$@"
}

# Like step, with the GPU memory in use sampled every 250 ms (nvidia-smi:
# the whole process, context included) and its peak printed.
gpu_step() {
    local name="$1" log smi ran=0
    log=$(mktemp)
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 250 >"$log" 2>/dev/null &
    smi=$!
    step "$@" && ran=1
    kill "$smi" 2>/dev/null
    wait "$smi" 2>/dev/null
    if [ "$ran" = 1 ]; then
        echo "=== [$name] peak GPU memory in use: $(grep -o '[0-9]*' "$log" | sort -n | tail -1) MiB" \
            | tee -a "${OUT:-/tmp}/gpu_memory.txt"
    fi
    rm -f "$log"
}

# The loader on this host's cores (CPU only, issue 23): the bundled brains
# from a warm cache, batches of 32, at 1, 4, 8 and 16 threads (as many as the
# host has); the lines go to $OUT/loader_scaling.txt as well.
run_loader() {
    [ -f "$DIR/dino-run.xz" ] || { missing "loader" "no $DIR/dino-run.xz"; return 0; }
    unpack
    local cache="${TMPDIR:-/tmp}/dino3d-loader-cache" log="${OUT:-/tmp}/loader_scaling.txt"
    local recipe="$ROOT/recipes/pretrain.yaml"
    echo "host: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)" | tee -a "$log"
    step "loader: warm the cache" "$DIR/dino-run" cache warm "$recipe" --set "cache.dir=$cache"
    local t
    for t in 1 4 8 16; do
        [ "$t" -le "$(nproc)" ] || continue
        # pipefail: a failing dino-run fails the step (not tee's status).
        step "loader: $t thread(s)" bash -c "set -o pipefail; '$DIR/dino-run' pipeline run '$recipe' \
            --set 'cache.dir=$cache' --set batch.size=32 --batches $((8 * t)) --threads $t \
            --batch-order x | tee -a '$log'"
    done
}

# What every run mode starts with: the folder, the device, the libraries.
prelude() {
    if [ ! -d "$DIR" ]; then
        echo "error: no folder $DIR; run scripts/gpu-check.sh --build first" >&2
        exit 2
    fi
    echo "== dino3d GPU check, $(date -u +%Y-%m-%dT%H:%M:%SZ), host $(hostname)"
    [ -f "$DIR/BUILD_INFO" ] && cat "$DIR/BUILD_INFO"
    unpack
    cuda_libs
    step "nvidia-smi" nvidia-smi
}

# Every GPU test against its CPU reference, then the kernel benchmark.
run_tests() {
    # The executables were linked against glibc 2.34+ (Debian 12).
    step "glibc" bash -c 'ldd --version | head -1'
    step "nvcc" bash -c 'command -v nvcc && nvcc --version || { echo "no nvcc on PATH (not needed: NVRTC is)"; true; }'
    step "libraries" bash -c 'ldconfig -p | grep -E "libcuda\.so" || true; for d in ${LD_LIBRARY_PATH//:/ }; do ls -1 "$d"/lib{cublas,curand,nvrtc,nccl}.so* 2>/dev/null; done; true'
    test_step "unit tests (cuda::, kernels_ref::, fused GPU twins)" "$DIR/model_unit_tests" cuda:: kernels_ref:: fused::on_gpu:: --test-threads=1 --nocapture
    test_step "GPU kernels vs CPU references" "$DIR/cuda_kernels_test" --test-threads=1 --nocapture
    test_step "kernel benchmark" "$DIR/cuda_kernels_bench"
}

run() {
    prelude
    run_tests
    run_loader
    run_train_step
    run_pretrain
    run_embed_rate
    run_train_step_rest
    finish
}

# `dino-run recipes/demo.yaml` for 60 iterations on cuda:0 and on the CPU
# from the same binary and cache, then both loss curves side by side.
run_pretrain() {
    [ -f "$DIR/dino-run.xz" ] || { missing "tasks" "no $DIR/dino-run.xz"; return 0; }
    local out="${OUT:-/tmp}" cache="${TMPDIR:-/tmp}/dino3d-demo-cache" gpu="${GPU_DEVICE:-cuda:0}"
    # Each pair runs as label:device, gpu first; outputs are named by label.
    local pairs=("gpu:$gpu" "cpu:cpu") pair label dev
    for pair in "${pairs[@]}"; do
        label=${pair%%:*} dev=${pair#*:}
        step "dino-run demo, 60 iterations, $dev" "$DIR/dino-run" "$ROOT/recipes/demo.yaml" \
            --device "$dev" --set optim.epochs=2 --set "cache.dir=$cache" \
            --set train.eval_period_iterations=30 --set "train.output_dir=$out/demo-$label"
    done
    # The same GPU run with the blocks recomputed in the backward and the
    # fused attention kernel: the loss curve must not move beyond f32 noise.
    step "dino-run demo, 60 iterations, $gpu, checkpointed + fused attention" "$DIR/dino-run" \
        "$ROOT/recipes/demo.yaml" --device "$gpu" --set optim.epochs=2 --set "cache.dir=$cache" \
        --set train.eval_period_iterations=30 --set train.activation_checkpointing=true \
        --set train.attention=fused --set "train.output_dir=$out/demo-gpu-fused"
    local compare='
import json, sys
def losses(path):
    rows = [json.loads(l) for l in open(path)]
    return {r["iteration"]: r["loss"] for r in rows if "loss" in r and "iteration" in r}
a, b = (losses(p) for p in sys.argv[1:3])
common = sorted(set(a) & set(b))
if not common:
    sys.exit("no common iterations in the two metrics files")
for it in common[:3] + common[-3:]:
    print(f"iteration {it}: {a[it]:.5f}  {b[it]:.5f}  diff {a[it] - b[it]:+.2e}")
print(f"max |diff| over {len(common)} iterations: {max(abs(a[i] - b[i]) for i in common):.3e}")
# The stated tolerances: the first step (same weights, same batch) to f32
# noise, and the last ten steps mean to 2% (summation orders drift apart).
first = common[0]
rel0 = abs(a[first] - b[first]) / max(abs(b[first]), 1e-12)
tail = common[-10:]
ma, mb = (sum(d[i] for i in tail) / len(tail) for d in (a, b))
rel_tail = abs(ma - mb) / max(abs(mb), 1e-12)
print(f"first step relative diff {rel0:.2e} (bound 1e-3); last {len(tail)} steps mean {ma:.5f} vs {mb:.5f}, relative {rel_tail:.2e} (bound 2e-2)")
if rel0 > 1e-3 or rel_tail > 2e-2:
    sys.exit("the loss curves differ beyond the bounds")
'
    step "demo losses, $gpu vs cpu" python3 -c "$compare" "$out/demo-gpu/metrics.jsonl" "$out/demo-cpu/metrics.jsonl"
    # How long each step waited for its batch (issue 23: the upload thread
    # and pinned copies should leave the GPU no wait once the loader keeps up).
    local waits='
import json, sys
for path in sys.argv[1:]:
    rows = [json.loads(l) for l in open(path)]
    rows = [r for r in rows if "data_wait_s" in r and "compute_s" in r][1:]  # the first waits for the warm-up
    if not rows:
        sys.exit(f"{path}: no steps with data_wait_s and compute_s")
    wait, compute = sum(r["data_wait_s"] for r in rows), sum(r["compute_s"] for r in rows)
    median = sorted(r["data_wait_s"] + r["compute_s"] for r in rows)[len(rows) // 2]
    share = 100 * wait / (wait + compute)
    print(f"{path}: {len(rows)} steps, data wait {wait:.3f} s of {wait + compute:.3f} s ({share:.1f}%), median step {median:.4f} s")
'
    step "demo data wait, $gpu and cpu" python3 -c "$waits" "$out/demo-gpu/metrics.jsonl" "$out/demo-cpu/metrics.jsonl"
    step "demo losses, $gpu: checkpointed + fused vs plain" python3 -c "$compare" \
        "$out/demo-gpu-fused/metrics.jsonl" "$out/demo-gpu/metrics.jsonl"
    # Segmentation (UNETR head) from the demo's output folder, on cuda:0 and
    # on the CPU: the printed Dice side by side.
    for pair in "${pairs[@]}"; do
        label=${pair%%:*} dev=${pair#*:}
        step "segment demo, $dev" "$DIR/dino-run" "$ROOT/recipes/segment_demo.yaml" \
            --device "$dev" --set "segment.pretrained_weights=$out/demo-gpu" \
            --set "segment.output_dir=$out/segment-$label"
    done
    # The same head trained on both devices from the same backbone: the first
    # loss to f32 noise, the test Dice within 0.03 (training drifts apart).
    step "segment demo, $gpu vs cpu" python3 - "$out/segment-gpu/results.json" "$out/segment-cpu/results.json" <<'PY'
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
l0a, l0b = a["loss_curve"][0][1], b["loss_curve"][0][1]
rel0 = abs(l0a - l0b) / max(abs(l0b), 1e-12)
da, db = a["test_mean_dice"], b["test_mean_dice"]
print(f"first loss {l0a:.6f} vs {l0b:.6f}, relative {rel0:.2e} (bound 1e-3)")
print(f"test mean Dice {da:.4f} vs {db:.4f}, diff {da - db:+.4f} (bound 0.03); per class {a['test_dice_per_class']} vs {b['test_dice_per_class']}")
print(f"seconds per training iteration {a['train_seconds_per_iteration']:.4f} vs {b['train_seconds_per_iteration']:.4f}")
if rel0 > 1e-3 or abs(da - db) > 0.03:
    sys.exit("the segmentation runs differ beyond the bounds")
PY
    # The demo's teacher embeds a volume and the bundled manifest on cuda:0
    # and on the CPU: the features side by side, and the manifest's rate.
    local teacher
    teacher=$(ls -d "$out"/demo-gpu/eval/training_*/teacher_checkpoint.safetensors 2>/dev/null | sort -V | tail -1)
    [ -n "$teacher" ] || { missing "embed" "no demo teacher checkpoint in $out/demo-gpu"; return 0; }
    for pair in "${pairs[@]}"; do
        label=${pair%%:*} dev=${pair#*:}
        step "embed --image, $dev" "$DIR/dino-run" embed --weights "$teacher" --arch tiny \
            --image "$ROOT/data/volumes/colin27_mricron/ch2bet.nii.gz" --device "$dev" \
            --out "$out/embed-$label.safetensors"
        step "embed --manifest, $dev" bash -c "time '$DIR/dino-run' embed --weights '$teacher' --arch tiny \
            --manifest '$ROOT/recipes/brain_images.json' --device $dev --out '$out/embed-$label.parquet'"
    done
    step "embed features, $gpu vs cpu" python3 - "$out/embed-gpu.safetensors" "$out/embed-cpu.safetensors" <<'PY'
import json, struct, sys
from array import array
def load(path):
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    head = json.loads(raw[8:8 + n])
    out = {}
    for k, v in head.items():
        if k == "__metadata__":
            continue
        a, b = v["data_offsets"]
        out[k] = (array("f", raw[8 + n + a:8 + n + b]), v["shape"])
    return out
gpu, cpu = (load(p) for p in sys.argv[1:3])
worst = 0.0
for k in sorted(cpu):
    (g, _), (c, shape) = gpu[k], cpu[k]
    err = max(abs(x - y) for x, y in zip(g, c)) / max(max(abs(y) for y in c), 1e-12)
    worst = max(worst, err)
    print(f"{k} {shape}: max rel err {err:.3e}")
sys.exit(0 if worst <= 1e-3 else f"gpu and cpu features differ by {worst:.3e} (bound 1e-3)")
PY
}

# `embed --manifest` throughput for ViT-L at 112^3 on the GPU (issue 20):
# 64 volumes of 112^3 int16 written here (NIfTI-1, identity affine), embedded
# with --raw by a randomly initialised ViT-L (--random-init: throughput only).
run_embed_rate() {
    [ -f "$DIR/dino-run.xz" ] || { missing "embed rate" "no $DIR/dino-run.xz"; return 0; }
    local vols="${TMPDIR:-/tmp}/dino3d-embed-112" gpu="${GPU_DEVICE:-cuda:0}"
    step "64 volumes of 112^3 for embed" python3 - "$vols" 64 <<'PY'
import array, json, math, os, struct, sys
out, n = sys.argv[1], int(sys.argv[2])
os.makedirs(out, exist_ok=True)
s = 112
hdr = bytearray(352)  # the NIfTI-1 header and an empty extension block
struct.pack_into("<i", hdr, 0, 348)
struct.pack_into("<8h", hdr, 40, 3, s, s, s, 1, 1, 1, 1)
struct.pack_into("<hh", hdr, 70, 4, 16)  # int16
struct.pack_into("<8f", hdr, 76, 1, 1, 1, 1, 1, 1, 1, 1)
struct.pack_into("<f", hdr, 108, 352.0)
struct.pack_into("<hh", hdr, 252, 0, 1)  # sform: the identity below
struct.pack_into("<12f", hdr, 280, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0)
hdr[344:348] = b"n+1\0"
row = array.array("h", (int(1000 * math.sin(i / 7.0)) for i in range(s)))
body = row.tobytes() * (s * s)
entries = []
for k in range(n):
    path = os.path.join(out, f"v{k:03d}.nii")
    with open(path, "wb") as f:
        f.write(hdr)
        f.write(body)
    entries.append({"image": path})
with open(os.path.join(out, "manifest.json"), "w") as f:
    json.dump(entries, f)
print(f"{n} volumes of {s}^3 int16 in {out}")
PY
    gpu_step "embed --manifest ViT-L 112^3, $gpu" "$DIR/dino-run" embed --random-init 0 --arch large \
        --manifest "$vols/manifest.json" --raw --device "$gpu" --out "${OUT:-/tmp}/embed-vitl-112.parquet"
}

# The summary: every step passed (exit 0) or the failed ones (exit 1).
finish() {
    echo
    if [ "${#NOT_RUN[@]}" -gt 0 ]; then
        echo "== GPU check: ${#NOT_RUN[@]} step(s) not run (budget of $BUDGET_S s spent):"
        printf '   - %s\n' "${NOT_RUN[@]}"
    fi
    if [ "${#FAILED[@]}" -gt 0 ]; then
        echo "== GPU check: ${#FAILED[@]} step(s) failed:"
        printf '   - %s\n' "${FAILED[@]}"
        end 1
    fi
    if [ "${#NOT_RUN[@]}" -gt 0 ]; then
        echo "== GPU check: every step that ran passed; incomplete"
        end 3
    fi
    echo "== GPU check: all steps passed"
    end 0
}

# With OUT set (the device machine's result folder), the whole log goes
# there too, so nothing is lost past the tail a caller shows.
LOG_PID=""
log_to_out() {
    [ -n "${OUT:-}" ] || return 0
    mkdir -p "$OUT" || return 0
    exec > >(tee -a "$OUT/gpu-check.log") 2>&1
    LOG_PID=$!
}

# end RC: exits with RC once the log copy has everything.
end() {
    if [ -n "$LOG_PID" ]; then
        exec >&- 2>&-
        wait "$LOG_PID" 2>/dev/null
    fi
    exit "$1"
}

case "$MODE" in
    --build) build ;;
    --run) log_to_out; run ;;
    --run-tests) log_to_out; prelude; run_tests; finish ;;
    --run-step) log_to_out; prelude; run_train_step; run_train_step_rest; finish ;;
    --run-tasks) log_to_out; prelude; run_pretrain; run_embed_rate; finish ;;
    --run-loader) log_to_out; unpack; run_loader; finish ;;
    *) usage ;;
esac
