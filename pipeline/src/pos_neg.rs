//! The one positive/negative crop-centre sampler: MONAI's
//! `RandCropByPosNegLabel` ([`crate::transforms::RandCropByPosNegLabel`]) and
//! the segmentation task's training crops both draw their centres here.
//!
//! Voxels are addressed by their flat index in the caller's memory order
//! (x fastest for the pipeline's images, z fastest for the model's layout);
//! that order is the scan order in which the `rank`-th voxel of a class is
//! found. Two passes over the voxels (count, then pick the drawn ranks), no
//! index lists.
//!
//! What differs between the two users is a parameter:
//! * [`ClassChoice`]: MONAI draws `u < pos / (pos + neg)` per sample; the
//!   segmentation task alternates foreground and background without a draw.
//! * [`EmptyClass`]: MONAI falls back to the other class (and to the image
//!   centre, without drawing, when both are empty); the segmentation task to a
//!   voxel uniform over the whole volume.
//! * [`box_start`]: a box larger than the axis starts before it (the
//!   segmentation task pads); the transform cuts its size to the axis first.

use std::ops::Range;

use rand::Rng;

/// Which sampling class a voxel belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Foreground (a non-zero label).
    Fg,
    /// Background.
    Bg,
    /// Neither (below the image threshold): never a centre.
    Neither,
}

/// How each sample's class is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ClassChoice {
    /// MONAI: `u` uniform in [0, 1) per sample; foreground when
    /// `u < pos / (pos + neg)` (when one class is empty, the other always;
    /// `u` is drawn all the same).
    Ratio {
        /// Weight of foreground centres.
        pos: f64,
        /// Weight of background centres.
        neg: f64,
    },
    /// Sample `i` (counted from the call's first sample) is foreground when
    /// `i` is even, background when odd; nothing is drawn for the choice.
    Alternate,
}

/// What an empty chosen class falls back to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmptyClass {
    /// The other class; both empty: no centre (the caller takes the image
    /// centre) and nothing drawn (MONAI).
    OtherClass,
    /// A voxel uniform over all of them (one draw).
    AnyVoxel,
}

/// The sampler's two choices.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PosNeg {
    /// How classes are chosen.
    pub choice: ClassChoice,
    /// What an empty class falls back to.
    pub empty: EmptyClass,
}

/// What one sample draws before the scan.
#[derive(Debug, Clone, Copy)]
enum Draw {
    /// The `rank`-th voxel of a class, in scan order.
    Rank(Class, usize),
    /// A flat index directly.
    Voxel(usize),
}

impl PosNeg {
    /// MONAI's `RandCropByPosNegLabel` sampling.
    pub fn monai(pos: f64, neg: f64) -> PosNeg {
        PosNeg {
            choice: ClassChoice::Ratio { pos, neg },
            empty: EmptyClass::OtherClass,
        }
    }

    /// Draws the centres of `samples` (their numbers matter to
    /// [`ClassChoice::Alternate`]) among `n` voxels classified by `class_of`
    /// (flat index in scan order): each as its flat index and the class it
    /// was drawn for ([`Class::Neither`] for a uniform fallback). `None` when
    /// both classes are empty under [`EmptyClass::OtherClass`].
    pub fn draw(
        &self,
        n: usize,
        class_of: impl Fn(usize) -> Class,
        samples: Range<usize>,
        rng: &mut impl Rng,
    ) -> Option<Vec<(usize, Class)>> {
        let (mut n_fg, mut n_bg) = (0usize, 0usize);
        for s in 0..n {
            match class_of(s) {
                Class::Fg => n_fg += 1,
                Class::Bg => n_bg += 1,
                Class::Neither => {}
            }
        }
        let of = |class: Class| if class == Class::Fg { n_fg } else { n_bg };
        let draws: Vec<Draw> = match (self.choice, self.empty) {
            (_, EmptyClass::OtherClass) if n_fg == 0 && n_bg == 0 => return None,
            (ClassChoice::Ratio { pos, neg }, empty) => {
                let ratio = match empty {
                    EmptyClass::OtherClass if n_fg == 0 => 0.0,
                    EmptyClass::OtherClass if n_bg == 0 => 1.0,
                    _ => pos / (pos + neg),
                };
                samples
                    .map(|_| {
                        let class = if rng.random::<f64>() < ratio {
                            Class::Fg
                        } else {
                            Class::Bg
                        };
                        uniform_in(class, of(class), n, rng)
                    })
                    .collect()
            }
            (ClassChoice::Alternate, _) => samples
                .map(|i| {
                    let wanted = if i % 2 == 0 { Class::Fg } else { Class::Bg };
                    let class = match self.empty {
                        EmptyClass::OtherClass if of(wanted) == 0 => other(wanted),
                        _ => wanted,
                    };
                    uniform_in(class, of(class), n, rng)
                })
                .collect(),
        };
        let ranks: Vec<(Class, usize)> = draws
            .iter()
            .filter_map(|d| match *d {
                Draw::Rank(c, r) => Some((c, r)),
                Draw::Voxel(_) => None,
            })
            .collect();
        let mut found = select_ranks(n, &class_of, &ranks).into_iter();
        Some(
            draws
                .into_iter()
                .map(|d| match d {
                    Draw::Rank(class, _) => (found.next().expect("one per rank"), class),
                    Draw::Voxel(s) => (s, Class::Neither),
                })
                .collect(),
        )
    }
}

