//! `task: pretrain`: 3DINO's training loop (spec §2) over the recipe's
//! multi-crop pipeline, resumable from its own checkpoints.
//!
//! [`config`] reads the recipe's training sections, [`setup`] maps them onto
//! the model crate, [`checkpoints`] and [`metrics`] keep the run's state;
//! [`run`] trains.

pub mod checkpoints;
pub mod config;
mod feed;
pub mod metrics;
mod ranks;
pub mod setup;

use std::path::{Path, PathBuf};
use std::time::Instant;

use dino3d_model::candle_core::{Device, Tensor};
use dino3d_model::checkpoint::save_tensors;
use dino3d_model::dist::{Collective, SingleProcess};
use dino3d_model::schedule::Schedules;
use dino3d_model::ssl::{SslBatch, SslModel};
use dino3d_model::upload::Uploader;
use dino3d_pipeline::exec::{Dataset, Keep, Loader, LoaderConfig, Order};
use dino3d_pipeline::recipe::Plan;

use crate::error::{Context, Result, TaskError, bail};
use crate::progress::{Progress, Silent};
use config::PretrainConfig;
use metrics::{MetricsLog, Record, ThreeDinoLosses};

/// The output folder of a training recipe (relative to the recipe's folder).
pub fn output_dir(config: &PretrainConfig, recipe: &Path) -> PathBuf {
    recipe
        .parent()
        .unwrap_or(Path::new(""))
        .join(&config.output_dir)
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Every iteration was done before: `done` of `total`.
    NothingToDo {
        /// Iterations done.
        done: usize,
        /// Iterations of the schedule.
        total: usize,
        /// The output folder.
        out: PathBuf,
    },
    /// Iterations `start..end` of `total` ran.
    Trained {
        /// First iteration run.
        start: usize,
        /// One past the last.
        end: usize,
        /// Iterations of the schedule.
        total: usize,
        /// The last iteration's loss.
        last_loss: f64,
        /// Seconds per iteration, data wait included.
        seconds_per_iteration: f64,
        /// Share of the step time spent waiting for data, in percent.
        data_wait_percent: f64,
        /// The output folder.
        out: PathBuf,
    },
}

/// How a run treats its environment (not part of the recipe).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Options {
    /// Train on uncached samples when the cache folder cannot be written
    /// (said in the banner and in `metrics.jsonl`); otherwise that is an
    /// error at start.
    pub allow_uncached: bool,
}

/// Runs (or resumes) the pretraining a recipe describes. `on_checkpoint`
/// gets the run's records so far each time a resumable checkpoint is written
/// (the binary redraws its loss curve there).
///
/// # Errors
/// Bad settings, checkpoints of another run, unreadable data or weights, a
/// model failure.
pub fn run(
    plan: &Plan,
    t: &PretrainConfig,
    recipe: &Path,
    device: &Device,
    options: &Options,
    progress: &dyn Progress,
    on_checkpoint: &mut dyn FnMut(&[Record], &Path),
) -> Result<Outcome> {
    run_ranked(
        plan,
        t,
        recipe,
        device,
        options,
        progress,
        on_checkpoint,
        &SingleProcess,
    )
}

