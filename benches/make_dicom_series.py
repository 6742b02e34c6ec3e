#!/usr/bin/env python3
"""Writes the DICOM, MetaImage and NRRD speed-bench data: a 512x512x300 int16
CT-like volume as a DICOM series (one explicit-VR little-endian file per slice,
RescaleIntercept -1024, 0.7 mm pixels, 1 mm slices) and the same voxels, written
by SimpleITK, as an uncompressed NIfTI (vol.nii), MetaImage raw (vol.mha) and
zlib-compressed (vol_zlib.mha), NRRD raw (vol.nrrd) and gzip (vol_gz.nrrd), into
DIR (default /tmp/dino3d-dicom-bench). Only the missing outputs are written
(the volume is the same every time: seeded noise).

Usage: make_dicom_series.py [DIR]   (needs pydicom, numpy, SimpleITK)
"""
import os
import sys

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

NX, NY, NZ = 512, 512, 300
UID = "1.2.826.0.1.3680043.10.1078.99"


def volume():
    """Smooth body-like values plus noise, stored as int16 (HU + 1024)."""
    rng = np.random.default_rng(0)
    z, y, x = np.mgrid[0:NZ, 0:NY, 0:NX].astype(np.float32)
    r = np.sqrt((x - NX / 2) ** 2 + (y - NY / 2) ** 2)
    hu = np.where(r < 200, 40.0, -1000.0) + 30 * np.sin(z / 17.0)
    hu += rng.normal(0, 20, hu.shape)
    return (hu + 1024).clip(0, 4095).astype(np.int16)  # (z, y, x)


# Single-file copies of the same voxels: (name, compressed).
FILES = [
    ("vol.nii", False),
    ("vol.mha", False),
    ("vol_zlib.mha", True),
    ("vol.nrrd", False),
    ("vol_gz.nrrd", True),
]


def write_series(series, vol):
    os.makedirs(series, exist_ok=True)
    for k in range(NZ):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = f"{UID}.{k + 1}"
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.SeriesInstanceUID = UID
        ds.StudyInstanceUID = UID + ".0"
        ds.Modality = "CT"
        ds.InstanceNumber = k + 1
        ds.Rows, ds.Columns = NY, NX
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.PixelSpacing = ["0.7", "0.7"]
        ds.SliceThickness = "1"
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
        ds.ImagePositionPatient = ["-179.2", "-179.2", f"{-150.0 + k:.1f}"]
        ds.RescaleSlope = "1"
        ds.RescaleIntercept = "-1024"
        ds.PixelData = vol[k].tobytes()
        ds.save_as(os.path.join(series, f"IM{k:04d}.dcm"), enforce_file_format=True)


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "/tmp/dino3d-dicom-bench"
    os.makedirs(out, exist_ok=True)
    series = os.path.join(out, "series")
    missing = [(n, c) for n, c in FILES if not os.path.isfile(os.path.join(out, n))]
    if os.path.isdir(series) and not missing:
        return
    vol = volume()
    if not os.path.isdir(series):
        write_series(series, vol)
        print(f"{NZ} slices -> {series}")
    img = sitk.GetImageFromArray(vol)
    img.SetSpacing((0.7, 0.7, 1.0))
    for name, compressed in missing:
        sitk.WriteImage(img, os.path.join(out, name), useCompression=compressed)
        print(f"{name} -> {out}")

if __name__ == "__main__":
    main()
