//! `dino-run launch --nproc-per-node N RECIPE ...`: N ranks on this node
//! with the torchrun variables (one node's torchrun). The first rank that
//! fails stops the job, and the message names it; SIGINT and SIGTERM are
//! passed on to every rank.

use std::ffi::OsString;
use std::process::{Child, Command, ExitCode, ExitStatus};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use dino3d_tasks::distributed::{LaunchEnv, LaunchSource};

/// `dino-run launch`.
#[derive(Debug, clap::Args)]
pub(crate) struct LaunchArgs {
    /// Ranks to start on this node (one per GPU).
    #[arg(long, value_name = "N")]
    nproc_per_node: usize,
    /// Port of rank 0's rendezvous on 127.0.0.1.
    #[arg(long, default_value_t = 29500)]
    master_port: u16,
    /// Seconds the other ranks get to stop after a rank fails or a signal
    /// arrives, before they are killed.
    #[arg(long, default_value_t = 30)]
    grace: u64,
    /// Run this program in every rank instead of `dino-run` (a wrapper
    /// such as a profiler, or a script; torchrun's `--no-python`).
    #[arg(long, value_name = "PATH")]
    program: Option<std::path::PathBuf>,
    /// What every rank runs: a recipe and its `dino-run` options (or the
    /// arguments of `--program`).
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<OsString>,
}

const POLL: Duration = Duration::from_millis(50);

pub(crate) fn run(args: &LaunchArgs) -> anyhow::Result<ExitCode> {
    let n = args.nproc_per_node;
    if n == 0 {
        bail!("--nproc-per-node must be at least 1");
    }
    if args.master_port == 0 {
        bail!("--master-port must be a port (1 to 65535)");
    }
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone()).context("installing a signal handler")?;
    }
    let exe = match &args.program {
        Some(p) => p.clone(),
        None => std::env::current_exe().context("finding the dino-run executable")?,
    };
    let mut ranks: Vec<Option<Child>> = Vec::with_capacity(n);
    for rank in 0..n {
        let env = LaunchEnv {
            rank,
            world_size: n,
            local_rank: rank,
            local_world_size: n,
            master_addr: "127.0.0.1".into(),
            master_port: args.master_port,
            source: LaunchSource::Torchrun,
        };
        match Command::new(&exe)
            .args(&args.args)
            .envs(env.torchrun_vars())
            .spawn()
        {
            Ok(child) => ranks.push(Some(child)),
            Err(e) => {
                stop_all(&mut ranks, Duration::from_secs(args.grace));
                return Err(e).with_context(|| format!("starting rank {rank} ({})", exe.display()));
            }
        }
    }
    let grace = Duration::from_secs(args.grace);
    loop {
        if stop.load(Ordering::SeqCst) {
            eprintln!("launch: signal received; stopping all {n} ranks");
            stop_all(&mut ranks, grace);
            return Ok(ExitCode::from(130));
        }
        for rank in 0..n {
            let Some(child) = ranks[rank].as_mut() else {
                continue;
            };
            let Some(status) = child.try_wait().context("waiting for a rank")? else {
                continue;
            };
            ranks[rank] = None;
            if !status.success() {
                eprintln!(
                    "launch: rank {rank} {}; stopping the other ranks",
                    describe(status)
                );
                stop_all(&mut ranks, grace);
                bail!("rank {rank} {}", describe(status));
            }
        }
        if ranks.iter().all(Option::is_none) {
            return Ok(ExitCode::SUCCESS);
        }
        std::thread::sleep(POLL);
    }
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exited with status {c}"),
        (None, Some(s)) => format!("was killed by signal {s}"),
        _ => format!("ended ({status})"),
    }
}

/// SIGTERM to every running rank, SIGKILL to those still running after
/// `grace`, then reaps them all.
fn stop_all(ranks: &mut [Option<Child>], grace: Duration) {
    for child in ranks.iter_mut().flatten() {
        terminate(child);
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline
        && ranks
            .iter_mut()
            .flatten()
            .any(|c| matches!(c.try_wait(), Ok(None)))
    {
        std::thread::sleep(POLL);
    }
    for child in ranks.iter_mut().flatten() {
        // Already exited is fine: kill then reports an error we ignore.
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Asks `child` to stop (SIGTERM), so it can finish a checkpoint write.
fn terminate(child: &Child) {
    let Ok(pid) = libc::pid_t::try_from(child.id()) else {
        return;
    };
    // SAFETY: kill(2) takes plain integers and touches no memory of ours;
    // `pid` is our own child, not yet reaped (we hold its `Child` and only
    // `wait` after this), so the pid cannot have been reused by another
    // process. Tested by tests/launch.rs (a failing rank stops the others).
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
}
