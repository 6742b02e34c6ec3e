//! The job's progress board over the bootstrap's connections: every rank
//! tells rank 0 the number of each collective it enters, so that rank 0's
//! [`Watchdog`](dino3d_model::dist::Watchdog) can name the ranks that never
//! arrived, and so that a rank whose process vanished (killed, crashed,
//! out of memory) is noticed at once instead of leaving the others waiting
//! inside NCCL.
//!
//! Wire format: a stream of big-endian u64 from each rank to rank 0, one per
//! collective entered; [`FINISHED`] before a rank closes its connection in
//! order. A connection that ends without it is a lost rank.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dino3d_model::dist::{Collective, Hang, ProgressBoard, Watchdog};

use super::bootstrap::Link;

/// Sent by a rank that closes its connection in order.
const FINISHED: u64 = u64::MAX;

/// Called on rank 0 with a lost rank and the last collective it entered.
pub type OnLost = Arc<dyn Fn(usize, u64) + Send + Sync>;

/// How long a rank's announcement may block before it is given up (rank 0
/// has stopped reading; the collective's deadline takes over).
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// One rank's side of the board.
pub struct TcpProgressBoard {
    side: Side,
    finished: AtomicBool,
}

enum Side {
    Single,
    /// Rank 0: the last collective each rank entered (its own at 0).
    Main {
        last: Arc<Vec<AtomicU64>>,
    },
    /// Another rank: its connection to rank 0, and whether a write failed
    /// (a word cut short would misalign every later one, so none follows;
    /// the connection stays open, as this rank is not gone).
    Other {
        stream: Mutex<(TcpStream, bool)>,
    },
}

impl TcpProgressBoard {
    /// Starts the board on the bootstrap's connections. On rank 0 one
    /// thread per rank reads its announcements and calls `on_lost` if its
    /// connection ends before it finished.
    pub fn new(link: Link, on_lost: OnLost) -> Self {
        let side = match link {
            Link::Single => Side::Single,
            Link::Other(stream) => {
                // Best effort: the announcement is then given up.
                let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
                Side::Other {
                    stream: Mutex::new((stream, false)),
                }
            }
            Link::Main(streams) => {
                let last: Arc<Vec<AtomicU64>> =
                    Arc::new((0..streams.len()).map(|_| AtomicU64::new(0)).collect());
                for (rank, stream) in streams.into_iter().enumerate() {
                    let Some(stream) = stream else { continue };
                    let (last, on_lost) = (last.clone(), on_lost.clone());
                    std::thread::Builder::new()
                        .name(format!("dino3d-progress-{rank}"))
                        .spawn(move || follow(rank, stream, &last, &*on_lost))
                        .expect("spawning a progress reader");
                }
                Side::Main { last }
            }
        };
        Self {
            side,
            finished: AtomicBool::new(false),
        }
    }
}

/// Reads one rank's announcements until it finishes or is lost.
fn follow(rank: usize, mut stream: TcpStream, last: &[AtomicU64], on_lost: &dyn Fn(usize, u64)) {
    let mut word = [0u8; 8];
    loop {
        match stream.read_exact(&mut word) {
            Ok(()) => match u64::from_be_bytes(word) {
                FINISHED => return,
                seq => last[rank].store(seq, Ordering::Relaxed),
            },
            Err(_) => {
                on_lost(rank, last[rank].load(Ordering::Relaxed));
                return;
            }
        }
    }
}

impl ProgressBoard for TcpProgressBoard {
    fn entered(&self, seq: u64) {
        match &self.side {
            Side::Single => {}
            Side::Main { last } => last[0].store(seq, Ordering::Relaxed),
            // Best effort: if rank 0 is gone the launcher stops this rank.
            Side::Other { stream } => send(stream, seq),
        }
    }

    fn behind(&self, seq: u64) -> Vec<(usize, u64)> {
        match &self.side {
            Side::Main { last } => last
                .iter()
                .enumerate()
                .map(|(rank, l)| (rank, l.load(Ordering::Relaxed)))
                .filter(|&(_, l)| l < seq)
                .collect(),
            _ => Vec::new(),
        }
    }

    fn finish(&self) {
        if self.finished.swap(true, Ordering::Relaxed) {
            return;
        }
        if let Side::Other { stream } = &self.side {
            send(stream, FINISHED);
        }
    }
}

