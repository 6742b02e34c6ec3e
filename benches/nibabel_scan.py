"""Header-scan baseline: nibabel reading shape and zooms of every volume in a folder
(what a Python manifest builder does), best of N runs. Prints files/s.

Usage: python nibabel_scan.py DIR [RUNS]
"""
import glob
import os
import sys
import time

import nibabel as nib


def main():
    root = sys.argv[1]
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    best = None
    for _ in range(runs):
        t0 = time.perf_counter()
        files = sorted(glob.glob(os.path.join(root, "**", "*.nii*"), recursive=True))
        rows = []
        for f in files:
            img = nib.load(f)
            rows.append((f, img.shape, img.header.get_zooms()[:3]))
        dt = time.perf_counter() - t0
        best = dt if best is None else min(best, dt)
    print(f"nibabel header scan: {len(files)} files, best {best:.2f} s, {len(files) / best:.0f} files/s")


if __name__ == "__main__":
    main()
