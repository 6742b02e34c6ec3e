"""Blosc2's cold 96^3 crop rate, repeated: the protocol of
../shared/bench/monai/bench_crop_store.py (same store parameters, same crop
starts, drop the page cache, then 24 crops over the volumes in turn), run
REPEATS times so that its median can be set against the median of our
`cold_sweep_24x96` (one cold sweep is too noisy to compare on its own).

usage: blosc2_cold.py DATA_DIR STORE_DIR [REPEATS]   (needs root for drop_caches)
"""
import glob
import os
import statistics
import sys
import time

import blosc2
import nibabel as nib
import numpy as np

blosc2.set_nthreads(1)
P = 96


def drop():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def main():
    data, out = sys.argv[1], sys.argv[2]
    repeats = int(sys.argv[3]) if len(sys.argv) > 3 else 7
    os.makedirs(out, exist_ok=True)
    files = sorted(glob.glob(f"{data}/vol_*.nii.gz"))
    paths = []
    for i, f in enumerate(files):
        path = f"{out}/i16_lz4hc5_{i}.b2nd"
        if not os.path.exists(path):
            v16 = np.asanyarray(nib.load(f).dataobj).astype(np.int16)[None]
            blosc2.asarray(np.ascontiguousarray(v16), urlpath=path, chunks=(1, 128, 128, 128),
                           blocks=(1, 32, 32, 32),
                           cparams={"codec": blosc2.Codec.LZ4HC, "clevel": 5,
                                    "filters": [blosc2.Filter.SHUFFLE], "nthreads": 1},
                           mode="w")
        paths.append(path)
    shape = blosc2.open(paths[0], mode="r").shape[1:]
    rng = np.random.default_rng(0)
    starts = [tuple(int(rng.integers(0, s - P + 1)) for s in shape) for _ in range(240)]
    rates = []
    for _ in range(repeats):
        drop()
        t0 = time.perf_counter()
        for k in range(24):
            s = starts[k]
            a = blosc2.open(paths[k % len(paths)], mode="r", mmap_mode="r")
            a[:, s[0]:s[0] + P, s[1]:s[1] + P, s[2]:s[2] + P]
        rates.append(24 / (time.perf_counter() - t0))
    print(f"b2nd i16 lz4hc5 cold, {repeats} sweeps of 24 crops: median {statistics.median(rates):.1f} "
          f"crops/s, fastest {max(rates):.1f}, slowest {min(rates):.1f}")


if __name__ == "__main__":
    main()
