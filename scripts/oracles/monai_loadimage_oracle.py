#!/usr/bin/env python3
"""What MONAI's LoadImage gives for every MetaImage, NRRD and DICOM volume the
SimpleITK oracles cover (the keys of data/oracles/other_formats_oracle.json and
dicom_oracle.json, `FOLDER#SERIES_UID` included), written to
data/oracles/monai_loadimage_oracle.json.

Each key is loaded as 3DINO/MONAI users load it:
`LoadImage(reader=R, image_only=True)` then `EnsureChannelFirst()`, with
R = "ITKReader" (defaults: affine_lps_to_ras=True) for every key and also
R = "PydicomReader" (defaults: swap_ij=True, affine_lps_to_ras=True) for the
DICOM keys. The reader LoadImage built is passed again at call time
(`loader(path, reader=loader.readers[-1])`) so that a failure is recorded as
that reader's error instead of LoadImage silently falling back to another
reader. A `FOLDER#SERIES_UID` key is read by ITKReader with `series_name` set
to the GDCM series identifier that starts with that UID; PydicomReader cannot
pick one series out of a folder, so those keys record why.

Per key and reader:
  shape         channel-first MetaTensor shape (a 2-D image stays 2-D: (C, X, Y))
  dtype         the tensor dtype of plain LoadImage (its default dtype=float32)
  native_dtype  the tensor dtype with LoadImage(dtype=None) (null, and
                `native_error` its error, where that fails)
  reader_dtype  the numpy dtype of the reader's own array (reader.get_data)
  spacing       meta["spacing"] as the reader sets it (ITK: every axis, 4 for 4-D)
  pixdim        MetaTensor.pixdim (from the affine, spatial axes only)
  affine        MetaTensor.affine (RAS; 3x3 for a 2-D image)
  sha256        the reader's array in its own dtype, channel first, as
                little-endian bytes in (C, X, Y, Z) order with x fastest
                (the other_formats oracle's convention)
  values_sha256_f64  the same voxels as little-endian float64 (the DICOM
                oracle's convention: values after RescaleSlope/Intercept)
  float32_sha256     plain LoadImage's float32 tensor, same order
  samples       [flat index, value] at the SimpleITK oracle's indices
PydicomReader entries also hold `files`: the series' files in the order
PydicomReader stacks them (by InstanceNumber; checked against its output).
`folders_holding_several_series` records what each reader does with such a
folder given no series. `default_reader` is the reader plain LoadImage()
picks for the path with the packages installed here.

Run from the repo root with monai, torch, itk, pydicom (and pylibjpeg with
pylibjpeg-libjpeg for JPEG lossless, pylibjpeg-openjpeg for JPEG 2000)
installed:
  python3 scripts/oracles/monai_loadimage_oracle.py
"""
import datetime
import hashlib
import json
import os
import re
import sys
import warnings

import numpy as np

warnings.filterwarnings("ignore", message=r"builtin type Swig")

import itk  # noqa: E402
import monai  # noqa: E402
import pydicom  # noqa: E402
import torch  # noqa: E402
from monai.transforms import EnsureChannelFirst, LoadImage  # noqa: E402

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
DATA = os.path.join(ROOT, "data")
# Warnings that say nothing about the file read.
NOISE = re.compile(r"nvImageCodec|Swig|swigvarlink")

CONVENTIONS = __doc__.strip()

NOTES = [
    "LoadImage's default dtype is float32: every MONAI tensor below is float32 unless "
    "dtype=None (native_dtype). dino3d keeps the stored type (and DICOM's "
    "RescaleSlope/Intercept as a scaling); Volume::to_f32 is what plain LoadImage gives.",
    "With dtype=None MONAI turns uint16 into int32, uint32 and uint64 into int64 "
    "(torch lacks them); a uint64 above 2^63-1 would wrap. The values are kept otherwise.",
    "ITK's Python wheels wrap no int8 (SC), int64 (SLL) or Vector<uchar,3> images: itk.imread "
    "refuses met_char, met_long_long and vector3.nrrd and ITKReader's error is recorded "
    "(SimpleITK and dino3d read them).",
    "A 2-D image stays 2-D in MONAI: shape (C, X, Y), a 3x3 affine and two spacings; "
    "SimpleITK's oracle and dino3d give (C, X, Y, 1) with a 4x4 affine.",
    "A 4-D MetaImage: ITKReader's array is (X, Y, Z, T) with original_channel_dim -1, so "
    "EnsureChannelFirst makes T the channel axis, as dino3d does; meta spacing has 4 entries.",
    "ITKReader reads DICOM with GDCM: RescaleSlope/Intercept applied, pixel type chosen by "
    "GDCM (int32 for CT with intercept -1024, float64 for slope 0.5).",
    "ITKReader on a folder uses GDCMSeriesFileNames with series details and a SeriesDate "
    "restriction and, with several series and no series_name, reads the first with only a "
    "warning; dino3d refuses such a folder and asks for FOLDER#SERIES_UID.",
    "PydicomReader stacks a folder's files by InstanceNumber (not position); its affine is "
    "built from the first and last slices of that order, so a series whose InstanceNumbers "
    "run against position comes out flipped along z with a matching affine.",
    "PydicomReader applies RescaleSlope/Intercept whenever either tag is present (1 and 0 "
    "included): float32 pixels times pydicom's DS values, which numpy 2 computes in float64 "
    "(a DSfloat is a float subclass, not a 'weak' Python float), so its array is float64 and "
    "its values are dino3d's stored * slope + intercept in f64.",
    "PydicomReader reads every file of a folder as one series (two series are stacked "
    "together, ties in InstanceNumber in directory-listing order, so no file order is "
    "recorded for that case) and, for a multi-frame file, swaps rows with frames (swap_ij on a 3-D "
    "array) and, lacking a top-level ImagePositionPatient, uses an identity affine.",
    "PydicomReader reads RescaleSlope/Intercept at the top level only: an enhanced "
    "multi-frame file's rescale (in its functional groups) is ignored and its values are "
    "the stored integers (ITK and dino3d apply it).",
    "PydicomReader hands torch pydicom's big-endian array for a big-endian file: plain "
    "LoadImage (float32) reads it, LoadImage(dtype=None) fails (native_error).",
    "PydicomReader on a single-frame file gives a 2-D image (C, X, Y) with a 4x4 affine "
    "whose third column is (0, 0, 1) before the RAS flip.",
]


