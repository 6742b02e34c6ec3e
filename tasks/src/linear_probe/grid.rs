//! The probe grid of spec §4.3 on cached features: one `Linear(dim ->
//! classes)` per (n_last_blocks, avgpool, learning rate), weights normal with
//! std 0.01 and zero bias, trained together on the same batches (their
//! cross-entropy losses summed, so each gets its own gradient) with SGD
//! (momentum 0.9, no weight decay) and a cosine schedule to 0; validation
//! accuracy every `eval_period` iterations keeps the "best_val" snapshot of
//! all classifiers, from which the one with the best validation accuracy is
//! chosen. Plain f32 loops: the classifiers are tiny.

use dino3d_model::candle_core::{self as candle_core, DType, Device, Tensor};
use dino3d_model::schedule::CosineSchedule;
use dino3d_pipeline::exec::{InfiniteSampler, Shuffle};
use rayon::prelude::*;

use super::metrics::accuracy;
use crate::error::Result;

/// Seeded draws for initialisation and batch order (the model crate's
/// SplitMix64 stream).
#[derive(Debug, Clone)]
pub(crate) struct SplitMix64(dino3d_model::init::SplitMix64);

impl SplitMix64 {
    pub(crate) fn new(seed: u64) -> Self {
        Self(dino3d_model::init::SplitMix64::new(seed))
    }

    /// Uniform in [0, 1).
    pub(crate) fn uniform(&mut self) -> f64 {
        self.0.next_f64()
    }

    /// Standard normal (Box–Muller).
    pub(crate) fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform();
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// Uniform index below `n` (> 0).
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.uniform() * n as f64) as usize % n
    }

    /// Fisher–Yates shuffle.
    pub(crate) fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, self.below(i + 1));
        }
    }
}

/// Rows of features, row-major.
#[derive(Debug, Clone, Default)]
pub(crate) struct Matrix {
    pub(crate) dim: usize,
    pub(crate) data: Vec<f32>,
}

impl Matrix {
    pub(crate) fn rows(&self) -> usize {
        self.data.len().checked_div(self.dim).unwrap_or(0)
    }

    pub(crate) fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }
}

/// One split: an input matrix per feature family, and the targets.
#[derive(Debug, Clone, Default)]
pub(crate) struct Split {
    pub(crate) inputs: Vec<Matrix>,
    pub(crate) targets: Vec<usize>,
}

/// One classifier of the grid.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Spec {
    /// Index of its feature family (its input matrix).
    pub(crate) family: usize,
    pub(crate) n_blocks: usize,
    pub(crate) avgpool: bool,
    /// Learning rate after the `batch / 256` scaling.
    pub(crate) lr: f64,
}

impl Spec {
    /// DINOv2's classifier name, e.g. `classifier_4_blocks_avgpool_True_lr_0_01000`.
    pub(crate) fn name(&self) -> String {
        format!(
            "classifier_{}_blocks_avgpool_{}_lr_{:.5}",
            self.n_blocks,
            if self.avgpool { "True" } else { "False" },
            self.lr
        )
        .replace('.', "_")
    }
}

/// The grid: families (n_blocks, avgpool) in the given order, each with
/// every learning rate scaled by `batch / 256`.
pub(crate) fn grid(
    n_last_blocks: &[usize],
    avgpool: &[bool],
    learning_rates: &[f64],
    batch_size: usize,
) -> (Vec<(usize, bool)>, Vec<Spec>) {
    let scale = batch_size as f64 / 256.0;
    let mut families = Vec::new();
    let mut specs = Vec::new();
    for &n in n_last_blocks {
        for &a in avgpool {
            let family = families.len();
            families.push((n, a));
            for &lr in learning_rates {
                specs.push(Spec {
                    family,
                    n_blocks: n,
                    avgpool: a,
                    lr: lr * scale,
                });
            }
        }
    }
    (families, specs)
}

/// `Linear(dim -> classes)`: `w` is `classes x dim`, row-major.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Linear {
    pub(crate) dim: usize,
    pub(crate) classes: usize,
    pub(crate) w: Vec<f32>,
    pub(crate) b: Vec<f32>,
}

