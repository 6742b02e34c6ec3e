//! `Array`: what the cache stores and gives back, a channel-first float32
//! array with its geometry. The cache knows nothing of where it came from.

/// A voxel-to-world affine, row-major 4×4.
pub type Affine = [[f64; 4]; 4];

/// A channel-first `(C, X, Y, Z)` float32 array, x fastest in memory, with
/// its voxel sizes and voxel-to-world affine.
#[derive(Debug, Clone, PartialEq)]
pub struct Array {
    /// Values, x fastest, then y, z, channel.
    pub data: Vec<f32>,
    /// `(C, X, Y, Z)`.
    pub shape: [usize; 4],
    /// Voxel sizes of the three spatial axes.
    pub spacing: [f64; 3],
    /// Voxel-to-world affine.
    pub affine: Affine,
}

impl Array {
    /// Flat index of `(c, i, j, k)`.
    pub fn index(&self, c: usize, i: usize, j: usize, k: usize) -> usize {
        let [_, x, y, z] = self.shape;
        ((c * z + k) * y + j) * x + i
    }
}

/// The affine of the box starting at voxel `start` of an array whose affine
/// is `affine` (its origin moves to that voxel).
pub(crate) fn shifted(mut affine: Affine, start: [usize; 3]) -> Affine {
    for row in affine.iter_mut().take(3) {
        row[3] += (0..3).map(|a| row[a] * start[a] as f64).sum::<f64>();
    }
    affine
}
