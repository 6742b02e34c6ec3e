//! What MetaImage and NRRD share once their headers are parsed: where the
//! voxel bytes are, how they are encoded, and how they become a channel-first
//! [`Volume`]. Every size is checked against what the files can back before
//! anything is allocated.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::geometry::LpsGeometry;
use super::{Encoding, Format, Header, VolumeInfo};
use crate::error::{Error, Result};
use crate::nifti::ReadOptions;
use crate::nifti::dtype::DType;
use crate::nifti::gzip;
use crate::volume::{Volume, VolumeMeta, VoxelData};

/// Where the voxels start within each data file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Skip {
    /// This many bytes (after any header and skipped lines; of the inflated
    /// stream when compressed).
    Bytes(u64),
    /// The voxels are the last bytes of the file (MetaImage `HeaderSize = -1`,
    /// NRRD `byte skip: -1`; raw data only).
    FromEnd,
}

/// The files holding the voxels and how to read them.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct DataSpec {
    /// The data files, in order; each holds an equal share of the voxels.
    pub files: Vec<PathBuf>,
    /// Whether the data follows the header in the header's file (`.mha` with
    /// `LOCAL`, attached `.nrrd`).
    pub attached: bool,
    /// File bytes before the data (the header's length when attached,
    /// MetaImage `HeaderSize`).
    pub start: u64,
    /// Lines to skip at the start of each file (NRRD `line skip`).
    pub line_skip: u64,
    /// Bytes to skip after them.
    pub skip: Skip,
    /// How the bytes are encoded.
    pub encoding: Encoding,
}

/// A parsed MetaImage or NRRD header, in the terms both share.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Layout {
    /// Stored voxel type.
    pub dtype: DType,
    /// Whether the voxels are big-endian.
    pub big_endian: bool,
    /// Sizes of the axes in file order (fastest first), the component axis
    /// included.
    pub dims: Vec<u64>,
    /// The axis holding a voxel's components, if any (multi-channel).
    pub component_axis: Option<usize>,
    /// Spatial geometry in LPS.
    pub geometry: LpsGeometry,
    /// Where the voxels are.
    pub data: DataSpec,
}

impl Layout {
    /// The spatial sizes (the component axis left out).
    fn spatial_dims(&self) -> Vec<u64> {
        self.dims
            .iter()
            .enumerate()
            .filter(|&(i, _)| Some(i) != self.component_axis)
            .map(|(_, &d)| d)
            .collect()
    }

    /// `(disk_shape, (C, X, Y, Z))`: disk_shape is the array MONAI's reader
    /// gives before channels move (x, y[, z][, t or components]).
    fn shapes(&self, header_path: &Path) -> Result<(Vec<u64>, [usize; 4])> {
        let unsupported = |what: String| Error::Unsupported {
            path: header_path.to_path_buf(),
            what,
        };
        let spatial = self.spatial_dims();
        if spatial.len() < 2 || spatial.len() > 4 {
            return Err(unsupported(format!(
                "{}-D image (sizes {:?}): only 2-D to 4-D images are read",
                spatial.len(),
                self.dims
            )));
        }
        if self.dims.contains(&0) {
            return Err(Error::format(
                header_path,
                format!("sizes {:?} include 0", self.dims),
            ));
        }
        let comps = self.component_axis.map(|a| self.dims[a]);
        if comps.is_some() && spatial.len() == 4 {
            return Err(unsupported(format!(
                "4-D image with {} components per voxel: only one of time and channels is read",
                comps.unwrap_or(1)
            )));
        }
        let big = |d: u64| usize::try_from(d).unwrap_or(usize::MAX);
        let at = |i: usize| spatial.get(i).map_or(1, |&d| big(d));
        let channels = comps.map_or(at(3), big);
        let mut disk_shape = spatial.clone();
        disk_shape.extend(comps);
        Ok((disk_shape, [channels, at(0), at(1), at(2)]))
    }
}

