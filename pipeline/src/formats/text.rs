//! Reading the text headers of MetaImage and NRRD: lines from the start of a
//! file until the format says the header is over, within a size cap (a
//! binary file named `.mha` must not be read whole as a "header").

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use crate::error::{Error, Result};

/// Largest header read (real ones are well under 4 KiB; NRRD/MetaImage
/// `LIST`s of slice files can be long).
pub(crate) const MAX_HEADER: u64 = 4 << 20;

/// What a header's lines and the file around them are.
#[derive(Debug)]
pub(crate) struct HeaderText {
    /// The header lines, without line endings.
    pub lines: Vec<String>,
    /// Byte offset just after the last header line (where attached data
    /// starts).
    pub end: u64,
    /// Size of the file.
    pub file_len: u64,
    /// Modification time of the file.
    pub modified: Option<std::time::SystemTime>,
}

/// Reads lines while `more(line)` is true (the line that ends the header is
/// kept), or to the end of the file.
///
/// # Errors
/// I/O failures, and a header longer than [`MAX_HEADER`].
pub(crate) fn read_lines(path: &Path, mut more: impl FnMut(&str) -> bool) -> Result<HeaderText> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let meta = file.metadata().map_err(|e| Error::io(path, e))?;
    let mut r = BufReader::new(file.take(MAX_HEADER));
    let mut lines = Vec::new();
    let mut end = 0u64;
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = r
            .read_until(b'\n', &mut buf)
            .map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        if buf.last() != Some(&b'\n') && end + n as u64 >= MAX_HEADER {
            return Err(Error::format(
                path,
                format!("no end of header within the first {MAX_HEADER} bytes"),
            ));
        }
        end += n as u64;
        let line = String::from_utf8_lossy(&buf);
        let line = line.trim_end_matches(['\n', '\r']).to_string();
        let go_on = more(&line);
        lines.push(line);
        if !go_on {
            break;
        }
    }
    Ok(HeaderText {
        lines,
        end,
        file_len: meta.len(),
        modified: meta.modified().ok(),
    })
}

/// Whitespace-separated numbers of a header value.
pub(crate) fn numbers<T: std::str::FromStr>(value: &str) -> Option<Vec<T>> {
    value.split_whitespace().map(|t| t.parse().ok()).collect()
}

/// Expands a printf-style `%d` pattern (`slice%03d.raw`) for `min..=max` by
/// `step` (both MetaImage and NRRD name slice files this way).
pub(crate) fn expand_pattern(pattern: &str, min: i64, max: i64, step: i64) -> Option<Vec<String>> {
    let pct = pattern.find('%')?;
    let rest = &pattern[pct + 1..];
    let d = rest.find('d')?;
    let spec = &rest[..d];
    if !spec.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let zero = spec.starts_with('0');
    let width: usize = if spec.is_empty() {
        0
    } else {
        spec.parse().ok()?
    };
    let (head, tail) = (&pattern[..pct], &rest[d + 1..]);
    // At most a million files, and no arithmetic that can overflow.
    let count = max.checked_sub(min)?.checked_div(step)?;
    if !(0..1_000_000).contains(&count) || width > 64 {
        return None;
    }
    let out = (0..=count)
        .map(|n| {
            let i = min + n * step;
            let num = if zero {
                format!("{i:0width$}")
            } else {
                format!("{i:width$}")
            };
            format!("{head}{num}{tail}")
        })
        .collect();
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_expand_like_printf() {
        assert_eq!(
            expand_pattern("s%03d.raw", 1, 3, 1).unwrap(),
            ["s001.raw", "s002.raw", "s003.raw"]
        );
        assert_eq!(expand_pattern("a%d", 4, 0, -2).unwrap(), ["a4", "a2", "a0"]);
        assert_eq!(expand_pattern("none", 1, 2, 1), None);
        assert_eq!(expand_pattern("a%d", 1, 2, 0), None);
        assert_eq!(expand_pattern("a%d", i64::MIN, i64::MAX, 1), None);
        assert_eq!(expand_pattern("a%d", 1, 2, -1), None);
    }

    #[test]
    fn a_header_without_an_end_is_refused_past_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("big.mha");
        std::fs::write(&p, vec![b'x'; MAX_HEADER as usize + 10]).unwrap();
        let err = read_lines(&p, |_| true).unwrap_err().to_string();
        assert!(
            err.contains("big.mha") && err.contains("no end of header"),
            "{err}"
        );
    }
}
