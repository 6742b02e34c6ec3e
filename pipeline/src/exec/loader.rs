//! The batch loader: a producer thread walks the sharded infinite sampler,
//! prepares and augments samples on a rayon pool (samples and their crops in
//! parallel), collates them and hands batches over a bounded channel, so at
//! most `prefetch` finished batches wait in memory (back-pressure).
//!
//! Every random draw is keyed by (seed, epoch, item, crop, step) and the mask
//! draw by the batch number, so batches are bit-identical for any thread count.
//! An item that fails to load or transform is skipped, counted and reported
//! with its path (in [`Batch::skipped`]); the run goes on.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::manifest::ManifestEntry;
use crate::transforms::DrawKey;

use super::collate::{Batch, Order, collate_crops_into, collate_samples};
use super::masks::ibot_masks;
use super::runner::{Output, Pipeline};
use super::sample::{Prepared, Sample};
use super::sampler::InfiniteSampler;

/// Where prepared (prefix) samples come from: read and prepare each time,
/// an in-memory cache, or (issue 4) the on-disk cache.
pub trait PreparedSource: Send + Sync {
    /// Number of items.
    fn len(&self) -> usize;
    /// Whether there are no items.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The item's file, for messages.
    fn path(&self, index: usize) -> PathBuf;
    /// The prepared sample of item `index`.
    ///
    /// # Errors
    /// When the item cannot be read or prepared.
    fn prepared(&self, index: usize) -> Result<Prepared>;
    /// What `pipeline`'s random part makes of item `index` in `epoch`: by
    /// default [`Pipeline::finish`] on the prepared sample. A source may cut
    /// the views another way when the result is the same (the on-disk cache
    /// cuts them plane by plane as it decodes).
    ///
    /// # Errors
    /// When the item cannot be read or prepared, or a step fails.
    fn output(&self, pipeline: &Pipeline, epoch: u64, index: usize) -> Result<Output> {
        let prepared = self.prepared(index)?;
        pipeline.finish(&prepared, epoch, index as u64, &self.path(index))
    }
}

/// Reads and prepares the item on every request.
pub struct DirectSource {
    pipeline: Arc<Pipeline>,
    entries: Vec<ManifestEntry>,
    manifest: PathBuf,
}

impl DirectSource {
    /// A source over `entries` of the manifest at `manifest`.
    pub fn new(pipeline: Arc<Pipeline>, entries: Vec<ManifestEntry>, manifest: &Path) -> Self {
        DirectSource {
            pipeline,
            entries,
            manifest: manifest.to_path_buf(),
        }
    }
}

impl PreparedSource for DirectSource {
    fn len(&self) -> usize {
        self.entries.len()
    }
    fn path(&self, index: usize) -> PathBuf {
        self.entries[index].resolve(&self.manifest)
    }
    fn prepared(&self, index: usize) -> Result<Prepared> {
        self.pipeline
            .prepare(&self.entries[index], &self.manifest)
            .map(Arc::new)
    }
}

/// Prepares each item once and keeps it in memory (MONAI's `CacheDataset`
/// without the per-fetch deep copy); failures are remembered too.
pub struct MemorySource {
    inner: DirectSource,
    slots: Vec<OnceLock<std::result::Result<Prepared, Arc<Error>>>>,
}

impl MemorySource {
    /// Wraps `inner`.
    pub fn new(inner: DirectSource) -> Self {
        let slots = (0..inner.len()).map(|_| OnceLock::new()).collect();
        MemorySource { inner, slots }
    }
}

impl PreparedSource for MemorySource {
    fn len(&self) -> usize {
        self.inner.len()
    }
    fn path(&self, index: usize) -> PathBuf {
        self.inner.path(index)
    }
    fn prepared(&self, index: usize) -> Result<Prepared> {
        self.slots[index]
            .get_or_init(|| self.inner.prepared(index).map_err(Arc::new))
            .clone()
            .map_err(|source| Error::Remembered {
                path: self.inner.path(index),
                source,
            })
    }
}

/// Loader settings.
#[derive(Debug, Clone, PartialEq)]
pub struct LoaderConfig {
    /// Samples per batch.
    pub batch_size: usize,
    /// Worker threads (0: all cores).
    pub threads: usize,
    /// Finished batches held ahead.
    pub prefetch: usize,
    /// Seed of the sampler and masks.
    pub seed: u64,
    /// This process's rank and the world size.
    pub rank: usize,
    /// Number of ranks.
    pub world: usize,
    /// Start position `(epoch, position in epoch)` and batch number.
    pub start: (u64, usize, u64),
    /// Fraction of global crops masked.
    pub mask_sample_probability: f64,
    /// Masked-token fraction range.
    pub mask_ratio: (f64, f64),
    /// Model patch size (token grid).
    pub patch_size: usize,
    /// Memory order of the crops in a multi-crop batch (z fastest unless the
    /// consumer turns them itself, as a GPU does).
    pub order: Order,
}