def generator():
    return {
        "monai": monai.__version__,
        "torch": torch.__version__,
        "itk": itk.Version.GetITKVersion(),
        "pydicom": pydicom.__version__,
        "numpy": np.__version__,
        "python": sys.version.split()[0],
        "date": datetime.date.today().isoformat(),
    }


def x_fastest(a):
    """(C, X, Y[, Z]) array in (C, [Z,] Y, X) C-order: flat index = x fastest."""
    return np.ascontiguousarray(np.transpose(a, (0,) + tuple(range(a.ndim - 1, 0, -1))))


def sha(a):
    return hashlib.sha256(a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes()).hexdigest()


def sample_indices(n):
    return sorted({0, n // 3, n // 2, (2 * n) // 3, n - 1})


def channel_first(a, meta):
    """The reader's array with its channel axis first, as EnsureChannelFirst
    moves it (no channel: a new axis)."""
    ch = meta.get("original_channel_dim")
    if ch is None or (isinstance(ch, float) and np.isnan(ch)):
        return a[None]
    return np.moveaxis(a, int(ch), 0)


def error_line(err):
    return f"{type(err).__name__}: {str(err).strip().splitlines()[0]}"


def load(path, reader, **reader_args):
    """Runs LoadImage (plain, and with dtype=None) + EnsureChannelFirst;
    returns (plain, native or the error of dtype=None, raw array, raw meta,
    warnings), or raises plain LoadImage's error."""

    def run(dtype):
        loader = LoadImage(reader=reader, image_only=True, dtype=dtype, **reader_args)
        return EnsureChannelFirst()(loader(path, reader=loader.readers[-1])), loader.readers[-1]

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plain, r = run(np.float32)
        try:
            native = run(None)[0]
        except Exception as err:  # noqa: BLE001 - recorded
            native = error_line(err)
        raw, meta = r.get_data(r.read(path))
    # Paths relative to data/, so that the oracle does not name this checkout.
    msgs = {str(w.message).splitlines()[0].replace(DATA + os.sep, "") for w in caught}
    msgs = sorted(m for m in msgs if not NOISE.search(m))
    return plain, native, raw, meta, msgs


def entry(path, reader, **reader_args):
    try:
        plain, native, raw, meta, msgs = load(path, reader, **reader_args)
    except Exception as err:  # noqa: BLE001 - recorded, the reader's own refusal
        return {"error": error_line(err)}
    arr = channel_first(np.asarray(raw), meta)
    assert arr.shape == tuple(plain.shape), (path, arr.shape, plain.shape)
    # MONAI's own tensors hold the reader's values (up to its dtype changes).
    assert np.array_equal(arr.astype(np.float32), plain.numpy()), path
    if not isinstance(native, str):
        nat = native.detach().cpu().numpy()
        assert np.array_equal(arr.astype(np.float64), nat.astype(np.float64)), path
    flat = x_fastest(arr).reshape(-1)
    e = {
        "shape": list(plain.shape),
        "dtype": str(plain.dtype).removeprefix("torch."),
        "native_dtype": None if isinstance(native, str) else str(native.dtype).removeprefix("torch."),
        "reader_dtype": arr.dtype.name,
        "spacing": np.asarray(plain.meta["spacing"], dtype=np.float64).tolist(),
        "pixdim": np.asarray(plain.pixdim, dtype=np.float64).tolist(),
        "affine": np.asarray(plain.affine, dtype=np.float64).tolist(),
        "sha256": sha(flat),
        "values_sha256_f64": sha(flat.astype(np.float64)),
        "float32_sha256": sha(x_fastest(plain.numpy()).reshape(-1)),
        "samples": [[i, flat[i].item()] for i in sample_indices(flat.size)],
    }
    if isinstance(native, str):
        e["native_error"] = native
    if msgs:
        e["warnings"] = msgs
    return e


def default_reader(path):
    """The reader plain LoadImage() would pick (auto_select: the last
    registered reader whose verify_suffix accepts the path)."""
    loader = LoadImage(image_only=True)
    for r in loader.readers[::-1]:
        if r.verify_suffix(path):
            return type(r).__name__
    return None


def series_identifier(folder, uid):
    """The GDCM series identifier (UID plus series details) MONAI's ITKReader
    lists for SeriesInstanceUID `uid`, and its files."""
    g = itk.GDCMSeriesFileNames.New()
    g.SetUseSeriesDetails(True)
    g.AddSeriesRestriction("0008|0021")
    g.SetDirectory(folder)
    ids = [s for s in g.GetSeriesUIDs() if uid is None or s.startswith(uid + ".")]
    assert len(ids) >= 1, (folder, uid, list(g.GetSeriesUIDs()))
    return ids[0], [os.path.basename(f) for f in g.GetFileNames(ids[0])]


def pydicom_order(folder):
    """A folder's files in PydicomReader's stacking order (InstanceNumber)."""
    ds = [(pydicom.dcmread(os.path.join(folder, n), stop_before_pixels=True), n) for n in os.listdir(folder)]
    return [n for d, n in sorted(ds, key=lambda t: t[0].InstanceNumber)]


def check_pydicom_order(folder, files, e):
    """PydicomReader's voxels are the files' pixels (rescaled in float32)
    stacked in `files` order, rows and columns swapped."""
    planes = []
    for n in files:
        d = pydicom.dcmread(os.path.join(folder, n))
        p = d.pixel_array
        if "RescaleSlope" in d or "RescaleIntercept" in d:
            p = p.astype(np.float32) * d.get("RescaleSlope", 1.0) + d.get("RescaleIntercept", 0.0)
        planes.append(p.T)
    want = np.stack(planes, axis=-1)[None]
    assert sha(x_fastest(want).reshape(-1).astype(np.float64)) == e["values_sha256_f64"], folder


def dicom_entries(rel):
    path, _, uid = rel.partition("#")
    full = os.path.join(DATA, path)
    out = {"default_reader": default_reader(full)}
    if os.path.isdir(full):
        ident, files = series_identifier(full, uid or None)
        out["ITKReader"] = entry(full, "ITKReader", series_name=ident if uid else "")
        out["ITKReader"].update(series_identifier=ident, files=files)
        if uid:
            out["PydicomReader"] = {
                "not_expressible": "PydicomReader reads every file of a folder as one series; "
                "it has no series selection (see folders_holding_several_series)"
            }
        else:
            out["PydicomReader"] = entry(full, "PydicomReader")
            if "error" not in out["PydicomReader"]:
                files = pydicom_order(full)
                check_pydicom_order(full, files, out["PydicomReader"])
                out["PydicomReader"]["files"] = files
    else:
        out["ITKReader"] = entry(full, "ITKReader")
        out["PydicomReader"] = entry(full, "PydicomReader")
    return out


def main():
    with open(os.path.join(DATA, "oracles", "other_formats_oracle.json")) as f:
        image_keys = sorted(json.load(f)["files"])
    with open(os.path.join(DATA, "oracles", "dicom_oracle.json")) as f:
        dicom_keys = sorted(json.load(f)["files"])
    files = {}
    for rel in image_keys:
        full = os.path.join(DATA, rel)
        files[rel] = {"default_reader": default_reader(full), "ITKReader": entry(full, "ITKReader")}
    for rel in dicom_keys:
        files[rel] = dicom_entries(rel)
    several = {}
    folders = sorted({k.partition("#")[0] for k in dicom_keys if "#" in k})
    for rel in folders:
        full = os.path.join(DATA, rel)
        ident, itk_files = series_identifier(full, None)
        several[rel] = {
            "ITKReader": {**entry(full, "ITKReader"), "series_identifier": ident, "files": itk_files},
            "PydicomReader": entry(full, "PydicomReader"),
        }
    doc = {
        "generator": generator(),
        "conventions": CONVENTIONS,
        "notes": NOTES,
        "files": files,
        "folders_holding_several_series": several,
    }
    dest = os.path.join(DATA, "oracles", "monai_loadimage_oracle.json")
    with open(dest, "w") as f:
        json.dump(doc, f, indent=1, sort_keys=True)
        f.write("\n")
    print(f"{len(files)} keys ({len(several)} multi-series folders) -> {dest}")


if __name__ == "__main__":
    main()
