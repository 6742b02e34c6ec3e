//! Branch-free f32 `x^γ` for `x ≥ 0` (the inner loop of
//! `RandAdjustContrast`, x in [0, 1]), `ln x` and `sin`/`cos` of a fraction of
//! a turn (Box–Muller's, for `RandGaussianNoise`).
//!
//! libm's `powf` is a scalar call: in a profile of `pipeline run` on the
//! 3DINO recipe it was 11% of the loader's time. This version uses only
//! arithmetic, bit casts and selects, so the loop around it vectorises.
//!
//! Method: `x = m·2ᵉ` with m in [√½, √2); `ln m = 2·atanh(s)`,
//! `s = (m − 1)/(m + 1)`, by its odd series to s⁹ (|s| ≤ 0.172, truncation
//! about 2e-9 relative); `t = γ·(e + ln m·log₂e)` summed in f64; then
//! `2ᵗ = 2ⁿ·2ʳ`, n = round(t), a degree-7 Taylor polynomial for 2ʳ (|r| ≤ ½), and 2ⁿ
//! applied as two normal powers of two, so results in the subnormal range
//! round once, as they should.
//!
//! Accuracy (tested below against f64 `powf` on dense grids): on [0, 1],
//! within 1e-7 absolute (9.9e-8 measured; what `RandAdjustContrast` scales
//! by the image's range) and within 1 + γ ulp (2.6 at γ = 2, 5.1 at 4.5:
//! the f32 rounding of ln m, scaled by γ; libm: 0.5 ulp); within 3 ulp for
//! the normal results of the other cases tested.

/// 1.5·2⁵²: adding it rounds an f64 of magnitude < 2⁵¹ to an integer.
const ROUND: f64 = 6_755_399_441_055_744.0;
/// Past these, 2ᵗ is 0 or +∞ in f32.
const T_MIN: f64 = -152.0;
const T_MAX: f64 = 129.0;

/// `x^g` for `x ≥ 0` (and +∞), any finite `g`: as `powf` within 1e-7
/// absolute on [0, 1] (see the module's accuracy note).
/// `0^g` is 0 for g > 0, 1 for g = 0 and +∞ for g < 0; NaN stays NaN. A
/// negative `x` gives NaN.
#[inline(always)]
pub fn pow_nonneg(x: f32, g: f32) -> f32 {
    let (e, ln_m) = split_log(x);
    // t = γ·e + γ·log₂m, summed in f64: in f32 the rounding of t (an ulp of
    // |t|, up to 150) would cost several ulp of the result.
    let t = f64::from(g) * (f64::from(e) + f64::from(ln_m) * std::f64::consts::LOG2_E);
    let y = exp2(t.clamp(T_MIN, T_MAX));
    let zero_power = if g > 0.0 {
        0.0
    } else if g == 0.0 {
        1.0
    } else {
        f32::INFINITY
    };
    let y = if x == 0.0 { zero_power } else { y };
    let infinity_power = if g > 0.0 { f32::INFINITY } else { 0.0 };
    let y = if x == f32::INFINITY {
        infinity_power
    } else {
        y
    };
    let y = if g == 0.0 { 1.0 } else { y };
    if x.is_nan() || g.is_nan() || x < 0.0 {
        f32::NAN
    } else {
        y
    }
}

/// `x = m·2ᵉ` with m in [√½, √2): `(e, ln m)`, for x > 0 (subnormals
/// included). Other x give garbage the callers select away.
#[inline(always)]
fn split_log(x: f32) -> (i32, f32) {
    // Subnormal x: scale into the normal range first (exact).
    let tiny = x < f32::MIN_POSITIVE;
    let xs = if tiny { x * 8_388_608.0 } else { x };
    let bits = xs.to_bits() as i32;
    let e = ((bits >> 23) & 0xff).wrapping_sub(if tiny { 127 + 23 } else { 127 });
    let m = f32::from_bits(((bits & 0x007f_ffff) | 0x3f80_0000) as u32);
    // m in [1, 2) → [√½, √2), so that ln m is small and symmetric.
    let big = m > std::f32::consts::SQRT_2;
    let m = if big { m * 0.5 } else { m };
    let e = if big { e.wrapping_add(1) } else { e };
    let f = m - 1.0; // exact (Sterbenz)
    let s = f / (2.0 + f);
    let s2 = s * s;
    let ln_m =
        2.0 * s * (1.0 + s2 * (1.0 / 3.0 + s2 * (1.0 / 5.0 + s2 * (1.0 / 7.0 + s2 * (1.0 / 9.0)))));
    (e, ln_m)
}

