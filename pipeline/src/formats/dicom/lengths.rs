//! A pass over a DICOM file's element headers before dicom-rs reads it.
//! dicom-rs reserves (and fills) each element's declared length up front, so
//! a 40 KB file declaring a 3.4 GB element cost 3.4 GB of memory (found by
//! the fuzzer). Every defined length must fit in the bytes the file has
//! left; only headers are read, values are skipped.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

const UNDEFINED: u32 = 0xFFFF_FFFF;
const PIXEL_DATA: (u16, u16) = (0x7FE0, 0x0010);

/// How the data set after the file meta group is encoded.
#[derive(Clone, Copy)]
struct Encoding {
    explicit: bool,
    big_endian: bool,
}

/// Checks the declared lengths of `path`'s elements, up to its pixel data
/// when `header_only`. Files this pass cannot follow (no `DICM` magic, a
/// deflated data set) are left to dicom-rs.
///
/// # Errors
/// The first element (or item) that declares more bytes than the file has
/// left after it, or an I/O failure.
pub(crate) fn check(path: &Path, header_only: bool) -> Result<(), String> {
    let file = File::open(path).map_err(|e| e.to_string())?;
    let len = file.metadata().map_err(|e| e.to_string())?.len();
    let mut r = Walker {
        r: BufReader::with_capacity(16 << 10, file),
        pos: 0,
        len,
    };
    let mut magic = [0u8; 132];
    if r.read(&mut magic).is_err() || &magic[128..] != b"DICM" {
        return Ok(());
    }
    // The file meta group, explicit VR little endian, as dicom-rs reads it:
    // (0002,0000) first, then elements (of any group) until its group length
    // is used up; the data set's encoding starts after it. Without that
    // element dicom-rs refuses the file before reading further.
    let meta = Encoding {
        explicit: true,
        big_endian: false,
    };
    // dicom-rs checks its tag and length, not its VR.
    let Some(((0x0002, 0x0000), _, 4)) = r.header(meta)? else {
        return Ok(());
    };
    let mut group_length = [0u8; 4];
    r.read(&mut group_length)?;
    let end = r.pos + u64::from(u32::from_le_bytes(group_length));
    let mut syntax = String::new();
    while r.pos < end {
        let Some(((group, element), _, n)) = r.header(meta)? else {
            return Ok(());
        };
        if n == UNDEFINED {
            return Ok(()); // refused by dicom-rs
        }
        r.fits(n, group, element)?;
        if (group, element) == (0x0002, 0x0010) && n <= 64 {
            let mut uid = vec![0u8; n as usize];
            r.read(&mut uid)?;
            syntax = String::from_utf8_lossy(&uid)
                .trim_end_matches(['\0', ' '])
                .to_string();
        } else {
            r.skip(n)?;
        }
    }
    let data = match syntax.as_str() {
        "1.2.840.10008.1.2" => Encoding {
            explicit: false,
            big_endian: false,
        },
        "1.2.840.10008.1.2.2" => Encoding {
            explicit: true,
            big_endian: true,
        },
        "1.2.840.10008.1.2.1.99" => return check_deflated(path, r.pos, header_only),
        // Explicit little endian, and every encapsulated syntax.
        _ => meta,
    };
    walk(&mut r, data, header_only)
}

/// A deflated data set (explicit VR little endian once inflated, from
/// `start`): inflated once to learn its length, then walked as it inflates
/// again, in constant memory. Deflate expands at most ~1032 times, so the
/// work is bounded by the file's size.
fn check_deflated(path: &Path, start: u64, header_only: bool) -> Result<(), String> {
    use std::io::Seek;
    let inflate = || -> std::io::Result<_> {
        let mut file = BufReader::new(File::open(path)?);
        file.seek(std::io::SeekFrom::Start(start))?;
        Ok(flate2::bufread::DeflateDecoder::new(file))
    };
    let len = inflate()
        .and_then(|mut d| std::io::copy(&mut d, &mut std::io::sink()))
        .map_err(|e| format!("inflating the data set: {e}"))?;
    let mut r = Walker {
        r: Forward {
            r: inflate().map_err(|e| e.to_string())?,
            ahead: Vec::new(),
        },
        pos: 0,
        len,
    };
    let enc = Encoding {
        explicit: true,
        big_endian: false,
    };
    walk(&mut r, enc, header_only)
}

