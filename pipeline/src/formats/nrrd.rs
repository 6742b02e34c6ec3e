//! NRRD (`.nrrd`, `.nhdr`), written for dino3d from the teem NRRD format
//! specification (NRRD0001 to NRRD0005).
//!
//! The header is `field: value` lines after the `NRRD000N` magic, ending at a
//! blank line (attached data follows) or at the end of a detached `.nhdr`,
//! whose `data file` names one file, a `LIST` of them, or a `%d` pattern.
//! Encodings raw and gzip are read; others are refused by name. Axes whose
//! `kinds` are not domain kinds (vector, RGB-color, list, ...) hold a voxel's
//! components, as in ITK. Geometry: `space directions` (spacing = their
//! norms) and `space origin`, converted to LPS from the header's `space`.

use std::path::{Path, PathBuf};

use super::Encoding;
use super::geometry::{LpsGeometry, norm};
use super::raw::{DataSpec, Layout, Skip};
use super::text::{self, HeaderText};
use crate::error::{Error, Result};
use crate::nifti::dtype::DType;

/// The header's fields, in file order (`data file` list names under
/// `data file.LIST`).
pub(crate) type Fields = Vec<(String, String)>;

/// Whether `bytes` start with the NRRD magic.
pub(crate) fn is_nrrd(bytes: &[u8]) -> bool {
    bytes.starts_with(b"NRRD000")
}

/// Reads the header text of a NRRD file.
///
/// # Errors
/// I/O failures and a missing magic line.
pub(crate) fn read_text(path: &Path) -> Result<(Fields, HeaderText)> {
    let mut first = true;
    let mut list = false;
    let text = text::read_lines(path, |line| {
        if std::mem::take(&mut first) {
            return is_nrrd(line.as_bytes());
        }
        if list {
            return true;
        }
        if line.trim().is_empty() {
            return false;
        }
        if let Some((k, v)) = line.split_once(':')
            && is_data_file_key(k)
        {
            list = v.trim_start_matches('=').split_whitespace().next() == Some("LIST");
        }
        true
    })?;
    if !text.lines.first().is_some_and(|l| is_nrrd(l.as_bytes())) {
        return Err(Error::format(path, "not a NRRD file: no NRRD000N magic"));
    }
    let mut fields = Fields::new();
    let mut in_list = false;
    for line in &text.lines[1..] {
        if in_list {
            if !line.trim().is_empty() {
                fields.push(("data file.LIST".into(), line.trim().into()));
            }
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        // `key:=value` pairs are free-form metadata, kept for `inspect`.
        if let Some((k, v)) = line.split_once(":=") {
            fields.push((format!("{k}:="), v.to_string()));
            continue;
        }
        let Some((k, v)) = line.split_once(':') else {
            return Err(Error::format(
                path,
                format!(
                    "not a NRRD field line: {:?}",
                    line.chars().take(60).collect::<String>()
                ),
            ));
        };
        let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_string());
        in_list = is_data_file_key(&k) && v.split_whitespace().next() == Some("LIST");
        fields.push((k, v));
    }
    Ok((fields, text))
}

fn is_data_file_key(k: &str) -> bool {
    let k = k.trim().to_ascii_lowercase();
    k == "data file" || k == "datafile"
}

