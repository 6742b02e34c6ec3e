//! The in-memory volume: channel-first voxels in their on-disk type, with the
//! geometry needed to place them in the world.
//!
//! # Layout
//! A volume has logical shape `(C, X, Y, Z)` as MONAI's `EnsureChannelFirst`
//! gives, with NIfTI's voxel axis order (i, j, k). Memory keeps the file's order
//! (x fastest, then y, z, channel), so reading never transposes: voxel
//! `(c, i, j, k)` sits at `((c * Z + k) * Y + j) * X + i`. 4-D files become
//! channels (time is the slowest NIfTI axis, so channels are contiguous blocks).

use std::mem::MaybeUninit;
use std::path::PathBuf;

use crate::nifti::affine::Affine;
use crate::nifti::dtype::DType;
use crate::voxels::Voxels;

/// Voxels in their stored type.
#[derive(Debug, Clone, PartialEq)]
#[allow(missing_docs)]
pub enum VoxelData {
    U8(Voxels<u8>),
    I8(Voxels<i8>),
    U16(Voxels<u16>),
    I16(Voxels<i16>),
    U32(Voxels<u32>),
    I32(Voxels<i32>),
    U64(Voxels<u64>),
    I64(Voxels<i64>),
    F32(Voxels<f32>),
    F64(Voxels<f64>),
}

/// Applies `$body` with `$v` bound to the inner `Vec` of any variant.
macro_rules! with_data {
    ($data:expr, $v:ident => $body:expr) => {
        match $data {
            VoxelData::U8($v) => $body,
            VoxelData::I8($v) => $body,
            VoxelData::U16($v) => $body,
            VoxelData::I16($v) => $body,
            VoxelData::U32($v) => $body,
            VoxelData::I32($v) => $body,
            VoxelData::U64($v) => $body,
            VoxelData::I64($v) => $body,
            VoxelData::F32($v) => $body,
            VoxelData::F64($v) => $body,
        }
    };
}

impl VoxelData {
    /// `n` zeroed voxels of type `dtype` (zeroed memory is committed lazily).
    pub fn zeroed(dtype: DType, n: usize) -> VoxelData {
        match dtype {
            DType::U8 => VoxelData::U8(vec![0; n].into()),
            DType::I8 => VoxelData::I8(vec![0; n].into()),
            DType::U16 => VoxelData::U16(vec![0; n].into()),
            DType::I16 => VoxelData::I16(vec![0; n].into()),
            DType::U32 => VoxelData::U32(vec![0; n].into()),
            DType::I32 => VoxelData::I32(vec![0; n].into()),
            DType::U64 => VoxelData::U64(vec![0; n].into()),
            DType::I64 => VoxelData::I64(vec![0; n].into()),
            DType::F32 => VoxelData::F32(vec![0.0; n].into()),
            DType::F64 => VoxelData::F64(vec![0.0; n].into()),
        }
    }

    /// `n` voxels of type `dtype` whose bytes are written by `fill`, without
    /// zeroing the memory first (for buffers that are about to be overwritten).
    ///
    /// # Safety
    /// When `fill` returns `Ok`, it must have written every byte of the slice it
    /// was given.
    ///
    /// # Errors
    /// `fill`'s error, or a message when the memory cannot be allocated (a
    /// header may ask for more than the machine has: that is the file's problem,
    /// not a reason to abort the process).
    pub(crate) unsafe fn from_fill(
        dtype: DType,
        n: usize,
        fill: impl FnOnce(&mut [MaybeUninit<u8>]) -> Result<(), String>,
    ) -> Result<VoxelData, String> {
        // SAFETY: forwarded from this function's contract.
        unsafe {
            Ok(match dtype {
                DType::U8 => VoxelData::U8(filled_vec(n, fill)?.into()),
                DType::I8 => VoxelData::I8(filled_vec(n, fill)?.into()),
                DType::U16 => VoxelData::U16(filled_vec(n, fill)?.into()),
                DType::I16 => VoxelData::I16(filled_vec(n, fill)?.into()),
                DType::U32 => VoxelData::U32(filled_vec(n, fill)?.into()),
                DType::I32 => VoxelData::I32(filled_vec(n, fill)?.into()),
                DType::U64 => VoxelData::U64(filled_vec(n, fill)?.into()),
                DType::I64 => VoxelData::I64(filled_vec(n, fill)?.into()),
                DType::F32 => VoxelData::F32(filled_vec(n, fill)?.into()),
                DType::F64 => VoxelData::F64(filled_vec(n, fill)?.into()),
            })
        }
    }

