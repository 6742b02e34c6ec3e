//! Colours of the pictures: grey levels for the image, the jet colormap
//! 3DINO's attention figure uses, and alpha blending.

/// An 8-bit RGB colour.
pub(crate) type Rgb = [u8; 3];

/// The grey level of a prepared intensity in [-1, 1] (clamped).
pub(crate) fn gray(v: f32) -> Rgb {
    let g = to_byte((v + 1.0) * 0.5);
    [g, g, g]
}

/// matplotlib's "jet" as three piecewise-linear ramps: dark blue at 0, cyan,
/// yellow, dark red at 1 (`t` is clamped to [0, 1]).
pub(crate) fn jet(t: f32) -> [f32; 3] {
    let t = t.clamp(0.0, 1.0);
    let ramp = |centre: f32| (1.5 - (4.0 * t - centre).abs()).clamp(0.0, 1.0);
    [ramp(3.0), ramp(2.0), ramp(1.0)]
}

/// `over` (in [0, 1]) blended onto `base` with opacity `alpha`.
pub(crate) fn blend(base: Rgb, over: [f32; 3], alpha: f32) -> Rgb {
    let keep = (1.0 - alpha) / 255.0;
    [
        to_byte(f32::from(base[0]) * keep + over[0] * alpha),
        to_byte(f32::from(base[1]) * keep + over[1] * alpha),
        to_byte(f32::from(base[2]) * keep + over[2] * alpha),
    ]
}

/// A colour in [0, 1] as bytes.
pub(crate) fn rgb(c: [f32; 3]) -> Rgb {
    c.map(to_byte)
}

fn to_byte(v: f32) -> u8 {
    (v.clamp(0.0, 1.0) * 255.0).round() as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_at_known_points() {
        assert_eq!(gray(-1.0), [0, 0, 0]);
        assert_eq!(gray(1.0), [255, 255, 255]);
        assert_eq!(gray(0.0), [128, 128, 128]);
        assert_eq!(gray(7.0), [255, 255, 255], "clamped");
        assert_eq!(jet(0.0), [0.0, 0.0, 0.5]);
        assert_eq!(jet(0.5), [0.5, 1.0, 0.5]);
        assert_eq!(jet(1.0), [0.5, 0.0, 0.0]);
        assert_eq!(blend([0, 0, 0], [1.0, 0.5, 0.0], 0.5), [128, 64, 0]);
        assert_eq!(rgb([1.0, 0.0, 0.4]), [255, 0, 102]);
    }
}
