//! Plan passes: rewrites of a compiled recipe that make it faster and never
//! change a byte of its output. Each has a name, can be switched off
//! ([`Passes`]), is listed by `dino-run recipe check` when it applies, and has
//! a test that the plan with it gives the same bytes as the plan without it.
//!
//! * `fuse_threedino_prefix`: 3DINO's whole deterministic prefix (time
//!   frame, NaN to mean, percentile window, in-plane axes first, foreground
//!   crop) as one pass over the stored integers.
//! * `compose_flips`: runs of flips and quarter turns on the same keys as one
//!   gather (same draws).
//! * `crop_views_from_shared_sample`: each view's first crop cuts straight
//!   from the shared prepared sample instead of a copy of it.
//! * `cut_views_by_plane`: a source that decodes volumes plane by plane (the
//!   on-disk cache) feeds every view's `RandomResizedCrop3d` as the planes
//!   arrive, never materialising the volume.

use std::sync::Arc;

use crate::transforms::{
    AxisMap, CropForeground, CropForegroundStep, DrawKey, Image, NanToMean, PermuteInPlaneFirst,
    RandTimeFrame, ScaleIntensityRangePercentiles, TransformError,
};

use super::op::{CompiledStep, Context, Op, Role, StepRng};
use super::sample::Sample;

/// Which passes run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Passes {
    /// See the module documentation.
    pub fuse_threedino_prefix: bool,
    /// See the module documentation.
    pub compose_flips: bool,
    /// See the module documentation.
    pub crop_views_from_shared_sample: bool,
    /// See the module documentation.
    pub cut_views_by_plane: bool,
}

impl Passes {
    /// Every pass (the default).
    pub const ALL: Passes = Passes {
        fuse_threedino_prefix: true,
        compose_flips: true,
        crop_views_from_shared_sample: true,
        cut_views_by_plane: true,
    };

    /// None: every step runs as written.
    pub const NONE: Passes = Passes {
        fuse_threedino_prefix: false,
        compose_flips: false,
        crop_views_from_shared_sample: false,
        cut_views_by_plane: false,
    };
}

impl Default for Passes {
    fn default() -> Passes {
        Passes::ALL
    }
}

/// A pass that applied, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The pass's name.
    pub name: &'static str,
    /// What it did.
    pub detail: String,
}

impl std::fmt::Display for Applied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.name, self.detail)
    }
}

/// `fuse_threedino_prefix`: the id of the `RandTimeFrame` step if `prefix`
/// (without `LoadImage`) is exactly 3DINO's chain on the single key `image`.
pub(crate) fn threedino_prefix(prefix: &[CompiledStep], keys: &[String]) -> Option<u32> {
    if keys != ["image"] || prefix.len() != 5 || prefix.iter().any(|s| s.keys != keys) {
        return None;
    }
    let expected = CropForeground {
        threshold: -1.0,
        margin: 0,
    };
    let matches = prefix[0].op_as::<RandTimeFrame>().is_some()
        && prefix[1].op_as::<NanToMean>().is_some()
        && prefix[2].op_as::<ScaleIntensityRangePercentiles>()
            == Some(&ScaleIntensityRangePercentiles::THREEDINO)
        && prefix[3].op_as::<PermuteInPlaneFirst>()
            == Some(&PermuteInPlaneFirst { use_shape: false })
        && prefix[4]
            .op_as::<CropForegroundStep>()
            .is_some_and(|c| c.params == expected && !c.padded);
    matches.then_some(prefix[0].id)
}

/// `compose_flips`: every run of two or more flips / quarter turns on the
/// same keys becomes one [`ComposedAxisMoves`] step (nested steps too).
/// Returns the rewritten steps and how many runs were composed.
pub fn compose_flips(steps: &[CompiledStep]) -> (Vec<CompiledStep>, usize) {
    let mut out = Vec::with_capacity(steps.len());
    let mut composed = 0;
    let mut i = 0;
    while i < steps.len() {
        let run = steps[i..]
            .iter()
            .take_while(|s| s.op.role() == Role::AxisMove && s.keys == steps[i].keys)
            .count();
        if run > 1 {
            let moves = steps[i..i + run].to_vec();
            out.push(CompiledStep {
                name: "compose_flips",
                op: Arc::new(ComposedAxisMoves {
                    steps: moves.clone(),
                }),
                keys: steps[i].keys.clone(),
                id: steps[i].id,
            });
            composed += 1;
            i += run;
            continue;
        }
        let step = &steps[i];
        let (children, n) = compose_flips(step.op.children());
        match step.op.with_children(children).filter(|_| n > 0) {
            Some(op) => {
                out.push(CompiledStep {
                    op: Arc::from(op),
                    ..step.clone()
                });
                composed += n;
            }
            None => out.push(step.clone()),
        }
        i += 1;
    }
    (out, composed)
}

/// A run of flips and quarter turns applied as one gather: each step's move
/// is drawn from its own stream, as step by step, and the moves composed.
#[derive(Debug, Clone)]
pub struct ComposedAxisMoves {
    /// The steps, in order.
    pub steps: Vec<CompiledStep>,
}

impl Op for ComposedAxisMoves {
    fn apply(&self, _: &mut Image, _: &mut StepRng, _: bool) -> Result<(), TransformError> {
        // Never called per key: `apply_sample` draws per step, not per key.
        Ok(())
    }

    fn apply_sample(
        &self,
        step: &CompiledStep,
        mut sample: Sample,
        key: DrawKey,
        _: &Context,
    ) -> Result<Vec<Sample>, TransformError> {
        let maps: Vec<AxisMap> = self
            .steps
            .iter()
            .map(|st| {
                let mut rng = key.for_transform(st.id).rng();
                st.op.axis_move(&mut rng).unwrap_or(AxisMap::IDENTITY)
            })
            .filter(|m| !m.is_identity())
            .collect();
        let map = maps.iter().fold(AxisMap::IDENTITY, |m, &next| m.then(next));
        if map.is_identity() && maps.is_empty() {
            return Ok(vec![sample]);
        }
        for k in &step.keys {
            if let Some(img) = sample.get_mut(k) {
                // One gather; the geometry moved map by map, as the steps
                // one by one move it (bit for bit).
                let (mut shape, mut spacing, mut affine) = (img.shape, img.spacing, img.affine);
                for m in &maps {
                    (shape, spacing, affine) = m.geometry(shape, spacing, &affine);
                }
                *img = Image {
                    data: map.gather(img),
                    shape,
                    spacing,
                    affine,
                };
            }
        }
        Ok(vec![sample])
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// `crop_views_from_shared_sample`: the crop `step` applied to every key it
/// names, cut from the shared `base` (other keys copied), or None when the
/// step is not a crop.
pub(crate) fn crop_from(step: &CompiledStep, base: &Sample, key: DrawKey) -> Option<Sample> {
    if step.op.role() != Role::Crop {
        return None;
    }
    let mut out = Sample::default();
    for (k, img) in &base.images {
        let cropped = if step.keys.contains(k) {
            step.op
                .crop_of(img, &mut key.for_transform(step.id).rng())?
        } else {
            img.clone()
        };
        out.images.push((k.clone(), cropped));
    }
    Some(out)
}
