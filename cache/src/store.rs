//! A cache folder: entries at `<dir>/<key[..2]>/<key>.d3c`, keyed by
//! [`entry_key`]. Lookups never serve damage (a bad entry is removed and
//! reported), and concurrent warmers coordinate with lock files so two
//! processes never build the same entry at once; a lock left by a killed
//! process is taken over.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::codec::Codec;
use crate::entry::Entry;
use crate::error::{CacheError, Result};
use crate::layout::Layout;
use crate::write::{ArrayToWrite, write_entry};

/// Version of the entry format, folded into every key: a format change misses.
pub const FORMAT_VERSION: &str = "dino3d-cache-v4";
/// Default chunk edges, x, y, z: 64 × 64 × 8 (int16: 64 KiB, as the 32³
/// of rust-stack.md §5). The loader reads entries plane by plane: a slab of
/// chunks along z is then a quarter as large (4 MiB of a 512² volume, not
/// 16), and a plane's share of a chunk a 4 KiB run per byte plane, not 1 KiB.
/// On 512² planes 9–16% more samples per CPU-second than 32³ chunks, the
/// same on 256² planes; a warm 96³ box reads within noise of 32³, a cold one
/// about 10% slower (BENCHMARKS.md, issue 23, eighth round).
pub const DEFAULT_CHUNK: [usize; 3] = [64, 64, 8];
/// Default codec of new entries.
pub const DEFAULT_CODEC: Codec = Codec::Lz4;
/// A lock older than this is considered abandoned.
const STALE_LOCK: Duration = Duration::from_secs(600);

/// The key of an item's entry: each source file's identity, the canonical
/// prefix hash (every cached step and parameter) and the format version.
///
/// A file's identity is its canonical path, device and inode, size,
/// modification time, status-change time (ctime) and a hash of its first
/// 64 KiB. The ctime is what makes it safe: the kernel sets it on every
/// write or metadata change and no user call can set it back, so a file
/// rewritten in place with its size and mtime restored (`touch -r`) still
/// gets a new key; the path and inode keep two files that look alike
/// (same size, same mtime, same header) apart. Copying or moving a dataset
/// therefore rebuilds its entries, by design.
///
/// # Errors
/// When a source file cannot be stat'ed or read.
pub fn entry_key(prefix_hash: &str, sources: &[PathBuf]) -> Result<String> {
    let mut text = format!("{FORMAT_VERSION}\n{prefix_hash}");
    for path in sources {
        text.push('\n');
        text.push_str(&file_identity(path)?);
    }
    Ok(format!(
        "{:032x}",
        xxhash_rust::xxh3::xxh3_128(text.as_bytes())
    ))
}

/// One source file's identity, as text (see [`entry_key`]).
fn file_identity(path: &Path) -> Result<String> {
    let canonical = std::fs::canonicalize(path).map_err(|e| CacheError::io(path, e))?;
    let meta = std::fs::metadata(&canonical).map_err(|e| CacheError::io(path, e))?;
    let nanos = |t: std::io::Result<SystemTime>| {
        t.ok()
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos())
    };
    let mut head = vec![0u8; 65536.min(meta.len() as usize)];
    {
        use std::io::Read;
        let mut f = std::fs::File::open(&canonical).map_err(|e| CacheError::io(path, e))?;
        f.read_exact(&mut head)
            .map_err(|e| CacheError::io(path, e))?;
    }
    Ok(format!(
        "{} {} {} {} {:016x} {}",
        meta.len(),
        nanos(meta.modified()),
        status_change(&meta),
        inode(&meta),
        xxhash_rust::xxh3::xxh3_64(&head),
        canonical.display()
    ))
}

/// The file's status-change time in nanoseconds (0 where the platform has
/// none).
fn status_change(meta: &std::fs::Metadata) -> i128 {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec())
    }
    #[cfg(not(unix))]
    {
        let _ = meta;
        0
    }
}

/// The file's device and inode (`0:0` where the platform has none).
fn inode(meta: &std::fs::Metadata) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        format!("{}:{}", meta.dev(), meta.ino())
    }
    #[cfg(not(unix))]
    {
        let _ = meta;
        "0:0".into()
    }
}

/// A cache folder.
#[derive(Debug, Clone)]
pub struct CacheDir {
    root: PathBuf,
    layout: Layout,
}

/// What a lookup found.
pub enum Lookup {
    /// A valid entry.
    Hit(Entry),
    /// No entry.
    Miss,
    /// A damaged entry, now removed (the error says what was wrong).
    Removed(CacheError),
}

impl CacheDir {
    /// Opens (creating) the folder.
    ///
    /// # Errors
    /// When it cannot be created.
    pub fn new(root: impl Into<PathBuf>) -> Result<CacheDir> {
        let root = root.into();
        std::fs::create_dir_all(&root).map_err(|e| CacheError::io(&root, e))?;
        Ok(CacheDir {
            root,
            layout: Layout {
                chunk: DEFAULT_CHUNK,
                codec: DEFAULT_CODEC,
            },
        })
    }

    /// Opens a folder that must exist already (for commands that inspect a
    /// cache: a typo must not look like a healthy, empty cache).
    ///
    /// # Errors
    /// When `root` does not exist or is not a folder.
    pub fn open_existing(root: impl Into<PathBuf>) -> Result<CacheDir> {
        let root = root.into();
        let meta = std::fs::metadata(&root).map_err(|e| CacheError::io(&root, e))?;
        if !meta.is_dir() {
            return Err(CacheError::NotAFolder { path: root });
        }
        CacheDir::new(root)
    }

