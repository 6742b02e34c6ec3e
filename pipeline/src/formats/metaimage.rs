//! MetaImage (`.mha`, `.mhd`): a `Key = Value` text header, written for dino3d
//! from the MetaIO format description.
//!
//! The voxels follow the header (`ElementDataFile = LOCAL`) or live in one or
//! more files named by `ElementDataFile` (a name, `LIST` followed by names,
//! or a `%d` pattern with min, max and step), raw or zlib-compressed
//! (`CompressedData = True`). Geometry follows ITK: `TransformMatrix` lists
//! each axis's direction in turn (column by column), `Offset` is the origin,
//! all in LPS.

use std::path::{Path, PathBuf};

use super::Encoding;
use super::geometry::LpsGeometry;
use super::raw::{DataSpec, Layout, Skip};
use super::text::{self, HeaderText};
use crate::error::{Error, Result};
use crate::nifti::dtype::DType;

/// The header's fields, in file order.
pub(crate) type Fields = Vec<(String, String)>;

/// Reads the header text of a MetaImage file.
///
/// # Errors
/// I/O failures and a header with no `ElementDataFile`.
pub(crate) fn read_text(path: &Path) -> Result<(Fields, HeaderText)> {
    let mut list = false;
    let text = text::read_lines(path, |line| {
        if list {
            return true;
        }
        match split(line) {
            Some((k, v)) if k.eq_ignore_ascii_case("ElementDataFile") => {
                // `LIST` names follow the key, one per line, to the end.
                list = first_word(v).eq_ignore_ascii_case("LIST");
                list
            }
            _ => true,
        }
    })?;
    let mut fields = Fields::new();
    let mut names = Vec::new();
    let mut in_list = false;
    for line in &text.lines {
        if in_list {
            if !line.trim().is_empty() {
                names.push(line.trim().to_string());
            }
        } else if let Some((k, v)) = split(line) {
            in_list = k.eq_ignore_ascii_case("ElementDataFile")
                && first_word(v).eq_ignore_ascii_case("LIST");
            fields.push((k.to_string(), v.to_string()));
        } else if !line.trim().is_empty() {
            return Err(Error::format(
                path,
                format!("not a MetaImage header line: {:?}", clip(line)),
            ));
        }
    }
    if !fields
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("ElementDataFile"))
    {
        return Err(Error::format(
            path,
            "not a MetaImage header: no ElementDataFile",
        ));
    }
    for name in names {
        fields.push(("ElementDataFile.LIST".to_string(), name));
    }
    Ok((fields, text))
}

/// `Key = Value` of a header line.
fn split(line: &str) -> Option<(&str, &str)> {
    let (k, v) = line.split_once('=')?;
    let k = k.trim();
    (!k.is_empty() && !k.contains(char::is_whitespace)).then_some((k, v.trim()))
}

fn first_word(v: &str) -> &str {
    v.split_whitespace().next().unwrap_or("")
}

fn clip(line: &str) -> String {
    line.chars().take(60).collect()
}

