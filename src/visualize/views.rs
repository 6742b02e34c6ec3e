//! Axial, coronal and sagittal slices laid out for the screen.
//!
//! Which voxel axis is which comes from the affine's axis codes (nibabel's
//! `aff2axcodes`), so a volume stored in any orientation is shown the same
//! way, with nilearn's convention: the patient's right on the right in axial
//! and coronal views, anterior on the left in sagittal views, superior (or,
//! in axial views, anterior) at the top. Pixels are square in millimetres:
//! each axis is sampled (nearest voxel) at the same pixel size.

use dino3d_pipeline::nifti::affine::{Affine, axcodes};

/// A slicing direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum View {
    /// Slices across the inferior–superior axis.
    Axial,
    /// Slices across the posterior–anterior axis.
    Coronal,
    /// Slices across the left–right axis.
    Sagittal,
}

impl View {
    /// The three views, in the montages' order.
    pub(crate) const ALL: [View; 3] = [View::Axial, View::Coronal, View::Sagittal];
}

/// One screen axis: the voxel axis drawn along it and whether voxel indices
/// run against the screen direction (left→right, top→bottom).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ScreenAxis {
    voxel_axis: usize,
    reversed: bool,
}

/// How a view maps voxel axes to the screen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Plane {
    /// The voxel axis the slices are taken across.
    pub(crate) normal: usize,
    across: ScreenAxis,
    down: ScreenAxis,
}

/// The layout of `view` for a volume with voxel-to-world `affine`.
pub(crate) fn plane(view: View, affine: &Affine) -> Plane {
    let codes = axcodes(affine);
    // For each world axis (R, A, S): the voxel axis along it, and whether
    // voxel indices grow toward R, A or S.
    let find = |pos: char, neg: char| {
        let axis = codes
            .iter()
            .position(|&c| c == pos || c == neg)
            .expect("axis codes name every world axis");
        (axis, codes[axis] == pos)
    };
    let (r_axis, toward_r) = find('R', 'L');
    let (a_axis, toward_a) = find('A', 'P');
    let (s_axis, toward_s) = find('S', 'I');
    // Screen x grows to the right: R on the right, A on the left (sagittal).
    // Screen y grows downward: S (or A) at the top.
    let right = ScreenAxis {
        voxel_axis: r_axis,
        reversed: !toward_r,
    };
    match view {
        View::Axial => Plane {
            normal: s_axis,
            across: right,
            down: ScreenAxis {
                voxel_axis: a_axis,
                reversed: toward_a,
            },
        },
        View::Coronal => Plane {
            normal: a_axis,
            across: right,
            down: ScreenAxis {
                voxel_axis: s_axis,
                reversed: toward_s,
            },
        },
        View::Sagittal => Plane {
            normal: r_axis,
            across: ScreenAxis {
                voxel_axis: a_axis,
                reversed: toward_a,
            },
            down: ScreenAxis {
                voxel_axis: s_axis,
                reversed: toward_s,
            },
        },
    }
}

/// The voxels of one slice as screen pixels, row-major from the top left.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SliceRaster {
    /// Pixels per row.
    pub(crate) width: usize,
    /// Rows.
    pub(crate) height: usize,
    /// The voxel `[i, j, k]` shown at each pixel.
    pub(crate) voxels: Vec<[usize; 3]>,
}

/// The display box `[lo, hi)` and its pixel size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Frame {
    /// First voxel shown on each axis.
    pub(crate) lo: [usize; 3],
    /// One past the last voxel shown on each axis.
    pub(crate) hi: [usize; 3],
    /// Voxel sizes in mm.
    pub(crate) spacing: [f64; 3],
    /// Pixel size in mm.
    pub(crate) mm_per_pixel: f64,
}

impl Frame {
    /// A frame for the box `[lo, hi)` whose longest side spans at least
    /// `min_pixels` pixels (never coarser than the finest voxel size).
    pub(crate) fn new(
        lo: [usize; 3],
        hi: [usize; 3],
        spacing: [f64; 3],
        min_pixels: usize,
    ) -> Self {
        let finest = spacing.iter().copied().fold(f64::INFINITY, f64::min);
        let longest = (0..3)
            .map(|a| (hi[a] - lo[a]) as f64 * spacing[a])
            .fold(0.0, f64::max);
        let mm_per_pixel = finest.min(longest / min_pixels.max(1) as f64);
        Frame {
            lo,
            hi,
            spacing,
            mm_per_pixel,
        }
    }

