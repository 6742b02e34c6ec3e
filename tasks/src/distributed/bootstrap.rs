//! Rank 0 hands every other rank one blob (the NCCL unique id) over TCP at
//! `MASTER_ADDR:MASTER_PORT`, as torch's TCPStore does for NCCL; only after
//! all ranks have arrived, so a rank that never comes is reported by number.
//!
//! Wire format (big-endian): a rank sends `MAGIC`, its rank and the world
//! size (u32 each); rank 0 answers a status byte, then either the blob (u32
//! length + bytes) or, on failure, a message (u32 length + UTF-8).

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use super::{DistError, LaunchEnv};

const MAGIC: &[u8; 8] = b"DINO3DB1";
/// Largest blob accepted (an NCCL id is 128 bytes).
pub const MAX_BLOB: usize = 1 << 20;
const POLL: Duration = Duration::from_millis(20);
const HELLO_WAIT: Duration = Duration::from_secs(5);

fn fail(m: impl Into<String>) -> DistError {
    DistError::Bootstrap(m.into())
}

/// Rank 0: listens on all interfaces at `env.master_port`, waits for every
/// other rank until `timeout`, then sends each `blob` and returns it. Other
/// ranks: connect to `env.master_addr:master_port` (retrying until `timeout`,
/// rank 0 may start later) and return what rank 0 sent.
pub fn exchange(env: &LaunchEnv, blob: &[u8], timeout: Duration) -> Result<Vec<u8>, DistError> {
    Ok(join(env, blob, timeout)?.0)
}

/// The connections the bootstrap leaves open, for the job's progress board
/// ([`super::progress`]).
#[derive(Debug)]
pub enum Link {
    /// A job of one process.
    Single,
    /// Rank 0: the connection of every other rank, at its rank's index.
    Main(Vec<Option<TcpStream>>),
    /// Another rank: its connection to rank 0.
    Other(TcpStream),
}

/// [`exchange`], keeping the connections open.
pub fn join(env: &LaunchEnv, blob: &[u8], timeout: Duration) -> Result<(Vec<u8>, Link), DistError> {
    if env.world_size <= 1 {
        return Ok((blob.to_vec(), Link::Single));
    }
    if env.rank == 0 {
        let listener = TcpListener::bind(("0.0.0.0", env.master_port)).map_err(|e| {
            fail(format!(
                "rank 0 cannot listen on port {}: {e}",
                env.master_port
            ))
        })?;
        let streams = serve(&listener, env.world_size, blob, timeout)?;
        Ok((blob.to_vec(), Link::Main(streams)))
    } else {
        let addr = format!("{}:{}", env.master_addr, env.master_port);
        let (blob, stream) = fetch_link(&addr, env.rank, env.world_size, timeout)?;
        Ok((blob, Link::Other(stream)))
    }
}

/// Rank 0's side on a bound listener (tests bind port 0); returns the
/// other ranks' connections, at their ranks' indices.
pub fn serve(
    listener: &TcpListener,
    world_size: usize,
    blob: &[u8],
    timeout: Duration,
) -> Result<Vec<Option<TcpStream>>, DistError> {
    if blob.len() > MAX_BLOB {
        return Err(fail(format!("a blob of {} bytes is too large", blob.len())));
    }
    let deadline = Instant::now() + timeout;
    listener
        .set_nonblocking(true)
        .map_err(|e| fail(format!("listener: {e}")))?;
    let mut arrived: Vec<Option<TcpStream>> = (0..world_size).map(|_| None).collect();
    let mut waiting = world_size - 1;
    while waiting > 0 {
        match listener.accept() {
            Ok((mut stream, peer)) => {
                // A stray connection (a port scanner, a rank of another job)
                // is dropped, not fatal.
                let _ = stream.set_nonblocking(false);
                match read_hello(&mut stream, world_size, deadline) {
                    Ok(rank) if arrived[rank].is_none() => {
                        arrived[rank] = Some(stream);
                        waiting -= 1;
                    }
                    Ok(rank) => {
                        let m = format!("rank {rank} arrived twice (second from {peer})");
                        send_error(&mut stream, &m);
                        abort(&mut arrived, &m);
                        return Err(fail(m));
                    }
                    Err(Hello::WrongWorld(m)) => {
                        send_error(&mut stream, &m);
                        abort(&mut arrived, &m);
                        return Err(fail(m));
                    }
                    Err(Hello::Stray) => {}
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    let missing: Vec<String> = (1..world_size)
                        .filter(|&r| arrived[r].is_none())
                        .map(|r| r.to_string())
                        .collect();
                    let m = format!(
                        "rank(s) {} of {world_size} never arrived within {:.0} s",
                        missing.join(", "),
                        timeout.as_secs_f64()
                    );
                    abort(&mut arrived, &m);
                    return Err(fail(m));
                }
                std::thread::sleep(POLL);
            }
            Err(e) => return Err(fail(format!("accept: {e}"))),
        }
    }
    for (rank, stream) in arrived.iter_mut().enumerate() {
        if let Some(s) = stream {
            let mut msg = vec![0u8];
            msg.extend_from_slice(&(blob.len() as u32).to_be_bytes());
            msg.extend_from_slice(blob);
            s.write_all(&msg)
                .map_err(|e| fail(format!("sending to rank {rank}: {e}")))?;
            s.set_read_timeout(None)
                .map_err(|e| fail(format!("rank {rank}'s connection: {e}")))?;
        }
    }
    Ok(arrived)
}

