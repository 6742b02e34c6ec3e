//! Gradient buckets: the parameters grouped, in the order their gradients
//! become final in the backward, into all-reduces of about a set size, so
//! the first buckets cross the ranks while the backward still computes the
//! rest (PyTorch DDP's scheme, with its sizes: a small first bucket so
//! communication starts early, then 25 MiB).

use crate::{ModelError, Result};

/// Wire bytes per bucket after the first (DDP's `bucket_cap_mb`).
pub const DEFAULT_BUCKET_BYTES: usize = 25 << 20;

/// Wire bytes of the first bucket: the last layers' gradients, ready first,
/// start travelling at once (DDP's first bucket).
const FIRST_BUCKET_BYTES: usize = 1 << 20;

/// Which parameters travel together, in launch order. Every rank must use
/// the same plan: buckets are launched in this order on every rank, so
/// the collectives match whatever order the gradients finish in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketPlan {
    /// Parameter indices (into the step's parameter list) of each bucket.
    buckets: Vec<Vec<usize>>,
    /// Each parameter's bucket.
    bucket_of: Vec<usize>,
    /// Whether `order` came from a backward (else it is the list's own
    /// order, a guess until the first step has run).
    observed: bool,
}

impl BucketPlan {
    /// Buckets over `order`, a permutation of the parameter indices, of
    /// parameters with `sizes[i]` elements of `elem_bytes` each: a bucket
    /// closes before the parameter that would take it over its budget
    /// (a larger parameter travels alone).
    ///
    /// # Errors
    /// `order` is not a permutation of `0..sizes.len()`; a zero budget.
    pub fn new(
        order: &[usize],
        sizes: &[usize],
        elem_bytes: usize,
        bucket_bytes: usize,
        observed: bool,
    ) -> Result<Self> {
        if bucket_bytes == 0 || elem_bytes == 0 {
            return Err(ModelError::Config(
                "gradient buckets need a positive size".into(),
            ));
        }
        let n = sizes.len();
        let mut bucket_of = vec![usize::MAX; n];
        if order.len() != n || order.iter().any(|&i| i >= n) {
            return Err(not_a_permutation(order, n));
        }
        let first_budget = FIRST_BUCKET_BYTES.min(bucket_bytes);
        let mut buckets: Vec<Vec<usize>> = Vec::new();
        let mut filled = 0usize;
        for &i in order {
            if bucket_of[i] != usize::MAX {
                return Err(not_a_permutation(order, n));
            }
            let bytes = sizes[i] * elem_bytes;
            let budget = if buckets.len() == 1 {
                first_budget
            } else {
                bucket_bytes
            };
            match buckets.last_mut() {
                Some(open) if filled + bytes <= budget => {
                    open.push(i);
                    filled += bytes;
                }
                _ => {
                    buckets.push(vec![i]);
                    filled = bytes;
                }
            }
            bucket_of[i] = buckets.len() - 1;
        }
        Ok(Self {
            buckets,
            bucket_of,
            observed,
        })
    }

    /// All `n` parameters in one bucket, in index order (nothing overlaps:
    /// the bucket is complete when the backward is).
    pub fn single(n: usize) -> Self {
        Self {
            buckets: if n == 0 {
                Vec::new()
            } else {
                vec![(0..n).collect()]
            },
            bucket_of: vec![0; n],
            observed: false,
        }
    }

    /// The plan every rank of `comm` follows from now on: buckets over
    /// rank 0's `order` (a [`super::SyncReport::order`]), so a rank whose
    /// gradients finished in another order (a parameter without a gradient
    /// there) still launches the same buckets.
    ///
    /// # Errors
    /// A failed broadcast; an order that is not a permutation.
    pub fn agreed(
        order: &[usize],
        sizes: &[usize],
        elem_bytes: usize,
        bucket_bytes: usize,
        comm: &dyn super::Collective,
    ) -> Result<Self> {
        // Indices below 2^24 are exact in f32; a model has far fewer
        // parameter tensors.
        let mut wire: Vec<f32> = order.iter().map(|&i| i as f32).collect();
        comm.broadcast_f32(&mut wire, 0)?;
        let order: Vec<usize> = wire.iter().map(|&i| i as usize).collect();
        Self::new(&order, sizes, elem_bytes, bucket_bytes, true)
    }

    /// Parameters in the plan.
    pub fn len(&self) -> usize {
        self.bucket_of.len()
    }

    /// Whether the plan has no parameter.
    pub fn is_empty(&self) -> bool {
        self.bucket_of.is_empty()
    }

    /// The buckets, in launch order.
    pub fn buckets(&self) -> &[Vec<usize>] {
        &self.buckets
    }

    /// Parameter `i`'s bucket.
    pub fn bucket_of(&self, i: usize) -> usize {
        self.bucket_of[i]
    }

    /// Whether the order came from a backward that ran.
    pub fn is_observed(&self) -> bool {
        self.observed
    }
}

fn not_a_permutation(order: &[usize], n: usize) -> ModelError {
    ModelError::Input(format!(
        "a gradient order must name each of the {n} parameters once; got {} entries",
        order.len()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_close_before_the_budget_and_keep_the_order() {
        // 4-byte elements, 40-byte buckets (below DDP's first-bucket size,
        // so every bucket has the one budget).
        let sizes = [3, 4, 12, 2, 5, 1];
        let order = [5, 4, 3, 2, 1, 0];
        let plan = BucketPlan::new(&order, &sizes, 4, 40, true).unwrap();
        // 1+5+2 = 8 elements = 32 bytes; +12 would pass 40: 12 alone
        // (48 bytes, over budget, but a parameter is never split); 4+3.
        assert_eq!(plan.buckets(), &[vec![5, 4, 3], vec![2], vec![1, 0]]);
        for (b, members) in plan.buckets().iter().enumerate() {
            for &i in members {
                assert_eq!(plan.bucket_of(i), b);
            }
        }
        assert!(plan.is_observed());
        assert_eq!(plan.len(), 6);
    }

    #[test]
    fn the_first_bucket_is_small() {
        // 1 MiB parameters in 4-byte elements, 3 MiB buckets: the first
        // bucket holds one, the others three.
        let sizes = vec![1 << 18; 7];
        let order: Vec<usize> = (0..7).collect();
        let plan = BucketPlan::new(&order, &sizes, 4, 3 << 20, false).unwrap();
        assert_eq!(plan.buckets(), &[vec![0], vec![1, 2, 3], vec![4, 5, 6]]);
    }

    #[test]
    fn an_order_must_be_a_permutation() {
        let sizes = [1, 1, 1];
        for bad in [&[0, 1][..], &[0, 1, 1], &[0, 1, 3]] {
            let e = BucketPlan::new(bad, &sizes, 4, 8, true).unwrap_err();
            assert!(e.to_string().contains("each of the 3 parameters"), "{e}");
        }
        assert!(BucketPlan::new(&[0, 1, 2], &sizes, 4, 0, true).is_err());
    }
}
