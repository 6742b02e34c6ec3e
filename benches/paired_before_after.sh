#!/usr/bin/env bash
# Two commits' decode, full-sample, cache and training-step benchmarks in one
# run, interleaved (base, new, base, new, ...) on one pinned core, so machine
# drift hits both sides alike. For a change that must not cost speed (the
# architecture step of issue 21 was measured with it):
#   benches/paired_before_after.sh BASE_REV [NEW_REV]   (NEW_REV: HEAD)
# Each side is built in its own worktree AND its own target dir: cargo hashes
# workspace crates by their path inside the workspace, so two checkouts
# sharing a target dir can silently reuse each other's crates.
# Data: the CT-like volumes of benches/decode_vs_nibabel.sh (made if missing).
# ROUNDS (3), BENCH_CPU (1), PAIRED_SAMPLES (40), WORK (/tmp/dino3d-paired);
# BIN=DIR skips the builds and runs DIR/{decode,sample,cache,train_step}-{base,new}.
set -euo pipefail
cd "$(dirname "$0")/.."
BASE="$1"; NEW="${2:-HEAD}"
ROUNDS="${ROUNDS:-3}"; CPU="${BENCH_CPU:-1}"; WORK="${WORK:-/tmp/dino3d-paired}"
export DINO3D_BENCH_DATA="${DINO3D_BENCH_DATA:-/tmp/dino3d-bench-data}"
[ -f "$DINO3D_BENCH_DATA/vol_000.nii.gz" ] || bash benches/decode_vs_nibabel.sh
mkdir -p "$WORK/bin"
build() { # side rev
  local tree="$WORK/$1" target="$WORK/$1-target"
  [ -d "$tree" ] || git worktree add --detach "$tree" "$2" >/dev/null
  git -C "$tree" checkout -q --detach "$2"
  # The cache bench lived in the cache crate before the architecture step.
  local cache_pkg=dino3d-pipeline
  [ -f "$tree/cache/benches/cache.rs" ] && cache_pkg=dino3d-cache
  for spec in "dino3d-pipeline decode" "dino3d-pipeline sample" "$cache_pkg cache" "dino3d-model train_step"; do
    set -- $spec
    local exe
    exe=$(cd "$tree" && CARGO_TARGET_DIR="$target" cargo bench -q -p "$1" --bench "$2" --no-run 2>&1 \
      | sed -n 's/.*(\(.*\)).*/\1/p' | tail -1)
    cp "$exe" "$WORK/bin/$2-$side"
  done
}
if [ -z "${BIN:-}" ]; then
  side=base; build base "$BASE"
  side=new; build new "$NEW"
  BIN="$WORK/bin"
fi
echo "base $(git rev-parse --short "$BASE"), new $(git rev-parse --short "$NEW"), core $CPU, $(date -u +%FT%TZ)"
for round in $(seq "$ROUNDS"); do
  for side in base new; do
    echo "== round $round, $side"
    taskset -c "$CPU" "$BIN/decode-$side" --bench 2>&1 | grep -E '^(├|╰|│).*(read|decode)' | head -4 || true
    taskset -c "$CPU" "$BIN/sample-$side" --bench one_thread 2>&1 | grep -A1 one_thread | tail -1 || true
    DINO3D_PAIRED_SAMPLES="${PAIRED_SAMPLES:-40}" taskset -c "$CPU" "$BIN/cache-$side" --bench 2>&1 | grep -E 'paired' || true
    ARCH=small BATCH=2 STEPS=3 taskset -c "$CPU" "$BIN/train_step-$side" --bench 2>&1 | grep 'rust step' || true
  done
done
