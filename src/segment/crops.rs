//! Training crops: `n` boxes of the ROI size per volume, half centred on a
//! foreground voxel and half on a background voxel (MONAI's
//! RandCropByPosNegLabel with pos = neg = 1), padded where the volume is
//! smaller (image with its minimum, labels with 0).

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::data::SegCase;

/// A crop's image `(C, r, r, r)` and labels `(r, r, r)`, z fastest.
pub(crate) struct Crop {
    pub image: Vec<f32>,
    pub labels: Vec<u16>,
}

/// Crop number `i` of `case`: even `i` centred on foreground (label > 0),
/// odd on background, uniform over those voxels; uniform anywhere when the
/// volume has none of the kind.
pub(crate) fn random_crop(case: &SegCase, roi: usize, i: usize, rng: &mut ChaCha8Rng) -> Crop {
    let [c, x, y, z] = case.shape;
    let want_fg = i.is_multiple_of(2);
    let candidates = case.labels.iter().filter(|&&l| (l > 0) == want_fg).count();
    let centre = if candidates == 0 {
        rng.random_range(0..case.labels.len())
    } else {
        let pick = rng.random_range(0..candidates);
        case.labels
            .iter()
            .enumerate()
            .filter(|(_, l)| (**l > 0) == want_fg)
            .nth(pick)
            .map(|(at, _)| at)
            .expect("pick < candidates")
    };
    let centre = [centre / (y * z), (centre / z) % y, centre % z];
    let size = [x, y, z];
    // Box start: centred, shifted inside the volume where it fits.
    let start: [isize; 3] = std::array::from_fn(|a| {
        let s = centre[a] as isize - (roi / 2) as isize;
        if size[a] >= roi {
            s.clamp(0, (size[a] - roi) as isize)
        } else {
            -(((roi - size[a]) / 2) as isize)
        }
    });
    let fill = case.image.iter().copied().fold(f32::INFINITY, f32::min);
    let mut image = vec![fill; c * roi * roi * roi];
    let mut labels = vec![0u16; roi * roi * roi];
    for ci in 0..c {
        for i in 0..roi {
            let sx = start[0] + i as isize;
            if sx < 0 || sx >= x as isize {
                continue;
            }
            for j in 0..roi {
                let sy = start[1] + j as isize;
                if sy < 0 || sy >= y as isize {
                    continue;
                }
                for k in 0..roi {
                    let sz = start[2] + k as isize;
                    if sz < 0 || sz >= z as isize {
                        continue;
                    }
                    let src = (sx as usize * y + sy as usize) * z + sz as usize;
                    let dst = (i * roi + j) * roi + k;
                    image[ci * roi * roi * roi + dst] = case.image[ci * x * y * z + src];
                    if ci == 0 {
                        labels[dst] = case.labels[src];
                    }
                }
            }
        }
    }
    Crop { image, labels }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn crops_hold_the_volume_and_foreground_ones_see_foreground() {
        // 6×5×4 volume, value = index, one foreground voxel at (4, 1, 2).
        let (x, y, z) = (6, 5, 4);
        let image: Vec<f32> = (0..x * y * z).map(|i| i as f32).collect();
        let mut labels = vec![0u16; x * y * z];
        labels[(4 * y + 1) * z + 2] = 1;
        let case = SegCase {
            name: "c".into(),
            image,
            labels,
            shape: [1, x, y, z],
            spacing: [1.0; 3],
            affine: dino3d_pipeline::nifti::affine::IDENTITY,
        };
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        for i in 0..8 {
            let c = random_crop(&case, 3, i, &mut rng);
            // Every crop voxel is a volume voxel (roi fits): values are a box.
            let v0 = c.image[0] as usize;
            let (x0, y0, z0) = (v0 / (y * z), (v0 / z) % y, v0 % z);
            for a in 0..3 {
                for b in 0..3 {
                    for d in 0..3 {
                        let want = ((x0 + a) * y + y0 + b) * z + z0 + d;
                        assert_eq!(c.image[(a * 3 + b) * 3 + d] as usize, want);
                    }
                }
            }
            if i % 2 == 0 {
                assert_eq!(c.labels.iter().filter(|&&l| l == 1).count(), 1, "crop {i}");
            }
        }
        // A ROI larger than the volume is padded with the minimum.
        let c = random_crop(&case, 8, 0, &mut rng);
        assert_eq!(c.image.len(), 512);
        assert_eq!(
            c.image.iter().filter(|&&v| v == 0.0).count(),
            512 - x * y * z + 1
        );
        assert_eq!(c.labels.iter().filter(|&&l| l == 1).count(), 1);
    }
}