/// The layout a NRRD header describes.
///
/// # Errors
/// Missing or malformed required fields, and content dino3d does not read
/// (encodings other than raw and gzip, block types, several component axes).
pub(crate) fn layout(path: &Path, fields: &Fields, header_end: u64) -> Result<Layout> {
    let get = |key: &str| {
        fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    };
    let bad = |what: String| Error::format(path, what);
    let unsupported = |what: String| Error::Unsupported {
        path: path.to_path_buf(),
        what,
    };
    let dim: usize = get("dimension")
        .and_then(|v| v.parse().ok())
        .filter(|n| (1..=16).contains(n))
        .ok_or_else(|| bad(format!("dimension missing or bad: {:?}", get("dimension"))))?;
    let per_axis = |key: &str| -> Option<Vec<&str>> {
        get(key).map(|v| v.split_whitespace().collect::<Vec<_>>())
    };
    let dims: Vec<u64> = get("sizes")
        .and_then(text::numbers::<u64>)
        .filter(|d| d.len() == dim)
        .ok_or_else(|| {
            bad(format!(
                "sizes missing or not {dim} sizes: {:?}",
                get("sizes")
            ))
        })?;
    let tname = get("type").ok_or_else(|| bad("no type field".into()))?;
    let dtype = nrrd_type(tname).ok_or_else(|| unsupported(format!("NRRD type {tname:?}")))?;
    let enc = get("encoding").ok_or_else(|| bad("no encoding field".into()))?;
    let encoding = match enc.to_ascii_lowercase().as_str() {
        "raw" => Encoding::Raw,
        "gzip" | "gz" => Encoding::Gzip,
        other => {
            return Err(unsupported(format!(
                "NRRD encoding {other:?} (raw and gzip are read)"
            )));
        }
    };
    let big_endian = match get("endian") {
        Some("big") => true,
        Some("little") => false,
        None if dtype.size() == 1 => false,
        other => return Err(bad(format!("endian missing or bad: {other:?}"))),
    };
    // Axes whose kind is not a domain kind hold a voxel's components.
    let range: Vec<usize> = per_axis("kinds")
        .unwrap_or_default()
        .iter()
        .enumerate()
        .filter(|(_, k)| !is_domain_kind(k))
        .map(|(i, _)| i)
        .collect();
    if range.len() > 1 {
        return Err(unsupported(format!(
            "{} non-spatial axes (kinds {:?}): one channel axis at most",
            range.len(),
            get("kinds").unwrap_or_default()
        )));
    }
    let component_axis = range.first().copied();
    let spatial: Vec<usize> = (0..dim).filter(|&i| Some(i) != component_axis).collect();
    let geometry = geometry(
        get("space"),
        get("space directions"),
        get("space origin"),
        get("spacings"),
        &spatial,
        dim,
    )
    .map_err(bad)?;
    let int = |key: &str| -> Result<i64> {
        get(key).map_or(Ok(0), |v| {
            v.parse()
                .ok()
                .filter(|&n: &i64| n >= -1)
                .ok_or_else(|| bad(format!("{key}: {v:?}")))
        })
    };
    let byte_skip = int("byte skip")?;
    let line_skip = int("line skip")?.max(0) as u64;
    let data_file = get("data file").or(get("datafile"));
    let attached = data_file.is_none();
    let files = match data_file {
        None => vec![path.to_path_buf()],
        Some(v) => data_files(path, v, fields).map_err(bad)?,
    };
    Ok(Layout {
        dtype,
        big_endian,
        dims,
        component_axis,
        geometry,
        data: DataSpec {
            files,
            attached,
            start: if attached { header_end } else { 0 },
            line_skip,
            skip: if byte_skip == -1 {
                Skip::FromEnd
            } else {
                Skip::Bytes(byte_skip as u64)
            },
            encoding,
        },
    })
}

/// NRRD's domain kinds (and no kind at all), as teem counts them.
fn is_domain_kind(k: &str) -> bool {
    matches!(k, "domain" | "space" | "time" | "???" | "none" | "unknown")
}

/// Spatial geometry in LPS from the header's space fields (or `spacings`).
fn geometry(
    space: Option<&str>,
    directions: Option<&str>,
    origin: Option<&str>,
    spacings: Option<&str>,
    spatial: &[usize],
    dim: usize,
) -> Result<LpsGeometry, String> {
    // Components to negate to reach LPS.
    let flip: &[usize] = match space.map(str::to_ascii_lowercase).as_deref() {
        Some("right-anterior-superior" | "ras" | "right-anterior-superior-time" | "rast") => {
            &[0, 1]
        }
        Some("left-anterior-superior" | "las" | "left-anterior-superior-time" | "last") => &[1],
        _ => &[],
    };
    let to_lps = |mut v: Vec<f64>| {
        for &i in flip {
            if let Some(x) = v.get_mut(i) {
                *x = -*x;
            }
        }
        v
    };
    let mut axes = Vec::new();
    let mut spacing = Vec::new();
    if let Some(d) = directions {
        let vecs = vectors(d).ok_or_else(|| format!("space directions: {d:?}"))?;
        if vecs.len() != dim {
            return Err(format!(
                "space directions: {} vectors for {dim} axes",
                vecs.len()
            ));
        }
        for (n, &a) in spatial.iter().enumerate() {
            match &vecs[a] {
                Some(v) => {
                    spacing.push(norm(v));
                    axes.push(to_lps(v.clone()));
                }
                // A 4th (time) axis may have no direction; the first three must.
                None if n >= 3 => {}
                None => return Err(format!("space directions: spatial axis {a} is none")),
            }
        }
    } else {
        let s: Vec<f64> = spacings
            .map(|v| {
                v.split_whitespace()
                    .map(|t| t.parse().unwrap_or(f64::NAN))
                    .collect()
            })
            .unwrap_or_default();
        for (n, &a) in spatial.iter().enumerate() {
            let sp = s.get(a).copied().filter(|x| x.is_finite()).unwrap_or(1.0);
            let mut v = vec![0.0; spatial.len()];
            v[n] = sp;
            spacing.push(sp.abs());
            axes.push(v);
        }
    }
    let origin = match origin {
        Some(o) => match vectors(o).as_deref() {
            Some([Some(v)]) => to_lps(v.clone()),
            _ => return Err(format!("space origin: {o:?}")),
        },
        None => vec![0.0; axes.first().map_or(0, Vec::len)],
    };
    Ok(LpsGeometry {
        axes,
        spacing,
        origin,
    })
}