    /// Checks that new entries can be written here (creates, syncs and
    /// removes a small probe file): a read-only folder or a full disk is
    /// found before a run starts, not as one failed write per sample.
    ///
    /// # Errors
    /// The system's refusal, with the probe's path.
    pub fn check_writable(&self) -> Result<()> {
        // One fixed name: concurrent probes only overwrite each other's
        // bytes, and nothing is left behind to collect.
        let probe = self.root.join(".write-check");
        let result = (|| -> std::io::Result<()> {
            use std::io::Write;
            let mut f = std::fs::File::create(&probe)?;
            f.write_all(&[0u8; 4096])?;
            f.sync_all()
        })();
        let _ = std::fs::remove_file(&probe);
        result.map_err(|e| CacheError::io(&probe, e))
    }

    /// The same folder with another chunk shape for new entries.
    pub fn with_chunk(mut self, chunk: [usize; 3]) -> CacheDir {
        self.layout.chunk = chunk;
        self
    }

    /// The same folder with another codec for new entries (existing entries
    /// are read whatever their codec).
    pub fn with_codec(mut self, codec: Codec) -> CacheDir {
        self.layout.codec = codec;
        self
    }

    /// The folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the entry `key` lives.
    pub fn entry_path(&self, key: &str) -> PathBuf {
        self.root
            .join(&key[..2.min(key.len())])
            .join(format!("{key}.d3c"))
    }

    /// Looks `key` up; a damaged entry is removed so it gets rebuilt.
    pub fn lookup(&self, key: &str) -> Lookup {
        let path = self.entry_path(key);
        if !path.exists() {
            return Lookup::Miss;
        }
        match Entry::open_keyed(&path, key) {
            Ok(e) => Lookup::Hit(e),
            Err(err) => {
                let _ = std::fs::remove_file(&path);
                Lookup::Removed(err)
            }
        }
    }

    /// Removes a damaged entry found while reading it.
    pub fn discard(&self, key: &str) {
        let _ = std::fs::remove_file(self.entry_path(key));
    }

    /// Writes the entry `key` holding `arrays` (prepared by the caller),
    /// holding the key's lock; returns the bytes written. If another process
    /// holds the lock, waits for its entry instead and returns 0.
    ///
    /// # Errors
    /// I/O failures (disk full, read-only folder) with the path.
    pub fn store(&self, key: &str, source: &str, arrays: &[ArrayToWrite<'_>]) -> Result<u64> {
        let path = self.entry_path(key);
        let Some(_lock) = self.lock(key)? else {
            return Ok(0);
        };
        if path.exists() {
            return Ok(0);
        }
        write_entry(&path, arrays, self.layout, source, key)
    }

    /// Checks the entry file `path` of this folder: its framing, that it is
    /// stored under its own key, and every chunk.
    ///
    /// # Errors
    /// The first damage found.
    pub fn verify(&self, path: &Path) -> Result<Entry> {
        let key = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let entry = Entry::open_keyed(path, &key)?;
        entry.verify()?;
        Ok(entry)
    }

    /// Takes the key's lock, or waits while a live process holds it (then
    /// returns None: the other process built the entry).
    fn lock(&self, key: &str) -> Result<Option<LockGuard>> {
        let path = self.entry_path(key).with_extension("lock");
        let dir = path.parent().expect("entries live in a subfolder");
        std::fs::create_dir_all(dir).map_err(|e| CacheError::io(dir, e))?;
        loop {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(mut f) => {
                    use std::io::Write;
                    let _ = write!(f, "{}", std::process::id());
                    return Ok(Some(LockGuard(path)));
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    if lock_is_abandoned(&path) {
                        let _ = std::fs::remove_file(&path);
                        continue;
                    }
                    if self.entry_path(key).exists() {
                        return Ok(None);
                    }
                    std::thread::sleep(Duration::from_millis(20));
                    if !path.exists() {
                        // The holder finished (or gave up): check for its entry.
                        if self.entry_path(key).exists() {
                            return Ok(None);
                        }
                    }
                }
                Err(e) => return Err(CacheError::io(&path, e)),
            }
        }
    }

    /// Every file in the entry subfolders.
    fn files(&self) -> Vec<PathBuf> {
        let subfolders = std::fs::read_dir(&self.root)
            .into_iter()
            .flatten()
            .flatten();
        let mut out: Vec<PathBuf> = subfolders
            .flat_map(|sub| {
                std::fs::read_dir(sub.path())
                    .into_iter()
                    .flatten()
                    .flatten()
            })
            .map(|f| f.path())
            .collect();
        out.sort();
        out
    }

    /// Every entry file in the folder.
    pub fn entries(&self) -> Vec<PathBuf> {
        let mut files = self.files();
        files.retain(|p| p.extension().is_some_and(|e| e == "d3c"));
        files
    }

    /// Leftovers of interrupted writes (temporary files, abandoned locks).
    pub fn leftovers(&self) -> Vec<PathBuf> {
        let mut files = self.files();
        files.retain(|p| {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            (name.starts_with('.') && name.contains(".tmp."))
                || (name.ends_with(".lock") && lock_is_abandoned(p))
        });
        files
    }
}

/// Removes the lock file when dropped.
struct LockGuard(PathBuf);

impl Drop for LockGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A lock is abandoned when its process is gone (same machine) or it is old
/// (another machine on a shared file system that died).
fn lock_is_abandoned(path: &Path) -> bool {
    let old = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age > STALE_LOCK);
    let dead = std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .is_some_and(|pid| {
            cfg!(target_os = "linux") && !Path::new(&format!("/proc/{pid}")).exists()
        });
    old || dead
}
