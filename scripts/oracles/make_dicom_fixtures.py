#!/usr/bin/env python3
"""Writes the small DICOM fixtures under data/other_formats/dicom_generated/.

Each covers one reader option or one bad input, cut from the bundled pydicom
samples (data/other_formats/dicom/: the 16x16 5-slice CT5N series and
MR_small.dcm):

  two_series/          two series in one folder (CT5N and a 3-slice copy
                       with a new SeriesInstanceUID and other values)
  oblique/             CT5N with rotated ImageOrientationPatient, positions
                       along the slice normal, files in shuffled name order
  rescale/             CT5N with RescaleSlope 0.5, RescaleIntercept -100
  rescale_per_slice/   CT5N whose slices disagree on RescaleSlope/Intercept
  enhanced_ct.dcm      CT5N as one enhanced multi-frame object (per-frame
                       PlanePositionSequence, shared orientation/spacing)
  deflate.dcm          MR_small as Deflated Explicit VR Little Endian
  rle.dcm              MR_small as RLE Lossless (pydicom's encoder)
  jpeg_lossless.dcm    MR_small as JPEG Lossless (GDCM through SimpleITK),
                       when this SimpleITK can write it
  jpeg2000_lossy.dcm   MR_small as JPEG 2000 lossy, ratio 10 (pydicom with
                       pylibjpeg-openjpeg), when installed
  htj2k_lossless.dcm   MR_small as High-Throughput JPEG 2000 lossless (OpenJPH's
                       ojph_compress, Debian openjph-tools), when installed
  bad/missing_slice/   CT5N without its middle slice (a gap)
  bad/duplicate/       CT5N with one slice's position repeated
  bad/tilt/            CT5N with positions sheared sideways (gantry tilt)
  bad/mixed_sizes/     CT5N with one slice cut to 8x8 (same series)
  bad/jpeg2000.dcm     MR_small labelled JPEG 2000 lossless, its fragment the
                       raw pixels: no codestream (a decode error)
  bad/truncated.dcm    MR_small cut in the middle of its pixel data
  bad/enhanced_no_positions.dcm  multi-frame object without positions

Run: python3 scripts/oracles/make_dicom_fixtures.py  (from the repo root;
needs pydicom, numpy, SimpleITK; pylibjpeg-openjpeg and ojph_compress for the
JPEG 2000 fixtures). Deterministic UIDs; rerunning rewrites the
same files.
"""
import copy
import os
import shutil
import subprocess
import tempfile

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    JPEG2000,
    JPEG2000Lossless,
    RLELossless,
)

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
SRC = os.path.join(ROOT, "data", "other_formats", "dicom")
OUT = os.path.join(ROOT, "data", "other_formats", "dicom_generated")
UID_ROOT = "1.2.826.0.1.3680043.10.1078."  # fixed: reruns give the same bytes


def ct5n():
    """The CT5N slices sorted by z (ascending), as datasets."""
    d = os.path.join(SRC, "CT5N_series")
    slices = [pydicom.dcmread(os.path.join(d, n)) for n in sorted(os.listdir(d))]
    return sorted(slices, key=lambda s: float(s.ImagePositionPatient[2]))


def save(ds, *parts):
    path = os.path.join(OUT, *parts)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def series(slices, folder, uid, mutate=None, prefix="slice"):
    for i, s in enumerate(slices):
        s = copy.deepcopy(s)
        s.SeriesInstanceUID = uid
        s.SOPInstanceUID = f"{uid}.{i + 1}"
        s.file_meta.MediaStorageSOPInstanceUID = s.SOPInstanceUID
        if mutate:
            mutate(i, s)
        save(s, *folder, f"{prefix}{i:02d}.dcm")


def rotation():
    a, b = np.radians(30.0), np.radians(20.0)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return rz @ rx


