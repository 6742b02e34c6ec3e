#!/usr/bin/env python3
"""Writes the small MetaImage/NRRD fixtures under data/other_formats/generated/.

Each covers one reader option (zlib .mha, big-endian, channels, oblique
directions, detached gzip .nhdr, 2-D, 4-D, every MET_ type, LIST data files,
byte skip -1, LAS/RAS spaces). Voxels are crops of the bundled Colin27 T1, so
they look like real data. Written with SimpleITK and pynrrd, or by hand where
those libraries cannot write an option (big-endian, MET_LONG, LIST, skips).

Run: python3 scripts/oracles/make_other_formats_fixtures.py  (from the repo
root; needs SimpleITK, numpy, pynrrd). Deterministic: rerunning rewrites the
same bytes.
"""
import os
import shutil

import nrrd
import numpy as np
import SimpleITK as sitk

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
OUT = os.path.join(ROOT, "data", "other_formats", "generated")


def colin_crop(nx, ny, nz, x0=70, y0=90, z0=80):
    """A crop of the Colin27 T1 as a numpy array indexed [x, y, z]."""
    img = sitk.ReadImage(os.path.join(ROOT, "data/volumes/colin27_mricron/ch2.nii.gz"))
    a = sitk.GetArrayFromImage(img)  # (z, y, x)
    return np.ascontiguousarray(a[z0:z0 + nz, y0:y0 + ny, x0:x0 + nx].transpose(2, 1, 0))


def to_sitk(xyz, spacing, origin, direction, vector=False):
    """SimpleITK image from an [x, y, z(, c)] array."""
    arr = xyz.transpose(2, 1, 0, 3) if vector else xyz.T
    img = sitk.GetImageFromArray(np.ascontiguousarray(arr), isVector=vector)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    img.SetDirection(direction)
    return img


def rot(deg_z, deg_x):
    """A 3-D rotation (row-major, flattened) about z then x."""
    a, b = np.radians(deg_z), np.radians(deg_x)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return rz @ rx


def write_mhd(name, fields, data_bytes, local=False, data_name=None):
    """A hand-written MetaImage header (and data file unless LOCAL)."""
    lines = [f"{k} = {v}" for k, v in fields]
    path = os.path.join(OUT, name)
    if local:
        lines.append("ElementDataFile = LOCAL")
        with open(path, "wb") as f:
            f.write(("\n".join(lines) + "\n").encode())
            f.write(data_bytes)
    else:
        lines.append(f"ElementDataFile = {data_name}")
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")
        if data_bytes is not None:
            with open(os.path.join(OUT, data_name), "wb") as f:
                f.write(data_bytes)


