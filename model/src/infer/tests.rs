//! Sliding windows against hand-computed positions and an identity model;
//! metrics against hand-computed cases and a brute-force distance reference.

use candle_core::{Device, Tensor};

use super::*;
use crate::kernels_ref::testing::uniform;

#[test]
fn window_starts_match_monai_by_hand() {
    // 10 voxels, ROI 4: interval 4 (overlap 0) -> 0, 4, then flush 6.
    assert_eq!(window_starts(10, 4, 0.0), vec![0, 4, 6]);
    // overlap 0.5 -> interval 2: 0, 2, 4, 6.
    assert_eq!(window_starts(10, 4, 0.5), vec![0, 2, 4, 6]);
    // overlap 0.75 -> interval 1.
    assert_eq!(window_starts(6, 4, 0.75), vec![0, 1, 2]);
    // ROI equal to (or larger than) the size: one window.
    assert_eq!(window_starts(4, 4, 0.5), vec![0]);
    assert_eq!(window_starts(3, 8, 0.5), vec![0]);
    // Exact tiling.
    assert_eq!(window_starts(8, 4, 0.0), vec![0, 4]);
}

fn volume(shape: [usize; 5], seed: u64) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_vec(uniform(n, seed, 100.0), shape.to_vec(), &Device::Cpu).unwrap()
}

#[test]
fn an_identity_model_reproduces_its_input() {
    for (shape, roi) in [
        ([1, 2, 11, 9, 7], [4, 4, 4]),
        ([2, 1, 5, 13, 6], [4, 5, 3]),
        ([1, 1, 3, 2, 5], [4, 4, 4]), // smaller than the ROI: padded, cropped back
    ] {
        let x = volume(shape, 1);
        let want: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
        for overlap in [0.0, 0.25, 0.5, 0.75] {
            for (blend, exact) in [
                (Blend::Constant, true),
                (Blend::Gaussian { sigma_scale: 0.125 }, false),
            ] {
                let sw = SlidingWindow {
                    roi,
                    batch: 3,
                    overlap,
                    blend,
                    pad_value: -7.0,
                };
                let y = sw.run(&x, |w| Ok(w.clone())).unwrap();
                assert_eq!(y.dims(), x.dims());
                let got: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
                for (g, w) in got.iter().zip(&want) {
                    if exact {
                        assert_eq!(g, w, "{shape:?} {overlap} {blend:?}");
                    } else {
                        assert!((g - w).abs() <= 1e-6 * w.abs().max(1.0), "{g} vs {w}");
                    }
                }
            }
        }
    }
}

#[test]
fn constant_blending_averages_overlapping_windows() {
    // One axis of 6 with ROI 4, overlap 0.5: windows at 0 and 2 (interval 2)
    // -> starts 0, 2; each window predicts its own index + 1.
    let x = Tensor::zeros((1, 1, 6, 1, 1), candle_core::DType::F32, &Device::Cpu).unwrap();
    let mut calls = 0f32;
    let sw = SlidingWindow {
        roi: [4, 1, 1],
        batch: 1,
        overlap: 0.5,
        blend: Blend::Constant,
        pad_value: 0.0,
    };
    let y = sw
        .run(&x, |w| {
            calls += 1.0;
            Ok((w.ones_like()? * f64::from(calls))?)
        })
        .unwrap();
    let got: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
    // Voxels 0-1: window 1 only; 2-3: windows 1 and 2; 4-5: window 2.
    assert_eq!(got, vec![1.0, 1.0, 1.5, 1.5, 2.0, 2.0]);
}

#[test]
fn the_gaussian_map_peaks_at_the_centre_and_stays_positive() {
    let m = importance_map([5, 5, 5], Blend::Gaussian { sigma_scale: 0.125 });
    assert_eq!(m[62], 1.0, "centre voxel (2, 2, 2)");
    assert!(m.iter().all(|&v| (1e-3..=1.0).contains(&v)));
    assert!(m[0] < m[31]);
}

