//! Exact percentiles with numpy's default linear interpolation, and
//! `ScaleIntensityRangePercentiles` (3DINO's transform 4: 0.05 / 99.95 to
//! [-1, 1] with clipping, over all voxels of all channels).
//!
//! For 8- and 16-bit integer volumes the order statistics come from a 65,536-bin
//! histogram (exact, one pass); otherwise from `select_nth_unstable` (exact, O(n)).
//! Interpolation follows numpy's `_lerp`: `a + (b - a) t` for `t < 0.5`, else
//! `b - (b - a)(1 - t)`, in f64.

use super::image::Image;
use super::scale_intensity_range::{ScaleIntensityRange, scale_intensity_range};
use crate::exec::op::{Op, StepRng};
use crate::recipe::value::ParamValue;
use crate::transforms::TransformError;
use crate::transforms::spec::same_size;
use crate::transforms::spec::{
    ANY, Args, KEYS, PERCENT, ParamDefault, ParamError, ParamKind, Params, TransformSpec, param,
};
use crate::volume::{Volume, VoxelData};

fn lerp(a: f64, b: f64, t: f64) -> f64 {
    if t < 0.5 {
        a + (b - a) * t
    } else {
        b - (b - a) * (1.0 - t)
    }
}

/// `(lo, hi, t)`: the two order statistics and the weight for percentile `q`.
fn rank(n: usize, q: f64) -> (usize, usize, f64) {
    let h = (n - 1) as f64 * (q / 100.0).clamp(0.0, 1.0);
    let lo = h.floor() as usize;
    (lo, (lo + 1).min(n - 1), h - lo as f64)
}

/// Percentiles `qs` (0..=100) of `values`, exactly as `np.percentile` (linear).
/// NaN sorts last; empty input gives NaN.
pub fn percentiles_f32(values: &[f32], qs: &[f64]) -> Vec<f64> {
    if values.is_empty() {
        return vec![f64::NAN; qs.len()];
    }
    let mut buf = values.to_vec();
    let n = buf.len();
    qs.iter()
        .map(|&q| {
            let (lo, hi, t) = rank(n, q);
            let (_, &mut a, right) = buf.select_nth_unstable_by(lo, f32::total_cmp);
            let b = if hi == lo {
                a
            } else {
                right.iter().copied().min_by(f32::total_cmp).unwrap_or(a)
            };
            lerp(f64::from(a), f64::from(b), t)
        })
        .collect()
}

/// The value of order statistic `k` from a histogram over `offset + bin`.
fn kth_from_histogram(hist: &[u64], k: u64, offset: i64) -> f64 {
    let mut seen = 0u64;
    for (bin, &c) in hist.iter().enumerate() {
        seen += c;
        if seen > k {
            return (bin as i64 + offset) as f64;
        }
    }
    f64::NAN
}

/// Percentiles of a volume's values after its scaling, using a histogram for
/// 8/16-bit integer data.
pub fn percentiles_of_volume(vol: &Volume, qs: &[f64]) -> Vec<f64> {
    let n = vol.data.len();
    let raw: Option<Vec<f64>> = if n == 0 {
        None
    } else {
        let hist_of = |offset: i64, fill: &mut dyn FnMut(&mut [u64])| {
            let mut hist = vec![0u64; 65_536];
            fill(&mut hist);
            qs.iter()
                .map(|&q| {
                    let (lo, hi, t) = rank(n, q);
                    let a = kth_from_histogram(&hist, lo as u64, offset);
                    let b = kth_from_histogram(&hist, hi as u64, offset);
                    lerp(a, b, t)
                })
                .collect::<Vec<_>>()
        };
        match &vol.data {
            VoxelData::U8(v) => Some(hist_of(0, &mut |h| {
                v.iter().for_each(|&x| h[x as usize] += 1)
            })),
            VoxelData::I8(v) => Some(hist_of(-128, &mut |h| {
                v.iter().for_each(|&x| h[(x as i64 + 128) as usize] += 1)
            })),
            VoxelData::U16(v) => Some(hist_of(0, &mut |h| {
                v.iter().for_each(|&x| h[x as usize] += 1)
            })),
            VoxelData::I16(v) => Some(hist_of(-32_768, &mut |h| {
                v.iter().for_each(|&x| h[(x as i64 + 32_768) as usize] += 1)
            })),
            _ => None,
        }
    };
    match raw {
        // Linear interpolation commutes with an increasing affine scaling.
        Some(p) => match vol.scaling {
            Some((slope, inter)) if slope > 0.0 => p.iter().map(|v| v * slope + inter).collect(),
            None => p,
            Some(_) => percentiles_f32(&vol.to_f32(), qs),
        },
        None => percentiles_f32(&vol.to_f32(), qs),
    }
}

