//! Signed axis permutations: any chain of flips, quarter turns and axis
//! reorders composed into one map and applied as one gather, so a view's
//! `RandFlip` x3 + `RandRotate90` x3 copy the voxels once instead of six times.

use std::mem::MaybeUninit;

use super::image::Image;
use crate::nifti::affine::Affine;

/// Writes `values` into `row`, one for one.
fn write_run<'a>(row: &mut [MaybeUninit<f32>], values: impl Iterator<Item = &'a f32>) {
    for (d, &v) in row.iter_mut().zip(values) {
        d.write(v);
    }
}

/// Side of the tiles of [`gather_tiled`].
const TILE: usize = 16;

/// One channel of [`AxisMap::gather`] when output axis `unit` (1 or 2) walks
/// input x: tiles over output x and `unit`, output x innermost.
fn gather_tiled(
    src: &[f32],
    dst: &mut [MaybeUninit<f32>],
    out: [usize; 3],
    origin: isize,
    step: [isize; 3],
    unit: usize,
) {
    let other = 3 - unit;
    let out_stride = [1, out[0], out[0] * out[1]];
    for m in 0..out[other] {
        let (m_in, m_out) = (origin + m as isize * step[other], m * out_stride[other]);
        for u0 in (0..out[unit]).step_by(TILE) {
            for i0 in (0..out[0]).step_by(TILE) {
                let i_end = (i0 + TILE).min(out[0]);
                for u in u0..(u0 + TILE).min(out[unit]) {
                    let (u_in, u_out) =
                        (m_in + u as isize * step[unit], m_out + u * out_stride[unit]);
                    let row = &mut dst[u_out + i0..u_out + i_end];
                    for (i, d) in (i0..i_end).zip(row) {
                        d.write(src[(u_in + i as isize * step[0]) as usize]);
                    }
                }
            }
        }
    }
}

/// Output spatial axis `a` reads input axis `perm[a]`, reversed if `flip[a]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AxisMap {
    /// Input axis of each output axis.
    pub perm: [usize; 3],
    /// Whether each output axis runs backwards through its input axis.
    pub flip: [bool; 3],
}

impl AxisMap {
    /// The identity.
    pub const IDENTITY: AxisMap = AxisMap {
        perm: [0, 1, 2],
        flip: [false; 3],
    };

    /// Reverses the marked axes.
    pub fn flip(flip: [bool; 3]) -> AxisMap {
        AxisMap {
            perm: [0, 1, 2],
            flip,
        }
    }

    /// `torch.rot90(k, (a, b))` on the spatial axes.
    pub fn rot90(k: u32, (a, b): (usize, usize)) -> AxisMap {
        let mut swap = [0, 1, 2];
        swap.swap(a, b);
        let mut flip_b = [false; 3];
        flip_b[b] = true;
        let reorder = AxisMap {
            perm: swap,
            flip: [false; 3],
        };
        match k % 4 {
            0 => AxisMap::IDENTITY,
            1 => AxisMap::flip(flip_b).then(reorder),
            2 => {
                let mut both = flip_b;
                both[a] = true;
                AxisMap::flip(both)
            }
            _ => reorder.then(AxisMap::flip(flip_b)),
        }
    }

    /// `self` followed by `next`.
    pub fn then(self, next: AxisMap) -> AxisMap {
        AxisMap {
            perm: next.perm.map(|p| self.perm[p]),
            flip: [0, 1, 2].map(|a| self.flip[next.perm[a]] ^ next.flip[a]),
        }
    }

    /// Whether the map moves nothing.
    pub fn is_identity(&self) -> bool {
        *self == AxisMap::IDENTITY
    }

    /// The output shape for spatial input shape `dims`.
    pub fn out_dims(&self, dims: [usize; 3]) -> [usize; 3] {
        self.perm.map(|p| dims[p])
    }

