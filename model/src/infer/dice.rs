//! Dice as MONAI's `DiceMetric` computes it (reimplemented from its
//! documented behaviour), on label maps from an argmax (3DINO's BTCV,
//! LA-SEG and TDSC-ABUS) and on per-channel masks from a sigmoid threshold
//! (BraTS), with MONAI's `mean` and `mean_batch` reductions.
//!
//! Per volume and class, with P the predicted and T the true voxels:
//! `Dice = 2|P ∩ T| / (|P| + |T|)`. When T is empty:
//! - `ignore_empty = true` (MONAI's default, what 3DINO uses): NaN, whatever
//!   was predicted; NaNs are left out of every mean. So a class absent from
//!   the truth never counts, even when it is predicted (a false positive
//!   there is not penalised).
//! - `ignore_empty = false`: 1 when P is empty too, else 0.

/// Options of MONAI's `DiceMetric`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiceOptions {
    /// Keep channel 0 (the background for label maps). With `false` the
    /// results have one entry less and entry `i` is class `i + 1`.
    pub include_background: bool,
    /// NaN (instead of 1 or 0) where the truth is empty.
    pub ignore_empty: bool,
}

impl Default for DiceOptions {
    /// MONAI's defaults, as 3DINO uses them: background included, empty
    /// truths ignored.
    fn default() -> Self {
        Self {
            include_background: true,
            ignore_empty: true,
        }
    }
}

/// Dice from the counts `|P ∩ T|`, `|P|`, `|T|`.
fn dice_from_counts(inter: u64, pred: u64, truth: u64, ignore_empty: bool) -> f64 {
    if truth > 0 {
        2.0 * inter as f64 / (pred + truth) as f64
    } else if ignore_empty {
        f64::NAN
    } else if pred == 0 {
        1.0
    } else {
        0.0
    }
}

/// Dice per class of the label map `pred` against `truth` (same length,
/// class indices in `0..classes`; other values belong to no class), as
/// MONAI's `DiceMetric` on their one-hot encodings.
///
/// # Panics
/// If the lengths differ.
pub fn dice_labels(pred: &[u16], truth: &[u16], classes: usize, opts: DiceOptions) -> Vec<f64> {
    assert_eq!(
        pred.len(),
        truth.len(),
        "dice: prediction and truth differ in size"
    );
    let mut inter = vec![0u64; classes];
    let mut p = vec![0u64; classes];
    let mut t = vec![0u64; classes];
    for (&a, &b) in pred.iter().zip(truth) {
        let (a, b) = (usize::from(a), usize::from(b));
        if a < classes {
            p[a] += 1;
        }
        if b < classes {
            t[b] += 1;
            if a == b {
                inter[a] += 1;
            }
        }
    }
    let first = usize::from(!opts.include_background);
    (first..classes)
        .map(|k| dice_from_counts(inter[k], p[k], t[k], opts.ignore_empty))
        .collect()
}

/// Dice per channel of binary masks, channel-first (`channels` masks of
/// `pred.len() / channels` voxels each), as MONAI's `DiceMetric` on
/// multi-label outputs (3DINO's BraTS TC/WT/ET).
///
/// # Panics
/// If the lengths differ or are not a multiple of `channels`.
pub fn dice_masks(pred: &[bool], truth: &[bool], channels: usize, opts: DiceOptions) -> Vec<f64> {
    assert_eq!(
        pred.len(),
        truth.len(),
        "dice: prediction and truth differ in size"
    );
    assert!(
        channels > 0 && pred.len().is_multiple_of(channels),
        "dice: {channels} channels"
    );
    let n = pred.len() / channels;
    let first = usize::from(!opts.include_background);
    (first..channels)
        .map(|c| {
            let (pc, tc) = (&pred[c * n..(c + 1) * n], &truth[c * n..(c + 1) * n]);
            let (mut inter, mut p, mut t) = (0u64, 0u64, 0u64);
            for (&a, &b) in pc.iter().zip(tc) {
                p += u64::from(a);
                t += u64::from(b);
                inter += u64::from(a && b);
            }
            dice_from_counts(inter, p, t, opts.ignore_empty)
        })
        .collect()
}

