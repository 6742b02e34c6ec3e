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

DICOM (data/other_formats/dicom/ and dicom_generated/, bad/ and
unsupported/ left out: dino3d refuses those files) goes
to data/oracles/dicom_oracle.json: single files read with sitk.ReadImage,
series folders with ImageSeriesReader over GetGDCMSeriesFileNames (one key
per series; `FOLDER#SERIES_UID` when a folder holds several, the volume path
syntax dino3d reads). ITK applies RescaleSlope/Intercept, so its values
are recorded as float64 (`values_sha256_f64`, `samples`) with ITK's own
`itk_dtype`. When pydicom is installed, each key also gets what pydicom
gives: the stored integers stacked in ITK's slice order (`pydicom.stored_sha256`
as little-endian bytes of the stored type, x fastest), the stored dtype and
RescaleSlope/Intercept.

Run from the repo root with SimpleITK and numpy (and pydicom, with
pylibjpeg-libjpeg and pylibjpeg-openjpeg for its JPEG and JPEG 2000 files)
installed:
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


def dicom_entry(img, datasets):
    """Oracle entry for a DICOM image read by ITK; `datasets` are the pydicom
    datasets of its files in ITK's slice order (None without pydicom)."""
    a = channel_first_zyx(img)
    c, z, y, x = a.shape
    flat = a.reshape(-1).astype(np.float64)
    idx = sorted({0, flat.size // 3, flat.size // 2, (2 * flat.size) // 3, flat.size - 1})
    e = {
        "shape": [c, x, y, z],
        "itk_dtype": a.dtype.name,
        "spacing": list(img.GetSpacing()[:3]),
        "itk_direction": list(img.GetDirection()),
        "itk_origin": list(img.GetOrigin()),
        "affine_ras": ras_affine(img).tolist(),
        "values_sha256_f64": hashlib.sha256(flat.astype("<f8").tobytes()).hexdigest(),
        "samples": [[i, flat[i].item()] for i in idx],
    }
    if datasets is not None:
        try:
            e["pydicom"] = pydicom_facts(datasets)
        except Exception as err:  # noqa: BLE001 - a plugin pydicom lacks
            e["pydicom"] = {"error": str(err).splitlines()[0]}
    return e


def pydicom_facts(datasets):
    """The stored integers and rescale pydicom gives."""
    stored = np.concatenate([d.pixel_array.reshape(-1, d.Rows, d.Columns) for d in datasets])
    shared = datasets[0].get("SharedFunctionalGroupsSequence")
    pv = shared[0].get("PixelValueTransformationSequence") if shared else None
    src = pv[0] if pv else datasets[0]
    le = stored.astype(stored.dtype.newbyteorder("<"))
    return {
        "stored_dtype": stored.dtype.name,
        "stored_sha256": hashlib.sha256(le.tobytes()).hexdigest(),
        "rescale": [float(src.get("RescaleSlope", 1)), float(src.get("RescaleIntercept", 0))],
        "transfer_syntax": str(datasets[0].file_meta.TransferSyntaxUID),
    }


def dicom_oracle():
    try:
        import pydicom
    except ImportError:
        pydicom = None
    read = (lambda p: pydicom.dcmread(p)) if pydicom else (lambda p: None)
    out = {}
    for sub in ("dicom", "dicom_generated"):
        base = os.path.join(DATA, "other_formats", sub)
        for dirpath, dirnames, names in os.walk(base):
            dirnames[:] = sorted(d for d in dirnames if d not in ("bad", "unsupported"))
            rel_dir = os.path.relpath(dirpath, DATA)
            if dirpath != base:
                uids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(dirpath)
                for uid in uids:
                    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(dirpath, uid)
                    r = sitk.ImageSeriesReader()
                    r.SetFileNames(files)
                    key = rel_dir if len(uids) == 1 else f"{rel_dir}#{uid}"
                    ds = [read(f) for f in files] if pydicom else None
                    out[key] = dicom_entry(r.Execute(), ds)
                    out[key]["files"] = [os.path.basename(f) for f in files]
                continue
            for n in sorted(names):
                p = os.path.join(dirpath, n)
                ds = [read(p)] if pydicom else None
                out[os.path.relpath(p, DATA)] = dicom_entry(sitk.ReadImage(p), ds)
    gen = f"SimpleITK {sitk.Version.VersionString()}, numpy {np.__version__}, python {sys.version.split()[0]}"
    if pydicom:
        gen += f", pydicom {pydicom.__version__}"
    doc = {"generator": gen, "conventions": "see scripts/oracles/other_formats_oracle.py", "files": out}
    dest = os.path.join(DATA, "oracles", "dicom_oracle.json")
    with open(dest, "w") as f:
        json.dump(doc, f, indent=1, sort_keys=True)
        f.write("\n")
    print(f"{len(out)} DICOM volumes -> {dest}")


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
    dicom_oracle()


if __name__ == "__main__":
    main()
