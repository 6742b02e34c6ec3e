//! `pretrain` as two data-parallel ranks (threads over the model crate's
//! in-process collectives) on the shrunk demo recipe: both ranks agree, only
//! rank 0 writes, a resume continues each rank's shard, and a resume with
//! another world size or a recipe with another `train.world_size` is a clear
//! error.

use std::path::{Path, PathBuf};

use dino3d_model::candle_core::Device;
use dino3d_model::dist::{Collective, InProcess};
use dino3d_tasks::pretrain::{Options, Outcome, checkpoints, run, run_ranked};
use dino3d_tasks::{Silent, Task, compile_file_with};

/// The demo recipe reading the bundled volumes, writing under `dir`.
fn recipe(dir: &Path) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let text = std::fs::read_to_string(root.join("recipes/demo.yaml"))
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
        )
        .lines()
        .map(|l| match l.trim_start().strip_prefix("output_dir:") {
            Some(_) => format!("  output_dir: {}", dir.join("out").display()),
            None => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    let path = dir.join("demo.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The CLI tests' shrunk demo, 4 iterations, for `world` ranks.
fn sets(world: usize, extra: &[&str]) -> Vec<String> {
    [
        "views.0.pipeline.0.size=32",
        "views.1.pipeline.0.size=32",
        "views.2.pipeline.0.size=16",
        "views.2.count=2",
        "batch.size=2",
        "batch.threads=1",
        "model.head_n_prototypes=128",
        "model.head_hidden_dim=32",
        "model.head_bottleneck_dim=16",
        "optim.epochs=1",
        "optim.epoch_length=4",
        "train.checkpoint_period=2",
        "train.eval_period_iterations=4",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([format!("train.world_size={world}")])
    .chain(extra.iter().map(|s| s.to_string()))
    .collect()
}

fn run_world(recipe: &Path, world: usize, extra: &[&str]) -> Vec<Result<Outcome, String>> {
    let (plan, task) = compile_file_with(recipe, &sets(world, extra)).unwrap();
    let Task::Pretrain(t) = task else {
        panic!("a pretrain recipe")
    };
    std::thread::scope(|s| {
        let threads: Vec<_> = InProcess::group(world)
            .into_iter()
            .map(|comm| {
                let (plan, t) = (&plan, &t);
                s.spawn(move || {
                    let mut writes = 0;
                    let r = run_ranked(
                        plan,
                        t,
                        recipe,
                        &Device::Cpu,
                        &Options::default(),
                        &Silent,
                        &mut |_, _| writes += 1,
                        &comm,
                    );
                    if comm.rank() > 0 {
                        assert_eq!(writes, 0, "only rank 0 reports checkpoints");
                    }
                    r.map_err(|e| e.chain())
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    })
}

fn last_loss(o: &Result<Outcome, String>) -> (usize, usize, f64) {
    match o {
        Ok(Outcome::Trained {
            start,
            end,
            last_loss,
            ..
        }) => (*start, *end, *last_loss),
        other => panic!("{other:?}"),
    }
}

#[test]
fn two_ranks_train_agree_write_once_and_resume() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = recipe(dir.path());
    let first = run_world(&recipe, 2, &["train.max_iterations=2"]);
    let (a, b) = (last_loss(&first[0]), last_loss(&first[1]));
    assert_eq!((a.0, a.1), (0, 2));
    // The logged loss is the ranks' mean: the same on both.
    assert_eq!(a, b);
    assert!(a.2.is_finite());
    let out = dir.path().join("out");
    let (meta, _) = checkpoints::latest(&out, &Device::Cpu).unwrap().unwrap();
    assert_eq!(meta.iteration, 2);
    assert_eq!(meta.rank_positions.len(), 2);
    // Each rank read 2 batches of 2 from its own shard.
    assert!(meta.rank_positions.iter().all(|p| p.2 == 2), "{meta:?}");
    let lines = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 2, "one metrics line per iteration");

    let second = run_world(&recipe, 2, &[]);
    let (a, b) = (last_loss(&second[0]), last_loss(&second[1]));
    assert_eq!((a.0, a.1), (2, 4));
    assert_eq!(a, b);
    let lines = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 4);
    assert!(
        out.join("eval/training_3/teacher_checkpoint.safetensors")
            .exists()
    );

    // One process cannot take over a two-rank run's data positions (same
    // recipe, so the same fingerprint).
    let (plan, task) = compile_file_with(&recipe, &sets(2, &[])).unwrap();
    let Task::Pretrain(t) = task else { panic!() };
    let e = run(
        &plan,
        &t,
        &recipe,
        &Device::Cpu,
        &Options::default(),
        &Silent,
        &mut |_, _| {},
    )
    .unwrap_err()
    .chain();
    assert!(
        e.contains("written by a job of 2 rank(s), this one has 1"),
        "{e}"
    );
}

#[test]
fn the_recipe_world_size_must_be_the_job_s() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = recipe(dir.path());
    let (plan, task) = compile_file_with(&recipe, &sets(4, &[])).unwrap();
    let Task::Pretrain(t) = task else { panic!() };
    let results = run_world_with(&recipe, &plan, &t, 2);
    for r in results {
        let e = r.unwrap_err();
        assert!(
            e.contains("train.world_size is 4 but the job has 2 ranks"),
            "{e}"
        );
    }
}

fn run_world_with(
    recipe: &Path,
    plan: &dino3d_pipeline::recipe::Plan,
    t: &dino3d_tasks::pretrain::config::PretrainConfig,
    world: usize,
) -> Vec<Result<Outcome, String>> {
    std::thread::scope(|s| {
        let threads: Vec<_> = InProcess::group(world)
            .into_iter()
            .map(|comm| {
                s.spawn(move || {
                    run_ranked(
                        plan,
                        t,
                        recipe,
                        &Device::Cpu,
                        &Options::default(),
                        &Silent,
                        &mut |_, _| {},
                        &comm,
                    )
                    .map_err(|e| e.chain())
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    })
}
