#!/usr/bin/env bash
# Issue 4's benchmarks, dino3d's cache and the nnU-Net-style Blosc2 store (plus
# mmap'd .npy and MONAI PersistentDataset's torch.save files) in the same run:
#   * random 96³ crops per core, warm and cold (page cache dropped / evicted);
#   * entry size vs the source .nii.gz;
#   * a full 3DINO sample from the cache vs from the prepared volume in RAM
#     (divan's medians, and a paired run that cuts each sample both ways back
#     to back, whose ratio is the one to quote: see cache/benches/cache.rs).
# Cold sweeps are then repeated on both sides (benches/blosc2_cold.py: the
# same Blosc2 store and protocol, COLD_REPEATS times) and compared by median.
# Data: the CT-like volumes of benches/decode_vs_nibabel.sh (made if missing).
# Python side: ../shared/bench/monai/bench_crop_store.py in a venv with numpy,
# nibabel, torch and blosc2 (VENV, default /tmp/mvenv; made if missing). Its
# cold numbers need root (it writes /proc/sys/vm/drop_caches); ours evict the
# entry's pages with posix_fadvise(DONTNEED) and need nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${DINO3D_BENCH_DATA:-/tmp/dino3d-bench-data}"
VENV="${VENV:-/tmp/mvenv}"
CPU="${BENCH_CPU:-0}"
STORE_PY="${STORE_PY:-/work/shared/bench/monai/bench_crop_store.py}"
[ -f "$DATA/vol_000.nii.gz" ] || bash benches/decode_vs_nibabel.sh
if ! "$VENV/bin/python" -c "import blosc2, torch, nibabel" 2>/dev/null; then
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q numpy nibabel blosc2 torch
fi
export DINO3D_BENCH_DATA="$DATA"
cargo bench -q -p dino3d-pipeline --bench cache --no-run
for layout in "lz4 64,64,8" "zstd 64,64,8" "lz4 32"; do
  set -- $layout
  echo "== dino3d cache, $1, chunks $2 (x,y,z, or one edge)"
  DINO3D_CACHE_CODEC=$1 DINO3D_CACHE_CHUNK=$2 taskset -c "$CPU" \
    cargo bench -q -p dino3d-pipeline --bench cache 2>&1 | grep -v '^$'
done
echo "== dino3d full sample, from the cache and in RAM in pairs (lz4)"
DINO3D_PAIRED_SAMPLES="${PAIRED_SAMPLES:-60}" taskset -c "$CPU" \
  cargo bench -q -p dino3d-pipeline --bench cache 2>&1 | grep paired
echo "== Blosc2 / npy / torch.save (bench_crop_store.py, one thread)"
OUT="$(mktemp -d)"
taskset -c "$CPU" "$VENV/bin/python" "$STORE_PY" "$DATA" "$OUT/store"
if [ -w /proc/sys/vm/drop_caches ]; then
  # One cold sweep each is too noisy to compare: both sides again, repeated.
  echo "== cold sweeps repeated, whole page cache dropped before each: Blosc2 int16 LZ4 HC 5, then dino3d (cold_sweep_24x96, lz4)"
  taskset -c "$CPU" "$VENV/bin/python" benches/blosc2_cold.py "$DATA" "$OUT/b2cold" "${COLD_REPEATS:-9}"
  DINO3D_DROP_CACHES=1 taskset -c "$CPU" cargo bench -q -p dino3d-pipeline --bench cache -- cold_sweep 2>&1 | grep -v '^$'
fi
rm -rf "$OUT"