/// [`run`] as one rank of a data-parallel job over `comm`: this rank reads
/// its shard of every epoch, steps with [`SslModel::step_with`] (targets
/// centred over all ranks, gradients averaged) and only rank 0 writes
/// checkpoints, teacher weights and metrics and reports progress. The
/// recipe's `train.world_size` must be the job's (it sets the global batch
/// of the learning-rate rule). With a world of one this is [`run`].
#[allow(clippy::too_many_arguments)]
pub fn run_ranked(
    plan: &Plan,
    t: &PretrainConfig,
    recipe: &Path,
    device: &Device,
    options: &Options,
    progress: &dyn Progress,
    on_checkpoint: &mut dyn FnMut(&[Record], &Path),
    comm: &dyn Collective,
) -> Result<Outcome> {
    let (rank, world) = (comm.rank(), comm.world_size());
    let main = rank == 0;
    let progress: &dyn Progress = if main { progress } else { &Silent };
    if world > 1 && t.world_size != world {
        bail!(
            "train.world_size is {} but the job has {world} ranks; set train.world_size={world} (it sets the global batch of the learning-rate rule)",
            t.world_size
        );
    }
    let device = device.clone();
    // The step's compute precision, on this thread for the whole run (the
    // model, losses and optimiser all run here).
    let _precision = dino3d_model::precision::autocast(t.precision_on(&device));
    let _attention = dino3d_model::use_attention_kernel(t.attention_kernel());
    let out = output_dir(t, recipe);
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let cfg = setup::ssl_config(t, plan)?;
    let n_global = setup::global_crops_per_sample(plan);
    let schedules = Schedules::new(&setup::schedule_config(t, plan.batch.size));
    let total = t.total_iterations();
    let fingerprint = fingerprint(plan, t, &cfg);

    let mut model = SslModel::new(cfg, &device, plan.seed)?;
    model.set_activation_checkpointing(t.activation_checkpointing);
    model.set_gradient_reduce_dtype(t.gradient_reduce_dtype())?;
    model.set_gradient_bucket_bytes(t.gradient_bucket_mb.saturating_mul(1 << 20))?;
    if main {
        checkpoints::remove_leftovers(&out);
    }
    // No rank reads the checkpoints before rank 0 has tidied them.
    comm.barrier()?;
    let mut start = 0usize;
    let mut data_start = (0u64, 0usize, 0u64);
    match checkpoints::latest(&out, &device)? {
        Some((meta, state)) => {
            let written_by = meta.rank_positions.len().max(1);
            // A run may continue on another number of ranks: its settings
            // are then those of the recipe at the old world size.
            let same_run = meta.fingerprint == fingerprint
                || (written_by != world && {
                    let then = PretrainConfig {
                        world_size: written_by,
                        ..t.clone()
                    };
                    meta.fingerprint == self::fingerprint(plan, &then, model.config())
                });
            if !same_run {
                bail!(
                    "{} holds checkpoints of a different model or schedule (fingerprint {} vs {}); use another train.output_dir or remove {}",
                    out.display(),
                    meta.fingerprint,
                    fingerprint,
                    checkpoints::folder(&out).display()
                );
            }
            model
                .load_state(state)
                .context("restoring the checkpoint")?;
            start = meta.iteration;
            let (position, note) = ranks::resume_position(&meta, rank, world)?;
            data_start = position;
            if let Some(note) = note {
                progress.note(&note);
            }
            progress.note(&format!(
                "resuming at iteration {start} from {}",
                out.display()
            ));
        }
        None => {
            if let Some(w) = &t.pretrained_weights {
                let path = recipe.parent().unwrap_or(Path::new("")).join(w);
                let grid = model.config().backbone.pos_grid;
                let weights = load_pretrained(&path, &device, grid)?;
                let loaded = model.load_pretrained(&weights)?;
                if !loaded.iter().any(|n| n.starts_with("backbone.")) {
                    bail!(
                        "{}: no backbone tensor of {} fits this model",
                        recipe.display(),
                        path.display()
                    );
                }
                progress.note(&format!(
                    "loaded {} tensors from {} into student and teacher (position grid {grid}³)",
                    loaded.len(),
                    path.display()
                ));
            }
        }
    }
    // `train.max_iterations` is where the run stops in all, as in 3DINO,
    // whatever was done before a resume.
    let end = t.max_iterations.map_or(total, |m| m.min(total));
    if t.world_size > 1 && world == 1 {
        tracing::warn!(
            "train.world_size {} only scales the learning rate here: this process trains alone on batch {}",
            t.world_size,
            plan.batch.size
        );
    }
    if start >= end {
        return Ok(Outcome::NothingToDo {
            done: start,
            total,
            out,
        });
    }

    let (data, note) = open_data(plan, recipe, options.allow_uncached)?;
    if let Some(why) = &data.unwritable {
        progress.note(&format!("warning: {why}"));
    }
    let cache_unwritable = data.unwritable.is_some();
    let items = data.source.len();
    let mut config = LoaderConfig::from_plan(plan);
    config.start = data_start;
    (config.rank, config.world) = (rank, world);
    // A GPU turns the crops z fastest itself, far faster than the loader.
    if !device.is_cpu() {
        config.order = Order::XFastest;
    }
    let cache = data.cache.clone();
    let mut cache_reports_seen = 0;
    let loader = Loader::start(data.pipeline, data.source, config).map_err(TaskError::msg)?;
    // Batch n + 1 is uploaded while step n runs (on a GPU through pinned
    // buffers on a copy stream of its own).
    let mut feed = feed::Feed::start(loader, Uploader::new(&device)?)?;
    let (mut log, mut history) = if main {
        let (log, history) = MetricsLog::open(&out, start)?;
        (Some(log), history)
    } else {
        (None, Vec::new())
    };
    progress.note(&format!(
        "pretraining ViT-{} on {items} items ({note}), batch {}, iterations {start}..{end} of {total}, output {}",
        t.arch,
        plan.batch.size,
        out.display()
    ));
    let bar = progress.bar((end - start) as u64, "it");
    let (mut wait_sum, mut compute_sum) = (0.0f64, 0.0f64);
    for it in start..end {
        let t0 = Instant::now();
        let fed = feed.next().context("the data loader stopped")??;
        let data_wait_s = t0.elapsed().as_secs_f64();
        // Said once, above the bar (a logged copy would print it twice).
        for s in &fed.loaded.skipped {
            bar.note(&format!("skipped: {s}"));
        }
        // Damaged entries (rebuilt) and writes a full disk refused.
        if let Some(cache) = &cache {
            for r in cache.new_reports(&mut cache_reports_seen) {
                bar.note(&format!("cache: {r}"));
            }
        }
        let t1 = Instant::now();
        let (loaded, globals, locals) = fed.crops()?;
        let batch = SslBatch {
            globals: &globals,
            locals: locals.as_ref(),
            n_global_crops: n_global,
            masks: &loaded.batch.masks.mask,
        };
        let values = schedules.at(it);
        let report = model
            .step_with(
                &batch,
                values,
                Some(drop_path_seed(plan.seed, it, rank)),
                Some(comm),
            )
            .with_context(|| format!("iteration {it}"))?;
        // The first step sets the buckets' order; the second shows what
        // overlaps the backward from then on.
        if main
            && it == start + 1
            && let Some(sync) = model.last_gradient_sync()
        {
            bar.note(&format!(
                "gradient all-reduce: {} buckets of up to {} MiB, {} started during the backward",
                sync.buckets, t.gradient_bucket_mb, sync.started_in_backward
            ));
        }
        let compute_s = t1.elapsed().as_secs_f64();
        wait_sum += data_wait_s;
        compute_sum += compute_s;
        // All ranks' samples (each rank's batch is the recipe's).
        let samples = loaded.batch.items.len() * world;
        let record = Record {
            iteration: it,
            loss: report.losses.total,
            dino_local: report.losses.dino_local,
            dino_global: report.losses.dino_global,
            koleo: report.losses.koleo,
            ibot: report.losses.ibot,
            lr: values.lr,
            last_layer_lr: values.last_layer_lr,
            wd: values.wd,
            momentum: values.momentum,
            teacher_temp: values.teacher_temp,
            grad_norm_backbone: report.grad_norms[0],
            grad_norm_dino_head: report.grad_norms[1],
            grad_norm_ibot_head: report.grad_norms[2],
            n_masked: report.n_masked,
            data_wait_s,
            compute_s,
            samples_per_s: samples as f64 / (data_wait_s + compute_s),
            skipped: loaded.skipped.len() + loaded.skipped_again,
            threedino: ThreeDinoLosses::new(
                [
                    report.losses.dino_local,
                    report.losses.dino_global,
                    report.losses.koleo,
                    report.losses.ibot,
                ],
                t.dino_loss_weight,
                t.ibot_loss_weight,
            ),
            cache_unwritable,
        };
        if let Some(log) = &mut log
            && log.write(&record)? == 1
        {
            bar.note(
                "metrics.jsonl: the disk is full; its lines wait in memory until there is space",
            );
        }
        history.push(record);
        let done = it + 1;
        // A full disk mid-run is waited out: training goes on, and what
        // could not be written is tried again at its next period. The run's
        // last writes must succeed.
        let last = done == end;
        let tolerate = |what: &str, result: Result<()>| -> Result<()> {
            match result {
                Err(e) if !last && e.is_out_of_space() => {
                    bar.note(&format!(
                        "{what} at iteration {done} not written, the disk is full ({}); training goes on and tries again at the next one",
                        e.chain()
                    ));
                    Ok(())
                }
                other => other,
            }
        };
        if main && (done % t.eval_period_iterations == 0 || done == total) {
            tolerate(
                "teacher checkpoint",
                save_teacher(&model, &out, it).map(drop),
            )?;
        }
        if done % t.checkpoint_period == 0 || last {
            let position = (
                loaded.next_position.0,
                loaded.next_position.1,
                loaded.index + 1,
            );
            // Every rank takes part: rank 0 writes all ranks' positions.
            let rank_positions = ranks::gather_positions(position, comm)?;
            if let Some(log) = &mut log {
                let meta = checkpoints::Meta {
                    iteration: done,
                    data_epoch: position.0,
                    data_position: position.1,
                    next_batch: position.2,
                    fingerprint: fingerprint.clone(),
                    rank_positions,
                };
                // A checkpoint never runs ahead of the metrics it resumes after.
                let saved = log.write_pending().and_then(|()| {
                    checkpoints::save(&out, &model.state()?, &meta, t.keep_checkpoints)
                });
                if saved.is_ok() {
                    on_checkpoint(&history, &out);
                }
                tolerate("checkpoint", saved.map(drop))?;
            }
        }
        bar.inc(1);
        bar.set_message(format!(
            "loss {:.3}, {:.2} samples/s, data wait {:.0}%",
            report.losses.total,
            samples as f64 / (data_wait_s + compute_s),
            100.0 * wait_sum / (wait_sum + compute_sum)
        ));
    }
    drop(bar);
    let n = (end - start) as f64;
    Ok(Outcome::Trained {
        start,
        end,
        total,
        last_loss: history.last().map_or(f64::NAN, |r| r.loss),
        seconds_per_iteration: (wait_sum + compute_sum) / n,
        data_wait_percent: 100.0 * wait_sum / (wait_sum + compute_sum),
        out,
    })
}

