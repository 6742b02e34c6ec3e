//! NIfTI-1, NIfTI-2 and Analyze 7.5 headers: parsing from bytes of either byte
//! order, validation, and serialisation.
//!
//! Both versions are held in one struct with the wider NIfTI-2 field types, so
//! everything downstream handles one header kind. Byte order is detected from
//! `sizeof_hdr` (348 or 540), which is what the NIfTI reference library does too.

/// Why bytes are not a valid NIfTI-1, NIfTI-2 or Analyze header (or a
/// header dino3d cannot use); the readers add the file's name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct HeaderError(pub String);

impl HeaderError {
    /// Whether the message contains `text` (for tests and triage).
    pub fn contains(&self, text: &str) -> bool {
        self.0.contains(text)
    }
}

/// Bytes in a NIfTI-1 / Analyze header.
pub const NIFTI1_HEADER_SIZE: usize = 348;
/// Bytes in a NIfTI-2 header.
pub const NIFTI2_HEADER_SIZE: usize = 540;

/// Which header flavour a file carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NiftiVersion {
    /// Analyze 7.5 (no NIfTI magic): no qform/sform, no scaling.
    Analyze,
    /// NIfTI-1 (348-byte header).
    Nifti1,
    /// NIfTI-2 (540-byte header).
    Nifti2,
}

/// Byte order of the header and voxels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endian {
    /// Least significant byte first.
    Little,
    /// Most significant byte first.
    Big,
}

/// A parsed header. Field names follow the NIfTI standard.
#[derive(Debug, Clone, PartialEq)]
pub struct NiftiHeader {
    /// Header flavour.
    pub version: NiftiVersion,
    /// Byte order of header and data.
    pub endian: Endian,
    /// Whether the magic says header and data share one file (`n+1`/`n+2`).
    pub single_file: bool,
    /// `dim[0]` is the rank; `dim[1..=rank]` the sizes.
    pub dim: [i64; 8],
    /// Raw `datatype` code.
    pub datatype: i16,
    /// Bits per voxel.
    pub bitpix: i16,
    /// `pixdim[0]` is qfac; `pixdim[1..]` the voxel sizes.
    pub pixdim: [f64; 8],
    /// Byte offset of the voxels in the data file.
    pub vox_offset: f64,
    /// Scale slope (0 or non-finite: no scaling).
    pub scl_slope: f64,
    /// Scale intercept.
    pub scl_inter: f64,
    /// qform code (0: unknown).
    pub qform_code: i32,
    /// sform code (0: unknown).
    pub sform_code: i32,
    /// Quaternion parameters b, c, d.
    pub quatern: [f64; 3],
    /// qform offsets x, y, z.
    pub qoffset: [f64; 3],
    /// sform rows.
    pub srow: [[f64; 4]; 3],
    /// Units of space and time.
    pub xyzt_units: i32,
    /// Intent code (3001 and up are CIFTI).
    pub intent_code: i32,
    /// Display range.
    pub cal_min: f64,
    /// Display range.
    pub cal_max: f64,
    /// Free-text description (up to 80 bytes).
    pub descrip: String,
    /// SPM's origin (1-based voxel) in Analyze's `originator` field; zeros otherwise.
    pub analyze_origin: [i16; 3],
    /// Recorded maximum stored value (NIfTI-1/Analyze; SPM2 derives scaling from it).
    pub glmax: i32,
    /// Recorded minimum stored value.
    pub glmin: i32,
}

impl Default for NiftiHeader {
    fn default() -> Self {
        NiftiHeader {
            version: NiftiVersion::Nifti1,
            endian: Endian::Little,
            single_file: true,
            dim: [0, 1, 1, 1, 1, 1, 1, 1],
            datatype: 0,
            bitpix: 0,
            pixdim: [1.0; 8],
            vox_offset: 352.0,
            scl_slope: 1.0,
            scl_inter: 0.0,
            qform_code: 0,
            sform_code: 0,
            quatern: [0.0; 3],
            qoffset: [0.0; 3],
            srow: [
                [1.0, 0.0, 0.0, 0.0],
                [0.0, 1.0, 0.0, 0.0],
                [0.0, 0.0, 1.0, 0.0],
            ],
            xyzt_units: 0,
            intent_code: 0,
            cal_min: 0.0,
            cal_max: 0.0,
            descrip: String::new(),
            analyze_origin: [0; 3],
            glmax: 0,
            glmin: 0,
        }
    }
}

