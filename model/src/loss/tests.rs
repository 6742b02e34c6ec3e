//! Loss tests: values against direct f64 formulas, gradients against
//! central finite differences (f64, h = 1e-5, tolerance 1e-6·max(1, |g|)).

use candle_core::{DType, Device, Tensor, Var};

use super::*;

/// Deterministic pseudo-random values in [-scale, scale).
fn values(n: usize, seed: u64, scale: f64) -> Vec<f64> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) * scale
        })
        .collect()
}

fn tensor(v: Vec<f64>, shape: (usize, usize)) -> Tensor {
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn scalar(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
}

/// Compares candle's gradient of `f` at `x0` with central differences.
fn check_gradient(x0: &[f64], shape: (usize, usize), f: impl Fn(&Tensor) -> Tensor) {
    let var = Var::from_tensor(&tensor(x0.to_vec(), shape)).unwrap();
    let loss = f(var.as_tensor());
    let grads = loss.backward().unwrap();
    let g: Vec<f64> = grads
        .get(var.as_tensor())
        .expect("input has a gradient")
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let h = 1e-5;
    let mut max_abs: f64 = 0.0;
    for i in 0..x0.len() {
        let mut p = x0.to_vec();
        p[i] += h;
        let mut m = x0.to_vec();
        m[i] -= h;
        let fd = (scalar(&f(&tensor(p, shape))) - scalar(&f(&tensor(m, shape)))) / (2.0 * h);
        let tol = 1e-6 * g[i].abs().max(1.0);
        assert!(
            (fd - g[i]).abs() < tol,
            "entry {i}: fd {fd} vs autograd {}",
            g[i]
        );
        max_abs = max_abs.max(g[i].abs());
    }
    assert!(max_abs > 1e-4, "gradient is trivially zero");
}

fn softmax_rows(x: &[f64], k: usize, temp: f64) -> Vec<f64> {
    x.chunks(k)
        .flat_map(|r| {
            let m = r.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = r.iter().map(|v| ((v - m) / temp).exp()).collect();
            let s: f64 = e.iter().sum();
            e.into_iter().map(move |v| v / s)
        })
        .collect()
}

/// −Σ_k t log_softmax(s/τ), averaged over the rows of one chunk.
fn ce_chunk(s: &[f64], t: &[f64], k: usize) -> f64 {
    let ls: Vec<f64> = softmax_rows(s, k, STUDENT_TEMP)
        .iter()
        .map(|p| p.ln())
        .collect();
    let rows = s.len() / k;
    -ls.iter().zip(t).map(|(a, b)| a * b).sum::<f64>() / rows as f64
}

const B: usize = 3;
const K: usize = 5;

#[test]
fn dino_loss_matches_swapped_pairs_formula() {
    let sg = values(2 * B * K, 1, 2.0);
    let sl = values(3 * B * K, 2, 2.0);
    let tp = softmax_rows(&values(2 * B * K, 3, 2.0), K, 0.5);
    let loss = dino_loss(
        &tensor(sg.clone(), (2 * B, K)),
        Some(&tensor(sl.clone(), (3 * B, K))),
        &tensor(tp.clone(), (2 * B, K)),
        2,
        STUDENT_TEMP,
    )
    .unwrap();
    // 3 locals · 2 teachers + 2 globals · 1 other teacher.
    assert_eq!(loss.n_pairs, 8);
    let c = B * K;
    let (t0, t1) = (&tp[..c], &tp[c..]);
    // Spec: global term = CE(student globals, [t1 | t0]) · 2 / n_pairs.
    let swapped: Vec<f64> = t1.iter().chain(t0).cloned().collect();
    let want_global = ce_chunk(&sg, &swapped, K) * 2.0 / 8.0;
    let mut want_local = 0.0;
    for l in 0..3 {
        for t in [t0, t1] {
            want_local += ce_chunk(&sl[l * c..(l + 1) * c], t, K);
        }
    }
    want_local /= 8.0;
    assert!((scalar(&loss.global) - want_global).abs() < 1e-12);
    assert!((scalar(&loss.local) - want_local).abs() < 1e-12);
    let total = scalar(&loss.total().unwrap());
    assert!((total - want_global - want_local).abs() < 1e-12);
}

#[test]
fn dino_loss_gradient_matches_finite_differences() {
    let tp = tensor(softmax_rows(&values(2 * B * K, 4, 2.0), K, 0.5), (2 * B, K));
    let sl = tensor(values(2 * B * K, 5, 2.0), (2 * B, K));
    let sg = values(2 * B * K, 6, 2.0);
    check_gradient(&sg, (2 * B, K), |x| {
        dino_loss(x, Some(&sl), &tp, 2, STUDENT_TEMP)
            .unwrap()
            .total()
            .unwrap()
    });
    let sgt = tensor(sg, (2 * B, K));
    check_gradient(&values(2 * B * K, 7, 2.0), (2 * B, K), |x| {
        dino_loss(&sgt, Some(x), &tp, 2, STUDENT_TEMP)
            .unwrap()
            .total()
            .unwrap()
    });
}

#[test]
fn dino_loss_rejects_bad_shapes() {
    let t = tensor(vec![0.2; 4 * K], (4, K));
    let s = tensor(vec![0.0; 3 * K], (3, K));
    assert!(dino_loss(&s, None, &t, 2, STUDENT_TEMP).is_err());
    let s1 = tensor(vec![0.0; 4 * K], (4, K));
    assert!(
        dino_loss(&s1, None, &t, 1, STUDENT_TEMP).is_err(),
        "no pairs"
    );
}

#[test]
fn ibot_loss_value_and_gradient() {
    // 2B = 4 images of 3 tokens; image 2 has no mask but still counts.
    let masks = [
        true, false, true, //
        false, true, false, //
        false, false, false, //
        true, true, true,
    ];
    let (idx, w) = masked_indices_and_weights(&masks, 3, &Device::Cpu).unwrap();
    assert_eq!(idx.to_vec1::<u32>().unwrap(), [0, 2, 4, 9, 10, 11]);
    let wv: Vec<f32> = w.to_vec1().unwrap();
    let third = 1.0 / 3.0;
    assert_eq!(wv, [0.5, 0.5, 1.0, third, third, third]);
    let m = 6;
    let s = values(m * K, 8, 2.0);
    let t = softmax_rows(&values(m * K, 9, 2.0), K, 0.5);
    let tt = tensor(t.clone(), (m, K));
    let loss = ibot_loss(&tensor(s.clone(), (m, K)), &tt, &w, 4, STUDENT_TEMP).unwrap();
    let ls: Vec<f64> = softmax_rows(&s, K, STUDENT_TEMP)
        .iter()
        .map(|p| p.ln())
        .collect();
    let want: f64 = -(0..m)
        .map(|j| {
            let l: f64 = (0..K).map(|k| t[j * K + k] * ls[j * K + k]).sum();
            wv[j] as f64 * l
        })
        .sum::<f64>()
        / 4.0;
    assert!(
        (scalar(&loss) - want).abs() < 1e-6,
        "{} vs {want}",
        scalar(&loss)
    );
    check_gradient(&s, (m, K), |x| {
        ibot_loss(x, &tt, &w, 4, STUDENT_TEMP).unwrap()
    });
}

#[test]
fn koleo_value_and_gradient() {
    // Three 2-D points: nearest neighbours by angle.
    let x = [1.0, 0.0, 0.0, 2.0, 1.0, 1.0];
    let loss = scalar(&koleo_loss(&tensor(x.to_vec(), (3, 2))).unwrap());
    let r = 0.5f64.sqrt();
    // a=(1,0), b=(0,1), c=(r,r): nn(a)=c, nn(b)=c, nn(c)=a (first of a tie).
    let d_ac = ((1.0 - r + 1e-8).powi(2) + (-r + 1e-8).powi(2)).sqrt();
    let d_bc = ((-r + 1e-8).powi(2) + (1.0 - r + 1e-8).powi(2)).sqrt();
    let d_ca = ((r - 1.0 + 1e-8).powi(2) + (r + 1e-8).powi(2)).sqrt();
    let want = -((d_ac + 1e-8).ln() + (d_bc + 1e-8).ln() + (d_ca + 1e-8).ln()) / 3.0;
    assert!((loss - want).abs() < 1e-12, "{loss} vs {want}");
    check_gradient(&values(6 * 4, 10, 1.0), (6, 4), |x| koleo_loss(x).unwrap());
    // One row: its own neighbour, distance ‖ε·1‖ (PyTorch gives the same).
    let one = scalar(&koleo_loss(&tensor(vec![3.0, 4.0], (1, 2))).unwrap());
    let d = (2.0f64).sqrt() * 1e-8;
    assert!((one + (d + 1e-8).ln()).abs() < 1e-9);
}

/// Independent f64 Sinkhorn-Knopp for comparison.
fn sinkhorn_ref(logits: &[f64], n: usize, k: usize, temp: f64, iters: usize) -> Vec<f64> {
    let mut q: Vec<f64> = logits.iter().map(|v| (v / temp).exp()).collect(); // (n, k)
    let total: f64 = q.iter().sum();
    q.iter_mut().for_each(|v| *v /= total);
    for _ in 0..iters {
        for p in 0..k {
            let s: f64 = (0..n).map(|i| q[i * k + p]).sum();
            (0..n).for_each(|i| q[i * k + p] /= s * k as f64);
        }
        for i in 0..n {
            let s: f64 = q[i * k..(i + 1) * k].iter().sum();
            q[i * k..(i + 1) * k]
                .iter_mut()
                .for_each(|v| *v /= s * n as f64);
        }
    }
    q.iter().map(|v| v * n as f64).collect()
}

#[test]
fn sinkhorn_knopp_sums_and_reference() {
    let (n, k) = (6, 4);
    let logits = values(n * k, 11, 1.0);
    let t = tensor(logits.clone(), (n, k)).to_dtype(DType::F32).unwrap();
    let q = sinkhorn_knopp(&t, 0.07, SINKHORN_ITERATIONS).unwrap();
    assert_eq!(q.dtype(), DType::F32);
    let got: Vec<f32> = q.flatten_all().unwrap().to_vec1().unwrap();
    let want = sinkhorn_ref(&logits, n, k, 0.07, SINKHORN_ITERATIONS);
    for (g, w) in got.iter().zip(&want) {
        assert!((*g as f64 - w).abs() < 1e-5 * w.max(1.0), "{g} vs {w}");
    }
    // Samples (rows) sum to exactly 1 after the last column step.
    for r in got.chunks(k) {
        assert!((r.iter().sum::<f32>() - 1.0).abs() < 1e-5);
    }
    // Prototypes (columns) converge to n/K with more iterations.
    let q = sinkhorn_knopp(&t, 0.07, 200).unwrap();
    let cols: Vec<f32> = q.sum(0).unwrap().to_vec1().unwrap();
    for c in cols {
        assert!((c - n as f32 / k as f32).abs() < 1e-3, "column sum {c}");
    }
}

/// The CPU path and the composed (any-device) path agree, and the CPU path
/// gives the same bits on 1 and 4 threads.
#[test]
fn sinkhorn_cpu_path_matches_the_composed_path_for_any_thread_count() {
    let (n, k) = (7, 2500);
    // Head logits are cosines (|l| ≤ 1); 3DINO subtracts no maximum.
    let logits: Vec<f32> = values(n * k, 12, 1.0).iter().map(|&v| v as f32).collect();
    let t = Tensor::from_vec(logits.clone(), (n, k), &Device::Cpu).unwrap();
    let composed: Vec<f32> = super::centering::sinkhorn_composed(&t, 0.04, 3)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let run = |threads: usize| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(|| super::centering::sinkhorn_cpu(&logits, n, k, 0.04, 3))
    };
    let (one, four) = (run(1), run(4));
    assert!(
        one.iter()
            .zip(&four)
            .all(|(a, b)| a.to_bits() == b.to_bits())
    );
    for (g, w) in one.iter().zip(&composed) {
        assert!((g - w).abs() <= 1e-5 * w.abs().max(1e-3), "{g} vs {w}");
    }
}

