//! Voxel-to-world affines from NIfTI headers, and back.
//!
//! Precedence (the NIfTI-1 standard's methods 3, 2, 1, in nibabel's order, which is
//! what MONAI's `LoadImage` reports as `affine`): the sform when `sform_code != 0`,
//! else the qform when `qform_code != 0`, else a fallback chosen by
//! [`FallbackAffine`]. dino3d's default fallback is nibabel's (x flipped, image
//! centred), so that a volume read here carries exactly the affine a MONAI user's
//! `LoadImage` would give; the NIfTI C library's "method 1" (`diag(pixdim)`) is
//! available on request. Both are tested against their oracles.

use super::header::{NiftiHeader, NiftiVersion};

/// A 4x4 row-major homogeneous matrix mapping voxel (i, j, k, 1) to world mm.
pub type Affine = [[f64; 4]; 4];

/// The identity affine.
pub const IDENTITY: Affine = [
    [1.0, 0.0, 0.0, 0.0],
    [0.0, 1.0, 0.0, 0.0],
    [0.0, 0.0, 1.0, 0.0],
    [0.0, 0.0, 0.0, 1.0],
];

/// The affine used when a file sets neither a qform nor an sform code.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum FallbackAffine {
    /// nibabel / MONAI: `diag(-dx, dy, dz)` with the volume centre at the origin.
    #[default]
    Nibabel,
    /// NIfTI-1 "method 1" (NIfTI C library): `diag(dx, dy, dz)`, no offset.
    Method1,
}

/// The affine nibabel's `get_best_affine` returns (with `fallback` for codes 0).
pub fn best_affine(h: &NiftiHeader, fallback: FallbackAffine) -> Affine {
    if h.version != NiftiVersion::Analyze {
        if h.sform_code != 0 {
            return sform_affine(h);
        }
        if h.qform_code != 0 {
            return qform_affine(h);
        }
    }
    match fallback {
        FallbackAffine::Nibabel => base_affine(h),
        FallbackAffine::Method1 => method1_affine(h),
    }
}

/// The sform rows as an affine.
pub fn sform_affine(h: &NiftiHeader) -> Affine {
    [h.srow[0], h.srow[1], h.srow[2], [0.0, 0.0, 0.0, 1.0]]
}

