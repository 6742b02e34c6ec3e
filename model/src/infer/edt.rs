//! Exact Euclidean distance transform with anisotropic voxel sizes
//! (Felzenszwalb & Huttenlocher's lower envelope of parabolas, one pass per
//! axis): for every voxel, the distance to the nearest feature voxel.

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