    /// The stored type.
    pub fn dtype(&self) -> DType {
        match self {
            VoxelData::U8(_) => DType::U8,
            VoxelData::I8(_) => DType::I8,
            VoxelData::U16(_) => DType::U16,
            VoxelData::I16(_) => DType::I16,
            VoxelData::U32(_) => DType::U32,
            VoxelData::I32(_) => DType::I32,
            VoxelData::U64(_) => DType::U64,
            VoxelData::I64(_) => DType::I64,
            VoxelData::F32(_) => DType::F32,
            VoxelData::F64(_) => DType::F64,
        }
    }

    /// Number of voxels.
    pub fn len(&self) -> usize {
        with_data!(self, v => v.len())
    }

    /// Whether there are no voxels.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The voxels as native-endian bytes.
    pub fn as_bytes(&self) -> &[u8] {
        with_data!(self, v => bytemuck::cast_slice(&v[..]))
    }

    /// The voxels as mutable native-endian bytes.
    pub fn as_bytes_mut(&mut self) -> &mut [u8] {
        with_data!(self, v => bytemuck::cast_slice_mut(&mut v[..]))
    }

    /// Drops voxels past `n`.
    pub(crate) fn truncate(&mut self, n: usize) {
        with_data!(self, v => v.truncate(n))
    }

    /// Drops the first `k` voxels without moving the others.
    pub(crate) fn skip_front(&mut self, k: usize) {
        with_data!(self, v => v.advance(k))
    }

    /// Reverses the byte order of every voxel in place.
    pub(crate) fn swap_bytes(&mut self) {
        match self {
            VoxelData::U8(_) | VoxelData::I8(_) => {}
            VoxelData::U16(v) => v.iter_mut().for_each(|x| *x = x.swap_bytes()),
            VoxelData::I16(v) => v.iter_mut().for_each(|x| *x = x.swap_bytes()),
            VoxelData::U32(v) => v.iter_mut().for_each(|x| *x = x.swap_bytes()),
            VoxelData::I32(v) => v.iter_mut().for_each(|x| *x = x.swap_bytes()),
            VoxelData::U64(v) => v.iter_mut().for_each(|x| *x = x.swap_bytes()),
            VoxelData::I64(v) => v.iter_mut().for_each(|x| *x = x.swap_bytes()),
            VoxelData::F32(v) => bytemuck::cast_slice_mut::<f32, u32>(&mut v[..])
                .iter_mut()
                .for_each(|x| *x = x.swap_bytes()),
            VoxelData::F64(v) => bytemuck::cast_slice_mut::<f64, u64>(&mut v[..])
                .iter_mut()
                .for_each(|x| *x = x.swap_bytes()),
        }
    }

    /// Voxel `i` as f64 (unscaled).
    #[allow(clippy::unnecessary_cast)] // generic over every variant, f64 included
    pub fn get_f64(&self, i: usize) -> f64 {
        with_data!(self, v => v[i] as f64)
    }
}

/// A `Vec` of `n` plain-old-data values whose bytes `fill` writes.
///
/// # Safety
/// When `fill` returns `Ok`, it must have written every byte of its slice.
unsafe fn filled_vec<T: bytemuck::Pod>(
    n: usize,
    fill: impl FnOnce(&mut [MaybeUninit<u8>]) -> Result<(), String>,
) -> Result<Vec<T>, String> {
    let mut v: Vec<T> = Vec::new();
    v.try_reserve_exact(n).map_err(|_| {
        format!(
            "cannot allocate {} bytes for the voxels",
            n.saturating_mul(size_of::<T>())
        )
    })?;
    let spare = v.spare_capacity_mut();
    // SAFETY: the spare capacity holds at least `n` values of `T`, i.e.
    // `n * size_of::<T>()` bytes, viewed as (uninitialised) bytes.
    let bytes = unsafe {
        std::slice::from_raw_parts_mut(
            spare.as_mut_ptr().cast::<MaybeUninit<u8>>(),
            n * size_of::<T>(),
        )
    };
    fill(bytes)?;
    // SAFETY: `fill` succeeded, so all `n` values' bytes are written (the caller's
    // contract), and any bit pattern is a valid `T` (`Pod`).
    unsafe { v.set_len(n) };
    Ok(v)
}

/// Provenance and header facts kept for writing back and for reports.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VolumeMeta {
    /// The file the volume was read from.
    pub source: Option<PathBuf>,
    /// The array shape on disk as nibabel reports it (x, y, z[, t, ...]).
    pub disk_shape: Vec<u64>,
    /// qform code of the source (0 if none).
    pub qform_code: i32,
    /// sform code of the source (0 if none).
    pub sform_code: i32,
    /// NIfTI `xyzt_units`.
    pub xyzt_units: i32,
}