/// The qform (quaternion) affine, computed as nibabel computes it. It never
/// fails, even on a non-unit quaternion or non-positive pixdim.
///
/// `w² = 1 - (b² + c² + d²)` in f64, set to 0 when `|w²|` is below 3 ulps of the
/// header's float type (f32 for NIfTI-1, f64 for NIfTI-2), and the rotation is
/// normalised by the quaternion's norm. Where nibabel raises (a quaternion longer
/// than 1, pixdim ≤ 0, qfac not ±1) we follow the NIfTI C library instead:
/// renormalise, use 1 for the voxel size, and read qfac's sign.
pub fn qform_affine(h: &NiftiHeader) -> Affine {
    let [x, y, z] = h.quatern;
    let threshold = if h.version == NiftiVersion::Nifti2 {
        3.0 * f64::EPSILON
    } else {
        3.0 * f64::from(f32::EPSILON)
    };
    let w2 = 1.0 - (x * x + y * y + z * z);
    // Below the threshold, and for NaN, w is 0 (a half turn).
    let w = if w2 >= threshold { w2.sqrt() } else { 0.0 };
    let nq = w * w + x * x + y * y + z * z;
    let r = if nq.is_finite() && nq >= f64::EPSILON {
        let s = 2.0 / nq;
        let (xs, ys, zs) = (x * s, y * s, z * s);
        let (wx, wy, wz) = (w * xs, w * ys, w * zs);
        let (xx, xy, xz) = (x * xs, x * ys, x * zs);
        let (yy, yz, zz) = (y * ys, y * zs, z * zs);
        [
            [1.0 - (yy + zz), xy - wz, xz + wy],
            [xy + wz, 1.0 - (xx + zz), yz - wx],
            [xz - wy, yz + wx, 1.0 - (xx + yy)],
        ]
    } else {
        [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    };
    let zoom = |v: f64| if v > 0.0 { v } else { 1.0 };
    let qfac = if h.pixdim[0] < 0.0 { -1.0 } else { 1.0 };
    let z = [
        zoom(h.pixdim[1]),
        zoom(h.pixdim[2]),
        zoom(h.pixdim[3]) * qfac,
    ];
    let mut m = IDENTITY;
    for i in 0..3 {
        for j in 0..3 {
            m[i][j] = r[i][j] * z[j];
        }
        m[i][3] = h.qoffset[i];
    }
    m
}

/// nibabel's `shape_zoom_affine` with x flip: the Analyze/SPM convention. The
/// origin is the volume centre, or SPM's origin field in Analyze headers when it
/// is plausible (nibabel's `Spm99AnalyzeHeader` rule).
fn base_affine(h: &NiftiHeader) -> Affine {
    let rank = h.dim[0].clamp(0, 7) as usize;
    let dims = [0, 1, 2].map(|a| if a < rank { h.dim[a + 1] as f64 } else { 1.0 });
    let o = h.analyze_origin.map(f64::from);
    let spm_origin = h.version == NiftiVersion::Analyze
        && o.iter().any(|&v| v != 0.0)
        && (0..3).all(|a| o[a] > -dims[a] && o[a] < 2.0 * dims[a]);
    let mut m = IDENTITY;
    for axis in 0..3 {
        let z = if axis < rank { h.pixdim[axis + 1] } else { 1.0 };
        let z = if axis == 0 { -z } else { z };
        let origin = if spm_origin {
            o[axis] - 1.0
        } else {
            (dims[axis] - 1.0) / 2.0
        };
        m[axis][axis] = z;
        m[axis][3] = -origin * z;
    }
    m
}

/// NIfTI-1 method 1: `diag(pixdim[1..4])`.
fn method1_affine(h: &NiftiHeader) -> Affine {
    let mut m = IDENTITY;
    for (axis, row) in m.iter_mut().enumerate().take(3) {
        row[axis] = h.pixdim[axis + 1];
    }
    m
}

/// Voxel sizes implied by an affine: the norms of its first three columns.
pub fn column_norms(m: &Affine) -> [f64; 3] {
    let mut out = [0.0; 3];
    for (j, o) in out.iter_mut().enumerate() {
        *o = (0..3).map(|i| m[i][j] * m[i][j]).sum::<f64>().sqrt();
    }
    out
}

/// Axis codes (nibabel's `aff2axcodes`, RAS+ labels): for each voxel axis, the
/// world direction it points to most, e.g. `['R', 'A', 'S']`. Assignment is
/// greedy by decreasing |cosine| of the orthonormal part, as in nibabel ≥ 5.4
/// (older nibabel took axes in order and can differ on oblique affines).
pub fn axcodes(m: &Affine) -> [char; 3] {
    let polar = orthonormal_part(&rotation_zoom(m));
    let mut codes = ['?'; 3];
    let mut used_world = [false; 3];
    let mut used_voxel = [false; 3];
    // Greedy assignment by decreasing |cosine|, as nibabel's io_orientation does.
    for _ in 0..3 {
        let mut best = (0usize, 0usize, -1.0f64);
        for (w, uw) in used_world.iter().enumerate() {
            for (v, uv) in used_voxel.iter().enumerate() {
                if !uw && !uv && polar[w][v].abs() > best.2 {
                    best = (w, v, polar[w][v].abs());
                }
            }
        }
        let (w, v, _) = best;
        used_world[w] = true;
        used_voxel[v] = true;
        let positive = polar[w][v] >= 0.0;
        codes[v] = match (w, positive) {
            (0, true) => 'R',
            (0, false) => 'L',
            (1, true) => 'A',
            (1, false) => 'P',
            (2, true) => 'S',
            _ => 'I',
        };
    }
    codes
}

fn rotation_zoom(m: &Affine) -> [[f64; 3]; 3] {
    let mut r = [[0.0; 3]; 3];
    for i in 0..3 {
        r[i][..3].copy_from_slice(&m[i][..3]);
    }
    r
}

fn det3(m: &[[f64; 3]; 3]) -> f64 {
    m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1])
        - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
        + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0])
}

fn inverse_transpose3(m: &[[f64; 3]; 3]) -> Option<[[f64; 3]; 3]> {
    let det = det3(m);
    if det.abs() < 1e-300 || !det.is_finite() {
        return None;
    }
    // The cofactor matrix divided by the determinant is the inverse transpose.
    let mut c = [[0.0; 3]; 3];
    for (i, row) in c.iter_mut().enumerate() {
        for (j, v) in row.iter_mut().enumerate() {
            let (i1, i2) = ((i + 1) % 3, (i + 2) % 3);
            let (j1, j2) = ((j + 1) % 3, (j + 2) % 3);
            *v = (m[i1][j1] * m[i2][j2] - m[i1][j2] * m[i2][j1]) / det;
        }
    }
    Some(c)
}

/// The closest orthogonal matrix (polar decomposition by Newton iteration), with
/// zero columns replaced by unit axes first.
fn orthonormal_part(m: &[[f64; 3]; 3]) -> [[f64; 3]; 3] {
    let mut q = *m;
    for j in 0..3 {
        let n = (0..3).map(|i| q[i][j] * q[i][j]).sum::<f64>().sqrt();
        for (i, row) in q.iter_mut().enumerate() {
            row[j] = if n > 0.0 && n.is_finite() {
                row[j] / n
            } else if i == j {
                1.0
            } else {
                0.0
            };
        }
    }
    for _ in 0..30 {
        let Some(it) = inverse_transpose3(&q) else {
            break;
        };
        let mut next = [[0.0; 3]; 3];
        let mut delta = 0.0f64;
        for i in 0..3 {
            for j in 0..3 {
                next[i][j] = 0.5 * (q[i][j] + it[i][j]);
                delta = delta.max((next[i][j] - q[i][j]).abs());
            }
        }
        q = next;
        if delta < 1e-12 {
            break;
        }
    }
    q
}