/// `(a,b,c) none (d,e,f)` as vectors (None for `none`).
fn vectors(s: &str) -> Option<Vec<Option<Vec<f64>>>> {
    let mut out = Vec::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix("none") {
            out.push(None);
            rest = r.trim_start();
        } else if rest.starts_with('(') {
            let close = rest.find(')')?;
            let inner = &rest[1..close];
            let v: Option<Vec<f64>> = inner.split(',').map(|t| t.trim().parse().ok()).collect();
            out.push(Some(v?));
            rest = rest[close + 1..].trim_start();
        } else {
            return None;
        }
    }
    Some(out)
}

/// The data files a `data file` value names, beside the header.
fn data_files(header: &Path, value: &str, fields: &Fields) -> Result<Vec<PathBuf>, String> {
    let dir = header.parent().unwrap_or(Path::new(""));
    let words: Vec<&str> = value.split_whitespace().collect();
    let names: Vec<String> = if words.first() == Some(&"LIST") {
        fields
            .iter()
            .filter(|(k, _)| k == "data file.LIST")
            .map(|(_, v)| v.clone())
            .collect()
    } else if value.contains('%') && words.len() >= 4 {
        let nums: Option<Vec<i64>> = words[1..4].iter().map(|w| w.parse().ok()).collect();
        let [min, max, step] = nums.as_deref().unwrap_or_default() else {
            return Err(format!("data file: {value:?}: pattern min max step"));
        };
        text::expand_pattern(words[0], *min, *max, *step)
            .ok_or_else(|| format!("data file: {value:?}: bad pattern"))?
    } else {
        vec![value.to_string()]
    };
    if names.is_empty() {
        return Err(format!("data file: {value:?} names no file"));
    }
    Ok(names.iter().map(|n| dir.join(n)).collect())
}

/// The voxel type of a NRRD `type` name.
fn nrrd_type(t: &str) -> Option<DType> {
    Some(match t {
        "signed char" | "int8" | "int8_t" => DType::I8,
        "uchar" | "unsigned char" | "uint8" | "uint8_t" => DType::U8,
        "short" | "short int" | "signed short" | "signed short int" | "int16" | "int16_t" => {
            DType::I16
        }
        "ushort" | "unsigned short" | "unsigned short int" | "uint16" | "uint16_t" => DType::U16,
        "int" | "signed int" | "int32" | "int32_t" => DType::I32,
        "uint" | "unsigned int" | "uint32" | "uint32_t" => DType::U32,
        "longlong"
        | "long long"
        | "long long int"
        | "signed long long"
        | "signed long long int"
        | "int64"
        | "int64_t" => DType::I64,
        "ulonglong" | "unsigned long long" | "unsigned long long int" | "uint64" | "uint64_t" => {
            DType::U64
        }
        "float" => DType::F32,
        "double" => DType::F64,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(text: &str) -> Fields {
        text.lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect()
    }

    #[test]
    fn vectors_parse_with_none() {
        let v = vectors("none (1,0,0) (0, 2.5,0)").unwrap();
        assert_eq!(
            v,
            vec![None, Some(vec![1.0, 0.0, 0.0]), Some(vec![0.0, 2.5, 0.0])]
        );
        assert_eq!(vectors("(1,x)"), None);
    }

    #[test]
    fn ras_space_becomes_lps_and_vector_axes_are_components() {
        let f = fields(
            "dimension: 4\ntype: short\nsizes: 3 4 5 6\nendian: little\nencoding: raw\n\
             kinds: vector domain domain domain\nspace: right-anterior-superior\n\
             space directions: none (2,0,0) (0,3,0) (0,0,4)\nspace origin: (1,2,3)\n\
             data file: x.raw",
        );
        let l = layout(Path::new("/d/x.nhdr"), &f, 0).unwrap();
        assert_eq!(l.component_axis, Some(0));
        assert_eq!(l.geometry.axes[0], vec![-2.0, 0.0, 0.0]);
        assert_eq!(l.geometry.spacing, vec![2.0, 3.0, 4.0]);
        assert_eq!(l.geometry.origin, vec![-1.0, -2.0, 3.0]);
        assert_eq!(l.data.files, vec![PathBuf::from("/d/x.raw")]);
    }

    #[test]
    fn other_encodings_are_refused_by_name() {
        let f = fields("dimension: 2\ntype: uchar\nsizes: 3 4\nencoding: bzip2");
        let e = layout(Path::new("a.nrrd"), &f, 0).unwrap_err().to_string();
        assert!(e.contains("a.nrrd") && e.contains("bzip2"), "{e}");
    }
}