/// Class per voxel of channel-first scores (`channels` planes of
/// `scores.len() / channels` values): the first largest, as `torch.argmax`;
/// a NaN counts as the largest.
///
/// # Panics
/// If the length is not a multiple of `channels`, or `channels` exceeds
/// `u16::MAX + 1`.
pub fn argmax_channels(scores: &[f32], channels: usize) -> Vec<u16> {
    assert!(
        channels > 0 && scores.len().is_multiple_of(channels),
        "argmax: {channels} channels"
    );
    assert!(
        channels <= usize::from(u16::MAX) + 1,
        "argmax: {channels} channels"
    );
    let n = scores.len() / channels;
    let mut best: Vec<f32> = scores[..n].to_vec();
    let mut label = vec![0u16; n];
    for c in 1..channels {
        for ((b, l), &v) in best
            .iter_mut()
            .zip(&mut label)
            .zip(&scores[c * n..(c + 1) * n])
        {
            if !b.is_nan() && (v > *b || v.is_nan()) {
                *b = v;
                *l = c as u16;
            }
        }
    }
    label
}

/// Binary masks from logits as 3DINO's BraTS post-processing does
/// (`Activations(sigmoid=True)` then `AsDiscrete(threshold=0.5)`, which
/// keeps values ≥ 0.5): the f32 sigmoid `1/(1 + e^−x)` at least 0.5.
pub fn sigmoid_masks(logits: &[f32]) -> Vec<bool> {
    logits
        .iter()
        .map(|&x| 1.0 / (1.0 + (-x).exp()) >= 0.5)
        .collect()
}

/// The mean of the non-NaN values (NaN if there are none): MONAI's class
/// average within one volume.
pub fn mean_ignoring_nan(values: &[f64]) -> f64 {
    let (sum, count) = values
        .iter()
        .filter(|v| !v.is_nan())
        .fold((0.0, 0usize), |(s, c), v| (s + v, c + 1));
    if count == 0 {
        f64::NAN
    } else {
        sum / count as f64
    }
}

/// MONAI's `mean` reduction over volumes (rows of per-class values): each
/// volume's mean over its non-NaN classes, then the mean over the volumes
/// that have one. This is 3DINO's "mean Dice".
pub fn reduce_mean(rows: &[Vec<f64>]) -> f64 {
    let per_volume: Vec<f64> = rows.iter().map(|r| mean_ignoring_nan(r)).collect();
    mean_ignoring_nan(&per_volume)
}

