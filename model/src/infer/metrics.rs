//! Segmentation metrics on label maps (row-major `(X, Y, Z)`): Dice as
//! MONAI's `DiceMetric` computes it on one-hot masks, and the 95th-percentile
//! Hausdorff distance as MONAI's `compute_hausdorff_distance(percentile=95)`.

use super::edt::distance_transform;

/// Dice per class of `pred` against `truth` (class indices). A class absent
/// from the ground truth gives NaN (MONAI's `ignore_empty`), left out of
/// [`mean_ignoring_nan`].
pub fn dice_per_class(pred: &[u16], truth: &[u16], classes: usize) -> Vec<f64> {
    let mut inter = vec![0u64; classes];
    let mut p = vec![0u64; classes];
    let mut t = vec![0u64; classes];
    for (&a, &b) in pred.iter().zip(truth) {
        let (a, b) = (usize::from(a), usize::from(b));
        if a < classes {
            p[a] += 1;
        }
        if b < classes {
            t[b] += 1;
            if a == b {
                inter[a] += 1;
            }
        }
    }
    (0..classes)
        .map(|k| {
            if t[k] == 0 {
                f64::NAN
            } else {
                2.0 * inter[k] as f64 / (p[k] + t[k]) as f64
            }
        })
        .collect()
}

/// The mean of the non-NaN values (NaN if there are none).
pub fn mean_ignoring_nan(values: &[f64]) -> f64 {
    let kept: Vec<f64> = values.iter().copied().filter(|v| !v.is_nan()).collect();
    if kept.is_empty() {
        f64::NAN
    } else {
        kept.iter().sum::<f64>() / kept.len() as f64
    }
}

/// Surface voxels of a mask: in the mask with a 6-neighbour outside it or on
/// the volume's border (mask minus its erosion, as MONAI's `get_mask_edges`).
pub fn surface(mask: &[bool], shape: [usize; 3]) -> Vec<bool> {
    let [nx, ny, nz] = shape;
    let at = |x: usize, y: usize, z: usize| (x * ny + y) * nz + z;
    let mut out = vec![false; mask.len()];
    for x in 0..nx {
        for y in 0..ny {
            for z in 0..nz {
                if !mask[at(x, y, z)] {
                    continue;
                }
                let border =
                    x == 0 || y == 0 || z == 0 || x + 1 == nx || y + 1 == ny || z + 1 == nz;
                out[at(x, y, z)] = border
                    || !mask[at(x - 1, y, z)]
                    || !mask[at(x + 1, y, z)]
                    || !mask[at(x, y - 1, z)]
                    || !mask[at(x, y + 1, z)]
                    || !mask[at(x, y, z - 1)]
                    || !mask[at(x, y, z + 1)];
            }
        }
    }
    out
}

/// numpy's default (linear) percentile of `values`, `q` in [0, 100].
pub fn percentile(values: &mut [f64], q: f64) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    let pos = q / 100.0 * (values.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    values[lo] + (values[hi] - values[lo]) * (pos - lo as f64)
}

/// 95th-percentile symmetric Hausdorff distance between two masks, in the
/// units of `spacing`: the larger of the two directed 95th percentiles of
/// surface-to-surface distances. NaN when both masks are empty, infinite
/// when one is.
pub fn hd95(pred: &[bool], truth: &[bool], shape: [usize; 3], spacing: [f64; 3]) -> f64 {
    let (sp, st) = (surface(pred, shape), surface(truth, shape));
    let (any_p, any_t) = (sp.contains(&true), st.contains(&true));
    if !any_p && !any_t {
        return f64::NAN;
    }
    if !any_p || !any_t {
        return f64::INFINITY;
    }
    let directed = |from: &[bool], to: &[bool]| {
        let dist = distance_transform(to, shape, spacing);
        let mut d: Vec<f64> = from
            .iter()
            .zip(&dist)
            .filter(|(f, _)| **f)
            .map(|(_, d)| *d)
            .collect();
        percentile(&mut d, 95.0)
    };
    directed(&sp, &st).max(directed(&st, &sp))
}

/// HD95 per class of two label maps (NaN where the class is in neither).
pub fn hd95_per_class(
    pred: &[u16],
    truth: &[u16],
    classes: usize,
    shape: [usize; 3],
    spacing: [f64; 3],
) -> Vec<f64> {
    (0..classes)
        .map(|k| {
            let k = k as u16;
            let p: Vec<bool> = pred.iter().map(|&v| v == k).collect();
            let t: Vec<bool> = truth.iter().map(|&v| v == k).collect();
            hd95(&p, &t, shape, spacing)
        })
        .collect()
}