/// The other sampling class.
fn other(class: Class) -> Class {
    if class == Class::Fg {
        Class::Bg
    } else {
        Class::Fg
    }
}

/// One uniform draw in a class of `count` voxels, or over all `n` when the
/// class is empty.
fn uniform_in(class: Class, count: usize, n: usize, rng: &mut impl Rng) -> Draw {
    if count == 0 {
        Draw::Voxel(rng.random_range(0..n))
    } else {
        Draw::Rank(class, rng.random_range(0..count))
    }
}

/// The flat index of the `rank`-th voxel of each drawn class, in one scan.
fn select_ranks(
    n: usize,
    class_of: impl Fn(usize) -> Class,
    draws: &[(Class, usize)],
) -> Vec<usize> {
    let mut out = vec![0; draws.len()];
    // Per class: the draws sorted by rank, and a cursor into them.
    let mut wanted: [Vec<(usize, usize)>; 2] = [Vec::new(), Vec::new()];
    for (sample, &(class, rank)) in draws.iter().enumerate() {
        wanted[usize::from(class == Class::Bg)].push((rank, sample));
    }
    for w in &mut wanted {
        w.sort_unstable();
    }
    let mut cursor = [0usize; 2];
    let mut seen = [0usize; 2];
    for s in 0..n {
        if cursor[0] == wanted[0].len() && cursor[1] == wanted[1].len() {
            break;
        }
        let c = match class_of(s) {
            Class::Fg => 0,
            Class::Bg => 1,
            Class::Neither => continue,
        };
        while let Some(&(rank, sample)) = wanted[c].get(cursor[c])
            && rank == seen[c]
        {
            out[sample] = s;
            cursor[c] += 1;
        }
        seen[c] += 1;
    }
    out
}

