#!/usr/bin/env bash
# Header scanning at scale: generates 10,000 real .nii.gz files (copies of the bundled
# small volumes in 100 folders), then times dino3d's scanner (divan bench, 1 and 2
# threads) and nibabel (one process) on the same files in the same run.
#
# Usage: benches/scan_vs_nibabel.sh [N_FILES]   (env: DINO3D_SCAN_DATA, VENV)
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
N="${1:-10000}"
DATA="${DINO3D_SCAN_DATA:-/tmp/dino3d-scan-10k}"
VENV="${VENV:-/tmp/nbvenv}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q nibabel numpy
fi
if [ "$(find "$DATA" -name '*.nii.gz' 2>/dev/null | wc -l)" -lt "$N" ]; then
  rm -rf "$DATA"
  mapfile -t SRC < <(find "$ROOT/data/nifti" -name '*.nii.gz' ! -name 'example_nifti2*' | sort)
  for ((i = 0; i < N; i++)); do
    d="$DATA/site$((i % 100))"
    mkdir -p "$d"
    cp "${SRC[$((i % ${#SRC[@]}))]}" "$d/scan_$i.nii.gz"
  done
fi
echo "== $(find "$DATA" -name '*.nii.gz' | wc -l) files, $(du -sh "$DATA" | cut -f1) in $DATA"
lscpu | grep 'Model name' || true
echo "== dino3d (cargo bench -p dino3d-pipeline --bench scan)"
(cd "$ROOT" && DINO3D_SCAN_DATA="$DATA" cargo bench -q -p dino3d-pipeline --bench scan)
echo "== nibabel (one process)"
"$VENV/bin/python" "$HERE/nibabel_scan.py" "$DATA" 3
