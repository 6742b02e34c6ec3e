//! Exact Euclidean distance transform with anisotropic voxel sizes
//! (Felzenszwalb & Huttenlocher's lower envelope of parabolas, one pass per
//! axis on squared distances): for every voxel, the distance to the nearest
//! feature voxel, as scipy's `distance_transform_edt(~feature, sampling)`.
//! O(N) per axis; values are exact up to f64 rounding.

/// Squared distance standing in for "no feature on this line yet".
const FAR: f64 = f64::INFINITY;

/// One axis pass over `f` (squared distances so far), in place: lines along
/// `axis` of a row-major `(X, Y, Z)` grid, sample spacing `h`.
fn pass(f: &mut [f64], shape: [usize; 3], axis: usize, h: f64) {
    let len = shape[axis];
    let stride_of = |a: usize| match a {
        0 => shape[1] * shape[2],
        1 => shape[2],
        _ => 1,
    };
    let stride = stride_of(axis);
    let others: Vec<usize> = (0..3).filter(|&a| a != axis).collect();
    let (n0, n1) = (shape[others[0]], shape[others[1]]);
    let (s0, s1) = (stride_of(others[0]), stride_of(others[1]));
    let mut line = vec![0f64; len];
    let mut out = vec![0f64; len];
    let mut v = vec![0usize; len];
    let mut z = vec![0f64; len + 1];
    for i0 in 0..n0 {
        for i1 in 0..n1 {
            let base = i0 * s0 + i1 * s1;
            for (q, l) in line.iter_mut().enumerate() {
                *l = f[base + q * stride];
            }
            lower_envelope(&line, h, &mut out, &mut v, &mut z);
            for (q, o) in out.iter().enumerate() {
                f[base + q * stride] = *o;
            }
        }
    }
}

/// `out[q] = min_p f[p] + (h (q − p))²` over one line.
fn lower_envelope(f: &[f64], h: f64, out: &mut [f64], v: &mut [usize], z: &mut [f64]) {
    let n = f.len();
    let pos = |q: usize| q as f64 * h;
    // Parabolas only from finite samples.
    let mut k: isize = -1;
    for q in 0..n {
        if f[q] == FAR {
            continue;
        }
        loop {
            if k < 0 {
                k = 0;
                v[0] = q;
                z[0] = f64::NEG_INFINITY;
                z[1] = f64::INFINITY;
                break;
            }
            let p = v[k as usize];
            let s =
                ((f[q] + pos(q) * pos(q)) - (f[p] + pos(p) * pos(p))) / (2.0 * (pos(q) - pos(p)));
            if s <= z[k as usize] {
                k -= 1;
                continue;
            }
            k += 1;
            v[k as usize] = q;
            z[k as usize] = s;
            z[k as usize + 1] = f64::INFINITY;
            break;
        }
    }
    if k < 0 {
        out.iter_mut().for_each(|o| *o = FAR);
        return;
    }
    let mut j = 0usize;
    for (q, o) in out.iter_mut().enumerate() {
        while z[j + 1] < pos(q) {
            j += 1;
        }
        let d = pos(q) - pos(v[j]);
        *o = d * d + f[v[j]];
    }
}

/// Distance from every voxel of a row-major `(X, Y, Z)` grid to the nearest
/// voxel where `feature` is true, in the units of `spacing`; infinite when
/// there is no feature voxel.
pub fn distance_transform(feature: &[bool], shape: [usize; 3], spacing: [f64; 3]) -> Vec<f64> {
    let mut f: Vec<f64> = feature.iter().map(|&b| if b { 0.0 } else { FAR }).collect();
    for (axis, &h) in spacing.iter().enumerate() {
        pass(&mut f, shape, axis, h);
    }
    f.iter_mut().for_each(|v| *v = v.sqrt());
    f
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels_ref::testing::uniform;

    fn coords(i: usize, shape: [usize; 3]) -> [usize; 3] {
        [
            i / (shape[1] * shape[2]),
            (i / shape[2]) % shape[1],
            i % shape[2],
        ]
    }

    /// O(N²): the distance from every voxel to every feature voxel.
    fn brute_force(feature: &[bool], shape: [usize; 3], spacing: [f64; 3]) -> Vec<f64> {
        (0..feature.len())
            .map(|i| {
                let p = coords(i, shape);
                feature
                    .iter()
                    .enumerate()
                    .filter(|(_, f)| **f)
                    .map(|(j, _)| {
                        let q = coords(j, shape);
                        (0..3)
                            .map(|a| ((p[a] as f64 - q[a] as f64) * spacing[a]).powi(2))
                            .sum::<f64>()
                            .sqrt()
                    })
                    .fold(f64::INFINITY, f64::min)
            })
            .collect()
    }

    #[test]
    fn matches_brute_force_on_random_masks() {
        for (seed, shape, spacing, density) in [
            (0, [7, 5, 6], [0.7, 1.3, 2.1], 0.85),
            (1, [7, 5, 6], [1.0, 1.0, 1.0], 0.95),
            (2, [9, 4, 11], [2.0, 0.5, 1.0], 0.98),
            (3, [1, 12, 13], [1.0, 1.5, 0.8], 0.9),
            (4, [6, 6, 6], [3.0, 1.0, 1.0], 0.5),
            (5, [5, 8, 3], [1.0, 1.0, 5.0], 0.99),
        ] {
            let n = shape.iter().product();
            let r = uniform(n, seed, 1.0);
            let feature: Vec<bool> = r.iter().map(|&v| v > 2.0 * density - 1.0).collect();
            let got = distance_transform(&feature, shape, spacing);
            let want = brute_force(&feature, shape, spacing);
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (g - w).abs() <= 1e-9 || g == w,
                    "seed {seed} voxel {i}: {g} vs {w}"
                );
            }
        }
    }

    #[test]
    fn one_feature_voxel_and_none() {
        let shape = [3, 4, 5];
        let mut feature = vec![false; 60];
        feature[(2 * 4 + 1) * 5 + 3] = true; // (2, 1, 3)
        let d = distance_transform(&feature, shape, [2.0, 1.0, 0.5]);
        // (0, 3, 0): dx = 2·2, dy = 2·1, dz = 3·0.5.
        let want = (16.0f64 + 4.0 + 2.25).sqrt();
        assert!((d[3 * 5] - want).abs() < 1e-12);
        assert_eq!(d[(2 * 4 + 1) * 5 + 3], 0.0);
        let none = distance_transform(&[false; 60], shape, [1.0; 3]);
        assert!(none.iter().all(|v| v.is_infinite()));
    }
}
