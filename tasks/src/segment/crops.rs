//! Training crops: `n` boxes of the ROI size per volume, half centred on a
//! foreground voxel and half on a background voxel (MONAI's
//! RandCropByPosNegLabel with pos = neg = 1, drawn by the pipeline's one
//! pos/neg sampler in alternation), padded where the volume is smaller
//! (image with its minimum, labels with 0).

use dino3d_pipeline::pos_neg::{Class, ClassChoice, EmptyClass, PosNeg, box_start};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::data::SegCase;

/// A crop's image `(C, r, r, r)` and labels `(r, r, r)`, z fastest.
pub(crate) struct Crop {
    pub image: Vec<f32>,
    pub labels: Vec<u16>,
}

/// The segmentation task's sampling: crop `i` is foreground when `i` is even,
/// background when odd; a class the volume lacks falls back to any voxel.
const SAMPLER: PosNeg = PosNeg {
    choice: ClassChoice::Alternate,
    empty: EmptyClass::AnyVoxel,
};

/// Crop number `i` of `case`: even `i` centred on foreground (label > 0),
/// odd on background, uniform over those voxels (counted z fastest);
/// uniform anywhere when the volume has none of the kind.
pub(crate) fn random_crop(case: &SegCase, roi: usize, i: usize, rng: &mut ChaCha8Rng) -> Crop {
    let [c, x, y, z] = case.shape;
    let class = |s: usize| {
        if case.labels[s] > 0 {
            Class::Fg
        } else {
            Class::Bg
        }
    };
    let (centre, _) = SAMPLER
        .draw(case.labels.len(), class, i..i + 1, rng)
        .expect("any-voxel fallback always draws")[0];
    let centre = [centre / (y * z), (centre / z) % y, centre % z];
    let size = [x, y, z];
    // Box start: centred, shifted inside the volume where it fits.
    let start: [isize; 3] = std::array::from_fn(|a| box_start(centre[a], roi, size[a]));
    // The padding value matters only where the volume is smaller than the
    // ROI; scanning the whole volume for its minimum is skipped otherwise.
    let fill = if size.iter().any(|&n| n < roi) {
        case.image.iter().copied().fold(f32::INFINITY, f32::min)
    } else {
        0.0
    };
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

    /// The crop before the pipeline's sampler drew its centre, as a reference.
    fn random_crop_before(case: &SegCase, roi: usize, i: usize, rng: &mut ChaCha8Rng) -> Crop {
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
        let start: [isize; 3] = std::array::from_fn(|a| {
            let s = centre[a] as isize - (roi / 2) as isize;
            if size[a] >= roi {
                s.clamp(0, (size[a] - roi) as isize)
            } else {
                -(((roi - size[a]) / 2) as isize)
            }
        });
        let fill = if size.iter().any(|&n| n < roi) {
            case.image.iter().copied().fold(f32::INFINITY, f32::min)
        } else {
            0.0
        };
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

    #[test]
    fn crops_are_bit_identical_to_the_former_sampler() {
        let mut draws = ChaCha8Rng::seed_from_u64(42);
        for t in 0..120u64 {
            let shape = [
                1 + (t % 2) as usize,
                draws.random_range(1..9),
                draws.random_range(1..9),
                draws.random_range(1..9),
            ];
            let n = shape[1] * shape[2] * shape[3];
            let density = [0.0, 0.05, 0.5, 1.0][(t % 4) as usize];
            let case = SegCase {
                name: "c".into(),
                image: (0..shape[0] * n)
                    .map(|_| draws.random::<f32>() - 0.5)
                    .collect(),
                labels: (0..n)
                    .map(|_| u16::from(draws.random::<f64>() < density) * draws.random_range(1..4))
                    .collect(),
                shape,
                spacing: [1.0; 3],
                affine: dino3d_pipeline::nifti::affine::IDENTITY,
            };
            let roi = [2, 4, 7, 10][(t % 4) as usize];
            let mut a = ChaCha8Rng::seed_from_u64(t);
            let mut b = a.clone();
            for i in 0..5 {
                let new = random_crop(&case, roi, i, &mut a);
                let old = random_crop_before(&case, roi, i, &mut b);
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&new.image), bits(&old.image), "case {t}, crop {i}");
                assert_eq!(new.labels, old.labels, "case {t}, crop {i}");
            }
            assert_eq!(a.random::<u64>(), b.random::<u64>(), "the same draws");
        }
    }
}

/// Training-time augmentation of a crop, as 3DINO's segmentation training
/// applies it after the crop: per-axis flips, a quarter turn in the first
/// two axes (k ∈ 1..=3), then an intensity scale `v·(1 + f)` and shift
/// `v + o` (f, o uniform in ±their range), each with its probability. Labels
/// follow the spatial moves.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub(crate) struct Augment {
    pub flip_prob: f64,
    pub rot90_prob: f64,
    pub scale: f64,
    pub scale_prob: f64,
    pub shift: f64,
    pub shift_prob: f64,
}

/// A spatial move: the source voxel index of destination `(x, y, z)`.
type Move<'a> = Box<dyn Fn(usize, usize, usize) -> usize + 'a>;

