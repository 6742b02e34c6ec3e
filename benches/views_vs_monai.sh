#!/usr/bin/env bash
# Issue 3's benchmarks, dino3d and MONAI in the same run on the same machine:
#   * one full 3DINO sample (2 global 96³ + 8 local 48³ views, all augmentations)
#     from an in-memory prepared 256x256x128 volume, 1 and 2 threads;
#   * GaussianSmooth / HistogramShift / GibbsNoise on a 96³ crop;
#   * the deterministic prefix (load .. crop foreground) per core.
# Data: the CT-like volumes of benches/decode_vs_nibabel.sh (made if missing).
# MONAI: a venv with torch + MONAI (VENV, default /tmp/mvenv; ~5 GB, made if
# missing, as ../shared/bench/monai/run.sh does).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${DINO3D_BENCH_DATA:-/tmp/dino3d-bench-data}"
VENV="${VENV:-/tmp/mvenv}"
[ -f "$DATA/vol_000.nii.gz" ] || bash benches/decode_vs_nibabel.sh
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import monai" 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q monai nibabel
fi
export DINO3D_BENCH_DATA="$DATA"
echo "== dino3d: full sample (one_thread, two_threads)"
taskset -c 0 cargo bench -q -p dino3d-pipeline --bench sample -- one_thread 2>&1 | tail -3
cargo bench -q -p dino3d-pipeline --bench sample -- two_threads 2>&1 | tail -3
echo "== dino3d: filters and histogram shift on 96³"
taskset -c 0 cargo bench -q -p dino3d-pipeline --bench filters 2>&1 | tail -12
taskset -c 0 cargo bench -q -p dino3d-pipeline --bench intensity -- histogram 2>&1 | tail -3
echo "== dino3d: deterministic prefix"
DIVAN_THREADS=1 taskset -c 0 cargo bench -q -p dino3d-pipeline --bench prefix 2>&1 | tail -6
echo "== MONAI (torch threads 1)"
taskset -c 0 "$VENV/bin/python" benches/monai_views.py "$DATA/vol_000.nii.gz"
