//! `CacheSource`: prepared samples kept in the on-disk cache
//! ([`dino3d_cache`]). This is where a recipe becomes cache reads and writes:
//! the prefix's output of every item is stored under a key of its source
//! files and the canonical prefix hash; a hit is decoded, or, when the
//! recipe's views allow it, the views are cut plane by plane as the entry
//! decodes ([`Pipeline::plane_cutter`]); a miss (or a damaged entry, removed
//! and reported) prepares the item and writes it, so a cold cache warms
//! lazily on first use. If the folder cannot be written (disk full,
//! read-only) the sample is still served, uncached, when the user allowed it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dino3d_cache::{
    Array, ArrayToWrite, CacheDir, CacheError, DecodeMap, Entry, Lookup, StoredType, entry_key,
};

use crate::error::{Error, Result};
use crate::manifest::ManifestEntry;
use crate::nifti::DType;
use crate::transforms::Image;

use super::loader::PreparedSource;
use super::runner::{Output, Pipeline, Stored};
use super::sample::{Prepared, Sample};

/// Counters of a cache's use.
#[derive(Debug, Default)]
pub struct CacheStats {
    /// Entries served from the cache.
    pub hits: AtomicU64,
    /// Entries built.
    pub misses: AtomicU64,
    /// Damaged entries removed (and rebuilt).
    pub damaged: AtomicU64,
    /// Items that could not be prepared.
    pub failures: AtomicU64,
    /// Source bytes of built entries.
    pub bytes_in: AtomicU64,
    /// Bytes of entries written.
    pub bytes_out: AtomicU64,
    /// Writes that failed (served uncached).
    pub write_failures: AtomicU64,
    /// Hits whose views were cut plane by plane as the entry decoded.
    pub by_plane: AtomicU64,
}

/// What [`CacheSource::output_by_plane`] did.
enum ByPlane {
    /// The views, cut from the entry.
    Done(Result<Output>),
    /// The entry under this key must be built (a miss, or damage found).
    Build(String),
    /// The recipe or the entry does not allow it: take the ordinary path.
    NotApplicable,
}

/// What [`CacheSource::ensure`] did for one item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Warmed {
    /// The entry was there and intact.
    Hit,
    /// The entry was built.
    Built,
}

/// A prepared-sample source reading through a cache folder.
pub struct CacheSource {
    pipeline: Arc<Pipeline>,
    entries: Vec<ManifestEntry>,
    manifest: PathBuf,
    dir: CacheDir,
    allow_uncached: bool,
    /// What happened so far.
    pub stats: CacheStats,
    /// Messages about damaged entries and failed writes (for the log).
    pub reports: std::sync::Mutex<Vec<String>>,
    /// Keys whose write was refused (reported once until one succeeds).
    refused: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Keys being built now, each with the lock its builder holds: a thread
    /// that misses an entry another is building waits for it and reads the
    /// result, instead of preparing the same volume a second time (twice the
    /// work, and twice a volume's memory at once).
    building: std::sync::Mutex<std::collections::HashMap<String, Arc<std::sync::Mutex<()>>>>,
}

impl CacheSource {
    /// A source over `entries` (of the manifest at `manifest`) keeping the
    /// output of `pipeline`'s prefix in `dir`.
    pub fn new(
        pipeline: Arc<Pipeline>,
        entries: Vec<ManifestEntry>,
        manifest: &Path,
        dir: CacheDir,
        allow_uncached: bool,
    ) -> CacheSource {
        CacheSource {
            pipeline,
            entries,
            manifest: manifest.to_path_buf(),
            dir,
            allow_uncached,
            stats: CacheStats::default(),
            reports: std::sync::Mutex::new(Vec::new()),
            refused: std::sync::Mutex::default(),
            building: std::sync::Mutex::default(),
        }
    }

    /// The cache folder.
    pub fn dir(&self) -> &CacheDir {
        &self.dir
    }

    /// The source files of item `i` (every key).
    fn sources(&self, i: usize) -> Vec<PathBuf> {
        let e = &self.entries[i];
        self.pipeline
            .keys()
            .iter()
            .map(|k| {
                e.resolve_key(k, &self.manifest)
                    .unwrap_or_else(|| e.resolve(&self.manifest))
            })
            .collect()
    }

