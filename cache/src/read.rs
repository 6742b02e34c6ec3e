//! Reading an entry: a box of an array ([`Entry::read_box`]) or its z-planes
//! one at a time ([`Entry::for_each_plane`]), decoding only the chunks they
//! touch, each checked before use.

use std::mem::MaybeUninit;

use crate::array::{Array, shifted};
use crate::decode::{Decoding, Planes};
use crate::entry::Entry;
use crate::error::{CacheError, Result};
use crate::layout::{PlaneNeed, PlaneRect, StoredType};
use crate::scratch::{PlaneAt, SCRATCH, SCRATCH_KEEP, Scratch, trim_bytes};
use crate::slab::{Placed, SLAB};
use crate::window::{Segment, prefetch, window_word_slab};

impl Entry {
    /// The box `[start, start + extent)` of array `array` (decode map
    /// applied), decoding only the chunks it touches.
    ///
    /// # Errors
    /// Damage found in a touched chunk; a box outside the array.
    pub fn read_box(&self, array: usize, start: [usize; 3], extent: [usize; 3]) -> Result<Array> {
        let meta = &self.header.arrays[array];
        let c = meta.shape[0];
        for a in 0..3 {
            if extent[a] == 0 || start[a] + extent[a] > meta.shape[a + 1] {
                return Err(CacheError::OutOfBounds {
                    path: self.path.clone(),
                    start,
                    extent,
                    shape: meta.shape,
                });
            }
        }
        self.check_len()?;
        let total = c * extent.iter().product::<usize>();
        // Every voxel of the box lies in exactly one chunk, so the loop below
        // writes each output element once: no need to zero it first.
        let mut data: Vec<f32> = Vec::with_capacity(total);
        let out = &mut data.spare_capacity_mut()[..total];
        let mut written = 0usize;
        let decoding = self.decoding(array);
        let lo = [0, 1, 2].map(|a| start[a] / meta.chunk[a]);
        let hi = [0, 1, 2].map(|a| (start[a] + extent[a] - 1) / meta.chunk[a]);
        // Queue all the I/O at once (a cold entry), before decoding any of it.
        for ch in 0..c {
            for kz in lo[2]..=hi[2] {
                for ky in lo[1]..=hi[1] {
                    let row = meta.chunk_index([ch, kz, ky, 0]);
                    self.prefetch_run(array, row, lo[0]..hi[0] + 1)?;
                }
            }
        }
        for ch in 0..c {
            for kz in lo[2]..=hi[2] {
                for ky in lo[1]..=hi[1] {
                    written += self.box_row(array, [ch, kz, ky], start, extent, &decoding, out)?;
                }
            }
        }
        // Chunks tile the array, so the box was covered exactly once; checked
        // because the length is only set on that promise.
        assert_eq!(written, total, "chunks must tile the box");
        // SAFETY: `written == total` and the intersections of the box with the
        // disjoint chunks partition the box, so every element of
        // `data[..total]` was initialised by `decode` above (tested by the
        // box round trips in tests/cache.rs).
        unsafe { data.set_len(total) };
        // Rows of large chunks can leave more than a plane read keeps.
        with_buffers(|scratch, slab| {
            scratch.trim(SCRATCH_KEEP);
            trim_bytes(slab, SCRATCH_KEEP);
        });
        Ok(Array {
            data,
            shape: [c, extent[0], extent[1], extent[2]],
            spacing: meta.spacing,
            affine: shifted(meta.affine, start),
        })
    }

    /// The part of the box in chunk row `(channel, kz, ky)`: its chunks
    /// along x are read from the file together and each decoded once, then
    /// mapped 16-bit voxels are computed by the vector kernels, each output
    /// row written left to right across the chunks ([`window_word_slab`]);
    /// everything else goes chunk by chunk through the table (or plain
    /// conversion). Returns the voxels written.
    fn box_row(
        &self,
        array: usize,
        [ch, kz, ky]: [usize; 3],
        start: [usize; 3],
        extent: [usize; 3],
        decoding: &Decoding<'_>,
        out: &mut [MaybeUninit<f32>],
    ) -> Result<usize> {
        let meta = &self.header.arrays[array];
        let kxs = start[0] / meta.chunk[0]..(start[0] + extent[0] - 1) / meta.chunk[0] + 1;
        with_buffers(|scratch, slab| {
            scratch.reset();
            let row = meta.chunk_index([ch, kz, ky, 0]);
            let placed = self.read_rows(array, std::iter::once(row), kxs.clone(), slab)?;
            let stored: &[u8] = if placed.is_some() { slab } else { &self.map };
            let mut decoded = Vec::with_capacity(kxs.len());
            for kx in kxs {
                let i = row + kx;
                let at = self.stored_at(array, i, placed.as_ref().map(|p| p[0]))?;
                let at = self.decode_stored(array, i, stored, at, scratch)?;
                decoded.push((at, meta.box_rows([ch, kz, ky, kx], start, extent)));
            }
            let scratch = &*scratch;
            let planes_of = |at: [PlaneAt; 4]| at.map(|p| scratch.plane(p, stored));
            if let Some(map) = decoding.computed() {
                let segments: Vec<Segment<'_>> = decoded
                    .iter()
                    .map(|&(at, rows)| {
                        let [lo, hi, ..] = planes_of(at);
                        Segment { lo, hi, rows }
                    })
                    .collect();
                window_word_slab(&segments, meta.dtype == StoredType::I16, map, None, out);
            } else {
                for &(at, rows) in &decoded {
                    Planes::from_planes(meta.dtype, planes_of(at)).decode_rows(
                        rows,
                        None,
                        out,
                        decoding.table,
                        decoding.map.as_ref(),
                    );
                }
            }
            Ok(decoded.iter().map(|(_, rows)| rows.len()).sum())
        })
    }

