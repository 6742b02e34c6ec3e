//! `PermuteInPlaneFirst`: 3DINO's "spacing awareness" (its transform 5, first
//! half). The two in-plane axes go first and the slice axis last, decided from
//! the spacing with an absolute tolerance of 0.01, tested in this order:
//! `|s0 - s1|` keeps (0, 1, 2); `|s0 - s2|` gives (0, 2, 1); `|s1 - s2|` gives
//! (1, 2, 0); otherwise it is an error. Without spacing the shape is tested the
//! same way. Only axes move: no resampling.

use super::error::TransformError;
use super::image::Image;
use crate::exec::op::{Op, StepRng, empty_image};
use crate::transforms::spec::size_from_data;
use crate::transforms::spec::{Args, KEYS, ParamDefault, ParamKind, TransformSpec, param};

/// The axis order 3DINO chooses for `values` (spacings or sizes).
///
/// # Errors
/// When no two of the three values are within 0.01.
pub fn in_plane_first_order(values: [f64; 3]) -> Result<[usize; 3], TransformError> {
    let close = |a: f64, b: f64| (a - b).abs() < 1e-2;
    if close(values[0], values[1]) {
        Ok([0, 1, 2])
    } else if close(values[0], values[2]) {
        Ok([0, 2, 1])
    } else if close(values[1], values[2]) {
        Ok([1, 2, 0])
    } else {
        Err(TransformError::NoSliceAxis { values })
    }
}

/// Reorders the spatial axes: output axis `a` is input axis `order[a]`.
/// Spacing and affine columns move with them.
pub fn permute_spatial(img: &Image, order: [usize; 3]) -> Image {
    if order == [0, 1, 2] {
        return img.clone();
    }
    let [c, x, y, z] = img.shape;
    let src = [x, y, z];
    let out_dims = order.map(|a| src[a]);
    // Input strides of the three axes, listed in output order.
    let in_stride = [1, x, x * y];
    let s = order.map(|a| in_stride[a]);
    let mut data = Vec::with_capacity(img.data.len());
    for ch in 0..c {
        let base = ch * x * y * z;
        for k in 0..out_dims[2] {
            for j in 0..out_dims[1] {
                let row = base + k * s[2] + j * s[1];
                data.extend((0..out_dims[0]).map(|i| img.data[row + i * s[0]]));
            }
        }
    }
    let mut affine = img.affine;
    for (r, row) in affine.iter_mut().enumerate().take(3) {
        let cols = [img.affine[r][0], img.affine[r][1], img.affine[r][2]];
        for a in 0..3 {
            row[a] = cols[order[a]];
        }
    }
    Image {
        data,
        shape: [c, out_dims[0], out_dims[1], out_dims[2]],
        spacing: order.map(|a| img.spacing[a]),
        affine,
    }
}

/// Applies 3DINO's rule to `img`, from its spacing (or its shape when `use_shape`).
/// Volumes already in order are returned as they are, without a copy.
///
/// # Errors
/// See [`in_plane_first_order`].
pub fn permute_in_plane_first(img: Image, use_shape: bool) -> Result<Image, TransformError> {
    let values = if use_shape {
        [img.shape[1], img.shape[2], img.shape[3]].map(|v| v as f64)
    } else {
        img.spacing
    };
    match in_plane_first_order(values)? {
        [0, 1, 2] => Ok(img),
        order => Ok(permute_spatial(&img, order)),
    }
}

/// `PermuteInPlaneFirst`: 3DINO's axis permutation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PermuteInPlaneFirst {
    /// Decide from the shape instead of the spacing.
    pub use_shape: bool,
}

impl Op for PermuteInPlaneFirst {
    fn apply(&self, img: &mut Image, _: &mut StepRng, _: bool) -> Result<(), TransformError> {
        let taken = std::mem::replace(img, empty_image());
        *img = permute_in_plane_first(taken, self.use_shape)?;
        Ok(())
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// The recipe's `PermuteInPlaneFirst`.
pub const SPEC: TransformSpec = TransformSpec {
    name: "PermuteInPlaneFirst",
    is_random: false,
    params: &[
        KEYS,
        param(
            "from",
            ParamKind::Choice(&["spacing", "shape"]),
            ParamDefault::Str("spacing"),
        ),
    ],
    summary: "3DINO's axis permutation: in-plane axes first, slice axis last",
    check: None,
    nests: false,
    output_size: size_from_data,
    build: |a: &Args<'_>| {
        Ok(Box::new(PermuteInPlaneFirst {
            use_shape: a.text("from")? == "shape",
        }))
    },
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nifti::affine::IDENTITY;

    #[test]
    fn the_order_follows_3dinos_tests() {
        assert_eq!(in_plane_first_order([0.8, 0.8, 2.5]), Ok([0, 1, 2]));
        assert_eq!(in_plane_first_order([0.8, 2.5, 0.805]), Ok([0, 2, 1]));
        assert_eq!(in_plane_first_order([3.0, 0.7, 0.7]), Ok([1, 2, 0]));
        assert_eq!(in_plane_first_order([1.0, 1.0, 1.0]), Ok([0, 1, 2]));
        assert!(in_plane_first_order([1.0, 2.0, 3.0]).is_err());
    }

    #[test]
    fn permuting_moves_voxels_spacing_and_affine_together() {
        let (x, y, z) = (2, 3, 4);
        let data: Vec<f32> = (0..2 * x * y * z).map(|v| v as f32).collect();
        let mut affine = IDENTITY;
        affine[0][0] = 0.5;
        affine[1][1] = 2.5;
        affine[2][2] = 0.6;
        let img = Image {
            data,
            shape: [2, x, y, z],
            spacing: [0.5, 2.5, 0.6],
            affine,
        };
        // No two spacings within 0.01: 3DINO refuses the volume, so do we.
        assert!(permute_in_plane_first(img.clone(), false).is_err());
        // Sizes (2, 3, 4) are all different too.
        assert!(permute_in_plane_first(img.clone(), true).is_err());
        let p = permute_spatial(&img, [1, 2, 0]);
        assert_eq!(p.shape, [2, y, z, x]);
        assert_eq!(p.spacing, [2.5, 0.6, 0.5]);
        assert_eq!(p.affine[1][0], 2.5);
        assert_eq!(p.affine[0][2], 0.5);
        for c in 0..2 {
            for i in 0..x {
                for j in 0..y {
                    for k in 0..z {
                        // Output (j, k, i) holds input (i, j, k).
                        assert_eq!(p.at(c, j, k, i), img.at(c, i, j, k));
                    }
                }
            }
        }
        // The voxel-to-world map is unchanged: world(out index) == world(in index).
        let back = permute_spatial(&permute_spatial(&img, [0, 2, 1]), [0, 2, 1]);
        assert_eq!(back, img);
    }
}
