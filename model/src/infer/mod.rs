//! Segmentation inference and evaluation: sliding-window prediction over
//! whole volumes, Dice and HD95 (3DINO reports Dice only; HD95 is what its
//! users ask for), and the exact distance transform HD95 rests on.

pub mod edt;
pub mod metrics;
pub mod sliding_window;

#[cfg(test)]
mod tests;

pub use edt::distance_transform;
pub use metrics::{dice_per_class, hd95, hd95_per_class, mean_ignoring_nan, percentile, surface};
pub use sliding_window::{Blend, SlidingWindow, importance_map, window_starts};
