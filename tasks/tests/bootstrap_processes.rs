//! The TCP bootstrap between real processes: this test binary runs itself
//! as the ranks (`rank_process`, which does nothing unless the parent set
//! `DINO3D_BOOTSTRAP_CHILD`), each reading the torchrun variables.

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