enum Hello {
    /// Not one of ours: ignore it.
    Stray,
    /// One of ours with a contradictory layout: stop the job.
    WrongWorld(String),
}

fn read_hello(s: &mut TcpStream, world_size: usize, deadline: Instant) -> Result<usize, Hello> {
    // Ranks speak at once; a silent peer must not hold up the others long.
    let left = deadline
        .saturating_duration_since(Instant::now())
        .clamp(POLL, HELLO_WAIT);
    s.set_read_timeout(Some(left)).map_err(|_| Hello::Stray)?;
    let mut buf = [0u8; 16];
    s.read_exact(&mut buf).map_err(|_| Hello::Stray)?;
    if &buf[..8] != MAGIC {
        return Err(Hello::Stray);
    }
    let rank = u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]) as usize;
    let world = u32::from_be_bytes([buf[12], buf[13], buf[14], buf[15]]) as usize;
    if world != world_size || rank == 0 || rank >= world_size {
        return Err(Hello::WrongWorld(format!(
            "a process says it is rank {rank} of {world}, but rank 0 has world size {world_size}"
        )));
    }
    Ok(rank)
}

fn send_error(s: &mut TcpStream, m: &str) {
    let mut msg = vec![1u8];
    msg.extend_from_slice(&(m.len() as u32).to_be_bytes());
    msg.extend_from_slice(m.as_bytes());
    // Best effort: the rank may already be gone.
    let _ = s.write_all(&msg);
}

/// Tells every rank that arrived why the job stops, so none hangs.
fn abort(arrived: &mut [Option<TcpStream>], m: &str) {
    for s in arrived.iter_mut().flatten() {
        send_error(s, m);
    }
}

/// Another rank's side: connects to `addr` and returns the blob.
pub fn fetch(
    addr: &str,
    rank: usize,
    world_size: usize,
    timeout: Duration,
) -> Result<Vec<u8>, DistError> {
    Ok(fetch_link(addr, rank, world_size, timeout)?.0)
}

/// [`fetch`], keeping the connection to rank 0.
pub fn fetch_link(
    addr: &str,
    rank: usize,
    world_size: usize,
    timeout: Duration,
) -> Result<(Vec<u8>, TcpStream), DistError> {
    let deadline = Instant::now() + timeout;
    let mut stream = connect(addr, deadline)?;
    let mut hello = MAGIC.to_vec();
    hello.extend_from_slice(&(rank as u32).to_be_bytes());
    hello.extend_from_slice(&(world_size as u32).to_be_bytes());
    stream
        .write_all(&hello)
        .map_err(|e| fail(format!("rank {rank}: sending to rank 0 at {addr}: {e}")))?;
    // Rank 0 answers once all ranks are in; it gives up at its own deadline,
    // so wait a little longer than ours before calling it lost.
    let left = deadline.saturating_duration_since(Instant::now()) + Duration::from_secs(5);
    stream
        .set_read_timeout(Some(left))
        .map_err(|e| fail(e.to_string()))?;
    let lost = |e: std::io::Error| {
        fail(format!(
            "rank {rank}: no answer from rank 0 at {addr} ({e}); did rank 0 stop?"
        ))
    };
    let mut head = [0u8; 5];
    stream.read_exact(&mut head).map_err(lost)?;
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if len > MAX_BLOB {
        return Err(fail(format!("rank {rank}: rank 0 announced {len} bytes")));
    }
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).map_err(lost)?;
    match head[0] {
        0 => Ok((body, stream)),
        _ => Err(fail(format!(
            "rank 0 stopped the job: {}",
            String::from_utf8_lossy(&body)
        ))),
    }
}