/// The layout a MetaImage header describes.
///
/// # Errors
/// Missing or malformed required fields, and content dino3d does not read
/// (ASCII data, non-image objects, unknown element types).
pub(crate) fn layout(path: &Path, fields: &Fields, header_end: u64) -> Result<Layout> {
    let get = |key: &str| {
        fields
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
    };
    let any = |keys: &[&str]| keys.iter().find_map(|k| get(k));
    let bad = |what: String| Error::format(path, what);
    let unsupported = |what: String| Error::Unsupported {
        path: path.to_path_buf(),
        what,
    };
    let flag =
        |keys: &[&str]| any(keys).is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1");
    if let Some(t) = get("ObjectType")
        && !t.eq_ignore_ascii_case("Image")
    {
        return Err(unsupported(format!("MetaImage ObjectType {t}, not Image")));
    }
    if get("BinaryData").is_some_and(|v| v.eq_ignore_ascii_case("false")) {
        return Err(unsupported(
            "ASCII MetaImage data (BinaryData = False)".into(),
        ));
    }
    let ndims: usize = get("NDims")
        .and_then(|v| v.parse().ok())
        .filter(|n| (1..=16).contains(n))
        .ok_or_else(|| bad(format!("NDims missing or bad: {:?}", get("NDims"))))?;
    let list = |keys: &[&str], n: usize| -> Result<Option<Vec<f64>>> {
        match any(keys) {
            None => Ok(None),
            Some(v) => match text::numbers::<f64>(v) {
                Some(x) if x.len() >= n => Ok(Some(x[..n].to_vec())),
                _ => Err(bad(format!("{} = {v:?}: expected {n} numbers", keys[0]))),
            },
        }
    };
    let dims: Vec<u64> = get("DimSize")
        .and_then(text::numbers::<u64>)
        .filter(|d| d.len() >= ndims)
        .map(|d| d[..ndims].to_vec())
        .ok_or_else(|| {
            bad(format!(
                "DimSize missing or not {ndims} sizes: {:?}",
                get("DimSize")
            ))
        })?;
    let etype = get("ElementType").ok_or_else(|| bad("no ElementType".into()))?;
    let dtype = element_type(etype).ok_or_else(|| {
        unsupported(format!(
            "ElementType {etype} (only MET_ scalar types are read)"
        ))
    })?;
    let channels: u64 = match get("ElementNumberOfChannels") {
        None => 1,
        Some(v) => v
            .parse()
            .ok()
            .filter(|&c| c >= 1)
            .ok_or_else(|| bad(format!("ElementNumberOfChannels = {v:?}")))?,
    };
    let spacing = list(&["ElementSpacing", "ElementSize"], ndims)?.unwrap_or(vec![1.0; ndims]);
    let origin = list(&["Offset", "Position", "Origin"], ndims)?.unwrap_or(vec![0.0; ndims]);
    let matrix = list(
        &["TransformMatrix", "Rotation", "Orientation"],
        ndims * ndims,
    )?;
    // Column i of ITK's direction is the i-th run of NDims numbers.
    let axes = (0..ndims)
        .map(|i| {
            (0..ndims)
                .map(|r| {
                    let d = matrix
                        .as_ref()
                        .map_or(if r == i { 1.0 } else { 0.0 }, |m| m[i * ndims + r]);
                    d * spacing[i]
                })
                .collect()
        })
        .collect();
    let big_endian = flag(&["BinaryDataByteOrderMSB", "ElementByteOrderMSB"]);
    let encoding = if flag(&["CompressedData"]) {
        Encoding::Zlib
    } else {
        Encoding::Raw
    };
    let header_size: i64 = match get("HeaderSize") {
        None => 0,
        Some(v) => v
            .parse()
            .ok()
            .filter(|&h| h >= -1)
            .ok_or_else(|| bad(format!("HeaderSize = {v:?}")))?,
    };
    let edf = get("ElementDataFile").unwrap_or_default();
    let local = edf.eq_ignore_ascii_case("LOCAL");
    let files = if local {
        vec![path.to_path_buf()]
    } else {
        data_files(path, edf, fields).map_err(bad)?
    };
    let skip = if header_size == -1 {
        Skip::FromEnd
    } else {
        Skip::Bytes(0)
    };
    let start = if local {
        header_end
    } else {
        header_size.max(0) as u64
    };
    let (dims, component_axis) = if channels > 1 {
        // Components are interleaved: the fastest axis.
        (std::iter::once(channels).chain(dims).collect(), Some(0))
    } else {
        (dims, None)
    };
    Ok(Layout {
        dtype,
        big_endian,
        dims,
        component_axis,
        geometry: LpsGeometry {
            axes,
            spacing: spacing.iter().map(|s| s.abs()).collect(),
            origin,
        },
        data: DataSpec {
            files,
            attached: local,
            start,
            line_skip: 0,
            skip,
            encoding,
        },
    })
}

