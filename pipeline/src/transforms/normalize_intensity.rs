//! `NormalizeIntensity` with MONAI's semantics: `(x - mean) / std` with the
//! population std (`unbiased=False`); fixed `subtrahend`/`divisor` override the
//! statistics; `nonzero` computes and applies over voxels != 0 only; a std of 0
//! becomes 1; `channel_wise` normalises each channel on its own. Statistics in f64.

use super::image::Image;
use crate::exec::op::{Op, StepRng};
use crate::transforms::TransformError;
use crate::transforms::spec::same_size;
use crate::transforms::spec::{ANY, Args, KEYS, ParamDefault, ParamKind, TransformSpec, param};

/// Parameters of [`normalize_intensity`] (MONAI names).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct NormalizeIntensity {
    /// Value to subtract instead of the mean.
    pub subtrahend: Option<f64>,
    /// Value to divide by instead of the std.
    pub divisor: Option<f64>,
    /// Use and change only voxels != 0.
    pub nonzero: bool,
    /// Normalise each channel separately.
    pub channel_wise: bool,
}

fn normalize_slice(v: &mut [f32], p: &NormalizeIntensity) {
    let selected = |x: f32| !p.nonzero || x != 0.0;
    let (mut n, mut sum) = (0usize, 0.0f64);
    for &x in v.iter().filter(|&&x| selected(x)) {
        n += 1;
        sum += f64::from(x);
    }
    if n == 0 {
        return;
    }
    let mean = sum / n as f64;
    let var = v
        .iter()
        .filter(|&&x| selected(x))
        .map(|&x| (f64::from(x) - mean).powi(2))
        .sum::<f64>()
        / n as f64;
    let sub = p.subtrahend.unwrap_or(mean);
    let div = match p.divisor.unwrap_or(var.sqrt()) {
        0.0 => 1.0,
        d => d,
    };
    for x in v.iter_mut().filter(|x| selected(**x)) {
        *x = ((f64::from(*x) - sub) / div) as f32;
    }
}

/// Normalises `img` in place.
pub fn normalize_intensity(img: &mut Image, p: &NormalizeIntensity) {
    if p.channel_wise {
        let n = img.spatial_len().max(1);
        for ch in img.data.chunks_mut(n) {
            normalize_slice(ch, p);
        }
    } else {
        normalize_slice(&mut img.data, p);
    }
}

impl Op for NormalizeIntensity {
    fn apply(&self, img: &mut Image, _: &mut StepRng, _: bool) -> Result<(), TransformError> {
        normalize_intensity(img, self);
        Ok(())
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// The recipe's `NormalizeIntensity`.
pub const SPEC: TransformSpec = TransformSpec {
    name: "NormalizeIntensity",
    is_random: false,
    params: &[
        KEYS,
        param("subtrahend", ANY, ParamDefault::Absent),
        param("divisor", ANY, ParamDefault::Absent),
        param("nonzero", ParamKind::Bool, ParamDefault::Bool(false)),
        param("channel_wise", ParamKind::Bool, ParamDefault::Bool(false)),
    ],
    summary: "(x - mean) / std (population std)",
    check: None,
    nests: false,
    output_size: same_size,
    build: |a: &Args<'_>| {
        Ok(Box::new(NormalizeIntensity {
            subtrahend: a.opt_num("subtrahend")?,
            divisor: a.opt_num("divisor")?,
            nonzero: a.flag("nonzero")?,
            channel_wise: a.flag("channel_wise")?,
        }))
    },
};

#[cfg(test)]
mod tests {
    use super::*;

    fn image(data: Vec<f32>, c: usize) -> Image {
        Image::row(data, c)
    }

    #[test]
    fn population_std_and_monai_options() {
        // mean 2.5, population std sqrt(1.25)
        let mut img = image(vec![1.0, 2.0, 3.0, 4.0], 1);
        normalize_intensity(&mut img, &NormalizeIntensity::default());
        let s = 1.25f64.sqrt();
        for (got, x) in img.data.iter().zip([1.0, 2.0, 3.0, 4.0]) {
            assert!((f64::from(*got) - (x - 2.5) / s).abs() < 1e-6);
        }
        // nonzero: zeros are neither counted nor changed.
        let mut img = image(vec![0.0, 2.0, 4.0, 0.0], 1);
        normalize_intensity(
            &mut img,
            &NormalizeIntensity {
                nonzero: true,
                ..Default::default()
            },
        );
        assert_eq!(img.data, vec![0.0, -1.0, 1.0, 0.0]);
        // constant input: std 0 becomes 1.
        let mut img = image(vec![5.0; 3], 1);
        normalize_intensity(&mut img, &NormalizeIntensity::default());
        assert_eq!(img.data, vec![0.0; 3]);
        // channel-wise with fixed subtrahend/divisor.
        let mut img = image(vec![1.0, 3.0, 10.0, 30.0], 2);
        normalize_intensity(
            &mut img,
            &NormalizeIntensity {
                channel_wise: true,
                ..Default::default()
            },
        );
        assert_eq!(img.data, vec![-1.0, 1.0, -1.0, 1.0]);
        let mut img = image(vec![1.0, 3.0], 1);
        normalize_intensity(
            &mut img,
            &NormalizeIntensity {
                subtrahend: Some(1.0),
                divisor: Some(2.0),
                ..Default::default()
            },
        );
        assert_eq!(img.data, vec![0.0, 1.0]);
    }
}
