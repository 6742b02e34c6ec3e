//! The 95th-percentile Hausdorff distance as MONAI's
//! `compute_hausdorff_distance(percentile=95, directed=False, spacing=…)`
//! computes it (reimplemented from its documented behaviour):
//!
//! 1. The surface of a mask is its voxels with a 6-neighbour outside it
//!    (the mask minus its erosion by the 3-D cross, the outside of the
//!    volume counting as background: MONAI's `get_mask_edges`).
//! 2. Directed distances: from every surface voxel of A to the nearest
//!    surface voxel of B, in physical units (exact EDT with `spacing`).
//! 3. The 95th percentile of each direction's distances (linear
//!    interpolation, as `numpy.percentile`/`torch.quantile`), and HD95 is
//!    the **larger of the two directed percentiles**, not the percentile of
//!    both sets together.
//!
//! Empty masks, as MONAI: both empty → NaN; exactly one empty → +∞. MONAI's
//! `HausdorffDistanceMetric` then keeps the ∞ in its means and skips the
//! NaN. MONAI returns f32; this returns the f64 values.
//!
//! For speed, both masks are first cropped to the bounding box of their
//! union (as MONAI does); this changes no distance.

use rayon::prelude::*;

use super::edt::distance_transform;

/// Surface voxels of a row-major `(X, Y, Z)` mask: in the mask with a
/// 6-neighbour outside it or on the volume's border.
pub fn surface(mask: &[bool], shape: [usize; 3]) -> Vec<bool> {
    let [nx, ny, nz] = shape;
    assert_eq!(mask.len(), nx * ny * nz, "surface: mask size");
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

/// The linear-interpolation percentile of `values` (`q` in [0, 100]), as
/// `numpy.percentile`'s default; sorts `values`. NaN when empty.
pub fn percentile(values: &mut [f64], q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let pos = q.clamp(0.0, 100.0) / 100.0 * (values.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    if lo == hi {
        values[lo]
    } else {
        values[lo] + (values[hi] - values[lo]) * (pos - lo as f64)
    }
}

/// The bounding box `[lo, hi)` of the voxels set in `a` or `b`, or `None`.
fn union_box(a: &[bool], b: &[bool], shape: [usize; 3]) -> Option<([usize; 3], [usize; 3])> {
    let mut lo = shape;
    let mut hi = [0; 3];
    let mut any = false;
    for (i, _) in a.iter().zip(b).enumerate().filter(|(_, (p, q))| **p || **q) {
        let c = [
            i / (shape[1] * shape[2]),
            (i / shape[2]) % shape[1],
            i % shape[2],
        ];
        for ax in 0..3 {
            lo[ax] = lo[ax].min(c[ax]);
            hi[ax] = hi[ax].max(c[ax] + 1);
        }
        any = true;
    }
    any.then_some((lo, hi))
}

fn crop(mask: &[bool], shape: [usize; 3], lo: [usize; 3], hi: [usize; 3]) -> Vec<bool> {
    let mut out = Vec::with_capacity((0..3).map(|a| hi[a] - lo[a]).product());
    for x in lo[0]..hi[0] {
        for y in lo[1]..hi[1] {
            let at = (x * shape[1] + y) * shape[2];
            out.extend_from_slice(&mask[at + lo[2]..at + hi[2]]);
        }
    }
    out
}

/// The `q`-th percentile of the distances from the surface voxels `from`
/// to the nearest surface voxel `to` (both non-empty).
fn directed(from: &[bool], to: &[bool], shape: [usize; 3], spacing: [f64; 3], q: f64) -> f64 {
    let dist = distance_transform(to, shape, spacing);
    let mut d: Vec<f64> = from
        .iter()
        .zip(&dist)
        .filter(|(f, _)| **f)
        .map(|(_, d)| *d)
        .collect();
    percentile(&mut d, q)
}

/// The symmetric `q`-th-percentile Hausdorff distance between two masks of
/// a row-major `(X, Y, Z)` grid, in the units of `spacing` (see the module
/// documentation; [`hd95`] is `q = 95`).
///
/// # Panics
/// If a mask's length is not the product of `shape`.
pub fn percentile_hausdorff(
    pred: &[bool],
    truth: &[bool],
    shape: [usize; 3],
    spacing: [f64; 3],
    q: f64,
) -> f64 {
    let n: usize = shape.iter().product();
    assert!(pred.len() == n && truth.len() == n, "hausdorff: mask sizes");
    let Some((lo, hi)) = union_box(pred, truth, shape) else {
        return f64::NAN;
    };
    let sub: [usize; 3] = std::array::from_fn(|a| hi[a] - lo[a]);
    let (p, t) = (crop(pred, shape, lo, hi), crop(truth, shape, lo, hi));
    let (sp, st) = (surface(&p, sub), surface(&t, sub));
    if !sp.contains(&true) || !st.contains(&true) {
        return f64::INFINITY;
    }
    let (a, b) = rayon::join(
        || directed(&sp, &st, sub, spacing, q),
        || directed(&st, &sp, sub, spacing, q),
    );
    a.max(b)
}

/// HD95 between two masks (see the module documentation).
///
/// # Panics
/// If a mask's length is not the product of `shape`.
pub fn hd95(pred: &[bool], truth: &[bool], shape: [usize; 3], spacing: [f64; 3]) -> f64 {
    percentile_hausdorff(pred, truth, shape, spacing, 95.0)
}

/// HD95 per class of two label maps: entry `i` is class `i` (or `i + 1`
/// without the background). MONAI's `HausdorffDistanceMetric` leaves the
/// background out by default (`include_background=False`); 3DINO computes
/// no HD95.
///
/// # Panics
/// If a map's length is not the product of `shape`.
pub fn hd95_per_class(
    pred: &[u16],
    truth: &[u16],
    classes: usize,
    include_background: bool,
    shape: [usize; 3],
    spacing: [f64; 3],
) -> Vec<f64> {
    let first = usize::from(!include_background);
    (first..classes)
        .into_par_iter()
        .map(|k| {
            let p: Vec<bool> = pred.iter().map(|&v| usize::from(v) == k).collect();
            let t: Vec<bool> = truth.iter().map(|&v| usize::from(v) == k).collect();
            hd95(&p, &t, shape, spacing)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels_ref::testing::uniform;

    fn cube(shape: [usize; 3], lo: [usize; 3], hi: [usize; 3]) -> Vec<bool> {
        let mut m = vec![false; shape.iter().product()];
        for x in lo[0]..hi[0] {
            for y in lo[1]..hi[1] {
                for z in lo[2]..hi[2] {
                    m[(x * shape[1] + y) * shape[2] + z] = true;
                }
            }
        }
        m
    }

    #[test]
    fn surfaces_of_a_cube_and_at_the_border() {
        let shape = [5, 5, 5];
        let s = surface(&cube(shape, [1, 1, 1], [4, 4, 4]), shape);
        // A 3³ cube: all but its centre voxel.
        assert_eq!(s.iter().filter(|v| **v).count(), 26);
        assert!(!s[(2 * 5 + 2) * 5 + 2]);
        // The full volume: only the border voxels (5³ − 3³).
        let s = surface(&[true; 125], shape);
        assert_eq!(s.iter().filter(|v| **v).count(), 98);
    }

    #[test]
    fn shifted_cubes_give_the_shift_times_the_spacing() {
        let shape = [20, 12, 12];
        let a = cube(shape, [3, 3, 3], [9, 9, 9]);
        for k in 1..=4 {
            let b = cube(shape, [3 + k, 3, 3], [9 + k, 9, 9]);
            // Each 6³ cube has 152 surface voxels. From A's surface, the x = 3
            // face (36 voxels, ~24%) is k from B's (its side faces are k
            // away in x); every other voxel is nearer. So the 95th
            // percentile is k voxels along x, in both directions.
            for spacing in [[1.0, 1.0, 1.0], [0.5, 2.0, 3.0], [2.5, 0.7, 0.7]] {
                let d = hd95(&a, &b, shape, spacing);
                assert!((d - k as f64 * spacing[0]).abs() < 1e-12, "k {k}: {d}");
            }
        }
    }

    #[test]
    fn identical_disjoint_and_empty_masks() {
        let shape = [10, 10, 10];
        let a = cube(shape, [1, 1, 1], [4, 4, 4]);
        assert_eq!(hd95(&a, &a, shape, [1.0; 3]), 0.0);
        // Disjoint 1-voxel masks 6 apart along z with spacing 2: 12.
        let p = cube(shape, [5, 5, 1], [6, 6, 2]);
        let t = cube(shape, [5, 5, 7], [6, 6, 8]);
        assert_eq!(hd95(&p, &t, shape, [1.0, 1.0, 2.0]), 12.0);
        let none = vec![false; a.len()];
        assert_eq!(hd95(&a, &none, shape, [1.0; 3]), f64::INFINITY);
        assert_eq!(hd95(&none, &a, shape, [1.0; 3]), f64::INFINITY);
        assert!(hd95(&none, &none, shape, [1.0; 3]).is_nan());
    }

    #[test]
    fn the_larger_directed_percentile_wins() {
        // A: one voxel at x = 0; B: the voxels x = 0..=20 along a line
        // (spacing 1). A → B: 0. B → A: distances 0..=20, whose 95th
        // percentile is 19 (position 0.95·20 = 19). HD95 = max(0, 19).
        let shape = [21, 1, 1];
        let mut a = vec![false; 21];
        a[0] = true;
        let b = vec![true; 21];
        assert_eq!(hd95(&a, &b, shape, [1.0; 3]), 19.0);
        // The 100th percentile is the Hausdorff distance.
        assert_eq!(percentile_hausdorff(&a, &b, shape, [1.0; 3], 100.0), 20.0);
    }

    /// Brute force on the uncropped masks: every surface pair.
    fn brute_hd95(a: &[bool], b: &[bool], shape: [usize; 3], spacing: [f64; 3]) -> f64 {
        let (sa, sb) = (surface(a, shape), surface(b, shape));
        let pts = |s: &[bool]| -> Vec<[f64; 3]> {
            s.iter()
                .enumerate()
                .filter(|(_, v)| **v)
                .map(|(i, _)| {
                    let c = [
                        i / (shape[1] * shape[2]),
                        (i / shape[2]) % shape[1],
                        i % shape[2],
                    ];
                    std::array::from_fn(|a| c[a] as f64 * spacing[a])
                })
                .collect()
        };
        let (pa, pb) = (pts(&sa), pts(&sb));
        let dir = |from: &[[f64; 3]], to: &[[f64; 3]]| {
            let mut d: Vec<f64> = from
                .iter()
                .map(|p| {
                    to.iter()
                        .map(|q| (0..3).map(|i| (p[i] - q[i]).powi(2)).sum::<f64>().sqrt())
                        .fold(f64::INFINITY, f64::min)
                })
                .collect();
            percentile(&mut d, 95.0)
        };
        dir(&pa, &pb).max(dir(&pb, &pa))
    }

    #[test]
    fn random_masks_match_brute_force() {
        let shape = [9, 8, 7];
        let n = shape.iter().product();
        for seed in 0..6 {
            let (ra, rb) = (uniform(n, 2 * seed, 1.0), uniform(n, 2 * seed + 1, 1.0));
            // Blobby masks: a random cube each, with random voxels added.
            let c = |r: &[f32], o: usize| -> Vec<bool> {
                let base = cube(shape, [o, 1, o % 3], [o + 4, 6, o % 3 + 4]);
                base.iter().zip(r).map(|(&m, &v)| m || v > 0.9).collect()
            };
            let (a, b) = (c(&ra, 1 + seed as usize % 3), c(&rb, 2));
            let spacing = [0.8, 1.7, 2.5];
            let got = hd95(&a, &b, shape, spacing);
            let want = brute_hd95(&a, &b, shape, spacing);
            assert!((got - want).abs() < 1e-9, "seed {seed}: {got} vs {want}");
        }
    }

    #[test]
    fn per_class_on_label_maps() {
        let shape = [12, 6, 6];
        let mut truth = vec![0u16; 432];
        let mut pred = vec![0u16; 432];
        let set = |m: &mut Vec<u16>, lo: [usize; 3], hi: [usize; 3], k: u16| {
            for (i, v) in cube(shape, lo, hi).iter().enumerate() {
                if *v {
                    m[i] = k;
                }
            }
        };
        set(&mut truth, [1, 1, 1], [5, 5, 5], 1);
        set(&mut pred, [3, 1, 1], [7, 5, 5], 1); // shifted by 2 along x
        set(&mut pred, [9, 1, 1], [10, 2, 2], 2); // class 2 only predicted
        let d = hd95_per_class(&pred, &truth, 4, false, shape, [1.5, 1.0, 1.0]);
        assert_eq!(d.len(), 3);
        assert!((d[0] - 3.0).abs() < 1e-12, "{d:?}");
        assert_eq!(d[1], f64::INFINITY);
        assert!(d[2].is_nan());
    }

    /// HD95 of two offset balls (radius 60) in a 181×217×181 volume:
    /// `cargo test --release -p dino3d-model hd95_timing -- --ignored --nocapture`.
    #[test]
    #[ignore = "timing; run in release"]
    fn hd95_timing() {
        let shape = [181, 217, 181];
        let ball = |c: [f64; 3]| -> Vec<bool> {
            let mut m = Vec::with_capacity(shape.iter().product());
            for x in 0..shape[0] {
                for y in 0..shape[1] {
                    for z in 0..shape[2] {
                        let d2 = (x as f64 - c[0]).powi(2)
                            + (y as f64 - c[1]).powi(2)
                            + (z as f64 - c[2]).powi(2);
                        m.push(d2 <= 3600.0);
                    }
                }
            }
            m
        };
        let (a, b) = (ball([90.0, 108.0, 90.0]), ball([95.0, 108.0, 90.0]));
        let start = std::time::Instant::now();
        let d = hd95(&a, &b, shape, [1.0, 1.0, 1.5]);
        println!(
            "hd95 of two balls (r 60, 5 apart) in 181x217x181: {d:.3} in {:.3} s",
            start.elapsed().as_secs_f64()
        );
        assert!(d > 3.0 && d <= 5.0, "{d}");
    }
}