/// Writes one word to rank 0; after a failed write nothing more is sent.
fn send(stream: &Mutex<(TcpStream, bool)>, word: u64) {
    let Ok(mut guard) = stream.lock() else { return };
    let (s, failed) = &mut *guard;
    if !*failed && s.write_all(&word.to_be_bytes()).is_err() {
        *failed = true;
    }
}

/// Called with the message when the job must stop (a stuck collective, a
/// lost rank); `dino-run` prints it and aborts the process.
pub type OnFailure = Arc<dyn Fn(&str) + Send + Sync>;

/// Starts the progress board on the bootstrap's `link` (rank 0's readers
/// at once, so a rank lost while the communicator is being set up is
/// noticed too); a lost rank goes to `on_failure`, named.
pub fn start_board(link: Link, world: usize, on_failure: OnFailure) -> Arc<TcpProgressBoard> {
    Arc::new(TcpProgressBoard::new(
        link,
        Arc::new(move |rank, last| {
            on_failure(&format!(
                "rank {rank} of {world} is gone: its connection to rank 0 closed after \
                 collective #{last} without finishing (it failed, was killed, crashed or ran \
                 out of memory)"
            ))
        }),
    ))
}

/// `comm` with a deadline of `timeout` on every collective, announcing each
/// on `board`: a collective stuck past its deadline goes to `on_failure`
/// with the ranks that never arrived (as rank 0 knows them). Call
/// [`Watchdog::finish`] when the job succeeded.
pub fn watch<C: Collective>(
    comm: C,
    board: Arc<TcpProgressBoard>,
    timeout: Duration,
    on_failure: OnFailure,
) -> Watchdog<C> {
    let secs = timeout.as_secs_f64();
    Watchdog::new(
        comm,
        timeout,
        Some(board),
        Box::new(move |hang: &Hang| {
            on_failure(&format!(
                "{hang} (the deadline is {secs:.0} s: DINO3D_COLLECTIVE_TIMEOUT)"
            ))
        }),
    )
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;
    use std::sync::mpsc;

    use dino3d_model::dist::{InProcess, ReduceOp};

    /// [`start_board`] and [`watch`] at once, as `join_nccl` does.
    fn watched<C: Collective>(
        comm: C,
        link: Link,
        timeout: Duration,
        on_failure: OnFailure,
    ) -> Watchdog<C> {
        let board = start_board(link, comm.world_size(), on_failure.clone());
        watch(comm, board, timeout, on_failure)
    }

    use super::super::bootstrap::{fetch_link, serve};
    use super::*;

    /// A world of `n` on loopback: rank 0's board and the others' links.
    fn world(
        n: usize,
    ) -> (
        TcpProgressBoard,
        Vec<TcpStream>,
        mpsc::Receiver<(usize, u64)>,
    ) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let others: Vec<_> = (1..n)
            .map(|r| {
                let a = addr.clone();
                std::thread::spawn(move || fetch_link(&a, r, n, Duration::from_secs(20)).unwrap())
            })
            .collect();
        let streams = serve(&l, n, b"id", Duration::from_secs(20)).unwrap();
        let links = others.into_iter().map(|t| t.join().unwrap().1).collect();
        let (tx, rx) = mpsc::channel();
        let tx = Mutex::new(tx);
        let on_lost: OnLost = Arc::new(move |rank, last| {
            let _ = tx.lock().unwrap().send((rank, last));
        });
        (
            TcpProgressBoard::new(Link::Main(streams), on_lost),
            links,
            rx,
        )
    }

    fn other(stream: TcpStream) -> TcpProgressBoard {
        TcpProgressBoard::new(Link::Other(stream), Arc::new(|_, _| {}))
    }

    /// Waits until rank 0's board has seen what the others sent.
    fn settled(board: &TcpProgressBoard, seq: u64, expected: &[(usize, u64)]) {
        for _ in 0..200 {
            if board.behind(seq) == expected {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(board.behind(seq), expected);
    }

    #[test]
    fn rank_0_sees_who_has_not_arrived() {
        let (main, mut links, lost) = world(3);
        let two = other(links.pop().unwrap());
        let one = other(links.pop().unwrap());
        for seq in 1..=4 {
            main.entered(seq);
            two.entered(seq);
        }
        one.entered(1);
        one.entered(2);
        settled(&main, 4, &[(1, 2)]);
        assert!(main.behind(2).is_empty());
        assert!(one.behind(4).is_empty(), "only rank 0 knows");
        // Ranks that finish in order are not lost.
        one.finish();
        two.finish();
        drop((one, two));
        std::thread::sleep(Duration::from_millis(100));
        assert!(lost.try_recv().is_err());
    }

    #[test]
    fn a_vanished_rank_is_reported_with_its_last_collective() {
        let (main, mut links, lost) = world(3);
        let two = other(links.pop().unwrap());
        let one = links.pop().unwrap();
        two.entered(1);
        {
            let mut s = &one;
            s.write_all(&7u64.to_be_bytes()).unwrap();
        }
        settled(&main, 8, &[(0, 0), (1, 7), (2, 1)]);
        // Rank 1's process dies: its socket closes without FINISHED.
        drop(one);
        let (rank, last) = lost
            .recv_timeout(Duration::from_secs(20))
            .expect("the loss is reported");
        assert_eq!((rank, last), (1, 7));
        two.finish();
        drop(two);
        assert!(lost.recv_timeout(Duration::from_millis(200)).is_err());
        // A rank that leaves without finishing (an error, a panic) is lost
        // too, however its process ends.
        let (main, mut links, lost) = world(2);
        let one = other(links.pop().unwrap());
        one.entered(1);
        drop(one);
        let (rank, _) = lost.recv_timeout(Duration::from_secs(20)).unwrap();
        assert_eq!(rank, 1);
        drop(main);
    }

    #[test]
    fn a_stuck_collective_names_the_rank_that_never_arrived() {
        // Three ranks with in-process collectives and a loopback board.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let fetchers: Vec<_> = (1..3)
            .map(|r| {
                let a = addr.clone();
                std::thread::spawn(move || fetch_link(&a, r, 3, Duration::from_secs(20)).unwrap())
            })
            .collect();
        let streams = serve(&l, 3, b"id", Duration::from_secs(20)).unwrap();
        let mut links: Vec<TcpStream> = fetchers.into_iter().map(|t| t.join().unwrap().1).collect();
        let (tx, failures) = mpsc::channel();
        let tx = Mutex::new(tx);
        let report: OnFailure = Arc::new(move |m: &str| {
            let _ = tx.lock().unwrap().send(m.to_string());
        });
        let mut comms = InProcess::group(3).into_iter();
        let c0 = comms.next().unwrap();
        let c1 = comms.next().unwrap();
        let c2 = comms.next().unwrap();
        let two_link = links.pop().unwrap();
        let one_link = links.pop().unwrap();
        let quiet: OnFailure = Arc::new(|_: &str| {});
        let w1 = watched(
            c1,
            Link::Other(one_link),
            Duration::from_secs(60),
            quiet.clone(),
        );
        let w2 = watched(c2, Link::Other(two_link), Duration::from_secs(60), quiet);
        let w0 = watched(c0, Link::Main(streams), Duration::from_millis(300), report);
        // Ranks 0 and 2 reach the second collective; rank 1 stalls after
        // the first (alive: its handle is kept).
        let two = std::thread::spawn(move || {
            w2.barrier().unwrap();
            let mut v = [1.0f32];
            let _ = w2.all_reduce_f32(&mut v, ReduceOp::Sum);
            w2.finish();
            w2
        });
        let one = std::thread::spawn(move || {
            w1.barrier().unwrap();
            w1
        });
        w0.barrier().unwrap();
        let w1 = one.join().unwrap();
        let stuck = std::thread::spawn(move || {
            let mut v = [1.0f32];
            let _ = w0.all_reduce_f32(&mut v, ReduceOp::Sum);
            w0
        });
        let m = failures
            .recv_timeout(Duration::from_secs(30))
            .expect("rank 0 reports the stuck collective");
        assert!(
            m.contains("rank 0 of 3: collective #2 (all_reduce_f32)")
                && m.contains("not arrived: rank 1 (last entered #1)")
                && m.contains("DINO3D_COLLECTIVE_TIMEOUT"),
            "{m}"
        );
        // Rank 1 now leaves without finishing: the stuck collectives end
        // with an error, and rank 0 names it as lost.
        drop(w1);
        let m = failures
            .recv_timeout(Duration::from_secs(30))
            .expect("rank 0 reports the lost rank");
        assert!(m.contains("rank 1 of 3 is gone"), "{m}");
        let (w0, w2) = (stuck.join().unwrap(), two.join().unwrap());
        w0.finish();
        drop((w0, w2));
        assert!(failures.try_recv().is_err(), "two reports in all");
    }
}