impl Linear {
    /// Weights normal with std 0.01, bias 0.
    pub(crate) fn init(dim: usize, classes: usize, rng: &mut SplitMix64) -> Self {
        Self {
            dim,
            classes,
            w: (0..dim * classes)
                .map(|_| (0.01 * rng.normal()) as f32)
                .collect(),
            b: vec![0.0; classes],
        }
    }

    pub(crate) fn logits(&self, x: &[f32]) -> Vec<f32> {
        (0..self.classes)
            .map(|c| {
                let w = &self.w[c * self.dim..(c + 1) * self.dim];
                w.iter().zip(x).map(|(a, b)| a * b).sum::<f32>() + self.b[c]
            })
            .collect()
    }

    /// Logits of every row.
    pub(crate) fn predict(&self, m: &Matrix) -> Vec<Vec<f32>> {
        (0..m.rows()).map(|i| self.logits(m.row(i))).collect()
    }
}

/// Mean cross-entropy over the batch rows `idx` of `x`, and its gradient
/// with respect to `w` and `b` (the reference of the batched training).
#[cfg(test)]
pub(crate) fn ce_grad(
    lin: &Linear,
    x: &Matrix,
    targets: &[usize],
    idx: &[usize],
) -> (f64, Vec<f32>, Vec<f32>) {
    let mut gw = vec![0f32; lin.w.len()];
    let mut gb = vec![0f32; lin.classes];
    let mut loss = 0f64;
    let inv = 1.0 / idx.len() as f64;
    for &i in idx {
        let row = x.row(i);
        let p = super::metrics::softmax(&lin.logits(row));
        let t = targets[i];
        loss -= p[t].max(f64::MIN_POSITIVE).ln() * inv;
        for c in 0..lin.classes {
            let g = ((p[c] - f64::from(u8::from(c == t))) * inv) as f32;
            gb[c] += g;
            for (gw, &xv) in gw[c * lin.dim..(c + 1) * lin.dim].iter_mut().zip(row) {
                *gw += g * xv;
            }
        }
    }
    (loss, gw, gb)
}

/// PyTorch's SGD with momentum, no dampening, no weight decay:
/// `buf = momentum * buf + grad; p -= lr * buf` (the first `buf` is the grad).
#[cfg(test)]
#[derive(Debug, Clone)]
pub(crate) struct Sgd {
    momentum: f32,
    buf_w: Vec<f32>,
    buf_b: Vec<f32>,
}

#[cfg(test)]
impl Sgd {
    pub(crate) fn new(lin: &Linear, momentum: f32) -> Self {
        Self {
            momentum,
            buf_w: vec![0.0; lin.w.len()],
            buf_b: vec![0.0; lin.b.len()],
        }
    }

    pub(crate) fn step(&mut self, lin: &mut Linear, gw: &[f32], gb: &[f32], lr: f64) {
        let lr = lr as f32;
        for ((p, b), g) in lin.w.iter_mut().zip(&mut self.buf_w).zip(gw) {
            *b = self.momentum * *b + g;
            *p -= lr * *b;
        }
        for ((p, b), g) in lin.b.iter_mut().zip(&mut self.buf_b).zip(gb) {
            *b = self.momentum * *b + g;
            *p -= lr * *b;
        }
    }
}

/// `CosineAnnealingLR(T_max = total, eta_min = 0)` at step `it`: the one
/// cosine schedule, without warmup (the reference training's).
#[cfg(test)]
pub(crate) fn cosine_lr(base: f64, it: usize, total: usize) -> f64 {
    CosineSchedule::new(base, 0.0, total, 0, 0.0).at(it)
}

/// The probe's epoch shuffle: one SplitMix64 stream across epochs, each
/// epoch reshuffling the previous one's order in place.
#[derive(Debug, Clone)]
pub(crate) struct ContinuousShuffle(SplitMix64);

impl Shuffle for ContinuousShuffle {
    fn shuffle(&mut self, order: &mut [usize], _epoch: u64) {
        self.0.shuffle(order);
    }
}

/// An endless stream of batches of the `n` rows: a fresh seeded permutation
/// every pass (batches run across pass boundaries), through the pipeline's
/// epoch sampler.
pub(crate) fn batches(n: usize, seed: u64) -> InfiniteSampler<ContinuousShuffle> {
    InfiniteSampler::with_shuffle(ContinuousShuffle(SplitMix64::new(seed)), n, 0, 1, 0, 0)
}

