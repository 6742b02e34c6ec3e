#!/usr/bin/env python3
"""Times SimpleITK reading the MetaImage and NRRD bench files (and vol.nii) in
DIR, one file after another; prints the median seconds.

Each read is `sitk.ReadImage(path)` + `sitk.GetArrayViewFromImage` (what
MONAI's ITKReader does for one file, without MONAI's own conversion on top),
with SimpleITK on one thread. Before timing, prints each file's voxel SHA-256
(the array's bytes, x fastest), to compare with what `cargo bench --bench
formats` prints for dino3d.

Usage: formats_simpleitk.py DIR [PASSES]
"""
import hashlib
import os
import statistics
import sys
import time

import SimpleITK as sitk

FILES = ["vol.mha", "vol_zlib.mha", "vol.nrrd", "vol_gz.nrrd", "vol.nii"]


def sitk_read(p):
    return sitk.GetArrayViewFromImage(sitk.ReadImage(p)).shape


def main():
    d = sys.argv[1]
    passes = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    for f in FILES:
        a = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(d, f)))
        print(f"{f}: shape {a.shape} {a.dtype}, voxels sha256 {hashlib.sha256(a.tobytes()).hexdigest()}")
    for f in FILES:
        p = os.path.join(d, f)
        sitk_read(p)  # warm the page cache
        times = []
        for _ in range(passes):
            t = time.perf_counter()
            sitk_read(p)
            times.append(time.perf_counter() - t)
        print(f"simpleitk {f}: median {statistics.median(times) * 1e3:.1f} ms, fastest {min(times) * 1e3:.1f} ms ({passes} passes)")


if __name__ == "__main__":
    main()