/// Reads fixed-width numbers of one byte order from a header buffer.
struct Fields<'a> {
    buf: &'a [u8],
    endian: Endian,
}

macro_rules! getter {
    ($name:ident, $t:ty) => {
        fn $name(&self, at: usize) -> $t {
            const N: usize = std::mem::size_of::<$t>();
            let mut b = [0u8; N];
            b.copy_from_slice(&self.buf[at..at + N]);
            match self.endian {
                Endian::Little => <$t>::from_le_bytes(b),
                Endian::Big => <$t>::from_be_bytes(b),
            }
        }
    };
}

impl Fields<'_> {
    getter!(i16, i16);
    getter!(i32, i32);
    getter!(i64, i64);
    getter!(f32, f32);
    getter!(f64, f64);

    fn f32_as_f64(&self, at: usize) -> f64 {
        f64::from(self.f32(at))
    }

    fn text(&self, at: usize, len: usize) -> String {
        let raw = &self.buf[at..at + len];
        let end = raw.iter().position(|&b| b == 0).unwrap_or(len);
        String::from_utf8_lossy(&raw[..end]).into_owned()
    }
}

impl NiftiHeader {
    /// Parses a header from the first bytes of a file (at least 348 bytes for
    /// NIfTI-1/Analyze, 540 for NIfTI-2). Checks only what is needed to read the
    /// fields; [`NiftiHeader::validate`] checks the values.
    ///
    /// # Errors
    /// A message (without the file name, which the caller adds) when the bytes are
    /// too short or `sizeof_hdr` is neither 348 nor 540 in either byte order.
    pub fn parse(buf: &[u8]) -> Result<NiftiHeader, HeaderError> {
        if buf.len() < 4 {
            return Err(HeaderError(format!(
                "file too short for a NIfTI header ({} bytes)",
                buf.len()
            )));
        }
        let le = i32::from_le_bytes(buf[0..4].try_into().expect("4 bytes"));
        let be = i32::from_be_bytes(buf[0..4].try_into().expect("4 bytes"));
        let (size, endian) = match (le, be) {
            (348 | 540, _) => (le as usize, Endian::Little),
            (_, 348 | 540) => (be as usize, Endian::Big),
            _ => {
                return Err(HeaderError(format!(
                    "not a NIfTI or Analyze header: sizeof_hdr is {le} (expected 348 or 540)"
                )));
            }
        };
        if buf.len() < size {
            return Err(HeaderError(format!(
                "header truncated: {} of {size} header bytes present",
                buf.len()
            )));
        }
        let f = Fields { buf, endian };
        if size == NIFTI2_HEADER_SIZE {
            Self::parse_v2(&f)
        } else {
            Self::parse_v1(&f)
        }
    }