    /// The whole array.
    ///
    /// # Errors
    /// As [`Entry::read_box`].
    pub fn read_all(&self, array: usize) -> Result<Array> {
        let s = self.header.arrays[array].shape;
        self.read_box(array, [0; 3], [s[1], s[2], s[3]])
    }

    /// Decodes array `array` one z-plane at a time, channel by channel and in
    /// increasing z within each channel. For each
    /// plane `z` for which `needs(z)` gives a rectangle (a [`PlaneRect`], or
    /// a [`PlaneNeed`] naming also which rows), calls
    /// `f(channel, z, plane)` with an `nx · ny` plane (x fastest) whose voxels
    /// inside the rectangle (on the rows needed) are those
    /// [`Entry::read_all`] gives, bit for bit; other voxels hold whatever an
    /// earlier plane left there (rows not needed are not computed). Each slab
    /// of chunks along z is decoded once (only the chunks the slab's
    /// rectangles touch) and the array is never materialised: a reader that
    /// consumes planes as they come (cutting views) pays no full-array write.
    ///
    /// `f` must not read from a cache entry itself (the decoding thread's
    /// scratch is in use while it runs).
    ///
    /// # Errors
    /// Damage in a chunk this reads; planes before it were already given to `f`.
    ///
    /// # Panics
    /// When a [`PlaneNeed`]'s row flags are not `ny` long.
    pub fn for_each_plane<'m, N: Into<PlaneNeed<'m>>>(
        &self,
        array: usize,
        needs: impl Fn(usize) -> Option<N>,
        mut f: impl FnMut(usize, usize, &[f32]),
    ) -> Result<()> {
        let meta = &self.header.arrays[array];
        let [c, nx, ny, nz] = meta.shape;
        let n = meta.chunks_per_axis();
        let decoding = self.decoding(array);
        let needs: Vec<Option<PlaneNeed<'m>>> = (0..nz)
            .map(|z| {
                needs(z)
                    .map(Into::into)
                    .map(|need: PlaneNeed<'m>| {
                        if let Some(rows) = need.rows {
                            assert_eq!(rows.len(), ny, "plane {z}: one row flag per row");
                        }
                        PlaneNeed {
                            rect: need.rect.clamped([nx, ny]),
                            ..need
                        }
                    })
                    .filter(|need| !need.rect.is_empty())
            })
            .collect();
        // Per slab of chunks along z: the union of its planes' rectangles.
        let slab_rects: Vec<Option<PlaneRect>> = (0..n[2])
            .map(|kz| {
                let z_range = kz * meta.chunk[2]..((kz + 1) * meta.chunk[2]).min(nz);
                needs[z_range]
                    .iter()
                    .flatten()
                    .map(|need| need.rect)
                    .reduce(PlaneRect::union)
            })
            .collect();
        // Queue all the I/O at once (a cold entry), before decoding any of it.
        for ch in 0..c {
            for (kz, rect) in slab_rects.iter().enumerate() {
                if let Some(rect) = rect {
                    let span = rect.chunks(meta.chunk);
                    for ky in span[1].clone() {
                        let row = meta.chunk_index([ch, kz, ky, 0]);
                        self.prefetch_run(array, row, span[0].clone())?;
                    }
                }
            }
        }
        let mut plane = vec![0f32; nx * ny];
        let result =
            self.planes_of_slabs(array, &needs, &slab_rects, &decoding, &mut plane, &mut f);
        // A slab of a large array can leave tens of MiB in this thread's
        // scratch and slab buffer; give back what ordinary reads would not
        // use again.
        with_buffers(|scratch, slab| {
            scratch.trim(SCRATCH_KEEP);
            trim_bytes(slab, SCRATCH_KEEP);
        });
        result
    }

    /// Where chunk `i`'s stored bytes start: in the slab buffer when its row
    /// was read there (`placed`), else in the map.
    fn stored_at(&self, array: usize, i: usize, placed: Option<Placed>) -> Result<usize> {
        let in_file = self.payload_at + self.chunk_ref(array, i)?.offset;
        match placed {
            None => Ok(in_file),
            Some(p) => p.at(in_file).ok_or_else(|| {
                CacheError::corrupt(&self.path, &format!("chunk {i}: index changed while read"))
            }),
        }
    }

    /// The decoding loop of [`Entry::for_each_plane`].
    #[allow(clippy::too_many_arguments)]
    fn planes_of_slabs(
        &self,
        array: usize,
        needs: &[Option<PlaneNeed<'_>>],
        slab_rects: &[Option<PlaneRect>],
        decoding: &Decoding<'_>,
        plane: &mut [f32],
        f: &mut impl FnMut(usize, usize, &[f32]),
    ) -> Result<()> {
        let meta = &self.header.arrays[array];
        let [c, _, _, nz] = meta.shape;
        let n = meta.chunks_per_axis();
        let (map, computed, table) = (decoding.map.as_ref(), decoding.computed(), decoding.table);
        for ch in 0..c {
            for (kz, slab_rect) in slab_rects.iter().enumerate() {
                let z_range = kz * meta.chunk[2]..((kz + 1) * meta.chunk[2]).min(nz);
                let Some(slab_rect) = *slab_rect else {
                    continue;
                };
                self.check_len()?;
                with_buffers(|scratch, slab| -> Result<()> {
                    scratch.reset();
                    // The chunks of this slab that some plane's rectangle
                    // touches, read from the file together and each decoded
                    // once.
                    let slab_span = slab_rect.chunks(meta.chunk);
                    let rows = slab_span[1]
                        .clone()
                        .map(|ky| meta.chunk_index([ch, kz, ky, 0]));
                    let placed = self.read_rows(array, rows, slab_span[0].clone(), slab)?;
                    let stored: &[u8] = if placed.is_some() { slab } else { &self.map };
                    let mut decoded = vec![None; n[0] * n[1]];
                    for (row, ky) in slab_span[1].clone().enumerate() {
                        for kx in slab_span[0].clone() {
                            let i = meta.chunk_index([ch, kz, ky, kx]);
                            let at = self.stored_at(array, i, placed.as_ref().map(|p| p[row]))?;
                            decoded[ky * n[0] + kx] =
                                Some(self.decode_stored(array, i, stored, at, scratch)?);
                        }
                    }
                    let scratch = &*scratch;
                    let planes_of = |at: [PlaneAt; 4]| at.map(|p| scratch.plane(p, stored));
                    for z in z_range.clone() {
                        let Some(need) = needs[z] else {
                            continue;
                        };
                        let rect = need.rect;
                        // SAFETY: `MaybeUninit<f32>` has the layout of `f32`,
                        // and only initialised `f32` values are written
                        // through this view (which ends before `plane` is
                        // read), so `plane` stays initialised.
                        let out =
                            unsafe { &mut *(&mut *plane as *mut [f32] as *mut [MaybeUninit<f32>]) };
                        let span = rect.chunks(meta.chunk);
                        // The needed rows of chunk row `ky` (`None`: none).
                        let rows_of = |ky: usize| {
                            let y0 = rect.start[1].max(ky * meta.chunk[1]);
                            let y1 = rect.end[1].min((ky + 1) * meta.chunk[1]);
                            let wanted = need.rows_in(y0, y1);
                            wanted.is_none_or(|w| w.contains(&true)).then_some(wanted)
                        };
                        // The chunks of chunk row `ky` the rectangle meets
                        // (decoded above: the slab's rectangle holds them).
                        let decoded = &decoded;
                        let chunks_of = |ky: usize| {
                            span[0].clone().map(move |kx| {
                                let at =
                                    decoded[ky * n[0] + kx].expect("inside the slab's rectangle");
                                (planes_of(at), meta.plane_rows([kz, ky, kx], z, &rect))
                            })
                        };
                        if let Some(map) = computed {
                            let segments_of = |ky: usize| -> Vec<Segment<'_>> {
                                chunks_of(ky)
                                    .map(|([lo, hi, ..], rows)| Segment { lo, hi, rows })
                                    .collect()
                            };
                            let mut next = segments_of(span[1].start);
                            for ky in span[1].clone() {
                                let segments = std::mem::take(&mut next);
                                if ky + 1 < span[1].end {
                                    next = segments_of(ky + 1);
                                    if short_blocks(meta.chunk) {
                                        prefetch(&next);
                                    }
                                }
                                let Some(wanted) = rows_of(ky) else {
                                    continue;
                                };
                                let signed = meta.dtype == StoredType::I16;
                                window_word_slab(&segments, signed, map, wanted, out);
                            }
                        } else {
                            for ky in span[1].clone() {
                                let Some(wanted) = rows_of(ky) else {
                                    continue;
                                };
                                for (planes, rows) in chunks_of(ky) {
                                    Planes::from_planes(meta.dtype, planes)
                                        .decode_rows(rows, wanted, out, table, map);
                                }
                            }
                        }
                        // The chunks met tile the rectangle, so all of it
                        // (its needed rows) was written.
                        f(ch, z, plane);
                    }
                    Ok(())
                })?;
            }
        }
        Ok(())
    }
}

