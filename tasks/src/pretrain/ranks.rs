//! Where each rank's loader resumes. Every epoch is one permutation of the
//! items, rank r of W reading its entries r, r+W, r+2W, ... (the sampler's
//! shards): a checkpoint keeps every rank's position, and a job on another
//! number of ranks re-shards the items consumed so far.

use dino3d_model::dist::{Collective, ReduceOp};

use super::checkpoints::Meta;
use crate::error::{Result, bail};

/// Loader position: epoch, position in this rank's shard, next batch.
pub(super) type Position = (u64, usize, u64);

/// This rank's start and, after a change of world size, a note saying so.
pub(super) fn resume_position(
    meta: &Meta,
    rank: usize,
    world: usize,
) -> Result<(Position, Option<String>)> {
    let single = [(meta.data_epoch, meta.data_position, meta.next_batch)];
    let old: &[Position] = if meta.rank_positions.is_empty() {
        &single
    } else {
        &meta.rank_positions
    };
    if old.len() == world {
        return Ok((old[rank], None));
    }
    let epoch = old[0].0;
    if old.iter().any(|p| p.0 != epoch) {
        bail!(
            "the checkpoint at iteration {} was written by {} ranks that were in different epochs ({:?}); it cannot be re-sharded for {world} ranks: resume with {} ranks",
            meta.iteration,
            old.len(),
            old.iter().map(|p| p.0).collect::<Vec<_>>(),
            old.len()
        );
    }
    let consumed: usize = old.iter().map(|p| p.1).sum();
    // Ranks consumed a prefix of the epoch's permutation when rank r read
    // the ceil((consumed − r)/W) entries of that prefix in its shard.
    let prefix = old
        .iter()
        .enumerate()
        .all(|(r, p)| p.1 == entries_below(consumed, r, old.len()));
    let next_batch = old.iter().map(|p| p.2).max().unwrap_or(0);
    let at = entries_below(consumed, rank, world);
    let note = format!(
        "the checkpoint was written by {} rank(s), this job has {world}: epoch {epoch}'s {consumed} consumed items are re-sharded{}; the learning rate follows the new global batch",
        old.len(),
        if prefix {
            " exactly"
        } else {
            " (the old ranks had read unequal shares: a few items of this epoch may be read twice or not at all)"
        }
    );
    Ok(((epoch, at, next_batch), Some(note)))
}

/// Entries of shard `rank` of `world` among the first `n` of a permutation.
fn entries_below(n: usize, rank: usize, world: usize) -> usize {
    if n > rank {
        (n - rank).div_ceil(world)
    } else {
        0
    }
}

/// Every rank's loader position, in rank order (empty for one process):
/// an all-gather through a sum, each rank filling its own slots (f64 holds
/// the counts exactly below 2^53).
pub(super) fn gather_positions(position: Position, comm: &dyn Collective) -> Result<Vec<Position>> {
    let world = comm.world_size();
    if world == 1 {
        return Ok(Vec::new());
    }
    let mut slots = vec![0f64; 3 * world];
    let r = comm.rank();
    slots[3 * r..3 * r + 3].copy_from_slice(&[
        position.0 as f64,
        position.1 as f64,
        position.2 as f64,
    ]);
    comm.all_reduce_f64(&mut slots, ReduceOp::Sum)?;
    Ok(slots
        .chunks(3)
        .map(|c| (c[0] as u64, c[1] as usize, c[2] as u64))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(positions: &[Position]) -> Meta {
        Meta {
            iteration: 10,
            data_epoch: positions[0].0,
            data_position: positions[0].1,
            next_batch: positions[0].2,
            fingerprint: "f".into(),
            rank_positions: if positions.len() > 1 {
                positions.to_vec()
            } else {
                Vec::new()
            },
        }
    }

    /// The items shard `rank` of `world` has read after `at` entries.
    fn read(at: usize, rank: usize, world: usize) -> Vec<usize> {
        (0..at).map(|k| rank + k * world).collect()
    }

    #[test]
    fn same_world_resumes_each_rank_where_it_stopped() {
        let m = meta(&[(2, 5, 9), (2, 4, 9)]);
        assert_eq!(resume_position(&m, 1, 2).unwrap(), ((2, 4, 9), None));
        let one = meta(&[(1, 7, 3)]);
        assert_eq!(resume_position(&one, 0, 1).unwrap(), ((1, 7, 3), None));
    }

    /// Re-sharding reads exactly the permutation's remaining items: the
    /// union of what the new ranks have "already read" is the old prefix.
    #[test]
    fn another_world_re_shards_the_consumed_prefix_exactly() {
        for (old_world, at, new_world) in [(2, 6, 3), (4, 5, 2), (1, 7, 4), (3, 4, 1), (2, 3, 5)] {
            let old: Vec<Position> = (0..old_world)
                .map(|r| (3, entries_below(old_world * at, r, old_world), 8))
                .collect();
            let m = meta(&old);
            let mut before: Vec<usize> = (0..old_world)
                .flat_map(|r| read(old[r].1, r, old_world))
                .collect();
            let mut after = Vec::new();
            for r in 0..new_world {
                let ((epoch, pos, next), note) = resume_position(&m, r, new_world).unwrap();
                assert_eq!((epoch, next), (3, 8));
                assert!(note.unwrap().contains("re-sharded exactly"));
                after.extend(read(pos, r, new_world));
            }
            before.sort_unstable();
            after.sort_unstable();
            assert_eq!(before, after, "{old_world} -> {new_world} at {at}");
        }
    }

    #[test]
    fn unequal_shares_re_shard_with_a_warning_and_epochs_must_agree() {
        // Rank 0 read two more items than rank 1 (a skipped volume).
        let m = meta(&[(0, 6, 4), (0, 4, 4)]);
        let (_, note) = resume_position(&m, 0, 3).unwrap();
        assert!(note.unwrap().contains("read twice or not at all"));
        let m = meta(&[(1, 0, 4), (0, 9, 4)]);
        let e = resume_position(&m, 0, 1).unwrap_err().to_string();
        assert!(
            e.contains("different epochs") && e.contains("resume with 2 ranks"),
            "{e}"
        );
    }
}
