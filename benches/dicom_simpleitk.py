#!/usr/bin/env python3
"""Times SimpleITK and pydicom reading the DICOM bench series (and SimpleITK
reading vol.nii) in DIR, one pass after another; prints the median seconds.

SimpleITK: GetGDCMSeriesFileNames + ImageSeriesReader (what MONAI's
ITKReader does for a folder, without MONAI's own conversion on top).
pydicom: dcmread every file, sort by ImagePositionPatient, stack the stored
integers (what MONAI's PydicomReader does before its own conversion).

Usage: dicom_simpleitk.py DIR [PASSES]
"""
import os
import statistics
import sys
import time

import numpy as np
import pydicom
import SimpleITK as sitk


def sitk_series(d):
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(d)
    r = sitk.ImageSeriesReader()
    r.SetFileNames(files)
    return sitk.GetArrayViewFromImage(r.Execute()).shape


def pydicom_series(d):
    ds = [pydicom.dcmread(os.path.join(d, n)) for n in os.listdir(d)]
    ds.sort(key=lambda s: float(s.ImagePositionPatient[2]))
    return np.stack([s.pixel_array for s in ds]).shape


def sitk_nifti(p):
    return sitk.GetArrayViewFromImage(sitk.ReadImage(p)).shape


def main():
    d = sys.argv[1]
    passes = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    cases = [
        ("simpleitk_series", lambda: sitk_series(os.path.join(d, "series"))),
        ("pydicom_series", lambda: pydicom_series(os.path.join(d, "series"))),
        ("simpleitk_nifti", lambda: sitk_nifti(os.path.join(d, "vol.nii"))),
    ]
    for name, f in cases:
        f()  # warm the page cache
        times = []
        for _ in range(passes):
            t = time.perf_counter()
            f()
            times.append(time.perf_counter() - t)
        print(f"{name}: median {statistics.median(times):.3f} s, fastest {min(times):.3f} s ({passes} passes)")


if __name__ == "__main__":
    main()