    fn parse_v1(f: &Fields<'_>) -> Result<NiftiHeader, HeaderError> {
        let magic = &f.buf[344..348];
        let (version, single_file) = match magic {
            b"n+1\0" => (NiftiVersion::Nifti1, true),
            b"ni1\0" => (NiftiVersion::Nifti1, false),
            b"n+2\0" | b"ni2\0" => {
                return Err(HeaderError("NIfTI-2 magic in a 348-byte header".into()));
            }
            _ => (NiftiVersion::Analyze, false),
        };
        let mut dim = [0i64; 8];
        for (i, d) in dim.iter_mut().enumerate() {
            *d = i64::from(f.i16(40 + 2 * i));
        }
        let mut pixdim = [0f64; 8];
        for (i, p) in pixdim.iter_mut().enumerate() {
            *p = f.f32_as_f64(76 + 4 * i);
        }
        let is_nifti = version != NiftiVersion::Analyze;
        let mut srow = [[0f64; 4]; 3];
        for (r, row) in srow.iter_mut().enumerate() {
            for (c, v) in row.iter_mut().enumerate() {
                *v = f.f32_as_f64(280 + 16 * r + 4 * c);
            }
        }
        Ok(NiftiHeader {
            version,
            endian: f.endian,
            single_file,
            dim,
            datatype: f.i16(70),
            bitpix: f.i16(72),
            pixdim,
            vox_offset: f.f32_as_f64(108),
            // In Analyze these are SPM's funused1/funused2, which nibabel (loading
            // .hdr as Spm2AnalyzeImage) applies as slope and intercept too.
            scl_slope: f.f32_as_f64(112),
            scl_inter: f.f32_as_f64(116),
            qform_code: if is_nifti { i32::from(f.i16(252)) } else { 0 },
            sform_code: if is_nifti { i32::from(f.i16(254)) } else { 0 },
            quatern: [f.f32_as_f64(256), f.f32_as_f64(260), f.f32_as_f64(264)],
            qoffset: [f.f32_as_f64(268), f.f32_as_f64(272), f.f32_as_f64(276)],
            srow,
            xyzt_units: i32::from(f.buf[123]),
            intent_code: i32::from(f.i16(68)),
            cal_max: f.f32_as_f64(124),
            cal_min: f.f32_as_f64(128),
            descrip: f.text(148, 80),
            analyze_origin: if is_nifti {
                [0; 3]
            } else {
                [f.i16(253), f.i16(255), f.i16(257)]
            },
            glmax: f.i32(140),
            glmin: f.i32(144),
        }
        .with_fixed_pixdim())
    }

    /// nibabel's header fixes on load: spatial pixdims of 0 become 1, negative
    /// ones their absolute value, and a qfac (`pixdim[0]`) other than ±1 becomes 1.
    fn with_fixed_pixdim(mut self) -> NiftiHeader {
        for p in &mut self.pixdim[1..4] {
            *p = if *p == 0.0 { 1.0 } else { p.abs() };
        }
        if self.version != NiftiVersion::Analyze && self.pixdim[0] != 1.0 && self.pixdim[0] != -1.0
        {
            self.pixdim[0] = 1.0;
        }
        self
    }

    fn parse_v2(f: &Fields<'_>) -> Result<NiftiHeader, HeaderError> {
        let magic = &f.buf[4..12];
        let single_file = match magic {
            b"n+2\0\r\n\x1a\n" => true,
            b"ni2\0\r\n\x1a\n" => false,
            _ => return Err(HeaderError("540-byte header without NIfTI-2 magic".into())),
        };
        let mut dim = [0i64; 8];
        for (i, d) in dim.iter_mut().enumerate() {
            *d = f.i64(16 + 8 * i);
        }
        let mut pixdim = [0f64; 8];
        for (i, p) in pixdim.iter_mut().enumerate() {
            *p = f.f64(104 + 8 * i);
        }
        let mut srow = [[0f64; 4]; 3];
        for (r, row) in srow.iter_mut().enumerate() {
            for (c, v) in row.iter_mut().enumerate() {
                *v = f.f64(400 + 32 * r + 8 * c);
            }
        }
        Ok(NiftiHeader {
            version: NiftiVersion::Nifti2,
            endian: f.endian,
            single_file,
            dim,
            datatype: f.i16(12),
            bitpix: f.i16(14),
            pixdim,
            vox_offset: f.i64(168) as f64,
            scl_slope: f.f64(176),
            scl_inter: f.f64(184),
            qform_code: f.i32(344),
            sform_code: f.i32(348),
            quatern: [f.f64(352), f.f64(360), f.f64(368)],
            qoffset: [f.f64(376), f.f64(384), f.f64(392)],
            srow,
            xyzt_units: f.i32(500),
            intent_code: f.i32(504),
            cal_max: f.f64(192),
            cal_min: f.f64(200),
            descrip: f.text(240, 80),
            analyze_origin: [0; 3],
            glmax: 0,
            glmin: 0,
        }
        .with_fixed_pixdim())
    }

    /// Bytes of the header proper (348 or 540).
    pub fn header_size(&self) -> usize {
        match self.version {
            NiftiVersion::Nifti2 => NIFTI2_HEADER_SIZE,
            _ => NIFTI1_HEADER_SIZE,
        }
    }

