//! Chunk codecs: how a chunk's byte-shuffled bytes are compressed, and how
//! they come back as byte planes.
//!
//! * zstd ([`ZSTD_LEVEL`]) over the whole shuffled chunk.
//! * LZ4 per byte plane: `planes` little-endian u32 lengths (bit 31 set:
//!   stored raw; bit 30 set: one byte repeated over the plane; bit 29 set:
//!   bit-packed against a palette, [`crate::packed`]), then the planes'
//!   bytes in order. Planes stored raw are read in place from the bytes the
//!   chunk was read from (the map, or a slab read from the file), never
//!   copied.

use serde::{Deserialize, Serialize};

use crate::scratch::{PlaneAt, Scratch};

/// zstd level: ratio barely improves above 3 on noisy medical data, decode speed
/// does not depend on it (../shared/spec/rust-stack.md §5).
pub const ZSTD_LEVEL: i32 = 3;

/// LZ4 high-compression level 5 (as nnU-Net's Blosc2 store): about 6% smaller
/// than LZ4's fast mode on int16 CT, decoded at the same speed.
pub(crate) const LZ4_MODE: lz4::block::CompressionMode =
    lz4::block::CompressionMode::HIGHCOMPRESSION(5);

/// LZ4's fast mode, the cheap test of whether a plane compresses at all.
const LZ4_FAST: lz4::block::CompressionMode = lz4::block::CompressionMode::DEFAULT;

/// Bit 31 of an LZ4 plane length: the plane is stored raw.
pub(crate) const RAW_PLANE: u32 = 1 << 31;
/// Bit 30 of an LZ4 plane length: a plane of one repeated byte (the high
/// bytes of air or of a flat region), stored as that byte and filled on
/// read, cheaper than LZ4's decoding of the same run.
pub(crate) const CONST_PLANE: u32 = 1 << 30;
/// Bit 29 of an LZ4 plane length: a plane of at most 16 distinct bytes (the
/// high bytes of CT and MRI), bit-packed and then LZ4-compressed
/// ([`crate::packed`]): smaller than LZ4 alone, and faster to decode. Entries written
/// before it have none and still read; dino3d before it reads an entry with
/// one as damaged (and rebuilds it).
pub(crate) const PACKED_PLANE: u32 = 1 << 29;
/// One past the longest byte plane an LZ4 chunk holds: its length must stay
/// clear of the kind bits above.
const LONGEST_LZ4_PLANE: usize = 1 << 29;

/// How chunk bytes are compressed (after byte shuffling).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Codec {
    /// zstd level [`ZSTD_LEVEL`]: the smallest entries, about 1 GB/s to decode.
    #[default]
    Zstd,
    /// LZ4 (block format) per byte plane: larger entries, several times
    /// faster to decode. A plane LZ4 cannot shrink by 1/16 (the noisy low
    /// bytes of CT or MRI) is stored raw and read in place from the bytes
    /// read from the file, so a box read neither decompresses nor decodes it
    /// beyond the rows it keeps.
    Lz4,
}