/// The data files an `ElementDataFile` value names, beside the header.
fn data_files(header: &Path, value: &str, fields: &Fields) -> Result<Vec<PathBuf>, String> {
    let dir = header.parent().unwrap_or(Path::new(""));
    let words: Vec<&str> = value.split_whitespace().collect();
    let names: Vec<String> = if words
        .first()
        .is_some_and(|w| w.eq_ignore_ascii_case("LIST"))
    {
        fields
            .iter()
            .filter(|(k, _)| k == "ElementDataFile.LIST")
            .map(|(_, v)| v.clone())
            .collect()
    } else if value.contains('%') && words.len() >= 4 {
        let nums: Option<Vec<i64>> = words[1..4].iter().map(|w| w.parse().ok()).collect();
        let [min, max, step] = nums.as_deref().unwrap_or_default() else {
            return Err(format!("ElementDataFile = {value:?}: pattern min max step"));
        };
        text::expand_pattern(words[0], *min, *max, *step)
            .ok_or_else(|| format!("ElementDataFile = {value:?}: bad pattern"))?
    } else {
        vec![value.to_string()]
    };
    if names.is_empty() || names.iter().any(|n| n.is_empty()) {
        return Err(format!("ElementDataFile = {value:?} names no file"));
    }
    Ok(names.iter().map(|n| dir.join(n)).collect())
}

/// The voxel type of a MetaIO `ElementType` (MET_LONG is 32-bit in MetaIO).
fn element_type(t: &str) -> Option<DType> {
    Some(match t.to_ascii_uppercase().as_str() {
        "MET_UCHAR" => DType::U8,
        "MET_CHAR" => DType::I8,
        "MET_USHORT" => DType::U16,
        "MET_SHORT" => DType::I16,
        "MET_UINT" | "MET_ULONG" => DType::U32,
        "MET_INT" | "MET_LONG" => DType::I32,
        "MET_ULONG_LONG" => DType::U64,
        "MET_LONG_LONG" => DType::I64,
        "MET_FLOAT" => DType::F32,
        "MET_DOUBLE" => DType::F64,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(text: &str) -> Fields {
        text.lines()
            .filter_map(split)
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn transform_matrix_lists_directions_column_by_column() {
        let f = fields(
            "NDims = 2\nDimSize = 4 5\nElementType = MET_SHORT\nElementSpacing = 2 3\n\
             TransformMatrix = 0 1 -1 0\nOffset = 7 8\nElementDataFile = a.raw",
        );
        let l = layout(Path::new("/d/a.mhd"), &f, 0).unwrap();
        assert_eq!(l.geometry.axes, vec![vec![0.0, 2.0], vec![-3.0, 0.0]]);
        assert_eq!(l.geometry.origin, vec![7.0, 8.0]);
        assert_eq!(l.data.files, vec![PathBuf::from("/d/a.raw")]);
        assert_eq!(l.dtype, DType::I16);
    }

    #[test]
    fn channels_are_the_fastest_axis_and_bad_fields_are_named() {
        let f = fields(
            "NDims = 3\nDimSize = 2 3 4\nElementType = MET_FLOAT\n\
             ElementNumberOfChannels = 3\nElementDataFile = LOCAL",
        );
        let l = layout(Path::new("a.mha"), &f, 99).unwrap();
        assert_eq!(
            (l.dims.clone(), l.component_axis),
            (vec![3, 2, 3, 4], Some(0))
        );
        assert_eq!((l.data.attached, l.data.start), (true, 99));
        let f =
            fields("NDims = 3\nDimSize = 2 3\nElementType = MET_FLOAT\nElementDataFile = LOCAL");
        let e = layout(Path::new("a.mha"), &f, 0).unwrap_err().to_string();
        assert!(e.contains("a.mha") && e.contains("DimSize"), "{e}");
        let f = fields(
            "NDims = 2\nDimSize = 2 3\nElementType = MET_UCHAR_ARRAY\nElementDataFile = LOCAL",
        );
        let e = layout(Path::new("a.mha"), &f, 0).unwrap_err().to_string();
        assert!(
            e.contains("unsupported") && e.contains("MET_UCHAR_ARRAY"),
            "{e}"
        );
    }
}