/// Validation accuracy of each classifier.
pub(crate) fn evaluate(classifiers: &[Linear], specs: &[Spec], split: &Split) -> Vec<f64> {
    classifiers
        .par_iter()
        .zip(specs)
        .map(|(c, s)| accuracy(&c.predict(&split.inputs[s.family]), &split.targets))
        .collect()
}

/// The "best_val" checkpoint: all classifiers as they were at the
/// evaluation whose best validation accuracy was highest (the earliest on
/// ties).
#[derive(Debug, Clone)]
pub(crate) struct BestVal {
    pub(crate) accuracy: f64,
    pub(crate) iteration: usize,
    pub(crate) snapshot: Vec<Linear>,
}

impl BestVal {
    pub(crate) fn new() -> Self {
        Self {
            accuracy: f64::NEG_INFINITY,
            iteration: 0,
            snapshot: Vec::new(),
        }
    }

    /// Offers the state after `iteration` with these validation accuracies;
    /// keeps it if its best beats every earlier one.
    pub(crate) fn offer(&mut self, iteration: usize, accs: &[f64], classifiers: &[Linear]) -> bool {
        let best = accs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        if best > self.accuracy {
            self.accuracy = best;
            self.iteration = iteration;
            self.snapshot = classifiers.to_vec();
            true
        } else {
            false
        }
    }
}

/// Settings of one grid run.
#[derive(Debug, Clone)]
pub(crate) struct TrainConfig {
    pub(crate) iterations: usize,
    pub(crate) batch_size: usize,
    pub(crate) eval_period: usize,
    pub(crate) seed: u64,
}

/// One validation pass during training.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EvalPoint {
    /// Iterations done.
    pub iteration: usize,
    /// The best classifier's validation accuracy.
    pub best_val_accuracy: f64,
    /// Its name.
    pub best_classifier: String,
    /// Mean training loss since the previous point.
    pub mean_loss: f64,
}

/// One feature family's classifiers, stacked: rows `p*C..(p+1)*C` of `w`
/// are the classifier `specs[p]`.
struct FamilyState {
    specs: Vec<usize>,
    x: Tensor,
    w: Tensor,
    b: Tensor,
    buf_w: Tensor,
    buf_b: Tensor,
    lr: Tensor,
}

impl FamilyState {
    /// The classifiers as [`Linear`]s, with their spec indices.
    fn linears(&self, classes: usize) -> candle_core::Result<Vec<(usize, Linear)>> {
        let w: Vec<Vec<f32>> = self.w.to_vec2()?;
        let b: Vec<f32> = self.b.to_vec1()?;
        let dim = self.x.dim(1)?;
        Ok(self
            .specs
            .iter()
            .enumerate()
            .map(|(p, &k)| {
                (
                    k,
                    Linear {
                        dim,
                        classes,
                        w: w[p * classes..(p + 1) * classes].concat(),
                        b: b[p * classes..(p + 1) * classes].to_vec(),
                    },
                )
            })
            .collect())
    }

    /// One SGD step on the rows `idx` (one-hot targets `y`, `(B, C)`) at
    /// `factor` times each base learning rate; returns the summed mean
    /// cross-entropies.
    fn step(&mut self, idx: &Tensor, y: &Tensor, factor: f64) -> candle_core::Result<f64> {
        let (bsz, classes) = y.dims2()?;
        let l = self.specs.len();
        let xb = self.x.index_select(idx, 0)?;
        let z = xb
            .matmul(&self.w.t()?)?
            .broadcast_add(&self.b)?
            .reshape((bsz, l, classes))?;
        let zc = z.broadcast_sub(&z.max_keepdim(2)?)?;
        let e = zc.exp()?;
        let sum = e.sum_keepdim(2)?;
        let p = e.broadcast_div(&sum)?;
        let y = y.unsqueeze(1)?.broadcast_as((bsz, l, classes))?;
        let logp = zc.broadcast_sub(&sum.log()?)?;
        let loss = -(logp * &y)?.sum_all()?.to_scalar::<f32>()? as f64 / bsz as f64;
        let g = ((p - y)? / bsz as f64)?.reshape((bsz, l * classes))?;
        let gw = g.t()?.matmul(&xb)?;
        let gb = g.sum(0)?;
        self.buf_w = ((&self.buf_w * 0.9)? + gw)?;
        self.buf_b = ((&self.buf_b * 0.9)? + gb)?;
        let lr = (&self.lr * factor)?;
        self.w = (&self.w - self.buf_w.broadcast_mul(&lr.unsqueeze(1)?)?)?;
        self.b = (&self.b - (&self.buf_b * &lr)?)?;
        Ok(loss)
    }
}

