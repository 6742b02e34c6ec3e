//! Pixel data: which transfer syntaxes are read, and one file's frames
//! decoded (dicom-pixeldata) into the slices of the output volume.

use dicom_encoding::transfer_syntax::TransferSyntaxIndex;
use dicom_pixeldata::PixelDecoder;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;

use super::file::{FileHeader, chain, open};
use crate::error::{Error, Result};
use crate::formats::Encoding;
use crate::nifti::DType;

/// Uncompressed transfer syntaxes (implicit VR LE, explicit VR LE, explicit
/// VR BE): pixel data is stored as is.
const NATIVE: [&str; 3] = [
    "1.2.840.10008.1.2",
    "1.2.840.10008.1.2.1",
    "1.2.840.10008.1.2.2",
];
const DEFLATED: &str = "1.2.840.10008.1.2.1.99";
const RLE: &str = "1.2.840.10008.1.2.5";

/// Whether the file stores its pixel data as is (not deflated or encapsulated),
/// so the file must be at least as long as the pixels.
pub(crate) fn is_native(ts: &str) -> bool {
    NATIVE.contains(&ts)
}

/// How this transfer syntax stores voxels (for reports).
pub(crate) fn encoding(ts: &str) -> Encoding {
    match ts {
        t if NATIVE.contains(&t) => Encoding::Raw,
        DEFLATED => Encoding::Deflate,
        RLE => Encoding::Rle,
        _ => Encoding::Jpeg,
    }
}

/// The transfer syntax's name, for messages.
pub(crate) fn ts_name(ts: &str) -> String {
    match TransferSyntaxRegistry.get(ts) {
        Some(t) => format!("{} ({ts})", t.name()),
        None => ts.to_string(),
    }
}

/// Refuses transfer syntaxes dino3d cannot decode, naming them.
pub(crate) fn check_supported(h: &FileHeader) -> Result<()> {
    let ok = TransferSyntaxRegistry
        .get(&h.transfer_syntax)
        .is_some_and(|t| t.can_decode_all() || t.is_codec_free());
    if ok {
        Ok(())
    } else {
        Err(Error::Unsupported {
            path: h.path.clone(),
            what: format!(
                "transfer syntax {}: dino3d decodes uncompressed, deflate, RLE and JPEG \
                 baseline/extended/lossless DICOM (JPEG 2000, JPEG-LS and others would need C \
                 libraries; decompress the series first, e.g. with `gdcmconv --raw`)",
                ts_name(&h.transfer_syntax)
            ),
        })
    }
}

/// The stored voxel type of a header.
pub(crate) fn dtype(h: &FileHeader) -> DType {
    match (h.bits_allocated, h.signed) {
        (8, false) => DType::U8,
        (8, true) => DType::I8,
        (16, false) => DType::U16,
        (16, true) => DType::I16,
        (32, false) => DType::U32,
        _ => DType::I32,
    }
}

/// Decodes the file of `h` and copies frame `f` into `out[f]` for each given
/// frame (native-endian bytes of [`dtype`]), keeping only the stored bits.
pub(crate) fn decode_into(h: &FileHeader, frames: &mut [(usize, &mut [u8])]) -> Result<()> {
    check_supported(h)?;
    let obj = open(&h.path, false)?;
    // dicom-rs 0.10's RLE decoder indexes past a segment that decodes short
    // (found by tests/dicom_mutations.rs): a corrupt file must be an error
    // naming it, not a crash of a 100k-scan run, so a codec panic is caught
    // here. Nothing outlives it: `obj` is only read and the result dropped.
    let decoded =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| obj.decode_pixel_data()));
    let cannot = |why: String| {
        Error::format(
            &h.path,
            format!(
                "cannot decode pixel data ({}): {why}",
                ts_name(&h.transfer_syntax)
            ),
        )
    };
    let pixels = match decoded {
        Ok(r) => r.map_err(|e| cannot(chain(&e)))?,
        Err(_) => return Err(cannot("the codec failed on corrupt data".into())),
    };
    let data = pixels.data();
    let frame_bytes = h.frame_bytes() as usize;
    for (f, dst) in frames.iter_mut() {
        let src = data
            .get(*f * frame_bytes..(*f + 1) * frame_bytes)
            .ok_or_else(|| {
                Error::format(
                    &h.path,
                    format!(
                        "truncated pixel data: {} bytes, frame {} needs bytes up to {}",
                        data.len(),
                        *f + 1,
                        (*f + 1) * frame_bytes
                    ),
                )
            })?;
        dst.copy_from_slice(src);
        keep_stored_bits(dst, h);
    }
    Ok(())
}

/// Masks samples to BitsStored and sign-extends signed ones, as GDCM and
/// pydicom do (bits above BitsStored may hold overlays or garbage).
fn keep_stored_bits(bytes: &mut [u8], h: &FileHeader) {
    let stored = u32::from(h.bits_stored);
    match h.bits_allocated {
        16 if stored < 16 => {
            for c in bytes.chunks_exact_mut(2) {
                let v = u16::from_ne_bytes([c[0], c[1]]);
                let v = if h.signed {
                    (((v << (16 - stored)) as i16) >> (16 - stored)) as u16
                } else {
                    v & ((1u16 << stored) - 1)
                };
                c.copy_from_slice(&v.to_ne_bytes());
            }
        }
        32 if stored < 32 => {
            for c in bytes.chunks_exact_mut(4) {
                let v = u32::from_ne_bytes([c[0], c[1], c[2], c[3]]);
                let v = if h.signed {
                    (((v << (32 - stored)) as i32) >> (32 - stored)) as u32
                } else {
                    v & ((1u32 << stored) - 1)
                };
                c.copy_from_slice(&v.to_ne_bytes());
            }
        }
        8 if stored < 8 => {
            for b in bytes.iter_mut() {
                *b = if h.signed {
                    (((*b << (8 - stored)) as i8) >> (8 - stored)) as u8
                } else {
                    *b & ((1u8 << stored) - 1)
                };
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn twelve_bit_samples_are_masked_or_sign_extended() {
        let mut h = crate::formats::dicom::file::tests_header();
        h.bits_stored = 12;
        let mut b: Vec<u8> = [0xF800u16, 0x0FFF, 0x0800]
            .iter()
            .flat_map(|v| v.to_ne_bytes())
            .collect();
        let orig = b.clone();
        h.signed = false;
        keep_stored_bits(&mut b, &h);
        let got: Vec<u16> = b
            .chunks(2)
            .map(|c| u16::from_ne_bytes([c[0], c[1]]))
            .collect();
        assert_eq!(got, [0x0800, 0x0FFF, 0x0800]);
        h.signed = true;
        let mut b = orig;
        keep_stored_bits(&mut b, &h);
        let got: Vec<i16> = b
            .chunks(2)
            .map(|c| i16::from_ne_bytes([c[0], c[1]]))
            .collect();
        assert_eq!(got, [-2048, -1, -2048]);
    }
}
