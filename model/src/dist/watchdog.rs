//! A deadline on every collective: a rank that waits too long for the
//! others reports which collective it is stuck in (and, where a
//! [`ProgressBoard`] knows, which ranks never arrived) instead of hanging
//! the job forever, as PyTorch's NCCL watchdog does.
//!
//! A blocked NCCL call cannot be interrupted from another thread, so the
//! report goes to an action chosen by the caller: `dino-run` prints it and
//! aborts the process, which makes torchrun, `srun --kill-on-bad-exit` or
//! `dino-run launch` stop the other ranks.

use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use candle_core::Tensor;

use super::{Collective, PendingReduce, ReduceOp};
use crate::Result;

/// Where every rank's progress through the collectives is visible (on
/// rank 0 of a job): each rank announces the collective it enters.
pub trait ProgressBoard: Send + Sync {
    /// This rank enters its collective number `seq` (1, 2, ...).
    fn entered(&self, seq: u64);
    /// The ranks known not to have entered collective `seq`, with the last
    /// one each did enter (0: none); empty where this rank cannot know.
    fn behind(&self, seq: u64) -> Vec<(usize, u64)>;
    /// This rank is done with the job, in order: a rank that leaves without
    /// saying so is a lost one.
    fn finish(&self) {}
}

/// What a rank stuck in a collective knows.
#[derive(Debug, Clone, PartialEq)]
pub struct Hang {
    /// This rank.
    pub rank: usize,
    /// Ranks in the job.
    pub world_size: usize,
    /// The collective (`all_reduce_f32`, ...).
    pub collective: &'static str,
    /// Its number on this rank, from 1.
    pub seq: u64,
    /// How long it has waited.
    pub waited: Duration,
    /// Ranks that had not entered it, with the last collective each had
    /// entered (from the progress board; empty if unknown).
    pub behind: Vec<(usize, u64)>,
}

impl std::fmt::Display for Hang {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "rank {} of {}: collective #{} ({}) has waited {:.0} s for the other ranks",
            self.rank,
            self.world_size,
            self.seq,
            self.collective,
            self.waited.as_secs_f64()
        )?;
        if self.behind.is_empty() {
            return write!(f, "; the rank that never arrived is named in rank 0's log");
        }
        let ranks: Vec<String> = self
            .behind
            .iter()
            .map(|(r, last)| format!("rank {r} (last entered #{last})"))
            .collect();
        write!(f, "; not arrived: {}", ranks.join(", "))
    }
}

/// The action taken once per stuck collective.
pub type OnHang = Box<dyn Fn(&Hang) + Send + Sync>;

/// The collective in flight, if any.
#[derive(Debug, Default)]
struct InFlight {
    call: Option<(&'static str, u64, Instant)>,
    /// The sequence number already reported (one report per collective).
    reported: u64,
    stop: bool,
}

struct Shared {
    state: Mutex<InFlight>,
    wake: Condvar,
}

/// A [`Collective`] whose every call has a deadline.
pub struct Watchdog<C: Collective> {
    // Dropped first: the board must not outlive its say on this rank, and
    // the communicator's teardown comes after.
    board: Option<Arc<dyn ProgressBoard>>,
    inner: C,
    shared: Arc<Shared>,
    seq: std::cell::Cell<u64>,
    monitor: Option<JoinHandle<()>>,
}

impl<C: Collective> Watchdog<C> {
    /// Wraps `inner`: a call still waiting after `timeout` is reported to
    /// `on_hang` (once) with what `board` knows.
    pub fn new(
        inner: C,
        timeout: Duration,
        board: Option<Arc<dyn ProgressBoard>>,
        on_hang: OnHang,
    ) -> Self {
        let shared = Arc::new(Shared {
            state: Mutex::new(InFlight::default()),
            wake: Condvar::new(),
        });
        let (rank, world_size) = (inner.rank(), inner.world_size());
        let monitor = {
            let shared = shared.clone();
            let board = board.clone();
            std::thread::Builder::new()
                .name("dino3d-collective-watchdog".into())
                .spawn(move || {
                    watch(&shared, timeout, &|collective, seq, waited| {
                        let behind = board.as_ref().map_or_else(Vec::new, |b| b.behind(seq));
                        on_hang(&Hang {
                            rank,
                            world_size,
                            collective,
                            seq,
                            waited,
                            behind,
                        });
                    })
                })
                .expect("spawning the collective watchdog")
        };
        Self {
            board,
            inner,
            shared,
            seq: std::cell::Cell::new(0),
            monitor: Some(monitor),
        }
    }