/// Trains the grid; returns the best_val checkpoint and the validation
/// history. The classifiers of one feature family train as one stacked
/// matrix (candle), each with its own learning rate; the result equals
/// training them one by one.
pub(crate) fn train(
    specs: &[Spec],
    train: &Split,
    val: &Split,
    classes: usize,
    cfg: &TrainConfig,
    on_iteration: &(dyn Fn(usize) + Sync),
) -> Result<(BestVal, Vec<EvalPoint>)> {
    let dev = Device::Cpu;
    let mut rng = SplitMix64::new(cfg.seed);
    let init: Vec<Linear> = specs
        .iter()
        .map(|s| Linear::init(train.inputs[s.family].dim, classes, &mut rng))
        .collect();
    let mut families = Vec::new();
    for (f, m) in train.inputs.iter().enumerate() {
        let members: Vec<usize> = (0..specs.len()).filter(|&k| specs[k].family == f).collect();
        if members.is_empty() {
            continue;
        }
        let rows = members.len() * classes;
        let w: Vec<f32> = members
            .iter()
            .flat_map(|&k| init[k].w.iter().copied())
            .collect();
        let lr: Vec<f32> = members
            .iter()
            .flat_map(|&k| std::iter::repeat_n(specs[k].lr as f32, classes))
            .collect();
        families.push(FamilyState {
            x: Tensor::from_slice(&m.data, (m.rows(), m.dim), &dev)?,
            w: Tensor::from_vec(w, (rows, m.dim), &dev)?,
            b: Tensor::zeros(rows, DType::F32, &dev)?,
            buf_w: Tensor::zeros((rows, m.dim), DType::F32, &dev)?,
            buf_b: Tensor::zeros(rows, DType::F32, &dev)?,
            lr: Tensor::from_vec(lr, rows, &dev)?,
            specs: members,
        });
    }
    let snapshot = |families: &[FamilyState]| -> Result<Vec<Linear>> {
        let mut out: Vec<Option<Linear>> = vec![None; specs.len()];
        for f in families {
            for (k, l) in f.linears(classes)? {
                out[k] = Some(l);
            }
        }
        Ok(out
            .into_iter()
            .map(|l| l.expect("every spec has a family"))
            .collect())
    };
    let mut sampler = batches(train.targets.len(), cfg.seed ^ 0x5A4D_504C_4552);
    let schedule = CosineSchedule::new(1.0, 0.0, cfg.iterations, 0, 0.0);
    let mut best = BestVal::new();
    let mut history = Vec::new();
    let mut loss_sum = 0f64;
    let mut loss_n = 0usize;
    for it in 0..cfg.iterations {
        let idx = sampler.next_batch(cfg.batch_size);
        let mut onehot = vec![0f32; idx.len() * classes];
        for (r, &i) in idx.iter().enumerate() {
            onehot[r * classes + train.targets[i]] = 1.0;
        }
        let y = Tensor::from_vec(onehot, (idx.len(), classes), &dev)?;
        let idx_t = Tensor::from_vec(
            idx.iter().map(|&i| i as u32).collect::<Vec<_>>(),
            idx.len(),
            &dev,
        )?;
        let factor = schedule.at(it);
        for f in &mut families {
            loss_sum += f.step(&idx_t, &y, factor)?;
        }
        loss_n += 1;
        let last = it + 1 == cfg.iterations;
        if last || (it + 1) % cfg.eval_period == 0 {
            let classifiers = snapshot(&families)?;
            let mean_loss = loss_sum / loss_n.max(1) as f64;
            record_eval(
                it + 1,
                &classifiers,
                specs,
                val,
                mean_loss,
                &mut best,
                &mut history,
            );
            (loss_sum, loss_n) = (0.0, 0);
        }
        on_iteration(it + 1);
    }
    Ok((best, history))
}