    /// Applies the map in one pass; the affine follows so world positions are kept.
    pub fn apply(&self, img: &Image) -> Image {
        if self.is_identity() {
            return img.clone();
        }
        let (shape, spacing, affine) = self.geometry(img.shape, img.spacing, &img.affine);
        Image {
            data: self.gather(img),
            shape,
            spacing,
            affine,
        }
    }

    /// The voxels of [`Self::apply`] (one gather). Where the input's x axis
    /// stays the output's x axis, rows are copied (reversed if flipped);
    /// otherwise the copy goes in 16 x 16 tiles of the two output axes that
    /// read input x and write output x, so both the reads and the writes
    /// stay within a few cache lines (voxel by voxel, the reads of a 96³
    /// view strode 36 KiB apart).
    pub fn gather(&self, img: &Image) -> Vec<f32> {
        let [c, x, y, z] = img.shape;
        let dims = [x, y, z];
        let len = x * y * z;
        let out = self.out_dims(dims);
        let (origin, step) = self.walk(dims);
        // What the unchecked fill below relies on (both fields are public).
        let mut sorted = self.perm;
        sorted.sort_unstable();
        assert_eq!(sorted, [0, 1, 2], "AxisMap: perm must be a permutation");
        assert_eq!(img.data.len(), c * len, "AxisMap: data and shape disagree");
        let mut data = Vec::with_capacity(img.data.len());
        if len == 0 {
            return data;
        }
        // The output axis that walks input x (stride ±1).
        let unit = self
            .perm
            .iter()
            .position(|&p| p == 0)
            .expect("a permutation");
        let fill = &mut data.spare_capacity_mut()[..img.data.len()];
        for (src, dst) in img.data.chunks_exact(len).zip(fill.chunks_exact_mut(len)) {
            if unit == 0 {
                for (r, row) in dst.chunks_exact_mut(out[0]).enumerate() {
                    let (j, k) = ((r % out[1]) as isize, (r / out[1]) as isize);
                    let at = (origin + j * step[1] + k * step[2]) as usize;
                    if step[0] == 1 {
                        write_run(row, src[at..at + out[0]].iter());
                    } else {
                        write_run(row, src[at + 1 - out[0]..=at].iter().rev());
                    }
                }
            } else {
                gather_tiled(src, dst, out, origin, step, unit);
            }
        }
        // SAFETY: every channel's `len` values were written (not zeroed
        // first: that memset was 2% of the loader): the rows of the first
        // branch cover its chunk, the tiles of `gather_tiled` every
        // (x, unit, other) index; the tests compare every voxel with a
        // voxel-by-voxel gather.
        unsafe { data.set_len(img.data.len()) };
        data
    }

    /// Where output voxel 0 reads in the input, and the signed input stride
    /// of each output axis.
    fn walk(&self, dims: [usize; 3]) -> (isize, [isize; 3]) {
        let strides = [1isize, dims[0] as isize, (dims[0] * dims[1]) as isize];
        let mut origin = 0isize;
        let step = [0, 1, 2].map(|a| {
            let s = strides[self.perm[a]];
            if self.flip[a] {
                origin += s * (dims[self.perm[a]] as isize - 1);
                -s
            } else {
                s
            }
        });
        (origin, step)
    }

