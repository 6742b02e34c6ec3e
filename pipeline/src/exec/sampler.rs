//! Epoch sampling: a seeded shuffle per epoch (Fisher–Yates on a ChaCha
//! stream keyed by (seed, epoch)), sharded by rank with stride `world`, as
//! DINOv2's sharded sampler does. Concatenated epochs give the infinite
//! stream training reads.

use rand::Rng;

use crate::transforms::DrawKey;

/// The manifest indices rank `rank` of `world` visits in `epoch`.
pub fn epoch_order(len: usize, seed: u64, epoch: u64, rank: usize, world: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..len).collect();
    let mut rng = DrawKey {
        seed,
        epoch,
        sample: u64::MAX,
        view: u32::MAX,
        transform: u32::MAX,
    }
    .rng();
    for i in (1..len).rev() {
        let j = rng.random_range(0..=i);
        order.swap(i, j);
    }
    order.into_iter().skip(rank).step_by(world.max(1)).collect()
}

/// An endless walk through shuffled epochs: yields `(epoch, index)`.
#[derive(Debug, Clone)]
pub struct InfiniteSampler {
    len: usize,
    seed: u64,
    rank: usize,
    world: usize,
    epoch: u64,
    order: Vec<usize>,
    at: usize,
}

impl InfiniteSampler {
    /// Starts at `epoch`, position `at` within it (for resuming).
    pub fn new(len: usize, seed: u64, rank: usize, world: usize, epoch: u64, at: usize) -> Self {
        InfiniteSampler {
            len,
            seed,
            rank,
            world,
            epoch,
            order: epoch_order(len, seed, epoch, rank, world),
            at,
        }
    }

    /// Where the next draw comes from: `(epoch, position)`.
    pub fn position(&self) -> (u64, usize) {
        (self.epoch, self.at)
    }
}

impl Iterator for InfiniteSampler {
    type Item = (u64, usize);

    fn next(&mut self) -> Option<(u64, usize)> {
        if self.len == 0 {
            return None;
        }
        while self.at >= self.order.len() {
            self.epoch += 1;
            self.at = 0;
            self.order = epoch_order(self.len, self.seed, self.epoch, self.rank, self.world);
            if self.order.is_empty() {
                return None;
            }
        }
        self.at += 1;
        Some((self.epoch, self.order[self.at - 1]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_are_permutations_and_shards_partition_them() {
        let a = epoch_order(100, 7, 0, 0, 1);
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        assert_ne!(a, (0..100).collect::<Vec<_>>());
        assert_ne!(a, epoch_order(100, 7, 1, 0, 1));
        assert_eq!(a, epoch_order(100, 7, 0, 0, 1));
        let mut shards: Vec<usize> = (0..3).flat_map(|r| epoch_order(100, 7, 0, r, 3)).collect();
        shards.sort_unstable();
        assert_eq!(shards, sorted);
        assert_eq!(epoch_order(100, 7, 0, 1, 3)[0], a[1]);
    }

    #[test]
    fn shuffles_are_uniform_enough() {
        // Where item 0 lands over many epochs: every position about equally often.
        let mut counts = [0usize; 5];
        for epoch in 0..5000 {
            let order = epoch_order(5, 1, epoch, 0, 1);
            counts[order.iter().position(|&i| i == 0).unwrap()] += 1;
        }
        assert!(
            counts.iter().all(|&n| (900..1100).contains(&n)),
            "{counts:?}"
        );
    }

    #[test]
    fn the_infinite_sampler_walks_epochs_and_resumes() {
        let s = InfiniteSampler::new(4, 3, 0, 1, 0, 0);
        let first: Vec<(u64, usize)> = s.take(10).collect();
        assert_eq!(first[..4].iter().filter(|(e, _)| *e == 0).count(), 4);
        assert_eq!(first[4].0, 1);
        let mut resumed = InfiniteSampler::new(4, 3, 0, 1, 1, 2);
        assert_eq!(resumed.next(), Some(first[6]));
    }
}
