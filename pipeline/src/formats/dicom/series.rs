//! From the headers of a series' files to one volume: the slices sorted along
//! the slice normal, the spacing checked (gaps, duplicates, gantry tilt), and
//! the LPS geometry ITK's `ImageSeriesReader` gives (origin = the first
//! sorted slice, z = the slice normal, z spacing = the mean step).

use std::path::Path;

use super::file::FileHeader;
use crate::error::{Error, Result};
use crate::formats::geometry::LpsGeometry;

/// Relative tolerance on slice steps (DS strings carry ~6 significant
/// digits; real series are uniform to well under 1 %).
const STEP_TOLERANCE: f64 = 0.01;
/// Most sideways drift of the slice positions, per unit along the normal,
/// before the series is called tilted (about 0.06 degrees).
const TILT_TOLERANCE: f64 = 1e-3;

/// One slice: a frame of a file.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Slice {
    /// Index into the series' headers.
    pub file: usize,
    /// Frame within that file.
    pub frame: usize,
}

/// A series laid out as a volume.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Plan {
    /// Slices in volume order (z ascending along the normal).
    pub slices: Vec<Slice>,
    /// Geometry in LPS.
    pub geometry: LpsGeometry,
    /// One `(slope, intercept)` for the whole series, or `None` when the
    /// slices disagree (then values are rescaled per slice into float32).
    pub rescale: Option<(f64, f64)>,
}

fn cross(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ]
}

fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

/// Names a slice for messages (`file` or `file (frame k)`).
fn name(h: &[FileHeader], s: Slice) -> String {
    let p = h[s.file].path.display();
    if h[s.file].positions.len() > 1 {
        format!("{p} (frame {})", s.frame + 1)
    } else {
        p.to_string()
    }
}

/// Checks that every file has the first file's size, pixel format and
/// orientation (a series that mixes them is refused, naming the odd file).
fn check_uniform(headers: &[FileHeader]) -> Result<()> {
    let first = &headers[0];
    for h in &headers[1..] {
        let fmt = |h: &FileHeader| {
            format!(
                "{}x{} pixels, {}-bit {}",
                h.cols,
                h.rows,
                h.bits_allocated,
                if h.signed { "signed" } else { "unsigned" }
            )
        };
        if (h.rows, h.cols, h.bits_allocated, h.signed)
            != (first.rows, first.cols, first.bits_allocated, first.signed)
        {
            return Err(Error::format(
                &h.path,
                format!(
                    "{} in a series of {} (first file {}): mixed image sizes or types in series {}",
                    fmt(h),
                    fmt(first),
                    first.path.display(),
                    first.series_uid
                ),
            ));
        }
        let same_orientation = match (h.orientation, first.orientation) {
            (Some(a), Some(b)) => a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-4),
            (a, b) => a.is_none() && b.is_none(),
        };
        if !same_orientation {
            return Err(Error::format(
                &h.path,
                format!(
                    "orientation {:?} differs from {:?} of {} in series {}",
                    h.orientation,
                    first.orientation,
                    first.path.display(),
                    first.series_uid
                ),
            ));
        }
    }
    Ok(())
}

/// Lays out the headers of one series (at least one file) as a volume.
/// `label` names the series in messages about the series as a whole.
///
/// # Errors
/// Mixed sizes or orientations, slices without positions, duplicate
/// positions, gaps, non-uniform steps and gantry tilt, each naming files.
pub(crate) fn plan(headers: &[FileHeader], label: &Path) -> Result<Plan> {
    let first = headers
        .first()
        .ok_or_else(|| Error::format(label, "no DICOM image files"))?;
    check_uniform(headers)?;
    let o = first.orientation.unwrap_or([1.0, 0.0, 0.0, 0.0, 1.0, 0.0]);
    let row = [o[0], o[1], o[2]];
    let col = [o[3], o[4], o[5]];
    let normal = cross(row, col);
    let ps = first.pixel_spacing.unwrap_or([1.0, 1.0]);
    let mut slices: Vec<(Slice, Option<[f64; 3]>)> = headers
        .iter()
        .enumerate()
        .flat_map(|(file, h)| {
            h.positions
                .iter()
                .enumerate()
                .map(move |(frame, &p)| (Slice { file, frame }, p))
        })
        .collect();
    let (origin, step) = if slices.len() == 1 {
        // One slice: ITK (GDCM) takes SpacingBetweenSlices, else 1.
        (
            slices[0].1.unwrap_or([0.0; 3]),
            first.spacing_between.unwrap_or(1.0),
        )
    } else {
        if first.orientation.is_none() {
            return Err(Error::format(
                &first.path,
                "no ImageOrientationPatient: the slices of the series cannot be ordered",
            ));
        }
        let mut placed = Vec::with_capacity(slices.len());
        for &(s, p) in &slices {
            let p = p.ok_or_else(|| {
                Error::format(
                    &headers[s.file].path,
                    "no ImagePositionPatient: the slice cannot be placed in its series",
                )
            })?;
            placed.push((s, p, dot(p, normal)));
        }
        placed.sort_by(|a, b| a.2.total_cmp(&b.2));
        let step = check_steps(headers, &placed)?;
        slices = placed.iter().map(|&(s, p, _)| (s, Some(p))).collect();
        (placed[0].1, step)
    };
    let rescales: Vec<(f64, f64)> = headers.iter().flat_map(|h| h.rescale.clone()).collect();
    let rescale = rescales
        .iter()
        .all(|r| *r == rescales[0])
        .then_some(rescales[0]);
    Ok(Plan {
        slices: slices.into_iter().map(|(s, _)| s).collect(),
        geometry: LpsGeometry {
            axes: vec![
                row.iter().map(|v| v * ps[1]).collect(),
                col.iter().map(|v| v * ps[0]).collect(),
                normal.iter().map(|v| v * step).collect(),
            ],
            spacing: vec![ps[1], ps[0], step],
            origin: origin.to_vec(),
        },
        rescale,
    })
}