/// An open sequence or item: its kind and where it ends (None: at its
/// delimiter, an undefined length).
#[derive(Clone, Copy, PartialEq)]
enum Open {
    Sequence(Option<u64>),
    Item(Option<u64>),
}

impl Open {
    fn end(self) -> Option<u64> {
        match self {
            Open::Sequence(end) | Open::Item(end) => end,
        }
    }
}

/// Walks the data set linearly: sequences and items are entered, values
/// skipped, and inside encapsulated pixel data the items are fragments.
/// Nesting is followed so that the header-only walk stops where dicom-rs
/// does: at the top-level pixel data, not at one inside a sequence.
fn walk<S: Source>(r: &mut Walker<S>, enc: Encoding, header_only: bool) -> Result<(), String> {
    let mut in_fragments = false;
    let mut open: Vec<Open> = Vec::new();
    loop {
        while let Some(end) = open.last().and_then(|o| o.end()) {
            if r.pos < end {
                break;
            }
            open.pop();
        }
        let Some((tag, vr, n)) = r.header(enc)? else {
            break;
        };
        let (group, element) = tag;
        let end = (n != UNDEFINED).then(|| r.pos + u64::from(n));
        if group == 0xFFFE {
            if n != UNDEFINED {
                r.fits(n, group, element)?;
            }
            match element {
                // A fragment's bytes are data; one of undefined length has
                // none to skip (dicom-rs refuses it), so the walk goes on.
                0xE000 if in_fragments && n != UNDEFINED => r.skip(n)?,
                0xE000 if in_fragments => {}
                0xE000 => open.push(Open::Item(end)),
                0xE00D => close(&mut open, |o| matches!(o, Open::Item(_))),
                0xE0DD if in_fragments => in_fragments = false,
                0xE0DD => close(&mut open, |o| matches!(o, Open::Sequence(_))),
                _ => {}
            }
            continue;
        }
        if tag == PIXEL_DATA {
            if header_only && open.is_empty() {
                return Ok(());
            }
            in_fragments = n == UNDEFINED;
            if in_fragments {
                continue;
            }
        }
        if n == UNDEFINED {
            open.push(Open::Sequence(None));
            continue;
        }
        r.fits(n, group, element)?;
        // A sequence with a defined length: its items are headers to check.
        // dicom-rs also reads an element of unknown VR (`UN`, or implicit VR)
        // as a sequence when it holds items.
        let maybe_sequence =
            !enc.explicit || vr == *b"UN" || !vr.iter().all(u8::is_ascii_uppercase);
        let sequence =
            vr == *b"SQ" || (maybe_sequence && tag != PIXEL_DATA && r.starts_with_item(enc)?);
        if sequence {
            open.push(Open::Sequence(end));
        } else {
            r.skip(n)?;
        }
    }
    Ok(())
}

/// Closes open sequences and items up to and including the innermost one
/// that `is_closed` names (a delimiter with nothing of its kind open is
/// ignored, as a lenient reader would).
fn close(open: &mut Vec<Open>, is_closed: impl Fn(Open) -> bool) {
    if let Some(i) = open.iter().rposition(|&o| is_closed(o)) {
        open.truncate(i);
    }
}

/// What a walk reads from: the file itself, or a deflated data set's
/// inflated stream (which can only be read forward).
trait Source: Read {
    /// Moves `n` bytes forward.
    fn skip(&mut self, n: u64) -> std::io::Result<()>;
    /// The next 4 bytes without consuming them, where the source can.
    fn peek4(&mut self) -> std::io::Result<Option<[u8; 4]>>;
}

