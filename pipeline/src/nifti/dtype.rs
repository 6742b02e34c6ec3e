//! NIfTI datatype codes and the real-valued voxel types dino3d keeps in memory.

use super::header::HeaderError;

use serde::{Deserialize, Serialize};

/// A real-valued voxel type, as stored on disk and kept in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    /// Unsigned 8-bit integer (NIfTI code 2).
    U8,
    /// Signed 8-bit integer (256).
    I8,
    /// Unsigned 16-bit integer (512).
    U16,
    /// Signed 16-bit integer (4).
    I16,
    /// Unsigned 32-bit integer (768).
    U32,
    /// Signed 32-bit integer (8).
    I32,
    /// Unsigned 64-bit integer (1280).
    U64,
    /// Signed 64-bit integer (1024).
    I64,
    /// 32-bit float (16).
    F32,
    /// 64-bit float (64).
    F64,
}

impl DType {
    /// Every supported type.
    pub const ALL: [DType; 10] = [
        DType::U8,
        DType::I8,
        DType::U16,
        DType::I16,
        DType::U32,
        DType::I32,
        DType::U64,
        DType::I64,
        DType::F32,
        DType::F64,
    ];

    /// Bytes per voxel.
    pub fn size(self) -> usize {
        match self {
            DType::U8 | DType::I8 => 1,
            DType::U16 | DType::I16 => 2,
            DType::U32 | DType::I32 | DType::F32 => 4,
            DType::U64 | DType::I64 | DType::F64 => 8,
        }
    }

    /// The NIfTI `datatype` code.
    pub fn nifti_code(self) -> i16 {
        match self {
            DType::U8 => 2,
            DType::I16 => 4,
            DType::I32 => 8,
            DType::F32 => 16,
            DType::F64 => 64,
            DType::I8 => 256,
            DType::U16 => 512,
            DType::U32 => 768,
            DType::I64 => 1024,
            DType::U64 => 1280,
        }
    }

    /// The type for a NIfTI `datatype` code, or a description of why it is refused.
    ///
    /// # Errors
    /// Complex, RGB, 128-bit float, binary and unknown codes are refused with a
    /// message naming the type.
    pub fn from_nifti_code(code: i16) -> Result<DType, HeaderError> {
        Ok(match code {
            2 => DType::U8,
            4 => DType::I16,
            8 => DType::I32,
            16 => DType::F32,
            64 => DType::F64,
            256 => DType::I8,
            512 => DType::U16,
            768 => DType::U32,
            1024 => DType::I64,
            1280 => DType::U64,
            32 | 1792 | 2048 => {
                return Err(HeaderError(format!(
                    "complex voxels (datatype {code}) are not supported: convert to magnitude first"
                )));
            }
            128 | 2304 => {
                return Err(HeaderError(format!(
                    "RGB/RGBA voxels (datatype {code}) are not supported: convert to grey or channels first"
                )));
            }
            1536 => {
                return Err(HeaderError(
                    "128-bit float voxels (datatype 1536) are not supported".into(),
                ));
            }
            1 => {
                return Err(HeaderError(
                    "1-bit binary voxels (datatype 1) are not supported".into(),
                ));
            }
            0 => return Err(HeaderError("datatype is 0 (unknown)".into())),
            other => return Err(HeaderError(format!("unknown datatype code {other}"))),
        })
    }

    /// numpy-style name (`int16`, `float32`, ...).
    pub fn name(self) -> &'static str {
        match self {
            DType::U8 => "uint8",
            DType::I8 => "int8",
            DType::U16 => "uint16",
            DType::I16 => "int16",
            DType::U32 => "uint32",
            DType::I32 => "int32",
            DType::U64 => "uint64",
            DType::I64 => "int64",
            DType::F32 => "float32",
            DType::F64 => "float64",
        }
    }

    /// Whether the type is a float type.
    pub fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F64)
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_sizes_match_bitpix() {
        for d in DType::ALL {
            assert_eq!(DType::from_nifti_code(d.nifti_code()), Ok(d));
        }
        assert_eq!(DType::I16.size(), 2);
        assert_eq!(DType::U64.size(), 8);
    }

    #[test]
    fn complex_and_rgb_are_refused_by_name() {
        assert!(DType::from_nifti_code(32).unwrap_err().contains("complex"));
        assert!(DType::from_nifti_code(128).unwrap_err().contains("RGB"));
        assert!(DType::from_nifti_code(2304).unwrap_err().contains("RGB"));
        assert!(DType::from_nifti_code(999).unwrap_err().contains("unknown"));
    }
}