/// What a resumed run must share with the one that wrote the checkpoint:
/// model, schedules, seed, data, the cached prefix (its canonical hash), the
/// views and the batching (not threads, prefetch or run length).
fn fingerprint(plan: &Plan, t: &PretrainConfig, cfg: &dino3d_model::ssl::SslConfig) -> String {
    let views: Vec<String> = plan
        .views
        .iter()
        .map(|v| format!("{}:{:?}:{}:{}", v.name, v.role, v.count, v.steps.len()))
        .collect();
    let b = &plan.batch;
    let text = format!(
        "{:?}|{:?}|{}|{:?}|{}|{views:?}|{}|{}|{:?}|{}",
        cfg,
        setup::schedule_config(t, plan.batch.size),
        plan.seed,
        plan.manifest,
        plan.prefix_hash,
        b.size,
        b.mask_sample_probability,
        b.mask_ratio,
        b.patch_size
    );
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(text.as_bytes()))
}

/// 3DINO's teacher checkpoint: `eval/training_<it>/teacher_checkpoint.safetensors`
/// with the teacher's `backbone.*`, `dino_head.*`, `ibot_head.*`.
fn save_teacher(model: &SslModel, out: &Path, it: usize) -> Result<PathBuf> {
    let dir = out.join("eval").join(format!("training_{it}"));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join("teacher_checkpoint.safetensors");
    let tensors = model
        .teacher_vars()
        .data()
        .lock()
        .expect("VarMap lock")
        .iter()
        .map(|(k, v)| Ok((k.clone(), v.as_tensor().detach().copy()?)))
        .collect::<Result<_>>()?;
    save_tensors(&tensors, &path)?;
    Ok(path)
}

