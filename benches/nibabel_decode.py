"""nibabel decode throughput on the dino3d decode-bench volumes (one core).

Same method as /work/shared/bench/monai/bench_load.py: warm up on the first
file, then time nib.load + np.asanyarray(img.dataobj) over every file (native
dtype, Fortran order: what dino3d's read_volume returns), and the + float32
variant for reference, over N passes.

Usage: python nibabel_decode.py DATADIR [PASSES] [OUT_JSON]
Prints, per case, vol/s as: best pass over all files (bench_load.py's
figure), median per volume and fastest volume (divan's statistics); OUT_JSON
gets the same as JSON.
"""
import glob
import json
import os
import statistics
import sys
import time

# One BLAS/OpenMP thread, like the Rust side (nibabel decode is single-threaded
# anyway; this only keeps numpy from spinning extra threads).
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402


def rates(fn, files, passes):
    """(best pass vol/s, median per-volume vol/s, fastest volume vol/s).

    The first is bench_load.py's figure (best of passes over all files); the
    other two are the same statistics divan reports per iteration.
    """
    fn(files[0])  # warm-up (imports, page cache)
    best, times = 0.0, []
    for _ in range(passes):
        t_pass = time.perf_counter()
        for f in files:
            t0 = time.perf_counter()
            fn(f)
            times.append(time.perf_counter() - t0)
        best = max(best, len(files) / (time.perf_counter() - t_pass))
    return round(best, 2), round(1 / statistics.median(times), 2), round(1 / min(times), 2)


def native(f, **kw):
    a = np.asanyarray(nib.load(f, **kw).dataobj)
    assert a.dtype == np.int16, a.dtype
    return a


def as_f32(f, **kw):
    return np.asanyarray(nib.load(f, **kw).dataobj).astype(np.float32, order="F")


def main():
    d = sys.argv[1]
    passes = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    gz = sorted(glob.glob(os.path.join(d, "vol_*.nii.gz")))
    raw = sorted(glob.glob(os.path.join(d, "vol_*.nii")))
    if not gz or not raw:
        sys.exit(f"error: no vol_*.nii.gz / vol_*.nii in {d}: run benches/decode_vs_nibabel.sh")
    print(f"nibabel {nib.__version__}, numpy {np.__version__}; "
          f"{len(gz)} .nii.gz + {len(raw)} .nii from {d}; {passes} passes", flush=True)
    cases = [
        ("nii.gz native int16", native, gz),
        ("nii.gz + float32", as_f32, gz),
        ("nii native int16 (mmap=False)", lambda f: native(f, mmap=False), raw),
        ("nii + float32 (mmap=False)", lambda f: as_f32(f, mmap=False), raw),
    ]
    out = {}
    print(f"{'nibabel vol/s':32s} {'best pass':>10s} {'median':>10s} {'fastest':>10s}")
    for name, fn, files in cases:
        best, med, fast = rates(fn, files, passes)
        out[name] = {"best_pass": best, "median": med, "fastest": fast}
        print(f"{name:32s} {best:10.2f} {med:10.2f} {fast:10.2f}", flush=True)
    if len(sys.argv) > 3:
        with open(sys.argv[3], "w") as fh:
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
