//! 3DINO's `RandomResizedCrop3d` (3dino-reference.md §3.4), on a volume whose
//! in-plane axes come first (after `PermuteInPlaneFirst`): axes 0 and 1 (H, W)
//! are the slice plane, axis 2 (D) crosses slices.
//!
//! 1. In-plane: up to 10 tries of area = H·W·U(scale), ratio r = exp(U(ln
//!    ratio)), w = round(√(area·r)), h = round(√(area/r)), accepted when
//!    0 < w ≤ W and 0 < h ≤ H. Otherwise torchvision's fallback: W/H below the
//!    ratio range → w = W, h = round(W / r_min); above → h = H,
//!    w = round(H·r_max); else the whole plane.
//! 2. Depth d = round(D·U(depth_scale)).
//! 3. Sizes clipped to the volume (0 means the whole axis); corner uniform in
//!    `[0, dim − size]` per axis.
//! 4. Trilinear resize to `size³` (`align_corners=False`); anisotropic boxes are
//!    squashed into cubes.
//!
//! `round` is Python's (ties to even). The crop and resize are one pass
//! ([`resize_box`]): the box is never copied out.

use rand::Rng;

use super::image::Image;
use super::resize::{ResizeMode, resize_box};
use crate::exec::op::{Op, Role, StepRng};
use crate::transforms::TransformError;
use crate::transforms::spec::{
    Args, FRACTION, KEYS, ParamDefault, ParamKind, TransformSpec, param,
};
use crate::transforms::spec::{Params, requested_size};

/// Parameters of one crop family (global or local views).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RandomResizedCrop3d {
    /// Output edge length (voxels).
    pub size: usize,
    /// In-slice area fraction range.
    pub in_slice_scale: (f64, f64),
    /// Cross-slice length fraction range.
    pub cross_slice_scale: (f64, f64),
    /// Aspect ratio range (log-uniform).
    pub ratio: (f64, f64),
}

impl RandomResizedCrop3d {
    /// 3DINO's global crops at `size` (96, or 112 for high resolution).
    pub fn global(size: usize) -> RandomResizedCrop3d {
        RandomResizedCrop3d {
            size,
            in_slice_scale: (0.48, 1.0),
            cross_slice_scale: (0.5, 1.0),
            ratio: (0.9, 1.0 / 0.9),
        }
    }

    /// 3DINO's local crops at `size` (48, or 64 for high resolution).
    pub fn local(size: usize) -> RandomResizedCrop3d {
        RandomResizedCrop3d {
            size,
            in_slice_scale: (0.16, 0.48),
            cross_slice_scale: (0.2, 0.5),
            ratio: (0.9, 1.0 / 0.9),
        }
    }

    /// Draws the box `(start, extent)` for a volume of spatial shape `dims`.
    pub fn draw_box(&self, dims: [usize; 3], rng: &mut impl Rng) -> ([usize; 3], [usize; 3]) {
        let [hp, wp, dp] = dims;
        let (h, w) = self.plane_size(hp, wp, rng);
        let d = py_round(dp as f64 * uniform(rng, self.cross_slice_scale));
        let mut extent = [h, w, d];
        let mut start = [0; 3];
        for a in 0..3 {
            // MONAI's get_valid_patch_size: 0 means the whole axis.
            if extent[a] == 0 || extent[a] > dims[a] {
                extent[a] = dims[a];
            }
            start[a] = rng.random_range(0..=dims[a] - extent[a]);
        }
        (start, extent)
    }

    fn plane_size(&self, hp: usize, wp: usize, rng: &mut impl Rng) -> (usize, usize) {
        let area = (hp * wp) as f64;
        let log_ratio = (self.ratio.0.ln(), self.ratio.1.ln());
        for _ in 0..10 {
            let target = area * uniform(rng, self.in_slice_scale);
            let r = uniform(rng, log_ratio).exp();
            let w = py_round((target * r).sqrt());
            let h = py_round((target / r).sqrt());
            if 0 < w && w <= wp && 0 < h && h <= hp {
                return (h, w);
            }
        }
        let in_ratio = wp as f64 / hp as f64;
        if in_ratio < self.ratio.0 {
            (py_round(wp as f64 / self.ratio.0), wp)
        } else if in_ratio > self.ratio.1 {
            (hp, py_round(hp as f64 * self.ratio.1))
        } else {
            (hp, wp)
        }
    }