    /// Tells the progress board this rank is done, in order (call once the
    /// job succeeded; a rank that drops the watchdog without it counts as
    /// lost to rank 0).
    pub fn finish(&self) {
        if let Some(b) = &self.board {
            b.finish();
        }
    }

    /// Runs one collective under the deadline.
    fn timed<T>(&self, name: &'static str, call: impl FnOnce(&C) -> Result<T>) -> Result<T> {
        let seq = self.seq.get() + 1;
        self.seq.set(seq);
        {
            let mut s = self.shared.state.lock().expect("watchdog state");
            s.call = Some((name, seq, Instant::now()));
            self.shared.wake.notify_all();
        }
        // Under the deadline too: announcing may block on the network.
        if let Some(b) = &self.board {
            b.entered(seq);
        }
        let out = call(&self.inner);
        self.shared.state.lock().expect("watchdog state").call = None;
        out
    }
}

/// The monitor: sleeps until the call in flight passes its deadline, then
/// reports it once.
fn watch(shared: &Shared, timeout: Duration, report: &dyn Fn(&'static str, u64, Duration)) {
    let mut s = shared.state.lock().expect("watchdog state");
    loop {
        if s.stop {
            return;
        }
        match s.call {
            Some((name, seq, start)) if seq > s.reported => {
                let waited = start.elapsed();
                if waited >= timeout {
                    s.reported = seq;
                    drop(s);
                    report(name, seq, waited);
                    s = shared.state.lock().expect("watchdog state");
                } else {
                    s = shared
                        .wake
                        .wait_timeout(s, timeout - waited)
                        .expect("watchdog state")
                        .0;
                }
            }
            _ => s = shared.wake.wait(s).expect("watchdog state"),
        }
    }
}

impl<C: Collective> Drop for Watchdog<C> {
    fn drop(&mut self) {
        if let Ok(mut s) = self.shared.state.lock() {
            s.stop = true;
        }
        self.shared.wake.notify_all();
        if let Some(m) = self.monitor.take() {
            let _ = m.join();
        }
    }
}

impl<C: Collective> Collective for Watchdog<C> {
    fn rank(&self) -> usize {
        self.inner.rank()
    }
    fn world_size(&self) -> usize {
        self.inner.world_size()
    }
    fn all_reduce_f32(&self, buf: &mut [f32], op: ReduceOp) -> Result<()> {
        self.timed("all_reduce_f32", |c| c.all_reduce_f32(buf, op))
    }
    fn all_reduce_f64(&self, buf: &mut [f64], op: ReduceOp) -> Result<()> {
        self.timed("all_reduce_f64", |c| c.all_reduce_f64(buf, op))
    }
    fn broadcast_f32(&self, buf: &mut [f32], root: usize) -> Result<()> {
        self.timed("broadcast_f32", |c| c.broadcast_f32(buf, root))
    }
    fn barrier(&self) -> Result<()> {
        self.timed("barrier", |c| c.barrier())
    }
    fn all_reduce_tensor(&self, t: &Tensor, op: ReduceOp) -> Result<Tensor> {
        // NCCL only queues a device reduction: wait for it here, where the
        // deadline applies, not in whatever reads the result next.
        self.timed("all_reduce_tensor", |c| {
            let out = c.all_reduce_tensor(t, op)?;
            out.device().synchronize()?;
            Ok(out)
        })
    }
    fn start_all_reduce_tensor(&self, t: &Tensor, op: ReduceOp) -> Result<PendingReduce> {
        // Queuing returns at once (the deadline covers a blocked network);
        // the wait below is where a missing rank shows.
        self.timed("start_all_reduce_tensor", |c| {
            c.start_all_reduce_tensor(t, op)
        })
    }
    fn start_all_reduce_owned(&self, t: Tensor, op: ReduceOp) -> Result<PendingReduce> {
        self.timed("start_all_reduce_tensor", |c| {
            c.start_all_reduce_owned(t, op)
        })
    }
    fn wait_all_reduce(&self, pending: PendingReduce) -> Result<Tensor> {
        self.timed("wait_all_reduce", |c| {
            let out = c.wait_all_reduce(pending)?;
            out.device().synchronize()?;
            Ok(out)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;
    use crate::dist::InProcess;

    /// Records what each rank announced (a board that sees every rank, as
    /// rank 0's does).
    #[derive(Default)]
    struct Board {
        entered: Mutex<Vec<u64>>,
    }

    /// One rank's view of a shared [`Board`].
    struct RankBoard(Arc<Board>, usize);

    impl ProgressBoard for RankBoard {
        fn entered(&self, seq: u64) {
            self.0.entered.lock().unwrap()[self.1] = seq;
        }
        fn behind(&self, seq: u64) -> Vec<(usize, u64)> {
            let e = self.0.entered.lock().unwrap();
            (0..e.len())
                .filter(|&r| e[r] < seq)
                .map(|r| (r, e[r]))
                .collect()
        }
    }

    fn reporter() -> (OnHang, mpsc::Receiver<Hang>) {
        let (tx, rx) = mpsc::channel();
        let tx = Mutex::new(tx);
        (
            Box::new(move |h: &Hang| {
                let _ = tx.lock().unwrap().send(h.clone());
            }),
            rx,
        )
    }

    #[test]
    fn collectives_in_time_pass_through_unreported() {
        let (on_hang, reports) = reporter();
        let mut ranks = InProcess::group(2).into_iter();
        let (r0, r1) = (ranks.next().unwrap(), ranks.next().unwrap());
        let other = std::thread::spawn(move || {
            let mut v = [2.0f32, 4.0];
            r1.all_reduce_f32(&mut v, ReduceOp::Mean).unwrap();
            r1.barrier().unwrap();
            let t = Tensor::new(&[1f32, 2.0], &candle_core::Device::Cpu).unwrap();
            let pending = r1.start_all_reduce_tensor(&t, ReduceOp::Sum).unwrap();
            (
                v,
                r1.wait_all_reduce(pending)
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap(),
            )
        });
        let w = Watchdog::new(r0, Duration::from_secs(30), None, on_hang);
        let mut v = [4.0f32, 8.0];
        w.all_reduce_f32(&mut v, ReduceOp::Mean).unwrap();
        w.barrier().unwrap();
        let t = Tensor::new(&[10f32, 20.0], &candle_core::Device::Cpu).unwrap();
        let pending = w.start_all_reduce_tensor(&t, ReduceOp::Sum).unwrap();
        let sum = w
            .wait_all_reduce(pending)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(v, [3.0, 6.0]);
        assert_eq!(sum, [11.0, 22.0]);
        assert_eq!(other.join().unwrap(), ([3.0, 6.0], vec![11.0, 22.0]));
        drop(w);
        assert!(reports.try_recv().is_err(), "nothing was stuck");
    }

    #[test]
    fn a_rank_that_never_arrives_is_reported_with_the_collective() {
        let board = Arc::new(Board {
            entered: Mutex::new(vec![0; 3]),
        });
        let (on_hang, reports) = reporter();
        let ranks = InProcess::group(3);
        let mut handles = ranks.into_iter();
        let r0 = handles.next().unwrap();
        let (r1, r2) = (handles.next().unwrap(), handles.next().unwrap());
        // Rank 1 takes part in the first collective, then stalls (its handle
        // is kept, so the others wait); rank 2 keeps going.
        let b1 = RankBoard(board.clone(), 1);
        let b2 = RankBoard(board.clone(), 2);
        let one = std::thread::spawn(move || {
            b1.entered(1);
            r1.barrier().unwrap();
            r1
        });
        let two = std::thread::spawn(move || {
            b2.entered(1);
            r2.barrier().unwrap();
            b2.entered(2);
            let mut v = [1.0f64];
            // Fails once rank 1's handle is dropped below.
            r2.all_reduce_f64(&mut v, ReduceOp::Sum).is_err()
        });
        let w = Watchdog::new(
            r0,
            Duration::from_millis(200),
            Some(Arc::new(RankBoard(board, 0))),
            on_hang,
        );
        w.barrier().unwrap();
        let stalled = one.join().unwrap();
        let stuck = std::thread::spawn(move || {
            let mut v = [1.0f64];
            let failed = w.all_reduce_f64(&mut v, ReduceOp::Sum).is_err();
            (w, failed)
        });
        let hang = reports
            .recv_timeout(Duration::from_secs(60))
            .expect("the watchdog reports the stuck collective");
        assert_eq!(
            (hang.rank, hang.world_size, hang.collective, hang.seq),
            (0, 3, "all_reduce_f64", 2)
        );
        assert!(hang.waited >= Duration::from_millis(200));
        assert_eq!(hang.behind, vec![(1, 1)], "rank 1 stopped after #1");
        let text = hang.to_string();
        assert!(
            text.contains("collective #2 (all_reduce_f64)")
                && text.contains("not arrived: rank 1 (last entered #1)"),
            "{text}"
        );
        // Releasing the stalled rank ends the collective with an error.
        drop(stalled);
        let (w, failed) = stuck.join().unwrap();
        assert!(failed && two.join().unwrap());
        drop(w);
        assert!(
            reports.try_recv().is_err(),
            "one report per stuck collective"
        );
    }
}
