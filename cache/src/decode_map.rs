//! `DecodeMap`: how stored numbers become the values a reader gets, a
//! scale-and-offset with optional clipping (zarr's `fixedscaleoffset` filter,
//! plus bounds). The arithmetic is fixed here, once: f64 per voxel, a
//! product then a sum (two roundings, no fused multiply-add), clipped, then
//! rounded to f32. Writers that want values read back bit-identical to their
//! own float path compute that path with [`DecodeMap::apply`] too.

use serde::{Deserialize, Serialize};

/// `y = v·scale + offset`, then `lo` if `y < lo`, else `hi` if `y > hi`,
/// rounded to f32 (NaN stays NaN).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(from = "StoredMap", into = "StoredMap")]
pub struct DecodeMap {
    scale: f64,
    offset: f64,
    lo: f64,
    hi: f64,
}

impl DecodeMap {
    /// The identity: every value as stored.
    pub const IDENTITY: DecodeMap = DecodeMap::new(1.0, 0.0, f64::NEG_INFINITY, f64::INFINITY);

    /// A map with these coefficients; `lo`/`hi` may be infinite (no bound).
    pub const fn new(scale: f64, offset: f64, lo: f64, hi: f64) -> DecodeMap {
        DecodeMap {
            scale,
            offset,
            lo,
            hi,
        }
    }

    /// `(scale, offset, lo, hi)`, for vectorised readers that must reproduce
    /// [`Self::apply`] bit for bit.
    pub fn parts(&self) -> (f64, f64, f64, f64) {
        (self.scale, self.offset, self.lo, self.hi)
    }

    /// One value.
    #[inline(always)]
    pub fn apply(&self, v: f32) -> f32 {
        let y = f64::from(v) * self.scale + self.offset;
        // Written out so that NaN stays NaN.
        let y = if y < self.lo {
            self.lo
        } else if y > self.hi {
            self.hi
        } else {
            y
        };
        y as f32
    }
}

/// The header form: JSON has no infinity, so an absent bound is `null`.
#[derive(Serialize, Deserialize)]
struct StoredMap {
    scale: f64,
    offset: f64,
    lo: Option<f64>,
    hi: Option<f64>,
}

impl From<StoredMap> for DecodeMap {
    fn from(s: StoredMap) -> DecodeMap {
        DecodeMap::new(
            s.scale,
            s.offset,
            s.lo.unwrap_or(f64::NEG_INFINITY),
            s.hi.unwrap_or(f64::INFINITY),
        )
    }
}

impl From<DecodeMap> for StoredMap {
    fn from(m: DecodeMap) -> StoredMap {
        StoredMap {
            scale: m.scale,
            offset: m.offset,
            lo: m.lo.is_finite().then_some(m.lo),
            hi: m.hi.is_finite().then_some(m.hi),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The header keeps every coefficient exactly (serde_json's
    /// `float_roundtrip`): a map read back decodes the same bits.
    #[test]
    fn maps_survive_the_header_bit_for_bit() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            // Finite doubles of every magnitude, with full mantissas.
            let bits = state & !(0x7ffu64 << 52) | ((state >> 53) % 2000 + 24) << 52;
            f64::from_bits(bits)
        };
        for _ in 0..2000 {
            let map = DecodeMap::new(next(), next(), next().min(0.0), f64::INFINITY);
            let text = serde_json::to_string(&map).unwrap();
            let back: DecodeMap = serde_json::from_str(&text).unwrap();
            assert_eq!(back.parts().0.to_bits(), map.parts().0.to_bits(), "{text}");
            assert_eq!(back.parts().1.to_bits(), map.parts().1.to_bits(), "{text}");
            assert_eq!(back.parts().2.to_bits(), map.parts().2.to_bits(), "{text}");
            assert_eq!(back.parts().3, f64::INFINITY);
        }
    }

    #[test]
    fn clips_keep_nan_and_round_once() {
        let map = DecodeMap::new(0.5, -1.0, -1.0, 1.0);
        assert_eq!(map.apply(0.0), -1.0);
        assert_eq!(map.apply(3.0), 0.5);
        assert_eq!(map.apply(100.0), 1.0);
        assert_eq!(map.apply(-100.0), -1.0);
        assert!(map.apply(f32::NAN).is_nan());
        // 0.1 as f64 times 3, plus 0: one rounding to f32 at the end.
        let third = DecodeMap::new(0.1, 0.0, f64::NEG_INFINITY, f64::INFINITY);
        assert_eq!(third.apply(3.0), (3.0f64 * 0.1) as f32);
        assert_eq!(DecodeMap::IDENTITY.apply(-7.25), -7.25);
    }
}
