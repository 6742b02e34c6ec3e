//! `Resize` with PyTorch's `F.interpolate` semantics (what MONAI calls), done
//! as three separable passes over per-axis tap tables:
//!
//! * `trilinear`, `align_corners=False`: source `s = (o + ½)·in/out − ½`,
//!   clamped at 0; taps `⌊s⌋` and `min(⌊s⌋ + 1, in − 1)` with weights `1 − f`, `f`.
//! * `nearest` (PyTorch's legacy nearest): source `min(⌊o·in/out⌋, in − 1)`.
//! * `area` (adaptive average pooling, MONAI `Resize`'s default): the mean of
//!   `[⌊o·in/out⌋, ⌈(o + 1)·in/out⌉)`.
//!
//! [`resize_box`] resizes a box of a larger image without copying the box out
//! first: crop and resize are one operation (what `RandomResizedCrop3d` needs).
//! Passes run y, x, then z (see `resize_box`); the order only changes float
//! rounding (≤ 1e-6 relative), not the result.

use std::mem::MaybeUninit;

use super::image::Image;
use crate::exec::op::{Op, StepRng};
use crate::nifti::affine::Affine;
use crate::transforms::TransformError;
use crate::transforms::spec::{
    Args, KEYS, ParamDefault, ParamError, ParamKind, TransformSpec, param,
};
use crate::transforms::spec::{Params, requested_size};

/// Interpolation of [`resize`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResizeMode {
    /// Linear along each axis (trilinear in 3-D), `align_corners=False`.
    Trilinear,
    /// Nearest neighbour (labels).
    Nearest,
    /// Box average (adaptive average pooling).
    Area,
}

impl ResizeMode {
    /// Parses MONAI's mode names.
    pub fn parse(name: &str) -> Option<ResizeMode> {
        match name {
            "trilinear" | "bilinear" | "linear" => Some(ResizeMode::Trilinear),
            "nearest" => Some(ResizeMode::Nearest),
            "area" => Some(ResizeMode::Area),
            _ => None,
        }
    }
}

/// For every output coordinate of one axis, `width` (input index, weight) taps.
#[derive(Debug, Clone, PartialEq)]
pub struct AxisTaps {
    /// Taps per output coordinate.
    pub width: usize,
    /// Input indices, `width` per output coordinate.
    pub index: Vec<usize>,
    /// Weights, `width` per output coordinate.
    pub weight: Vec<f32>,
}

impl AxisTaps {
    /// The taps resizing `input` samples to `output` samples.
    pub fn new(input: usize, output: usize, mode: ResizeMode) -> AxisTaps {
        let scale = input as f64 / output as f64;
        match mode {
            ResizeMode::Trilinear => {
                // PyTorch computes the source position in float32.
                let scale = scale as f32;
                let mut index = Vec::with_capacity(2 * output);
                let mut weight = Vec::with_capacity(2 * output);
                for o in 0..output {
                    let src = ((o as f32 + 0.5) * scale - 0.5).max(0.0);
                    let lo = (src as usize).min(input - 1);
                    let hi = (lo + 1).min(input - 1);
                    let f = src - lo as f32;
                    index.extend([lo, hi]);
                    weight.extend([1.0 - f, f]);
                }
                AxisTaps {
                    width: 2,
                    index,
                    weight,
                }
            }
            ResizeMode::Nearest => AxisTaps {
                width: 1,
                index: (0..output)
                    .map(|o| ((o as f32 * scale as f32) as usize).min(input - 1))
                    .collect(),
                weight: vec![1.0; output],
            },
            ResizeMode::Area => {
                let bounds: Vec<(usize, usize)> = (0..output)
                    .map(|o| {
                        let start = (o * input) / output;
                        let end = ((o + 1) * input).div_ceil(output);
                        (start, end)
                    })
                    .collect();
                let width = bounds.iter().map(|(s, e)| e - s).max().unwrap_or(1);
                let mut index = Vec::with_capacity(width * output);
                let mut weight = Vec::with_capacity(width * output);
                for (s, e) in bounds {
                    let w = 1.0 / (e - s) as f32;
                    for t in 0..width {
                        // Unused taps point at a valid voxel with weight 0.
                        index.push(if s + t < e { s + t } else { s });
                        weight.push(if s + t < e { w } else { 0.0 });
                    }
                }
                AxisTaps {
                    width,
                    index,
                    weight,
                }
            }
        }
    }

    /// Number of output coordinates.
    pub fn len(&self) -> usize {
        self.index.len() / self.width
    }

    /// Whether there are no output coordinates.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }
}

/// Resizes the whole image to `size` voxels per spatial axis.
pub fn resize(img: &Image, size: [usize; 3], mode: ResizeMode) -> Image {
    let dims = [img.shape[1], img.shape[2], img.shape[3]];
    resize_box(img, [0; 3], dims, size, mode)
}