/// Checks a parsed header against its files and describes the volume.
pub(crate) fn describe(
    path: &Path,
    header_path: &Path,
    format: Format,
    header: Header,
    layout: &Layout,
    header_len: u64,
) -> Result<VolumeInfo> {
    let (disk_shape, shape) = layout.shapes(header_path)?;
    let voxels = layout
        .dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d));
    let data_bytes = voxels
        .and_then(|v| v.checked_mul(layout.dtype.size() as u64))
        .filter(|&b| b < isize::MAX as u64 / 2)
        .ok_or_else(|| {
            Error::format(
                header_path,
                format!(
                    "sizes {:?} of {} overflow memory",
                    layout.dims, layout.dtype
                ),
            )
        })?;
    let (affine, spacing) = layout.geometry.to_finite_ras(header_path)?;
    let mut file_bytes = if layout.data.attached { 0 } else { header_len };
    let share = share_of(data_bytes, layout, header_path)?;
    for file in &layout.data.files {
        file_bytes += check_file(file, header_path, &layout.data, share)?;
    }
    Ok(VolumeInfo {
        path: path.to_path_buf(),
        header_path: header_path.to_path_buf(),
        data_paths: layout.data.files.clone(),
        format,
        header,
        dtype: layout.dtype,
        disk_shape,
        shape,
        spacing,
        affine,
        scaling: None,
        encoding: layout.data.encoding,
        data_compressed: layout.data.encoding != Encoding::Raw,
        file_bytes,
        modified: None,
    })
}

/// Bytes of voxels each data file holds.
fn share_of(data_bytes: u64, layout: &Layout, header_path: &Path) -> Result<u64> {
    let n = layout.data.files.len() as u64;
    if n == 0 || !data_bytes.is_multiple_of(n) {
        return Err(Error::format(
            header_path,
            format!("{data_bytes} voxel bytes cannot be split evenly over {n} data files"),
        ));
    }
    Ok(data_bytes / n)
}

/// Checks that `file` exists and can back `need` voxel bytes; returns its size.
fn check_file(file: &Path, header_path: &Path, spec: &DataSpec, need: u64) -> Result<u64> {
    let len = match std::fs::metadata(file) {
        Ok(m) if m.is_file() => m.len(),
        _ => {
            return Err(Error::DataFileMissing {
                header: header_path.to_path_buf(),
                tried: vec![file.display().to_string()],
            });
        }
    };
    let start = match spec.line_skip {
        0 => spec.start,
        n => skip_lines(&mut open(file)?, file, spec.start, n)?,
    };
    let avail = len.saturating_sub(start);
    match (spec.encoding, spec.skip) {
        (Encoding::Raw, Skip::FromEnd) if avail >= need => {}
        (Encoding::Raw, Skip::Bytes(b)) if avail >= need.saturating_add(b) => {}
        (Encoding::Raw, skip) => {
            let skip = match skip {
                Skip::Bytes(b) => b,
                Skip::FromEnd => 0,
            };
            return Err(Error::format(
                file,
                format!(
                    "truncated: {need} voxel bytes needed after offset {}, file has {len} bytes",
                    start + skip
                ),
            ));
        }
        (_, Skip::FromEnd) => {
            return Err(Error::format(
                file,
                "a skip of -1 (data at the end of the file) needs raw, uncompressed data",
            ));
        }
        (enc, Skip::Bytes(b)) => {
            let max = avail
                .saturating_mul(gzip::MAX_DEFLATE_RATIO)
                .saturating_add(1024);
            if need.saturating_add(b) > max {
                return Err(Error::format(
                    file,
                    format!(
                        "{need} voxel bytes are more than {avail} bytes of {} data can hold",
                        enc.name()
                    ),
                ));
            }
        }
    }
    Ok(len)
}

