//! The job a recipe's `task:` names, with its checked sections: what
//! `dino-run RECIPE` dispatches on.

use crate::embed::config::EmbedConfig;
use crate::linear_probe::config::LinearProbeConfig;
use crate::pretrain::config::PretrainConfig;
use crate::segment::config::SegmentConfig;

/// A recipe's task and its settings.
#[derive(Debug, Clone, PartialEq)]
pub enum Task {
    /// Run the deterministic prefix over the manifest and report failures.
    Prepare,
    /// 3DINO pretraining (`model`, `optim`, `teacher`, `train`).
    Pretrain(PretrainConfig),
    /// Finetune a segmentation head (`segment`).
    Segment(SegmentConfig),
    /// 3DINO's frozen linear probe (`probe`).
    LinearProbe(LinearProbeConfig),
    /// Frozen features of a manifest into Parquet (`embed`).
    Embed(EmbedConfig),
}

impl Task {
    /// Every task's name, as `task:` spells it.
    pub const NAMES: [&'static str; 5] =
        ["prepare", "pretrain", "segment", "linear_probe", "embed"];

    /// This task's name, as `task:` spells it.
    pub fn name(&self) -> &'static str {
        match self {
            Task::Prepare => Self::NAMES[0],
            Task::Pretrain(_) => Self::NAMES[1],
            Task::Segment(_) => Self::NAMES[2],
            Task::LinearProbe(_) => Self::NAMES[3],
            Task::Embed(_) => Self::NAMES[4],
        }
    }
}

impl std::fmt::Display for Task {
    /// The task's lines of `recipe check` (none for `prepare` and `segment`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Task::Prepare | Task::Segment(_) => Ok(()),
            Task::Pretrain(c) => write!(f, "{c}"),
            Task::LinearProbe(c) => write!(f, "{c}"),
            Task::Embed(c) => write!(f, "{c}"),
        }
    }
}