/// Resizes the box `[start, start + extent)` of `img` to `size`: the crop is
/// never copied out. The affine maps output voxel centres to where
/// interpolation sampled them.
///
/// # Panics
/// If the box leaves the image or an extent or size is 0.
pub fn resize_box(
    img: &Image,
    start: [usize; 3],
    extent: [usize; 3],
    size: [usize; 3],
    mode: ResizeMode,
) -> Image {
    let [c, nx, ny, nz] = img.shape;
    for a in 0..3 {
        assert!(extent[a] > 0 && size[a] > 0, "empty resize on axis {a}");
        assert!(
            start[a] + extent[a] <= img.shape[a + 1],
            "box leaves the image"
        );
    }
    let plane = nx * ny;
    let mut out = Vec::with_capacity(c * size.iter().product::<usize>());
    for ch in 0..c {
        let mut resize = PlaneResize::new([nx, ny, nz], start, extent, size, mode);
        for z in start[2]..start[2] + extent[2] {
            resize.feed(z, &img.data[(ch * nz + z) * plane..][..plane]);
        }
        resize.finish_into(&mut out);
    }
    Image {
        data: out,
        shape: [c, size[0], size[1], size[2]],
        spacing: box_spacing(img.spacing, extent, size),
        affine: box_affine(img.affine, start, extent, size),
    }
}

/// The affine of a box `[start, start + extent)` resized to `size`: output
/// voxel `o` sits at input position `start + (o + ½)·extent/size − ½`.
pub fn box_affine(
    affine: Affine,
    start: [usize; 3],
    extent: [usize; 3],
    size: [usize; 3],
) -> Affine {
    let mut affine = affine;
    for row in affine.iter_mut().take(3) {
        let cols = [row[0], row[1], row[2]];
        for a in 0..3 {
            let scale = extent[a] as f64 / size[a] as f64;
            row[3] += cols[a] * (start[a] as f64 + 0.5 * scale - 0.5);
            row[a] = cols[a] * scale;
        }
    }
    affine
}

/// The voxel spacing of a box of `extent` resized to `size`.
pub fn box_spacing(spacing: [f64; 3], extent: [usize; 3], size: [usize; 3]) -> [f64; 3] {
    [0, 1, 2].map(|a| spacing[a] * extent[a] as f64 / size[a] as f64)
}

