//! `Spacing(pixdim, diagonal, mode, padding_mode)` with MONAI's semantics
//! (`align_corners=False`, `scale_extent=False`, `recompute_affine=False`,
//! resampling in float64, output float32).
//!
//! * **Target affine** (`zoom_affine`): the input's 3×3 part `A = R·Z` is split
//!   into an orthonormal `R` and an upper-triangular `Z` with positive diagonal
//!   (the Cholesky factor of `AᵀA`, i.e. Gram–Schmidt on the columns in order);
//!   the target is `R·diag(pixdim)`, or `diag(pixdim)` if `diagonal`. A pixdim
//!   ≤ 0 keeps that axis's input spacing (its column norm); a resulting 0 becomes 1.
//!   Without shear `R` is just the input columns normalised.
//! * **Output shape**: the eight voxel-centre corners `(0 | n−1)` of the input,
//!   mapped to output voxel coordinates; per axis `round(ptp + 1)` with numpy's
//!   round (half to even). Axis-aligned: `round((n−1)·s_in/s_out + 1)`.
//! * **Origin**: the world position of the input corner that is smallest on every
//!   output axis (always exists without rotation between the grids; then output
//!   voxel 0 sits on it); otherwise the per-axis minimum of the world corners.
//! * **Resampling**: output voxel `v` reads the input at the continuous index
//!   `inv(in_affine)·out_affine·v` (voxel centres at integers), trilinear or
//!   nearest. Nearest rounds half to even, like torch's `grid_sample`
//!   (`nearbyint`). `Border` clamps the index into `[0, n−1]` first; `Zeros`
//!   gives each out-of-volume corner the value 0. Corners of weight 0 are
//!   skipped (so a NaN there does not spread).
//! * **No-op**: when the output shape equals the input's and `inv(in)·out` is
//!   within `atol = 1e-3` of the identity, the image is returned unchanged, affine
//!   included (MONAI's `affine_unchanged`).
//!
//! The new `spacing` is the column norms of the output affine. A singular input
//! affine (MONAI raises) is replaced by `diag(spacing)` with its translation.
//! When `inv(in)·out` has a diagonal 3×3 part (no rotation between the grids:
//! always the case without `diagonal` and without shear) the resampling runs as
//! three separable 1-D passes with per-axis tap tables; otherwise it is a plain
//! per-voxel trilinear loop.

use rayon::prelude::*;

use super::image::Image;
use crate::exec::op::{Op, StepRng};
use crate::nifti::affine::{Affine, column_norms};
use crate::transforms::TransformError;
use crate::transforms::spec::size_from_data;
use crate::transforms::spec::{Args, KEYS, ParamDefault, ParamKind, TransformSpec, param};

/// Interpolation of [`spacing`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Interp {
    /// Trilinear (MONAI `bilinear`).
    #[default]
    Linear,
    /// Nearest voxel, ties to even.
    Nearest,
}

/// What [`spacing`] reads outside the volume.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SpacingPadding {
    /// The nearest border voxel (MONAI default `border`).
    #[default]
    Border,
    /// Zero.
    Zeros,
}

/// Parameters of [`spacing`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spacing {
    /// Target voxel size per axis; ≤ 0 keeps the input's.
    pub pixdim: [f64; 3],
    /// Interpolation.
    pub mode: Interp,
    /// Resample onto `diag(pixdim)` (world-aligned) instead of keeping the rotation.
    pub diagonal: bool,
    /// Outside values.
    pub padding: SpacingPadding,
}

type Mat3 = [[f64; 3]; 3];

/// MONAI's `AFFINE_TOL`.
const AFFINE_TOL: f64 = 1e-3;

fn linear_part(a: &Affine) -> Mat3 {
    [0, 1, 2].map(|r| [a[r][0], a[r][1], a[r][2]])
}

fn translation(a: &Affine) -> [f64; 3] {
    [a[0][3], a[1][3], a[2][3]]
}

fn mat_mul(a: &Mat3, b: &Mat3) -> Mat3 {
    [0, 1, 2].map(|r| [0, 1, 2].map(|c| (0..3).map(|k| a[r][k] * b[k][c]).sum()))
}

