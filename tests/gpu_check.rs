//! `scripts/gpu-check.sh --run-step` with stand-ins for the GPU executables,
//! `nvidia-smi` and `python3`, so the script's own logic is checked here and
//! not first on a lent GPU machine, whose minutes are few: a run-wide budget
//! (`BUDGET_S`) ends the run in time, lists what it left unrun, names a step
//! it cut, and the whole log lands in `OUT`.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn script(path: &Path, body: &str) {
    fs::write(path, format!("#!/bin/sh\n{body}\n")).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

/// A gpu-bin folder whose training-step "executable" sleeps `FAKE_SLEEP`
/// seconds and prints its environment's ARCH and BATCH, and a folder of
/// stand-ins for `nvidia-smi` and `python3` to put first on PATH.
fn stand_ins(root: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let bin = root.join("gpu-bin");
    let path = root.join("path");
    fs::create_dir_all(&bin).unwrap();
    fs::create_dir_all(&path).unwrap();
    script(
        &bin.join("train_step_cuda"),
        "echo \"step ARCH=$ARCH BATCH=$BATCH\"; exec sleep \"$FAKE_SLEEP\"",
    );
    // `unpack` leaves an executable that is already there alone.
    fs::write(bin.join("train_step_cuda.xz"), b"").unwrap();
    script(
        &path.join("nvidia-smi"),
        "echo 1234; case \"$*\" in *-lms*) exec sleep 60;; esac",
    );
    script(
        &path.join("python3"),
        "echo \"torch $*\"; exec sleep \"$FAKE_SLEEP\"",
    );
    (bin, path)
}

/// `gpu-check.sh --run-step` on the stand-ins, with the library search
/// kept to the test's folder (the default search walks whole trees).
fn gpu_check(root: &Path, fake_sleep: &str) -> Command {
    let (bin, path) = stand_ins(root);
    let mut c = Command::new("bash");
    c.arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/gpu-check.sh"))
        .arg("--run-step")
        .arg(&bin)
        .env(
            "PATH",
            format!("{}:{}", path.display(), std::env::var("PATH").unwrap()),
        )
        .env("FAKE_SLEEP", fake_sleep)
        .env("OUT", root.join("out"))
        .env("TMPDIR", root)
        .env("CUDA_LIB_SEARCH", root)
        // A second of grace after a step's timeout (the script's default is
        // 10), kept inside the budget.
        .env("KILL_AFTER_S", "1")
        .env_remove("BUDGET_S")
        .env_remove("MIN_STEP_S")
        .env_remove("STEP_TIMEOUT")
        .env_remove("DINO3D_ALLOW_SKIP");
    c
}

fn run_step(root: &Path, budget_s: u32, min_step_s: u32, fake_sleep: &str) -> (Output, Duration) {
    let start = Instant::now();
    let out = gpu_check(root, fake_sleep)
        .env("BUDGET_S", budget_s.to_string())
        .env("MIN_STEP_S", min_step_s.to_string())
        .output()
        .unwrap();
    (out, start.elapsed())
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

#[test]
fn a_spent_budget_leaves_the_remaining_steps_unrun_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    // Steps of 0.2 s, and none started with under 2 s left (after the
    // second of grace): the first rows run and pass, the others are listed,
    // nothing is cut. Bash's SECONDS ticks on clock seconds, so the first
    // row starts unless the set-up takes over a second.
    let (out, took) = run_step(dir.path(), 4, 2, "0.2");
    let log = text(&out);
    assert_eq!(out.status.code(), Some(3), "{log}");
    assert!(
        log.contains("=== [train step ViT-S b2 f32] exit 0"),
        "{log}"
    );
    assert!(
        log.contains("not run: the budget (BUDGET_S=4) is spent"),
        "{log}"
    );
    // The least needed row comes last, so the budget skips it.
    assert!(log.contains("   - train step ViT-L b8 tf32\n"), "{log}");
    assert!(
        log.contains("every step that ran passed; incomplete"),
        "{log}"
    );
    assert!(!log.contains("failed"), "{log}");
    assert!(took < Duration::from_secs(8), "took {took:?}\n{log}");
    // Each row that ran left its peak memory line, and OUT has the whole log.
    let memory = fs::read_to_string(dir.path().join("out/gpu_memory.txt")).unwrap();
    assert!(memory.contains("[train step ViT-S b2 f32] peak GPU memory in use: 1234 MiB"));
    let saved = fs::read_to_string(dir.path().join("out/gpu-check.log")).unwrap();
    assert!(saved.contains("step ARCH=small BATCH=2"), "{saved}");
    assert!(
        saved.contains("every step that ran passed; incomplete"),
        "{saved}"
    );
}

#[test]
fn a_step_longer_than_the_budget_is_cut_and_named() {
    let dir = tempfile::tempdir().unwrap();
    // The first row would sleep 60 s; the budget stops it after 1 or 2.
    let (out, took) = run_step(dir.path(), 3, 1, "60");
    let log = text(&out);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(log.contains("train step ViT-S b2 f32 (cut after "), "{log}");
    assert!(log.contains("s by the budget)"), "{log}");
    assert!(log.contains("   - train step ViT-L b32 bf16\n"), "{log}");
    assert!(took < Duration::from_secs(10), "took {took:?}\n{log}");
}

#[test]
fn without_a_budget_every_row_runs_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let out = gpu_check(dir.path(), "0").output().unwrap();
    let log = text(&out);
    assert_eq!(out.status.code(), Some(0), "{log}");
    assert!(log.contains("== GPU check: all steps passed"), "{log}");
    // 10 rows of ours and 3 of PyTorch's; ours at batch 32 in bf16 right
    // after the smoke row, PyTorch's at the same batch next to it.
    let rows: Vec<&str> = log
        .lines()
        .filter(|l| {
            (l.starts_with("=== [train step") || l.starts_with("=== [torch"))
                && l.contains("] exit 0")
        })
        .collect();
    assert_eq!(rows.len(), 13, "{log}");
    assert!(
        rows[1].starts_with("=== [train step ViT-L b32 bf16]"),
        "{rows:?}"
    );
    assert!(
        rows[2].starts_with("=== [torch ViT-L b32 bf16]"),
        "{rows:?}"
    );
    assert!(
        log.contains("torch") && log.contains("--bf16 --batch 64"),
        "{log}"
    );
}
