//! Weighted k-nearest-neighbour classification on cosine similarity, as
//! DINO's kNN evaluation does: votes weighted by `exp(sim / 0.07)`.

/// Accuracy and balanced accuracy (mean recall over the test classes).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Scores {
    /// Fraction of test items classified correctly.
    pub accuracy: f64,
    /// Mean over classes present in the test set of their recall.
    pub balanced_accuracy: f64,
}

fn normalise(v: &[f32]) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter().map(|x| x / n).collect()
}

/// Classifies every test vector by its `k` most similar training vectors.
pub fn knn(
    train: &[(Vec<f32>, u16)],
    test: &[(Vec<f32>, u16)],
    k: usize,
    n_classes: usize,
) -> Scores {
    let train_n: Vec<(Vec<f32>, u16)> = train.iter().map(|(v, c)| (normalise(v), *c)).collect();
    let mut correct = 0usize;
    let mut per_class = vec![(0usize, 0usize); n_classes];
    for (v, truth) in test {
        let q = normalise(v);
        let mut sims: Vec<(f32, u16)> = train_n
            .iter()
            .map(|(t, c)| (t.iter().zip(&q).map(|(a, b)| a * b).sum(), *c))
            .collect();
        let k = k.min(sims.len());
        sims.select_nth_unstable_by(k.saturating_sub(1), |a, b| b.0.total_cmp(&a.0));
        let mut votes = vec![0f64; n_classes];
        for &(s, c) in &sims[..k] {
            votes[c as usize] += (f64::from(s) / 0.07).exp();
        }
        let pred = (0..n_classes)
            .max_by(|&a, &b| votes[a].total_cmp(&votes[b]))
            .unwrap_or(0);
        let slot = &mut per_class[*truth as usize];
        slot.1 += 1;
        if pred == *truth as usize {
            correct += 1;
            slot.0 += 1;
        }
    }
    let present: Vec<f64> = per_class
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(c, n)| *c as f64 / *n as f64)
        .collect();
    Scores {
        accuracy: correct as f64 / test.len().max(1) as f64,
        balanced_accuracy: present.iter().sum::<f64>() / present.len().max(1) as f64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separable_clusters_are_classified_and_balanced_accuracy_weights_classes() {
        // Class 0 near +x, class 1 near +y.
        let train: Vec<(Vec<f32>, u16)> = (0..10)
            .map(|i| (vec![1.0, 0.01 * i as f32], 0))
            .chain((0..10).map(|i| (vec![0.01 * i as f32, 1.0], 1)))
            .collect();
        let test = vec![
            (vec![0.9, 0.1], 0),
            (vec![0.2, 0.8], 1),
            (vec![0.1, 0.9], 0),
        ];
        let s = knn(&train, &test, 5, 2);
        // Two of three right; class 0 recall 1/2, class 1 recall 1.
        assert!((s.accuracy - 2.0 / 3.0).abs() < 1e-12);
        assert!((s.balanced_accuracy - 0.75).abs() < 1e-12);
    }
}
