//! Byte planes of at most 16 distinct values, stored as a palette and 1-, 2-
//! or 4-bit indices.
//!
//! The high bytes of CT and MRI voxels take a handful of values per chunk
//! (air, fat, soft tissue, bone: 0xFC, 0xFF, 0x00..0x05 in HU). LZ4 over
//! such a plane was the largest single cost of a warm 512² read after the
//! window (BENCHMARKS.md, issue 23, tenth round). Packed first, the plane is
//! 2–8 times shorter, so LZ4 decodes a quarter of the bytes (and compresses
//! them smaller than the plane itself), and the indices unpack with byte
//! shuffles at several times LZ4's speed.
//!
//! Layout of a packed plane: one byte, the index width in bits (1, 2 or 4)
//! plus [`LZ4_INDICES`] when the indices are LZ4-compressed; the palette
//! (`2^bits` bytes); the indices, voxel `i` in bits `[i · bits, (i + 1) ·
//! bits)` counted from the low bit of the first byte, raw or as one LZ4 block.

/// Flag in a packed plane's first byte: its indices are one LZ4 block.
const LZ4_INDICES: u8 = 0x80;

/// The widest index stored: 16 palette entries, one SSSE3 shuffle table.
const MAX_BITS: usize = 4;

/// The index width that holds `distinct` values (at most 16).
fn bits_for(distinct: usize) -> usize {
    match distinct {
        0..=2 => 1,
        3..=4 => 2,
        _ => 4,
    }
}

/// Bytes of the indices of `n` voxels at `bits` bits.
fn indices_len(n: usize, bits: usize) -> usize {
    (n * bits).div_ceil(8)
}

/// `plane` packed, its indices LZ4-compressed (`mode`) when that saves at
/// least 1/16; `None` when it holds more than 16 distinct values.
pub(crate) fn pack(
    plane: &[u8],
    mode: lz4::block::CompressionMode,
) -> std::io::Result<Option<Vec<u8>>> {
    let Some(raw) = pack_raw(plane) else {
        return Ok(None);
    };
    let head = 1 + (1 << raw[0]);
    let indices = &raw[head..];
    let packed = lz4::block::compress(indices, Some(mode), false)?;
    if packed.len() + indices.len() / 16 >= indices.len() {
        return Ok(Some(raw));
    }
    let mut out = Vec::with_capacity(head + packed.len());
    out.push(raw[0] | LZ4_INDICES);
    out.extend_from_slice(&raw[1..head]);
    out.extend_from_slice(&packed);
    Ok(Some(out))
}

/// `plane` packed with raw indices, or `None` beyond 16 distinct values.
fn pack_raw(plane: &[u8]) -> Option<Vec<u8>> {
    let mut seen = [false; 256];
    let mut palette = Vec::with_capacity(16);
    for &b in plane {
        if !seen[usize::from(b)] {
            if palette.len() == 1 << MAX_BITS {
                return None;
            }
            seen[usize::from(b)] = true;
            palette.push(b);
        }
    }
    let bits = bits_for(palette.len());
    let mut index_of = [0u8; 256];
    for (i, &b) in palette.iter().enumerate() {
        index_of[usize::from(b)] = i as u8;
    }
    // Unused entries repeat the first, so any index decodes to a stored value.
    let first = palette.first().copied().unwrap_or(0);
    palette.resize(1 << bits, first);
    let mut out = Vec::with_capacity(1 + (1 << bits) + indices_len(plane.len(), bits));
    out.push(bits as u8);
    out.extend_from_slice(&palette);
    let per_byte = 8 / bits;
    for group in plane.chunks(per_byte) {
        let byte = group.iter().enumerate().fold(0u8, |acc, (k, &b)| {
            acc | index_of[usize::from(b)] << (k * bits)
        });
        out.push(byte);
    }
    Some(out)
}