fn mat_vec(a: &Mat3, v: [f64; 3]) -> [f64; 3] {
    [0, 1, 2].map(|r| (0..3).map(|k| a[r][k] * v[k]).sum())
}

fn inverse3(m: &Mat3) -> Option<Mat3> {
    let cof = |r: usize, c: usize| {
        let (r1, r2) = ((r + 1) % 3, (r + 2) % 3);
        let (c1, c2) = ((c + 1) % 3, (c + 2) % 3);
        m[r1][c1] * m[r2][c2] - m[r1][c2] * m[r2][c1]
    };
    let det: f64 = (0..3).map(|c| m[0][c] * cof(0, c)).sum();
    if !det.is_finite() || det.abs() < 1e-300 {
        return None;
    }
    // inverse = adjugate / det, adjugate[r][c] = cofactor(c, r).
    Some([0, 1, 2].map(|r| [0, 1, 2].map(|c| cof(c, r) / det)))
}

fn norms3(m: &Mat3) -> [f64; 3] {
    [0, 1, 2].map(|c| (0..3).map(|r| m[r][c] * m[r][c]).sum::<f64>().sqrt())
}

/// The input's 3×3 part, or `diag(spacing)` if it is singular.
fn usable_linear(img_affine: &Affine, spacing: [f64; 3]) -> Mat3 {
    let lin = linear_part(img_affine);
    if inverse3(&lin).is_some() {
        return lin;
    }
    let mut d = [[0.0; 3]; 3];
    for (a, row) in d.iter_mut().enumerate() {
        let s = spacing[a];
        row[a] = if s.is_finite() && s > 0.0 { s } else { 1.0 };
    }
    d
}

/// MONAI's `zoom_affine` on a non-singular 3×3 part: `R·diag(scale)` with `R`
/// the Gram–Schmidt (Cholesky) rotation of `lin`, or `diag(scale)`.
pub fn zoom_linear(lin: &[[f64; 3]; 3], pixdim: [f64; 3], diagonal: bool) -> [[f64; 3]; 3] {
    let norm = norms3(lin);
    let scale = [0, 1, 2].map(|a| {
        let s = if pixdim[a] > 0.0 { pixdim[a] } else { norm[a] };
        if s == 0.0 { 1.0 } else { s }
    });
    let mut out = [[0.0; 3]; 3];
    if diagonal {
        for (a, row) in out.iter_mut().enumerate() {
            row[a] = scale[a];
        }
        return out;
    }
    // Gram–Schmidt on the columns in order = lin · inv(upper Cholesky factor).
    let mut q: [[f64; 3]; 3] = [[0.0; 3]; 3]; // q[c] is column c
    for c in 0..3 {
        let mut v = [lin[0][c], lin[1][c], lin[2][c]];
        for prev in q.iter().take(c) {
            let dot: f64 = (0..3).map(|r| prev[r] * v[r]).sum();
            for (x, p) in v.iter_mut().zip(prev) {
                *x -= dot * p;
            }
        }
        let n = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        q[c] = v.map(|x| x / n);
    }
    for (r, row) in out.iter_mut().enumerate() {
        for (c, x) in row.iter_mut().enumerate() {
            *x = q[c][r] * scale[c];
        }
    }
    out
}

