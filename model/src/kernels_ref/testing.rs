//! Seeded inputs and the error measure shared by the GPU kernel tests and
//! the kernel benchmark (candle's CPU RNG cannot be seeded).

use crate::drop_path::SplitMix64;

/// `len` values uniform in `[−scale, scale)` from `seed`.
pub fn uniform(len: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut rng = SplitMix64::new(seed);
    (0..len)
        .map(|_| ((rng.next_f64() * 2.0 - 1.0) * f64::from(scale)) as f32)
        .collect()
}

/// `len` standard normal values from `seed` (Box-Muller).
pub fn normal(len: usize, seed: u64) -> Vec<f32> {
    let mut rng = SplitMix64::new(seed);
    let mut out = Vec::with_capacity(len + 1);
    while out.len() < len {
        let u1 = 1.0 - rng.next_f64(); // in (0, 1]: the log is finite
        let u2 = rng.next_f64();
        let r = (-2.0 * u1.ln()).sqrt();
        let a = std::f64::consts::TAU * u2;
        out.push((r * a.cos()) as f32);
        out.push((r * a.sin()) as f32);
    }
    out.truncate(len);
    out
}

/// Norm-wise relative error `max_i |got_i − want_i| / max_i |want_i|`
/// (infinite on a length mismatch or a non-finite value; 0 for two empty
/// or two all-zero buffers).
pub fn max_rel_err(got: &[f32], want: &[f32]) -> f64 {
    if got.len() != want.len() {
        return f64::INFINITY;
    }
    let mut diff = 0.0f64;
    let mut scale = 0.0f64;
    for (&g, &w) in got.iter().zip(want) {
        let (g, w) = (f64::from(g), f64::from(w));
        if !g.is_finite() || !w.is_finite() {
            return f64::INFINITY;
        }
        diff = diff.max((g - w).abs());
        scale = scale.max(w.abs());
    }
    if diff == 0.0 { 0.0 } else { diff / scale }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_are_seeded_and_in_range() {
        let a = uniform(1000, 7, 2.0);
        assert_eq!(a, uniform(1000, 7, 2.0));
        assert_ne!(a, uniform(1000, 8, 2.0));
        assert!(a.iter().all(|v| (-2.0..2.0).contains(v)));
        let mean = a.iter().map(|&v| f64::from(v)).sum::<f64>() / 1000.0;
        assert!(mean.abs() < 0.15, "mean {mean}");
    }

    #[test]
    fn normal_has_unit_moments() {
        let x = normal(20_001, 3);
        assert_eq!(x.len(), 20_001);
        let n = x.len() as f64;
        let mean = x.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
        let var = x
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / n;
        assert!(
            mean.abs() < 0.03 && (var - 1.0).abs() < 0.05,
            "{mean} {var}"
        );
    }

    #[test]
    fn relative_error_is_norm_wise() {
        assert_eq!(max_rel_err(&[1.0, 2.0], &[1.0, 2.0]), 0.0);
        assert_eq!(max_rel_err(&[0.0, 0.0], &[0.0, 0.0]), 0.0);
        assert!((max_rel_err(&[1.0, 4.5], &[1.0, 4.0]) - 0.125).abs() < 1e-12);
        assert!(max_rel_err(&[1.0], &[1.0, 2.0]).is_infinite());
        assert!(max_rel_err(&[f32::NAN], &[1.0]).is_infinite());
        assert!(max_rel_err(&[1.0], &[0.0]).is_infinite());
    }
}