#[test]
fn softmax_centering_uses_then_updates_center() {
    let dev = Device::Cpu;
    let mut c = SoftmaxCentering::new(3, 0.9, &dev).unwrap();
    let t = Tensor::new(&[[1f32, 2.0, 3.0], [3.0, 2.0, 1.0]], &dev).unwrap();
    let p0: Vec<Vec<f32>> = c.probs(&t, 1.0).unwrap().to_vec2().unwrap();
    let plain: Vec<Vec<f32>> = candle_nn::ops::softmax(&t, 1).unwrap().to_vec2().unwrap();
    assert_eq!(p0, plain);
    c.update(&t).unwrap();
    let center: Vec<Vec<f32>> = c.center().to_vec2().unwrap();
    for v in &center[0] {
        assert!((v - 0.2).abs() < 1e-6);
    }
    let t2 = Tensor::new(&[[0f32, 1.0, 0.0]], &dev).unwrap();
    c.update(&t2).unwrap();
    let center: Vec<Vec<f32>> = c.center().to_vec2().unwrap();
    let want = [0.18f32, 0.28, 0.18];
    for (a, b) in center[0].iter().zip(want) {
        assert!((a - b).abs() < 1e-6, "{a} vs {b}");
    }
    let p: Vec<Vec<f32>> = c.probs(&t2, 0.5).unwrap().to_vec2().unwrap();
    let z = [
        (0.0 - 0.18) / 0.5,
        (1.0 - 0.28) / 0.5,
        (0.0 - 0.18) / 0.5f32,
    ];
    let s: f32 = z.iter().map(|v| v.exp()).sum();
    for (a, zi) in p[0].iter().zip(z) {
        assert!((a - zi.exp() / s).abs() < 1e-6);
    }
}
