//! `LoadImage` and `EnsureChannelFirst`: reading happens before the chain
//! (`Pipeline::prepare` reads every key channel-first), so as steps they do
//! nothing; they are accepted so MONAI recipes read as written.

use super::error::TransformError;
use super::image::Image;
use crate::exec::op::{Op, StepRng};
use crate::transforms::spec::{Args, KEYS, TransformSpec};
use crate::transforms::spec::{same_size, size_from_data};

/// A step that leaves the sample as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nothing;

impl Op for Nothing {
    fn apply(&self, _: &mut Image, _: &mut StepRng, _: bool) -> Result<(), TransformError> {
        Ok(())
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// The recipe's `LoadImage`.
pub const LOAD_IMAGE: TransformSpec = TransformSpec {
    name: "LoadImage",
    is_random: false,
    params: &[KEYS],
    summary: "read the volume (NIfTI-1/2, Analyze, MetaImage, NRRD, DICOM) channel-first, in its stored type",
    check: None,
    nests: false,
    output_size: size_from_data,
    build: |_: &Args<'_>| Ok(Box::new(Nothing)),
};

/// The recipe's `EnsureChannelFirst`.
pub const ENSURE_CHANNEL_FIRST: TransformSpec = TransformSpec {
    name: "EnsureChannelFirst",
    is_random: false,
    params: &[KEYS],
    summary: "accepted for MONAI recipes: dino3d loads channel-first already",
    check: None,
    nests: false,
    output_size: same_size,
    build: |_: &Args<'_>| Ok(Box::new(Nothing)),
};