    /// Every file behind item `i`'s sources: a detached header's data files
    /// (`.hdr` + `.img`, `.mhd` + `.raw`, `.nhdr` + its data files) count, so
    /// rewriting the voxels alone still changes the key. A header that
    /// cannot be read keys on itself (the read then reports the problem).
    fn key_files(&self, i: usize) -> Vec<PathBuf> {
        self.sources(i)
            .into_iter()
            .flat_map(|p| crate::formats::source_files(&p).unwrap_or_else(|_| vec![p]))
            .collect()
    }

    /// The entry key of item `i`.
    ///
    /// # Errors
    /// When a source file is missing.
    pub fn key(&self, i: usize) -> Result<String> {
        entry_key(self.pipeline.prefix_hash(), &self.key_files(i)).map_err(|e| match e {
            // A source the key cannot stat is the source's problem (deleted,
            // unreadable), not the cache's: say it as a read would.
            dino3d_cache::CacheError::Io { path, source } if !path.starts_with(self.dir.root()) => {
                Error::Io { path, source }
            }
            e => self.cache_error(i, e),
        })
    }

    /// The reports made since `*seen` of them were taken (a long run says
    /// each as it happens); moves `*seen` past them.
    pub fn new_reports(&self, seen: &mut usize) -> Vec<String> {
        let Ok(r) = self.reports.lock() else {
            return Vec::new();
        };
        let new = r.get(*seen..).map(<[String]>::to_vec).unwrap_or_default();
        *seen = r.len();
        new
    }

    fn report(&self, msg: String) {
        if let Ok(mut r) = self.reports.lock() {
            r.push(msg);
        }
    }

    /// Makes sure item `i` is cached (for `cache warm`), without decoding a hit.
    ///
    /// # Errors
    /// When the item cannot be prepared or written.
    pub fn ensure(&self, i: usize) -> Result<Warmed> {
        let key = self.key(i)?;
        match self.dir.lookup(&key) {
            Lookup::Hit(_) => {
                self.stats.hits.fetch_add(1, Ordering::Relaxed);
                return Ok(Warmed::Hit);
            }
            Lookup::Removed(err) => {
                self.stats.damaged.fetch_add(1, Ordering::Relaxed);
                self.report(format!(
                    "{err} (source {}); rebuilding",
                    self.sources(i)[0].display()
                ));
            }
            Lookup::Miss => {}
        }
        self.build(i, &key).map(|_| Warmed::Built)
    }

    /// Prepares item `i` and writes its entry under `key`.
    fn build(&self, i: usize, key: &str) -> Result<Vec<(String, Stored)>> {
        let gate = {
            let mut building = self.building.lock().unwrap_or_else(|e| e.into_inner());
            building.entry(key.to_string()).or_default().clone()
        };
        let held = gate.lock().unwrap_or_else(|e| e.into_inner());
        // Built by another thread while this one waited: read it.
        let done = match self.hit(i, key) {
            Some(entry) => self.read_entry(i, key, entry),
            None => None,
        };
        let result = match done {
            Some(images) => Ok(images
                .into_iter()
                .map(|(k, img)| (k, Stored::Float(img)))
                .collect()),
            None => self.build_now(i, key),
        };
        drop(held);
        let mut building = self.building.lock().unwrap_or_else(|e| e.into_inner());
        // The last thread through removes the gate (the map's own Arc and
        // this one are the two left).
        if Arc::strong_count(&gate) <= 2 {
            building.remove(key);
        }
        result
    }

    /// An open entry's arrays, counted as a hit; None (the entry removed and
    /// reported) when one is damaged.
    fn read_entry(&self, i: usize, key: &str, entry: Entry) -> Option<Vec<(String, Image)>> {
        let read: std::result::Result<Vec<(String, Image)>, CacheError> = entry
            .header
            .arrays
            .iter()
            .enumerate()
            .map(|(a, meta)| Ok((meta.key.clone(), image(entry.read_all(a)?))))
            .collect();
        match read {
            Ok(images) => {
                self.stats.hits.fetch_add(1, Ordering::Relaxed);
                Some(images)
            }
            Err(err) => {
                self.discard_damaged(i, key, entry, &err);
                None
            }
        }
    }