/// ln x for x > 0 (finite), within 2 ulp or 1e-7 absolute (tested).
#[inline(always)]
pub fn ln_positive(x: f32) -> f32 {
    let (e, ln_m) = split_log(x);
    // ln 2 split so that e·LN2_HI is exact for |e| < 2⁹.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let e = e as f32;
    e * LN2_HI + (ln_m + e * LN2_LO)
}

/// `(sin 2πt, cos 2πt)` for t in [0, 1) (a fraction of a turn), within
/// 2e-7 absolute (tested): the quadrant from round(4t), then Taylor
/// polynomials on |x| ≤ π/4.
#[inline(always)]
pub fn sincos_turns(t: f32) -> (f32, f32) {
    // q = round(4t) by the 1.5·2²³ trick (a float-to-int `as` would be a
    // saturating conversion, which kept the loops scalar); its low bits
    // are the quadrant.
    const ROUND_F32: f32 = 12_582_912.0;
    let shifted = t * 4.0 + ROUND_F32;
    let q = shifted.to_bits();
    let x = (t - (shifted - ROUND_F32) * 0.25) * std::f32::consts::TAU;
    let x2 = x * x;
    let s = x
        * (1.0
            + x2 * (-1.0 / 6.0
                + x2 * (1.0 / 120.0 + x2 * (-1.0 / 5040.0 + x2 * (1.0 / 362_880.0)))));
    let c = 1.0 + x2 * (-0.5 + x2 * (1.0 / 24.0 + x2 * (-1.0 / 720.0 + x2 * (1.0 / 40_320.0))));
    // Quadrants 0..3: (s, c), (c, −s), (−s, −c), (−c, s).
    let odd = q & 1 == 1;
    let (sin, cos) = if odd { (c, s) } else { (s, c) };
    let sin = if q & 2 == 2 { -sin } else { sin };
    let cos = if q.wrapping_add(1) & 2 == 2 {
        -cos
    } else {
        cos
    };
    (sin, cos)
}