/// Applies `aug` to a cubic crop of edge `r` with `c` channels.
pub(crate) fn augment(crop: &mut Crop, c: usize, r: usize, aug: &Augment, rng: &mut ChaCha8Rng) {
    let n = r * r * r;
    let idx = |x: usize, y: usize, z: usize| (x * r + y) * r + z;
    // Each spatial move as a source index per destination voxel.
    let mut moves: Vec<Move<'_>> = Vec::new();
    for axis in 0..3 {
        if rng.random_bool(aug.flip_prob) {
            moves.push(Box::new(move |x, y, z| match axis {
                0 => idx(r - 1 - x, y, z),
                1 => idx(x, r - 1 - y, z),
                _ => idx(x, y, r - 1 - z),
            }));
        }
    }
    if rng.random_bool(aug.rot90_prob) {
        let k = rng.random_range(1..=3);
        // torch.rot90 in dims (0, 1), k times: out[x, y] = in[y, r-1-x] per turn.
        moves.push(Box::new(move |x, y, z| {
            let (mut sx, mut sy) = (x, y);
            for _ in 0..k {
                (sx, sy) = (sy, r - 1 - sx);
            }
            idx(sx, sy, z)
        }));
    }
    for m in &moves {
        let src_img = crop.image.clone();
        let src_lab = crop.labels.clone();
        for x in 0..r {
            for y in 0..r {
                for z in 0..r {
                    let (d, s) = (idx(x, y, z), m(x, y, z));
                    crop.labels[d] = src_lab[s];
                    for ch in 0..c {
                        crop.image[ch * n + d] = src_img[ch * n + s];
                    }
                }
            }
        }
    }
    if rng.random_bool(aug.scale_prob) {
        let f = 1.0 + rng.random_range(-aug.scale..=aug.scale) as f32;
        crop.image.iter_mut().for_each(|v| *v *= f);
    }
    if rng.random_bool(aug.shift_prob) {
        let o = rng.random_range(-aug.shift..=aug.shift) as f32;
        crop.image.iter_mut().for_each(|v| *v += o);
    }
}

#[cfg(test)]
mod augment_tests {
    use super::*;
    use rand::SeedableRng;

    fn crop(r: usize) -> Crop {
        let n = r * r * r;
        Crop {
            image: (0..2 * n).map(|i| i as f32).collect(),
            labels: (0..n).map(|i| (i % 7) as u16).collect(),
        }
    }

    #[test]
    fn spatial_moves_keep_image_and_labels_together_and_compose_to_identity() {
        let r = 4;
        let n = r * r * r;
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let always = Augment {
            flip_prob: 1.0,
            rot90_prob: 1.0,
            ..Augment::default()
        };
        for _ in 0..5 {
            let mut c = crop(r);
            augment(&mut c, 2, r, &always, &mut rng);
            // Each voxel moved as a whole: channel 1 is channel 0 + n, and the
            // label is the source index mod 7.
            for d in 0..n {
                let src = c.image[d] as usize;
                assert_eq!(c.image[n + d] as usize, src + n);
                assert_eq!(usize::from(c.labels[d]), src % 7);
            }
            let mut sorted: Vec<usize> = c.image[..n].iter().map(|&v| v as usize).collect();
            sorted.sort_unstable();
            assert_eq!(sorted, (0..n).collect::<Vec<_>>(), "a permutation");
        }
        // Flipping every axis twice is the identity.
        let flips = Augment {
            flip_prob: 1.0,
            ..Augment::default()
        };
        let mut c = crop(r);
        augment(&mut c, 2, r, &flips, &mut rng);
        augment(&mut c, 2, r, &flips, &mut rng);
        assert_eq!(c.image, crop(r).image);
        // A turn of k quarters (torch.rot90 in the first two axes): voxel
        // (x, y, z) comes from (y, r-1-x, z) per quarter.
        let mut c = crop(r);
        let mut probe = rng.clone();
        let turn = Augment {
            rot90_prob: 1.0,
            ..Augment::default()
        };
        augment(&mut c, 2, r, &turn, &mut rng);
        // Replay the draws: three flip draws (p 0), the turn's (p 1), then k.
        for _ in 0..3 {
            assert!(!probe.random_bool(0.0));
        }
        assert!(probe.random_bool(1.0));
        let k = probe.random_range(1..=3);
        let (x, y, z) = (1, 2, 3);
        let (mut sx, mut sy) = (x, y);
        for _ in 0..k {
            (sx, sy) = (sy, r - 1 - sx);
        }
        assert_eq!(c.image[(x * r + y) * r + z] as usize, (sx * r + sy) * r + z);
    }

    #[test]
    fn intensity_jitter_stays_in_range_and_leaves_labels() {
        let r = 2;
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let aug = Augment {
            scale: 0.1,
            scale_prob: 1.0,
            shift: 0.1,
            shift_prob: 1.0,
            ..Augment::default()
        };
        for _ in 0..20 {
            let mut c = Crop {
                image: vec![1.0; 8],
                labels: vec![3; 8],
            };
            augment(&mut c, 1, r, &aug, &mut rng);
            let v = c.image[0];
            assert!(c.image.iter().all(|&w| w == v));
            assert!((0.8..=1.2).contains(&v), "{v}");
            assert_eq!(c.labels, vec![3; 8]);
        }
    }
}
