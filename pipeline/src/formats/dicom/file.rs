//! The facts dino3d needs from one DICOM file's header (read with dicom-rs,
//! stopping before the pixel data), for single-frame and enhanced
//! multi-frame objects alike.

use std::path::{Path, PathBuf};

use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_object::{DefaultDicomObject, InMemDicomObject, OpenFileOptions};

use crate::error::{Error, Result};

/// Shared/per-frame functional group sequences of enhanced objects.
const SHARED_GROUPS: Tag = Tag(0x5200, 0x9229);
const PER_FRAME_GROUPS: Tag = Tag(0x5200, 0x9230);
const PLANE_POSITION: Tag = Tag(0x0020, 0x9113);
const PLANE_ORIENTATION: Tag = Tag(0x0020, 0x9116);
const PIXEL_MEASURES: Tag = Tag(0x0028, 0x9110);
const PIXEL_VALUE_TRANSFORM: Tag = Tag(0x0028, 0x9145);

/// One DICOM file's header facts.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct FileHeader {
    /// The file.
    pub path: PathBuf,
    /// SeriesInstanceUID (empty when absent).
    pub series_uid: String,
    /// Transfer syntax UID.
    pub transfer_syntax: String,
    /// Modality (empty when absent).
    pub modality: String,
    /// Rows (y size) and columns (x size).
    pub rows: u32,
    /// Columns (x size).
    pub cols: u32,
    /// SamplesPerPixel.
    pub samples: u16,
    /// BitsAllocated.
    pub bits_allocated: u16,
    /// BitsStored.
    pub bits_stored: u16,
    /// PixelRepresentation = 1.
    pub signed: bool,
    /// PixelSpacing: (between rows, between columns), mm.
    pub pixel_spacing: Option<[f64; 2]>,
    /// ImageOrientationPatient: row then column direction cosines, LPS.
    pub orientation: Option<[f64; 6]>,
    /// SpacingBetweenSlices.
    pub spacing_between: Option<f64>,
    /// `(RescaleSlope, RescaleIntercept)` of each frame, `(1, 0)` when absent.
    pub rescale: Vec<(f64, f64)>,
    /// ImagePositionPatient of each frame (one entry for a single-frame
    /// object; `None` when the file does not give it).
    pub positions: Vec<Option<[f64; 3]>>,
    /// File size in bytes.
    pub file_bytes: u64,
    /// Modification time.
    pub modified: Option<std::time::SystemTime>,
}

impl FileHeader {
    /// Bytes per stored sample.
    pub(crate) fn sample_bytes(&self) -> u64 {
        u64::from(self.bits_allocated).div_ceil(8)
    }

    /// Bytes of one frame's native pixel data.
    pub(crate) fn frame_bytes(&self) -> u64 {
        u64::from(self.rows) * u64::from(self.cols) * u64::from(self.samples) * self.sample_bytes()
    }
}

/// The error text of a dicom-rs error with its causes (its top line alone is
/// often just "could not read data set").
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let s = c.to_string();
        if !text.contains(&s) {
            text.push_str(": ");
            text.push_str(&s);
        }
        cause = c.source();
    }
    text
}

/// Opens a DICOM file; `header_only` stops before the pixel data.
pub(crate) fn open(path: &Path, header_only: bool) -> Result<DefaultDicomObject> {
    // dicom-rs allocates what each element declares: check it fits first.
    super::lengths::check(path, header_only)
        .map_err(|e| Error::format(path, format!("not a readable DICOM file: {e}")))?;
    let opts = OpenFileOptions::new();
    let opts = if header_only {
        opts.read_until(tags::PIXEL_DATA)
    } else {
        opts
    };
    opts.open_file(path)
        .map_err(|e| Error::format(path, format!("not a readable DICOM file: {}", chain(&e))))
}

