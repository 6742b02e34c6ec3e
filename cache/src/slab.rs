//! A slab's chunks read from the entry's file with `pread` into a buffer
//! reused by the thread, instead of touched through the map.
//!
//! Reading mapped pages costs a page fault per 4 KiB the first time a
//! mapping touches them (every entry is mapped afresh when a sample is cut
//! from it), and the faults and their page-table work grow with the volume.
//! One `pread` per run of adjacent chunks copies the same bytes from the page
//! cache in a single system call: 3–12% more samples per CPU-second from
//! 512×512×256 CT (+12% on two threads) and +10% from 256×256×128 on two
//! threads (BENCHMARKS.md, issue 23, eleventh round). It also turns a file
//! truncated under a read of its chunks into a short read (an error naming
//! the entry) instead of a `SIGBUS`.

use std::cell::RefCell;
use std::ops::Range;

use crate::entry::Entry;
use crate::error::{CacheError, Result};

thread_local! {
    /// The stored bytes of the slab being decoded (only grows; trimmed by
    /// plane-by-plane reads like [`crate::scratch::Scratch`]).
    pub(crate) static SLAB: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Where a run of chunks was put: the chunk at file offset `f` of the run
/// read into `bytes[f - file_from + at..]`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Placed {
    file_from: usize,
    at: usize,
}

impl Placed {
    /// Where in the slab buffer the chunk at `file_offset` starts (`None`:
    /// before this run, which only an index changed since the read can give).
    pub(crate) fn at(self, file_offset: usize) -> Option<usize> {
        Some(file_offset.checked_sub(self.file_from)? + self.at)
    }
}

impl Entry {
    /// Reads chunks `row + kx` for `kx` in `kxs` of each chunk row `row` in
    /// `rows` from the file into `bytes` (grown as needed), rows adjacent in
    /// the file in one read. Returns where each row went, or `None` when a
    /// row's chunks are not back to back in the file or the rows together
    /// claim more bytes than the file holds (dino3d writes neither; such an
    /// entry is read through the map instead, so a damaged index cannot make
    /// this allocate beyond the entry's size), or the platform has no
    /// positioned reads.
    ///
    /// # Errors
    /// A chunk past the end of the entry; the file shrank under the read or
    /// cannot be read.
    pub(crate) fn read_rows(
        &self,
        array: usize,
        rows: impl Iterator<Item = usize>,
        kxs: Range<usize>,
        bytes: &mut Vec<u8>,
    ) -> Result<Option<Vec<Placed>>> {
        if !cfg!(unix) || kxs.is_empty() {
            return Ok(None);
        }
        // (file from, file to, place in `bytes`) of each read.
        let mut reads: Vec<(usize, usize, usize)> = Vec::new();
        let mut placed = Vec::new();
        let mut len = 0;
        for row in rows {
            let from = self.payload_at + self.chunk_ref(array, row + kxs.start)?.offset;
            let mut end = from;
            for kx in kxs.clone() {
                let r = self.chunk_ref(array, row + kx)?;
                if self.payload_at + r.offset != end {
                    return Ok(None);
                }
                end += r.len;
            }
            match reads.last_mut() {
                Some(last) if last.1 == from => {
                    last.1 = end;
                    placed.push(Placed {
                        file_from: last.0,
                        at: last.2,
                    });
                }
                _ => {
                    reads.push((from, end, len));
                    placed.push(Placed {
                        file_from: from,
                        at: len,
                    });
                }
            }
            len += end - from;
            if len > self.map.len() {
                return Ok(None);
            }
        }
        if bytes.len() < len {
            bytes.resize(len, 0);
        }
        for (from, to, at) in reads {
            read_exact_at(&self.file, &mut bytes[at..at + (to - from)], from as u64).map_err(
                |e| match e.kind() {
                    std::io::ErrorKind::UnexpectedEof => CacheError::corrupt(
                        &self.path,
                        "the file shrank while open (truncated by another process)",
                    ),
                    _ => CacheError::io(&self.path, e),
                },
            )?;
        }
        Ok(Some(placed))
    }
}

#[cfg(unix)]
fn read_exact_at(file: &std::fs::File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
}

#[cfg(not(unix))]
fn read_exact_at(_: &std::fs::File, _: &mut [u8], _: u64) -> std::io::Result<()> {
    unreachable!("read_rows reads through the map where there are no positioned reads")
}

