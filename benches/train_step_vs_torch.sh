#!/usr/bin/env bash
# Issue 5's training-step benchmark, dino3d (candle, CPU) and PyTorch (CPU) in the
# same run on the same machine, same sizes: one 3DINO step (student forward +
# backward on 2 global + 8 local crops per sample, teacher forward,
# Sinkhorn-Knopp, DINO + iBOT + KoLeo, per-module clipping, AdamW, EMA).
#   benches/train_step_vs_torch.sh                  # ViT-S, batch 2, 96³/48³, 65,536 prototypes
#   ARCH=tiny GLOBAL=64 LOCAL=32 PROTOTYPES=4096 HIDDEN=512 BOTTLENECK=128 BATCH=4 \
#     benches/train_step_vs_torch.sh                # the demo's sizes
# PyTorch: a venv with torch (VENV, default /tmp/mvenv, as ../shared/bench/monai/run.sh
# makes). Both use every core (THREADS, default nproc). Peak RSS of the torch
# process includes ~0.8 GB of torch's own libraries.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-/tmp/mvenv}"
export ARCH="${ARCH:-small}" BATCH="${BATCH:-2}" STEPS="${STEPS:-3}" WARMUP="${WARMUP:-1}"
export GLOBAL="${GLOBAL:-96}" LOCAL="${LOCAL:-48}" LOCALS="${LOCALS:-8}"
export PROTOTYPES="${PROTOTYPES:-65536}" HIDDEN="${HIDDEN:-2048}" BOTTLENECK="${BOTTLENECK:-256}"
THREADS="${THREADS:-$(nproc)}"
export RAYON_NUM_THREADS="$THREADS"
echo "== dino3d (candle $(grep -A1 'name = "candle-core"' Cargo.lock | sed -n 2p | cut -d'"' -f2))"
cargo bench -q -p dino3d-model --bench train_step 2>&1 | grep -E "^(step|rust step)"
echo "== PyTorch"
"$VENV/bin/python" benches/train_step_torch.py --arch "$ARCH" --batch "$BATCH" \
  --global-size "$GLOBAL" --local-size "$LOCAL" --locals "$LOCALS" \
  --prototypes "$PROTOTYPES" --hidden "$HIDDEN" --bottleneck "$BOTTLENECK" \
  --steps "$STEPS" --warmup "$WARMUP" --threads "$THREADS" 2>&1 | grep -E "^(step|torch step)"