#[test]
fn dice_counts_overlaps_and_ignores_absent_classes() {
    let truth = [0u16, 0, 1, 1, 1, 2, 2, 0];
    let pred = [0u16, 1, 1, 1, 0, 2, 0, 0];
    let d = dice_per_class(&pred, &truth, 4);
    // class 0: P = {0,4,6,7}, T = {0,1,7}, P ∩ T = {0,7}: 2·2/7.
    assert!((d[0] - 2.0 * 2.0 / 7.0).abs() < 1e-12);
    // class 1: P = {1,2,3}, T = {2,3,4}: 2·2/6.
    assert!((d[1] - 4.0 / 6.0).abs() < 1e-12);
    // class 2: P = {5}, T = {5,6}: 2/3.
    assert!((d[2] - 2.0 / 3.0).abs() < 1e-12);
    assert!(d[3].is_nan(), "absent from the truth");
    let mean = mean_ignoring_nan(&d);
    assert!((mean - (4.0 / 7.0 + 4.0 / 6.0 + 2.0 / 3.0) / 3.0).abs() < 1e-12);
}

fn cube(shape: [usize; 3], lo: [usize; 3], hi: [usize; 3]) -> Vec<bool> {
    let mut m = vec![false; shape.iter().product()];
    for x in lo[0]..hi[0] {
        for y in lo[1]..hi[1] {
            for z in lo[2]..hi[2] {
                m[(x * shape[1] + y) * shape[2] + z] = true;
            }
        }
    }
    m
}

#[test]
fn hd95_of_shifted_cubes_is_the_shift() {
    let shape = [20, 12, 12];
    let a = cube(shape, [3, 3, 3], [9, 9, 9]);
    let b = cube(shape, [6, 3, 3], [12, 9, 9]);
    // B is A moved 3 voxels along x. Surface distances are 0 where the side
    // faces coincide, 1-3 elsewhere, and 3 for the far x-faces (36 of each
    // cube's 152 surface voxels, over 5%), so the 95th percentile is 3
    // voxels, i.e. 3 × the x spacing.
    let d = hd95(&a, &b, shape, [1.0, 1.0, 1.0]);
    assert!((d - 3.0).abs() < 1e-12, "{d}");
    let d = hd95(&a, &b, shape, [0.5, 2.0, 2.0]);
    assert!((d - 1.5).abs() < 1e-12, "{d}");
    assert_eq!(hd95(&a, &a, shape, [1.0; 3]), 0.0);
    assert!(hd95(&a, &vec![false; a.len()], shape, [1.0; 3]).is_infinite());
    let none = vec![false; a.len()];
    assert!(hd95(&none, &none, shape, [1.0; 3]).is_nan());
}

#[test]
fn the_distance_transform_matches_brute_force() {
    let shape = [7, 5, 6];
    let spacing = [0.7, 1.3, 2.1];
    for seed in 0..4 {
        let r = uniform(shape.iter().product(), seed, 1.0);
        let feature: Vec<bool> = r.iter().map(|&v| v > 0.85).collect();
        let got = distance_transform(&feature, shape, spacing);
        let at = |i: usize| {
            [
                i / (shape[1] * shape[2]),
                (i / shape[2]) % shape[1],
                i % shape[2],
            ]
        };
        for (i, g) in got.iter().enumerate() {
            let p = at(i);
            let want = feature
                .iter()
                .enumerate()
                .filter(|(_, f)| **f)
                .map(|(j, _)| {
                    let q = at(j);
                    (0..3)
                        .map(|a| ((p[a] as f64 - q[a] as f64) * spacing[a]).powi(2))
                        .sum::<f64>()
                        .sqrt()
                })
                .fold(f64::INFINITY, f64::min);
            assert!(
                (g - want).abs() < 1e-9,
                "seed {seed} voxel {i}: {g} vs {want}"
            );
        }
    }
}

#[test]
fn percentiles_interpolate_like_numpy() {
    let mut v = vec![4.0, 1.0, 3.0, 2.0];
    // numpy.percentile([1,2,3,4], 95) = 3.85
    assert!((percentile(&mut v, 95.0) - 3.85).abs() < 1e-12);
    assert_eq!(percentile(&mut v, 0.0), 1.0);
}