/// Parameters of `ScaleIntensityRangePercentiles` (MONAI names; not channel-wise).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScaleIntensityRangePercentiles {
    /// Lower percentile (0..=100).
    pub lower: f64,
    /// Upper percentile (0..=100).
    pub upper: f64,
    /// Output minimum.
    pub b_min: Option<f64>,
    /// Output maximum.
    pub b_max: Option<f64>,
    /// Clip the output.
    pub clip: bool,
    /// MONAI's `relative`: move `b_min`/`b_max` by the percentiles' fractions.
    pub relative: bool,
}

impl ScaleIntensityRangePercentiles {
    /// 3DINO's setting: 0.05 / 99.95 to [-1, 1], clipped.
    pub const THREEDINO: ScaleIntensityRangePercentiles = ScaleIntensityRangePercentiles {
        lower: 0.05,
        upper: 99.95,
        b_min: Some(-1.0),
        b_max: Some(1.0),
        clip: true,
        relative: false,
    };

    /// The `ScaleIntensityRange` these percentiles `(a_min, a_max)` give.
    pub fn range(&self, a_min: f64, a_max: f64) -> ScaleIntensityRange {
        let (mut b_min, mut b_max) = (self.b_min, self.b_max);
        if let (true, Some(b0), Some(b1)) = (self.relative, self.b_min, self.b_max) {
            b_min = Some(b0 + (b1 - b0) * self.lower / 100.0);
            b_max = Some(b0 + (b1 - b0) * self.upper / 100.0);
        }
        ScaleIntensityRange {
            a_min,
            a_max,
            b_min,
            b_max,
            clip: self.clip,
        }
    }
}

/// Applies `p` to `img`, with percentiles computed on `img` itself.
pub fn scale_intensity_range_percentiles(img: &mut Image, p: &ScaleIntensityRangePercentiles) {
    let q = percentiles_f32(&img.data, &[p.lower, p.upper]);
    scale_intensity_range(img, &p.range(q[0], q[1]));
}