/// Start of a box of `size` voxels around `centre` on an axis of `dim`:
/// centred and moved inside the axis when it fits (`[size/2, dim − size +
/// size/2]` for the centre, MONAI's `correct_crop_centers`); centred on the
/// axis, starting before it, when it does not (the part outside is padding).
pub fn box_start(centre: usize, size: usize, dim: usize) -> isize {
    if size <= dim {
        (centre as isize - (size / 2) as isize).clamp(0, (dim - size) as isize)
    } else {
        -(((size - dim) / 2) as isize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn alternate_picks_by_parity_and_falls_back_to_any_voxel() {
        // Foreground at 3 and 7 of 10.
        let class = |s: usize| {
            if s == 3 || s == 7 {
                Class::Fg
            } else {
                Class::Bg
            }
        };
        let p = PosNeg {
            choice: ClassChoice::Alternate,
            empty: EmptyClass::AnyVoxel,
        };
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for _ in 0..50 {
            let c = p.draw(10, class, 0..4, &mut rng).unwrap();
            assert!(c[0].0 == 3 || c[0].0 == 7);
            assert!(c[1].0 != 3 && c[1].0 != 7);
            assert_eq!((c[2].1, c[3].1), (Class::Fg, Class::Bg));
        }
        // No foreground: the even samples draw any voxel.
        let none = |_: usize| Class::Bg;
        let c = p.draw(10, none, 0..2, &mut rng).unwrap();
        assert_eq!((c[0].1, c[1].1), (Class::Neither, Class::Bg));
    }

    #[test]
    fn boxes_fit_or_pad() {
        assert_eq!(box_start(7, 4, 10), 5);
        assert_eq!(box_start(9, 4, 10), 6);
        assert_eq!(box_start(0, 4, 10), 0);
        assert_eq!(box_start(2, 8, 5), -1);
        assert_eq!(box_start(0, 5, 5), 0);
    }

    /// The two samplers dino3d had before there was one, as references.
    mod before {
        use super::*;

        /// `RandCropByPosNegLabel`'s centres (flat index, class).
        pub(super) fn monai(
            n: usize,
            class_of: impl Fn(usize) -> Class,
            pos: f64,
            neg: f64,
            samples: usize,
            rng: &mut impl Rng,
        ) -> Option<Vec<(usize, Class)>> {
            let n_fg = (0..n).filter(|&s| class_of(s) == Class::Fg).count();
            let n_bg = (0..n).filter(|&s| class_of(s) == Class::Bg).count();
            if n_fg == 0 && n_bg == 0 {
                return None;
            }
            let ratio = if n_fg == 0 {
                0.0
            } else if n_bg == 0 {
                1.0
            } else {
                pos / (pos + neg)
            };
            let draws: Vec<(Class, usize)> = (0..samples)
                .map(|_| {
                    let (class, count) = if rng.random::<f64>() < ratio {
                        (Class::Fg, n_fg)
                    } else {
                        (Class::Bg, n_bg)
                    };
                    (class, rng.random_range(0..count))
                })
                .collect();
            Some(
                draws
                    .into_iter()
                    .map(|(class, rank)| {
                        let s = (0..n).filter(|&s| class_of(s) == class).nth(rank).unwrap();
                        (s, class)
                    })
                    .collect(),
            )
        }

        /// The segmentation task's centre of crop `i` (labels z fastest).
        pub(super) fn segment(labels: &[u16], i: usize, rng: &mut impl Rng) -> usize {
            let want_fg = i.is_multiple_of(2);
            let candidates = labels.iter().filter(|&&l| (l > 0) == want_fg).count();
            if candidates == 0 {
                rng.random_range(0..labels.len())
            } else {
                let pick = rng.random_range(0..candidates);
                labels
                    .iter()
                    .enumerate()
                    .filter(|(_, l)| (**l > 0) == want_fg)
                    .nth(pick)
                    .map(|(at, _)| at)
                    .unwrap()
            }
        }

        /// The transform's box start (`size <= dim`).
        pub(super) fn monai_start(centre: usize, size: usize, dim: usize) -> usize {
            let half = size / 2;
            centre.clamp(half, dim - size + half) - half
        }

        /// The segmentation task's box start.
        pub(super) fn segment_start(centre: usize, roi: usize, dim: usize) -> isize {
            let s = centre as isize - (roi / 2) as isize;
            if dim >= roi {
                s.clamp(0, (dim - roi) as isize)
            } else {
                -(((roi - dim) / 2) as isize)
            }
        }
    }

    /// Label maps of many sizes and foreground densities (some empty or full).
    fn labels(seed: u64) -> Vec<u16> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let n = rng.random_range(1..300);
        let density = [0.0, 0.01, 0.3, 0.9, 1.0][(seed % 5) as usize];
        (0..n)
            .map(|_| u16::from(rng.random::<f64>() < density) * rng.random_range(1..4))
            .collect()
    }

    #[test]
    fn the_monai_choice_is_bit_identical_to_the_transforms_former_sampler() {
        for seed in 0..500u64 {
            let l = labels(seed);
            // A third class of voxels: below the image threshold.
            let class = |s: usize| match (l[s], s % 7) {
                (0, 0) => Class::Neither,
                (0, _) => Class::Bg,
                _ => Class::Fg,
            };
            let (pos, neg) =
                [(1.0, 1.0), (1.0, 3.0), (0.0, 1.0), (1.0, 0.0), (0.0, 0.0)][(seed % 5) as usize];
            let samples = (seed % 4) as usize;
            let mut a = ChaCha8Rng::seed_from_u64(seed);
            let mut b = a.clone();
            let new = PosNeg::monai(pos, neg).draw(l.len(), class, 0..samples, &mut a);
            let old = before::monai(l.len(), class, pos, neg, samples, &mut b);
            assert_eq!(new, old, "seed {seed}");
            assert_eq!(a.random::<u64>(), b.random::<u64>(), "the same draws");
        }
    }

    #[test]
    fn the_alternate_choice_is_bit_identical_to_the_segmentation_crops() {
        let p = PosNeg {
            choice: ClassChoice::Alternate,
            empty: EmptyClass::AnyVoxel,
        };
        for seed in 0..500u64 {
            let l = labels(seed);
            let class = |s: usize| if l[s] > 0 { Class::Fg } else { Class::Bg };
            let mut a = ChaCha8Rng::seed_from_u64(seed);
            let mut b = a.clone();
            for i in 0..6 {
                let new = p.draw(l.len(), class, i..i + 1, &mut a).unwrap()[0].0;
                assert_eq!(new, before::segment(&l, i, &mut b), "seed {seed}, crop {i}");
            }
            assert_eq!(a.random::<u64>(), b.random::<u64>(), "the same draws");
        }
    }

    #[test]
    fn box_starts_are_bit_identical_to_both_former_formulas() {
        for dim in 1..40 {
            for size in 1..48 {
                for centre in 0..dim {
                    if size <= dim {
                        assert_eq!(
                            box_start(centre, size, dim),
                            before::monai_start(centre, size, dim) as isize
                        );
                    }
                    assert_eq!(
                        box_start(centre, size, dim),
                        before::segment_start(centre, size, dim)
                    );
                }
            }
        }
    }
}