    /// The rank (`dim[0]`), checked to be 1..=7.
    ///
    /// # Errors
    /// When `dim[0]` is outside 1..=7.
    pub fn rank(&self) -> Result<usize, HeaderError> {
        match self.dim[0] {
            r @ 1..=7 => Ok(r as usize),
            r => Err(HeaderError(format!("dim[0] = {r} is not a rank in 1..=7"))),
        }
    }

    /// The array shape as nibabel reports it: `dim[1..=rank]`.
    ///
    /// # Errors
    /// When the rank is invalid or a size is zero or negative.
    pub fn shape(&self) -> Result<Vec<u64>, HeaderError> {
        let rank = self.rank()?;
        self.dim[1..=rank]
            .iter()
            .enumerate()
            .map(|(i, &d)| {
                if d <= 0 {
                    Err(HeaderError(format!(
                        "dim[{}] = {d}: every size must be at least 1",
                        i + 1
                    )))
                } else {
                    Ok(d as u64)
                }
            })
            .collect()
    }

    /// Number of voxels, checked for overflow.
    ///
    /// # Errors
    /// When the shape is invalid or its product overflows.
    pub fn voxel_count(&self) -> Result<u64, HeaderError> {
        self.shape()?.iter().try_fold(1u64, |acc, &d| {
            acc.checked_mul(d).ok_or_else(|| {
                HeaderError(format!(
                    "dims {:?} overflow a 64-bit voxel count",
                    &self.dim
                ))
            })
        })
    }

    /// The byte offset at which voxels start in the data file.
    ///
    /// For single files whose `vox_offset` points inside the header (some writers
    /// leave it 0), the data starts right after the header and its 4-byte
    /// extension flag, as nibabel reads them.
    ///
    /// # Errors
    /// When `vox_offset` is negative, not finite or absurdly large.
    pub fn data_offset(&self) -> Result<u64, HeaderError> {
        let v = self.vox_offset;
        if !v.is_finite() || !(0.0..=1e15).contains(&v) {
            return Err(HeaderError(format!(
                "vox_offset {v} is not a valid byte offset"
            )));
        }
        let v = v as u64;
        let min = if self.single_file {
            self.header_size() as u64 + 4
        } else {
            0
        };
        Ok(v.max(min))
    }

    /// The scaling to apply to stored values, if any (nibabel's rule: a slope of
    /// 0 or a non-finite slope means "no scaling"; a non-finite intercept is 0).
    /// Analyze headers follow SPM2 as nibabel does: without a usable slope, the
    /// scaling comes from `glmin/glmax` mapped onto `cal_min/cal_max` when both
    /// ranges are non-zero.
    pub fn scaling(&self) -> Option<(f64, f64)> {
        let slope = self.scl_slope;
        if slope == 0.0 || !slope.is_finite() {
            let unscaled = f64::from(self.glmax) - f64::from(self.glmin);
            let scaled = self.cal_max - self.cal_min;
            if self.version == NiftiVersion::Analyze
                && unscaled != 0.0
                && scaled != 0.0
                && scaled.is_finite()
            {
                let s = scaled / unscaled;
                return Some((s, self.cal_min - s * f64::from(self.glmin)));
            }
            return None;
        }
        let inter = if self.scl_inter.is_finite() {
            self.scl_inter
        } else {
            0.0
        };
        if slope == 1.0 && inter == 0.0 {
            None
        } else {
            Some((slope, inter))
        }
    }

    /// Serialises this header (with the 4-byte extension flag set to "none") in
    /// little-endian byte order. NIfTI-1 unless `version` is NIfTI-2.
    pub fn to_bytes(&self) -> Vec<u8> {
        if self.version == NiftiVersion::Nifti2 {
            self.to_bytes_v2()
        } else {
            self.to_bytes_v1()
        }
    }

