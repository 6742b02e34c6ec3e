//! `dino-run launch`: ranks get the torchrun variables, a failing rank stops
//! the others naming it, and a signal to the launcher reaches every rank.
//! The ranks run small shell scripts through `--program`.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn launch(n: usize, port: u16, script: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_dino-run"));
    c.args([
        "launch",
        "--nproc-per-node",
        &n.to_string(),
        "--master-port",
        &port.to_string(),
        "--grace",
        "3",
        "--program",
        "/bin/sh",
        "--",
        "-c",
        script,
    ]);
    c
}

#[test]
fn every_rank_gets_the_torchrun_variables() {
    let dir = tempfile::tempdir().unwrap();
    let script = format!(
        "echo $RANK $WORLD_SIZE $LOCAL_RANK $LOCAL_WORLD_SIZE $MASTER_ADDR $MASTER_PORT > {}/rank$RANK",
        dir.path().display()
    );
    let out = launch(3, 29611, &script).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for r in 0..3 {
        let text = std::fs::read_to_string(dir.path().join(format!("rank{r}"))).unwrap();
        assert_eq!(text.trim(), format!("{r} 3 {r} 3 127.0.0.1 29611"));
    }
}

#[test]
fn a_failing_rank_stops_the_others_and_is_named() {
    let start = Instant::now();
    let out = launch(
        3,
        29612,
        r#"if [ "$RANK" = 1 ]; then exit 7; fi; exec sleep 60"#,
    )
    .output()
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("rank 1 exited with status 7"), "{err}");
    // SIGTERM ends the sleeping ranks at once, well before their 60 s.
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn a_rank_that_ignores_sigterm_is_killed_after_the_grace() {
    let start = Instant::now();
    let out = launch(
        2,
        29613,
        r#"trap '' TERM; if [ "$RANK" = 0 ]; then exit 2; fi; exec sleep 60"#,
    )
    .output()
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("rank 0 exited with status 2"), "{err}");
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn sigterm_to_the_launcher_reaches_every_rank() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    // Each rank says it started, then on SIGTERM writes a file and leaves.
    let script = format!(
        "trap 'touch {d}/stopped$RANK; exit 0' TERM; touch {d}/started$RANK; \
         while true; do sleep 0.1; done"
    );
    let child = launch(2, 29614, &script)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(dir.path().join("started0").exists() && dir.path().join("started1").exists()) {
        assert!(Instant::now() < deadline, "the ranks did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130));
    assert!(String::from_utf8_lossy(&out.stderr).contains("signal received"));
    for r in 0..2 {
        assert!(dir.path().join(format!("stopped{r}")).exists(), "rank {r}");
    }
}

#[test]
fn bad_arguments_are_errors() {
    let out = launch(0, 29615, "true").output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least 1"));
    let out = Command::new(env!("CARGO_BIN_EXE_dino-run"))
        .args([
            "launch",
            "--nproc-per-node",
            "2",
            "--program",
            "/nonexistent/x",
            "--",
            "a",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("starting rank 0") && err.contains("/nonexistent/x"),
        "{err}"
    );
}

#[test]
fn a_recipe_reads_the_launch_variables() {
    let run = |vars: &[(&str, &str)]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_dino-run"));
        c.arg("no-such-recipe.yaml");
        for k in [
            "RANK",
            "WORLD_SIZE",
            "LOCAL_RANK",
            "LOCAL_WORLD_SIZE",
            "MASTER_ADDR",
            "MASTER_PORT",
            "SLURM_PROCID",
        ] {
            c.env_remove(k);
        }
        c.envs(vars.iter().copied());
        let out = c.output().unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let e = run(&[("RANK", "0"), ("WORLD_SIZE", "2")]);
    assert!(
        e.contains("LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT missing"),
        "{e}"
    );
    let full = [
        ("RANK", "1"),
        ("WORLD_SIZE", "2"),
        ("LOCAL_RANK", "1"),
        ("LOCAL_WORLD_SIZE", "2"),
        ("MASTER_ADDR", "127.0.0.1"),
        ("MASTER_PORT", "29500"),
    ];
    let e = run(&full);
    assert!(e.contains("no-such-recipe.yaml"), "{e}");
    // A pretraining recipe: one GPU per rank through NCCL, so the CPU is
    // refused, naming the rank.
    let dir = tempfile::tempdir().unwrap();
    let recipe = pretrain_recipe(dir.path());
    let mut c = Command::new(env!("CARGO_BIN_EXE_dino-run"));
    c.arg(&recipe).env_remove("SLURM_PROCID").envs(full);
    let out = c.output().unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        e.contains("rank 1 of 2") && e.contains("--device cuda") && e.contains("LOCAL_RANK = 1"),
        "{e}"
    );
    // Other tasks run as one process.
    let seg = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes/prepare.yaml");
    let mut c = Command::new(env!("CARGO_BIN_EXE_dino-run"));
    c.arg(&seg).env_remove("SLURM_PROCID").envs(full);
    let out = c.output().unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        e.contains("rank 1 of 2") && e.contains("only `pretrain` runs across GPUs"),
        "{e}"
    );
    // One process: on to the recipe (which does not exist here).
    let e = run(&[]);
    assert!(e.contains("no-such-recipe.yaml"), "{e}");
}

/// recipes/pretrain.yaml reading the bundled volumes, caching in `dir/cache`.
fn pretrain_recipe(dir: &std::path::Path) -> std::path::PathBuf {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("recipes/pretrain.yaml"))
        .unwrap()
        .replace(
            "manifest: brain_images.json",
            &format!(
                "manifest: {}",
                root.join("recipes/brain_images.json").display()
            ),
        )
        .replace(
            "dir: ../out/cache",
            &format!("dir: {}", dir.join("cache").display()),
        );
    let path = dir.join("pretrain.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn launched_ranks_warm_a_cache_in_shards() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = pretrain_recipe(dir.path());
    let out = Command::new(env!("CARGO_BIN_EXE_dino-run"))
        .args([
            "launch",
            "--nproc-per-node",
            "2",
            "--master-port",
            "29616",
            "cache",
            "warm",
        ])
        .arg(&recipe)
        .args(["--threads", "1"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("2 items (shard 0/2)"), "{text}");
    assert!(text.contains("1 items (shard 1/2)"), "{text}");
    // Together they built everything.
    let again = Command::new(env!("CARGO_BIN_EXE_dino-run"))
        .args(["cache", "warm"])
        .arg(&recipe)
        .env_remove("RANK")
        .output()
        .unwrap();
    let again = String::from_utf8_lossy(&again.stdout);
    assert!(again.contains("3 hits, 0 built"), "{again}");
}
