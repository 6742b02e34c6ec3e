#!/usr/bin/env python3
"""Times MONAI's LoadImage (ITKReader) + EnsureChannelFirst on the bench files
of benches/formats_vs_simpleitk.sh (`formats`: vol.mha, vol_zlib.mha,
vol.nrrd, vol_gz.nrrd, vol.nii) or benches/dicom_vs_simpleitk.sh (`dicom`: the
series folder, vol.nii) in DIR, one file after another; prints the median.

Each read is what a MONAI/3DINO pipeline does per volume: a LoadImage built
once (reader="ITKReader", image_only=True, default dtype float32), called on
the path, then EnsureChannelFirst. torch and ITK run on one thread. Before
timing, prints each volume's shape and the SHA-256 of its voxels as int16
(exact for this data), x fastest: for the single files, the hash
formats_simpleitk.py prints; the series holds HU (stored - 1024) instead.

Usage: monai_loadimage.py formats|dicom DIR [PASSES]
"""
import hashlib
import os
import statistics
import sys
import time
import warnings

import numpy as np

warnings.filterwarnings("ignore", message=r"builtin type Swig")

import itk  # noqa: E402
import torch  # noqa: E402
from monai.transforms import EnsureChannelFirst, LoadImage  # noqa: E402

FILES = {
    "formats": ["vol.mha", "vol_zlib.mha", "vol.nrrd", "vol_gz.nrrd", "vol.nii"],
    "dicom": ["series", "vol.nii"],
}


def main():
    mode, d = sys.argv[1], sys.argv[2]
    passes = int(sys.argv[3]) if len(sys.argv) > 3 else 5
    torch.set_num_threads(1)
    itk.MultiThreaderBase.SetGlobalDefaultNumberOfThreads(1)
    load = LoadImage(reader="ITKReader", image_only=True)
    first = EnsureChannelFirst()

    def read(p):
        return first(load(p))

    for f in FILES[mode]:
        img = read(os.path.join(d, f))
        a = img.numpy()
        # (C, X, Y, Z) -> (Z, Y, X) C-order: x fastest, as SimpleITK's array.
        zyx = np.ascontiguousarray(a[0].T).astype("<i2")
        assert np.array_equal(zyx.astype(a.dtype), a[0].T), f"{f}: not int16 values"
        sha = hashlib.sha256(zyx.tobytes()).hexdigest()
        print(f"monai {f}: shape {tuple(img.shape)} {img.dtype}, int16 voxels sha256 {sha}")
    unit, scale = ("ms", 1e3) if mode == "formats" else ("s", 1.0)
    for f in FILES[mode]:
        p = os.path.join(d, f)
        read(p)  # warm the page cache
        times = []
        for _ in range(passes):
            t = time.perf_counter()
            read(p)
            times.append(time.perf_counter() - t)
        med, best = statistics.median(times) * scale, min(times) * scale
        print(f"monai_loadimage_itk {f}: median {med:.{1 if unit == 'ms' else 3}f} {unit}, "
              f"fastest {best:.{1 if unit == 'ms' else 3}f} {unit} ({passes} passes)")


if __name__ == "__main__":
    main()
