//! `Orientation(axcodes)` with MONAI's semantics: reorder and flip the spatial
//! axes so that they point along `axcodes` (e.g. `RAS`: index i grows towards
//! Right, j towards Anterior, k towards Superior). Only permutes and flips: no
//! interpolation. The affine changes so that every voxel keeps its world position.

use super::error::TransformError;
use super::image::Image;
use super::permute_in_plane_first::permute_spatial;
use crate::exec::op::{Op, StepRng};
use crate::nifti::affine::axcodes;
use crate::transforms::spec::size_from_data;
use crate::transforms::spec::{
    Args, KEYS, ParamDefault, ParamError, ParamKind, TransformSpec, param,
};

/// The world axis (0 = x/LR, 1 = y/PA, 2 = z/IS) and sign of an axis code.
fn code_axis(c: char) -> Option<(usize, bool)> {
    match c.to_ascii_uppercase() {
        'R' => Some((0, true)),
        'L' => Some((0, false)),
        'A' => Some((1, true)),
        'P' => Some((1, false)),
        'S' => Some((2, true)),
        'I' => Some((2, false)),
        _ => None,
    }
}

/// Parses axis codes such as `RAS` or `lps`.
///
/// # Errors
/// When the text is not three letters naming each of L/R, P/A, I/S once.
pub fn parse_axcodes(text: &str) -> Result<[char; 3], TransformError> {
    let chars: Vec<char> = text.chars().map(|c| c.to_ascii_uppercase()).collect();
    let bad = || TransformError::AxisCodes {
        text: text.to_string(),
    };
    if chars.len() != 3 {
        return Err(bad());
    }
    let mut seen = [false; 3];
    for &c in &chars {
        let (axis, _) = code_axis(c).ok_or_else(bad)?;
        if std::mem::replace(&mut seen[axis], true) {
            return Err(bad());
        }
    }
    Ok([chars[0], chars[1], chars[2]])
}

/// Reverses the spatial axes marked in `flip`, moving the affine's origin so
/// voxels keep their world positions.
pub fn flip_spatial(img: &Image, flip: [bool; 3]) -> Image {
    if flip == [false; 3] {
        return img.clone();
    }
    let [c, x, y, z] = img.shape;
    let mut data = Vec::with_capacity(img.data.len());
    for ch in 0..c {
        for k in 0..z {
            let kk = if flip[2] { z - 1 - k } else { k };
            for j in 0..y {
                let jj = if flip[1] { y - 1 - j } else { j };
                let row = &img.data[img.index(ch, 0, jj, kk)..][..x];
                if flip[0] {
                    data.extend(row.iter().rev());
                } else {
                    data.extend_from_slice(row);
                }
            }
        }
    }
    let dims = [x, y, z];
    let mut affine = img.affine;
    for row in affine.iter_mut().take(3) {
        for a in (0..3).filter(|&a| flip[a]) {
            row[3] += row[a] * (dims[a] as f64 - 1.0);
            row[a] = -row[a];
        }
    }
    Image {
        data,
        shape: img.shape,
        spacing: img.spacing,
        affine,
    }
}

/// Reorients `img` to `target` axis codes.
pub fn orientation(img: &Image, target: [char; 3]) -> Image {
    let current = axcodes(&img.affine);
    let cur = current.map(|c| code_axis(c).expect("axcodes gives valid codes"));
    let mut order = [0usize; 3];
    let mut flip = [false; 3];
    for (t, &code) in target.iter().enumerate() {
        let (world, positive) = code_axis(code).expect("target checked by parse_axcodes");
        let src = (0..3)
            .find(|&s| cur[s].0 == world)
            .expect("each world axis once");
        order[t] = src;
        flip[t] = cur[src].1 != positive;
    }
    if order == [0, 1, 2] {
        // Only flips (or nothing): one pass, not a copy followed by another.
        return flip_spatial(img, flip);
    }
    flip_spatial(&permute_spatial(img, order), flip)
}

/// `Orientation`: reorder and flip axes to the given codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Orientation {
    /// Target axis codes, such as `RAS`.
    pub axcodes: [char; 3],
}

impl Op for Orientation {
    fn apply(&self, img: &mut Image, _: &mut StepRng, _: bool) -> Result<(), TransformError> {
        *img = orientation(img, self.axcodes);
        Ok(())
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// The recipe's `Orientation`.
pub const SPEC: TransformSpec = TransformSpec {
    name: "Orientation",
    is_random: false,
    params: &[
        KEYS,
        param("axcodes", ParamKind::AxCodes, ParamDefault::Required),
    ],
    summary: "reorder and flip axes to the given codes (no interpolation)",
    check: None,
    nests: false,
    output_size: size_from_data,
    build: |a: &Args<'_>| {
        let axcodes =
            parse_axcodes(a.text("axcodes")?).map_err(|e| ParamError::Rule(e.to_string()))?;
        Ok(Box::new(Orientation { axcodes }))
    },
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nifti::affine::Affine;

    fn world(a: &Affine, ijk: [usize; 3]) -> [f64; 3] {
        [0, 1, 2].map(|r| (0..3).map(|c| a[r][c] * ijk[c] as f64).sum::<f64>() + a[r][3])
    }

    #[test]
    fn codes_parse_strictly() {
        assert_eq!(parse_axcodes("lps"), Ok(['L', 'P', 'S']));
        assert!(parse_axcodes("RRS").is_err());
        assert!(parse_axcodes("RA").is_err());
        assert!(parse_axcodes("RAX").is_err());
    }

    #[test]
    fn every_voxel_keeps_its_world_position_and_value() {
        // A permuted, flipped (P, S, L) volume with anisotropic voxels.
        let (x, y, z) = (3, 4, 5);
        let affine: Affine = [
            [0.0, 0.0, -2.0, 10.0],
            [-1.5, 0.0, 0.0, 20.0],
            [0.0, 3.0, 0.0, -5.0],
            [0.0, 0.0, 0.0, 1.0],
        ];
        let img = Image {
            data: (0..2 * x * y * z).map(|v| v as f32).collect(),
            shape: [2, x, y, z],
            spacing: [1.5, 3.0, 2.0],
            affine,
        };
        assert_eq!(axcodes(&affine), ['P', 'S', 'L']);
        for target in ["RAS", "LPS", "SPL", "IRA"] {
            let codes = parse_axcodes(target).unwrap();
            let out = orientation(&img, codes);
            assert_eq!(axcodes(&out.affine), codes, "{target}");
            let [_, ox, oy, oz] = out.shape;
            assert_eq!(ox * oy * oz, x * y * z);
            // Build a map world position -> value from the input, check the output.
            for c in 0..2 {
                for k in 0..oz {
                    for j in 0..oy {
                        for i in 0..ox {
                            let w = world(&out.affine, [i, j, k]);
                            let src = (0..x)
                                .flat_map(|a| {
                                    (0..y).flat_map(move |b| (0..z).map(move |d| [a, b, d]))
                                })
                                .find(|&p| {
                                    let v = world(&affine, p);
                                    (0..3).all(|r| (v[r] - w[r]).abs() < 1e-9)
                                })
                                .expect("every output voxel lies on an input voxel");
                            assert_eq!(
                                out.at(c, i, j, k),
                                img.at(c, src[0], src[1], src[2]),
                                "{target}"
                            );
                        }
                    }
                }
            }
        }
        // Already oriented: unchanged.
        assert_eq!(orientation(&img, ['P', 'S', 'L']), img);
    }
}
