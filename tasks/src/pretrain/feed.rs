//! The training loop's batches, uploaded one batch ahead on a thread of
//! their own: while step `n` runs, batch `n + 1` is taken from the loader,
//! copied to the device (on a GPU: through pinned buffers, on a copy stream
//! of its own, [`dino3d_model::upload`]) and its host buffers handed back to
//! the loader. The training thread then only waits for data the loader has
//! not made yet. The thread holds up to two batches beyond the loader's
//! queue: one uploaded and waiting, one being uploaded.

use std::sync::mpsc::{Receiver, sync_channel};
use std::thread::JoinHandle;

use dino3d_model::candle_core::Tensor;
use dino3d_model::upload::{Upload, Uploader};
use dino3d_pipeline::exec::{Batch, LoadedBatch, Loader, Order, Tensor5};

use crate::error::{Result, TaskError};

/// A batch from [`Feed`]: the loader's batch (its crop values already
/// handed back, their shapes kept) and its upload.
pub(crate) struct Fed {
    pub loaded: LoadedBatch,
    upload: Upload,
}

impl Fed {
    /// The global and (if the recipe has local views) local crops as the
    /// model takes them: `(N, C, X, Y, Z)`, z fastest, on the device.
    pub(crate) fn crops(self) -> Result<(LoadedBatch, Tensor, Option<Tensor>)> {
        let mut tensors = self.upload.finish()?.into_iter();
        let batch = &self.loaded.batch;
        let globals = z_fastest(tensors.next().expect("globals first"), &batch.global)?;
        // Uploaded only when the batch had local crops.
        let locals = tensors
            .next()
            .map(|t| z_fastest(t, &batch.local))
            .transpose()?;
        Ok((self.loaded, globals, locals))
    }
}

/// Where [`Feed`] takes batches from: the data loader (or, in tests, a
/// stand-in).
pub(crate) trait BatchSource: Send + 'static {
    /// The next batch; `None` once the source has stopped.
    fn next_batch(&mut self) -> Option<Result<LoadedBatch>>;
    /// Takes back a batch's crop buffers once they are copied.
    fn recycle(&self, batch: &mut Batch);
}

impl BatchSource for Loader {
    fn next_batch(&mut self) -> Option<Result<LoadedBatch>> {
        self.next().map(|b| b.map_err(TaskError::msg))
    }

    fn recycle(&self, batch: &mut Batch) {
        Loader::recycle(self, batch);
    }
}

/// Batches from a loader, uploaded by a thread one batch ahead of their use.
/// Dropping it stops the thread (and the loader).
pub(crate) struct Feed {
    rx: Option<Receiver<Result<Fed>>>,
    worker: Option<JoinHandle<()>>,
}

impl Feed {
    /// Starts the upload thread over `loader`'s batches.
    ///
    /// # Errors
    /// When the system refuses the thread.
    pub(crate) fn start(mut loader: impl BatchSource, mut uploader: Uploader) -> Result<Feed> {
        // One batch waits here, uploaded; the loader's own queue holds more.
        let (tx, rx) = sync_channel(1);
        let worker = std::thread::Builder::new()
            .name("dino3d-upload".into())
            .spawn(move || {
                while let Some(next) = loader.next_batch() {
                    let fed = next.and_then(|loaded| {
                        let mut fed = upload(&mut uploader, loaded)?;
                        // Copied: the loader writes a later batch into these buffers.
                        loader.recycle(&mut fed.loaded.batch);
                        Ok(fed)
                    });
                    let failed = fed.is_err();
                    if tx.send(fed).is_err() || failed {
                        break;
                    }
                }
            })
            .map_err(|e| TaskError::msg(format!("starting the batch upload thread: {e}")))?;
        Ok(Feed {
            rx: Some(rx),
            worker: Some(worker),
        })
    }