/// Unpacks a packed plane of `out.len()` voxels into `out` (`tmp` holds
/// decompressed indices); the error says what is wrong with a damaged one.
pub(crate) fn unpack(stored: &[u8], out: &mut [u8], tmp: &mut Vec<u8>) -> Result<(), String> {
    let first = *stored.first().ok_or("empty packed plane")?;
    let bits = usize::from(first & !LZ4_INDICES);
    if !matches!(bits, 1 | 2 | 4) {
        return Err("bad index width of a packed plane".into());
    }
    let head = 1 + (1 << bits);
    let wanted = indices_len(out.len(), bits);
    let stored_indices = stored.get(head..).ok_or("truncated palette")?;
    let indices = if first & LZ4_INDICES == 0 {
        if stored_indices.len() != wanted {
            return Err("wrong size".into());
        }
        stored_indices
    } else {
        tmp.resize(wanted, 0);
        let size = i32::try_from(wanted).map_err(|e| e.to_string())?;
        let got = lz4::block::decompress_to_buffer(stored_indices, Some(size), tmp)
            .map_err(|e| e.to_string())?;
        if got != wanted {
            return Err("wrong size".into());
        }
        &tmp[..]
    };
    let mut palette = [0u8; 16];
    palette[..1 << bits].copy_from_slice(&stored[1..head]);
    let done = unpack_vector(bits, &palette, indices, out);
    unpack_scalar(bits, &palette, indices, out, done);
    Ok(())
}

/// Voxels `from..` of `out` one at a time (the reference, and the tail the
/// vector kernel leaves).
fn unpack_scalar(bits: usize, palette: &[u8; 16], indices: &[u8], out: &mut [u8], from: usize) {
    let mask = (1u8 << bits) - 1;
    for (i, o) in out.iter_mut().enumerate().skip(from) {
        let at = i * bits;
        *o = palette[usize::from(indices[at / 8] >> (at % 8) & mask)];
    }
}

/// The whole blocks of 16 index bytes, with SSSE3 where the CPU has it;
/// returns how many voxels of `out` it wrote (0 without SSSE3).
fn unpack_vector(bits: usize, palette: &[u8; 16], indices: &[u8], out: &mut [u8]) -> usize {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("ssse3") {
            let per_block = 16 * 8 / bits;
            let blocks = (out.len() / per_block).min(indices.len() / 16);
            // SAFETY: SSSE3 was detected; `blocks` whole blocks of 16 index
            // bytes are in `indices` and their `per_block` voxels in `out`.
            unsafe {
                ssse3::unpack(
                    bits,
                    palette,
                    &indices[..16 * blocks],
                    &mut out[..per_block * blocks],
                )
            };
            return per_block * blocks;
        }
    }
    let _ = (bits, palette, indices, out);
    0
}

#[cfg(target_arch = "x86_64")]
mod ssse3 {
    use std::arch::x86_64::*;