/// [`train`] with plain f32 loops, one classifier at a time: the reference
/// the batched candle version is checked against.
#[cfg(test)]
fn train_reference(
    specs: &[Spec],
    train: &Split,
    val: &Split,
    classes: usize,
    cfg: &TrainConfig,
    on_iteration: &(dyn Fn(usize) + Sync),
) -> (BestVal, Vec<EvalPoint>) {
    let mut rng = SplitMix64::new(cfg.seed);
    let mut classifiers: Vec<Linear> = specs
        .iter()
        .map(|s| Linear::init(train.inputs[s.family].dim, classes, &mut rng))
        .collect();
    let mut opts: Vec<Sgd> = classifiers.iter().map(|c| Sgd::new(c, 0.9)).collect();
    let mut sampler = batches(train.targets.len(), cfg.seed ^ 0x5A4D_504C_4552);
    let mut best = BestVal::new();
    let mut history = Vec::new();
    let mut loss_sum = 0f64;
    let mut loss_n = 0usize;
    for it in 0..cfg.iterations {
        let idx = sampler.next_batch(cfg.batch_size);
        let losses: Vec<f64> = classifiers
            .par_iter_mut()
            .zip(&mut opts)
            .zip(specs)
            .map(|((c, o), s)| {
                let (loss, gw, gb) = ce_grad(c, &train.inputs[s.family], &train.targets, &idx);
                o.step(c, &gw, &gb, cosine_lr(s.lr, it, cfg.iterations));
                loss
            })
            .collect();
        loss_sum += losses.iter().sum::<f64>();
        loss_n += 1;
        let last = it + 1 == cfg.iterations;
        if last || (it + 1) % cfg.eval_period == 0 {
            let mean_loss = loss_sum / loss_n.max(1) as f64;
            record_eval(
                it + 1,
                &classifiers,
                specs,
                val,
                mean_loss,
                &mut best,
                &mut history,
            );
            (loss_sum, loss_n) = (0.0, 0);
        }
        on_iteration(it + 1);
    }
    (best, history)
}

/// One validation point: scores every classifier on `val`, offers them to
/// the best-so-far snapshot and appends the history entry.
fn record_eval(
    iteration: usize,
    classifiers: &[Linear],
    specs: &[Spec],
    val: &Split,
    mean_loss: f64,
    best: &mut BestVal,
    history: &mut Vec<EvalPoint>,
) {
    let accs = evaluate(classifiers, specs, val);
    best.offer(iteration, &accs, classifiers);
    let b = first_max(&accs);
    history.push(EvalPoint {
        iteration,
        best_val_accuracy: accs[b],
        best_classifier: specs[b].name(),
        mean_loss,
    });
}

/// Index of the first largest value.
pub(crate) fn first_max(v: &[f64]) -> usize {
    let mut b = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[b] {
            b = i;
        }
    }
    b
}

/// The chosen classifier and its numbers.
#[derive(Debug, Clone)]
pub(crate) struct Selected {
    pub(crate) index: usize,
    pub(crate) val_accuracy: f64,
    pub(crate) val_accuracies: Vec<f64>,
    pub(crate) test_accuracy: f64,
    pub(crate) test_logits: Vec<Vec<f32>>,
}

/// Picks the classifier with the best validation accuracy (the first on
/// ties) and applies it, and only it, to the test split.
pub(crate) fn select(
    classifiers: &[Linear],
    specs: &[Spec],
    val: &Split,
    test: &Split,
) -> Selected {
    let val_accuracies = evaluate(classifiers, specs, val);
    let index = first_max(&val_accuracies);
    let test_logits = classifiers[index].predict(&test.inputs[specs[index].family]);
    Selected {
        index,
        val_accuracy: val_accuracies[index],
        test_accuracy: accuracy(&test_logits, &test.targets),
        val_accuracies,
        test_logits,
    }
}

