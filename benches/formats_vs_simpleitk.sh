#!/usr/bin/env bash
# dino3d MetaImage and NRRD reads vs SimpleITK, same files, one core.
#
#     benches/formats_vs_simpleitk.sh
#
#   1. creates a venv with SimpleITK + pydicom + numpy at $DCM_VENV if missing;
#   2. writes the 512x512x300 int16 CT of the DICOM bench as vol.mha (raw),
#      vol_zlib.mha (zlib), vol.nrrd (raw), vol_gz.nrrd (gzip) and vol.nii into
#      $DINO3D_DICOM_BENCH where missing (benches/make_dicom_series.py);
#   3. runs, $ROUNDS times in turn, `cargo bench -p dino3d-pipeline --bench
#      formats` (divan, one thread, RAYON_NUM_THREADS=1; it first checks each
#      file's voxels against vol.nii's), benches/formats_simpleitk.py (which
#      prints SimpleITK's voxel SHA-256 of each file) and
#      benches/monai_loadimage.py (MONAI's LoadImage with ITKReader +
#      EnsureChannelFirst, torch and ITK on one thread), all pinned to CPU
#      $BENCH_CPU with taskset when available.
#
# Environment (all optional): DINO3D_DICOM_BENCH (default /tmp/dino3d-dicom-bench),
# DCM_VENV (default /tmp/dicomvenv), MONAI_VENV (torch + monai + itk, default
# /tmp/mvenv, made if missing: ~5 GB), PASSES (default 5), ROUNDS (default 3),
# BENCH_CPU (default 0).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export DINO3D_DICOM_BENCH="${DINO3D_DICOM_BENCH:-/tmp/dino3d-dicom-bench}"
DCM_VENV="${DCM_VENV:-/tmp/dicomvenv}"
PASSES="${PASSES:-5}"
ROUNDS="${ROUNDS:-3}"
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
"$PY" benches/make_dicom_series.py "$DINO3D_DICOM_BENCH"
pin=()
command -v taskset >/dev/null && pin=(taskset -c "$BENCH_CPU")
cargo bench -p dino3d-pipeline --bench formats --no-run
for round in $(seq "$ROUNDS"); do
    echo "== round $round/$ROUNDS ($(date -u +%H:%M:%S), load $(cut -d' ' -f1-3 /proc/loadavg))"
    RAYON_NUM_THREADS=1 DIVAN_THREADS=1 "${pin[@]}" cargo bench -p dino3d-pipeline --bench formats
    "${pin[@]}" "$PY" benches/formats_simpleitk.py "$DINO3D_DICOM_BENCH" "$PASSES"
    "${pin[@]}" "$MONAI_PY" benches/monai_loadimage.py formats "$DINO3D_DICOM_BENCH" "$PASSES"
done
