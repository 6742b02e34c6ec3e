//! `RandFlip` and `RandRotate90` with MONAI's semantics.
//!
//! * `RandFlip(prob, spatial_axis)`: with probability `prob`, reverse the given
//!   spatial axes (`None`: all three at once).
//! * `RandRotate90(prob, max_k, spatial_axes)`: with probability `prob`, rotate
//!   the plane `spatial_axes` by `k` quarter turns, `k` uniform in `1..=max_k`,
//!   in the direction of `torch.rot90` (from the first axis towards the second).
//!
//! Both only move voxels; the affine follows so world positions are kept.

use rand::Rng;

use super::image::Image;
use super::orientation::flip_spatial;
use super::permute_in_plane_first::permute_spatial;
use crate::exec::op::{Op, Role, StepRng};
use crate::recipe::value::ParamValue;
use crate::transforms::AxisMap;
use crate::transforms::TransformError;
use crate::transforms::spec::same_size;
use crate::transforms::spec::{
    Args, KEYS, PROB, ParamDefault, ParamError, ParamKind, Params, TransformSpec, param,
};

/// Rotates the plane `(a, b)` by `k` quarter turns (`torch.rot90(x, k, (a, b))`).
pub fn rot90(img: &Image, k: u32, (a, b): (usize, usize)) -> Image {
    let mut swap = [0, 1, 2];
    swap.swap(a, b);
    let mut flip_b = [false; 3];
    flip_b[b] = true;
    match k % 4 {
        0 => img.clone(),
        // rot90 once: flip b, then exchange a and b.
        1 => permute_spatial(&flip_spatial(img, flip_b), swap),
        2 => {
            let mut both = flip_b;
            both[a] = true;
            flip_spatial(img, both)
        }
        // Three times: exchange a and b, then flip b.
        _ => flip_spatial(&permute_spatial(img, swap), flip_b),
    }
}

/// MONAI's `RandFlip`: returns the (possibly) flipped image and whether it flipped.
pub fn rand_flip(
    img: &Image,
    prob: f64,
    spatial_axis: Option<&[usize]>,
    rng: &mut impl Rng,
) -> (Image, bool) {
    if rng.random::<f64>() >= prob {
        return (img.clone(), false);
    }
    let mut flip = [spatial_axis.is_none(); 3];
    for &a in spatial_axis.unwrap_or(&[]) {
        flip[a] = true;
    }
    (flip_spatial(img, flip), true)
}

/// MONAI's `RandRotate90`: returns the image and the number of quarter turns.
pub fn rand_rotate90(
    img: &Image,
    prob: f64,
    max_k: u32,
    axes: (usize, usize),
    rng: &mut impl Rng,
) -> (Image, u32) {
    if rng.random::<f64>() >= prob {
        return (img.clone(), 0);
    }
    let k = rng.random_range(0..max_k.max(1)) + 1;
    (rot90(img, k, axes), k)
}

/// MONAI's `RandFlip` as a step.
#[derive(Debug, Clone, PartialEq)]
pub struct RandFlip {
    /// Probability.
    pub prob: f64,
    /// Axes to flip (all three when None).
    pub axes: Option<Vec<usize>>,
}

impl Op for RandFlip {
    fn apply(&self, img: &mut Image, rng: &mut StepRng, _: bool) -> Result<(), TransformError> {
        apply_axis_move(self, img, rng);
        Ok(())
    }

    fn role(&self) -> Role {
        Role::AxisMove
    }

    fn axis_move(&self, rng: &mut StepRng) -> Option<AxisMap> {
        if rng.random::<f64>() >= self.prob {
            return Some(AxisMap::IDENTITY);
        }
        let mut flip = [self.axes.is_none(); 3];
        for &a in self.axes.as_deref().unwrap_or(&[]) {
            flip[a] = true;
        }
        Some(AxisMap::flip(flip))
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// MONAI's `RandRotate90` as a step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RandRotate90 {
    /// Probability.
    pub prob: f64,
    /// Largest number of quarter turns.
    pub max_k: u32,
    /// The plane.
    pub axes: (usize, usize),
}

impl Op for RandRotate90 {
    fn apply(&self, img: &mut Image, rng: &mut StepRng, _: bool) -> Result<(), TransformError> {
        apply_axis_move(self, img, rng);
        Ok(())
    }

    fn role(&self) -> Role {
        Role::AxisMove
    }