/// qform parameters for an affine (the NIfTI C library's `mat44_to_quatern`):
/// `(quatern_bcd, qoffset, pixdim[1..4], qfac)`. Shear, which a quaternion cannot
/// express, is dropped; the sform keeps it.
pub fn affine_to_quatern(m: &Affine) -> ([f64; 3], [f64; 3], [f64; 3], f64) {
    let zooms = column_norms(m).map(|z| if z > 0.0 && z.is_finite() { z } else { 1.0 });
    let mut r = orthonormal_part(&rotation_zoom(m));
    let qfac = if det3(&r) > 0.0 { 1.0 } else { -1.0 };
    if qfac < 0.0 {
        for row in r.iter_mut() {
            row[2] = -row[2];
        }
    }
    let (r11, r12, r13) = (r[0][0], r[0][1], r[0][2]);
    let (r21, r22, r23) = (r[1][0], r[1][1], r[1][2]);
    let (r31, r32, r33) = (r[2][0], r[2][1], r[2][2]);
    let trace = r11 + r22 + r33 + 1.0;
    let (mut a, mut b, mut c, mut d);
    if trace > 0.5 {
        a = 0.5 * trace.sqrt();
        b = 0.25 * (r32 - r23) / a;
        c = 0.25 * (r13 - r31) / a;
        d = 0.25 * (r21 - r12) / a;
    } else {
        let xd = 1.0 + r11 - (r22 + r33);
        let yd = 1.0 + r22 - (r11 + r33);
        let zd = 1.0 + r33 - (r11 + r22);
        if xd > 1.0 {
            b = 0.5 * xd.sqrt();
            c = 0.25 * (r12 + r21) / b;
            d = 0.25 * (r13 + r31) / b;
            a = 0.25 * (r32 - r23) / b;
        } else if yd > 1.0 {
            c = 0.5 * yd.sqrt();
            b = 0.25 * (r12 + r21) / c;
            d = 0.25 * (r23 + r32) / c;
            a = 0.25 * (r13 - r31) / c;
        } else {
            d = 0.5 * zd.sqrt();
            b = 0.25 * (r13 + r31) / d;
            c = 0.25 * (r23 + r32) / d;
            a = 0.25 * (r21 - r12) / d;
        }
        if a < 0.0 {
            b = -b;
            c = -c;
            d = -d;
            a = -a;
        }
    }
    let _ = a;
    ([b, c, d], [m[0][3], m[1][3], m[2][3]], zooms, qfac)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: &Affine, b: &Affine, tol: f64) -> bool {
        (0..4).all(|i| (0..4).all(|j| (a[i][j] - b[i][j]).abs() <= tol))
    }

    #[test]
    fn quaternion_round_trips_through_qform() {
        // An oblique, left-handed affine with anisotropic zooms.
        let (s, c) = (0.3f64.sin(), 0.3f64.cos());
        let m: Affine = [
            [-2.0 * c, 0.0, -4.0 * s, 10.0],
            [0.0, 3.0, 0.0, -20.0],
            [-2.0 * s, 0.0, 4.0 * c, 30.0],
            [0.0, 0.0, 0.0, 1.0],
        ];
        let (q, off, z, qfac) = affine_to_quatern(&m);
        let h = NiftiHeader {
            quatern: q,
            qoffset: off,
            pixdim: [qfac, z[0], z[1], z[2], 1.0, 1.0, 1.0, 1.0],
            qform_code: 1,
            ..NiftiHeader::default()
        };
        assert!(close(&qform_affine(&h), &m, 1e-9), "{:?}", qform_affine(&h));
    }

    #[test]
    fn axcodes_of_simple_affines() {
        assert_eq!(axcodes(&IDENTITY), ['R', 'A', 'S']);
        let lps: Affine = [
            [-1.0, 0.0, 0.0, 0.0],
            [0.0, -1.0, 0.0, 0.0],
            [0.0, 0.0, 1.0, 0.0],
            [0.0, 0.0, 0.0, 1.0],
        ];
        assert_eq!(axcodes(&lps), ['L', 'P', 'S']);
        let permuted: Affine = [
            [0.0, 0.0, 2.0, 0.0],
            [-1.0, 0.0, 0.0, 0.0],
            [0.0, 1.0, 0.0, 0.0],
            [0.0, 0.0, 0.0, 1.0],
        ];
        assert_eq!(axcodes(&permuted), ['P', 'S', 'R']);
    }

    #[test]
    fn qform_never_panics_on_bad_quaternions_or_pixdim() {
        let h = NiftiHeader {
            quatern: [2.0, 2.0, 2.0],
            pixdim: [0.0, -1.0, 0.0, f64::NAN, 1.0, 1.0, 1.0, 1.0],
            qform_code: 1,
            ..NiftiHeader::default()
        };
        let m = qform_affine(&h);
        assert!(m.iter().flatten().all(|v| v.is_finite()));
    }
}