thread_local! {
    /// One plane's y pass in [`PlaneResize::feed`] (`ex × oy` values), kept
    /// per thread and read back at once by the x pass while it is in cache.
    static PASS_Y: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// One channel of [`resize_box`], fed the input one z-plane at a time (in
/// increasing z), so a source that produces a volume plane by plane (the
/// on-disk cache) never materialises it. Gives exactly `resize_box`'s values.
///
/// Order of the passes: y, x, z. The y pass weights whole box rows
/// (vectorised) while reading each input plane once, as it arrives; the
/// gather along x then runs on the plane's `oy` rows instead of `ey`, while
/// they are still in cache (the y pass of a whole 96³ view kept until the
/// end went out to memory and back: the gather was a fifth of the loader);
/// the z pass weights whole planes.
#[derive(Debug, Clone)]
pub struct PlaneResize {
    dims: [usize; 3],
    start: [usize; 3],
    extent: [usize; 3],
    size: [usize; 3],
    taps: [AxisTaps; 3],
    /// The x pass's taps in loop form.
    x_taps: RowTaps,
    /// The y and x passes of the planes fed so far: `ox × oy` per plane.
    pass_xy: Vec<f32>,
    /// The next input z this expects.
    next_z: usize,
}

impl PlaneResize {
    /// Resizes the box `[start, start + extent)` of a volume of spatial shape
    /// `dims` to `size`.
    ///
    /// # Panics
    /// If the box leaves the volume or an extent or size is 0.
    pub fn new(
        dims: [usize; 3],
        start: [usize; 3],
        extent: [usize; 3],
        size: [usize; 3],
        mode: ResizeMode,
    ) -> PlaneResize {
        for a in 0..3 {
            assert!(extent[a] > 0 && size[a] > 0, "empty resize on axis {a}");
            assert!(start[a] + extent[a] <= dims[a], "box leaves the image");
        }
        let taps = [0, 1, 2].map(|a| AxisTaps::new(extent[a], size[a], mode));
        PlaneResize {
            dims,
            start,
            extent,
            size,
            x_taps: RowTaps::new(&taps[0]),
            taps,
            // Filled plane by plane (never zeroed first).
            pass_xy: Vec::with_capacity(size[0] * size[1] * extent[2]),
            next_z: start[2],
        }
    }

    /// The box's extent in a plane: `(start, end)` along x and y.
    pub fn plane_rect(&self) -> ([usize; 2], [usize; 2]) {
        let [x, y, _] = self.start;
        ([x, y], [x + self.extent[0], y + self.extent[1]])
    }

    /// The input rows (y, in the volume) the y pass may read, increasing,
    /// each once: [`Self::feed`] reads no other row of the box.
    pub fn rows_read(&self) -> Vec<usize> {
        let mut rows: Vec<usize> = self.taps[1]
            .index
            .iter()
            .map(|&i| self.start[1] + i)
            .collect();
        rows.sort_unstable();
        rows.dedup();
        rows
    }

    /// Whether input plane `z` lies in the box.
    pub fn wants(&self, z: usize) -> bool {
        (self.start[2]..self.start[2] + self.extent[2]).contains(&z)
    }

    /// Takes input plane `z` (`nx · ny` values, x fastest). Planes outside the
    /// box are ignored; those inside must come in order.
    ///
    /// # Panics
    /// If a plane of the box is skipped or repeated, or `plane` is too short.
    pub fn feed(&mut self, z: usize, plane: &[f32]) {
        if !self.wants(z) {
            return;
        }
        assert_eq!(z, self.next_z, "box planes must be fed in order");
        self.next_z += 1;
        let [nx, ny, _] = self.dims;
        assert!(plane.len() >= nx * ny, "plane too short");
        let [ex, _, _] = self.extent;
        let [ox, oy, _] = self.size;
        // The box's rows in this plane, each `ex` long.
        let plane_at = self.start[1] * nx + self.start[0];
        let row = |j: usize| &plane[plane_at + j * nx..][..ex];
        PASS_Y.with_borrow_mut(|pass_y| {
            pass_y.clear();
            y_pass(row, &self.taps[1], oy, pass_y);
            let (at, n) = (self.pass_xy.len(), ox * oy);
            self.pass_xy.reserve(n);
            self.x_taps
                .gather_rows(pass_y, ex, &mut self.pass_xy.spare_capacity_mut()[..n]);
            // SAFETY: `gather_rows` initialised all `n` values it was given
            // (it asserts `oy` rows of `ex` in and `oy` rows of `ox` out).
            unsafe { self.pass_xy.set_len(at + n) };
        });
    }

    /// Runs the z pass and appends the `size` voxels to `out`.
    ///
    /// # Panics
    /// If some plane of the box was not fed.
    pub fn finish_into(self, out: &mut Vec<f32>) {
        assert_eq!(
            self.next_z,
            self.start[2] + self.extent[2],
            "every plane of the box must be fed"
        );
        let [ox, oy, oz] = self.size;
        // z: each output plane is a weighted sum of whole planes.
        out.reserve(ox * oy * oz);
        for k in 0..oz {
            combine_rows(&self.pass_xy, ox * oy, &self.taps[2], k, out);
        }
    }

    /// The resized box as a one-channel image, given the input's spacing and
    /// affine.
    ///
    /// # Panics
    /// As [`Self::finish_into`].
    pub fn finish(self, spacing: [f64; 3], affine: Affine) -> Image {
        let (start, extent, size) = (self.start, self.extent, self.size);
        let mut data = Vec::new();
        self.finish_into(&mut data);
        Image {
            data,
            shape: [1, size[0], size[1], size[2]],
            spacing: box_spacing(spacing, extent, size),
            affine: box_affine(affine, start, extent, size),
        }
    }
}

/// The y pass of one plane: appends `oy` rows, row `j` the taps of output
/// `j` weighting whole input rows (`row(i)`, each `ex` long; vectorisable).
fn y_pass<'r>(row: impl Fn(usize) -> &'r [f32], taps: &AxisTaps, oy: usize, dst: &mut Vec<f32>) {
    let width = taps.width;
    for j in 0..oy {
        let (idx, w) = (
            &taps.index[width * j..][..width],
            &taps.weight[width * j..][..width],
        );
        if let ([i0, i1], [w0, w1]) = (idx, w) {
            append_blend(row(*i0), row(*i1), *w0, *w1, dst);
        } else {
            let at = dst.len();
            dst.extend(row(idx[0]).iter().map(|&a| w[0] * a));
            for (&i, &wt) in idx.iter().zip(w).skip(1).filter(|(_, w)| **w != 0.0) {
                for (d, &a) in dst[at..].iter_mut().zip(row(i)) {
                    *d += wt * a;
                }
            }
        }
    }
}

/// The taps of the contiguous (x) pass in a loop-friendly form: for linear
/// taps, the pair `(i, i + 1)` with weights `(a, b)`; a clamped last pair
/// `(n − 1, n − 1)` becomes `(n − 2, n − 1)` with weights `(0, 1)`.
#[derive(Debug, Clone)]
enum RowTaps {
    Pairs(PairTaps),
    General(AxisTaps),
}

/// Linear taps along a row: output `o` is `a[o] · row[lo[o]] + b[o] ·
/// row[lo[o] + 1]` (the three of one length, made by [`RowTaps::new`]).
#[derive(Debug, Clone)]
struct PairTaps {
    lo: Vec<u32>,
    a: Vec<f32>,
    b: Vec<f32>,
}

