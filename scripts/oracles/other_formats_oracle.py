#!/usr/bin/env python3
"""What SimpleITK reads from every MetaImage/NRRD file under data/other_formats/,
in the terms MONAI's LoadImage (ITKReader, affine_lps_to_ras=True, then
EnsureChannelFirst) reports, written to data/oracles/other_formats_oracle.json.

Per file: channel-first shape (C, X, Y, Z; a 2-D image has Z = 1), the stored
dtype, spacing (first three axes, 1 past a 2-D image's), the RAS affine
(4x4; ITK's direction @ diag(spacing) with the origin, x and y rows negated,
as MONAI builds it from ITK's LPS geometry), the sha256 of the voxels as
little-endian bytes in (C, X, Y, Z) order with x fastest, and sample voxels
at a few flat indices of that order.

Run from the repo root with SimpleITK and numpy installed:
  python3 scripts/oracles/other_formats_oracle.py
"""
import hashlib
import json
import os
import sys

import numpy as np
import SimpleITK as sitk

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
DATA = os.path.join(ROOT, "data")
EXTS = (".mha", ".mhd", ".nrrd", ".nhdr")


def channel_first_zyx(img):
    """Voxels as an array (C, Z, Y, X): C-order is dino3d's memory order."""
    a = sitk.GetArrayFromImage(img)  # (z, y, x[, c]) or (t, z, y, x)
    if img.GetNumberOfComponentsPerPixel() > 1:
        a = np.moveaxis(a, -1, 0)
        if img.GetDimension() == 2:
            a = a[:, None]
        return a
    if img.GetDimension() == 2:
        return a[None, None]
    if img.GetDimension() == 3:
        return a[None]
    return a  # 4-D: the slowest (t) axis becomes channels


def ras_affine(img):
    n = img.GetDimension()
    d = np.array(img.GetDirection()).reshape(n, n)
    sp = np.array(img.GetSpacing())
    org = np.array(img.GetOrigin())
    sr = min(n, 3)
    aff = np.eye(4)
    aff[:sr, :sr] = d[:sr, :sr] @ np.diag(sp[:sr])
    aff[:sr, 3] = org[:sr]
    aff[:2] *= -1  # LPS -> RAS, as MONAI's orientation_ras_lps
    return aff


def describe(path):
    img = sitk.ReadImage(path)
    a = channel_first_zyx(img)
    c, z, y, x = a.shape
    flat = a.reshape(-1)
    le = a.astype(a.dtype.newbyteorder("<"), copy=False)
    idx = sorted({0, flat.size // 3, flat.size // 2, (2 * flat.size) // 3, flat.size - 1})
    spacing = list(img.GetSpacing()[:3]) + [1.0] * (3 - min(3, img.GetDimension()))
    return {
        "shape": [c, x, y, z],
        "dimension": img.GetDimension(),
        "components": img.GetNumberOfComponentsPerPixel(),
        "dtype": a.dtype.name,
        "spacing": spacing,
        "itk_direction": list(img.GetDirection()),
        "itk_origin": list(img.GetOrigin()),
        "itk_spacing": list(img.GetSpacing()),
        "affine_ras": ras_affine(img).tolist(),
        "sha256": hashlib.sha256(np.ascontiguousarray(le).tobytes()).hexdigest(),
        "samples": [[i, flat[i].item()] for i in idx],
    }


def main():
    files = {}
    base = os.path.join(DATA, "other_formats")
    for dirpath, _, names in sorted(os.walk(base)):
        for n in sorted(names):
            if n.lower().endswith(EXTS):
                p = os.path.join(dirpath, n)
                files[os.path.relpath(p, DATA)] = describe(p)
    out = {
        "generator": f"SimpleITK {sitk.Version.VersionString()}, numpy {np.__version__}, "
                     f"python {sys.version.split()[0]}",
        "conventions": __doc__.strip().splitlines()[0],
        "files": files,
    }
    dest = os.path.join(DATA, "oracles", "other_formats_oracle.json")
    with open(dest, "w") as f:
        json.dump(out, f, indent=1, sort_keys=True)
        f.write("\n")
    print(f"{len(files)} files -> {dest}")


if __name__ == "__main__":
    main()