    /// Prepares item `i` and writes its entry (the caller holds its gate).
    fn build_now(&self, i: usize, key: &str) -> Result<Vec<(String, Stored)>> {
        let stored = self
            .pipeline
            .prepare_for_cache(&self.entries[i], &self.manifest)
            .inspect_err(|_| {
                self.stats.failures.fetch_add(1, Ordering::Relaxed);
            })?;
        self.stats.misses.fetch_add(1, Ordering::Relaxed);
        let source_bytes: u64 = self
            .sources(i)
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum();
        let source = self.sources(i)[0].display().to_string();
        // Borrow the prepared arrays: no copy of a volume on the way to disk.
        let arrays: Vec<ArrayToWrite<'_>> =
            stored.iter().map(|(k, s)| array_to_write(k, s)).collect();
        match self.dir.store(key, &source, &arrays) {
            Ok(written) => {
                if let Ok(mut keys) = self.refused.lock() {
                    keys.remove(key);
                }
                if written > 0 {
                    self.stats
                        .bytes_in
                        .fetch_add(source_bytes, Ordering::Relaxed);
                    self.stats.bytes_out.fetch_add(written, Ordering::Relaxed);
                }
                Ok(stored)
            }
            // The item is prepared and right; only its entry could not be
            // kept. A full disk passes (the folder was writable at start), so
            // it never costs a sample, nor does an unwritable folder the
            // user allowed.
            Err(e) if self.allow_uncached || e.is_out_of_space() => {
                self.stats.write_failures.fetch_add(1, Ordering::Relaxed);
                // Said once per entry: a full disk refuses it on every read.
                let first = self
                    .refused
                    .lock()
                    .map_or(true, |mut keys| keys.insert(key.to_string()));
                if first {
                    self.report(format!("{e}; serving {source} uncached"));
                }
                Ok(stored)
            }
            Err(e) => Err(self.cache_error(i, e)),
        }
    }

    /// The cached entry of item `i` under `key`, if intact at open; a
    /// damaged one found instead is removed (by the lookup), counted and
    /// reported, and the caller rebuilds.
    fn hit(&self, i: usize, key: &str) -> Option<Entry> {
        match self.dir.lookup(key) {
            Lookup::Hit(entry) => Some(entry),
            Lookup::Removed(err) => {
                self.damaged(i, &err);
                None
            }
            Lookup::Miss => None,
        }
    }

    /// Counts and reports damage found in item `i`'s entry (already removed).
    fn damaged(&self, i: usize, err: &CacheError) {
        self.stats.damaged.fetch_add(1, Ordering::Relaxed);
        self.report(format!(
            "{err} (source {}); rebuilt",
            self.sources(i)[0].display()
        ));
    }

    /// Removes item `i`'s open `entry` (under `key`) after damage found while
    /// decoding it, and reports it.
    fn discard_damaged(&self, i: usize, key: &str, entry: Entry, err: &CacheError) {
        drop(entry);
        self.dir.discard(key);
        self.damaged(i, err);
    }

    fn read(&self, i: usize) -> Result<Sample> {
        let key = self.key(i)?;
        if let Some(entry) = self.hit(i, &key)
            && let Some(images) = self.read_entry(i, &key, entry)
        {
            return Ok(Sample { images });
        }
        let stored = self.build(i, &key)?;
        Ok(Sample {
            images: stored
                .into_iter()
                .map(|(k, s)| (k, s.into_image()))
                .collect(),
        })
    }