def htj2k(ds):
    """`ds` (one frame, grey) as HTJ2K lossless, coded by OpenJPH's
    ojph_compress (pydicom has no HTJ2K encoder)."""
    a = ds.pixel_array
    with tempfile.TemporaryDirectory() as tmp:
        raw, j2c = os.path.join(tmp, "in.yuv"), os.path.join(tmp, "out.j2c")
        with open(raw, "wb") as f:
            f.write(a.astype(a.dtype.newbyteorder("<")).tobytes())
        subprocess.run(
            ["ojph_compress", "-i", raw, "-o", j2c, "-reversible", "true",
             "-dims", f"{{{ds.Columns},{ds.Rows}}}", "-num_comps", "1",
             "-signed", "true" if ds.PixelRepresentation else "false",
             "-bit_depth", str(ds.BitsStored), "-downsamp", "{1,1}"],
            check=True, stdout=subprocess.DEVNULL)
        with open(j2c, "rb") as f:
            stream = f.read()
    h = copy.deepcopy(ds)
    h.file_meta.TransferSyntaxUID = HTJ2KLossless
    h.PixelData = pydicom.encaps.encapsulate([stream])
    h["PixelData"].VR = "OB"
    h["PixelData"].is_undefined_length = True
    return h


def main():
    shutil.rmtree(OUT, ignore_errors=True)
    cts = ct5n()

    # Two series in one folder.
    series(cts, ["two_series"], UID_ROOT + "1")

    def second(i, s):
        a = s.pixel_array.astype(np.int16)[::-1].copy() + 7
        s.PixelData = a.tobytes()
    series(cts[:3], ["two_series"], UID_ROOT + "2", second, prefix="other")

    # Oblique: rotated axes, positions along the normal, names shuffled.
    r = rotation()
    row, col = r[:, 0], r[:, 1]
    normal = np.cross(row, col)
    origin = np.array([-72.2, -143.0, -1.2375])

    def oblique(i, s):
        s.ImageOrientationPatient = [f"{v:.6f}" for v in list(row) + list(col)]
        p = origin + i * 2.5 * normal
        s.ImagePositionPatient = [f"{v:.6f}" for v in p]
    series(cts, ["oblique"], UID_ROOT + "3", oblique)
    names = sorted(os.listdir(os.path.join(OUT, "oblique")))
    for n, new in zip(names, ["c.dcm", "a.dcm", "e.dcm", "b.dcm", "d.dcm"]):
        os.replace(os.path.join(OUT, "oblique", n), os.path.join(OUT, "oblique", "_" + new))
    for n in os.listdir(os.path.join(OUT, "oblique")):
        os.replace(os.path.join(OUT, "oblique", n), os.path.join(OUT, "oblique", n[1:]))

    # Rescale slope/intercept.
    def rescale(i, s):
        s.RescaleSlope = "0.5"
        s.RescaleIntercept = "-100"
    series(cts, ["rescale"], UID_ROOT + "4", rescale)

    def per_slice(i, s):
        s.RescaleSlope = ["0.5", "1", "2", "0.25", "1"][i]
        s.RescaleIntercept = ["-100", "-1024", "0", "10", "-1024"][i]
    series(cts, ["rescale_per_slice"], UID_ROOT + "10", per_slice)

    # Enhanced multi-frame CT.
    enhanced = copy.deepcopy(cts[0])
    enhanced.SeriesInstanceUID = UID_ROOT + "5"
    enhanced.SOPInstanceUID = UID_ROOT + "5.1"
    enhanced.file_meta.MediaStorageSOPInstanceUID = enhanced.SOPInstanceUID
    enhanced.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2.1"  # Enhanced CT Image Storage
    enhanced.file_meta.MediaStorageSOPClassUID = enhanced.SOPClassUID
    enhanced.NumberOfFrames = len(cts)
    enhanced.PixelData = b"".join(s.PixelData for s in cts)
    for k in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing",
              "RescaleSlope", "RescaleIntercept", "SliceLocation"):
        if k in enhanced:
            del enhanced[k]
    shared = Dataset()
    po = Dataset()
    po.ImageOrientationPatient = cts[0].ImageOrientationPatient
    shared.PlaneOrientationSequence = Sequence([po])
    pm = Dataset()
    pm.PixelSpacing = cts[0].PixelSpacing
    pm.SliceThickness = cts[0].SliceThickness
    shared.PixelMeasuresSequence = Sequence([pm])
    pv = Dataset()
    pv.RescaleSlope = "1"
    pv.RescaleIntercept = "-1024"
    pv.RescaleType = "HU"
    shared.PixelValueTransformationSequence = Sequence([pv])
    enhanced.SharedFunctionalGroupsSequence = Sequence([shared])
    frames = []
    for s in cts:
        f = Dataset()
        pp = Dataset()
        pp.ImagePositionPatient = s.ImagePositionPatient
        f.PlanePositionSequence = Sequence([pp])
        frames.append(f)
    enhanced.PerFrameFunctionalGroupsSequence = Sequence(frames)
    save(enhanced, "enhanced_ct.dcm")
    no_pos = copy.deepcopy(enhanced)
    del no_pos.PerFrameFunctionalGroupsSequence
    save(no_pos, "bad", "enhanced_no_positions.dcm")

    # Transfer syntaxes.
    mr = pydicom.dcmread(os.path.join(SRC, "MR_small.dcm"))
    d = copy.deepcopy(mr)
    d.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    save(d, "deflate.dcm")
    d = copy.deepcopy(mr)
    d.compress(RLELossless, encoding_plugin="pydicom", generate_instance_uid=False)
    save(d, "rle.dcm")
    try:
        import SimpleITK as sitk
        img = sitk.ReadImage(os.path.join(SRC, "MR_small.dcm"))
        w = sitk.ImageFileWriter()
        w.SetImageIO("GDCMImageIO")
        w.SetFileName(os.path.join(OUT, "jpeg_lossless.dcm"))
        w.SetUseCompression(True)
        w.SetCompressor("JPEG")
        w.KeepOriginalImageUIDOn()
        w.Execute(img)
    except Exception as e:  # noqa: BLE001 - optional fixture
        print(f"jpeg_lossless.dcm not written: {e}")
    try:
        d = copy.deepcopy(mr)
        d.compress(JPEG2000, encoding_plugin="pylibjpeg", j2k_cr=[10],
                   generate_instance_uid=False)
        save(d, "jpeg2000_lossy.dcm")
    except Exception as e:  # noqa: BLE001 - optional fixture
        print(f"jpeg2000_lossy.dcm not written: {e}")
    try:
        save(htj2k(mr), "htj2k_lossless.dcm")
    except (OSError, subprocess.CalledProcessError) as e:
        print(f"htj2k_lossless.dcm not written: {e}")

    # Bad input.
    series(cts[:2] + cts[3:], ["bad", "missing_slice"], UID_ROOT + "6")

    def duplicate(i, s):
        if i == 3:
            s.ImagePositionPatient = cts[2].ImagePositionPatient
    series(cts[:4], ["bad", "duplicate"], UID_ROOT + "7", duplicate)

    def tilt(i, s):
        p = [float(v) for v in s.ImagePositionPatient]
        p[1] += 0.8 * i  # y drifts with z: a gantry tilt of ~18 degrees
        s.ImagePositionPatient = [f"{v:.6f}" for v in p]
    series(cts, ["bad", "tilt"], UID_ROOT + "8", tilt)

    def mixed(i, s):
        if i == 2:
            a = s.pixel_array[:8, :8].copy()
            s.Rows, s.Columns = 8, 8
            s.PixelData = a.tobytes()
    series(cts, ["bad", "mixed_sizes"], UID_ROOT + "9", mixed)

    j = copy.deepcopy(mr)
    j.file_meta.TransferSyntaxUID = JPEG2000Lossless
    # A well-formed encapsulation of bytes that are no JPEG 2000 stream: the
    # header reads, decoding must fail with an error naming the file.
    j.PixelData = pydicom.encaps.encapsulate([mr.PixelData])
    j["PixelData"].VR = "OB"
    j["PixelData"].is_undefined_length = True
    save(j, "bad", "jpeg2000.dcm")

    src = os.path.join(SRC, "MR_small.dcm")
    with open(src, "rb") as f:
        data = f.read()
    with open(os.path.join(OUT, "bad", "truncated.dcm"), "wb") as f:
        f.write(data[: len(data) - 4000])
    n = sum(len(fs) for _, _, fs in os.walk(OUT))
    print(f"{n} files -> {OUT}")


if __name__ == "__main__":
    main()