    /// The shape, spacing and affine of [`Self::apply`]'s output for an
    /// input of this geometry. A run of maps applied one by one moves the
    /// geometry map by map (its rounding differs from the composed map's in
    /// the last bit), so a composed gather takes its geometry from folding
    /// this over the run.
    pub fn geometry(
        &self,
        shape: [usize; 4],
        spacing: [f64; 3],
        affine: &Affine,
    ) -> ([usize; 4], [f64; 3], Affine) {
        let [c, x, y, z] = shape;
        let dims = [x, y, z];
        let out = self.out_dims(dims);
        // Input voxel index = M · output index + t.
        let mut moved = *affine;
        for (r, row) in moved.iter_mut().enumerate().take(3) {
            let cols = [affine[r][0], affine[r][1], affine[r][2]];
            for a in 0..3 {
                let p = self.perm[a];
                if self.flip[a] {
                    row[3] += cols[p] * (dims[p] as f64 - 1.0);
                    row[a] = -cols[p];
                } else {
                    row[a] = cols[p];
                }
            }
        }
        (
            [c, out[0], out[1], out[2]],
            self.perm.map(|p| spacing[p]),
            moved,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transforms::orientation::flip_spatial;
    use crate::transforms::permute_in_plane_first::permute_spatial;
    use crate::transforms::rand_flip_rotate::rot90;

    /// Voxel by voxel, as the gather was first written.
    fn gather_voxelwise(map: &AxisMap, img: &Image) -> Vec<f32> {
        let [c, x, y, z] = img.shape;
        let out = map.out_dims([x, y, z]);
        let (origin, step) = map.walk([x, y, z]);
        let mut data = Vec::new();
        for ch in 0..c {
            let base = (ch * x * y * z) as isize + origin;
            for k in 0..out[2] as isize {
                for j in 0..out[1] as isize {
                    let row = base + k * step[2] + j * step[1];
                    data.extend(
                        (0..out[0] as isize).map(|i| img.data[(row + i * step[0]) as usize]),
                    );
                }
            }
        }
        data
    }

    /// All 48 signed permutations, on shapes that leave partial tiles.
    #[test]
    fn row_and_tiled_gathers_equal_the_voxelwise_one() {
        let perms = [
            [0, 1, 2],
            [0, 2, 1],
            [1, 0, 2],
            [1, 2, 0],
            [2, 0, 1],
            [2, 1, 0],
        ];
        for shape in [[2, 37, 20, 18], [1, 16, 33, 5], [1, 1, 7, 3]] {
            let mut img = Image::ramp(shape);
            img.data
                .iter_mut()
                .enumerate()
                .for_each(|(i, v)| *v = (i * 31 % 1013) as f32);
            for perm in perms {
                for f in 0..8 {
                    let map = AxisMap {
                        perm,
                        flip: [f & 1 == 1, f & 2 == 2, f & 4 == 4],
                    };
                    assert_eq!(
                        map.gather(&img),
                        gather_voxelwise(&map, &img),
                        "{map:?} {shape:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn maps_equal_the_step_by_step_transforms_and_compose() {
        let mut img = Image::ramp([2, 3, 4, 5]);
        img.affine[0][1] = 0.5;
        img.affine[2][3] = 7.0;
        for flip in [[true, false, false], [false, true, true], [true; 3]] {
            assert_eq!(AxisMap::flip(flip).apply(&img), flip_spatial(&img, flip));
        }
        for axes in [(0, 1), (1, 2), (0, 2), (2, 1)] {
            for k in 0..4 {
                assert_eq!(
                    AxisMap::rot90(k, axes).apply(&img),
                    rot90(&img, k, axes),
                    "{k} {axes:?}"
                );
            }
        }
        // A chain: flip x, rot90 (0,1), flip z, rot90 x3 in (1,2), permute.
        let chain = [
            AxisMap::flip([true, false, false]),
            AxisMap::rot90(1, (0, 1)),
            AxisMap::flip([false, false, true]),
            AxisMap::rot90(3, (1, 2)),
            AxisMap {
                perm: [2, 0, 1],
                flip: [false; 3],
            },
        ];
        let mut step_by_step = img.clone();
        let mut composed = AxisMap::IDENTITY;
        for m in chain {
            step_by_step = m.apply(&step_by_step);
            composed = composed.then(m);
        }
        assert_eq!(composed.apply(&img), step_by_step);
        let permuted = permute_spatial(&img, [2, 0, 1]);
        assert_eq!(
            AxisMap {
                perm: [2, 0, 1],
                flip: [false; 3]
            }
            .apply(&img),
            permuted
        );
    }
}
