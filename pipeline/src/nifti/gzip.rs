//! gzip inflate for `.nii.gz`: libdeflate for whole-buffer speed, with
//! multi-member (bgzip, pigz --independent) support, plus a streaming prefix
//! read for header-only access.
//!
//! The output size is known from the NIfTI header, so the caller allocates the
//! exact buffer once and we inflate straight into it: no growing buffers.

use std::io::Read;
use std::mem::MaybeUninit;
use std::ptr::NonNull;

use flate2::read::{GzDecoder, MultiGzDecoder};
use libdeflate_sys as sys;

/// Largest expansion ratio DEFLATE can reach (258-byte matches coded in about
/// 2 bits each): used to refuse headers whose sizes no gzip file could back.
pub(crate) const MAX_DEFLATE_RATIO: u64 = 1032;

/// Whether `bytes` start with the gzip magic.
pub(crate) fn is_gzip(bytes: &[u8]) -> bool {
    bytes.len() >= 2 && bytes[0] == 0x1f && bytes[1] == 0x8b
}

/// Inflates up to `max` bytes from the start of a gzip stream (all members).
///
/// # Errors
/// A message when the stream is corrupt before `max` bytes (a short stream is not
/// an error: the caller checks what it needs).
pub(crate) fn inflate_prefix(src: impl Read, max: usize) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(max);
    MultiGzDecoder::new(src)
        .take(max as u64)
        .read_to_end(&mut out)
        .map_err(|e| format!("corrupt gzip stream: {e}"))?;
    Ok(out)
}

/// An owned libdeflate decompressor.
struct Decompressor(NonNull<sys::libdeflate_decompressor>);

impl Decompressor {
    fn new() -> Decompressor {
        // SAFETY: plain allocation call with no arguments; NULL (out of memory) is
        // handled by the `expect`.
        let p = unsafe { sys::libdeflate_alloc_decompressor() };
        Decompressor(NonNull::new(p).expect("libdeflate_alloc_decompressor: out of memory"))
    }
}

impl Drop for Decompressor {
    fn drop(&mut self) {
        // SAFETY: the pointer came from libdeflate_alloc_decompressor and is freed once.
        unsafe { sys::libdeflate_free_decompressor(self.0.as_ptr()) }
    }
}

/// Inflates a gzip file (one or many members) until `out` is full. Bytes past
/// `out.len()` are not needed by NIfTI and are ignored.
///
/// # Errors
/// A message when the stream is corrupt or ends before `out` is full.
pub(crate) fn inflate_into(src: &[u8], out: &mut [u8]) -> Result<(), String> {
    // SAFETY: `MaybeUninit<u8>` has the layout of `u8`, and `inflate_into_uninit`
    // only ever writes initialised bytes, so `out` stays initialised.
    let out = unsafe { &mut *(out as *mut [u8] as *mut [MaybeUninit<u8>]) };
    inflate_into_uninit(src, out)
}