impl LoaderConfig {
    /// Settings from a compiled plan.
    pub fn from_plan(plan: &crate::recipe::Plan) -> Self {
        LoaderConfig {
            batch_size: plan.batch.size,
            threads: plan.batch.threads,
            prefetch: plan.batch.prefetch,
            seed: plan.seed,
            rank: 0,
            world: 1,
            start: (0, 0, 0),
            mask_sample_probability: plan.batch.mask_sample_probability,
            mask_ratio: plan.batch.mask_ratio,
            patch_size: plan.batch.patch_size,
            order: Order::ZFastest,
        }
    }
}

/// A finished batch with what happened while making it.
#[derive(Debug)]
pub struct LoadedBatch {
    /// Multi-crop batch (empty tensors without views).
    pub batch: Batch,
    /// Per-key tensors for pipelines without views.
    pub tensors: Vec<(String, super::collate::Tensor5)>,
    /// Items skipped while making it: their errors (each names its file).
    /// An item is reported here once, in the batch where it first failed.
    pub skipped: Vec<Error>,
    /// Items that failed earlier in this run and were passed over without
    /// reading them again (a bad file is not retried, nor logged, every
    /// epoch).
    pub skipped_again: usize,
    /// Its number.
    pub index: u64,
    /// Where the sampler stands after it: `(epoch, position)` (for resuming).
    pub next_position: (u64, usize),
}

/// The running loader; iterate it for batches, and hand each batch back with
/// [`Loader::recycle`] once its tensors are copied. Dropping it stops the
/// worker.
pub struct Loader {
    rx: Option<Receiver<Result<LoadedBatch>>>,
    worker: Option<JoinHandle<()>>,
    spare: Arc<SpareBuffers>,
}

/// Batch buffers the consumer handed back, filled again by the producer. A
/// batch of 3DINO's 128 samples is 1.4 GB: allocated anew, each batch would
/// be faulted in page by page (about 2,600 pages per sample) unless the
/// allocator happens to keep so large a block.
#[derive(Default)]
struct SpareBuffers(Mutex<Vec<Vec<f32>>>);

impl SpareBuffers {
    /// Buffers kept: the global and local tensors of two batches.
    const KEEP: usize = 4;

    /// The largest spare buffer, or a new empty one.
    fn take(&self) -> Vec<f32> {
        let Ok(mut spare) = self.0.lock() else {
            return Vec::new();
        };
        let largest = (0..spare.len()).max_by_key(|&i| spare[i].capacity());
        largest.map_or_else(Vec::new, |i| spare.swap_remove(i))
    }

    fn give(&self, mut buffer: Vec<f32>) {
        if buffer.capacity() == 0 {
            return;
        }
        buffer.clear();
        if let Ok(mut spare) = self.0.lock()
            && spare.len() < Self::KEEP
        {
            spare.push(buffer);
        }
    }
}

impl Loader {
    /// Starts the worker thread.
    ///
    /// # Errors
    /// When the thread pool cannot be built.
    pub fn start(
        pipeline: Arc<Pipeline>,
        source: Arc<dyn PreparedSource>,
        config: LoaderConfig,
    ) -> Result<Loader> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(config.threads)
            .thread_name(|i| format!("dino3d-loader-{i}"))
            .build()
            .map_err(|e| Error::LoaderStart {
                reason: e.to_string(),
            })?;
        let (tx, rx) = sync_channel(config.prefetch.max(1) - 1);
        let spare = Arc::new(SpareBuffers::default());
        let buffers = Arc::clone(&spare);
        let worker = std::thread::Builder::new()
            .name("dino3d-batcher".into())
            .spawn(move || {
                let producer = Producer {
                    pipeline: &pipeline,
                    source: source.as_ref(),
                    config: &config,
                    pool: &pool,
                    spare: &buffers,
                };
                produce(producer, &tx);
            })
            .map_err(|e| Error::LoaderStart {
                reason: e.to_string(),
            })?;
        Ok(Loader {
            rx: Some(rx),
            worker: Some(worker),
            spare,
        })
    }

    /// Takes a batch's crop tensors (leaving them empty) for a later batch
    /// to be written into: call it once they are copied (a batch not handed
    /// back is simply freed).
    pub fn recycle(&self, batch: &mut Batch) {
        self.spare.give(std::mem::take(&mut batch.global.data));
        self.spare.give(std::mem::take(&mut batch.local.data));
    }
}

impl Iterator for Loader {
    type Item = Result<LoadedBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        self.rx.as_ref()?.recv().ok()
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        // Closing the channel makes the worker's next send fail, so it stops.
        self.rx.take();
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

enum Made {
    Crops(super::runner::MultiCrop),
    Samples(Vec<Sample>),
}

/// What the producer thread works with.
#[derive(Clone, Copy)]
struct Producer<'a> {
    pipeline: &'a Pipeline,
    source: &'a dyn PreparedSource,
    config: &'a LoaderConfig,
    pool: &'a rayon::ThreadPool,
    spare: &'a SpareBuffers,
}

