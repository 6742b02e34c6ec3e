//! `pretrain` as two data-parallel ranks (threads over the model crate's
//! in-process collectives) on the shrunk demo recipe: both ranks agree, only
//! rank 0 writes, a run moves between 2 ranks and 1 process (the data
//! position re-sharded), and a recipe whose `train.world_size` is not the
//! job's is a clear error.

use std::path::{Path, PathBuf};

use dino3d_model::candle_core::Device;
use dino3d_model::dist::{Collective, InProcess};
use dino3d_tasks::pretrain::{Options, Outcome, checkpoints, run, run_ranked};
use dino3d_tasks::{Silent, Task, compile_file_with};

/// The demo recipe reading four bundled volumes (an even split over two
/// ranks), writing under `dir`.
fn recipe(dir: &Path) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/volumes");
    let images: Vec<String> = [
        "colin27_mricron/ch2.nii.gz",
        "colin27_mricron/ch2bet.nii.gz",
        "mni152_2009a_nilearn/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
        "mni152_2009a_nilearn/mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    ]
    .iter()
    .map(|p| format!("{{\"image\": {:?}}}", root.join(p).display().to_string()))
    .collect();
    let manifest = dir.join("images.json");
    std::fs::write(&manifest, format!("[{}]", images.join(",\n"))).unwrap();
    let text = std::fs::read_to_string(root.join("../../recipes/demo.yaml"))
        .unwrap()
        .replace(
            "manifest: brain_images.json",
            &format!("manifest: {}", manifest.display()),
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
    // Each rank read its 2-item shard twice.
    assert_eq!(meta.rank_positions, [(1, 2, 2), (1, 2, 2)]);
    let lines = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 2, "one metrics line per iteration");

    // One process takes over (the two shards' consumed items re-sharded),
    // then two ranks again.
    let (plan, task) = compile_file_with(&recipe, &sets(1, &["train.max_iterations=3"])).unwrap();
    let Task::Pretrain(t) = task else { panic!() };
    let one = run(
        &plan,
        &t,
        &recipe,
        &Device::Cpu,
        &Options::default(),
        &Silent,
        &mut |_, _| {},
    );
    let (start, end, loss) = last_loss(&one.map_err(|e| e.chain()));
    assert_eq!((start, end), (2, 3));
    assert!(loss.is_finite());
    let (meta, _) = checkpoints::latest(&out, &Device::Cpu).unwrap().unwrap();
    assert_eq!(meta.iteration, 3);
    assert!(meta.rank_positions.is_empty());
    // Each rank read its 2-item shard twice (epochs 0 and 1): epoch 1's 4
    // items are re-sharded into one shard of 4, so the next batch starts
    // epoch 2.
    assert_eq!(
        (meta.data_epoch, meta.data_position, meta.next_batch),
        (2, 2, 3)
    );

    let third = run_world(&recipe, 2, &[]);
    let (a, b) = (last_loss(&third[0]), last_loss(&third[1]));
    assert_eq!((a.0, a.1), (3, 4));
    assert_eq!(a, b);
    let lines = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 4);
    assert!(
        out.join("eval/training_3/teacher_checkpoint.safetensors")
            .exists()
    );

    // A different model is still refused.
    let (plan, task) =
        compile_file_with(&recipe, &sets(2, &["model.head_n_prototypes=64"])).unwrap();
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
    assert!(e.contains("different model or schedule"), "{e}");
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

/// `train.activation_checkpointing`, `train.attention`,
/// `train.gradient_reduce` and `train.gradient_bucket_mb` change how the
/// step is computed, not what: the
/// same losses (to float rounding, bf16's for the gradients), and a run may
/// resume with them switched (they are not part of its identity).
#[test]
fn how_the_step_is_computed_does_not_change_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = recipe(dir.path());
    let plain = run_world(&recipe, 1, &["train.max_iterations=2"]);
    assert_eq!(last_loss(&plain[0]).1, 2);
    let switched = [
        "train.activation_checkpointing=true",
        "train.attention=fused",
        "train.gradient_reduce=bf16",
        "train.gradient_bucket_mb=1",
    ];
    let resumed = run_world(&recipe, 1, &switched);
    let (start, end, resumed_loss) = last_loss(&resumed[0]);
    assert_eq!((start, end), (2, 4), "resumed with the keys switched");

    let other = tempfile::tempdir().unwrap();
    let recipe = self::recipe(other.path());
    let (_, _, straight_loss) = last_loss(&run_world(&recipe, 1, &[])[0]);
    assert!(
        (resumed_loss - straight_loss).abs() <= 1e-4 * straight_loss.abs(),
        "{resumed_loss} vs {straight_loss}"
    );

    // Two ranks reducing in bf16 agree with each other and, to bf16's
    // rounding of the gradients, with two ranks reducing in f32.
    let bf16_dir = tempfile::tempdir().unwrap();
    let bf16 = run_world(
        &self::recipe(bf16_dir.path()),
        2,
        &[switched[2], switched[3]],
    );
    assert_eq!(last_loss(&bf16[0]), last_loss(&bf16[1]));
    let f32_dir = tempfile::tempdir().unwrap();
    let f32_run = run_world(&self::recipe(f32_dir.path()), 2, &[]);
    let (bf16_loss, f32_loss) = (last_loss(&bf16[0]).2, last_loss(&f32_run[0]).2);
    assert!(
        (bf16_loss - f32_loss).abs() <= 1e-2 * f32_loss.abs(),
        "{bf16_loss} vs {f32_loss}"
    );
}
