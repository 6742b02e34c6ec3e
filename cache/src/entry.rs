//! An open entry: the file memory-mapped, its framing and index checked;
//! chunks checked and decompressed on demand (reads are in [`crate::read`]).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::codec::{Unpack, chunk_checksum};
use crate::decode::{Decoding, Planes, lookup_table, uses_table};
use crate::error::{CacheError, Result};
use crate::layout::{END, Header, INDEX_ENTRY, MAGIC, MAGIC_V1};
use crate::scratch::{PlaneAt, SCRATCH, Scratch};

/// Bytes read ahead at the start of an entry when it is opened: the header
/// and the index of a typical entry (512 chunks: 12 KiB of index).
const HEAD_PREFETCH: usize = 64 << 10;

/// An open entry (memory-mapped, header and index checked).
pub struct Entry {
    pub(crate) path: PathBuf,
    /// The open file: chunks are read from it (`crate::slab`), and its
    /// length checked to notice it shrinking under the map.
    pub(crate) file: File,
    pub(crate) map: memmap2::Mmap,
    /// What it holds.
    pub header: Header,
    /// Per array: index start (byte offset into the map).
    pub(crate) index_at: Vec<usize>,
    pub(crate) payload_at: usize,
    /// Per array: its decode table, built on first read.
    tables: Vec<OnceLock<Vec<f32>>>,
}

/// Where one chunk is and what it should hash to.
pub(crate) struct ChunkRef {
    pub offset: usize,
    pub len: usize,
    raw_len: usize,
    hash: u64,
}

impl Entry {
    /// Opens and checks the framing (magic, header, index checksum, footer).
    ///
    /// # Errors
    /// [`CacheError::Corrupt`] for any damage (and for entries of the
    /// earlier format), [`CacheError::Io`] when unreadable.
    pub fn open(path: &Path) -> Result<Entry> {
        let file = File::open(path).map_err(|e| CacheError::io(path, e))?;
        // SAFETY: the map is read-only and entries are only ever replaced by
        // rename (never written in place), so the mapped bytes do not change
        // under us; every read is bounds-checked against the map's length.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| CacheError::io(path, e))?;
        // Reads fetch what they touch and no more. Otherwise the first touch
        // of the header has the kernel read around it by the device's
        // readahead window (8 MiB on the VM of BENCHMARKS.md: whole entries),
        // so a cold crop would pull in the entire file. Each read queues its
        // own ranges instead (`prefetch_run`). Advice only: a refusal costs
        // speed, never correctness.
        let _ = map.advise(memmap2::Advice::Random);
        let _ = map.advise_range(memmap2::Advice::WillNeed, 0, map.len().min(HEAD_PREFETCH));
        let _ = map.advise_range(
            memmap2::Advice::WillNeed,
            map.len().saturating_sub(16),
            map.len().min(16),
        );
        let corrupt = |why: &str| CacheError::corrupt(path, why);
        if map.len() >= 8 && &map[..8] == MAGIC_V1 {
            return Err(corrupt(
                "written by an earlier dino3d (cache format 1); it is rebuilt on use",
            ));
        }
        if map.len() < 28 || &map[..8] != MAGIC || &map[map.len() - 8..] != END {
            return Err(corrupt("bad magic or truncated"));
        }
        let header_len = u32::from_le_bytes(map[8..12].try_into().expect("4 bytes")) as usize;
        let header_end = 12usize
            .checked_add(header_len)
            .filter(|&e| e <= map.len() - 16)
            .ok_or_else(|| corrupt("header runs past the end"))?;
        let header: Header = serde_json::from_slice(&map[12..header_end])
            .map_err(|e| corrupt(&format!("header: {e}")))?;
        let mut index_at = Vec::new();
        let mut at = header_end;
        for a in &header.arrays {
            if a.chunk.contains(&0) || a.shape.contains(&0) {
                return Err(corrupt("zero-sized array or chunk"));
            }
            index_at.push(at);
            at = a
                .n_chunks()
                .checked_mul(INDEX_ENTRY)
                .and_then(|n| at.checked_add(n))
                .filter(|&e| e <= map.len() - 16)
                .ok_or_else(|| corrupt("index runs past the end"))?;
        }
        if at > HEAD_PREFETCH {
            // A large index (small chunks, big volumes): queue all of it
            // before the checksum below reads it.
            let _ = map.advise_range(memmap2::Advice::WillNeed, 0, at);
        }
        let stored = u64::from_le_bytes(
            map[map.len() - 16..map.len() - 8]
                .try_into()
                .expect("8 bytes"),
        );
        if xxhash_rust::xxh3::xxh3_64(&map[12..at]) != stored {
            return Err(corrupt("header/index checksum mismatch"));
        }
        let tables = header.arrays.iter().map(|_| OnceLock::new()).collect();
        Ok(Entry {
            path: path.to_path_buf(),
            file,
            map,
            header,
            index_at,
            payload_at: at,
            tables,
        })
    }