impl Op for ScaleIntensityRangePercentiles {
    fn apply(&self, img: &mut Image, _: &mut StepRng, _: bool) -> Result<(), TransformError> {
        scale_intensity_range_percentiles(img, self);
        Ok(())
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

fn lower_not_above_upper(p: &Params) -> Result<(), ParamError> {
    match (
        p.get("lower").and_then(ParamValue::as_f64),
        p.get("upper").and_then(ParamValue::as_f64),
    ) {
        (Some(lo), Some(hi)) if lo > hi => Err(ParamError::Rule(format!(
            "lower ({lo}) is above upper ({hi})"
        ))),
        _ => Ok(()),
    }
}

/// The recipe's `ScaleIntensityRangePercentiles`.
pub const SPEC: TransformSpec = TransformSpec {
    name: "ScaleIntensityRangePercentiles",
    is_random: false,
    params: &[
        KEYS,
        param("lower", PERCENT, ParamDefault::Required),
        param("upper", PERCENT, ParamDefault::Required),
        param("b_min", ANY, ParamDefault::Absent),
        param("b_max", ANY, ParamDefault::Absent),
        param("clip", ParamKind::Bool, ParamDefault::Bool(false)),
        param("relative", ParamKind::Bool, ParamDefault::Bool(false)),
    ],
    summary: "ScaleIntensityRange from exact linear percentiles of all voxels",
    check: Some(lower_not_above_upper),
    nests: false,
    output_size: same_size,
    build: |a: &Args<'_>| {
        Ok(Box::new(ScaleIntensityRangePercentiles {
            lower: a.num("lower")?,
            upper: a.num("upper")?,
            b_min: a.opt_num("b_min")?,
            b_max: a.opt_num("b_max")?,
            clip: a.flag("clip")?,
            relative: a.flag("relative")?,
        }))
    },
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nifti::affine::IDENTITY;
    use crate::volume::VolumeMeta;

    /// numpy's linear percentile, written the plain way (sort, f64).
    fn reference(values: &[f64], q: f64) -> f64 {
        let mut s = values.to_vec();
        s.sort_by(f64::total_cmp);
        let h = (s.len() - 1) as f64 * q / 100.0;
        let lo = h.floor() as usize;
        let hi = (lo + 1).min(s.len() - 1);
        s[lo] + (s[hi] - s[lo]) * (h - lo as f64)
    }

    #[test]
    fn hand_computed_percentiles() {
        // np.percentile([1, 2, 3, 4], [0, 25, 50, 90, 100]) = [1, 1.75, 2.5, 3.7, 4]
        let p = percentiles_f32(&[4.0, 1.0, 3.0, 2.0], &[0.0, 25.0, 50.0, 90.0, 100.0]);
        let want = [1.0, 1.75, 2.5, 3.7, 4.0];
        for (g, w) in p.iter().zip(want) {
            assert!((g - w).abs() < 1e-12, "{p:?}");
        }
    }

    #[test]
    fn histogram_and_selection_agree_with_a_sorting_reference() {
        let n = 10_007;
        let raw: Vec<i16> = (0..n).map(|i| ((i * 7919 % 4001) as i16) - 1200).collect();
        let vol = Volume {
            data: VoxelData::I16(raw.clone().into()),
            shape: [1, n, 1, 1],
            spacing: [1.0; 3],
            affine: IDENTITY,
            scaling: Some((0.5, 10.0)),
            meta: VolumeMeta::default(),
        };
        let scaled: Vec<f64> = raw.iter().map(|&v| f64::from(v) * 0.5 + 10.0).collect();
        for q in [0.0, 0.05, 1.0, 37.5, 50.0, 99.95, 100.0] {
            let want = reference(&scaled, q);
            let hist = percentiles_of_volume(&vol, &[q])[0];
            let sel = percentiles_f32(&vol.to_f32(), &[q])[0];
            assert!((hist - want).abs() < 1e-9, "q {q}: {hist} vs {want}");
            assert!((sel - want).abs() < 1e-6, "q {q}: {sel} vs {want}");
        }
    }

    #[test]
    fn relative_moves_the_output_range_like_monai() {
        let p = ScaleIntensityRangePercentiles {
            lower: 10.0,
            upper: 90.0,
            relative: true,
            ..ScaleIntensityRangePercentiles::THREEDINO
        };
        let r = p.range(0.0, 1.0);
        assert_eq!((r.b_min, r.b_max), (Some(-0.8), Some(0.8)));
    }

    #[test]
    fn threedino_scaling_lands_in_minus_one_one() {
        let data: Vec<f32> = (0..1000).map(|i| i as f32).collect();
        let mut img = Image {
            data,
            shape: [1, 10, 10, 10],
            spacing: [1.0; 3],
            affine: IDENTITY,
        };
        scale_intensity_range_percentiles(&mut img, &ScaleIntensityRangePercentiles::THREEDINO);
        assert!(img.data.iter().all(|v| (-1.0..=1.0).contains(v)));
        assert_eq!(img.data[0], -1.0);
        assert_eq!(img.data[999], 1.0);
        // The median maps to the middle of the percentile range.
        let lo = reference(&(0..1000).map(f64::from).collect::<Vec<_>>(), 0.05);
        let hi = reference(&(0..1000).map(f64::from).collect::<Vec<_>>(), 99.95);
        let want = ((500.0 - lo) / (hi - lo)) * 2.0 - 1.0;
        assert!((f64::from(img.data[500]) - want).abs() < 1e-6);
    }
}
