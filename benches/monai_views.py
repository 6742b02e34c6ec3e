"""MONAI side of benches/views_vs_monai.sh: 3DINO's per-sample augmentation
(2 global 96^3 + 8 local 48^3 views: crop -> trilinear resize -> flips/rot90
-> contrast/noise/histogram OneOf -> smooth/sharpen/Gibbs) on one core, from
an in-RAM prepared 256x256x128 volume, plus the three costly augmentations
alone on a 96^3 crop. Mirrors ../shared/bench/monai/bench_pipeline.py so the
two sides run in the same session on the same machine.

Also times the deterministic prefix (LoadImage, EnsureChannelFirst,
ScaleIntensityRangePercentiles 0.05/99.95 to [-1, 1] clipped, CropForeground
x > -1) over every vol_*.nii.gz beside VOLUME.

usage: python monai_views.py VOLUME.nii.gz
"""

import glob
import json
import math
import os
import sys
import time

import monai
import monai.transforms as mt
import numpy as np
import torch

torch.set_num_threads(1)
monai.data.set_track_meta(False)


def prepared(path):
    img = mt.LoadImage(image_only=True, ensure_channel_first=True)(path)
    img = mt.ScaleIntensityRangePercentiles(0.05, 99.95, -1, 1, clip=True)(img)
    img = mt.CropForeground(select_fn=lambda x: x > -1)(img)
    return img.as_tensor() if hasattr(img, "as_tensor") else img


R = np.random.RandomState(0)


def rrc(img, size, in_s, cross_s, ar=(0.9, 1 / 0.9)):
    """3DINO's RandomResizedCrop3d (3dino-reference.md section 3.4)."""
    h, w, d = img.shape[1:]
    for _ in range(10):
        ta = h * w * R.uniform(*in_s)
        a = math.exp(R.uniform(math.log(ar[0]), math.log(ar[1])))
        cw, ch = int(round(math.sqrt(ta * a))), int(round(math.sqrt(ta / a)))
        if 0 < cw <= w and 0 < ch <= h:
            break
    else:
        ch, cw = h, w
    cd = min(d, max(1, int(round(d * R.uniform(*cross_s)))))
    x0, y0, z0 = R.randint(0, h - ch + 1), R.randint(0, w - cw + 1), R.randint(0, d - cd + 1)
    c = img[:, x0:x0 + ch, y0:y0 + cw, z0:z0 + cd]
    return torch.nn.functional.interpolate(c[None], size=(size,) * 3, mode="trilinear")[0]


def main():
    files = sorted(glob.glob(os.path.join(os.path.dirname(sys.argv[1]), "vol_*.nii.gz")))
    prepared(files[0])
    t0 = time.perf_counter()
    for f in files:
        prepared(f)
    prefix_rate = round(len(files) / (time.perf_counter() - t0), 2)
    vol = prepared(sys.argv[1])
    geo = mt.Compose([
        mt.RandFlip(prob=0.3, spatial_axis=[0]), mt.RandFlip(prob=0.3, spatial_axis=[1]),
        mt.RandFlip(prob=0.3, spatial_axis=[2]), mt.RandRotate90(prob=0.3, spatial_axes=(0, 1)),
        mt.RandRotate90(prob=0.3, spatial_axes=(1, 2)), mt.RandRotate90(prob=0.3, spatial_axes=(0, 2))])
    inten = mt.OneOf([mt.RandAdjustContrast(prob=0.8, gamma=(0.5, 2)), mt.RandGaussianNoise(prob=0.8, std=0.002),
                      mt.RandHistogramShift(num_control_points=10, prob=0.8)])
    g1 = mt.OneOf([mt.RandGaussianSmooth(prob=1.0), mt.RandGaussianSharpen(prob=1.0)])
    g2 = mt.Compose([mt.OneOf([mt.RandGaussianSmooth(prob=0.1), mt.RandGaussianSharpen(prob=0.1)]),
                     mt.RandGibbsNoise(prob=0.2)])
    loc = mt.RandGaussianSmooth(prob=0.5)
    for t in (geo, inten, g1, g2, loc):
        t.set_random_state(0)

    def sample(v):
        out = [g1(inten(geo(rrc(v, 96, (0.48, 1.0), (0.5, 1.0))))),
               g2(inten(geo(rrc(v, 96, (0.48, 1.0), (0.5, 1.0)))))]
        return out + [loc(inten(geo(rrc(v, 48, (0.16, 0.48), (0.2, 0.5))))) for _ in range(8)]

    res = {"monai": monai.__version__, "torch": torch.__version__, "prepared_shape": list(vol.shape),
           "prefix_vol_per_s_one_core": prefix_rate, "prefix_volumes": len(files)}
    sample(vol)
    n = 20
    t0 = time.perf_counter()
    for _ in range(n):
        sample(vol)
    res["samples_per_s_one_core"] = round(n / (time.perf_counter() - t0), 2)
    x96 = torch.rand(1, 96, 96, 96) * 2 - 1
    for name, t in [("GaussianSmooth(sigma=1)", mt.GaussianSmooth(sigma=1.0)),
                    ("RandHistogramShift", mt.RandHistogramShift(num_control_points=10, prob=1.0)),
                    ("RandGibbsNoise", mt.RandGibbsNoise(prob=1.0))]:
        t(x96)
        t0 = time.perf_counter()
        for _ in range(20):
            t(x96)
        res[f"{name} on 96^3 ms"] = round((time.perf_counter() - t0) / 20 * 1e3, 2)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