#[cfg(all(test, unix))]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::codec::chunk_checksum;
    use crate::layout::{INDEX_ENTRY, PlaneRect};
    use crate::test_support::{chunk_before_packed_planes, lcg, write_i16};

    /// A 32 × 32 × 16 int16 entry of 8³ chunks (4 × 4 × 2 of them), LZ4:
    /// noisy low bytes (stored raw) and smooth high bytes (compressed).
    fn write(path: &Path) -> Vec<f32> {
        let mut state = 11u64;
        let data: Vec<f32> = (0..32 * 32 * 16)
            .map(|i| {
                f32::from(((lcg(&mut state) >> 33) % 256) as i16 + (i / 700) as i16 * 256 - 1024)
            })
            .collect();
        write_i16(path, &data, [32, 32, 16], [8; 3]);
        data
    }

    /// The 32 × 32 × 16 entry reads back as `data`, whole and plane by plane.
    fn assert_reads_back(entry: &Entry, data: &[f32]) {
        assert_eq!(entry.read_all(0).unwrap().data, data);
        let mut planes = vec![0f32; data.len()];
        entry
            .for_each_plane(
                0,
                |_| Some(PlaneRect::whole([32, 32])),
                |_, z, plane| planes[z * 1024..][..1024].copy_from_slice(plane),
            )
            .unwrap();
        assert_eq!(planes, data);
    }

    /// Rewrites the entry at `path` with `edit(bytes, index_at, payload_at)`
    /// applied (which may change its length), then its header/index
    /// checksum made to match again: changes that only the chunk checksums
    /// (or the layout) can reveal.
    fn edit_entry(path: &Path, edit: impl FnOnce(&mut Vec<u8>, usize, usize)) {
        let entry = Entry::open(path).unwrap();
        let (index_at, payload_at) = (entry.index_at[0], entry.payload_at);
        drop(entry);
        let mut bytes = std::fs::read(path).unwrap();
        edit(&mut bytes, index_at, payload_at);
        let check = xxhash_rust::xxh3::xxh3_64(&bytes[12..payload_at]);
        let end = bytes.len();
        bytes[end - 16..end - 8].copy_from_slice(&check.to_le_bytes());
        std::fs::write(path, &bytes).unwrap();
    }

    /// Every chunk of `rows` × `kxs`, as read into the slab buffer, is the
    /// chunk's bytes in the file.
    fn assert_placed(
        entry: &Entry,
        rows: &[usize],
        kxs: Range<usize>,
        placed: &[Placed],
        slab: &[u8],
    ) {
        for (&row, p) in rows.iter().zip(placed) {
            for kx in kxs.clone() {
                let r = entry.chunk_ref(0, row + kx).unwrap();
                let in_file = entry.payload_at + r.offset;
                assert_eq!(
                    &slab[p.at(in_file).unwrap()..][..r.len],
                    &entry.map[in_file..][..r.len],
                    "chunk {}",
                    row + kx
                );
            }
        }
    }

    /// Whole chunk rows lie back to back in the file and are read at once;
    /// rows cut short on x are read one by one; each chunk lands where
    /// [`Placed::at`] says.
    #[test]
    fn rows_adjacent_in_the_file_are_read_at_once_and_placed_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.d3c");
        write(&path);
        let entry = Entry::open(&path).unwrap();
        // Slab kz = 1: chunk rows 16, 20, 24, 28.
        let rows = [16, 20, 24, 28];
        let mut slab = vec![0xAA; 3];
        let whole = entry
            .read_rows(0, rows.into_iter(), 0..4, &mut slab)
            .unwrap()
            .unwrap();
        assert!(
            whole
                .iter()
                .all(|p| p.file_from == whole[0].file_from && p.at == 0),
            "one read"
        );
        assert_placed(&entry, &rows, 0..4, &whole, &slab);
        slab.fill(0xAA);
        let cut = entry
            .read_rows(0, rows.into_iter(), 1..3, &mut slab)
            .unwrap()
            .unwrap();
        for pair in cut.windows(2) {
            assert!(
                pair[1].file_from > pair[0].file_from && pair[1].at > pair[0].at,
                "a read per row"
            );
        }
        assert_placed(&entry, &rows, 1..3, &cut, &slab);
    }

    /// Planes cut to a rectangle that leaves chunks out on x (each chunk
    /// row read on its own) hold the voxels of the whole read inside it.
    #[test]
    fn planes_of_a_narrow_rectangle_read_back_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.d3c");
        let data = write(&path);
        let entry = Entry::open(&path).unwrap();
        let rect = PlaneRect {
            start: [10, 3],
            end: [22, 30],
        };
        let mut seen = 0;
        entry
            .for_each_plane(
                0,
                |_| Some(rect),
                |_, z, plane| {
                    for y in 3..30 {
                        for x in 10..22 {
                            assert_eq!(
                                plane[y * 32 + x],
                                data[(z * 32 + y) * 32 + x],
                                "{x} {y} {z}"
                            );
                        }
                    }
                    seen += 1;
                },
            )
            .unwrap();
        assert_eq!(seen, 16);
    }

    /// A damaged index whose chunk rows each claim the whole payload (rows
    /// overlapping, together longer than the file) is not read into the
    /// buffer: the read goes through the map and reports the damage.
    #[test]
    fn rows_claiming_more_than_the_file_are_not_read_into_the_buffer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.d3c");
        write(&path);
        edit_entry(&path, |bytes, index_at, payload_at| {
            let quarter = (bytes.len() - 16 - payload_at) / 4;
            for row in [16, 20, 24, 28] {
                for kx in 0..4 {
                    let at = index_at + (row + kx) * INDEX_ENTRY;
                    bytes[at..at + 8].copy_from_slice(&((kx * quarter) as u64).to_le_bytes());
                    bytes[at + 8..at + 12].copy_from_slice(&(quarter as u32).to_le_bytes());
                }
            }
        });

        let entry = Entry::open(&path).unwrap();
        let mut slab = Vec::new();
        let rows = [16, 20, 24, 28].into_iter();
        assert!(entry.read_rows(0, rows, 0..4, &mut slab).unwrap().is_none());
        assert!(slab.is_empty(), "nothing read");
        let err = entry
            .for_each_plane(0, |_| Some(PlaneRect::whole([32, 32])), |_, _, _| ())
            .unwrap_err();
        assert!(err.to_string().contains("e.d3c"), "{err}");
    }

    /// An entry as dino3d wrote it before packed planes (its one chunk built
    /// byte by byte in that layout: a high-byte plane of three values
    /// LZ4-compressed with no kind bit) reads back exactly through the slab
    /// reader, whole and plane by plane.
    #[test]
    fn entries_written_before_packed_planes_read_back_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.d3c");
        let n = 32 * 32 * 16;
        let lo: Vec<u8> = (0..n).map(|i| (i * 37 % 251) as u8).collect();
        let hi: Vec<u8> = (0..n).map(|i| [0xFC, 0xFF, 0][i / 100 % 3]).collect();
        let data: Vec<f32> = lo
            .iter()
            .zip(&hi)
            .map(|(&l, &h)| f32::from(i16::from_le_bytes([l, h])))
            .collect();
        write_i16(&path, &data, [32, 32, 16], [32, 32, 16]);
        edit_entry(&path, |bytes, index_at, payload_at| {
            let old = chunk_before_packed_planes(&lo, &hi);
            let tail = bytes[bytes.len() - 16..].to_vec();
            bytes.truncate(payload_at);
            bytes.extend_from_slice(&old);
            bytes.extend_from_slice(&tail);
            bytes[index_at + 8..index_at + 12].copy_from_slice(&(old.len() as u32).to_le_bytes());
            bytes[index_at + 16..index_at + 24]
                .copy_from_slice(&chunk_checksum(&old).to_le_bytes());
        });
        let entry = Entry::open(&path).unwrap();
        let r = entry.chunk_ref(0, 0).unwrap();
        let word = &entry.map[entry.payload_at + 4..][..4];
        assert_eq!(
            u32::from_le_bytes(word.try_into().unwrap()) >> 29,
            0,
            "no kind bit"
        );
        assert!(r.len < 2 * n, "the old chunk, LZ4-compressed");
        entry.verify().unwrap();
        assert_reads_back(&entry, &data);
    }

    /// An entry whose first two chunks were stored in swapped order (a
    /// valid index, but not as dino3d writes) is read through the map, and
    /// reads back exactly.
    #[test]
    fn chunks_out_of_file_order_are_read_through_the_map() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.d3c");
        let data = write(&path);
        let entry = Entry::open(&path).unwrap();
        let (r0, r1) = (
            entry.chunk_ref(0, 0).unwrap(),
            entry.chunk_ref(0, 1).unwrap(),
        );
        assert_eq!((r0.offset, r1.offset), (0, r0.len));
        drop(entry);
        edit_entry(&path, |bytes, index_at, payload_at| {
            let first = bytes[payload_at..payload_at + r0.len].to_vec();
            let second = bytes[payload_at + r0.len..payload_at + r0.len + r1.len].to_vec();
            bytes[payload_at..payload_at + r1.len].copy_from_slice(&second);
            bytes[payload_at + r1.len..payload_at + r1.len + r0.len].copy_from_slice(&first);
            bytes[index_at..index_at + 8].copy_from_slice(&(r1.len as u64).to_le_bytes());
            bytes[index_at + INDEX_ENTRY..index_at + INDEX_ENTRY + 8]
                .copy_from_slice(&0u64.to_le_bytes());
        });

        let entry = Entry::open(&path).unwrap();
        let mut slab = Vec::new();
        assert!(
            entry
                .read_rows(0, [0].into_iter(), 0..4, &mut slab)
                .unwrap()
                .is_none()
        );
        assert_reads_back(&entry, &data);
    }

    /// A file that shrank under an open entry is a short read, reported as
    /// damage to that entry, not a crash.
    #[test]
    fn a_file_shrunk_before_the_read_is_an_error_naming_the_entry() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.d3c");
        write(&path);
        let entry = Entry::open(&path).unwrap();
        let len = entry.len();
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len - 100)
            .unwrap();
        let mut slab = Vec::new();
        let err = entry
            .read_rows(0, [28].into_iter(), 0..4, &mut slab)
            .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("shrank") && text.contains("e.d3c"), "{text}");
    }
}