    /// Crops and resizes `img` (all channels) to `size³`.
    pub fn apply(&self, img: &Image, rng: &mut impl Rng) -> Image {
        let dims = [img.shape[1], img.shape[2], img.shape[3]];
        let (start, extent) = self.draw_box(dims, rng);
        resize_box(img, start, extent, [self.size; 3], ResizeMode::Trilinear)
    }
}

fn uniform(rng: &mut impl Rng, (lo, hi): (f64, f64)) -> f64 {
    lo + (hi - lo) * rng.random::<f64>()
}

/// Python 3's `int(round(x))` for x ≥ 0: ties go to the even integer.
fn py_round(x: f64) -> usize {
    x.round_ties_even().max(0.0) as usize
}

impl Op for RandomResizedCrop3d {
    fn apply(
        &self,
        img: &mut Image,
        rng: &mut StepRng,
        is_label: bool,
    ) -> Result<(), TransformError> {
        if is_label {
            return Err(TransformError::LabelsUnsupported {
                transform: "RandomResizedCrop3d",
            });
        }
        *img = RandomResizedCrop3d::apply(self, img, rng);
        Ok(())
    }

    fn role(&self) -> Role {
        Role::Crop
    }

    fn crop_of(&self, img: &Image, rng: &mut StepRng) -> Option<Image> {
        Some(RandomResizedCrop3d::apply(self, img, rng))
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// Always `size`³.
fn resized_crop_size(params: &Params, _: Option<[u64; 3]>) -> Option<[u64; 3]> {
    requested_size(params, "size", None)
}

/// The recipe's `RandomResizedCrop3d`.
pub const SPEC: TransformSpec = TransformSpec {
    name: "RandomResizedCrop3d",
    is_random: true,
    params: &[
        KEYS,
        param(
            "size",
            ParamKind::Int { min: 1, max: 4096 },
            ParamDefault::Required,
        ),
        param("in_slice_scale", FRACTION, ParamDefault::Required),
        param("cross_slice_scale", FRACTION, ParamDefault::Required),
        param(
            "ratio",
            ParamKind::Range {
                min: 1e-3,
                max: 1e3,
            },
            ParamDefault::Pair(0.9, 1.0 / 0.9),
        ),
    ],
    summary: "3DINO's crop: random in-plane area, depth and aspect, resized to size^3",
    check: None,
    nests: false,
    output_size: resized_crop_size,
    build: |a: &Args<'_>| {
        Ok(Box::new(RandomResizedCrop3d {
            size: a.count("size")?,
            in_slice_scale: a.pair("in_slice_scale")?,
            cross_slice_scale: a.pair("cross_slice_scale")?,
            ratio: a.pair("ratio")?,
        }))
    },
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transforms::rng::DrawKey;

    fn key(sample: u64) -> rand_chacha::ChaCha8Rng {
        DrawKey {
            sample,
            ..DrawKey::default()
        }
        .rng()
    }

    #[test]
    fn python_rounding_ties_to_even() {
        assert_eq!([0.5, 1.5, 2.5, 2.51, 3.49].map(py_round), [0, 2, 2, 3, 3]);
    }

    #[test]
    fn boxes_follow_the_scale_and_aspect_ranges_and_stay_inside() {
        let dims = [200, 180, 90];
        for (crop, area, depth) in [
            (RandomResizedCrop3d::global(96), (0.48, 1.0), (0.5, 1.0)),
            (RandomResizedCrop3d::local(48), (0.16, 0.48), (0.2, 0.5)),
        ] {
            let (mut min_area, mut max_area) = (f64::MAX, 0f64);
            let mut starts_seen = std::collections::BTreeSet::new();
            for s in 0..4000 {
                let (start, extent) = crop.draw_box(dims, &mut key(s));
                for a in 0..3 {
                    assert!(extent[a] > 0 && start[a] + extent[a] <= dims[a]);
                }
                let frac = (extent[0] * extent[1]) as f64 / (dims[0] * dims[1]) as f64;
                // Rounding of h and w moves the area by at most ~1 voxel row.
                assert!(frac > area.0 - 0.02 && frac < area.1 + 0.02, "{frac}");
                if extent[0] < dims[0] && extent[1] < dims[1] {
                    let r = extent[1] as f64 / extent[0] as f64;
                    assert!(r > 0.9 - 0.02 && r < 1.0 / 0.9 + 0.02, "ratio {r}");
                }
                let d = extent[2] as f64 / dims[2] as f64;
                assert!(d >= depth.0 - 0.01 && d <= depth.1 + 0.01, "depth {d}");
                min_area = min_area.min(frac);
                max_area = max_area.max(frac);
                starts_seen.insert(start[2]);
            }
            // The whole range is explored.
            assert!(
                min_area < area.0 + 0.03 && max_area > area.1 - 0.06,
                "{min_area} {max_area}"
            );
            assert!(starts_seen.contains(&0));
        }
    }

    #[test]
    fn corners_are_uniform() {
        // Plane 10 x 10 with scale 1 and ratio 1: the plane is whole; depth 4 of 10
        // leaves 7 start positions.
        let crop = RandomResizedCrop3d {
            size: 4,
            in_slice_scale: (1.0, 1.0),
            cross_slice_scale: (0.4, 0.4),
            ratio: (1.0, 1.0),
        };
        let mut counts = [0usize; 7];
        for s in 0..7000 {
            let (start, extent) = crop.draw_box([10, 10, 10], &mut key(s));
            assert_eq!(extent, [10, 10, 4]);
            assert_eq!(&start[..2], &[0, 0]);
            counts[start[2]] += 1;
        }
        assert!(
            counts.iter().all(|&n| (850..1150).contains(&n)),
            "{counts:?}"
        );
    }

    #[test]
    fn fallback_uses_torchvisions_rule() {
        // A very flat plane (W/H = 5) cannot host ratios near 1 at area 1.
        let crop = RandomResizedCrop3d {
            size: 8,
            in_slice_scale: (1.0, 1.0),
            cross_slice_scale: (1.0, 1.0),
            ratio: (0.9, 1.0 / 0.9),
        };
        let (start, extent) = crop.draw_box([20, 100, 5], &mut key(1));
        assert_eq!(extent, [20, 22, 5]); // h = H, w = round(20 / 0.9) = 22
        assert_eq!(start[0], 0);
        let (_, tall) = crop.draw_box([100, 20, 5], &mut key(1));
        assert_eq!(tall, [22, 20, 5]); // w = W, h = round(20 / 0.9)
    }

    #[test]
    fn output_is_a_cube_resampled_from_the_drawn_box() {
        let img = Image::ramp([1, 30, 20, 10]);
        let crop = RandomResizedCrop3d::local(6);
        let out = crop.apply(&img, &mut key(3));
        assert_eq!(out.shape, [1, 6, 6, 6]);
        let (start, extent) = crop.draw_box([30, 20, 10], &mut key(3));
        assert_eq!(
            out,
            resize_box(&img, start, extent, [6; 3], ResizeMode::Trilinear)
        );
        // A ramp is linear, so every value lies in the box's value range.
        let lo = img.at(0, start[0], start[1], start[2]);
        let hi = img.at(
            0,
            start[0] + extent[0] - 1,
            start[1] + extent[1] - 1,
            start[2] + extent[2] - 1,
        );
        assert!(out.data.iter().all(|&v| v >= lo - 1e-3 && v <= hi + 1e-3));
    }
}