impl RowTaps {
    fn new(taps: &AxisTaps) -> RowTaps {
        let n = taps.index.iter().max().map_or(0, |&m| m + 1);
        if taps.width != 2 || n < 2 || u32::try_from(n).is_err() {
            return RowTaps::General(taps.clone());
        }
        let (mut lo, mut a, mut b) = (Vec::new(), Vec::new(), Vec::new());
        for (i, w) in taps.index.chunks(2).zip(taps.weight.chunks(2)) {
            if i[0] + 1 < n {
                lo.push(i[0] as u32);
                // A clamped pair (i, i) never reaches here: i + 1 < n means hi = i + 1.
                a.push(w[0]);
                b.push(if i[1] == i[0] { 0.0 } else { w[1] });
            } else {
                lo.push(n as u32 - 2);
                a.push(0.0);
                b.push(w[0] + w[1]);
            }
        }
        RowTaps::Pairs(PairTaps { lo, a, b })
    }

    /// Outputs per row.
    fn len(&self) -> usize {
        match self {
            RowTaps::Pairs(taps) => taps.lo.len(),
            RowTaps::General(taps) => taps.len(),
        }
    }

    /// Initialises all of `dst`, row by row: `Σ_t w[o, t] · row[i[o, t]]`
    /// for every output `o` of every `len`-long row of `src`.
    ///
    /// # Panics
    /// Unless `src` is whole rows and `dst` holds exactly their outputs.
    fn gather_rows(&self, src: &[f32], len: usize, dst: &mut [MaybeUninit<f32>]) {
        assert!(
            len > 0 && src.len().is_multiple_of(len) && dst.len() == src.len() / len * self.len(),
            "the gather's rows do not match"
        );
        match self {
            RowTaps::Pairs(taps) => gather_pair_rows(src, len, taps, dst),
            RowTaps::General(taps) => {
                let width = taps.width;
                for (row, out) in src.chunks_exact(len).zip(dst.chunks_exact_mut(taps.len())) {
                    let taps = taps.index.chunks(width).zip(taps.weight.chunks(width));
                    for (o, (i, w)) in out.iter_mut().zip(taps) {
                        o.write(i.iter().zip(w).map(|(&i, &w)| w * row[i]).sum::<f32>());
                    }
                }
            }
        }
    }
}

/// The linear taps' gather over whole rows: as 64-bit pairs on CPUs with
/// AVX-512 (`pairs_avx512::gather`), else [`gather_pairs`].
fn gather_pair_rows(src: &[f32], len: usize, taps: &PairTaps, dst: &mut [MaybeUninit<f32>]) {
    // The gather's indexes are signed 32-bit: rows up to 2³¹ values.
    #[cfg(target_arch = "x86_64")]
    if len <= i32::MAX as usize && std::arch::is_x86_feature_detected!("avx512f") {
        let PairTaps { lo, a, b } = taps;
        let ox = lo.len();
        assert!(
            a.len() == ox && b.len() == ox && dst.len() == src.len() / len * ox,
            "the gather's taps and rows do not match"
        );
        assert!(
            lo.iter().all(|&l| l as usize + 1 < len),
            "a tap pair leaves the row"
        );
        // SAFETY: AVX-512F was just detected; every pair `(l, l + 1)` lies
        // inside its row, with `l < len ≤ 2³¹ - 1`, and the taps and output
        // have the lengths the function reads and writes (asserted).
        unsafe { pairs_avx512::gather(src, len, taps, dst) };
        return;
    }
    gather_pairs(src, len, taps, dst);
}

/// The linear taps' gather over whole rows, in one function so that the
/// tap tables stay in registers (as closures around `Vec::extend` they were
/// reloaded per voxel, and the gather was 12% of the loader). Compiled for
/// AVX-512 and AVX2 too, where the compiler may use vector gathers; the
/// arithmetic is the same (no FMA contraction), so are the bits (tested).
#[multiversion::multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512vl+avx2+fma",
    "x86_64+avx2+fma",
))]
fn gather_pairs(src: &[f32], len: usize, taps: &PairTaps, dst: &mut [MaybeUninit<f32>]) {
    gather_pairs_body(src, len, taps, dst);
}

#[inline(always)]
fn gather_pairs_body(src: &[f32], len: usize, taps: &PairTaps, dst: &mut [MaybeUninit<f32>]) {
    let PairTaps { lo, a, b } = taps;
    let ox = lo.len();
    if ox == 0 {
        return;
    }
    // Checked once here rather than twice per voxel, so the loop vectorises.
    assert!(
        lo.iter().all(|&l| l as usize + 1 < len),
        "a tap pair leaves the row"
    );
    for (row, out) in src.chunks_exact(len).zip(dst.chunks_exact_mut(ox)) {
        for (((o, &l), &wa), &wb) in out.iter_mut().zip(lo).zip(a).zip(b) {
            let l = l as usize;
            // SAFETY: l + 1 < len = row.len() for every tap (asserted above);
            // `box_resize_matches_a_float64_reference` covers this path.
            let (p, q) = unsafe { (*row.get_unchecked(l), *row.get_unchecked(l + 1)) };
            o.write(wa * p + wb * q);
        }
    }
}

