//! KoLeo forward on a flat buffer: the reference for the GPU kernel.

use candle_core::{Device, Tensor};

use crate::loss::koleo_loss;
use crate::{ModelError, Result};

/// [`koleo_loss`] of `rows` vectors of length `dim` (row-major), in f32.
///
/// # Errors
/// [`ModelError::Input`] when the buffer is empty or not `rows × dim`.
pub fn koleo(x: &[f32], rows: usize, dim: usize) -> Result<f32> {
    check_koleo(x.len(), rows, dim)?;
    let t = Tensor::from_slice(x, (rows, dim), &Device::Cpu)?;
    Ok(koleo_loss(&t)?.to_scalar::<f32>()?)
}

/// Sizes check shared with the GPU kernel.
pub(crate) fn check_koleo(len: usize, rows: usize, dim: usize) -> Result<()> {
    if rows == 0 || dim == 0 {
        return Err(ModelError::Input(format!(
            "KoLeo on an empty {rows}×{dim} batch"
        )));
    }
    if len != rows * dim {
        return Err(ModelError::Input(format!(
            "KoLeo: {rows}×{dim} values expected, got {len}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels_ref::testing::normal;

    /// The loss written out in f64 from the spec.
    fn direct(x: &[f32], n: usize, d: usize) -> f64 {
        const EPS: f64 = 1e-8;
        let xn: Vec<Vec<f64>> = x
            .chunks(d)
            .map(|r| {
                let norm = r.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>().sqrt();
                r.iter().map(|&v| f64::from(v) / norm.max(EPS)).collect()
            })
            .collect();
        let mut sum = 0.0;
        for i in 0..n {
            let dot = |j: usize| -> f64 {
                if i == j {
                    -1.0
                } else {
                    xn[i].iter().zip(&xn[j]).map(|(a, b)| a * b).sum()
                }
            };
            let nn = (0..n).fold(0, |b, j| if dot(j) > dot(b) { j } else { b });
            let dist = xn[i]
                .iter()
                .zip(&xn[nn])
                .map(|(a, b)| (a - b + EPS).powi(2))
                .sum::<f64>()
                .sqrt();
            sum += (dist + EPS).ln();
        }
        -sum / n as f64
    }

    #[test]
    fn matches_the_spec_written_out_in_f64() {
        let (n, d) = (9, 32);
        let x = normal(n * d, 5);
        let got = f64::from(koleo(&x, n, d).unwrap());
        let want = direct(&x, n, d);
        assert!((got - want).abs() < 1e-5 * want.abs(), "{got} vs {want}");
    }

    #[test]
    fn bad_sizes_are_refused() {
        assert!(koleo(&[], 0, 4).is_err());
        assert!(koleo(&[1.0; 7], 2, 4).is_err());
    }
}