fn connect(addr: &str, deadline: Instant) -> Result<TcpStream, DistError> {
    let mut last = String::from("no attempt");
    loop {
        let targets: Vec<SocketAddr> = match addr.to_socket_addrs() {
            Ok(a) => a.collect(),
            Err(e) => {
                last = format!("cannot resolve: {e}");
                Vec::new()
            }
        };
        for t in &targets {
            let left = deadline.saturating_duration_since(Instant::now()).max(POLL);
            match TcpStream::connect_timeout(t, left) {
                Ok(s) => return Ok(s),
                Err(e) => last = e.to_string(),
            }
        }
        if Instant::now() >= deadline {
            return Err(fail(format!(
                "rank 0 at {addr} could not be reached before the timeout ({last})"
            )));
        }
        std::thread::sleep(POLL * 5);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listener() -> (TcpListener, String) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        (l, addr)
    }

    #[test]
    fn every_rank_gets_the_blob() {
        let (l, addr) = listener();
        let blob: Vec<u8> = (0..128u8).collect();
        let ranks: Vec<_> = (1..4)
            .map(|r| {
                let addr = addr.clone();
                std::thread::spawn(move || fetch(&addr, r, 4, Duration::from_secs(20)))
            })
            .collect();
        serve(&l, 4, &blob, Duration::from_secs(20)).unwrap();
        for r in ranks {
            assert_eq!(r.join().unwrap().unwrap(), blob);
        }
    }

    #[test]
    fn a_rank_that_starts_before_rank_0_retries() {
        let (l, addr) = listener();
        let port = l.local_addr().unwrap().port();
        drop(l);
        let r = std::thread::spawn(move || fetch(&addr, 1, 2, Duration::from_secs(20)));
        std::thread::sleep(Duration::from_millis(300));
        let l = TcpListener::bind(("127.0.0.1", port)).unwrap();
        serve(&l, 2, b"id", Duration::from_secs(20)).unwrap();
        assert_eq!(r.join().unwrap().unwrap(), b"id");
    }

    #[test]
    fn missing_ranks_are_named_to_everyone() {
        let (l, addr) = listener();
        let r2 = std::thread::spawn(move || fetch(&addr, 2, 4, Duration::from_secs(1)));
        let e = serve(&l, 4, b"id", Duration::from_millis(500))
            .unwrap_err()
            .to_string();
        assert!(e.contains("rank(s) 1, 3 of 4 never arrived"), "{e}");
        let e2 = r2.join().unwrap().unwrap_err().to_string();
        assert!(
            e2.contains("rank 0 stopped the job") && e2.contains("1, 3"),
            "{e2}"
        );
    }

    #[test]
    fn contradictory_ranks_stop_the_job() {
        let (l, addr) = listener();
        let a = addr.clone();
        let wrong = std::thread::spawn(move || fetch(&a, 1, 3, Duration::from_secs(5)));
        let e = serve(&l, 2, b"id", Duration::from_secs(5))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("rank 1 of 3") && e.contains("world size 2"),
            "{e}"
        );
        assert!(wrong.join().unwrap().is_err());

        let (l, addr) = listener();
        let twice: Vec<_> = (0..2)
            .map(|_| {
                let a = addr.clone();
                std::thread::spawn(move || fetch(&a, 1, 3, Duration::from_secs(5)))
            })
            .collect();
        let e = serve(&l, 3, b"id", Duration::from_secs(5))
            .unwrap_err()
            .to_string();
        assert!(e.contains("rank 1 arrived twice"), "{e}");
        for t in twice {
            assert!(t.join().unwrap().is_err());
        }
    }

    #[test]
    fn stray_connections_are_ignored() {
        let (l, addr) = listener();
        let a = addr.clone();
        let stray = std::thread::spawn(move || {
            let mut s = TcpStream::connect(&a).unwrap();
            s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        });
        let r = std::thread::spawn(move || fetch(&addr, 1, 2, Duration::from_secs(20)));
        serve(&l, 2, b"id", Duration::from_secs(20)).unwrap();
        stray.join().unwrap();
        assert_eq!(r.join().unwrap().unwrap(), b"id");
    }

    #[test]
    fn unreachable_rank_0_times_out_with_the_address() {
        let (l, addr) = listener();
        drop(l);
        let e = fetch(&addr, 1, 2, Duration::from_millis(300))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&addr) && e.contains("could not be reached"),
            "{e}"
        );
    }

    #[test]
    fn one_process_needs_no_network() {
        let env = LaunchEnv::single();
        assert_eq!(exchange(&env, b"x", Duration::ZERO).unwrap(), b"x");
    }
}