    /// Item `index`'s views cut straight from its cached entry as it decodes,
    /// plane by plane, never materialising the volume (the result equals
    /// [`Pipeline::finish`] on the decoded volume). A miss, or damage met on
    /// the way (counted and reported once), builds the entry and cuts the
    /// views from the built sample.
    ///
    /// Damage is found in the chunks the crops read (each one's checksum is
    /// verified before use), so damaged bytes are never used; a damaged
    /// chunk no crop reads stays until a read touches it or `cache verify`.
    fn output_by_plane(&self, pipeline: &Pipeline, epoch: u64, index: usize) -> ByPlane {
        let Ok(key) = self.key(index) else {
            return ByPlane::NotApplicable;
        };
        let entry = match self.dir.lookup(&key) {
            Lookup::Hit(entry) => entry,
            Lookup::Removed(err) => {
                self.damaged(index, &err);
                return ByPlane::Build(key);
            }
            Lookup::Miss => return ByPlane::Build(key),
        };
        let [meta] = entry.header.arrays.as_slice() else {
            return ByPlane::NotApplicable;
        };
        if meta.key != "image" || meta.shape[0] != 1 {
            return ByPlane::NotApplicable;
        }
        let dims = [meta.shape[1], meta.shape[2], meta.shape[3]];
        let Some(mut cutter) =
            pipeline.plane_cutter(dims, meta.spacing, meta.affine, epoch, index as u64)
        else {
            return ByPlane::NotApplicable;
        };
        let needs = cutter.plane_needs();
        match entry.for_each_plane(0, |z| needs.get(z), |_, z, plane| cutter.feed(z, plane)) {
            Ok(()) => {
                self.stats.hits.fetch_add(1, Ordering::Relaxed);
                self.stats.by_plane.fetch_add(1, Ordering::Relaxed);
                ByPlane::Done(cutter.finish(&self.path(index)))
            }
            Err(err) => {
                self.discard_damaged(index, &key, entry, &err);
                ByPlane::Build(key)
            }
        }
    }

    /// A pipeline error for item `index` from a cache error.
    fn cache_error(&self, index: usize, source: CacheError) -> Error {
        Error::Cache {
            path: self.path(index),
            source: Box::new(source),
        }
    }

    /// Items in the source.
    pub fn items(&self) -> &[ManifestEntry] {
        &self.entries
    }
}

impl PreparedSource for CacheSource {
    fn len(&self) -> usize {
        self.entries.len()
    }

    fn path(&self, index: usize) -> PathBuf {
        self.entries[index].resolve(&self.manifest)
    }

    fn output(&self, pipeline: &Pipeline, epoch: u64, index: usize) -> Result<Output> {
        if !pipeline.cuts_views_by_plane() {
            let prepared = self.prepared(index)?;
            return pipeline.finish(&prepared, epoch, index as u64, &self.path(index));
        }
        let prepared = match self.output_by_plane(pipeline, epoch, index) {
            ByPlane::Done(output) => return output,
            ByPlane::NotApplicable => self.prepared(index)?,
            // Straight to the build: a second lookup could meet (and count)
            // the same damage again when it could not be removed.
            ByPlane::Build(key) => {
                let stored = self.build(index, &key)?;
                Arc::new(Sample {
                    images: stored
                        .into_iter()
                        .map(|(k, s)| (k, s.into_image()))
                        .collect(),
                })
            }
        };
        pipeline.finish(&prepared, epoch, index as u64, &self.path(index))
    }

    fn prepared(&self, index: usize) -> Result<Prepared> {
        self.read(index).map(Arc::new)
    }
}

/// A prepared array as the cache stores it: float images in the narrowest
/// exact type; integers with the prefix's intensity window as the decode map.
fn array_to_write<'a>(key: &'a str, stored: &'a Stored) -> ArrayToWrite<'a> {
    let (img, dtype, decode): (&Image, StoredType, Option<DecodeMap>) = match stored {
        Stored::Float(img) => (img, StoredType::smallest_exact(&img.data), None),
        Stored::Int { raw, dtype, window } => (raw, stored_type(*dtype), Some(window.decode_map())),
    };
    ArrayToWrite {
        key,
        data: &img.data,
        shape: img.shape,
        spacing: img.spacing,
        affine: img.affine,
        dtype,
        decode,
    }
}

/// The cache's type for a volume's 8/16-bit integers (f32 otherwise).
fn stored_type(d: DType) -> StoredType {
    match d {
        DType::U8 => StoredType::U8,
        DType::I8 => StoredType::I8,
        DType::U16 => StoredType::U16,
        DType::I16 => StoredType::I16,
        _ => StoredType::F32,
    }
}

/// The image of an array read from the cache (no copy).
pub fn image(a: Array) -> Image {
    Image {
        data: a.data,
        shape: a.shape,
        spacing: a.spacing,
        affine: a.affine,
    }
}