    /// Voxel index along `axis` for each screen pixel of that axis.
    fn samples(&self, axis: ScreenAxis) -> Vec<usize> {
        let a = axis.voxel_axis;
        let len = self.hi[a] - self.lo[a];
        let pixels = ((len as f64 * self.spacing[a] / self.mm_per_pixel).round() as usize).max(1);
        (0..pixels)
            .map(|p| {
                let off = (((p as f64 + 0.5) * self.mm_per_pixel / self.spacing[a]) as usize)
                    .min(len - 1);
                if axis.reversed {
                    self.hi[a] - 1 - off
                } else {
                    self.lo[a] + off
                }
            })
            .collect()
    }

    /// The middle slice of `plane` in this frame.
    pub(crate) fn middle(&self, plane: &Plane) -> usize {
        (self.lo[plane.normal] + self.hi[plane.normal]) / 2
    }

    /// The pixels of slice `index` (a voxel index along `plane.normal`).
    pub(crate) fn raster(&self, plane: &Plane, index: usize) -> SliceRaster {
        let cols = self.samples(plane.across);
        let rows = self.samples(plane.down);
        let mut voxels = Vec::with_capacity(cols.len() * rows.len());
        for &r in &rows {
            for &c in &cols {
                let mut v = [0; 3];
                v[plane.normal] = index;
                v[plane.across.voxel_axis] = c;
                v[plane.down.voxel_axis] = r;
                voxels.push(v);
            }
        }
        SliceRaster {
            width: cols.len(),
            height: rows.len(),
            voxels,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dino3d_pipeline::nifti::affine::IDENTITY;

    #[test]
    fn views_follow_the_axis_codes() {
        // RAS: axial slices across k, R to the right (i grows), A at the top.
        let ras = IDENTITY;
        let p = plane(View::Axial, &ras);
        assert_eq!(p.normal, 2);
        let f = Frame::new([0; 3], [3, 2, 4], [1.0; 3], 1);
        let r = f.raster(&p, 1);
        assert_eq!((r.width, r.height), (3, 2));
        assert_eq!(r.voxels[0], [0, 1, 1], "top left: left-most, most anterior");
        assert_eq!(r.voxels[5], [2, 0, 1], "bottom right");
        // LSA (the ITK test brain's codes): i → L, j → S, k → A.
        let mut lsa = [[0.0; 4]; 4];
        lsa[0][0] = -1.0;
        lsa[2][1] = 1.0;
        lsa[1][2] = 1.0;
        lsa[3][3] = 1.0;
        assert_eq!(plane(View::Axial, &lsa).normal, 1);
        assert_eq!(plane(View::Coronal, &lsa).normal, 2);
        assert_eq!(plane(View::Sagittal, &lsa).normal, 0);
        let p = plane(View::Coronal, &lsa);
        let f = Frame::new([0; 3], [3, 2, 4], [1.0; 3], 1);
        let r = f.raster(&p, 0);
        // Across: i reversed (R on the right means i falls to the right);
        // down: j reversed (S at the top).
        assert_eq!((r.width, r.height), (3, 2));
        assert_eq!(r.voxels[0], [2, 1, 0]);
        assert_eq!(r.voxels[5], [0, 0, 0]);
    }

    #[test]
    fn pixels_are_square_in_millimetres_and_small_boxes_are_enlarged() {
        // 2 mm × 1 mm voxels: the 2 mm axis gets two pixels per voxel.
        let f = Frame::new([0; 3], [4, 4, 4], [2.0, 1.0, 1.0], 1);
        assert_eq!(f.mm_per_pixel, 1.0);
        let r = f.raster(&plane(View::Axial, &IDENTITY), 0);
        assert_eq!((r.width, r.height), (8, 4));
        assert_eq!(
            r.voxels[..4].iter().map(|v| v[0]).collect::<Vec<_>>(),
            [0, 0, 1, 1]
        );
        // A 4-voxel box shown at least 16 pixels wide.
        let f = Frame::new([0; 3], [4, 4, 4], [1.0; 3], 16);
        assert_eq!(f.raster(&plane(View::Axial, &IDENTITY), 0).width, 16);
        assert_eq!(f.middle(&plane(View::Axial, &IDENTITY)), 2);
    }
}