    fn to_bytes_v1(&self) -> Vec<u8> {
        let mut b = vec![0u8; NIFTI1_HEADER_SIZE + 4];
        let mut put = |at: usize, bytes: &[u8]| b[at..at + bytes.len()].copy_from_slice(bytes);
        put(0, &348i32.to_le_bytes());
        put(38, b"r");
        for i in 0..8 {
            put(40 + 2 * i, &(self.dim[i] as i16).to_le_bytes());
            put(76 + 4 * i, &(self.pixdim[i] as f32).to_le_bytes());
        }
        put(68, &(self.intent_code as i16).to_le_bytes());
        put(70, &self.datatype.to_le_bytes());
        put(72, &self.bitpix.to_le_bytes());
        put(108, &(self.vox_offset as f32).to_le_bytes());
        put(112, &(self.scl_slope as f32).to_le_bytes());
        put(116, &(self.scl_inter as f32).to_le_bytes());
        put(123, &[self.xyzt_units as u8]);
        put(124, &(self.cal_max as f32).to_le_bytes());
        put(140, &self.glmax.to_le_bytes());
        put(144, &self.glmin.to_le_bytes());
        put(128, &(self.cal_min as f32).to_le_bytes());
        let d = self.descrip.as_bytes();
        put(148, &d[..d.len().min(79)]);
        put(252, &(self.qform_code as i16).to_le_bytes());
        put(254, &(self.sform_code as i16).to_le_bytes());
        for i in 0..3 {
            put(256 + 4 * i, &(self.quatern[i] as f32).to_le_bytes());
            put(268 + 4 * i, &(self.qoffset[i] as f32).to_le_bytes());
            for c in 0..4 {
                put(
                    280 + 16 * i + 4 * c,
                    &(self.srow[i][c] as f32).to_le_bytes(),
                );
            }
        }
        put(344, if self.single_file { b"n+1\0" } else { b"ni1\0" });
        b
    }