    /// [`Entry::open`], then checks that the entry is the one of `key`: an
    /// entry copied or renamed under another key is damage, never served.
    ///
    /// # Errors
    /// As [`Entry::open`], and [`CacheError::Corrupt`] for a foreign key.
    pub fn open_keyed(path: &Path, key: &str) -> Result<Entry> {
        let entry = Entry::open(path)?;
        if entry.header.key != key {
            return Err(CacheError::corrupt(
                path,
                &format!(
                    "holds the entry of key {} (of {}), not {key}: copied or renamed",
                    entry.header.key, entry.header.source
                ),
            ));
        }
        Ok(entry)
    }

    /// Checks that the file still backs the whole map. Entries are only ever
    /// replaced by rename, but another process (or a user) may truncate one
    /// in place; touching mapped pages past the new end would kill the run
    /// with SIGBUS, so every read checks first and reports the entry as
    /// damaged instead. (Chunks read with `pread` report a truncation racing
    /// the read as a short read; one racing a read of the index, or of chunks
    /// read through the map, is not caught: it needs a writer that ignores
    /// the rename protocol.)
    ///
    /// # Errors
    /// [`CacheError::Corrupt`] when the file shrank.
    pub(crate) fn check_len(&self) -> Result<()> {
        let len = self
            .file
            .metadata()
            .map_err(|e| CacheError::io(&self.path, e))?
            .len();
        if len < self.map.len() as u64 {
            return Err(CacheError::corrupt(
                &self.path,
                &format!(
                    "the file shrank to {len} of {} bytes while open (truncated by another process)",
                    self.map.len()
                ),
            ));
        }
        Ok(())
    }