impl Source for BufReader<File> {
    fn skip(&mut self, n: u64) -> std::io::Result<()> {
        self.seek_relative(n as i64)
    }

    fn peek4(&mut self) -> std::io::Result<Option<[u8; 4]>> {
        let mut b = [0u8; 4];
        self.read_exact(&mut b)?;
        self.seek_relative(-4)?;
        Ok(Some(b))
    }
}

/// An inflated data set, read forward (peeked bytes wait in `ahead`).
struct Forward<R> {
    r: R,
    ahead: Vec<u8>,
}

impl<R: Read> Read for Forward<R> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.ahead.is_empty() {
            return self.r.read(out);
        }
        let n = self.ahead.len().min(out.len());
        out[..n].copy_from_slice(&self.ahead[..n]);
        self.ahead.drain(..n);
        Ok(n)
    }
}

impl<R: Read> Source for Forward<R> {
    fn skip(&mut self, n: u64) -> std::io::Result<()> {
        let copied = std::io::copy(&mut (&mut *self).take(n), &mut std::io::sink())?;
        if copied < n {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        Ok(())
    }

    fn peek4(&mut self) -> std::io::Result<Option<[u8; 4]>> {
        while self.ahead.len() < 4 {
            let mut b = [0u8; 4];
            let n = self.r.read(&mut b[..4 - self.ahead.len()])?;
            if n == 0 {
                return Ok(None);
            }
            self.ahead.extend_from_slice(&b[..n]);
        }
        Ok(Some([
            self.ahead[0],
            self.ahead[1],
            self.ahead[2],
            self.ahead[3],
        ]))
    }
}

/// An element's tag (group, element), VR (explicit only) and declared length.
type ElementHeader = ((u16, u16), [u8; 2], u32);

/// A source read header by header, `len` bytes in all from `pos`.
struct Walker<S> {
    r: S,
    pos: u64,
    len: u64,
}

impl<S: Source> Walker<S> {
    fn read(&mut self, buf: &mut [u8]) -> Result<(), String> {
        self.r.read_exact(buf).map_err(|e| e.to_string())?;
        self.pos += buf.len() as u64;
        Ok(())
    }

    fn skip(&mut self, n: u32) -> Result<(), String> {
        self.r.skip(u64::from(n)).map_err(|e| e.to_string())?;
        self.pos += u64::from(n);
        Ok(())
    }

    fn left(&self) -> u64 {
        self.len.saturating_sub(self.pos)
    }

    /// An element's declared length against what the file has left.
    fn fits(&self, n: u32, group: u16, element: u16) -> Result<(), String> {
        if u64::from(n) > self.left() {
            return Err(format!(
                "element ({group:04X},{element:04X}) declares {n} bytes but only {} follow",
                self.left()
            ));
        }
        Ok(())
    }

    fn u16(b: [u8; 2], enc: Encoding) -> u16 {
        if enc.big_endian {
            u16::from_be_bytes(b)
        } else {
            u16::from_le_bytes(b)
        }
    }

    fn u32(b: [u8; 4], enc: Encoding) -> u32 {
        if enc.big_endian {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        }
    }

    fn peek_tag(&mut self, enc: Encoding) -> Result<Option<(u16, u16)>, String> {
        if self.left() < 4 {
            return Ok(None);
        }
        let Some(b) = self.r.peek4().map_err(|e| e.to_string())? else {
            return Ok(None);
        };
        Ok(Some((
            Self::u16([b[0], b[1]], enc),
            Self::u16([b[2], b[3]], enc),
        )))
    }

    /// Whether the value that follows begins with an item tag.
    fn starts_with_item(&mut self, enc: Encoding) -> Result<bool, String> {
        Ok(self.peek_tag(enc)? == Some((0xFFFE, 0xE000)))
    }