/// The output spatial shape and affine of [`spacing`] for an input of spatial
/// shape `dims`, voxel-to-world `affine` and header `spacing` (used only if the
/// affine is singular).
pub fn spacing_geometry(
    dims: [usize; 3],
    affine: &Affine,
    spacing: [f64; 3],
    p: &Spacing,
) -> ([usize; 3], Affine) {
    let in_lin = usable_linear(affine, spacing);
    let in_t = translation(affine);
    let out_lin = zoom_linear(&in_lin, p.pixdim, p.diagonal);
    let inv_out = inverse3(&out_lin).expect("zoom_linear is invertible");
    let to_out = mat_mul(&inv_out, &in_lin);
    // numpy's meshgrid order (last axis fastest); the order does not matter.
    let corners: Vec<[f64; 3]> = (0..8usize)
        .map(|c| {
            let bits = [(c >> 2) & 1, (c >> 1) & 1, c & 1];
            [0, 1, 2].map(|a| (bits[a] * dims[a].saturating_sub(1)) as f64)
        })
        .collect();
    let mapped: Vec<[f64; 3]> = corners.iter().map(|&v| mat_vec(&to_out, v)).collect();
    let shape = [0, 1, 2].map(|a| {
        let (lo, hi) = mapped
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), m| {
                (l.min(m[a]), h.max(m[a]))
            });
        ((hi - lo + 1.0).round_ties_even().max(1.0)) as usize
    });
    let world: Vec<[f64; 3]> = corners
        .iter()
        .map(|&v| {
            let w = mat_vec(&in_lin, v);
            [0, 1, 2].map(|a| w[a] + in_t[a])
        })
        .collect();
    // The corner smallest on every output axis (numpy allclose(·, 0): atol 1e-8).
    let offset = (0..8)
        .find(|&i| {
            mapped
                .iter()
                .all(|m| (0..3).all(|a| m[a] - mapped[i][a] >= -1e-8))
        })
        .map(|i| world[i])
        .unwrap_or_else(|| {
            [0, 1, 2].map(|a| world.iter().map(|w| w[a]).fold(f64::INFINITY, f64::min))
        });
    let mut out = crate::nifti::affine::IDENTITY;
    for ((row, lin), t) in out.iter_mut().zip(&out_lin).zip(offset) {
        row[..3].copy_from_slice(lin);
        row[3] = t;
    }
    (shape, out)
}

/// Resamples `img` to voxel size `p.pixdim` (see the module doc).
pub fn spacing(img: &Image, p: &Spacing) -> Image {
    let [c, x, y, z] = img.shape;
    let dims = [x, y, z];
    if c == 0 || dims.contains(&0) {
        return img.clone();
    }
    let (out_dims, out_affine) = spacing_geometry(dims, &img.affine, img.spacing, p);
    let in_lin = usable_linear(&img.affine, img.spacing);
    let inv_in = inverse3(&in_lin).expect("usable_linear is invertible");
    let lin = mat_mul(&inv_in, &linear_part(&out_affine));
    let shift = {
        let d = [0, 1, 2].map(|a| out_affine[a][3] - img.affine[a][3]);
        mat_vec(&inv_in, d)
    };
    let xform = Xform { lin, shift };
    let identity = (0..3).all(|r| {
        (0..3).all(|k| (lin[r][k] - f64::from(u8::from(r == k))).abs() <= AFFINE_TOL + 1e-5)
            && shift[r].abs() <= AFFINE_TOL
    });
    if out_dims == dims && identity {
        return img.clone();
    }
    let data = if xform.is_diagonal() {
        resample_separable(img, &xform, out_dims, p.mode, p.padding)
    } else {
        resample_general(img, &xform, out_dims, p.mode, p.padding)
    };
    Image {
        data,
        shape: [c, out_dims[0], out_dims[1], out_dims[2]],
        spacing: column_norms(&out_affine),
        affine: out_affine,
    }
}

/// Output voxel index → input continuous index.
#[derive(Debug, Clone, Copy)]
struct Xform {
    lin: Mat3,
    shift: [f64; 3],
}

impl Xform {
    fn is_diagonal(&self) -> bool {
        (0..3).all(|r| {
            let scale: f64 = self.lin[r].iter().map(|v| v.abs()).sum();
            (0..3).all(|k| r == k || self.lin[r][k].abs() <= 1e-12 * scale)
        })
    }

    fn apply(&self, v: [f64; 3]) -> [f64; 3] {
        let m = mat_vec(&self.lin, v);
        [0, 1, 2].map(|a| m[a] + self.shift[a])
    }
}

/// Two input voxels along one axis and their weights (weight 0: unused).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Tap {
    i0: usize,
    w0: f64,
    i1: usize,
    w1: f64,
}