impl Codec {
    /// Its name in recipes and reports.
    pub fn name(self) -> &'static str {
        match self {
            Codec::Zstd => "zstd",
            Codec::Lz4 => "lz4",
        }
    }

    /// Every codec, in the order error messages list them.
    pub const ALL: [Codec; 2] = [Codec::Lz4, Codec::Zstd];

    /// The codec called `name` (`lz4` or `zstd`).
    pub fn from_name(name: &str) -> Option<Codec> {
        Codec::ALL.into_iter().find(|c| c.name() == name)
    }

    /// Compresses a chunk's shuffled bytes (`elem` planes of equal size).
    pub(crate) fn compress(self, shuffled: &[u8], elem: usize) -> std::io::Result<Vec<u8>> {
        match self {
            Codec::Zstd => zstd::bulk::compress(shuffled, ZSTD_LEVEL),
            Codec::Lz4 => {
                let n = shuffled.len() / elem;
                if n >= LONGEST_LZ4_PLANE {
                    // Bits 29..32 of a plane's length word are its kind.
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        format!(
                            "a chunk of {n} voxels is too large for the lz4 codec (at most \
                             {} per chunk): use smaller chunks or zstd",
                            LONGEST_LZ4_PLANE - 1
                        ),
                    ));
                }
                let mut head = Vec::with_capacity(4 * elem);
                let mut body = Vec::with_capacity(shuffled.len());
                for plane in shuffled.chunks(n.max(1)).take(elem) {
                    if let Some(&first) = plane.first().filter(|&&b| plane.iter().all(|&x| x == b))
                    {
                        head.extend_from_slice(&(1 | CONST_PLANE).to_le_bytes());
                        body.push(first);
                        continue;
                    }
                    // Tiny edge chunks can pack longer than they are: those go on.
                    let packed = crate::packed::pack(plane, LZ4_MODE)?;
                    if let Some(packed) = packed.filter(|p| p.len() < plane.len()) {
                        head.extend_from_slice(&(packed.len() as u32 | PACKED_PLANE).to_le_bytes());
                        body.extend_from_slice(&packed);
                        continue;
                    }
                    // High compression searches hardest on bytes it cannot
                    // shrink (the noisy low bytes, half of every entry): when
                    // fast LZ4 saves under 1/64, the plane goes raw at once.
                    let fast = lz4::block::compress(plane, Some(LZ4_FAST), false)?;
                    if fast.len() + plane.len() / 64 >= plane.len() {
                        head.extend_from_slice(&(plane.len() as u32 | RAW_PLANE).to_le_bytes());
                        body.extend_from_slice(plane);
                        continue;
                    }
                    let packed = lz4::block::compress(plane, Some(LZ4_MODE), false)?;
                    let (len, bytes) = if packed.len() + plane.len() / 16 < plane.len() {
                        (packed.len() as u32, &packed[..])
                    } else {
                        (plane.len() as u32 | RAW_PLANE, plane)
                    };
                    head.extend_from_slice(&len.to_le_bytes());
                    body.extend_from_slice(bytes);
                }
                head.extend_from_slice(&body);
                Ok(head)
            }
        }
    }

    /// Decompresses `packed` (a chunk of `raw_len` bytes in `elem` planes,
    /// found at byte `packed_at` of the stored bytes it was read from) into
    /// `scratch`; returns where each byte plane lives: in `scratch`, in the
    /// stored bytes (raw planes) or as a constant.
    pub(crate) fn decompress(
        self,
        packed: &[u8],
        packed_at: usize,
        elem: usize,
        raw_len: usize,
        scratch: &mut Scratch,
    ) -> Result<[PlaneAt; 4], Unpack> {
        let n = raw_len / elem;
        let mut planes = [PlaneAt::Buf(0, 0); 4];
        match self {
            Codec::Zstd => {
                let base = scratch.take(raw_len);
                let (dec, buf) = scratch.zstd_and_buf().map_err(Unpack::Io)?;
                let got = dec
                    .decompress_to_buffer(packed, &mut buf[base..base + raw_len])
                    .map_err(|e| Unpack::Damaged(e.to_string()))?;
                if got != raw_len {
                    return Err(Unpack::Damaged("wrong size".into()));
                }
                for (p, plane) in planes.iter_mut().enumerate().take(elem) {
                    *plane = PlaneAt::Buf(base + p * n, n);
                }
            }
            Codec::Lz4 => {
                let damaged = |why: &str| Unpack::Damaged(why.to_string());
                // Plane lengths first, then the planes (see `RAW_PLANE`).
                let head = 4 * elem;
                if packed.len() < head {
                    return Err(damaged("truncated plane table"));
                }
                let mut at = head;
                for (p, plane) in planes.iter_mut().enumerate().take(elem) {
                    let word =
                        u32::from_le_bytes(packed[4 * p..4 * p + 4].try_into().expect("4 bytes"));
                    let len = (word & !(RAW_PLANE | CONST_PLANE | PACKED_PLANE)) as usize;
                    let stored = packed
                        .get(at..at + len)
                        .ok_or_else(|| damaged("plane past the chunk"))?;
                    if (word & (RAW_PLANE | CONST_PLANE | PACKED_PLANE)).count_ones() > 1 {
                        return Err(damaged("a plane of two kinds"));
                    }
                    if word & PACKED_PLANE != 0 {
                        let (to, out, tmp) = scratch.take_with_tmp(n);
                        crate::packed::unpack(stored, out, tmp).map_err(|e| damaged(&e))?;
                        *plane = PlaneAt::Buf(to, n);
                    } else if word & CONST_PLANE != 0 {
                        if len != 1 {
                            return Err(damaged("bad constant plane"));
                        }
                        scratch.constant(stored[0], n);
                        *plane = PlaneAt::Const(stored[0], n);
                    } else if word & RAW_PLANE != 0 {
                        if len != n {
                            return Err(damaged("wrong size"));
                        }
                        *plane = PlaneAt::Stored(packed_at + at, len);
                    } else {
                        let size = i32::try_from(n).map_err(|e| damaged(&e.to_string()))?;
                        let to = scratch.take(n);
                        let got = lz4::block::decompress_to_buffer(
                            stored,
                            Some(size),
                            &mut scratch.buf[to..to + n],
                        )
                        .map_err(|e| damaged(&e.to_string()))?;
                        if got != n {
                            return Err(damaged("wrong size"));
                        }
                        *plane = PlaneAt::Buf(to, n);
                    }
                    at += len;
                }
                if at != packed.len() {
                    return Err(damaged("wrong size"));
                }
            }
        }
        Ok(planes)
    }
}