    /// The next element header: tag, VR (explicit only) and length; None at
    /// the end (a truncated header is dicom-rs's to report).
    fn header(&mut self, enc: Encoding) -> Result<Option<ElementHeader>, String> {
        if self.left() < 8 {
            return Ok(None);
        }
        let mut h = [0u8; 8];
        self.read(&mut h)?;
        let tag = (Self::u16([h[0], h[1]], enc), Self::u16([h[2], h[3]], enc));
        if tag.0 == 0xFFFE || !enc.explicit {
            return Ok(Some((
                tag,
                [0; 2],
                Self::u32([h[4], h[5], h[6], h[7]], enc),
            )));
        }
        let vr = [h[4], h[5]];
        // The VRs with a 2-byte length; any other code (a long VR, or one
        // this pass does not know, as dicom-rs reads it) has 4.
        let long = !matches!(
            &vr,
            b"AE"
                | b"AS"
                | b"AT"
                | b"CS"
                | b"DA"
                | b"DS"
                | b"DT"
                | b"FL"
                | b"FD"
                | b"IS"
                | b"LO"
                | b"LT"
                | b"PN"
                | b"SH"
                | b"SL"
                | b"SS"
                | b"ST"
                | b"TM"
                | b"UI"
                | b"UL"
                | b"US"
        );
        if !long {
            return Ok(Some((tag, vr, u32::from(Self::u16([h[6], h[7]], enc)))));
        }
        if self.left() < 4 {
            return Ok(None);
        }
        let mut n = [0u8; 4];
        self.read(&mut n)?;
        Ok(Some((tag, vr, Self::u32(n, enc))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal Part 10 file: preamble, meta group (its length, `syntax`),
    /// `body`.
    fn file(syntax: &str, body: &[u8]) -> tempfile::NamedTempFile {
        let mut uid = syntax.as_bytes().to_vec();
        if uid.len() % 2 == 1 {
            uid.push(0);
        }
        let mut b = vec![0u8; 128];
        b.extend_from_slice(b"DICM");
        b.extend(short(
            0x0002,
            0x0000,
            b"UL",
            &(8 + uid.len() as u32).to_le_bytes(),
            4,
        ));
        b.extend(short(0x0002, 0x0010, b"UI", &uid, uid.len() as u16));
        b.extend_from_slice(body);
        let mut f = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut f, &b).unwrap();
        f
    }

    /// Explicit VR LE element (short VR).
    fn short(group: u16, element: u16, vr: &[u8; 2], value: &[u8], declared: u16) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&group.to_le_bytes());
        b.extend_from_slice(&element.to_le_bytes());
        b.extend_from_slice(vr);
        b.extend_from_slice(&declared.to_le_bytes());
        b.extend_from_slice(value);
        b
    }

