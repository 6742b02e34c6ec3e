//! Segmentation inference and evaluation (3DINO §4.2): sliding-window
//! prediction over whole volumes with MONAI's semantics, Dice as MONAI's
//! `DiceMetric`, and HD95 (3DINO reports Dice only; HD95 is what its users
//! ask for) on an exact anisotropic distance transform.
//!
//! Metrics work on plain row-major `(X, Y, Z)` buffers (last axis fastest);
//! channel-first buffers hold one such volume per channel.

pub mod dice;
pub mod edt;
pub mod hd95;
pub mod importance;
pub mod sliding_window;

pub use dice::{
    DiceOptions, argmax_channels, dice_labels, dice_masks, mean_ignoring_nan, reduce_mean,
    reduce_mean_batch, sigmoid_masks,
};
pub use edt::distance_transform;
pub use hd95::{hd95, hd95_per_class, percentile, percentile_hausdorff, surface};
pub use importance::{Blend, MIN_GAUSSIAN_WEIGHT, importance_map};
pub use sliding_window::{SlidingWindow, sliding_window, window_starts};