def main():
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(os.path.join(OUT, "types"))
    base = colin_crop(24, 20, 16).astype(np.int16) * 7 - 300

    # zlib-compressed .mha, oblique, anisotropic, int16.
    R = rot(20, 10)
    img = to_sitk(base, (0.8, 0.9, 1.5), (-12.5, 30.25, 8.0), tuple(R.flatten()))
    sitk.WriteImage(img, os.path.join(OUT, "ct_zlib_oblique.mha"), useCompression=True)

    # Same voxels as a raw .mhd + .raw (SimpleITK writes the pair).
    sitk.WriteImage(img, os.path.join(OUT, "ct_raw.mhd"), useCompression=False)

    # Big-endian uint16, detached, with a HeaderSize of 16 junk bytes.
    u16 = (base.astype(np.int32) + 400).astype(np.uint16)
    write_mhd(
        "bigendian.mhd",
        [("ObjectType", "Image"), ("NDims", 3), ("DimSize", "24 20 16"),
         ("ElementSpacing", "1.2 1.1 2"), ("Offset", "3 -4 5"),
         ("TransformMatrix", "1 0 0 0 1 0 0 0 1"), ("BinaryDataByteOrderMSB", "True"),
         ("HeaderSize", 16), ("ElementType", "MET_USHORT")],
        b"J" * 16 + u16.T.astype(">u2").tobytes(), data_name="bigendian.raw")

    # Three channels of float32 (vector pixels, interleaved).
    small = colin_crop(12, 10, 8).astype(np.float32)
    vec = np.stack([small, small * 0.5 + 1, -small], axis=-1)
    img = to_sitk(vec, (1.0, 2.0, 3.0), (1.0, 2.0, 3.0), tuple(np.eye(3).flatten()), vector=True)
    sitk.WriteImage(img, os.path.join(OUT, "rgb_like_3ch.mha"), useCompression=True)

    # A 2-D uint8 slice, rotated in-plane.
    sl = colin_crop(40, 30, 1)[:, :, 0]
    img = sitk.GetImageFromArray(np.ascontiguousarray(sl.T))
    img.SetSpacing((0.5, 0.7))
    img.SetOrigin((10.0, -20.0))
    c, s = np.cos(np.radians(30)), np.sin(np.radians(30))
    img.SetDirection((c, -s, s, c))
    sitk.WriteImage(img, os.path.join(OUT, "slice2d.mha"))

    # 4-D scalar int16 (time becomes channels); hand-written, as SimpleITK
    # would turn a 4-D array into vector pixels.
    t4 = np.stack([base[:10, :8, :6] + 10 * t for t in range(3)], axis=-1)
    write_mhd(
        "time4d.mha",
        [("ObjectType", "Image"), ("NDims", 4), ("DimSize", "10 8 6 3"),
         ("ElementSpacing", "1 1.5 2 3"), ("Offset", "5 6 7 0"),
         ("TransformMatrix", "0 1 0 0 1 0 0 0 0 0 1 0 0 0 0 1"),
         ("ElementType", "MET_SHORT")],
        np.ascontiguousarray(t4.transpose(3, 2, 1, 0)).astype("<i2").tobytes(), local=True)

    # Every MET_ scalar type, LOCAL, little-endian, tiny.
    tiny = colin_crop(5, 4, 3).astype(np.int64) - 60
    for met, dt in [("MET_UCHAR", "<u1"), ("MET_CHAR", "<i1"), ("MET_USHORT", "<u2"),
                    ("MET_SHORT", "<i2"), ("MET_UINT", "<u4"), ("MET_INT", "<i4"),
                    ("MET_ULONG", "<u4"), ("MET_LONG", "<i4"), ("MET_ULONG_LONG", "<u8"),
                    ("MET_LONG_LONG", "<i8"), ("MET_FLOAT", "<f4"), ("MET_DOUBLE", "<f8")]:
        vals = tiny.copy()
        if dt[1] == "u":
            vals = np.abs(vals)
        arr = vals.astype(dt)
        if dt[1] == "f":
            arr = arr * np.asarray(0.25, dtype=dt)
        write_mhd(
            f"types/{met.lower()}.mha",
            [("ObjectType", "Image"), ("NDims", 3), ("BinaryData", "True"),
             ("BinaryDataByteOrderMSB", "False"), ("DimSize", "5 4 3"),
             ("ElementSpacing", "1 1 1"), ("ElementType", met)],
            arr.T.tobytes(), local=True)

    # NRRD: oblique, RAS space, raw attached, int16.
    R = rot(-25, 15)
    dirs = (R @ np.diag([0.7, 0.8, 1.6])).T  # rows = axis vectors
    nrrd.write(os.path.join(OUT, "oblique_ras.nrrd"), base,
               {"space": "right-anterior-superior", "space directions": dirs,
                "space origin": np.array([-30.5, 12.0, 40.0]), "encoding": "raw",
                "kinds": ["domain"] * 3, "endian": "little"}, index_order="F")

    # NRRD: detached .nhdr with gzip data, LPS, float32.
    f32 = base.astype(np.float32) * 0.125
    nrrd.write(os.path.join(OUT, "detached_gzip.nhdr"), f32,
               {"space": "left-posterior-superior",
                "space directions": np.diag([1.25, 1.25, 2.5]),
                "space origin": np.array([1.0, 2.0, 3.0]), "encoding": "gzip"},
               detached_header=True, index_order="F")

    # NRRD: LAS space, big-endian int32, gzip attached.
    nrrd.write(os.path.join(OUT, "las_bigendian.nrrd"), base.astype(">i4"),
               {"space": "left-anterior-superior", "space directions": np.diag([1.0, 2.0, 3.0]),
                "space origin": np.array([-1.0, -2.0, -3.0]), "encoding": "gzip",
                "endian": "big"}, index_order="F")

    # NRRD: 3-component uint8 vector axis (space directions none), gzip.
    v8 = np.stack([small.astype(np.uint8), (small // 2).astype(np.uint8),
                   (255 - small).astype(np.uint8)], axis=0)
    nrrd.write(os.path.join(OUT, "vector3.nrrd"), v8,
               {"space": "left-posterior-superior", "kinds": ["vector", "domain", "domain", "domain"],
                "space directions": np.array([[np.nan] * 3, [1.0, 0, 0], [0, 2.0, 0], [0, 0, 3.0]]),
                "space origin": np.array([0.5, 0.5, 0.5]), "encoding": "gzip"}, index_order="F")

    # NRRD: detached LIST of three slice files (one z-slab each), byte skip -1.
    slab = base[:, :, :3]
    names = []
    for z in range(3):
        n = f"list_slice{z}.raw"
        with open(os.path.join(OUT, n), "wb") as f:
            f.write(b"HEADERJUNK" + slab[:, :, z].T.astype("<i2").tobytes())
        names.append(n)
    with open(os.path.join(OUT, "list_slices.nhdr"), "w") as f:
        f.write("NRRD0004\n# slices in three files, each after 10 junk bytes\n"
                "type: short\ndimension: 3\nspace: left-posterior-superior\n"
                "sizes: 24 20 3\nspace directions: (1,0,0) (0,1,0) (0,0,4)\n"
                "kinds: domain domain domain\nendian: little\nencoding: raw\n"
                "byte skip: -1\nspace origin: (0,0,0)\ndata file: LIST 2\n"
                + "".join(x + "\n" for x in names))

    # NRRD without space fields: `spacings` only, 2-D uint16, line skip 2.
    s16 = (sl.astype(np.uint16) * 3)
    with open(os.path.join(OUT, "spacings_lineskip.nhdr"), "w") as f:
        f.write("NRRD0004\ntype: ushort\ndimension: 2\nsizes: 40 30\n"
                "spacings: 0.5 0.25\nendian: little\nencoding: raw\nline skip: 2\n"
                "data file: spacings_lineskip.dat\n")
    with open(os.path.join(OUT, "spacings_lineskip.dat"), "wb") as f:
        f.write(b"first junk line\nsecond\n" + s16.T.astype("<u2").tobytes())


if __name__ == "__main__":
    main()
