//! Geometry as ITK gives it, turned into the RAS affine MONAI reports.
//!
//! ITK (MetaImage, NRRD) works in LPS: each image axis has a direction vector
//! times a spacing, plus an origin. MONAI's `ITKReader` builds the affine from
//! the first (up to) three axes and, with `affine_lps_to_ras=True` (its
//! default), negates the first two rows. That is all done here, once for both
//! formats.

use crate::error::{Error, Result};
use crate::nifti::affine::{Affine, IDENTITY};

/// Voxel axis vectors and origin in LPS, as a header states them.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LpsGeometry {
    /// One vector per spatial axis (direction times spacing), world-LPS
    /// components.
    pub axes: Vec<Vec<f64>>,
    /// ITK's spacing per spatial axis.
    pub spacing: Vec<f64>,
    /// The world position of voxel 0, LPS.
    pub origin: Vec<f64>,
}

impl LpsGeometry {
    /// MONAI's RAS affine (4x4; a 2-D image fills the top-left 2x2 and keeps
    /// z as identity) and the spacing of the first three axes (1 past the
    /// image's rank).
    pub(crate) fn to_ras(&self) -> (Affine, [f64; 3]) {
        let sr = self.axes.len().min(3);
        let mut m = IDENTITY;
        for (c, axis) in self.axes.iter().take(sr).enumerate() {
            for (r, row) in m.iter_mut().take(sr).enumerate() {
                row[c] = axis.get(r).copied().unwrap_or(0.0);
            }
        }
        for (r, row) in m.iter_mut().take(sr).enumerate() {
            row[3] = self.origin.get(r).copied().unwrap_or(0.0);
        }
        // LPS -> RAS: x and y change sign.
        for row in m.iter_mut().take(sr.min(2)) {
            for v in row.iter_mut() {
                *v = -*v;
            }
        }
        let mut spacing = [1.0; 3];
        for (s, v) in spacing.iter_mut().zip(&self.spacing) {
            *s = *v;
        }
        (m, spacing)
    }

    /// [`Self::to_ras`], refused when a value is not finite (a header of
    /// `path` with NaN or infinite spacing, directions or origin).
    pub(crate) fn to_finite_ras(&self, path: &std::path::Path) -> Result<(Affine, [f64; 3])> {
        let (affine, spacing) = self.to_ras();
        if affine
            .iter()
            .flatten()
            .chain(&spacing)
            .any(|v| !v.is_finite())
        {
            return Err(Error::format(
                path,
                format!("the geometry holds a non-finite value: affine {affine:?}"),
            ));
        }
        Ok((affine, spacing))
    }
}

/// Euclidean length of a vector.
pub(crate) fn norm(v: &[f64]) -> f64 {
    v.iter().map(|x| x * x).sum::<f64>().sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lps_becomes_ras_with_x_and_y_negated() {
        let g = LpsGeometry {
            axes: vec![
                vec![2.0, 0.0, 0.0],
                vec![0.0, 3.0, 0.0],
                vec![0.0, 0.0, 4.0],
            ],
            spacing: vec![2.0, 3.0, 4.0],
            origin: vec![10.0, 20.0, 30.0],
        };
        let (m, s) = g.to_ras();
        assert_eq!(m[0], [-2.0, 0.0, 0.0, -10.0]);
        assert_eq!(m[1], [0.0, -3.0, 0.0, -20.0]);
        assert_eq!(m[2], [0.0, 0.0, 4.0, 30.0]);
        assert_eq!(s, [2.0, 3.0, 4.0]);
    }

    #[test]
    fn a_2d_image_keeps_z_as_identity() {
        let g = LpsGeometry {
            axes: vec![vec![0.0, 1.0], vec![-1.0, 0.0]],
            spacing: vec![1.0, 1.0],
            origin: vec![5.0, 6.0],
        };
        let (m, s) = g.to_ras();
        assert_eq!(m[0], [0.0, 1.0, 0.0, -5.0]);
        assert_eq!(m[1], [-1.0, 0.0, 0.0, -6.0]);
        assert_eq!(m[2], [0.0, 0.0, 1.0, 0.0]);
        assert_eq!(s, [1.0, 1.0, 1.0]);
    }
}