    /// Unpacks whole blocks: 16 index bytes to `128 / bits` voxels each.
    ///
    /// # Safety
    /// SSSE3; `indices.len()` a multiple of 16 and `out.len()` exactly
    /// `indices.len() · 8 / bits`; `bits` one of 1, 2, 4.
    #[target_feature(enable = "ssse3")]
    pub(super) unsafe fn unpack(bits: usize, palette: &[u8; 16], indices: &[u8], out: &mut [u8]) {
        debug_assert_eq!(out.len() * bits, indices.len() * 8);
        // SAFETY: 16 readable bytes.
        let pal = unsafe { _mm_loadu_si128(palette.as_ptr().cast()) };
        for (block, o) in indices
            .chunks_exact(16)
            .zip(out.chunks_exact_mut(128 / bits))
        {
            // SAFETY: `block` holds 16 bytes.
            let v = unsafe { _mm_loadu_si128(block.as_ptr().cast()) };
            let o = o.as_mut_ptr().cast::<__m128i>();
            // Palette values of index field k of every byte, for each k.
            let field = |k: i32, mask: i8| {
                let shifted = _mm_srl_epi16(v, _mm_cvtsi32_si128(k * bits as i32));
                _mm_shuffle_epi8(pal, _mm_and_si128(shifted, _mm_set1_epi8(mask)))
            };
            // Voxel `(8 / bits) · j + k` is field k of byte j: the fields'
            // vectors are interleaved byte by byte, then pair by pair, and so
            // on, which leaves the voxels in order.
            // SAFETY (all stores below): `o` holds 128 / bits bytes, that is
            // 2, 4 or 8 vectors for bits 4, 2, 1.
            unsafe {
                match bits {
                    4 => {
                        let (a, b) = (field(0, 0x0F), field(1, 0x0F));
                        _mm_storeu_si128(o, _mm_unpacklo_epi8(a, b));
                        _mm_storeu_si128(o.add(1), _mm_unpackhi_epi8(a, b));
                    }
                    2 => {
                        let f = [0, 1, 2, 3].map(|k| field(k, 0x03));
                        // Byte pairs of fields (0, 1) and (2, 3), low and high halves.
                        let p01 = [_mm_unpacklo_epi8(f[0], f[1]), _mm_unpackhi_epi8(f[0], f[1])];
                        let p23 = [_mm_unpacklo_epi8(f[2], f[3]), _mm_unpackhi_epi8(f[2], f[3])];
                        for (h, (a, b)) in p01.into_iter().zip(p23).enumerate() {
                            _mm_storeu_si128(o.add(2 * h), _mm_unpacklo_epi16(a, b));
                            _mm_storeu_si128(o.add(2 * h + 1), _mm_unpackhi_epi16(a, b));
                        }
                    }
                    _ => {
                        let f = [0, 1, 2, 3, 4, 5, 6, 7].map(|k| field(k, 0x01));
                        let pair = |m: usize, h: usize| {
                            if h == 0 {
                                _mm_unpacklo_epi8(f[2 * m], f[2 * m + 1])
                            } else {
                                _mm_unpackhi_epi8(f[2 * m], f[2 * m + 1])
                            }
                        };
                        for h in 0..2 {
                            let p = [0, 1, 2, 3].map(|m| pair(m, h));
                            // Quads of fields 0..4 and 4..8, low and high halves.
                            let q03 = [
                                _mm_unpacklo_epi16(p[0], p[1]),
                                _mm_unpackhi_epi16(p[0], p[1]),
                            ];
                            let q47 = [
                                _mm_unpacklo_epi16(p[2], p[3]),
                                _mm_unpackhi_epi16(p[2], p[3]),
                            ];
                            for (g, (a, b)) in q03.into_iter().zip(q47).enumerate() {
                                let at = o.add(4 * h + 2 * g);
                                _mm_storeu_si128(at, _mm_unpacklo_epi32(a, b));
                                _mm_storeu_si128(at.add(1), _mm_unpackhi_epi32(a, b));
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HC: lz4::block::CompressionMode = lz4::block::CompressionMode::HIGHCOMPRESSION(5);

    /// `n` bytes drawn from `values`, in runs of random length up to
    /// `max_run` (as high bytes come), from a fixed seed.
    fn plane_of_runs(n: usize, values: &[u8], seed: u64, max_run: usize) -> Vec<u8> {
        let mut state = seed;
        let mut next = move || {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 33) as usize
        };
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let v = values[next() % values.len()];
            let run = 1 + next() % max_run;
            out.extend(std::iter::repeat_n(v, run.min(n - out.len())));
        }
        out
    }

    fn plane(n: usize, values: &[u8], seed: u64) -> Vec<u8> {
        plane_of_runs(n, values, seed, 9)
    }

    /// Every width round-trips exactly, indices raw or LZ4-compressed,
    /// through the vector kernel and its scalar tail, at lengths that end
    /// inside a byte and inside a block; the width is the smallest that
    /// holds the values.
    #[test]
    fn planes_of_up_to_16_values_round_trip_at_the_smallest_width() {
        let values: Vec<u8> = vec![
            0xFC, 0xFF, 0x00, 0x01, 0x05, 0x80, 0x7F, 3, 9, 200, 17, 42, 99, 100, 101, 250,
        ];
        let mut tmp = Vec::new();
        for (distinct, bits) in [(1, 1), (2, 1), (3, 2), (4, 2), (5, 4), (16, 4)] {
            for n in [0, 1, 7, 9, 127, 128, 129, 255, 1000, 32_768, 32_771] {
                for max_run in [1, 9, 400] {
                    let seed = (n * 31 + distinct + max_run) as u64;
                    let p = plane_of_runs(n, &values[..distinct], seed, max_run);
                    let used = p.iter().collect::<std::collections::BTreeSet<_>>().len();
                    let raw = pack_raw(&p).expect("at most 16 values");
                    let packed = pack(&p, HC).unwrap().expect("at most 16 values");
                    let what = format!("{distinct} values ({bits} bits), n {n}, runs {max_run}");
                    assert_eq!(usize::from(raw[0]), bits_for(used), "{what}");
                    assert_eq!(packed[0] & !LZ4_INDICES, raw[0], "{what}");
                    assert_eq!(
                        raw.len(),
                        1 + (1 << raw[0]) + indices_len(n, bits_for(used))
                    );
                    if n == 32_768 && max_run == 400 && used > 1 {
                        assert_ne!(packed[0] & LZ4_INDICES, 0, "{what}: long runs compress");
                        assert!(packed.len() < raw.len());
                    }
                    for stored in [&raw, &packed] {
                        let mut out = vec![0xAA; n];
                        unpack(stored, &mut out, &mut tmp).unwrap();
                        assert_eq!(out, p, "{what}");
                    }
                }
            }
        }
    }

    /// The vector kernel equals the scalar reference on every index pattern
    /// (random bytes), for each width.
    #[test]
    fn the_vector_kernel_equals_the_scalar_reference() {
        let palette: [u8; 16] =
            core::array::from_fn(|i| (i as u8).wrapping_mul(37).wrapping_add(5));
        let indices: Vec<u8> = plane(16 * 40, &(0..=255).collect::<Vec<u8>>(), 11);
        for bits in [1, 2, 4] {
            let n = indices.len() * 8 / bits;
            let mut vector = vec![0; n];
            let done = unpack_vector(bits, &palette, &indices, &mut vector);
            let mut scalar = vec![0; n];
            unpack_scalar(bits, &palette, &indices, &mut scalar, 0);
            if cfg!(target_arch = "x86_64") && std::arch::is_x86_feature_detected!("ssse3") {
                assert_eq!(done, n, "{bits} bits: all whole blocks");
            }
            assert_eq!(vector[..done], scalar[..done], "{bits} bits");
        }
    }

    #[test]
    fn more_than_16_values_are_not_packed() {
        let values: Vec<u8> = (0..17).collect();
        assert!(pack(&plane(4096, &values, 3), HC).unwrap().is_none());
        assert!(pack(&plane(4096, &values[..16], 3), HC).unwrap().is_some());
    }

    /// Damaged framing is an error, never a panic or a short plane.
    #[test]
    fn damaged_packed_planes_are_refused() {
        let mut tmp = Vec::new();
        let mut out = vec![0; 1000];
        assert!(unpack(&[], &mut out, &mut tmp).is_err());
        for max_run in [1, 400] {
            let p = plane_of_runs(1000, &[1, 2, 3], 5, max_run);
            let packed = pack(&p, HC).unwrap().unwrap();
            assert_eq!(packed[0] & LZ4_INDICES != 0, max_run == 400);
            let mut bad = packed.clone();
            bad[0] = 3 | (packed[0] & LZ4_INDICES);
            assert!(unpack(&bad, &mut out, &mut tmp).is_err(), "width 3");
            let truncated = &packed[..packed.len() - 1];
            assert!(unpack(truncated, &mut out, &mut tmp).is_err(), "truncated");
            assert!(
                unpack(&packed[..3], &mut out, &mut tmp).is_err(),
                "no palette"
            );
            let short = &mut out[..996];
            assert!(unpack(&packed, short, &mut tmp).is_err(), "another length");
        }
    }
}