const NO_TAP: Tap = Tap {
    i0: 0,
    w0: 0.0,
    i1: 0,
    w1: 0.0,
};

/// The taps reading continuous index `x` of an axis of `n` voxels.
fn tap(x: f64, n: usize, mode: Interp, padding: SpacingPadding) -> Tap {
    let last = (n - 1) as f64;
    let x = match padding {
        SpacingPadding::Border => x.clamp(0.0, last),
        SpacingPadding::Zeros => x,
    };
    if !x.is_finite() {
        return NO_TAP;
    }
    let inside = |i: f64| (0.0..=last).contains(&i);
    match mode {
        Interp::Nearest => {
            let r = x.round_ties_even();
            if inside(r) {
                Tap {
                    i0: r as usize,
                    w0: 1.0,
                    i1: r as usize,
                    w1: 0.0,
                }
            } else {
                NO_TAP
            }
        }
        Interp::Linear => {
            let f = x.floor();
            let w1 = x - f;
            let (i0, w0) = if inside(f) {
                (f as usize, 1.0 - w1)
            } else {
                (0, 0.0)
            };
            let (i1, w1) = if inside(f + 1.0) && w1 != 0.0 {
                ((f + 1.0) as usize, w1)
            } else {
                (i0, 0.0)
            };
            Tap { i0, w0, i1, w1 }
        }
    }
}

/// A voxel type the separable passes read or write (intermediates are f64).
trait Voxel: Copy + Send + Sync {
    fn get(self) -> f64;
    fn put(v: f64) -> Self;
}

impl Voxel for f32 {
    fn get(self) -> f64 {
        f64::from(self)
    }
    fn put(v: f64) -> f32 {
        v as f32
    }
}

impl Voxel for f64 {
    fn get(self) -> f64 {
        self
    }
    fn put(v: f64) -> f64 {
        v
    }
}

/// Resamples axis `n` of an `(inner, n, outer)` array (inner fastest) to
/// `(inner, taps.len(), outer)`, summing in f64.
fn pass<S: Voxel, D: Voxel>(src: &[S], inner: usize, n: usize, taps: &[Tap]) -> Vec<D> {
    let m = taps.len();
    let outer = src.len() / (inner * n);
    let mut out = vec![D::put(0.0); inner * m * outer];
    if inner == 1 {
        out.par_chunks_mut(m)
            .zip(src.par_chunks(n))
            .for_each(|(dst, row)| {
                for (d, t) in dst.iter_mut().zip(taps) {
                    let mut v = 0.0;
                    if t.w0 != 0.0 {
                        v = t.w0 * row[t.i0].get();
                    }
                    if t.w1 != 0.0 {
                        v += t.w1 * row[t.i1].get();
                    }
                    *d = D::put(v);
                }
            });
        return out;
    }
    out.par_chunks_mut(inner)
        .enumerate()
        .with_min_len((1 << 14) / inner + 1)
        .for_each(|(r, dst)| {
            let (o, t) = (r / m, taps[r % m]);
            let line = |i: usize| &src[(o * n + i) * inner..][..inner];
            match (t.w0 != 0.0, t.w1 != 0.0) {
                (false, false) => {}
                (true, false) => {
                    for (d, &a) in dst.iter_mut().zip(line(t.i0)) {
                        *d = D::put(t.w0 * a.get());
                    }
                }
                (false, true) => {
                    for (d, &b) in dst.iter_mut().zip(line(t.i1)) {
                        *d = D::put(t.w1 * b.get());
                    }
                }
                (true, true) => {
                    for ((d, &a), &b) in dst.iter_mut().zip(line(t.i0)).zip(line(t.i1)) {
                        *d = D::put(t.w0 * a.get() + t.w1 * b.get());
                    }
                }
            }
        });
    out
}

fn is_identity(taps: &[Tap], n: usize) -> bool {
    taps.len() == n
        && taps
            .iter()
            .enumerate()
            .all(|(i, t)| t.i0 == i && t.w0 == 1.0 && t.w1 == 0.0)
}