    fn to_bytes_v2(&self) -> Vec<u8> {
        let mut b = vec![0u8; NIFTI2_HEADER_SIZE + 4];
        let mut put = |at: usize, bytes: &[u8]| b[at..at + bytes.len()].copy_from_slice(bytes);
        put(0, &540i32.to_le_bytes());
        put(
            4,
            if self.single_file {
                b"n+2\0\r\n\x1a\n"
            } else {
                b"ni2\0\r\n\x1a\n"
            },
        );
        put(12, &self.datatype.to_le_bytes());
        put(14, &self.bitpix.to_le_bytes());
        for i in 0..8 {
            put(16 + 8 * i, &self.dim[i].to_le_bytes());
            put(104 + 8 * i, &self.pixdim[i].to_le_bytes());
        }
        put(168, &(self.vox_offset as i64).to_le_bytes());
        put(176, &self.scl_slope.to_le_bytes());
        put(184, &self.scl_inter.to_le_bytes());
        put(192, &self.cal_max.to_le_bytes());
        put(200, &self.cal_min.to_le_bytes());
        let d = self.descrip.as_bytes();
        put(240, &d[..d.len().min(79)]);
        put(344, &self.qform_code.to_le_bytes());
        put(348, &self.sform_code.to_le_bytes());
        for i in 0..3 {
            put(352 + 8 * i, &self.quatern[i].to_le_bytes());
            put(376 + 8 * i, &self.qoffset[i].to_le_bytes());
            for c in 0..4 {
                put(400 + 32 * i + 8 * c, &self.srow[i][c].to_le_bytes());
            }
        }
        put(500, &self.xyzt_units.to_le_bytes());
        put(504, &self.intent_code.to_le_bytes());
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> NiftiHeader {
        NiftiHeader {
            dim: [3, 4, 5, 6, 1, 1, 1, 1],
            datatype: 4,
            bitpix: 16,
            pixdim: [-1.0, 0.5, 0.75, 2.5, 1.0, 1.0, 1.0, 1.0],
            scl_slope: 2.0,
            scl_inter: -3.0,
            qform_code: 1,
            sform_code: 2,
            quatern: [0.0, 1.0, 0.0],
            qoffset: [1.0, 2.0, 3.0],
            srow: [
                [0.5, 0.0, 0.0, 1.0],
                [0.0, 0.75, 0.0, 2.0],
                [0.0, 0.0, 2.5, 3.0],
            ],
            descrip: "hello".into(),
            ..NiftiHeader::default()
        }
    }

    #[test]
    fn v1_and_v2_bytes_round_trip() {
        for version in [NiftiVersion::Nifti1, NiftiVersion::Nifti2] {
            let h = NiftiHeader {
                version,
                vox_offset: if version == NiftiVersion::Nifti2 {
                    544.0
                } else {
                    352.0
                },
                ..sample()
            };
            let back = NiftiHeader::parse(&h.to_bytes()).unwrap();
            assert_eq!(back, h, "{version:?}");
        }
    }

    #[test]
    fn big_endian_is_detected_from_sizeof_hdr() {
        let mut b = sample().to_bytes();
        // Swap every field we check by hand: sizeof_hdr and dims.
        b[0..4].copy_from_slice(&348i32.to_be_bytes());
        for i in 0..8 {
            let v = i16::from_le_bytes([b[40 + 2 * i], b[41 + 2 * i]]);
            b[40 + 2 * i..42 + 2 * i].copy_from_slice(&v.to_be_bytes());
        }
        let h = NiftiHeader::parse(&b).unwrap();
        assert_eq!(h.endian, Endian::Big);
        assert_eq!(h.shape().unwrap(), vec![4, 5, 6]);
    }

    #[test]
    fn wrong_magic_and_short_buffers_are_errors_not_panics() {
        assert!(
            NiftiHeader::parse(b"abc")
                .unwrap_err()
                .contains("too short")
        );
        assert!(
            NiftiHeader::parse(&[0u8; 400])
                .unwrap_err()
                .contains("sizeof_hdr")
        );
        let b = sample().to_bytes();
        assert!(
            NiftiHeader::parse(&b[..200])
                .unwrap_err()
                .contains("truncated")
        );
    }

    #[test]
    fn absurd_dims_are_rejected() {
        let mut h = sample();
        h.dim = [3, 0, 5, 6, 1, 1, 1, 1];
        assert!(h.shape().unwrap_err().contains("at least 1"));
        h.dim = [3, -4, 5, 6, 1, 1, 1, 1];
        assert!(h.shape().is_err());
        h.dim = [9, 4, 5, 6, 1, 1, 1, 1];
        assert!(h.rank().is_err());
        h.dim = [7, i64::MAX, i64::MAX, 2, 2, 2, 2, 2];
        assert!(h.voxel_count().unwrap_err().contains("overflow"));
    }

    #[test]
    fn bad_pixdims_are_fixed_as_nibabel_fixes_them() {
        let h = NiftiHeader {
            pixdim: [0.0, -0.75, 0.0, 2.5, 1.0, 1.0, 1.0, 1.0],
            ..sample()
        };
        let back = NiftiHeader::parse(&h.to_bytes()).unwrap();
        assert_eq!(&back.pixdim[..4], &[1.0, 0.75, 1.0, 2.5]);
    }

    #[test]
    fn analyze_scaling_follows_spm2() {
        let mut h = NiftiHeader {
            version: NiftiVersion::Analyze,
            scl_slope: 0.5,
            scl_inter: f64::NAN,
            ..sample()
        };
        assert_eq!(h.scaling(), Some((0.5, 0.0)));
        h.scl_slope = 0.0;
        h.cal_min = 0.2;
        h.cal_max = 0.8;
        assert_eq!(h.scaling(), None, "needs both gl and cal ranges");
        h.glmin = 10;
        h.glmax = 110;
        let (s, i) = h.scaling().unwrap();
        assert!((s - 0.006).abs() < 1e-12 && (i - (0.2 - 0.06)).abs() < 1e-12);
    }

    #[test]
    fn scaling_follows_nibabels_rule() {
        let mut h = sample();
        assert_eq!(h.scaling(), Some((2.0, -3.0)));
        h.scl_slope = 0.0;
        assert_eq!(h.scaling(), None);
        h.scl_slope = f64::NAN;
        assert_eq!(h.scaling(), None);
        h.scl_slope = 1.0;
        h.scl_inter = f64::NAN;
        assert_eq!(h.scaling(), None);
    }
}