/// The pair gather for AVX-512: each output's two taps `(l, l + 1)` are
/// adjacent, so one 64-bit gather lane fetches both. The compiler's
/// vectorisation of [`gather_pairs`] gathered `p` and `q` separately, with
/// 64-bit indexes, 8 values per instruction; this gathers 8 pairs per
/// instruction and splits them with two permutes. The arithmetic is
/// `gather_pairs`'s (`wa · p + wb · q`, no FMA): the same bits (tested).
#[cfg(target_arch = "x86_64")]
mod pairs_avx512 {
    use std::arch::x86_64::{
        __m512i, _mm512_add_ps, _mm512_castsi512_ps, _mm512_castsi512_si256,
        _mm512_extracti64x4_epi64, _mm512_i32gather_epi64, _mm512_loadu_ps, _mm512_loadu_si512,
        _mm512_mul_ps, _mm512_permutex2var_ps, _mm512_set_epi32, _mm512_storeu_ps,
    };
    use std::mem::MaybeUninit;

    use super::PairTaps;

    /// # Safety
    /// The CPU must have AVX-512F; `l + 1 < len ≤ i32::MAX` for every `l` of
    /// the taps' `lo` (the gather's indexes are signed 32-bit); their `a`
    /// and `b` are `lo.len()` long and `dst` is `src.len() / len · lo.len()`
    /// long.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn gather(
        src: &[f32],
        len: usize,
        taps: &PairTaps,
        dst: &mut [MaybeUninit<f32>],
    ) {
        let PairTaps { lo, a, b } = taps;
        let ox = lo.len();
        if ox == 0 {
            return;
        }
        let whole = ox / 16 * 16;
        // Of 16 (p, q) pairs in two registers: the p's, then the q's.
        let evens = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
        let odds = _mm512_set_epi32(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
        for (row, out) in src.chunks_exact(len).zip(dst.chunks_exact_mut(ox)) {
            let base = row.as_ptr().cast::<i64>();
            for i in (0..whole).step_by(16) {
                // SAFETY: i + 16 <= whole <= ox, the length of `lo`, `a`,
                // `b` and `out`; each gathered pair (row[l], row[l + 1]) lies
                // inside `row` (l + 1 < len, and l < 2³¹ so its signed index
                // is l; the gather's scale of 4 makes `l` a float index, and
                // it needs no 8-byte alignment).
                unsafe {
                    let idx: __m512i = _mm512_loadu_si512(lo.as_ptr().add(i).cast());
                    let first = _mm512_i32gather_epi64::<4>(_mm512_castsi512_si256(idx), base);
                    let second =
                        _mm512_i32gather_epi64::<4>(_mm512_extracti64x4_epi64::<1>(idx), base);
                    let (first, second) = (_mm512_castsi512_ps(first), _mm512_castsi512_ps(second));
                    let p = _mm512_permutex2var_ps(first, evens, second);
                    let q = _mm512_permutex2var_ps(first, odds, second);
                    let wa = _mm512_loadu_ps(a.as_ptr().add(i));
                    let wb = _mm512_loadu_ps(b.as_ptr().add(i));
                    let o = _mm512_add_ps(_mm512_mul_ps(wa, p), _mm512_mul_ps(wb, q));
                    _mm512_storeu_ps(out.as_mut_ptr().add(i).cast(), o);
                }
            }
            for i in whole..ox {
                let l = lo[i] as usize;
                out[i].write(a[i] * row[l] + b[i] * row[l + 1]);
            }
        }
    }
}

/// Appends `wa · a + wb · b`, element by element (`a` and `b` of one length):
/// the two-tap rows of the y and z passes.
fn append_blend(a: &[f32], b: &[f32], wa: f32, wb: f32, dst: &mut Vec<f32>) {
    assert_eq!(a.len(), b.len(), "blended rows of one length");
    let (at, n) = (dst.len(), a.len());
    dst.reserve(n);
    blend(a, b, wa, wb, &mut dst.spare_capacity_mut()[..n]);
    // SAFETY: `blend` wrote all `n` values (`a`, `b` and the slice are `n` long).
    unsafe { dst.set_len(at + n) };
}

/// [`append_blend`]'s loop, compiled for AVX-512 and AVX2 too (it was SSE,
/// 4 lanes, and a tenth of the loader on 512² planes). No FMA contraction,
/// so every version gives the same bits (tested).
#[multiversion::multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512vl+avx2+fma",
    "x86_64+avx2+fma",
))]
fn blend(a: &[f32], b: &[f32], wa: f32, wb: f32, dst: &mut [MaybeUninit<f32>]) {
    blend_body(a, b, wa, wb, dst);
}

#[inline(always)]
fn blend_body(a: &[f32], b: &[f32], wa: f32, wb: f32, dst: &mut [MaybeUninit<f32>]) {
    for ((o, &x), &y) in dst.iter_mut().zip(a).zip(b) {
        o.write(wa * x + wb * y);
    }
}