/// [`inflate_into`] into uninitialised memory, so the caller need not zero a
/// buffer that is about to be overwritten. On `Ok`, every byte of `out` has been
/// written.
///
/// # Errors
/// A message when the stream is corrupt or ends before `out` is full.
pub(crate) fn inflate_into_uninit(src: &[u8], out: &mut [MaybeUninit<u8>]) -> Result<(), String> {
    let dec = Decompressor::new();
    let (mut in_pos, mut out_pos) = (0usize, 0usize);
    let want_total = out.len();
    while out_pos < want_total {
        if in_pos >= src.len() || !is_gzip(&src[in_pos..]) {
            return Err(truncated(out_pos, out.len()));
        }
        let (mut used_in, mut used_out) = (0usize, 0usize);
        let rest_in = &src[in_pos..];
        let rest_out = &mut out[out_pos..];
        // SAFETY: the input and output pointers and lengths come from live slices
        // that outlive the call; libdeflate only writes (never reads) the output,
        // at most `rest_out.len()` bytes, and reports how many in `used_out`; the
        // two return pointers point at live locals.
        let rc = unsafe {
            sys::libdeflate_gzip_decompress_ex(
                dec.0.as_ptr(),
                rest_in.as_ptr().cast(),
                rest_in.len(),
                rest_out.as_mut_ptr().cast(),
                rest_out.len(),
                &mut used_in,
                &mut used_out,
            )
        };
        match rc {
            sys::libdeflate_result_LIBDEFLATE_SUCCESS => {
                in_pos += used_in;
                out_pos += used_out;
                if used_in == 0 {
                    return Err(truncated(out_pos, out.len()));
                }
            }
            sys::libdeflate_result_LIBDEFLATE_INSUFFICIENT_SPACE => {
                // The member inflates to more than we need (trailing bytes after the
                // voxels, or corruption): stream the part we need, then finish the
                // member so its CRC is still verified.
                rest_out.fill(MaybeUninit::new(0));
                // SAFETY: every byte of `rest_out` was just initialised, and
                // `MaybeUninit<u8>` has the layout of `u8`.
                let rest_out = unsafe { &mut *(rest_out as *mut [MaybeUninit<u8>] as *mut [u8]) };
                let mut dec = GzDecoder::new(rest_in);
                let eof = |e: std::io::Error| match e.kind() {
                    std::io::ErrorKind::UnexpectedEof => truncated(out_pos, want_total),
                    _ => format!("corrupt gzip data ({e})"),
                };
                dec.read_exact(rest_out).map_err(eof)?;
                std::io::copy(&mut dec, &mut std::io::sink())
                    .map_err(|e| format!("corrupt gzip data ({e})"))?;
                return Ok(());
            }
            _ => {
                // BAD_DATA: either corrupt, or a member cut short. Tell which.
                let got = count_inflatable(rest_in);
                return Err(if got < rest_out.len() as u64 {
                    format!(
                        "truncated or corrupt gzip stream: {} of {} needed bytes could be inflated",
                        out_pos as u64 + got,
                        out.len()
                    )
                } else {
                    "corrupt gzip stream (bad deflate data or checksum)".to_string()
                });
            }
        }
    }
    Ok(())
}

fn truncated(got: usize, want: usize) -> String {
    format!("truncated gzip stream: inflated {got} of {want} needed bytes")
}

/// How many bytes a streaming inflate gets before failing (for error messages).
fn count_inflatable(src: &[u8]) -> u64 {
    let mut n = 0u64;
    let mut buf = vec![0u8; 1 << 16];
    let mut dec = MultiGzDecoder::new(src);
    while let Ok(k) = dec.read(&mut buf) {
        if k == 0 {
            break;
        }
        n += k as u64;
    }
    n
}

/// Compresses `data` as one gzip member with libdeflate at `level` (1..=12).
pub(crate) fn gzip_compress(data: &[u8], level: i32) -> Vec<u8> {
    let lvl = libdeflater::CompressionLvl::new(level.clamp(1, 12))
        .unwrap_or_else(|_| libdeflater::CompressionLvl::default());
    let mut c = libdeflater::Compressor::new(lvl);
    let mut out = vec![0u8; c.gzip_compress_bound(data.len())];
    let n = c
        .gzip_compress(data, &mut out)
        .expect("output sized by gzip_compress_bound");
    out.truncate(n);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[test]
    fn single_and_multi_member_inflate_exactly() {
        let data = payload(300_000);
        let single = gzip_compress(&data, 6);
        let mut out = vec![0u8; data.len()];
        inflate_into(&single, &mut out).unwrap();
        assert_eq!(out, data);

        // Three members, as bgzip or pigz --independent write.
        let mut multi = gzip_compress(&data[..1000], 1);
        multi.extend(gzip_compress(&data[1000..200_000], 6));
        multi.extend(gzip_compress(&data[200_000..], 9));
        let mut out = vec![0u8; data.len()];
        inflate_into(&multi, &mut out).unwrap();
        assert_eq!(out, data);
        assert_eq!(inflate_prefix(&multi[..], 5000).unwrap(), data[..5000]);
    }

    #[test]
    fn needing_less_than_the_stream_holds_is_fine() {
        let data = payload(100_000);
        let gz = gzip_compress(&data, 6);
        let mut out = vec![0u8; 60_000];
        inflate_into(&gz, &mut out).unwrap();
        assert_eq!(out, data[..60_000]);
    }

    #[test]
    fn truncated_and_corrupt_streams_are_errors() {
        let data = payload(100_000);
        let gz = gzip_compress(&data, 6);
        let mut out = vec![0u8; data.len()];
        let e = inflate_into(&gz[..gz.len() / 2], &mut out).unwrap_err();
        assert!(e.contains("truncated"), "{e}");
        let mut bad = gz.clone();
        for b in &mut bad[20..60] {
            *b ^= 0x5a;
        }
        assert!(inflate_into(&bad, &mut out).is_err());
        assert!(
            inflate_into(b"not gzip", &mut out)
                .unwrap_err()
                .contains("truncated")
        );
    }
}
