//! The TCP bootstrap and the progress board between real processes: this
//! test binary runs itself as the ranks (`rank_process` and
//! `progress_rank_process`, which do nothing unless the parent set
//! `DINO3D_BOOTSTRAP_CHILD` or `DINO3D_PROGRESS_CHILD`), each reading the
//! torchrun variables.

use std::process::{Command, Output};
use std::time::Duration;

use dino3d_tasks::distributed::{LaunchEnv, bootstrap};

/// One rank: exchange a blob, print what arrived.
#[test]
fn rank_process() {
    let Ok(timeout_ms) = std::env::var("DINO3D_BOOTSTRAP_CHILD") else {
        return;
    };
    let env = LaunchEnv::from_process_env().unwrap();
    let blob = format!("id-from-rank-{}", env.rank);
    let timeout = Duration::from_millis(timeout_ms.parse().unwrap());
    match bootstrap::exchange(&env, blob.as_bytes(), timeout) {
        Ok(got) => println!(
            "RESULT rank {} got {}",
            env.rank,
            String::from_utf8(got).unwrap()
        ),
        Err(e) => println!("RESULT rank {} failed: {e}", env.rank),
    }
}

fn spawn(rank: usize, world: usize, port: u16, timeout_ms: u64) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["rank_process", "--exact", "--nocapture", "--test-threads=1"])
        .env("DINO3D_BOOTSTRAP_CHILD", timeout_ms.to_string())
        .env("RANK", rank.to_string())
        .env("WORLD_SIZE", world.to_string())
        .env("LOCAL_RANK", rank.to_string())
        .env("LOCAL_WORLD_SIZE", world.to_string())
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", port.to_string())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

fn result(out: Output) -> String {
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .find_map(|l| l.split_once("RESULT ").map(|(_, r)| r.to_string()))
        .unwrap_or_else(|| panic!("no result in {text}"))
}

#[test]
fn three_processes_get_rank_0_s_blob() {
    // The others start first: they retry until rank 0 listens.
    let others: Vec<_> = (1..3).map(|r| spawn(r, 3, 29631, 30_000)).collect();
    std::thread::sleep(Duration::from_millis(200));
    let zero = spawn(0, 3, 29631, 30_000);
    assert_eq!(
        result(zero.wait_with_output().unwrap()),
        "rank 0 got id-from-rank-0"
    );
    for (r, p) in (1..3).zip(others) {
        assert_eq!(
            result(p.wait_with_output().unwrap()),
            format!("rank {r} got id-from-rank-0")
        );
    }
}

#[test]
fn a_process_that_never_comes_is_named() {
    let zero = spawn(0, 3, 29632, 1_000);
    let two = spawn(2, 3, 29632, 1_000);
    let z = result(zero.wait_with_output().unwrap());
    assert!(
        z.contains("failed") && z.contains("rank(s) 1 of 3 never arrived"),
        "{z}"
    );
    let t = result(two.wait_with_output().unwrap());
    assert!(
        t.contains("rank 0 stopped the job") && t.contains("rank(s) 1 of 3"),
        "{t}"
    );
}

/// A rank as its own process for the progress board: joins, announces
/// collectives 1 and 2, says so, then waits to be killed.
#[test]
fn progress_rank_process() {
    if std::env::var("DINO3D_PROGRESS_CHILD").is_err() {
        return;
    }
    use dino3d_model::dist::ProgressBoard;
    let env = LaunchEnv::from_process_env().unwrap();
    let (_, link) = bootstrap::join(&env, b"", Duration::from_secs(30)).unwrap();
    let board = dino3d_tasks::distributed::progress::start_board(
        link,
        env.world_size,
        std::sync::Arc::new(|_: &str| {}),
    );
    board.entered(1);
    board.entered(2);
    println!("RESULT announced");
    std::thread::sleep(Duration::from_secs(120));
}

/// A rank process killed mid-job (SIGKILL: no chance to say anything) is
/// named by rank 0 at once, with the last collective it entered.
#[test]
fn a_killed_rank_process_is_named_by_rank_0() {
    use std::collections::HashMap;
    use std::io::{BufRead, BufReader};
    use std::sync::{Mutex, mpsc};

    use dino3d_model::dist::ProgressBoard;
    let port = 29633;
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "progress_rank_process",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("DINO3D_PROGRESS_CHILD", "1")
        .envs([
            ("RANK", "1"),
            ("WORLD_SIZE", "2"),
            ("LOCAL_RANK", "1"),
            ("LOCAL_WORLD_SIZE", "2"),
            ("MASTER_ADDR", "127.0.0.1"),
        ])
        .env("MASTER_PORT", port.to_string())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let vars: HashMap<String, String> = [
        ("RANK", "0"),
        ("WORLD_SIZE", "2"),
        ("LOCAL_RANK", "0"),
        ("LOCAL_WORLD_SIZE", "2"),
        ("MASTER_ADDR", "127.0.0.1"),
        ("MASTER_PORT", "29633"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let env = LaunchEnv::from_vars(&vars).unwrap();
    let (_, link) = bootstrap::join(&env, b"id", Duration::from_secs(30)).unwrap();
    let (tx, failures) = mpsc::channel::<String>();
    let tx = Mutex::new(tx);
    let board = dino3d_tasks::distributed::progress::start_board(
        link,
        2,
        std::sync::Arc::new(move |m: &str| {
            let _ = tx.lock().unwrap().send(m.to_string());
        }),
    );
    // Wait until the child has announced, then kill it.
    let mut line = String::new();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    while !line.contains("RESULT announced") {
        line.clear();
        assert!(
            out.read_line(&mut line).unwrap() > 0,
            "the child ended early"
        );
    }
    for _ in 0..200 {
        if board.behind(3) == [(0, 0), (1, 2)] {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(board.behind(3), [(0, 0), (1, 2)]);
    child.kill().unwrap();
    child.wait().unwrap();
    let m = failures
        .recv_timeout(Duration::from_secs(30))
        .expect("rank 0 names the killed rank");
    assert!(
        m.contains("rank 1 of 2 is gone") && m.contains("after collective #2"),
        "{m}"
    );
}