/// Reads the header facts of the DICOM file at `path`.
///
/// # Errors
/// Unreadable or non-DICOM files; a file too short for the pixel data its
/// header announces (native transfer syntaxes).
pub(crate) fn read(path: &Path) -> Result<FileHeader> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    let obj = open(path, true)?;
    let bad = |what: String| Error::format(path, what);
    let rows = int(&obj, tags::ROWS).ok_or_else(|| bad("no Rows: not an image".into()))?;
    let cols = int(&obj, tags::COLUMNS).ok_or_else(|| bad("no Columns: not an image".into()))?;
    let frames = int(&obj, tags::NUMBER_OF_FRAMES).unwrap_or(1).max(1);
    let bits_allocated = int(&obj, tags::BITS_ALLOCATED).unwrap_or(16);
    let shared = first_item(&obj, SHARED_GROUPS);
    let per_frame = obj
        .get(PER_FRAME_GROUPS)
        .and_then(|e| e.items())
        .unwrap_or(&[]);
    // Enhanced objects put geometry in functional groups; classic ones at top level.
    let in_groups = |group: Tag, tag: Tag, frame: usize| {
        per_frame
            .get(frame)
            .and_then(|f| first_item(f, group))
            .and_then(|g| floats(g, tag))
            .or_else(|| {
                shared
                    .and_then(|s| first_item(s, group))
                    .and_then(|g| floats(g, tag))
            })
    };
    let orientation = floats(&obj, tags::IMAGE_ORIENTATION_PATIENT)
        .or_else(|| in_groups(PLANE_ORIENTATION, tags::IMAGE_ORIENTATION_PATIENT, 0));
    let pixel_spacing = floats(&obj, tags::PIXEL_SPACING)
        .or_else(|| in_groups(PIXEL_MEASURES, tags::PIXEL_SPACING, 0));
    let spacing_between = floats(&obj, tags::SPACING_BETWEEN_SLICES)
        .or_else(|| in_groups(PIXEL_MEASURES, tags::SPACING_BETWEEN_SLICES, 0))
        .and_then(|v| v.first().copied());
    // Enhanced objects may rescale each frame differently.
    let rescale = |frame: usize| {
        let slope = floats(&obj, tags::RESCALE_SLOPE)
            .or_else(|| in_groups(PIXEL_VALUE_TRANSFORM, tags::RESCALE_SLOPE, frame));
        let inter = floats(&obj, tags::RESCALE_INTERCEPT)
            .or_else(|| in_groups(PIXEL_VALUE_TRANSFORM, tags::RESCALE_INTERCEPT, frame));
        (
            slope
                .and_then(|v| v.first().copied())
                .filter(|s| s.is_finite() && *s != 0.0)
                .unwrap_or(1.0),
            inter
                .and_then(|v| v.first().copied())
                .filter(|s| s.is_finite())
                .unwrap_or(0.0),
        )
    };
    let positions = if frames == 1 {
        vec![
            floats(&obj, tags::IMAGE_POSITION_PATIENT)
                .or_else(|| in_groups(PLANE_POSITION, tags::IMAGE_POSITION_PATIENT, 0))
                .and_then(|v| three(&v)),
        ]
    } else {
        // Checked before anything is sized by NumberOfFrames (a corrupt count
        // must not allocate).
        if per_frame.len() < frames as usize {
            return Err(Error::Unsupported {
                path: path.to_path_buf(),
                what: format!(
                    "multi-frame object ({frames} frames) with {} per-frame functional groups: \
                     without a position per frame (PerFrameFunctionalGroupsSequence > \
                     PlanePositionSequence > ImagePositionPatient) its slices cannot be placed",
                    per_frame.len()
                ),
            });
        }
        let ps: Vec<_> = (0..frames as usize)
            .map(|f| {
                per_frame
                    .get(f)
                    .and_then(|g| first_item(g, PLANE_POSITION))
                    .and_then(|g| floats(g, tags::IMAGE_POSITION_PATIENT))
                    .and_then(|v| three(&v))
            })
            .collect();
        if ps.iter().any(Option::is_none) {
            return Err(Error::Unsupported {
                path: path.to_path_buf(),
                what: format!(
                    "multi-frame object ({frames} frames) without a position per frame \
                     (PerFrameFunctionalGroupsSequence > PlanePositionSequence > \
                     ImagePositionPatient): its slices cannot be placed"
                ),
            });
        }
        ps
    };
    let header = FileHeader {
        path: path.to_path_buf(),
        series_uid: text(&obj, tags::SERIES_INSTANCE_UID),
        transfer_syntax: obj.meta().transfer_syntax().to_string(),
        modality: text(&obj, tags::MODALITY),
        rows,
        cols,
        samples: int(&obj, tags::SAMPLES_PER_PIXEL).unwrap_or(1) as u16,
        bits_allocated: bits_allocated as u16,
        bits_stored: int(&obj, tags::BITS_STORED).unwrap_or(bits_allocated) as u16,
        signed: int(&obj, tags::PIXEL_REPRESENTATION) == Some(1),
        pixel_spacing: pixel_spacing.and_then(|v| (v.len() >= 2).then(|| [v[0], v[1]])),
        orientation: orientation
            .and_then(|v| (v.len() >= 6).then(|| [v[0], v[1], v[2], v[3], v[4], v[5]])),
        spacing_between: spacing_between.filter(|s| s.is_finite() && *s > 0.0),
        rescale: (0..positions.len()).map(rescale).collect(),
        positions,
        file_bytes: meta.len(),
        modified: meta.modified().ok(),
    };
    check(&header)?;
    Ok(header)
}