    /// The entry's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn chunk_ref(&self, array: usize, i: usize) -> Result<ChunkRef> {
        let at = self.index_at[array] + i * INDEX_ENTRY;
        let b = &self.map[at..at + INDEX_ENTRY];
        let r = ChunkRef {
            offset: u64::from_le_bytes(b[..8].try_into().expect("8")) as usize,
            len: u32::from_le_bytes(b[8..12].try_into().expect("4")) as usize,
            raw_len: u32::from_le_bytes(b[12..16].try_into().expect("4")) as usize,
            hash: u64::from_le_bytes(b[16..24].try_into().expect("8")),
        };
        let end = self
            .payload_at
            .checked_add(r.offset)
            .and_then(|s| s.checked_add(r.len));
        if end.is_none_or(|e| e > self.map.len() - 16) {
            return Err(CacheError::corrupt(&self.path, "chunk past the end"));
        }
        Ok(r)
    }

    /// Checks and decodes chunk `i` of array `array`, then calls `f` with its
    /// byte planes: decompressed into a per-thread buffer, or, for planes
    /// stored raw, straight from the map.
    pub(crate) fn with_chunk_planes<T>(
        &self,
        array: usize,
        i: usize,
        f: impl FnOnce(Planes<'_>) -> T,
    ) -> Result<T> {
        SCRATCH.with(|cell| {
            let scratch = &mut *cell.borrow_mut();
            scratch.reset();
            let at = self.decode_chunk(array, i, scratch)?;
            let dtype = self.header.arrays[array].dtype;
            Ok(f(Planes::from_planes(
                dtype,
                at.map(|p| scratch.plane(p, &self.map)),
            )))
        })
    }

    /// Checks chunk `i` of array `array` and decodes it, appending its
    /// compressed planes to `scratch`; returns where each plane lives
    /// (planes stored raw are read in place from the map).
    pub(crate) fn decode_chunk(
        &self,
        array: usize,
        i: usize,
        scratch: &mut Scratch,
    ) -> Result<[PlaneAt; 4]> {
        let r = self.chunk_ref(array, i)?;
        self.decode_stored(array, i, &self.map, self.payload_at + r.offset, scratch)
    }

    /// Checks chunk `i` of array `array`, whose stored bytes start at
    /// `stored[at..]` (the map, or a slab read from the file), and decodes
    /// it into `scratch`; returns where each plane lives (planes stored raw:
    /// in `stored`).
    pub(crate) fn decode_stored(
        &self,
        array: usize,
        i: usize,
        stored: &[u8],
        at: usize,
        scratch: &mut Scratch,
    ) -> Result<[PlaneAt; 4]> {
        let meta = &self.header.arrays[array];
        let r = self.chunk_ref(array, i)?;
        let corrupt = |why: &str| {
            CacheError::corrupt(&self.path, &format!("chunk {i} of `{}`: {why}", meta.key))
        };
        let packed = at
            .checked_add(r.len)
            .and_then(|end| stored.get(at..end))
            .ok_or_else(|| corrupt("past the bytes read"))?;
        if chunk_checksum(packed) != r.hash {
            return Err(corrupt("checksum mismatch"));
        }
        let elem = meta.dtype.size();
        if !r.raw_len.is_multiple_of(elem) {
            return Err(corrupt("wrong size"));
        }
        meta.codec
            .decompress(packed, at, elem, r.raw_len, scratch)
            .map_err(|e| match e {
                Unpack::Io(e) => CacheError::io(&self.path, e),
                Unpack::Damaged(why) => corrupt(&why),
            })
    }

    /// Index of the array stored under `key`.
    pub fn array(&self, key: &str) -> Option<usize> {
        self.header.arrays.iter().position(|a| a.key == key)
    }

    /// How array `array`'s voxels become f32 (its map, and the lookup
    /// table when the vector kernels do not apply).
    pub(crate) fn decoding(&self, array: usize) -> Decoding<'_> {
        let meta = &self.header.arrays[array];
        let map = meta.decode;
        let computed = map.is_some() && !uses_table(meta.dtype, map.as_ref());
        let table = if computed {
            &[][..]
        } else {
            self.tables[array].get_or_init(|| lookup_table(meta.dtype, map.as_ref()))
        };
        Decoding {
            map,
            table,
            computed,
        }
    }

    /// `madvise(WILLNEED)` on chunks `row + kx` for `kx` in `kxs` (adjacent
    /// in the file: one chunk row along x), so a cold read queues all its
    /// I/O at once instead of faulting page by page.
    pub(crate) fn prefetch_run(
        &self,
        array: usize,
        row: usize,
        kxs: std::ops::Range<usize>,
    ) -> Result<()> {
        if kxs.is_empty() {
            return Ok(());
        }
        let first = self.chunk_ref(array, row + kxs.start)?;
        let last = self.chunk_ref(array, row + kxs.end - 1)?;
        let (from, to) = (first.offset, last.offset + last.len);
        if to > from {
            // Advice only: a refusal costs speed, never correctness.
            let _ =
                self.map
                    .advise_range(memmap2::Advice::WillNeed, self.payload_at + from, to - from);
        }
        Ok(())
    }

    /// Checks every chunk's checksum and that it decodes.
    ///
    /// # Errors
    /// The first damage found.
    pub fn verify(&self) -> Result<()> {
        self.check_len()?;
        // Every byte is read: queue it all at once.
        let _ = self.map.advise(memmap2::Advice::WillNeed);
        for (a, meta) in self.header.arrays.iter().enumerate() {
            for i in 0..meta.n_chunks() {
                self.with_chunk_planes(a, i, |_| ())?;
            }
        }
        Ok(())
    }

    /// File size in bytes.
    pub fn len(&self) -> u64 {
        self.map.len() as u64
    }

    /// Whether the file is empty (never, for a valid entry).
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}