/// 2ᵗ for t in [T_MIN, T_MAX].
#[inline(always)]
fn exp2(t: f64) -> f32 {
    let rounded = t + ROUND;
    let n_f = rounded - ROUND;
    let r = (t - n_f) as f32; // |r| ≤ ½
    let z = r * std::f32::consts::LN_2;
    let p = 1.0
        + z * (1.0
            + z * (0.5
                + z * (1.0 / 6.0
                    + z * (1.0 / 24.0
                        + z * (1.0 / 120.0 + z * (1.0 / 720.0 + z * (1.0 / 5040.0)))))));
    // n as an integer: the difference of the mantissas of `rounded` and ROUND.
    let n = (rounded.to_bits() as i64).wrapping_sub(ROUND.to_bits() as i64) as i32;
    // Two halves, each a normal power of two for n in [−152, 129].
    let n1 = n >> 1;
    let n2 = n.wrapping_sub(n1);
    let scale = |k: i32| f32::from_bits((k.wrapping_add(127) << 23) as u32);
    p * scale(n1) * scale(n2)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Distance in ulp of `got` from the exact `want`, in units of `want`'s
    /// f32 spacing.
    fn ulps(got: f32, want: f64) -> f64 {
        let w = want as f32;
        let spacing = f64::from(f32::from_bits(w.abs().to_bits() + 1) - w.abs());
        (f64::from(got) - want).abs() / spacing
    }

    #[test]
    fn unit_interval_within_1e7_absolute() {
        for g in [0.5f32, 0.73, 1.0, 1.337, 1.9, 2.0, 4.5] {
            let mut worst_ulp = 0.0f64;
            let mut worst_abs = 0.0f64;
            // Every 97th f32 in [2⁻³⁰, 1] plus a uniform grid.
            let lo = 2f32.powi(-30).to_bits();
            let hi = 1f32.to_bits();
            let grid = (lo..=hi)
                .step_by(97)
                .map(f32::from_bits)
                .chain((0..=100_000).map(|i| i as f32 / 100_000.0));
            for x in grid {
                let want = f64::from(x).powf(f64::from(g));
                let got = pow_nonneg(x, g);
                worst_abs = worst_abs.max((f64::from(got) - want).abs());
                if want >= f64::from(f32::MIN_POSITIVE) {
                    worst_ulp = worst_ulp.max(ulps(got, want));
                }
            }
            // The rounding of ln m is scaled by γ.
            assert!(worst_ulp <= 1.0 + f64::from(g), "γ = {g}: {worst_ulp} ulp");
            assert!(worst_abs <= 1e-7, "γ = {g}: {worst_abs:e} absolute");
        }
    }

    #[test]
    fn ln_and_sincos_against_f64() {
        let mut worst = 0.0f64;
        for i in 1..=1_000_000u32 {
            let x = i as f32 * 2f32.powi(-20);
            let want = f64::from(x).ln();
            let err = (f64::from(ln_positive(x)) - want).abs();
            worst = worst.max(err / want.abs().max(1.0));
        }
        for x in [1e-40f32, 1.2e-38, 3e-20, 1e10, 3e38] {
            let want = f64::from(x).ln();
            assert!(
                (f64::from(ln_positive(x)) - want).abs() <= 2.5e-7 * want.abs(),
                "{x}"
            );
        }
        assert!(worst <= 2.5e-7, "ln: {worst:e}");
        let mut worst = 0.0f64;
        for i in 0..(1u32 << 20) {
            let t = i as f32 / (1u32 << 20) as f32;
            let (s, c) = sincos_turns(t);
            let a = std::f64::consts::TAU * f64::from(t);
            worst = worst
                .max((f64::from(s) - a.sin()).abs())
                .max((f64::from(c) - a.cos()).abs());
        }
        assert!(worst <= 2e-7, "sincos: {worst:e}");
    }

    #[test]
    fn whole_range_and_special_values() {
        for g in [-2.5f32, -0.5, 0.3, 1.0, 3.0] {
            for x in [1e-42f32, 1e-39, 1.2e-38, 3e-20, 0.5, 1.0, 7.0, 1e10, 3e30] {
                let want = f64::from(x).powf(f64::from(g));
                let got = pow_nonneg(x, g);
                if want < f64::from(f32::MAX) && want >= f64::from(f32::MIN_POSITIVE) {
                    assert!(ulps(got, want) <= 3.0, "{x}^{g}: {got} vs {want}");
                } else if want >= f64::from(f32::MAX) {
                    assert_eq!(got, f32::INFINITY, "{x}^{g}");
                } else {
                    // Subnormal or zero results: within one subnormal step.
                    assert!((f64::from(got) - want).abs() <= 1.5e-45, "{x}^{g}: {got}");
                }
            }
        }
        assert_eq!(pow_nonneg(0.0, 2.0), 0.0);
        assert_eq!(pow_nonneg(0.0, 0.0), 1.0);
        assert_eq!(pow_nonneg(0.0, -1.0), f32::INFINITY);
        assert_eq!(pow_nonneg(0.3, 0.0), 1.0);
        assert_eq!(pow_nonneg(1.0, 3.7), 1.0);
        assert_eq!(pow_nonneg(f32::INFINITY, 2.0), f32::INFINITY);
        assert!(pow_nonneg(f32::NAN, 2.0).is_nan());
        assert!(pow_nonneg(0.5, f32::NAN).is_nan());
        assert!(pow_nonneg(-0.5, 2.0).is_nan());
    }
}