    /// Explicit VR LE element (long VR: OB, SQ, UN...).
    fn long(group: u16, element: u16, vr: &[u8; 2], declared: u32) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&group.to_le_bytes());
        b.extend_from_slice(&element.to_le_bytes());
        b.extend_from_slice(vr);
        b.extend_from_slice(&[0, 0]);
        b.extend_from_slice(&declared.to_le_bytes());
        b
    }

    fn item(declared: u32) -> Vec<u8> {
        let mut b = vec![0xFE, 0xFF, 0x00, 0xE0];
        b.extend_from_slice(&declared.to_le_bytes());
        b
    }

    const EXPLICIT: &str = "1.2.840.10008.1.2.1";

    #[test]
    fn lengths_that_fit_pass_and_one_past_the_end_is_named() {
        let good = short(0x0008, 0x0060, b"CS", b"CT", 2);
        let f = file(EXPLICIT, &good);
        assert_eq!(check(f.path(), false), Ok(()));
        let mut bad = good.clone();
        bad.extend(long(0x0008, 0x0201, b"UN", 3_486_502_868));
        bad.extend_from_slice(&[0; 16]);
        let e = check(file(EXPLICIT, &bad).path(), true).unwrap_err();
        assert_eq!(
            e,
            "element (0008,0201) declares 3486502868 bytes but only 16 follow"
        );
    }

    #[test]
    fn lengths_inside_sequences_and_items_are_checked() {
        // SQ of undefined length > item of defined length > an element
        // declaring more than the file holds.
        let inner = short(0x0008, 0x0100, b"SH", b"", 0x7FFF);
        let mut body = long(0x0008, 0x1140, b"SQ", UNDEFINED);
        body.extend(item(inner.len() as u32));
        body.extend(&inner);
        let e = check(file(EXPLICIT, &body).path(), true).unwrap_err();
        assert!(e.starts_with("element (0008,0100) declares 32767"), "{e}");
        // The same in implicit VR, inside a sequence of defined length.
        let mut inner = vec![0x08, 0x00, 0x00, 0x01];
        inner.extend_from_slice(&0x7FFF_u32.to_le_bytes());
        let mut seq = item(inner.len() as u32);
        seq.extend(&inner);
        let mut body = vec![0x08, 0x00, 0x40, 0x11];
        body.extend_from_slice(&(seq.len() as u32).to_le_bytes());
        body.extend(&seq);
        let e = check(file("1.2.840.10008.1.2", &body).path(), true).unwrap_err();
        assert!(e.starts_with("element (0008,0100) declares 32767"), "{e}");
    }

    #[test]
    fn fragments_are_skipped_and_the_header_read_stops_at_pixel_data() {
        let mut body = long(0x7FE0, 0x0010, b"OB", UNDEFINED);
        body.extend(item(0));
        body.extend(item(4));
        body.extend_from_slice(&[0xFF; 4]); // a fragment that looks like nothing
        body.extend(item(64));
        body.extend_from_slice(&[0; 8]);
        let f = file("1.2.840.10008.1.2.4.70", &body);
        assert_eq!(check(f.path(), true), Ok(()));
        let e = check(f.path(), false).unwrap_err();
        assert!(e.starts_with("element (FFFE,E000) declares 64"), "{e}");
        // A fragment item of undefined length is not skipped as 4 GiB of
        // data: the walk goes on and still checks what follows.
        let mut body = long(0x7FE0, 0x0010, b"OB", UNDEFINED);
        body.extend(item(UNDEFINED));
        body.extend_from_slice(&[0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
        body.extend(long(0x0009, 0x1001, b"OB", 0x7FFF_0000));
        body.extend_from_slice(&[0; 8]);
        let e = check(file("1.2.840.10008.1.2.4.70", &body).path(), false).unwrap_err();
        assert!(e.starts_with("element (0009,1001) declares"), "{e}");
    }

    #[test]
    fn the_header_read_walks_past_pixel_data_nested_in_a_sequence() {
        // SQ (undefined) > item (undefined, never closed) > pixel data of a
        // defined length, then an element declaring more than the file has.
        // dicom-rs reads on past the nested pixel data; so must the check.
        let mut body = long(0x0049, 0x1001, b"SQ", UNDEFINED);
        body.extend(item(UNDEFINED));
        body.extend(long(0x7FE0, 0x0010, b"OW", 4));
        body.extend_from_slice(&[0; 4]);
        body.extend(long(0x0009, 0x1001, b"OB", 0x7FFF_0000));
        body.extend_from_slice(&[0; 8]);
        let e = check(file(EXPLICIT, &body).path(), true).unwrap_err();
        assert!(
            e.starts_with("element (0009,1001) declares 2147418112"),
            "{e}"
        );
        // Closed by its delimiters, the same pixel data is followed by the
        // top-level one, where the header read stops.
        let mut body = long(0x0049, 0x1001, b"SQ", UNDEFINED);
        body.extend(item(UNDEFINED));
        body.extend(long(0x7FE0, 0x0010, b"OW", 4));
        body.extend_from_slice(&[0; 4]);
        body.extend_from_slice(&[0xFE, 0xFF, 0x0D, 0xE0, 0, 0, 0, 0]);
        body.extend_from_slice(&[0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
        body.extend(long(0x7FE0, 0x0010, b"OW", 0x7FFF_0000));
        body.extend_from_slice(&[0; 8]);
        let f = file(EXPLICIT, &body);
        assert_eq!(check(f.path(), true), Ok(()));
        let e = check(f.path(), false).unwrap_err();
        assert!(
            e.starts_with("element (7FE0,0010) declares 2147418112"),
            "{e}"
        );
        // A sequence of defined length ends by position, with no delimiter.
        let mut inner = item(12);
        inner.extend(long(0x7FE0, 0x0010, b"OW", 0));
        let mut body = long(0x0049, 0x1001, b"SQ", inner.len() as u32);
        body.extend(inner);
        body.extend(long(0x7FE0, 0x0010, b"OW", 0x7FFF_0000));
        let f = file(EXPLICIT, &body);
        assert_eq!(check(f.path(), true), Ok(()));
    }

    #[test]
    fn the_meta_group_ends_where_its_group_length_says() {
        // After the meta group, bytes that read as a group 0002 element in
        // little endian but, in the data set's big endian, as (0200,1200)
        // declaring 7168 bytes: dicom-rs reads them as the latter.
        let mut body = short(0x0002, 0x0012, b"UI", &[b'1'; 28], 28);
        body.extend_from_slice(&[0; 4]);
        let e = check(file("1.2.840.10008.1.2.2", &body).path(), true).unwrap_err();
        assert!(e.starts_with("element (0200,1200) declares 7168"), "{e}");
        // Without (0002,0000) dicom-rs refuses the file before any value.
        let mut f = tempfile::NamedTempFile::new().unwrap();
        let mut b = vec![0u8; 128];
        b.extend_from_slice(b"DICM");
        b.extend(long(0x0008, 0x0201, b"UN", 3_486_502_868));
        std::io::Write::write_all(&mut f, &b).unwrap();
        assert_eq!(check(f.path(), false), Ok(()));
        // dicom-rs takes a group length of any VR (here CS) if it is 4 bytes.
        let mut b = vec![0u8; 128];
        b.extend_from_slice(b"DICM");
        b.extend(short(0x0002, 0x0000, b"CS", &28u32.to_le_bytes(), 4));
        b.extend(short(0x0002, 0x0010, b"UI", b"1.2.840.10008.1.2.1\0", 20));
        b.extend(long(0x0008, 0x0201, b"UN", 3_486_502_868));
        let mut f = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut f, &b).unwrap();
        let e = check(f.path(), false).unwrap_err();
        assert!(e.starts_with("element (0008,0201) declares"), "{e}");
    }

    #[test]
    fn files_without_the_magic_are_left_to_the_reader() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut f, b"not dicom").unwrap();
        assert_eq!(check(f.path(), false), Ok(()));
    }

    #[test]
    fn deflated_data_sets_are_checked_as_they_inflate() {
        use std::io::Write;
        let deflate = |plain: &[u8]| {
            let mut e =
                flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(plain).unwrap();
            e.finish().unwrap()
        };
        let syntax = "1.2.840.10008.1.2.1.99";
        let good = short(0x0008, 0x0060, b"CS", b"CT", 2);
        assert_eq!(check(file(syntax, &deflate(&good)).path(), false), Ok(()));
        let mut bad = good.clone();
        bad.extend(long(0x0008, 0x0201, b"UN", 4_000_000_000));
        bad.extend_from_slice(&[0; 100]);
        let e = check(file(syntax, &deflate(&bad)).path(), true).unwrap_err();
        assert_eq!(
            e,
            "element (0008,0201) declares 4000000000 bytes but only 100 follow"
        );
    }
}
