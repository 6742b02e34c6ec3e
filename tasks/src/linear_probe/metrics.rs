//! Classification metrics of the linear probe: top-1 accuracy, the confusion
//! matrix, softmax, and the macro one-vs-rest ROC AUC from ranks (ties get
//! their average rank, i.e. a tied positive/negative pair counts one half).

/// Index of the largest value (the first one on ties).
pub(crate) fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}

/// Fraction of rows whose argmax is the target (0 for no rows).
pub(crate) fn accuracy(logits: &[Vec<f32>], targets: &[usize]) -> f64 {
    if targets.is_empty() {
        return 0.0;
    }
    let hits = logits
        .iter()
        .zip(targets)
        .filter(|(l, t)| argmax(l) == **t)
        .count();
    hits as f64 / targets.len() as f64
}

/// `m[true][predicted]` counts.
pub(crate) fn confusion_matrix(
    logits: &[Vec<f32>],
    targets: &[usize],
    classes: usize,
) -> Vec<Vec<u64>> {
    let mut m = vec![vec![0u64; classes]; classes];
    for (l, &t) in logits.iter().zip(targets) {
        m[t][argmax(l)] += 1;
    }
    m
}

/// Row-wise softmax (max-subtracted, in f64).
pub(crate) fn softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
    let e: Vec<f64> = logits.iter().map(|&v| (v as f64 - max).exp()).collect();
    let s: f64 = e.iter().sum();
    e.into_iter().map(|v| v / s).collect()
}

/// Binary ROC AUC of `scores` for `positive` labels via the rank-sum
/// (Mann–Whitney U) statistic with average ranks for ties. `None` when one
/// of the two groups is empty.
pub(crate) fn binary_auc(scores: &[f64], positive: &[bool]) -> Option<f64> {
    let n_pos = positive.iter().filter(|&&p| p).count();
    let n_neg = positive.len() - n_pos;
    if n_pos == 0 || n_neg == 0 {
        return None;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    // 1-based ranks, averaged over runs of equal scores.
    let mut ranks = vec![0f64; scores.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        for &o in &order[i..=j] {
            ranks[o] = avg;
        }
        i = j + 1;
    }
    let rank_sum: f64 = ranks
        .iter()
        .zip(positive)
        .filter(|(_, p)| **p)
        .map(|(r, _)| r)
        .sum();
    let u = rank_sum - (n_pos * (n_pos + 1)) as f64 / 2.0;
    Some(u / (n_pos * n_neg) as f64)
}

/// One-vs-rest AUC of each class from per-row class probabilities (`None`
/// for a class absent from, or the only class of, the targets), and their
/// mean over the defined classes (`None` if none is defined).
pub(crate) fn ovr_auc(
    probs: &[Vec<f64>],
    targets: &[usize],
    classes: usize,
) -> (Vec<Option<f64>>, Option<f64>) {
    let per: Vec<Option<f64>> = (0..classes)
        .map(|c| {
            let scores: Vec<f64> = probs.iter().map(|p| p[c]).collect();
            let pos: Vec<bool> = targets.iter().map(|&t| t == c).collect();
            binary_auc(&scores, &pos)
        })
        .collect();
    let defined: Vec<f64> = per.iter().flatten().copied().collect();
    let macro_auc =
        (!defined.is_empty()).then(|| defined.iter().sum::<f64>() / defined.len() as f64);
    (per, macro_auc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_counts_pairs_and_halves_ties() {
        // Positives 0.8, 0.4; negatives 0.4, 0.2. Pairs (pos, neg):
        // (0.8, 0.4) 1, (0.8, 0.2) 1, (0.4, 0.4) 1/2, (0.4, 0.2) 1 -> 3.5 / 4.
        let s = [0.8, 0.4, 0.4, 0.2];
        let p = [true, true, false, false];
        assert_eq!(binary_auc(&s, &p), Some(0.875));
        // Perfect, reversed, and all tied.
        assert_eq!(binary_auc(&[0.9, 0.1], &[true, false]), Some(1.0));
        assert_eq!(binary_auc(&[0.1, 0.9], &[true, false]), Some(0.0));
        assert_eq!(
            binary_auc(&[0.5; 4], &[true, false, true, false]),
            Some(0.5)
        );
        // Unsorted rows, 3 positives (3, 1, 2) vs 2 negatives (2, 0):
        // (3,2)=1 (3,0)=1 (1,2)=0 (1,0)=1 (2,2)=1/2 (2,0)=1 -> 4.5 / 6.
        let s = [2.0, 3.0, 0.0, 1.0, 2.0];
        let p = [false, true, false, true, true];
        assert_eq!(binary_auc(&s, &p), Some(0.75));
        assert_eq!(binary_auc(&[1.0, 2.0], &[true, true]), None);
    }

    #[test]
    fn macro_ovr_averages_the_defined_classes() {
        // Three classes, four rows; class 2 never occurs (undefined).
        let probs = vec![
            vec![0.7, 0.2, 0.1],
            vec![0.4, 0.5, 0.1],
            vec![0.3, 0.6, 0.1],
            vec![0.5, 0.3, 0.2],
        ];
        let targets = [0, 1, 1, 0];
        let (per, m) = ovr_auc(&probs, &targets, 3);
        // Class 0: pos 0.7, 0.5 vs neg 0.4, 0.3 -> 1. Class 1: pos 0.5, 0.6
        // vs neg 0.2, 0.3 -> 1.
        assert_eq!(per, vec![Some(1.0), Some(1.0), None]);
        assert_eq!(m, Some(1.0));
        // Targets 0, 0, 1, 1: class 0 pos 0.7, 0.4 vs neg 0.3, 0.5 -> 3/4;
        // class 1 pos 0.6, 0.3 vs neg 0.2, 0.5 -> 3/4.
        let (per, m) = ovr_auc(&probs, &[0, 0, 1, 1], 3);
        assert_eq!(per[0], Some(0.75));
        assert_eq!(per[1], Some(0.75));
        assert_eq!(m, Some(0.75));
    }

    #[test]
    fn confusion_rows_are_truth_and_accuracy_its_diagonal() {
        let logits = vec![
            vec![2.0, 0.0, 0.0],
            vec![0.0, 1.0, 3.0],
            vec![0.0, 5.0, 1.0],
            vec![1.0, 1.0, 0.0], // tie: the first class wins
        ];
        let targets = [0, 1, 1, 2];
        let m = confusion_matrix(&logits, &targets, 3);
        assert_eq!(m, vec![vec![1, 0, 0], vec![0, 1, 1], vec![1, 0, 0]]);
        assert_eq!(accuracy(&logits, &targets), 0.5);
        let p = softmax(&[0.0, (3f32).ln()]);
        assert!((p[0] - 0.25).abs() < 1e-7 && (p[1] - 0.75).abs() < 1e-7);
    }
}