/// Reads the voxels `info` describes and builds the volume.
pub(crate) fn read(info: VolumeInfo, layout: &Layout, opts: &ReadOptions) -> Result<Volume> {
    let n = info.voxel_count();
    if n as u64 > opts.max_voxels {
        return Err(Error::TooLarge {
            path: info.path.clone(),
            voxels: n as u64,
            budget: opts.max_voxels,
        });
    }
    let mut data = VoxelData::zeroed(layout.dtype, n);
    let bytes = data.as_bytes_mut();
    let share = bytes.len() / layout.data.files.len();
    for (file, out) in layout.data.files.iter().zip(bytes.chunks_mut(share)) {
        read_file(file, &layout.data, out)?;
    }
    if layout.big_endian != cfg!(target_endian = "big") {
        data.swap_bytes();
    }
    if let Some(axis) = layout.component_axis {
        data = components_last(&data, &layout.dims, axis);
    }
    Ok(Volume {
        data,
        shape: info.shape,
        spacing: info.spacing,
        affine: info.affine,
        scaling: info.scaling,
        meta: VolumeMeta {
            source: Some(info.path),
            disk_shape: info.disk_shape,
            qform_code: 0,
            sform_code: 0,
            xyzt_units: 0,
        },
    })
}

/// Fills `out` with the voxel bytes of one data file.
fn read_file(file: &Path, spec: &DataSpec, out: &mut [u8]) -> Result<()> {
    let mut f = open(file)?;
    let len = f.metadata().map_err(|e| Error::io(file, e))?.len();
    let start = match spec.line_skip {
        0 => spec.start,
        n => skip_lines(&mut f, file, spec.start, n)?,
    };
    let need = out.len();
    let truncated = |at: u64| {
        Error::format(
            file,
            format!("truncated: {need} voxel bytes needed after offset {at}, file has {len} bytes"),
        )
    };
    let skip = match spec.skip {
        Skip::Bytes(b) => b,
        Skip::FromEnd => 0,
    };
    if spec.encoding == Encoding::Raw {
        let at = match spec.skip {
            Skip::Bytes(b) => start + b,
            Skip::FromEnd => len.checked_sub(out.len() as u64).ok_or(truncated(0))?,
        };
        f.seek(SeekFrom::Start(at))
            .and_then(|_| f.read_exact(out))
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::UnexpectedEof => truncated(at),
                _ => Error::io(file, e),
            })?;
        return Ok(());
    }
    let mut src = Vec::with_capacity(len.saturating_sub(start) as usize);
    f.seek(SeekFrom::Start(start))
        .and_then(|_| f.read_to_end(&mut src))
        .map_err(|e| Error::io(file, e))?;
    // A byte skip counts inflated bytes: inflate it into a scratch buffer.
    let inflate = |dst: &mut [u8]| match spec.encoding {
        Encoding::Gzip => gzip::inflate_into(&src, dst),
        _ => inflate_zlib(&src, dst),
    };
    if skip == 0 {
        inflate(out)
    } else {
        let mut all = vec![0u8; skip as usize + out.len()];
        inflate(&mut all).map(|()| out.copy_from_slice(&all[skip as usize..]))
    }
    .map_err(|e| Error::format(file, e))
}

/// Inflates a zlib stream (MetaImage `CompressedData`) until `out` is full.
fn inflate_zlib(src: &[u8], out: &mut [u8]) -> Result<(), String> {
    let mut dec = libdeflater::Decompressor::new();
    match dec.zlib_decompress(src, out) {
        Ok(n) if n == out.len() => Ok(()),
        Ok(n) => Err(format!(
            "truncated zlib stream: inflated {n} of {} needed bytes",
            out.len()
        )),
        // More data than the header needs: stream what is needed.
        Err(libdeflater::DecompressionError::InsufficientSpace) => {
            flate2::read::ZlibDecoder::new(src)
                .read_exact(out)
                .map_err(|e| format!("corrupt zlib stream ({e})"))
        }
        Err(_) => {
            let mut got = Vec::new();
            let _ = flate2::read::ZlibDecoder::new(src).read_to_end(&mut got);
            Err(if got.len() < out.len() {
                format!(
                    "truncated or corrupt zlib stream: {} of {} needed bytes could be inflated",
                    got.len(),
                    out.len()
                )
            } else {
                "corrupt zlib stream (bad deflate data or checksum)".to_string()
            })
        }
    }
}

