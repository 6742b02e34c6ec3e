//! Epoch sampling: a shuffle per epoch, sharded by rank with stride
//! `world`, as DINOv2's sharded sampler does. Concatenated epochs give the
//! infinite stream training reads.
//!
//! How an epoch is shuffled is a [`Shuffle`]: the loader's [`KeyedShuffle`]
//! (Fisher–Yates on a ChaCha stream keyed by (seed, epoch), so any epoch can
//! be restarted), or a caller's own stream (the linear probe's continuous
//! SplitMix64 shuffle lives with that task).

use rand::Rng;

use crate::transforms::DrawKey;

/// Draws each epoch's order.
pub trait Shuffle {
    /// Reorders `order`, a permutation of `0..order.len()` (the identity
    /// before the first epoch, afterwards the previous epoch's order), for
    /// `epoch`.
    fn shuffle(&mut self, order: &mut [usize], epoch: u64);
}

/// The identity shuffled by Fisher–Yates (`j` uniform in `0..=i`) on a ChaCha
/// stream keyed by (seed, epoch): every epoch independent of the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyedShuffle {
    /// The recipe's seed.
    pub seed: u64,
}

impl Shuffle for KeyedShuffle {
    fn shuffle(&mut self, order: &mut [usize], epoch: u64) {
        // Each epoch starts from the identity, whatever came before.
        for (i, o) in order.iter_mut().enumerate() {
            *o = i;
        }
        let mut rng = DrawKey {
            seed: self.seed,
            epoch,
            sample: u64::MAX,
            view: u32::MAX,
            transform: u32::MAX,
        }
        .rng();
        for i in (1..order.len()).rev() {
            let j = rng.random_range(0..=i);
            order.swap(i, j);
        }
    }
}

/// Every `world`-th index of `full`, starting at `rank`.
fn shard(full: &[usize], rank: usize, world: usize) -> Vec<usize> {
    full.iter()
        .copied()
        .skip(rank)
        .step_by(world.max(1))
        .collect()
}

/// The manifest indices rank `rank` of `world` visits in `epoch`.
pub fn epoch_order(len: usize, seed: u64, epoch: u64, rank: usize, world: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..len).collect();
    KeyedShuffle { seed }.shuffle(&mut order, epoch);
    shard(&order, rank, world)
}

/// An endless walk through shuffled epochs: yields `(epoch, index)`.
#[derive(Debug, Clone)]
pub struct InfiniteSampler<S = KeyedShuffle> {
    len: usize,
    rank: usize,
    world: usize,
    epoch: u64,
    /// The whole epoch's order (what the next shuffle starts from).
    full: Vec<usize>,
    /// This rank's share of it.
    order: Vec<usize>,
    at: usize,
    shuffle: S,
}

impl InfiniteSampler<KeyedShuffle> {
    /// Starts at `epoch`, position `at` within it (for resuming).
    pub fn new(len: usize, seed: u64, rank: usize, world: usize, epoch: u64, at: usize) -> Self {
        Self::with_shuffle(KeyedShuffle { seed }, len, rank, world, epoch, at)
    }
}

impl<S: Shuffle> InfiniteSampler<S> {
    /// Starts at `epoch`, position `at` within it, drawing epochs with
    /// `shuffle` (the first from the identity).
    pub fn with_shuffle(
        mut shuffle: S,
        len: usize,
        rank: usize,
        world: usize,
        epoch: u64,
        at: usize,
    ) -> Self {
        let mut full: Vec<usize> = (0..len).collect();
        shuffle.shuffle(&mut full, epoch);
        InfiniteSampler {
            len,
            rank,
            world,
            epoch,
            order: shard(&full, rank, world),
            full,
            at,
            shuffle,
        }
    }

    /// Where the next draw comes from: `(epoch, position)`.
    pub fn position(&self) -> (u64, usize) {
        (self.epoch, self.at)
    }

    /// The next `size` indices, running across epoch boundaries (fewer only
    /// when there is nothing to sample).
    pub fn next_batch(&mut self, size: usize) -> Vec<usize> {
        self.by_ref().take(size).map(|(_, i)| i).collect()
    }
}

impl<S: Shuffle> Iterator for InfiniteSampler<S> {
    type Item = (u64, usize);

    fn next(&mut self) -> Option<(u64, usize)> {
        if self.len == 0 {
            return None;
        }
        while self.at >= self.order.len() {
            self.epoch += 1;
            self.at = 0;
            self.shuffle.shuffle(&mut self.full, self.epoch);
            self.order = shard(&self.full, self.rank, self.world);
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

    /// The sampler before its shuffle became a parameter, as a reference.
    fn epoch_order_before(
        len: usize,
        seed: u64,
        epoch: u64,
        rank: usize,
        world: usize,
    ) -> Vec<usize> {
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

    #[test]
    fn the_keyed_shuffle_is_bit_identical_to_the_former_sampler() {
        for len in [0, 1, 2, 5, 17, 100] {
            for seed in 0..5 {
                for world in 1..4 {
                    for rank in 0..world {
                        for epoch in 0..4 {
                            assert_eq!(
                                epoch_order(len, seed, epoch, rank, world),
                                epoch_order_before(len, seed, epoch, rank, world)
                            );
                        }
                        // The stream across epochs, from a resumed position.
                        let walked: Vec<(u64, usize)> =
                            InfiniteSampler::new(len, seed, rank, world, 1, 1)
                                .take(40)
                                .collect();
                        let mut want = Vec::new();
                        let (mut epoch, mut at) = (1u64, 1usize);
                        while want.len() < 40 && len > 0 {
                            let order = epoch_order_before(len, seed, epoch, rank, world);
                            if at < order.len() {
                                want.push((epoch, order[at]));
                                at += 1;
                            } else if order.is_empty() {
                                break;
                            } else {
                                (epoch, at) = (epoch + 1, 0);
                            }
                        }
                        assert_eq!(walked, want, "len {len}, seed {seed}, rank {rank}/{world}");
                    }
                }
            }
        }
    }
}