fn produce(producer: Producer<'_>, tx: &SyncSender<Result<LoadedBatch>>) {
    let Producer {
        pipeline,
        source,
        config,
        pool,
        spare,
    } = producer;
    let (epoch, at, mut index) = config.start;
    let mut sampler = InfiniteSampler::new(
        source.len(),
        config.seed,
        config.rank,
        config.world,
        epoch,
        at,
    );
    let b = config.batch_size.max(1);
    // Items that failed once: left out for the rest of the run. Whether an
    // item is read or passed over, it is skipped the same way, so batches do
    // not depend on when the loader started.
    let mut known_bad = std::collections::HashSet::new();
    loop {
        let mut made: Vec<(u64, usize, Made)> = Vec::with_capacity(b);
        let mut skipped = Vec::new();
        let mut skipped_again = 0;
        // Distinct items that failed since the last success: when that is
        // every item, nothing can succeed (counting picks instead would
        // stop early when one bad item comes up twice across an epoch end).
        let mut failed_since_success = std::collections::HashSet::new();
        while made.len() < b {
            let mut picks: Vec<(u64, usize)> = sampler.by_ref().take(b - made.len()).collect();
            if picks.is_empty() {
                let _ = tx.send(Err(Error::NoItems));
                return;
            }
            picks.retain(|&(_, i)| {
                let bad = known_bad.contains(&i);
                if bad {
                    skipped_again += 1;
                    failed_since_success.insert(i);
                }
                !bad
            });
            let results: Vec<Result<Output>> = pool.install(|| {
                picks
                    .par_iter()
                    .map(|&(e, i)| source.output(pipeline, e, i))
                    .collect()
            });
            for ((e, i), r) in picks.into_iter().zip(results) {
                match r {
                    Ok(Output::Crops(c)) => {
                        made.push((e, i, Made::Crops(c)));
                        failed_since_success.clear();
                    }
                    Ok(Output::Samples(s)) => {
                        made.push((e, i, Made::Samples(s)));
                        failed_since_success.clear();
                    }
                    Err(err) => {
                        skipped.push(err);
                        failed_since_success.insert(i);
                        known_bad.insert(i);
                    }
                }
            }
            if failed_since_success.len() >= source.len().max(1) {
                let Some(last) = skipped.pop() else {
                    let _ = tx.send(Err(Error::EveryItemFailedBefore));
                    return;
                };
                let _ = tx.send(Err(Error::EveryItemFailed {
                    last: Box::new(last),
                }));
                return;
            }
        }
        // On the pool: collation writes the crops in parallel.
        let batch = pool.install(|| assemble(made, config, index, pipeline, spare));
        let sent = tx.send(batch.map(|(batch, tensors)| LoadedBatch {
            batch,
            tensors,
            skipped,
            skipped_again,
            index,
            next_position: sampler.position(),
        }));
        if sent.is_err() {
            return;
        }
        index += 1;
    }
}

type Assembled = (Batch, Vec<(String, super::collate::Tensor5)>);

fn assemble(
    made: Vec<(u64, usize, Made)>,
    config: &LoaderConfig,
    index: u64,
    pipeline: &Pipeline,
    spare: &SpareBuffers,
) -> Result<Assembled> {
    let items = made.iter().map(|(_, i, _)| *i).collect();
    let epochs = made.iter().map(|(e, _, _)| *e).collect();
    if !pipeline.has_views() {
        let samples: Vec<Sample> = made
            .into_iter()
            .flat_map(|(_, _, m)| match m {
                Made::Samples(s) => s,
                Made::Crops(_) => Vec::new(),
            })
            .collect();
        let keys: Vec<String> = samples
            .first()
            .map(|s| s.images.iter().map(|(k, _)| k.clone()).collect())
            .unwrap_or_default();
        let tensors = collate_samples(&samples, &keys)?;
        let batch = Batch {
            items,
            epochs,
            ..Batch::default()
        };
        return Ok((batch, tensors));
    }
    let crops: Vec<super::runner::MultiCrop> = made
        .into_iter()
        .filter_map(|(_, _, m)| match m {
            Made::Crops(c) => Some(c),
            Made::Samples(_) => None,
        })
        .collect();
    let global_shape = crops
        .first()
        .and_then(|c| c.global.first())
        .map_or([0; 4], |g| g.shape);
    let p = config.patch_size.max(1);
    let tokens = (global_shape[1] / p) * (global_shape[2] / p) * (global_shape[3] / p);
    let n_global = crops.len() * crops.first().map_or(0, |c| c.global.len());
    let mut rng = DrawKey {
        seed: config.seed,
        epoch: index,
        sample: u64::MAX - 1,
        view: u32::MAX,
        transform: u32::MAX,
    }
    .rng();
    let masks = ibot_masks(
        n_global,
        tokens,
        config.mask_sample_probability,
        config.mask_ratio,
        &mut rng,
    );
    let mut batch = collate_crops_into(&crops, masks, [spare.take(), spare.take()], config.order)?;
    batch.items = items;
    batch.epochs = epochs;
    Ok((batch, Vec::new()))
}