/// Weights to start from: ours (safetensors) or a 3DINO `.pth`.
fn load_pretrained(
    path: &Path,
    device: &Device,
    pos_grid: usize,
) -> Result<std::collections::HashMap<String, Tensor>> {
    let w = dino3d_model::checkpoint::read_weights(path, device)
        .with_context(|| format!("reading pretrained weights {}", path.display()))?;
    let mut map = w.to_prefixed();
    // Stage 2 trains at a larger crop: resize the position grid on load
    // (6³ → 7³ with the +0.1 rule, spec §2.7).
    if let Some(pos) = map.get("backbone.pos_embed").cloned()
        && pos.dim(1)? != 1 + pos_grid.pow(3)
    {
        let resized = dino3d_model::pos_embed::resize_checkpoint(&pos, pos_grid)?;
        map.insert("backbone.pos_embed".into(), resized);
    }
    Ok(map)
}

/// The drop-path seed of an iteration: a function of the run's seed and the
/// iteration, so a resumed run draws the same masks as an uninterrupted one;
/// and of the rank after the first (their samples differ, so should their
/// draws), rank 0 keeping the single-process seed.
fn drop_path_seed(seed: u64, it: usize, rank: usize) -> u64 {
    let mut bytes = [seed.to_le_bytes(), (it as u64).to_le_bytes()].concat();
    if rank > 0 {
        bytes.extend((rank as u64).to_le_bytes());
    }
    xxhash_rust::xxh3::xxh3_64(&bytes)
}

/// The recipe's data: its on-disk cache if it names one (with
/// `allow_uncached`, samples are served uncached when the folder cannot be
/// written; otherwise that is an error before training starts), else
/// prepared samples kept in memory.
fn open_data(plan: &Plan, recipe: &Path, allow_uncached: bool) -> Result<(Dataset, String)> {
    let keep = Keep {
        disk: true,
        allow_uncached,
        memory: true,
    };
    let data = Dataset::open(plan, recipe, keep)?;
    crate::data::log_items(&data.items);
    let note = match (&data.cache, &data.unwritable) {
        (Some(_), Some(_)) => "on-disk cache NOT WRITABLE: samples served uncached".to_string(),
        (Some(_), None) => "on-disk cache".to_string(),
        (None, _) => "prepared in memory".to_string(),
    };
    Ok((data, note))
}