/// MONAI's `mean_batch` reduction: per class, the mean over the volumes
/// where it is not NaN (NaN where it is NaN in every volume). 3DINO's
/// per-class Dice.
///
/// # Panics
/// If the rows differ in length.
pub fn reduce_mean_batch(rows: &[Vec<f64>]) -> Vec<f64> {
    let k = rows.first().map_or(0, Vec::len);
    assert!(
        rows.iter().all(|r| r.len() == k),
        "mean_batch: rows differ in length"
    );
    (0..k)
        .map(|c| mean_ignoring_nan(&rows.iter().map(|r| r[c]).collect::<Vec<_>>()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NO_BG: DiceOptions = DiceOptions {
        include_background: false,
        ignore_empty: true,
    };
    const KEEP_EMPTY: DiceOptions = DiceOptions {
        include_background: true,
        ignore_empty: false,
    };

    #[test]
    fn label_maps_by_hand() {
        let truth = [0u16, 0, 1, 1, 1, 2, 2, 0, 3];
        let pred = [0u16, 1, 1, 1, 0, 2, 0, 0, 9]; // 9: no class
        let d = dice_labels(&pred, &truth, 5, DiceOptions::default());
        // class 0: P = {0,4,6,7}, T = {0,1,7}, P ∩ T = {0,7}: 2·2/7.
        assert_eq!(d[0], 4.0 / 7.0);
        // class 1: P = {1,2,3}, T = {2,3,4}: 2·2/6.
        assert_eq!(d[1], 4.0 / 6.0);
        // class 2: P = {5}, T = {5,6}: 2/3.
        assert_eq!(d[2], 2.0 / 3.0);
        // class 3: T = {8}, not predicted: 0.
        assert_eq!(d[3], 0.0);
        assert!(d[4].is_nan(), "absent from both");
        let mean = mean_ignoring_nan(&d);
        assert!((mean - (4.0 / 7.0 + 4.0 / 6.0 + 2.0 / 3.0) / 4.0).abs() < 1e-15);
        // Without the background: classes 1..5.
        let nb = dice_labels(&pred, &truth, 5, NO_BG);
        assert_eq!(nb.len(), 4);
        assert_eq!(nb[..3], d[1..4]);
        assert!(nb[3].is_nan());
    }

    #[test]
    fn empty_truths_follow_ignore_empty() {
        // Class 1 predicted but absent from the truth; class 2 in neither.
        let truth = [0u16, 0, 0, 0];
        let pred = [0u16, 1, 0, 0];
        let d = dice_labels(&pred, &truth, 3, DiceOptions::default());
        assert_eq!(d[0], 2.0 * 3.0 / 7.0);
        assert!(
            d[1].is_nan() && d[2].is_nan(),
            "MONAI: NaN whatever is predicted"
        );
        let d = dice_labels(&pred, &truth, 3, KEEP_EMPTY);
        assert_eq!(d[1..], [0.0, 1.0]);
    }

    #[test]
    fn identical_and_disjoint() {
        let a = [0u16, 1, 1, 2, 2, 2];
        assert_eq!(dice_labels(&a, &a, 3, DiceOptions::default()), vec![1.0; 3]);
        let b = [1u16, 2, 2, 0, 0, 0];
        assert_eq!(dice_labels(&a, &b, 3, DiceOptions::default()), vec![0.0; 3]);
    }

    #[test]
    fn masks_match_labels_on_one_hot_encodings() {
        let truth = [0u16, 0, 1, 1, 1, 2, 2, 0];
        let pred = [0u16, 1, 1, 1, 0, 2, 0, 0];
        let one_hot = |l: &[u16]| -> Vec<bool> {
            (0..3)
                .flat_map(|k| l.iter().map(move |&v| v == k))
                .collect()
        };
        for opts in [DiceOptions::default(), NO_BG, KEEP_EMPTY] {
            let a = dice_masks(&one_hot(&pred), &one_hot(&truth), 3, opts);
            assert_eq!(a, dice_labels(&pred, &truth, 3, opts));
        }
    }

    #[test]
    fn overlapping_channels_as_in_brats() {
        // Two channels of 4 voxels that overlap (nested regions).
        let logits = [2.0f32, -1.0, 0.0, -3.0, 1.0, 1.0, -0.5, 4.0];
        let pred = sigmoid_masks(&logits);
        assert_eq!(pred, [true, false, true, false, true, true, false, true]);
        let truth = [true, true, false, false, true, true, true, true];
        let d = dice_masks(&pred, &truth, 2, DiceOptions::default());
        // channel 0: P = {0,2}, T = {0,1}: 2/4; channel 1: P = {0,1,3}, T = all: 6/7.
        assert_eq!(d, vec![0.5, 6.0 / 7.0]);
        // A logit just under 0 whose f32 sigmoid rounds to 0.5 counts.
        assert_eq!(sigmoid_masks(&[-1e-9, -1e-3]), [true, false]);
    }

    #[test]
    fn argmax_takes_the_first_largest() {
        // 3 channels × 4 voxels.
        let s = [
            1.0f32,
            5.0,
            2.0,
            0.0, //
            3.0,
            5.0,
            2.0,
            f32::NAN, //
            2.0,
            1.0,
            7.0,
            9.0,
        ];
        assert_eq!(argmax_channels(&s, 3), vec![1, 0, 2, 1]);
    }

    #[test]
    fn reductions_skip_nan_like_monai() {
        let rows = vec![
            vec![1.0, f64::NAN, 0.5],
            vec![0.0, f64::NAN, f64::NAN],
            vec![f64::NAN, f64::NAN, f64::NAN],
        ];
        // Per volume: 0.75, 0.0, NaN -> mean 0.375.
        assert_eq!(reduce_mean(&rows), 0.375);
        let per_class = reduce_mean_batch(&rows);
        assert_eq!(per_class[0], 0.5);
        assert!(per_class[1].is_nan());
        assert_eq!(per_class[2], 0.5);
        assert!(reduce_mean(&[]).is_nan());
    }
}
