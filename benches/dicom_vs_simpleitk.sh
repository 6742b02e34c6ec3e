#!/usr/bin/env bash
# dino3d DICOM series read vs SimpleITK and pydicom, same files, one core.
#
#     benches/dicom_vs_simpleitk.sh
#
#   1. creates a venv with SimpleITK + pydicom + numpy at $DCM_VENV if missing;
#   2. writes a 512x512x300 int16 CT as a DICOM series (one file per slice) and
#      as vol.nii into $DINO3D_DICOM_BENCH if missing (benches/make_dicom_series.py);
#   3. runs `cargo bench -p dino3d-pipeline --bench dicom` (divan, one thread,
#      RAYON_NUM_THREADS=1), benches/dicom_simpleitk.py and
#      benches/monai_loadimage.py (MONAI's LoadImage with ITKReader +
#      EnsureChannelFirst, torch and ITK on one thread), all pinned to CPU
#      $BENCH_CPU with taskset when available.
#
# Environment (all optional): DINO3D_DICOM_BENCH (default /tmp/dino3d-dicom-bench),
# DCM_VENV (default /tmp/dicomvenv), MONAI_VENV (torch + monai + itk, default
# /tmp/mvenv, made if missing: ~5 GB), PASSES (default 5), BENCH_CPU (default 0).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export DINO3D_DICOM_BENCH="${DINO3D_DICOM_BENCH:-/tmp/dino3d-dicom-bench}"
DCM_VENV="${DCM_VENV:-/tmp/dicomvenv}"
PASSES="${PASSES:-5}"
BENCH_CPU="${BENCH_CPU:-0}"
PY="$DCM_VENV/bin/python"
MONAI_VENV="${MONAI_VENV:-/tmp/mvenv}"
MONAI_PY="$MONAI_VENV/bin/python"

if ! "$PY" -c 'import SimpleITK, pydicom, numpy' 2>/dev/null; then
    python3 -m venv "$DCM_VENV"
    "$DCM_VENV/bin/pip" install --quiet SimpleITK pydicom numpy
fi
if ! "$MONAI_PY" -c 'import monai, itk, torch' 2>/dev/null; then
    python3 -m venv "$MONAI_VENV"
    "$MONAI_VENV/bin/pip" install --quiet monai itk
fi
if [[ ! -f "$DINO3D_DICOM_BENCH/vol.nii" ]]; then
    "$PY" benches/make_dicom_series.py "$DINO3D_DICOM_BENCH"
fi
pin=()
command -v taskset >/dev/null && pin=(taskset -c "$BENCH_CPU")
cargo bench -p dino3d-pipeline --bench dicom --no-run
RAYON_NUM_THREADS=1 DIVAN_THREADS=1 "${pin[@]}" cargo bench -p dino3d-pipeline --bench dicom
"${pin[@]}" "$PY" benches/dicom_simpleitk.py "$DINO3D_DICOM_BENCH" "$PASSES"
"${pin[@]}" "$MONAI_PY" benches/monai_loadimage.py dicom "$DINO3D_DICOM_BENCH" "$PASSES"
