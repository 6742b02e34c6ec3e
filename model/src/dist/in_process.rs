//! N ranks as threads of one process, for tests: each call deposits its
//! buffer, waits for all ranks, and every rank reduces the deposits in rank
//! order (so all ranks get bit-identical results, as NCCL gives).

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use super::{Collective, ReduceOp, check_root};
use crate::{ModelError, Result};

/// How long a rank waits for the others before it reports them missing
/// (a test must fail, not hang).
const WAIT: Duration = Duration::from_secs(120);

#[derive(Debug, Clone)]
enum Deposit {
    None,
    F32(Vec<f32>),
    F64(Vec<f64>),
}

#[derive(Debug)]
struct State {
    deposits: Vec<Deposit>,
    /// Ranks that reached the current rendezvous.
    arrived: usize,
    /// Completed rendezvous; a waiter leaves when it changes.
    generation: u64,
    /// A rank whose handle was dropped: everyone else gets an error.
    departed: Option<usize>,
}

#[derive(Debug)]
struct Shared {
    world: usize,
    state: Mutex<State>,
    turn: Condvar,
}

/// Builds the ranks of one group.
#[derive(Debug)]
pub struct InProcess;

impl InProcess {
    /// `world` handles, rank `i` at index `i`; give each to one thread.
    pub fn group(world: usize) -> Vec<InProcessRank> {
        let shared = Arc::new(Shared {
            world,
            state: Mutex::new(State {
                deposits: vec![Deposit::None; world],
                arrived: 0,
                generation: 0,
                departed: None,
            }),
            turn: Condvar::new(),
        });
        (0..world)
            .map(|rank| InProcessRank {
                rank,
                shared: shared.clone(),
            })
            .collect()
    }
}

/// One rank of an [`InProcess`] group. Dropping it (a thread that fails)
/// makes every pending and later collective of the others fail, naming it.
#[derive(Debug)]
pub struct InProcessRank {
    rank: usize,
    shared: Arc<Shared>,
}

impl Drop for InProcessRank {
    fn drop(&mut self) {
        let mut s = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
        s.departed.get_or_insert(self.rank);
        self.shared.turn.notify_all();
    }
}

impl InProcessRank {
    /// Waits until every rank has arrived at this rendezvous.
    fn rendezvous<'a>(
        &self,
        mut s: std::sync::MutexGuard<'a, State>,
    ) -> Result<std::sync::MutexGuard<'a, State>> {
        let gone = |r: usize| {
            ModelError::Input(format!("rank {r} left the group; rank {} stops", self.rank))
        };
        if let Some(r) = s.departed {
            return Err(gone(r));
        }
        let generation = s.generation;
        s.arrived += 1;
        if s.arrived == self.shared.world {
            s.arrived = 0;
            s.generation += 1;
            self.shared.turn.notify_all();
            return Ok(s);
        }
        while s.generation == generation {
            let (next, timeout) = self
                .shared
                .turn
                .wait_timeout(s, WAIT)
                .unwrap_or_else(|p| p.into_inner());
            s = next;
            if s.generation != generation {
                break;
            }
            if let Some(r) = s.departed {
                return Err(gone(r));
            }
            if timeout.timed_out() {
                return Err(ModelError::Input(format!(
                    "rank {}: the other ranks did not arrive within {} s",
                    self.rank,
                    WAIT.as_secs()
                )));
            }
        }
        Ok(s)
    }

    /// Deposits, waits for all, reads every deposit, waits again so no
    /// deposit is overwritten while another rank still reads.
    fn exchange(&self, mine: Deposit) -> Result<Vec<Deposit>> {
        let mut s = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
        s.deposits[self.rank] = mine;
        let s = self.rendezvous(s)?;
        let all = s.deposits.clone();
        drop(self.rendezvous(s)?);
        Ok(all)
    }

    fn lengths_agree(&self, lens: impl Iterator<Item = Option<usize>>, mine: usize) -> Result<()> {
        for (r, len) in lens.enumerate() {
            if len != Some(mine) {
                return Err(ModelError::Input(format!(
                    "collective mismatch: rank {} gave {mine} values, rank {r} {}",
                    self.rank,
                    len.map_or("another type".to_string(), |l| l.to_string())
                )));
            }
        }
        Ok(())
    }
}