/// Sanity checks that need no pixel data.
fn check(h: &FileHeader) -> Result<()> {
    let unsupported = |what: String| Error::Unsupported {
        path: h.path.clone(),
        what,
    };
    // Rows and Columns are US (16-bit): larger values are corrupt, and
    // keeping them small keeps every size product far from overflow.
    if h.rows == 0 || h.cols == 0 || h.rows > 65535 || h.cols > 65535 {
        return Err(Error::format(
            &h.path,
            format!("image of {}x{} pixels", h.cols, h.rows),
        ));
    }
    if h.samples != 1 {
        return Err(unsupported(format!(
            "{} samples per pixel (colour): only grey-level images are read",
            h.samples
        )));
    }
    if ![8, 16, 32].contains(&h.bits_allocated) {
        return Err(unsupported(format!(
            "BitsAllocated {}: 8, 16 and 32 are read",
            h.bits_allocated
        )));
    }
    if h.bits_stored == 0 || h.bits_stored > h.bits_allocated {
        return Err(Error::format(
            &h.path,
            format!(
                "BitsStored {} with BitsAllocated {}",
                h.bits_stored, h.bits_allocated
            ),
        ));
    }
    if let Some(o) = h.orientation
        && o.iter().any(|v| !v.is_finite())
    {
        return Err(Error::format(
            &h.path,
            format!("ImageOrientationPatient {o:?} is not finite"),
        ));
    }
    if let Some(s) = h.pixel_spacing
        && s.iter().any(|v| !v.is_finite() || *v <= 0.0)
    {
        return Err(Error::format(&h.path, format!("PixelSpacing {s:?}")));
    }
    if h.positions
        .iter()
        .flatten()
        .flatten()
        .any(|v| !v.is_finite())
    {
        return Err(Error::format(
            &h.path,
            "ImagePositionPatient is not finite".to_string(),
        ));
    }
    // Native pixel data cannot be smaller than rows x columns x frames: a
    // truncated file is caught before any decoding.
    if super::pixels::is_native(&h.transfer_syntax) {
        let need = h.frame_bytes() * h.positions.len() as u64;
        if h.file_bytes < need {
            return Err(Error::format(
                &h.path,
                format!(
                    "truncated: {} bytes, too few for the {need} bytes of pixel data its header announces",
                    h.file_bytes
                ),
            ));
        }
    }
    Ok(())
}

fn first_item(obj: &InMemDicomObject, tag: Tag) -> Option<&InMemDicomObject> {
    obj.get(tag).and_then(|e| e.items()).and_then(|i| i.first())
}

fn floats(obj: &InMemDicomObject, tag: Tag) -> Option<Vec<f64>> {
    obj.get(tag)
        .and_then(|e| e.to_multi_float64().ok())
        .filter(|v| !v.is_empty())
}

fn int(obj: &InMemDicomObject, tag: Tag) -> Option<u32> {
    obj.get(tag).and_then(|e| e.to_int::<u32>().ok())
}

fn text(obj: &InMemDicomObject, tag: Tag) -> String {
    obj.get(tag)
        .and_then(|e| e.to_str().ok())
        .map(|s| s.trim_end_matches(['\0', ' ']).trim().to_string())
        .unwrap_or_default()
}

fn three(v: &[f64]) -> Option<[f64; 3]> {
    (v.len() >= 3).then(|| [v[0], v[1], v[2]])
}

/// A plain 16-bit signed CT slice header, for unit tests.
#[cfg(test)]
pub(crate) fn tests_header() -> FileHeader {
    FileHeader {
        path: PathBuf::from("a"),
        series_uid: "1.2".into(),
        transfer_syntax: "1.2.840.10008.1.2.1".into(),
        modality: "CT".into(),
        rows: 4,
        cols: 3,
        samples: 1,
        bits_allocated: 16,
        bits_stored: 16,
        signed: true,
        pixel_spacing: Some([0.5, 0.25]),
        orientation: Some([1.0, 0.0, 0.0, 0.0, 1.0, 0.0]),
        spacing_between: None,
        rescale: vec![(1.0, -1024.0)],
        positions: vec![Some([10.0, 20.0, 0.0])],
        file_bytes: 100,
        modified: None,
    }
}