    /// The next batch, waiting for it if the thread has none ready; `None`
    /// once the loader has stopped, and an error if the thread panicked.
    pub(crate) fn next(&mut self) -> Option<Result<Fed>> {
        if let Ok(fed) = self.rx.as_ref()?.recv() {
            return Some(fed);
        }
        let panicked = self.worker.take()?.join().err()?;
        let why = panicked
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panicked.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(no message)".into());
        Some(Err(TaskError::msg(format!(
            "the batch upload thread panicked: {why}"
        ))))
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        // Closing the channel drops a batch waiting in it (and gives back its
        // staging buffers), so the thread's next send fails and it returns.
        drop(self.rx.take());
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

/// Starts the upload of `loaded`'s crops, in the shape their memory order
/// gives them.
fn upload(uploader: &mut Uploader, loaded: LoadedBatch) -> Result<Fed> {
    let (global, local) = (&loaded.batch.global, &loaded.batch.local);
    let shapes = [stored_shape(global), stored_shape(local)];
    let mut parts: Vec<(&[f32], &[usize])> = vec![(&global.data, &shapes[0])];
    if !local.data.is_empty() {
        parts.push((&local.data, &shapes[1]));
    }
    let upload = uploader.start(&parts)?;
    Ok(Fed { loaded, upload })
}

/// The shape of a batch tensor's values in memory order.
fn stored_shape(t: &Tensor5) -> [usize; 5] {
    let [n, c, x, y, z] = t.shape;
    match t.order {
        Order::ZFastest => [n, c, x, y, z],
        Order::XFastest => [n, c, z, y, x],
    }
}

/// An uploaded batch tensor of `t`'s memory order as `(N, C, X, Y, Z)`, z
/// fastest (a GPU turns x-fastest crops itself, far faster than the loader).
pub(crate) fn z_fastest(uploaded: Tensor, t: &Tensor5) -> Result<Tensor> {
    Ok(match t.order {
        Order::ZFastest => uploaded,
        Order::XFastest => uploaded.permute((0, 1, 4, 3, 2))?.contiguous()?,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use dino3d_model::candle_core::Device;

    /// A source of batch `k` = crops of value `k` (`n` of them, then an
    /// error or a panic, or endless), counting the buffers handed back.
    struct Numbered {
        made: usize,
        n: Option<usize>,
        then_panic: bool,
        recycled: Arc<AtomicUsize>,
    }

    impl BatchSource for Numbered {
        fn next_batch(&mut self) -> Option<Result<LoadedBatch>> {
            if self.n == Some(self.made) {
                assert!(!self.then_panic, "source broke");
                self.made += 1;
                return Some(Err(TaskError::msg("volume 7 is damaged")));
            }
            if self.n.is_some_and(|n| self.made > n) {
                return None;
            }
            let k = self.made as f32;
            self.made += 1;
            let crops = |len: usize, side: usize| Tensor5 {
                data: vec![k; len],
                shape: [len / side.pow(3), 1, side, side, side],
                order: Order::ZFastest,
            };
            Some(Ok(LoadedBatch {
                batch: Batch {
                    global: crops(2 * 27, 3),
                    local: crops(4 * 8, 2),
                    masks: Default::default(),
                    items: vec![self.made - 1],
                    epochs: vec![0],
                },
                tensors: Vec::new(),
                skipped: Vec::new(),
                skipped_again: 0,
                index: self.made as u64 - 1,
                next_position: (0, self.made),
            }))
        }

        fn recycle(&self, batch: &mut Batch) {
            assert!(!batch.global.data.is_empty(), "recycled once, when full");
            batch.global.data = Vec::new();
            batch.local.data = Vec::new();
            self.recycled.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn feed(n: Option<usize>, then_panic: bool) -> (Feed, Arc<AtomicUsize>) {
        let recycled = Arc::new(AtomicUsize::new(0));
        let source = Numbered {
            made: 0,
            n,
            then_panic,
            recycled: recycled.clone(),
        };
        let uploader = Uploader::new(&Device::Cpu).unwrap();
        (Feed::start(source, uploader).unwrap(), recycled)
    }

    /// Batches arrive in order with their values and bookkeeping, each one's
    /// buffers handed back to the source; a source's error comes after the
    /// batches made before it, and then the feed ends.
    #[test]
    fn batches_arrive_in_order_then_the_source_s_error() {
        let (mut feed, recycled) = feed(Some(5), false);
        for k in 0..5 {
            let fed = feed.next().unwrap().unwrap();
            let (loaded, globals, locals) = fed.crops().unwrap();
            assert_eq!(loaded.index, k as u64);
            assert_eq!(loaded.batch.items, vec![k]);
            assert_eq!(globals.dims(), [2, 1, 3, 3, 3]);
            let values = globals.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert!(values.iter().all(|&v| v == k as f32), "batch {k}");
            let locals = locals.expect("local crops");
            assert_eq!(locals.dims(), [4, 1, 2, 2, 2]);
        }
        let err = feed.next().unwrap().err().unwrap();
        assert!(err.to_string().contains("volume 7 is damaged"), "{err}");
        assert!(feed.next().is_none());
        assert_eq!(recycled.load(Ordering::SeqCst), 5);
    }

    /// A panic in the upload thread is an error that says so, not a silent
    /// end of the data.
    #[test]
    fn a_panic_of_the_thread_is_reported() {
        let (mut feed, _) = feed(Some(2), true);
        for _ in 0..2 {
            feed.next().unwrap().unwrap();
        }
        let err = feed.next().unwrap().err().unwrap();
        assert!(err.to_string().contains("panicked: source broke"), "{err}");
    }

    /// Dropping the feed of an endless source, with batches waiting, stops
    /// its thread: the drop returns (within a minute, or the test fails).
    #[test]
    fn dropping_the_feed_stops_its_thread() {
        let (mut feed, recycled) = feed(None, false);
        feed.next().unwrap().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            drop(feed);
            let _ = tx.send(());
        });
        rx.recv_timeout(std::time::Duration::from_secs(60))
            .expect("dropping the feed hung");
        assert!(recycled.load(Ordering::SeqCst) >= 1);
    }

    /// An x-fastest batch (as the loader hands a GPU) uploads in its memory
    /// order and becomes the z-fastest tensor the model takes, value for
    /// value; a z-fastest one is taken as it is.
    #[test]
    fn x_fastest_batches_become_the_model_s_layout() {
        let shape = [2, 1, 3, 4, 5];
        let z_data: Vec<f32> = (0..120).map(|v| v as f32).collect();
        let z = Tensor5 {
            data: z_data.clone(),
            shape,
            order: Order::ZFastest,
        };
        let mut x_data = vec![0.0; 120];
        for n in 0..2 {
            for xi in 0..3 {
                for y in 0..4 {
                    for zi in 0..5 {
                        x_data[((n * 5 + zi) * 4 + y) * 3 + xi] = z.at(n, 0, xi, y, zi);
                    }
                }
            }
        }
        let x = Tensor5 {
            data: x_data,
            shape,
            order: Order::XFastest,
        };
        let mut uploader = Uploader::new(&Device::Cpu).unwrap();
        let mut model_layout = |t: &Tensor5| {
            let stored = stored_shape(t);
            let up = uploader.start(&[(&t.data, &stored)]).unwrap();
            let uploaded = up.finish().unwrap().remove(0);
            assert_eq!(uploaded.dims(), stored);
            z_fastest(uploaded, t).unwrap()
        };
        let (from_z, from_x) = (model_layout(&z), model_layout(&x));
        assert_eq!(from_x.dims(), [2, 1, 3, 4, 5]);
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(flat(&from_x), z_data);
        assert_eq!(flat(&from_z), z_data);
    }
}