/// Diagonal `xform`: one 1-D pass per axis (x, then y, then z).
fn resample_separable(
    img: &Image,
    xform: &Xform,
    out_dims: [usize; 3],
    mode: Interp,
    padding: SpacingPadding,
) -> Vec<f32> {
    let [_, x, y, z] = img.shape;
    let mut dims = [x, y, z];
    let taps: [Vec<Tap>; 3] = [0, 1, 2].map(|a| {
        let (scale, shift) = (xform.lin[a][a], xform.shift[a]);
        (0..out_dims[a])
            .map(|o| tap(scale * o as f64 + shift, dims[a], mode, padding))
            .collect()
    });
    let active: Vec<usize> = (0..3)
        .filter(|&a| !is_identity(&taps[a], dims[a]))
        .collect();
    let Some((&last, first)) = active.split_last() else {
        return img.data.clone();
    };
    // f32 in, f64 between passes, f32 out of the last one.
    let mut cur: Option<Vec<f64>> = None;
    for &a in first {
        let inner: usize = dims[..a].iter().product();
        cur = Some(match &cur {
            None => pass(&img.data, inner, dims[a], &taps[a]),
            Some(v) => pass(v, inner, dims[a], &taps[a]),
        });
        dims[a] = out_dims[a];
    }
    let inner: usize = dims[..last].iter().product();
    match &cur {
        None => pass(&img.data, inner, dims[last], &taps[last]),
        Some(v) => pass(v, inner, dims[last], &taps[last]),
    }
}

/// Any `xform`: per output voxel, trilinear (or nearest) over 8 (or 1) corners.
fn resample_general(
    img: &Image,
    xform: &Xform,
    out_dims: [usize; 3],
    mode: Interp,
    padding: SpacingPadding,
) -> Vec<f32> {
    let [_, x, y, z] = img.shape;
    let [mx, my, mz] = out_dims;
    let plane = mx * my;
    let mut out = vec![0.0f32; img.shape[0] * plane * mz];
    out.par_chunks_mut(plane).enumerate().for_each(|(r, dst)| {
        let (ch, k) = (r / mz, r % mz);
        let src = &img.data[ch * x * y * z..][..x * y * z];
        for (idx, d) in dst.iter_mut().enumerate() {
            let (i, j) = (idx % mx, idx / mx);
            let p = xform.apply([i as f64, j as f64, k as f64]);
            let tx = tap(p[0], x, mode, padding);
            let ty = tap(p[1], y, mode, padding);
            let tz = tap(p[2], z, mode, padding);
            let mut v = 0.0f64;
            for (kz, wz) in [(tz.i0, tz.w0), (tz.i1, tz.w1)] {
                if wz == 0.0 {
                    continue;
                }
                for (ky, wy) in [(ty.i0, ty.w0), (ty.i1, ty.w1)] {
                    if wy == 0.0 {
                        continue;
                    }
                    let row = &src[(kz * y + ky) * x..][..x];
                    for (kx, wx) in [(tx.i0, tx.w0), (tx.i1, tx.w1)] {
                        if wx != 0.0 {
                            v += wz * wy * wx * f64::from(row[kx]);
                        }
                    }
                }
            }
            *d = v as f32;
        }
    });
    out
}