/// Runs `f` with this thread's decoding scratch and slab buffer.
fn with_buffers<T>(f: impl FnOnce(&mut Scratch, &mut Vec<u8>) -> T) -> T {
    SLAB.with(|slab| SCRATCH.with(|scratch| f(&mut scratch.borrow_mut(), &mut slab.borrow_mut())))
}

/// Whether a plane's block of a chunk byte plane (`chunk[0] · chunk[1]`
/// bytes) is shorter than the hardware prefetcher follows, so the window
/// prefetches the next chunk row itself. 32³ chunks (1 KiB blocks): +5%
/// samples per CPU-second on 512² planes with the prefetch; 64 × 64 × 8
/// (4 KiB blocks): 2–5% more without it (BENCHMARKS.md, issue 23, eighth
/// round).
fn short_blocks(chunk: [usize; 3]) -> bool {
    chunk[0] * chunk[1] < 4096
}

#[cfg(test)]
mod tests {
    use crate::codec::{CONST_PLANE, PACKED_PLANE, RAW_PLANE};
    use crate::entry::Entry;
    use crate::test_support::{lcg, write_i16};

    /// LZ4 chunks store each byte plane as one repeated byte, bit-packed,
    /// compressed or, when LZ4 cannot shrink it, raw: noisy low bytes go
    /// raw, constant high bytes as one byte, high bytes of a few values
    /// packed, high bytes of many values in runs compressed; all read back
    /// exactly (whole, and as a box).
    #[test]
    fn lz4_planes_are_constant_packed_raw_or_compressed_and_read_back_exactly() {
        let dir = tempfile::tempdir().unwrap();
        // High byte 4 everywhere; 3 in the first 12 planes and 4 after; or
        // a new value every plane (32 values: too many to pack).
        for (name, base_of_z) in [
            ("constant", (|_| 1024) as fn(usize) -> i16),
            ("few", |z| if z < 12 { 768 } else { 1024 }),
            ("many", |z| (z as i16 - 16) * 256),
        ] {
            let path = dir.path().join(format!("{name}.d3c"));
            let mut state = 7u64;
            let data: Vec<f32> = (0..32 * 32 * 32)
                .map(|i| {
                    f32::from(((lcg(&mut state) >> 33) % 256) as i16 + base_of_z(i / (32 * 32)))
                })
                .collect();
            write_i16(&path, &data, [32; 3], [32; 3]);
            let entry = Entry::open(&path).unwrap();
            let r = entry.chunk_ref(0, 0).unwrap();
            let packed = &entry.map[entry.payload_at + r.offset..][..r.len];
            let word = |p: usize| u32::from_le_bytes(packed[4 * p..4 * p + 4].try_into().unwrap());
            assert_ne!(word(0) & RAW_PLANE, 0, "noisy low bytes are stored raw");
            assert_eq!(word(0) & !RAW_PLANE, 32 * 32 * 32);
            if name == "constant" {
                assert_eq!(word(1), 1 | CONST_PLANE, "constant high bytes are one byte");
                assert_eq!(packed[8 + 32 * 32 * 32], 4, "the high byte of 1024..1279");
            } else if name == "few" {
                assert_ne!(word(1) & PACKED_PLANE, 0, "two values: packed");
                let len = word(1) & !PACKED_PLANE;
                assert!(
                    len < 100,
                    "two runs: 1-bit indices, compressed ({len} bytes)"
                );
                assert_eq!(packed[8 + 32 * 32 * 32] & 0x7F, 1, "1-bit indices");
            } else {
                let kinds = RAW_PLANE | CONST_PLANE | PACKED_PLANE;
                assert_eq!(word(1) & kinds, 0, "runs of many values are compressed");
                assert!((2..1024).contains(&(word(1) as usize)));
            }
            assert_eq!(entry.read_all(0).unwrap().data, data, "{name}");
            let b = entry.read_box(0, [3, 5, 7], [20, 9, 11]).unwrap();
            assert_eq!(b.data[0], data[(7 * 32 + 5) * 32 + 3], "{name}");
            entry.verify().unwrap();
        }
    }
}