/// Checks sorted slices for duplicates, gaps, uneven steps and tilt; returns
/// the mean step.
fn check_steps(h: &[FileHeader], placed: &[(Slice, [f64; 3], f64)]) -> Result<f64> {
    let n = placed.len();
    let steps: Vec<f64> = placed.windows(2).map(|w| w[1].2 - w[0].2).collect();
    let span = placed[n - 1].2 - placed[0].2;
    let smallest = steps.iter().copied().fold(f64::INFINITY, f64::min);
    // Duplicates: two slices at the same place along the normal.
    let dup_tol = 1e-4 * (1.0 + span.abs() / n as f64);
    if let Some(i) = steps.iter().position(|&d| d.abs() <= dup_tol) {
        return Err(Error::format(
            &h[placed[i + 1].0.file].path,
            format!(
                "duplicate slice: at the same position ({:.4} mm along the normal) as {}",
                placed[i].2,
                name(h, placed[i].0)
            ),
        ));
    }
    for (i, &d) in steps.iter().enumerate() {
        if (d - smallest).abs() > STEP_TOLERANCE * smallest {
            let (a, b) = (placed[i].0, placed[i + 1].0);
            let missing = (d / smallest).round() - 1.0;
            let what = if missing >= 1.0 {
                format!("gap: about {missing} missing slice(s)")
            } else {
                "non-uniform slice spacing".to_string()
            };
            return Err(Error::format(
                &h[b.file].path,
                format!(
                    "{what} between {} and {}: step {d:.4} mm where the smallest is {smallest:.4} mm",
                    name(h, a),
                    name(h, b)
                ),
            ));
        }
    }
    // Gantry tilt: the positions run off the slice normal.
    let (p0, p1) = (placed[0].1, placed[n - 1].1);
    let v = [p1[0] - p0[0], p1[1] - p0[1], p1[2] - p0[2]];
    let sideways = (dot(v, v) - span * span).max(0.0).sqrt();
    if sideways > TILT_TOLERANCE * span.abs() {
        let degrees = sideways.atan2(span.abs()).to_degrees();
        return Err(Error::Unsupported {
            path: h[placed[n - 1].0.file].path.clone(),
            what: format!(
                "gantry tilt: the slice positions from {} to {} run {degrees:.2} degrees off the \
                 slice normal (sheared volume; resample it first)",
                name(h, placed[0].0),
                name(h, placed[n - 1].0)
            ),
        });
    }
    Ok(span / (n - 1) as f64)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn slice(name: &str, z: f64) -> FileHeader {
        let mut h = crate::formats::dicom::file::tests_header();
        h.path = PathBuf::from(name);
        h.positions = vec![Some([10.0, 20.0, z])];
        h
    }

    #[test]
    fn slices_sort_along_the_normal_with_the_mean_step() {
        let h = vec![slice("c", 5.0), slice("a", 0.0), slice("b", 2.5)];
        let p = plan(&h, Path::new("s")).unwrap();
        let order: Vec<usize> = p.slices.iter().map(|s| s.file).collect();
        assert_eq!(order, [1, 2, 0]);
        assert_eq!(p.geometry.origin, [10.0, 20.0, 0.0]);
        assert_eq!(p.geometry.spacing, [0.25, 0.5, 2.5]);
        assert_eq!(p.geometry.axes[2], [0.0, 0.0, 2.5]);
        assert_eq!(p.rescale, Some((1.0, -1024.0)));
    }

    #[test]
    fn gaps_duplicates_tilt_and_mixed_sizes_name_the_files() {
        let gap = vec![slice("a", 0.0), slice("b", 1.0), slice("d", 3.0)];
        let e = plan(&gap, Path::new("s")).unwrap_err().to_string();
        assert!(e.contains("gap") && e.contains("b and d"), "{e}");
        let dup = vec![slice("a", 0.0), slice("b", 0.0)];
        let e = plan(&dup, Path::new("s")).unwrap_err().to_string();
        assert!(e.contains("duplicate"), "{e}");
        let mut t = vec![slice("a", 0.0), slice("b", 1.0)];
        t[1].positions[0] = Some([10.0, 20.5, 1.0]);
        let e = plan(&t, Path::new("s")).unwrap_err().to_string();
        assert!(e.contains("gantry tilt") && e.contains("a to b"), "{e}");
        let mut m = vec![slice("a", 0.0), slice("b", 1.0)];
        m[1].rows = 8;
        let e = plan(&m, Path::new("s")).unwrap_err().to_string();
        assert!(e.starts_with("b:") && e.contains("mixed"), "{e}");
    }

    #[test]
    fn one_slice_takes_spacing_between_slices_else_one() {
        let mut h = vec![slice("a", 7.0)];
        assert_eq!(plan(&h, Path::new("s")).unwrap().geometry.spacing[2], 1.0);
        h[0].spacing_between = Some(5.0);
        assert_eq!(plan(&h, Path::new("s")).unwrap().geometry.spacing[2], 5.0);
    }

    #[test]
    fn slices_that_disagree_on_rescale_give_no_single_scaling() {
        let mut h = vec![slice("a", 0.0), slice("b", 1.0)];
        h[1].rescale = vec![(2.0, 0.0)];
        assert_eq!(plan(&h, Path::new("s")).unwrap().rescale, None);
    }
}