impl Op for Spacing {
    fn apply(
        &self,
        img: &mut Image,
        _: &mut StepRng,
        is_label: bool,
    ) -> Result<(), TransformError> {
        let p = if is_label {
            Spacing {
                mode: Interp::Nearest,
                ..*self
            }
        } else {
            *self
        };
        *img = spacing(img, &p);
        Ok(())
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// The recipe's `Spacing`.
pub const SPEC: TransformSpec = TransformSpec {
    name: "Spacing",
    is_random: false,
    params: &[
        KEYS,
        param("pixdim", ParamKind::Float3, ParamDefault::Required),
        param(
            "mode",
            ParamKind::Choice(&["bilinear", "nearest"]),
            ParamDefault::Str("bilinear"),
        ),
        param(
            "padding_mode",
            ParamKind::Choice(&["border", "zeros"]),
            ParamDefault::Str("border"),
        ),
        param("diagonal", ParamKind::Bool, ParamDefault::Bool(false)),
    ],
    summary: "resample to voxel size pixdim (<= 0 keeps an axis); label keys use nearest",
    check: None,
    nests: false,
    output_size: size_from_data,
    build: |a: &Args<'_>| {
        Ok(Box::new(Spacing {
            pixdim: a.float3("pixdim")?,
            mode: if a.text("mode")? == "nearest" {
                Interp::Nearest
            } else {
                Interp::Linear
            },
            diagonal: a.flag("diagonal")?,
            padding: if a.text("padding_mode")? == "zeros" {
                SpacingPadding::Zeros
            } else {
                SpacingPadding::Border
            },
        }))
    },
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nifti::affine::IDENTITY;

    fn p(pixdim: [f64; 3]) -> Spacing {
        Spacing {
            pixdim,
            mode: Interp::Linear,
            diagonal: false,
            padding: SpacingPadding::Border,
        }
    }

    fn diag_affine(s: [f64; 3], t: [f64; 3]) -> Affine {
        let mut a = IDENTITY;
        for (r, row) in a.iter_mut().take(3).enumerate() {
            row[r] = s[r];
            row[3] = t[r];
        }
        a
    }

    #[test]
    fn same_pixdim_keeps_the_image_exactly() {
        let img = Image::ramp([2, 4, 3, 5]);
        assert_eq!(spacing(&img, &p([1.0, 1.0, 1.0])), img);
        // pixdim <= 0 keeps the input spacing.
        assert_eq!(spacing(&img, &p([-1.0, 0.0, -1.0])), img);
        // An oblique (45° in-plane) affine with its own spacing: also a no-op.
        let mut rot = img.clone();
        let h = std::f64::consts::FRAC_1_SQRT_2;
        rot.affine = [
            [2.0 * h, -2.0 * h, 0.0, 5.0],
            [2.0 * h, 2.0 * h, 0.0, -3.0],
            [0.0, 0.0, 3.0, 1.0],
            [0.0, 0.0, 0.0, 1.0],
        ];
        assert_eq!(spacing(&rot, &p([2.0, 2.0, 3.0])), rot);
    }

    #[test]
    fn halving_the_spacing_of_a_ramp_interpolates_exactly() {
        let img = Image::row(vec![0.0, 1.0, 2.0, 3.0, 4.0], 1);
        let out = spacing(&img, &p([0.5, 1.0, 1.0]));
        assert_eq!(out.shape, [1, 9, 1, 1]);
        let want: Vec<f32> = (0..9).map(|i| i as f32 / 2.0).collect();
        assert_eq!(out.data, want);
        assert_eq!(out.spacing, [0.5, 1.0, 1.0]);
        assert_eq!(out.affine[0][0], 0.5);
        // 2-D: v(i, j) = i + 2 j on a 2×2 plane, both axes halved: 3×3 with
        // v'(i, j) = v(i / 2, j / 2) = i / 2 + j.
        let plane = Image::ramp([1, 2, 2, 1]);
        let out = spacing(&plane, &p([0.5, 0.5, 1.0]));
        assert_eq!(out.shape, [1, 3, 3, 1]);
        for j in 0..3 {
            for i in 0..3 {
                assert_eq!(out.at(0, i, j, 0), i as f32 / 2.0 + j as f32, "({i}, {j})");
            }
        }
    }

    #[test]
    fn output_shape_follows_monais_rounding() {
        let shape = |n: usize, s_in: f64, s_out: f64| {
            let a = diag_affine([s_in, 1.0, 1.0], [0.0; 3]);
            spacing_geometry([n, 1, 1], &a, [s_in, 1.0, 1.0], &p([s_out, 1.0, 1.0])).0[0]
        };
        assert_eq!(shape(10, 1.0, 3.0), 4); // round(3 + 1)
        assert_eq!(shape(10, 1.0, 4.0), 3); // round(2.25 + 1)
        assert_eq!(shape(3, 1.0, 0.8), 4); // round(2.5 + 1) = round(3.5)
        assert_eq!(shape(2, 3.0, 2.0), 2); // round(1.5 + 1) = round(2.5): to even
        assert_eq!(shape(1, 1.0, 0.1), 1);
        assert_eq!(shape(4, 2.0, 1.0), 7);
    }

    #[test]
    fn output_voxel_zero_sits_on_input_voxel_zero() {
        // Flipped x, translated: the origin is the world position of voxel 0.
        let mut img = Image::ramp([1, 4, 3, 2]);
        img.affine = diag_affine([-2.0, 1.5, 3.0], [10.0, -5.0, 7.0]);
        img.spacing = [2.0, 1.5, 3.0];
        let out = spacing(&img, &p([1.0, 1.0, 1.0]));
        assert_eq!(out.shape, [1, 7, 4, 4]);
        assert_eq!(out.affine, diag_affine([-1.0, 1.0, 1.0], [10.0, -5.0, 7.0]));
        assert_eq!(out.spacing, [1.0, 1.0, 1.0]);
        // Every output voxel holds the linear ramp at its input index (interior).
        for k in 0..4 {
            for j in 0..4 {
                for i in 0..7 {
                    let (fi, fj, fk) = (i as f32 / 2.0, j as f32 / 1.5, k as f32 / 3.0);
                    let want = fi + 4.0 * fj + 12.0 * fk;
                    assert!((out.at(0, i, j, k) - want).abs() < 1e-5, "({i}, {j}, {k})");
                }
            }
        }
    }

    #[test]
    fn padding_modes_differ_past_the_last_voxel() {
        // n = 3, s_out = 0.8: 4 voxels; the last reads index 2.4.
        let img = Image::row(vec![1.0, 2.0, 4.0], 1);
        let border = spacing(&img, &p([0.8, 1.0, 1.0]));
        assert_eq!(border.shape, [1, 4, 1, 1]);
        let close = |got: &[f32], want: &[f64]| {
            assert_eq!(got.len(), want.len());
            for (g, w) in got.iter().zip(want) {
                assert!((f64::from(*g) - w).abs() < 1e-6, "{got:?} vs {want:?}");
            }
        };
        close(
            &border.data,
            &[1.0, 0.2 + 0.8 * 2.0, 0.4 * 2.0 + 0.6 * 4.0, 4.0],
        );
        let zeros = spacing(
            &img,
            &Spacing {
                padding: SpacingPadding::Zeros,
                ..p([0.8, 1.0, 1.0])
            },
        );
        // Index 2.4: corner 3 is outside and reads 0.
        close(&zeros.data[3..], &[0.6 * 4.0]);
        assert_eq!(zeros.data[..3], border.data[..3]);
    }

    #[test]
    fn nearest_keeps_labels_and_rounds_ties_to_even() {
        let labels = [0.0f32, 3.0, 7.0];
        let n = 5 * 4 * 3;
        let mut img = Image::ramp([1, 5, 4, 3]);
        img.data = (0..n).map(|v| labels[(v * 7 + v / 3) % 3]).collect();
        let near = Spacing {
            mode: Interp::Nearest,
            ..p([0.7, 1.3, 0.45])
        };
        let out = spacing(&img, &near);
        assert!(out.data.iter().all(|v| labels.contains(v)));
        assert!(labels.iter().all(|l| out.data.contains(l)));
        // The same through the per-voxel loop.
        // The same through the per-voxel loop (identity input affine, so the
        // output affine is the output-to-input index map).
        let out_general = {
            let (dims, aff) = spacing_geometry([5, 4, 3], &img.affine, img.spacing, &near);
            let xf = Xform {
                lin: linear_part(&aff),
                shift: translation(&aff),
            };
            resample_general(&img, &xf, dims, near.mode, near.padding)
        };
        assert_eq!(out.data, out_general);
        // Ties: index i / 2 -> 0, 0, 1, 2, 2, 2, 3 (torch's nearbyint).
        let row = Image::row(vec![0.0, 1.0, 2.0, 3.0], 1);
        let out = spacing(
            &row,
            &Spacing {
                mode: Interp::Nearest,
                ..p([0.5, 1.0, 1.0])
            },
        );
        assert_eq!(out.data, vec![0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 3.0]);
    }

    #[test]
    fn separable_and_general_paths_agree() {
        let img = Image::ramp([2, 6, 5, 4]);
        for padding in [SpacingPadding::Border, SpacingPadding::Zeros] {
            for mode in [Interp::Linear, Interp::Nearest] {
                let xf = Xform {
                    lin: [[0.7, 0.0, 0.0], [0.0, 1.6, 0.0], [0.0, 0.0, 0.45]],
                    shift: [-0.8, 0.3, 0.2],
                };
                let dims = [9, 4, 10];
                let a = resample_separable(&img, &xf, dims, mode, padding);
                let b = resample_general(&img, &xf, dims, mode, padding);
                assert_eq!(a.len(), b.len());
                for (u, v) in a.iter().zip(&b) {
                    assert!((u - v).abs() <= 1e-4 * v.abs().max(1.0), "{u} vs {v}");
                }
            }
        }
    }

    #[test]
    fn permuted_axes_keep_or_drop_the_rotation() {
        // Voxel i runs along world y (spacing 1), j along world x (spacing 2).
        let mut img = Image::ramp([1, 3, 4, 2]);
        img.affine = [
            [0.0, 2.0, 0.0, 10.0],
            [1.0, 0.0, 0.0, 20.0],
            [0.0, 0.0, 3.0, 30.0],
            [0.0, 0.0, 0.0, 1.0],
        ];
        img.spacing = [1.0, 2.0, 3.0];
        // Keeping the rotation: only j is refined, 4 -> round(3 * 2 + 1) = 7.
        let kept = spacing(&img, &p([1.0, 1.0, 3.0]));
        assert_eq!(kept.shape, [1, 3, 7, 2]);
        assert_eq!(kept.affine[0][1], 1.0);
        assert_eq!(kept.affine[1][0], 1.0);
        assert_eq!(translation(&kept.affine), [10.0, 20.0, 30.0]);
        for (i, j, k) in [(0, 0, 0), (2, 3, 1), (1, 5, 0), (2, 6, 1)] {
            let want = i as f32 + 3.0 * (j as f32 / 2.0) + 12.0 * k as f32;
            assert!((kept.at(0, i, j, k) - want).abs() < 1e-5, "({i}, {j}, {k})");
        }
        // diagonal = true: output axis 0 is world x (old j), axis 1 world y (old i).
        let diag = spacing(
            &img,
            &Spacing {
                diagonal: true,
                ..p([1.0, 1.0, 3.0])
            },
        );
        assert_eq!(diag.shape, [1, 7, 3, 2]);
        assert_eq!(
            diag.affine,
            diag_affine([1.0, 1.0, 3.0], [10.0, 20.0, 30.0])
        );
        for a in 0..7 {
            for b in 0..3 {
                for k in 0..2 {
                    let want = b as f32 + 3.0 * (a as f32 / 2.0) + 12.0 * k as f32;
                    assert!((diag.at(0, a, b, k) - want).abs() < 1e-5, "({a}, {b}, {k})");
                }
            }
        }
    }

    #[test]
    fn zoom_linear_strips_shear_like_cholesky() {
        // Columns (2, 0, 0) and (1, 1, 0): Gram–Schmidt gives x then y.
        let lin = [[2.0, 1.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 4.0]];
        let z = zoom_linear(&lin, [3.0, 0.0, -1.0], false);
        let s2 = 2f64.sqrt();
        assert_eq!(z, [[3.0, 0.0, 0.0], [0.0, s2, 0.0], [0.0, 0.0, 4.0]]);
        let d = zoom_linear(&lin, [3.0, 5.0, 0.5], true);
        assert_eq!(d, [[3.0, 0.0, 0.0], [0.0, 5.0, 0.0], [0.0, 0.0, 0.5]]);
    }
}