/// The byte offset after `lines` newlines counted from `start`.
fn skip_lines(f: &mut File, file: &Path, start: u64, lines: u64) -> Result<u64> {
    f.seek(SeekFrom::Start(start))
        .map_err(|e| Error::io(file, e))?;
    let mut r = BufReader::new(&mut *f);
    let mut at = start;
    let mut line = Vec::new();
    for i in 0..lines {
        line.clear();
        let n = r
            .read_until(b'\n', &mut line)
            .map_err(|e| Error::io(file, e))?;
        if n == 0 {
            return Err(Error::format(
                file,
                format!("line skip {lines}: the file ends after {i} lines"),
            ));
        }
        at += n as u64;
    }
    Ok(at)
}

/// Moves the component axis to the slowest position (channel-first memory),
/// keeping the other axes in order.
fn components_last(data: &VoxelData, dims: &[u64], axis: usize) -> VoxelData {
    let inner: usize = dims[..axis].iter().map(|&d| d as usize).product();
    let comps = dims[axis] as usize;
    let outer: usize = dims[axis + 1..].iter().map(|&d| d as usize).product();
    if outer == 1 || comps == 1 {
        return data.clone();
    }
    let mut out = VoxelData::zeroed(data.dtype(), data.len());
    let (src, dst) = (data.as_bytes(), out.as_bytes_mut());
    // Same-size unsigned views: the buffers are aligned for their own type.
    let shape = (inner, comps, outer);
    match data.dtype().size() {
        1 => permute::<u8>(src, dst, shape),
        2 => permute::<u16>(src, dst, shape),
        4 => permute::<u32>(src, dst, shape),
        _ => permute::<u64>(src, dst, shape),
    }
    out
}

/// `dst[c][o][i] = src[o][c][i]` over `(inner, comps, outer)` values of `T`.
fn permute<T: bytemuck::Pod>(
    src: &[u8],
    dst: &mut [u8],
    (inner, comps, outer): (usize, usize, usize),
) {
    let src: &[T] = bytemuck::cast_slice(src);
    let dst: &mut [T] = bytemuck::cast_slice_mut(dst);
    if inner == 1 {
        // Interleaved components (the common case): one pass over the source.
        for (o, voxel) in src.chunks_exact(comps).enumerate() {
            for (c, &v) in voxel.iter().enumerate() {
                dst[c * outer + o] = v;
            }
        }
        return;
    }
    for o in 0..outer {
        for c in 0..comps {
            let from = (o * comps + c) * inner;
            let to = (c * outer + o) * inner;
            dst[to..to + inner].copy_from_slice(&src[from..from + inner]);
        }
    }
}

fn open(path: &Path) -> Result<File> {
    File::open(path).map_err(|e| Error::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interleaved_components_become_channel_blocks() {
        // 2 components, x = 3: c0 c1 per voxel.
        let data = VoxelData::U8(vec![0, 10, 1, 11, 2, 12].into());
        let out = components_last(&data, &[2, 3], 0);
        assert_eq!(out.as_bytes(), &[0, 1, 2, 10, 11, 12]);
        // Already slowest: unchanged.
        let out = components_last(&data, &[3, 2], 1);
        assert_eq!(out, data);
        // A middle axis, 16-bit: x = 2, components = 2, y = 2.
        let data = VoxelData::I16(vec![0, 1, 10, 11, 2, 3, 12, 13].into());
        let out = components_last(&data, &[2, 2, 2], 1);
        assert_eq!(out, VoxelData::I16(vec![0, 1, 2, 3, 10, 11, 12, 13].into()));
    }

    #[test]
    fn zlib_streams_inflate_exactly_or_fail_clearly() {
        let payload: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
        let mut c = libdeflater::Compressor::new(libdeflater::CompressionLvl::default());
        let mut z = vec![0u8; c.zlib_compress_bound(payload.len())];
        let n = c.zlib_compress(&payload, &mut z).unwrap();
        z.truncate(n);
        let mut out = vec![0u8; 1000];
        inflate_zlib(&z, &mut out).unwrap();
        assert_eq!(out, payload);
        let mut part = vec![0u8; 400];
        inflate_zlib(&z, &mut part).unwrap();
        assert_eq!(part, payload[..400]);
        let err = inflate_zlib(&z[..n / 2], &mut out).unwrap_err();
        assert!(err.contains("truncated"), "{err}");
    }
}
