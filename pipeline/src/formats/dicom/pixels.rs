//! Pixel data: which transfer syntaxes are read, and one file's frames
//! decoded (dicom-pixeldata) into the slices of the output volume.

use dicom_encoding::adapters::PixelDataObject;
use dicom_encoding::transfer_syntax::TransferSyntaxIndex;
use dicom_object::DefaultDicomObject;
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
/// JPEG 2000 (lossless, lossy, Part 2 lossless and lossy) and High-Throughput
/// JPEG 2000 (lossless, RPCL lossless, lossy): all decoded by `openjp2`.
const JPEG_2000: [&str; 7] = [
    "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.4.91",
    "1.2.840.10008.1.2.4.92",
    "1.2.840.10008.1.2.4.93",
    "1.2.840.10008.1.2.4.201",
    "1.2.840.10008.1.2.4.202",
    "1.2.840.10008.1.2.4.203",
];

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
        t if JPEG_2000.contains(&t) => Encoding::Jpeg2000,
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
                "transfer syntax {}: dino3d decodes uncompressed, deflate, RLE, JPEG \
                 baseline/extended/lossless and JPEG 2000 DICOM, not this one (JPEG-LS would \
                 need the C++ CharLS library); decompress the series first, e.g. with \
                 `gdcmconv --raw`",
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
    let cannot = |why: String| {
        Error::format(
            &h.path,
            format!(
                "cannot decode pixel data ({}): {why}",
                ts_name(&h.transfer_syntax)
            ),
        )
    };
    let wanted: Vec<usize> = frames.iter().map(|(f, _)| *f).collect();
    // dicom-rs 0.10's RLE decoder indexes past a segment that decodes short
    // (found by tests/dicom_mutations.rs): a corrupt file must be an error
    // naming it, not a crash of a 100k-scan run, so a codec panic (openjp2's
    // header read included) is caught here. Nothing outlives it: `obj` is
    // only read and the result dropped.
    let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        if encoding(&h.transfer_syntax) == Encoding::Jpeg2000 {
            j2k_frames_match(&obj, h, &wanted).map_err(&cannot)?;
        }
        obj.decode_pixel_data().map_err(|e| cannot(chain(&e)))
    }));
    let pixels = match decoded {
        Ok(r) => r?,
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

/// Checks the codestream header (SIZ) of each wanted JPEG 2000 frame against
/// the DICOM header. dicom-rs 0.10's JPEG 2000 adapter copies whatever the
/// codestream holds into a frame sized from Rows x Columns without comparing
/// the two, so a codestream narrower or shorter than the header says would
/// decode "fine" into sheared rows and zeros.
fn j2k_frames_match(
    obj: &DefaultDicomObject,
    h: &FileHeader,
    wanted: &[usize],
) -> Result<(), String> {
    for &f in wanted {
        let bytes = u32::try_from(f)
            .ok()
            .and_then(|f| obj.frame_pixel_data(f))
            .ok_or_else(|| format!("no encoded data for frame {}", f + 1))?;
        let img = jpeg2k::DumpImage::from_bytes(&bytes)
            .map_err(|e| format!("frame {}: {e}", f + 1))?
            .img;
        let comps = img.components();
        let fits = |c: &jpeg2k::ImageComponent| {
            c.width() == h.cols
                && c.height() == h.rows
                && c.precision() <= u32::from(h.bits_allocated)
        };
        if comps.len() != usize::from(h.samples) || !comps.iter().all(fits) {
            let got: Vec<String> = comps
                .iter()
                .map(|c| format!("{}x{} of {} bits", c.width(), c.height(), c.precision()))
                .collect();
            return Err(format!(
                "frame {}: the JPEG 2000 codestream holds {} component(s) ({}), the header \
                 says {} sample(s) of {}x{} in {} bits (Columns x Rows, BitsAllocated)",
                f + 1,
                comps.len(),
                got.join(", "),
                h.samples,
                h.cols,
                h.rows,
                h.bits_allocated
            ));
        }
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