/// Appends output row `o` of a pass along a slow axis: the taps of `o` weight
/// whole rows of `len` values of `src` (vectorisable).
fn combine_rows(src: &[f32], len: usize, taps: &AxisTaps, o: usize, dst: &mut Vec<f32>) {
    let width = taps.width;
    let (idx, w) = (
        &taps.index[width * o..][..width],
        &taps.weight[width * o..][..width],
    );
    if width == 2 {
        let a = &src[idx[0] * len..][..len];
        let b = &src[idx[1] * len..][..len];
        append_blend(a, b, w[0], w[1], dst);
        return;
    }
    let start = dst.len();
    let first = &src[idx[0] * len..][..len];
    dst.extend(first.iter().map(|&x| w[0] * x));
    let row = &mut dst[start..];
    for (&i, &wt) in idx.iter().zip(w).skip(1) {
        if wt == 0.0 {
            continue;
        }
        for (d, &x) in row.iter_mut().zip(&src[i * len..][..len]) {
            *d += wt * x;
        }
    }
}

/// `Resize`: to a shape (-1 keeps an axis); label keys use nearest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resize {
    /// Target size (-1 keeps an axis).
    pub size: [i64; 3],
    /// Interpolation of non-label keys.
    pub mode: ResizeMode,
}

impl Op for Resize {
    fn apply(
        &self,
        img: &mut Image,
        _: &mut StepRng,
        is_label: bool,
    ) -> Result<(), TransformError> {
        let dims = [img.shape[1], img.shape[2], img.shape[3]];
        let target = [0, 1, 2].map(|a| {
            if self.size[a] > 0 {
                self.size[a] as usize
            } else {
                dims[a]
            }
        });
        let mode = if is_label {
            ResizeMode::Nearest
        } else {
            self.mode
        };
        *img = resize(img, target, mode);
        Ok(())
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// `spatial_size` (a side <= 0 keeps the image's).
fn resized_size(params: &Params, input: Option<[u64; 3]>) -> Option<[u64; 3]> {
    requested_size(params, "spatial_size", input)
}

/// The recipe's `Resize`.
pub const SPEC: TransformSpec = TransformSpec {
    name: "Resize",
    is_random: false,
    params: &[
        KEYS,
        param("spatial_size", ParamKind::Int3, ParamDefault::Required),
        param(
            "mode",
            ParamKind::Choice(&["area", "trilinear", "nearest"]),
            ParamDefault::Str("area"),
        ),
    ],
    summary: "resize to spatial_size (-1 keeps an axis); label keys use nearest",
    check: None,
    nests: false,
    output_size: resized_size,
    build: |a: &Args<'_>| {
        let mode = a.text("mode")?;
        Ok(Box::new(Resize {
            size: a.int3("spatial_size")?,
            mode: ResizeMode::parse(mode)
                .ok_or_else(|| ParamError::Rule(format!("unknown mode `{mode}`")))?,
        }))
    },
};

#[cfg(test)]
mod tests {
    use super::*;

    /// PyTorch-style trilinear interpolation at one output voxel, in float64.
    fn trilinear_f64(
        img: &Image,
        start: [usize; 3],
        extent: [usize; 3],
        size: [usize; 3],
        o: [usize; 3],
    ) -> f64 {
        let mut lo = [0usize; 3];
        let mut hi = [0usize; 3];
        let mut f = [0f64; 3];
        for a in 0..3 {
            let scale = extent[a] as f64 / size[a] as f64;
            let s = ((o[a] as f64 + 0.5) * scale - 0.5).max(0.0);
            lo[a] = (s.floor() as usize).min(extent[a] - 1);
            hi[a] = (lo[a] + 1).min(extent[a] - 1);
            f[a] = s - lo[a] as f64;
        }
        let mut sum = 0.0;
        for corner in 0..8 {
            let pick = |a: usize| corner >> a & 1 == 1;
            let idx = [0, 1, 2].map(|a| start[a] + if pick(a) { hi[a] } else { lo[a] });
            let w: f64 = (0..3)
                .map(|a| if pick(a) { f[a] } else { 1.0 - f[a] })
                .product();
            sum += w * img.at(0, idx[0], idx[1], idx[2]) as f64;
        }
        sum
    }

    #[test]
    fn trilinear_taps_match_pytorch_hand_values() {
        // 4 -> 8 (upsample x2): s = (o + .5)/2 - .5 = -0.25 -> 0, 0.25, 0.75, ...
        let t = AxisTaps::new(4, 8, ResizeMode::Trilinear);
        assert_eq!(&t.index[..6], &[0, 1, 0, 1, 0, 1]);
        assert_eq!(&t.weight[..6], &[1.0, 0.0, 0.75, 0.25, 0.25, 0.75]);
        // Last output: s = 3.25 -> lo = 3, hi clamps to 3.
        assert_eq!(&t.index[14..], &[3, 3]);
        // 6 -> 3 (downsample x2): s = 0.5, 2.5, 4.5.
        let d = AxisTaps::new(6, 3, ResizeMode::Trilinear);
        assert_eq!(d.index, vec![0, 1, 2, 3, 4, 5]);
        assert!(d.weight.iter().all(|&w| w == 0.5));
        // Nearest 5 -> 3: floor(o * 5/3) = 0, 1, 3.
        assert_eq!(
            AxisTaps::new(5, 3, ResizeMode::Nearest).index,
            vec![0, 1, 3]
        );
        // Area 5 -> 2: [0, 3) and [2, 5).
        let a = AxisTaps::new(5, 2, ResizeMode::Area);
        assert_eq!(a.width, 3);
        assert_eq!(a.index, vec![0, 1, 2, 2, 3, 4]);
    }

