//! `Image`: the float32 working form of a volume inside the transform chain.
//!
//! Same layout as [`Volume`]: logical `(C, X, Y, Z)`, memory x-fastest, so
//! converting never transposes. Scaling (`scl_slope`/`scl_inter`) is applied on
//! conversion, as MONAI's `LoadImage` does.

use crate::nifti::affine::Affine;
use crate::volume::Volume;

/// A channel-first float32 volume with its geometry.
#[derive(Debug, Clone, PartialEq)]
pub struct Image {
    /// Voxels, memory order x fastest, then y, z, channel.
    pub data: Vec<f32>,
    /// `(C, X, Y, Z)`.
    pub shape: [usize; 4],
    /// Voxel sizes of the three spatial axes.
    pub spacing: [f64; 3],
    /// Voxel-to-world affine.
    pub affine: Affine,
}

impl Image {
    /// The scaled float32 voxels of `vol`.
    pub fn from_volume(vol: &Volume) -> Image {
        Image {
            data: vol.to_f32(),
            shape: vol.shape,
            spacing: vol.spacing,
            affine: vol.affine,
        }
    }

    /// Voxels per channel.
    pub fn spatial_len(&self) -> usize {
        self.shape[1] * self.shape[2] * self.shape[3]
    }

    /// Flat index of `(c, i, j, k)`.
    pub fn index(&self, c: usize, i: usize, j: usize, k: usize) -> usize {
        let [_, x, y, z] = self.shape;
        ((c * z + k) * y + j) * x + i
    }

    /// `c` channels of voxels laid along x (y = z = 1), identity geometry: the
    /// small hand-computed cases of the transform tests.
    #[cfg(test)]
    pub(crate) fn row(data: Vec<f32>, c: usize) -> Image {
        let n = data.len() / c;
        Image {
            data,
            shape: [c, n, 1, 1],
            spacing: [1.0; 3],
            affine: crate::nifti::affine::IDENTITY,
        }
    }

    /// Voxels numbered 0, 1, 2, ... in memory order, spacing (1, 2, 3), identity
    /// affine: makes every move of a voxel visible in the transform tests.
    #[cfg(test)]
    pub(crate) fn ramp(shape: [usize; 4]) -> Image {
        let n: usize = shape.iter().product();
        Image {
            data: (0..n).map(|v| v as f32).collect(),
            shape,
            spacing: [1.0, 2.0, 3.0],
            affine: crate::nifti::affine::IDENTITY,
        }
    }

    /// Deterministic pseudo-random voxels in [−1, 1] (xorshift), identity
    /// geometry: the filter tests' inputs.
    #[cfg(test)]
    pub(crate) fn noise(shape: [usize; 4], seed: u64) -> Image {
        let mut img = Image::ramp(shape);
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        for v in &mut img.data {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            *v = (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0;
        }
        img
    }

    /// The value at `(c, i, j, k)`.
    pub fn at(&self, c: usize, i: usize, j: usize, k: usize) -> f32 {
        self.data[self.index(c, i, j, k)]
    }
}