/// Predicted classes (argmax) of logits.
#[cfg(test)]
fn predictions(logits: &[Vec<f32>]) -> Vec<usize> {
    logits.iter().map(|l| super::metrics::argmax(l)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matrix(rows: &[&[f32]]) -> Matrix {
        Matrix {
            dim: rows[0].len(),
            data: rows.iter().flat_map(|r| r.iter().copied()).collect(),
        }
    }

    #[test]
    fn two_sgd_steps_match_the_hand_computation() {
        // dim 2, 2 classes, zero weights; one row x = (1, 2), class 0.
        let mut lin = Linear {
            dim: 2,
            classes: 2,
            w: vec![0.0; 4],
            b: vec![0.0; 2],
        };
        let x = matrix(&[&[1.0, 2.0]]);
        let (loss, gw, gb) = ce_grad(&lin, &x, &[0], &[0]);
        // Softmax (1/2, 1/2): loss ln 2, dL/dlogits = (-1/2, 1/2).
        assert!((loss - 2f64.ln()).abs() < 1e-12);
        assert_eq!(gw, [-0.5, -1.0, 0.5, 1.0]);
        assert_eq!(gb, [-0.5, 0.5]);
        let mut sgd = Sgd::new(&lin, 0.9);
        sgd.step(&mut lin, &gw, &gb, 0.1);
        assert_eq!(lin.w, [0.05, 0.1, -0.05, -0.1]);
        assert_eq!(lin.b, [0.05, -0.05]);
        // Step 2: logits (0.3, -0.3), p0 = 1 / (1 + e^-0.6); the momentum
        // buffer is 0.9 * grad1 + grad2.
        let p0 = 1.0 / (1.0 + (-0.6f64).exp());
        let (_, gw, gb) = ce_grad(&lin, &x, &[0], &[0]);
        sgd.step(&mut lin, &gw, &gb, 0.1);
        let g = p0 - 1.0; // dL/dlogit0; dL/dlogit1 = -g
        let want_w = [
            0.05 - 0.1 * (0.9 * -0.5 + g),
            0.1 - 0.1 * (-0.9 + 2.0 * g),
            -0.05 - 0.1 * (0.9 * 0.5 - g),
            -0.1 - 0.1 * (0.9 * 1.0 - 2.0 * g),
        ];
        let want_b = [0.05 - 0.1 * (0.9 * -0.5 + g), -0.05 - 0.1 * (0.9 * 0.5 - g)];
        for (a, b) in lin.w.iter().zip(want_w).chain(lin.b.iter().zip(want_b)) {
            assert!((f64::from(*a) - b).abs() < 1e-6, "{a} vs {b}");
        }
    }

    #[test]
    fn gradient_matches_central_differences() {
        let mut rng = SplitMix64::new(3);
        let lin = Linear::init(3, 4, &mut rng);
        let lin = Linear {
            w: lin.w.iter().map(|v| v * 50.0).collect(),
            ..lin
        };
        let x = matrix(&[&[0.5, -1.0, 2.0], &[1.5, 0.2, -0.3], &[-0.7, 0.9, 0.1]]);
        let t = [3, 0, 2];
        let idx = [0, 1, 2, 1];
        let (_, gw, gb) = ce_grad(&lin, &x, &t, &idx);
        let h = 1e-2f32;
        for (k, &g) in gw.iter().enumerate() {
            let mut a = lin.clone();
            a.w[k] += h;
            let mut b = lin.clone();
            b.w[k] -= h;
            let num =
                (ce_grad(&a, &x, &t, &idx).0 - ce_grad(&b, &x, &t, &idx).0) / (2.0 * h as f64);
            assert!((num - g as f64).abs() < 1e-3, "w{k}: {num} vs {g}");
        }
        for (k, &g) in gb.iter().enumerate() {
            let mut a = lin.clone();
            a.b[k] += h;
            let mut b = lin.clone();
            b.b[k] -= h;
            let num =
                (ce_grad(&a, &x, &t, &idx).0 - ce_grad(&b, &x, &t, &idx).0) / (2.0 * h as f64);
            assert!((num - g as f64).abs() < 1e-3, "b{k}: {num} vs {g}");
        }
    }

    #[test]
    fn grid_names_scales_and_schedules_like_linear3d() {
        let (fam, specs) = grid(&[1, 4], &[false, true], &[1e-3, 0.1], 32);
        assert_eq!(fam, [(1, false), (1, true), (4, false), (4, true)]);
        assert_eq!(specs.len(), 8);
        // 0.1 * 32 / 256 = 0.0125; 1e-3 * 32 / 256 = 0.000125, printed by
        // Python's f"{0.000125:.5f}" as 0.00013.
        assert_eq!(
            specs[7].name(),
            "classifier_4_blocks_avgpool_True_lr_0_01250"
        );
        assert_eq!(
            specs[0].name(),
            "classifier_1_blocks_avgpool_False_lr_0_00013"
        );
        assert_eq!(specs[5].family, 2);
        assert_eq!(cosine_lr(0.2, 0, 10), 0.2);
        assert!((cosine_lr(0.2, 5, 10) - 0.1).abs() < 1e-15);
        assert!(cosine_lr(0.2, 10, 10).abs() < 1e-15);
        // Every row once per pass, passes reshuffled.
        let mut s = batches(5, 1);
        let mut a = s.next_batch(5);
        a.sort_unstable();
        assert_eq!(a, [0, 1, 2, 3, 4]);
        assert_eq!(s.next_batch(12).len(), 12);
        // Init: std 0.01, zero bias.
        let l = Linear::init(400, 10, &mut SplitMix64::new(0));
        let var = l.w.iter().map(|v| (v * v) as f64).sum::<f64>() / 4000.0;
        assert!((var.sqrt() - 0.01).abs() < 0.0005, "{}", var.sqrt());
        assert!(l.b.iter().all(|&b| b == 0.0));
    }

    #[test]
    fn best_val_keeps_the_evaluation_with_the_highest_validation_accuracy() {
        let mut rng = SplitMix64::new(0);
        let states: Vec<Vec<Linear>> = (0..4).map(|_| vec![Linear::init(2, 2, &mut rng)]).collect();
        let mut b = BestVal::new();
        assert!(b.offer(50, &[0.5, 0.2], &states[0]));
        assert!(b.offer(100, &[0.1, 0.8], &states[1]));
        assert!(!b.offer(150, &[0.7, 0.6], &states[2]));
        assert!(
            !b.offer(200, &[0.8, 0.0], &states[3]),
            "ties keep the earlier"
        );
        assert_eq!((b.iteration, b.accuracy), (100, 0.8));
        assert_eq!(b.snapshot, states[1]);
    }

    #[test]
    fn the_classifier_is_chosen_on_validation_not_test() {
        // Two fixed classifiers on 1-d features: A predicts class 1 for x > 0,
        // B the reverse. Validation agrees with A, test with B.
        let a = Linear {
            dim: 1,
            classes: 2,
            w: vec![-1.0, 1.0],
            b: vec![0.0, 0.0],
        };
        let b = Linear {
            w: vec![1.0, -1.0],
            ..a.clone()
        };
        let specs = grid(&[1], &[false], &[0.1, 0.2], 256).1;
        let x = matrix(&[&[1.0], &[-1.0], &[2.0]]);
        let val = Split {
            inputs: vec![x.clone()],
            targets: vec![1, 0, 1],
        };
        let test = Split {
            inputs: vec![x],
            targets: vec![0, 1, 0],
        };
        for (order, want) in [([a.clone(), b.clone()], 0), ([b, a], 1)] {
            let s = select(&order, &specs, &val, &test);
            assert_eq!(s.index, want);
            assert_eq!(s.val_accuracy, 1.0);
            assert_eq!(s.val_accuracies[1 - want], 0.0);
            assert_eq!(s.test_accuracy, 0.0, "the val choice is wrong on test");
            assert_eq!(predictions(&s.test_logits), [1, 0, 1]);
        }
    }

    #[test]
    fn training_separates_separable_classes_and_keeps_the_best_snapshot() {
        // Class = feature 0 above 1 (a threshold a zero-bias init cannot
        // draw: it needs training), feature 1 is noise; 3 lrs.
        let mut rng = SplitMix64::new(9);
        let mut make = |n: usize| {
            let mut data = Vec::new();
            let mut targets = Vec::new();
            for i in 0..n {
                let t = i % 2;
                let x0 = 1.0 + (rng.uniform() * 0.8 + 0.2) * if t == 1 { 1.0 } else { -1.0 };
                data.extend([x0 as f32, rng.normal() as f32]);
                targets.push(t);
            }
            Split {
                inputs: vec![Matrix { dim: 2, data }],
                targets,
            }
        };
        let (tr, va) = (make(40), make(20));
        let specs = grid(&[1], &[false], &[1e-5, 1.0, 10.0], 256).1;
        let cfg = TrainConfig {
            iterations: 60,
            batch_size: 8,
            eval_period: 20,
            seed: 0,
        };
        let (best, history) = train(&specs, &tr, &va, 2, &cfg, &|_| {}).unwrap();
        assert_eq!(
            history.iter().map(|h| h.iteration).collect::<Vec<_>>(),
            [20, 40, 60]
        );
        assert_eq!(best.accuracy, 1.0);
        let s = select(&best.snapshot, &specs, &va, &va);
        assert_eq!(s.val_accuracy, 1.0);
        assert_ne!(s.index, 0, "lr 1e-5 barely moves from its init");
        assert!(history.last().unwrap().mean_loss < history[0].mean_loss * 1.01);
    }

    #[test]
    fn batched_training_equals_one_classifier_at_a_time() {
        // Two families of different widths, 3 learning rates, 3 classes,
        // batches that wrap around the 7 rows.
        let mut rng = SplitMix64::new(4);
        let mut m = |dim: usize| Matrix {
            dim,
            data: (0..7 * dim).map(|_| rng.normal() as f32).collect(),
        };
        let (m1, m2, v1, v2) = (m(5), m(8), m(5), m(8));
        let tr = Split {
            inputs: vec![m1, m2],
            targets: vec![0, 1, 2, 0, 1, 2, 1],
        };
        let va = Split {
            inputs: vec![v1, v2],
            targets: vec![2, 1, 0, 0, 1, 2, 2],
        };
        let (_, specs) = grid(&[1, 4], &[false], &[0.5, 2.0, 8.0], 256);
        let cfg = TrainConfig {
            iterations: 9,
            batch_size: 4,
            eval_period: 4,
            seed: 11,
        };
        let (a, ha) = train(&specs, &tr, &va, 3, &cfg, &|_| {}).unwrap();
        let (b, hb) = train_reference(&specs, &tr, &va, 3, &cfg, &|_| {});
        assert_eq!(a.iteration, b.iteration);
        assert_eq!(ha.len(), 3);
        for (x, y) in ha.iter().zip(&hb) {
            assert_eq!(x.iteration, y.iteration);
            assert!((x.mean_loss - y.mean_loss).abs() < 1e-4 * y.mean_loss.abs().max(1.0));
        }
        for (x, y) in a.snapshot.iter().zip(&b.snapshot) {
            for (p, q) in x.w.iter().chain(&x.b).zip(y.w.iter().chain(&y.b)) {
                assert!((p - q).abs() < 1e-4, "{p} vs {q}");
            }
        }
        // The classifiers moved away from their N(0, 0.01) init.
        assert!(a.snapshot[2].w.iter().any(|v| v.abs() > 0.1));
    }

    /// The probe's own sampler before it used the pipeline's, as a reference.
    struct SamplerBefore {
        order: Vec<usize>,
        pos: usize,
        rng: SplitMix64,
    }

    impl SamplerBefore {
        fn new(n: usize, seed: u64) -> Self {
            Self {
                order: (0..n).collect(),
                pos: n,
                rng: SplitMix64::new(seed),
            }
        }

        fn next_batch(&mut self, size: usize) -> Vec<usize> {
            let mut out = Vec::with_capacity(size);
            while out.len() < size {
                if self.pos == self.order.len() {
                    self.rng.shuffle(&mut self.order);
                    self.pos = 0;
                }
                out.push(self.order[self.pos]);
                self.pos += 1;
            }
            out
        }
    }

    #[test]
    fn batches_are_bit_identical_to_the_former_sampler() {
        for n in [1, 2, 3, 7, 40, 129] {
            for seed in [0, 1, 11 ^ 0x5A4D_504C_4552, u64::MAX] {
                let (mut new, mut old) = (batches(n, seed), SamplerBefore::new(n, seed));
                for size in [1, 4, 5, 16, 128, 3, 300] {
                    assert_eq!(
                        new.next_batch(size),
                        old.next_batch(size),
                        "n {n}, seed {seed}"
                    );
                }
            }
        }
    }
}