/// Why a chunk did not decompress.
#[derive(Debug)]
pub(crate) enum Unpack {
    /// The decompressor could not be set up.
    Io(std::io::Error),
    /// The bytes are not a valid chunk.
    Damaged(String),
}

/// A chunk's checksum: xxh3-64 of its compressed bytes, computed with the
/// vector instructions the CPU has (checked on every read, so its speed counts).
pub(crate) fn chunk_checksum(packed: &[u8]) -> u64 {
    twox_hash::XxHash3_64::oneshot(packed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The run-time dispatched checksum is xxh3-64 itself, so entries written
    /// before it (and by any xxh3 implementation) still verify.
    #[test]
    fn chunk_checksum_is_xxh3_64() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let bytes: Vec<u8> = (0..70_000)
            .map(|_| (crate::test_support::lcg(&mut state) >> 56) as u8)
            .collect();
        for len in [
            0, 1, 3, 16, 17, 128, 129, 240, 241, 1024, 4097, 65_536, 70_000,
        ] {
            assert_eq!(
                chunk_checksum(&bytes[..len]),
                xxhash_rust::xxh3::xxh3_64(&bytes[..len]),
                "length {len}"
            );
        }
    }

    /// A plane of few values is packed unless packing would lengthen it
    /// (tiny edge chunks); both decode exactly.
    #[test]
    fn planes_are_packed_only_where_that_shortens_them() {
        for (n, packed) in [(8, false), (4096, true)] {
            let lo: Vec<u8> = (0..n).map(|i| (i * 37 % 251) as u8).collect();
            let hi: Vec<u8> = (0..n).map(|i| [0xFC, 0xFF, 0, 1, 5][i % 5]).collect();
            let bytes = [lo.clone(), hi.clone()].concat();
            let stored = Codec::Lz4.compress(&bytes, 2).unwrap();
            let word = u32::from_le_bytes(stored[4..8].try_into().unwrap());
            assert_eq!(word & PACKED_PLANE != 0, packed, "{n} voxels");
            assert_eq!(decode_words(&stored, n), (lo, hi), "{n} voxels");
        }
    }

    /// The low and high byte planes of an LZ4 chunk of `n` 16-bit voxels.
    fn decode_words(stored: &[u8], n: usize) -> (Vec<u8>, Vec<u8>) {
        let mut scratch = Scratch::default();
        let at = Codec::Lz4
            .decompress(stored, 0, 2, 2 * n, &mut scratch)
            .unwrap_or_else(|_| panic!("a chunk of {n} voxels decodes"));
        let plane = |p: PlaneAt| scratch.plane(p, stored).to_vec();
        (plane(at[0]), plane(at[1]))
    }

    /// A chunk as dino3d wrote it before packed planes (a high-byte plane of
    /// three values LZ4-compressed, no kind bit; low bytes raw), built byte
    /// by byte, still decodes exactly.
    #[test]
    fn chunks_written_before_packed_planes_still_decode() {
        let n = 4096;
        let lo: Vec<u8> = (0..n).map(|i| (i * 37 % 251) as u8).collect();
        let hi: Vec<u8> = (0..n).map(|i| [0xFC, 0xFF, 0][i / 100 % 3]).collect();
        let stored = crate::test_support::chunk_before_packed_planes(&lo, &hi);
        assert_eq!(decode_words(&stored, n), (lo.clone(), hi.clone()));
        // Today's writer packs that plane instead.
        let new = Codec::Lz4.compress(&[lo, hi].concat(), 2).unwrap();
        assert_ne!(
            u32::from_le_bytes(new[4..8].try_into().unwrap()) & PACKED_PLANE,
            0
        );
    }

    #[test]
    fn codecs_are_named_as_in_recipes() {
        for c in [Codec::Zstd, Codec::Lz4] {
            assert_eq!(Codec::from_name(c.name()), Some(c));
        }
        assert_eq!(Codec::from_name("blosc"), None);
    }
}