impl Collective for InProcessRank {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.shared.world
    }

    fn all_reduce_f32(&self, buf: &mut [f32], op: ReduceOp) -> Result<()> {
        let all = self.exchange(Deposit::F32(buf.to_vec()))?;
        let parts: Vec<Option<&Vec<f32>>> = all
            .iter()
            .map(|d| match d {
                Deposit::F32(v) => Some(v),
                _ => None,
            })
            .collect();
        self.lengths_agree(parts.iter().map(|p| p.map(|v| v.len())), buf.len())?;
        let parts: Vec<&Vec<f32>> = parts.into_iter().flatten().collect();
        for (i, out) in buf.iter_mut().enumerate() {
            let mut acc = parts[0][i];
            for p in &parts[1..] {
                acc += p[i];
            }
            *out = match op {
                ReduceOp::Sum => acc,
                ReduceOp::Mean => acc / self.shared.world as f32,
            };
        }
        Ok(())
    }

    fn all_reduce_f64(&self, buf: &mut [f64], op: ReduceOp) -> Result<()> {
        let all = self.exchange(Deposit::F64(buf.to_vec()))?;
        let parts: Vec<Option<&Vec<f64>>> = all
            .iter()
            .map(|d| match d {
                Deposit::F64(v) => Some(v),
                _ => None,
            })
            .collect();
        self.lengths_agree(parts.iter().map(|p| p.map(|v| v.len())), buf.len())?;
        let parts: Vec<&Vec<f64>> = parts.into_iter().flatten().collect();
        for (i, out) in buf.iter_mut().enumerate() {
            let mut acc = parts[0][i];
            for p in &parts[1..] {
                acc += p[i];
            }
            *out = match op {
                ReduceOp::Sum => acc,
                ReduceOp::Mean => acc / self.shared.world as f64,
            };
        }
        Ok(())
    }

    fn broadcast_f32(&self, buf: &mut [f32], root: usize) -> Result<()> {
        check_root(root, self.shared.world)?;
        let all = self.exchange(Deposit::F32(buf.to_vec()))?;
        match &all[root] {
            Deposit::F32(v) if v.len() == buf.len() => {
                buf.copy_from_slice(v);
                Ok(())
            }
            _ => Err(ModelError::Input(format!(
                "collective mismatch: rank {root}'s broadcast differs from rank {}'s {} values",
                self.rank,
                buf.len()
            ))),
        }
    }

    fn barrier(&self) -> Result<()> {
        self.exchange(Deposit::None).map(|_| ())
    }
}

/// Runs `f` on every rank of a fresh group, one thread each; the results
/// in rank order.
#[cfg(test)]
pub(crate) fn on_ranks<T: Send + 'static>(
    world: usize,
    f: impl Fn(InProcessRank) -> T + Send + Sync + 'static,
) -> Vec<T> {
    let f = Arc::new(f);
    let handles: Vec<_> = InProcess::group(world)
        .into_iter()
        .map(|r| {
            let f = f.clone();
            std::thread::spawn(move || f(r))
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dist::SingleProcess;

    #[test]
    fn all_reduce_is_identical_on_every_rank() {
        let out = on_ranks(3, |c| {
            let r = c.rank() as f32;
            // Values whose f32 sum depends on the order.
            let mut v = vec![1e8 * (1.0 - r), 1.0 + r, 0.1 * r];
            c.all_reduce_f32(&mut v, ReduceOp::Sum).unwrap();
            let mut m = vec![f64::from(r); 2];
            c.all_reduce_f64(&mut m, ReduceOp::Mean).unwrap();
            (v, m)
        });
        // Rank order: ((1e8 + 0) + -1e8), exactly as written out here.
        let expect = vec![
            (1e8f32 + 0.0) + -1e8,
            (1.0f32 + 2.0) + 3.0,
            (0.0 + 0.1f32) + 0.2,
        ];
        for (v, m) in &out {
            assert_eq!(v, &expect);
            assert_eq!(m, &vec![1.0, 1.0]);
        }
    }

    #[test]
    fn broadcast_and_barrier() {
        let out = on_ranks(4, |c| {
            let mut v = vec![c.rank() as f32; 3];
            c.barrier().unwrap();
            c.broadcast_f32(&mut v, 2).unwrap();
            c.barrier().unwrap();
            let bad = c.broadcast_f32(&mut v, 4).unwrap_err().to_string();
            (v, bad)
        });
        for (v, bad) in out {
            assert_eq!(v, vec![2.0; 3]);
            assert!(bad.contains("rank 4 in a world of 4"), "{bad}");
        }
    }

    #[test]
    fn many_rounds_in_a_row_stay_in_step() {
        let out = on_ranks(3, |c| {
            let mut total = 0.0;
            for i in 0..200 {
                let mut v = [(c.rank() * i) as f64];
                c.all_reduce_f64(&mut v, ReduceOp::Sum).unwrap();
                total += v[0];
            }
            total
        });
        let expect: f64 = (0..200).map(|i| (3 * i) as f64).sum();
        assert!(out.iter().all(|&t| t == expect));
    }

    #[test]
    fn mismatched_lengths_are_errors_on_every_rank() {
        let out = on_ranks(2, |c| {
            let mut v = vec![0f32; 2 + c.rank()];
            c.all_reduce_f32(&mut v, ReduceOp::Sum)
                .unwrap_err()
                .to_string()
        });
        for e in out {
            assert!(e.contains("collective mismatch"), "{e}");
        }
    }

    #[test]
    fn a_rank_that_dies_is_named() {
        let out = on_ranks(3, |c| {
            if c.rank() == 1 {
                drop(c);
                return String::new();
            }
            // Whether rank 1 is gone before or during the call.
            let mut v = [1f32];
            c.all_reduce_f32(&mut v, ReduceOp::Sum)
                .unwrap_err()
                .to_string()
        });
        assert!(out[0].contains("rank 1 left the group"), "{}", out[0]);
        assert!(out[2].contains("rank 1 left the group"), "{}", out[2]);
    }

    #[test]
    fn a_world_of_one_is_the_identity() {
        let c = SingleProcess;
        let mut v = [1.5f32, -2.0];
        c.all_reduce_f32(&mut v, ReduceOp::Mean).unwrap();
        c.broadcast_f32(&mut v, 0).unwrap();
        c.barrier().unwrap();
        assert_eq!(v, [1.5, -2.0]);
        assert!(c.broadcast_f32(&mut v, 1).is_err());
        assert_eq!((c.rank(), c.world_size()), (0, 1));
    }
}