    fn axis_move(&self, rng: &mut StepRng) -> Option<AxisMap> {
        if rng.random::<f64>() >= self.prob {
            return Some(AxisMap::IDENTITY);
        }
        let k = rng.random_range(0..self.max_k.max(1)) + 1;
        Some(AxisMap::rot90(k, self.axes))
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// Draws `op`'s axis move and applies it (one gather; nothing when identity).
fn apply_axis_move(op: &dyn Op, img: &mut Image, rng: &mut StepRng) {
    if let Some(map) = op.axis_move(rng).filter(|m| !m.is_identity()) {
        *img = map.apply(img);
    }
}

fn two_axes(p: &Params) -> Result<(), ParamError> {
    match p.get("spatial_axes") {
        Some(ParamValue::List(axes)) if axes.len() != 2 => Err(ParamError::Rule(
            "spatial_axes must name exactly two axes (a plane)".into(),
        )),
        _ => Ok(()),
    }
}

/// Quarter turns in a plane swap its two sides: known only when they are
/// equal.
fn rotated_size(params: &Params, input: Option<[u64; 3]>) -> Option<[u64; 3]> {
    let size = input?;
    let Some(ParamValue::List(axes)) = params.get("spatial_axes") else {
        return None;
    };
    let side = |v: &ParamValue| v.as_f64().map(|a| size[a as usize]);
    match &axes[..] {
        [a, b] if side(a)? == side(b)? => Some(size),
        _ => None,
    }
}

/// The recipe's `RandFlip`.
pub const RAND_FLIP: TransformSpec = TransformSpec {
    name: "RandFlip",
    is_random: true,
    params: &[
        KEYS,
        PROB,
        param("spatial_axis", ParamKind::Axes, ParamDefault::Absent),
    ],
    summary: "with probability prob, flip the given axes (all when absent)",
    check: None,
    nests: false,
    output_size: same_size,
    build: |a: &Args<'_>| {
        Ok(Box::new(RandFlip {
            prob: a.num("prob")?,
            axes: a
                .numbers("spatial_axis")?
                .map(|v| v.iter().map(|&x| x as usize).collect()),
        }))
    },
};

/// The recipe's `RandRotate90`.
pub const RAND_ROTATE90: TransformSpec = TransformSpec {
    name: "RandRotate90",
    is_random: true,
    params: &[
        KEYS,
        PROB,
        param(
            "max_k",
            ParamKind::Int { min: 1, max: 64 },
            ParamDefault::Num(3.0),
        ),
        param("spatial_axes", ParamKind::Axes, ParamDefault::FirstPlane),
    ],
    summary: "with probability prob, rotate a plane by k quarter turns, k in 1..=max_k",
    check: Some(two_axes),
    nests: false,
    output_size: rotated_size,
    build: |a: &Args<'_>| {
        let [a0, a1] = a.array::<2>("spatial_axes")?.unwrap_or([0.0, 1.0]);
        Ok(Box::new(RandRotate90 {
            prob: a.num("prob")?,
            max_k: a.count("max_k")? as u32,
            axes: (a0 as usize, a1 as usize),
        }))
    },
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transforms::rng::DrawKey;

    #[test]
    fn rot90_matches_torch_on_a_hand_computed_plane() {
        // x (axis 0) has 2 voxels, y (axis 1) 3: values v[i, j] = i + 2 j.
        let img = Image::ramp([1, 2, 3, 1]);
        let r = rot90(&img, 1, (0, 1));
        // torch.rot90(v, 1, (0, 1))[i, j] = v[j, n1 - 1 - i]: shape (3, 2).
        assert_eq!(r.shape, [1, 3, 2, 1]);
        for i in 0..3 {
            for j in 0..2 {
                assert_eq!(r.at(0, i, j, 0), img.at(0, j, 2 - i, 0), "({i}, {j})");
            }
        }
        let r3 = rot90(&img, 3, (0, 1));
        for i in 0..3 {
            for j in 0..2 {
                // torch.rot90(v, 3, (0, 1))[i, j] = v[n0 - 1 - j, i]
                assert_eq!(r3.at(0, i, j, 0), img.at(0, 1 - j, i, 0));
            }
        }
    }

    #[test]
    fn four_quarter_turns_and_two_flips_are_identities() {
        let img = Image::ramp([2, 3, 4, 5]);
        for axes in [(0, 1), (0, 2), (1, 2), (2, 0)] {
            let mut r = img.clone();
            for _ in 0..4 {
                r = rot90(&r, 1, axes);
            }
            assert_eq!(r, img, "{axes:?}");
            assert_eq!(rot90(&rot90(&img, 1, axes), 3, axes), img);
        }
        for flip in [[true, false, false], [false, true, true], [true; 3]] {
            assert_eq!(flip_spatial(&flip_spatial(&img, flip), flip), img);
        }
    }

    #[test]
    fn probabilities_and_k_follow_their_distributions() {
        let img = Image::ramp([1, 2, 2, 2]);
        let (mut flips, mut ks) = (0, [0usize; 4]);
        for sample in 0..3000 {
            let key = DrawKey {
                sample,
                ..DrawKey::default()
            };
            let (_, flipped) = rand_flip(&img, 0.3, None, &mut key.rng());
            flips += usize::from(flipped);
            let (_, k) = rand_rotate90(&img, 1.0, 3, (0, 1), &mut key.for_transform(1).rng());
            ks[k as usize] += 1;
        }
        assert!((800..1000).contains(&flips), "{flips} of 3000 at p = 0.3");
        assert_eq!(ks[0], 0);
        assert!(ks[1..].iter().all(|&n| (900..1100).contains(&n)), "{ks:?}");
        // p = 0 never, p = 1 always; a given key always makes the same choice.
        let key = DrawKey::default();
        assert!(!rand_flip(&img, 0.0, None, &mut key.rng()).1);
        let (a, _) = rand_flip(&img, 1.0, Some(&[1]), &mut key.rng());
        assert_eq!(a, flip_spatial(&img, [false, true, false]));
        assert_eq!(
            rand_rotate90(&img, 0.5, 3, (1, 2), &mut key.rng()),
            rand_rotate90(&img, 0.5, 3, (1, 2), &mut key.rng())
        );
    }
}