/// A channel-first 3-D volume (see the module docs for the memory layout).
#[derive(Debug, Clone, PartialEq)]
pub struct Volume {
    /// Voxels, in their stored type.
    pub data: VoxelData,
    /// `(C, X, Y, Z)`.
    pub shape: [usize; 4],
    /// Voxel size of the three spatial axes (NIfTI `pixdim[1..4]`).
    pub spacing: [f64; 3],
    /// Voxel-to-world affine (see `nifti::affine` for the conventions).
    pub affine: Affine,
    /// `value = stored * slope + inter`, when the file asks for it.
    pub scaling: Option<(f64, f64)>,
    /// Provenance.
    pub meta: VolumeMeta,
}

impl Volume {
    /// Voxels per channel.
    pub fn spatial_len(&self) -> usize {
        self.shape[1] * self.shape[2] * self.shape[3]
    }

    /// Flat index of voxel `(c, i, j, k)`.
    pub fn index(&self, c: usize, i: usize, j: usize, k: usize) -> usize {
        let [_, x, y, z] = self.shape;
        ((c * z + k) * y + j) * x + i
    }

    /// The value at `(c, i, j, k)` after scaling, in f64.
    pub fn value(&self, c: usize, i: usize, j: usize, k: usize) -> f64 {
        let raw = self.data.get_f64(self.index(c, i, j, k));
        match self.scaling {
            Some((slope, inter)) => raw * slope + inter,
            None => raw,
        }
    }

    /// Channel `c` as scaled f32, in memory order.
    #[allow(clippy::unnecessary_cast)] // generic over every variant, f32/f64 included
    pub fn to_f32_channel(&self, c: usize) -> Vec<f32> {
        let n = self.spatial_len();
        let range = c * n..(c + 1) * n;
        match self.scaling {
            None => with_data!(&self.data, v => v[range].iter().map(|&x| x as f32).collect()),
            Some((slope, inter)) => with_data!(&self.data, v => v[range]
                .iter()
                .map(|&x| (x as f64 * slope + inter) as f32)
                .collect()),
        }
    }

    /// All voxels as scaled f32, in memory order (what MONAI's float32 `LoadImage`
    /// gives, up to its C-order copy). Scaling is computed in f64 and rounded once.
    #[allow(clippy::unnecessary_cast)] // generic over every variant, f32/f64 included
    pub fn to_f32(&self) -> Vec<f32> {
        match (&self.data, self.scaling) {
            (VoxelData::F32(v), None) => v.to_vec(),
            (data, None) => with_data!(data, v => v.iter().map(|&x| x as f32).collect()),
            (data, Some((slope, inter))) => {
                with_data!(data, v => v.iter().map(|&x| (x as f64 * slope + inter) as f32).collect())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_follows_nifti_file_order() {
        let vol = Volume {
            data: VoxelData::I16((0..2 * 3 * 4 * 5).map(|v| v as i16).collect()),
            shape: [2, 3, 4, 5],
            spacing: [1.0; 3],
            affine: crate::nifti::affine::IDENTITY,
            scaling: Some((2.0, 1.0)),
            meta: VolumeMeta::default(),
        };
        // x fastest, then y, z, channel.
        assert_eq!(vol.index(0, 1, 0, 0), 1);
        assert_eq!(vol.index(0, 0, 1, 0), 3);
        assert_eq!(vol.index(0, 0, 0, 1), 12);
        assert_eq!(vol.index(1, 0, 0, 0), 60);
        assert_eq!(vol.value(1, 2, 3, 4), (60.0 + 2.0 + 9.0 + 48.0) * 2.0 + 1.0);
        assert_eq!(vol.to_f32()[5], 11.0);
    }

    #[test]
    fn from_fill_writes_exactly_what_fill_wrote() {
        // SAFETY: the closure writes every byte.
        let d = unsafe {
            VoxelData::from_fill(DType::I16, 3, |b| {
                assert_eq!(b.len(), 6);
                for (i, x) in b.iter_mut().enumerate() {
                    x.write(i as u8);
                }
                Ok(())
            })
        }
        .unwrap();
        assert_eq!(d.as_bytes(), &[0, 1, 2, 3, 4, 5]);
        // A failing fill gives its error and no volume.
        // SAFETY: on Err nothing is assumed initialised.
        let e = unsafe { VoxelData::from_fill(DType::F64, 10, |_| Err("no".to_string())) };
        assert_eq!(e, Err("no".to_string()));
        // An impossible allocation is an error, not an abort.
        // SAFETY: the closure is never reached.
        let e = unsafe { VoxelData::from_fill(DType::F64, usize::MAX / 16, |_| Ok(())) };
        assert!(e.unwrap_err().contains("cannot allocate"));
    }

    #[test]
    fn swap_bytes_twice_is_identity() {
        let mut d = VoxelData::F64(vec![1.5, -2.25, f64::MAX].into());
        let orig = d.clone();
        d.swap_bytes();
        assert_ne!(d, orig);
        d.swap_bytes();
        assert_eq!(d, orig);
    }
}