    #[test]
    fn box_resize_matches_a_float64_reference() {
        let img = Image::ramp([1, 13, 11, 9]);
        let mut wavy = img.clone();
        for (i, v) in wavy.data.iter_mut().enumerate() {
            *v = ((i * 7919 % 101) as f32 - 50.0) / 10.0;
        }
        for (start, extent, size) in [
            ([0, 0, 0], [13, 11, 9], [7, 5, 4]),
            ([2, 3, 1], [9, 6, 7], [12, 12, 12]),
            ([4, 0, 5], [5, 11, 3], [6, 4, 8]),
        ] {
            let out = resize_box(&wavy, start, extent, size, ResizeMode::Trilinear);
            assert_eq!(out.shape, [1, size[0], size[1], size[2]]);
            for k in 0..size[2] {
                for j in 0..size[1] {
                    for i in 0..size[0] {
                        let want = trilinear_f64(&wavy, start, extent, size, [i, j, k]);
                        let got = out.at(0, i, j, k) as f64;
                        assert!(
                            (got - want).abs() < 1e-5,
                            "{start:?} {size:?} ({i},{j},{k}) {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn linear_data_stays_linear_and_same_size_is_identity() {
        let img = Image::ramp([2, 6, 5, 4]);
        assert_eq!(
            resize(&img, [6, 5, 4], ResizeMode::Trilinear).data,
            img.data
        );
        assert_eq!(resize(&img, [6, 5, 4], ResizeMode::Area).data, img.data);
        assert_eq!(resize(&img, [6, 5, 4], ResizeMode::Nearest).data, img.data);
        // A ramp along x, halved by area: means of pairs.
        let row = Image::row(vec![0.0, 2.0, 4.0, 6.0], 1);
        assert_eq!(
            resize(&row, [2, 1, 1], ResizeMode::Area).data,
            vec![1.0, 5.0]
        );
        // Channels are resized independently.
        let two = resize(&img, [3, 3, 3], ResizeMode::Trilinear);
        let ch1 = Image {
            data: img.data[img.spatial_len()..].to_vec(),
            shape: [1, 6, 5, 4],
            ..img.clone()
        };
        assert_eq!(
            two.data[27..],
            resize(&ch1, [3, 3, 3], ResizeMode::Trilinear).data[..]
        );
    }

    /// Feeding every plane of the volume (those outside the box included)
    /// gives resize_box's result bit for bit; a skipped plane is refused.
    #[test]
    fn plane_fed_resize_equals_resize_box() {
        let mut img = Image::ramp([1, 13, 11, 9]);
        for (i, v) in img.data.iter_mut().enumerate() {
            *v = ((i * 7919 % 101) as f32 - 50.0) / 10.0;
        }
        for mode in [ResizeMode::Trilinear, ResizeMode::Area, ResizeMode::Nearest] {
            for (start, extent, size) in [
                ([0, 0, 0], [13, 11, 9], [7, 5, 4]),
                ([2, 3, 1], [9, 6, 7], [12, 12, 12]),
                ([4, 0, 5], [5, 11, 3], [6, 4, 8]),
            ] {
                let want = resize_box(&img, start, extent, size, mode);
                let mut r = PlaneResize::new([13, 11, 9], start, extent, size, mode);
                for z in 0..9 {
                    r.feed(z, &img.data[z * 143..][..143]);
                }
                let got = r.finish(img.spacing, img.affine);
                assert_eq!(got, want, "{mode:?} {start:?} {extent:?}");
            }
        }
        let result = std::panic::catch_unwind(|| {
            let mut r = PlaneResize::new([4, 4, 4], [0; 3], [4; 3], [2; 3], ResizeMode::Area);
            r.feed(0, &[0.0; 16]);
            r.feed(2, &[0.0; 16]);
        });
        assert!(result.is_err(), "a skipped plane must be refused");
    }

    /// `resize_box` still gives, bit for bit, what it gave before it was
    /// rebuilt on `PlaneResize`: xxh3 hashes of its outputs (two channels,
    /// three modes, three boxes) printed by the earlier implementation
    /// (commit 3eb0d91), so reproducibility across versions is checked.
    #[test]
    fn box_resize_is_bit_identical_to_the_earlier_implementation() {
        let mut img = Image::ramp([2, 13, 11, 9]);
        for (i, v) in img.data.iter_mut().enumerate() {
            *v = ((i * 7919 % 101) as f32 - 50.0) / 10.0;
        }
        let pins = [
            0xd149b90fa346328a_u64,
            0x1780ca1b988714e1,
            0x8a71ecdb4026d85e,
            0x13442a70ad6c8595,
            0xc00ae97134e981e6,
            0x2688cda40d454b76,
            0x3140dd0960a8ae6f,
            0x82f683765ced4e98,
            0xaf80d83d10a376a8,
        ];
        let mut pin = pins.iter();
        for mode in [ResizeMode::Trilinear, ResizeMode::Area, ResizeMode::Nearest] {
            for (start, extent, size) in [
                ([0, 0, 0], [13, 11, 9], [7, 5, 4]),
                ([2, 3, 1], [9, 6, 7], [12, 12, 12]),
                ([4, 0, 5], [5, 11, 3], [6, 4, 8]),
            ] {
                let out = resize_box(&img, start, extent, size, mode);
                let bytes: Vec<u8> = out.data.iter().flat_map(|v| v.to_le_bytes()).collect();
                assert_eq!(
                    xxhash_rust::xxh3::xxh3_64(&bytes),
                    *pin.next().unwrap(),
                    "{mode:?} {start:?}"
                );
            }
        }
    }

    /// The gathers picked for this CPU (the 64-bit pair gather where it has
    /// AVX-512, and the compiler's AVX-512 or AVX2 version of the portable
    /// loop) give the baseline build's bits, on rows long enough for the
    /// vector loops and with tails (203, 300 outputs).
    #[test]
    fn every_cpu_version_of_the_gather_gives_the_same_bits() {
        let (len, rows) = (203, 7);
        let src: Vec<f32> = (0..len * rows)
            .map(|i| ((i * 7919 % 1009) as f32 - 500.0) / 37.0)
            .collect();
        for out_len in [96, 48, 203, 300] {
            let taps = AxisTaps::new(len, out_len, ResizeMode::Trilinear);
            let RowTaps::Pairs(pairs) = RowTaps::new(&taps) else {
                panic!("linear taps are pairs");
            };
            let mut fast = vec![MaybeUninit::new(0.0); out_len * rows];
            let mut base = vec![MaybeUninit::new(1.0); out_len * rows];
            let mut portable = vec![MaybeUninit::new(2.0); out_len * rows];
            gather_pair_rows(&src, len, &pairs, &mut fast);
            gather_pairs(&src, len, &pairs, &mut portable);
            gather_pairs_body(&src, len, &pairs, &mut base);
            // SAFETY: every value was initialised (by `new` above, and again by the gathers).
            let bits = |d: &[MaybeUninit<f32>]| {
                d.iter()
                    .map(|v| unsafe { v.assume_init() }.to_bits())
                    .collect::<Vec<_>>()
            };
            assert_eq!(bits(&fast), bits(&base), "{len} -> {out_len}");
            assert_eq!(bits(&portable), bits(&base), "{len} -> {out_len}");
        }
    }

    #[test]
    fn every_cpu_version_of_the_blend_gives_the_same_bits() {
        for n in [0, 1, 15, 16, 17, 96, 203, 512] {
            let a: Vec<f32> = (0..n)
                .map(|i| ((i * 7919 % 1009) as f32 - 500.0) / 37.0)
                .collect();
            let b: Vec<f32> = (0..n)
                .map(|i| ((i * 104729 % 997) as f32 - 400.0) / 13.0)
                .collect();
            let (wa, wb) = (0.3721_f32, 1.0 - 0.3721);
            let mut fast = vec![MaybeUninit::new(f32::NAN); n];
            let mut base = vec![MaybeUninit::new(0.0); n];
            blend(&a, &b, wa, wb, &mut fast);
            blend_body(&a, &b, wa, wb, &mut base);
            // SAFETY: every value was initialised (by `new` above, and again by the blends).
            let bits = |d: &[MaybeUninit<f32>]| {
                d.iter()
                    .map(|v| unsafe { v.assume_init() }.to_bits())
                    .collect::<Vec<_>>()
            };
            assert_eq!(bits(&fast), bits(&base), "{n}");
            let mut appended = vec![7.0];
            append_blend(&a, &b, wa, wb, &mut appended);
            let want: Vec<f32> = std::iter::once(7.0)
                .chain(a.iter().zip(&b).map(|(&x, &y)| wa * x + wb * y))
                .collect();
            assert_eq!(appended, want, "{n}");
        }
    }

    #[test]
    fn affine_follows_the_resampled_positions() {
        let img = Image::ramp([1, 8, 8, 8]);
        let out = resize_box(&img, [2, 0, 0], [4, 8, 8], [8, 4, 8], ResizeMode::Trilinear);
        // x: scale 0.5, voxel 0 samples input 2 + 0.25 - 0.5 = 1.75.
        assert_eq!(out.affine[0][0], 0.5);
        assert_eq!(out.affine[0][3], 1.75);
        assert_eq!(out.affine[1][1], 2.0);
        assert_eq!(out.affine[1][3], 0.5);
        assert_eq!(out.spacing, [0.5, 4.0, 3.0]);
    }
}
