//! Per-iteration schedules (spec §2.3): DINOv2's cosine scheduler and
//! 3DINO's lr / weight-decay / teacher-momentum / teacher-temperature arrays.

/// How a [`CosineSchedule`] warms up, and how its cosine angle is rounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Warmup {
    /// DINOv2's `CosineScheduler`: numpy `linspace(start, base, warmup)` with
    /// the endpoint (the last warmup iteration is `base`), then the angle
    /// `π·i / len`.
    Linspace,
    /// MONAI's `WarmupCosineSchedule`: `start + (base − start)·i / warmup`
    /// (`base` is reached at the first cosine iteration), then the angle
    /// `π·(i / len)`.
    Fraction,
}

/// A per-iteration schedule in closed form: `freeze` zeros, a warmup
/// `start_warmup → base` ([`Warmup`]), then
/// `final + ½(base − final)(1 + cos(angle))` for `i = 0..len`; indices past
/// the end return `final`. The one cosine schedule of dino3d: pretraining's
/// five schedules (DINOv2's, [`Warmup::Linspace`]), the segmentation task's
/// learning rate ([`Warmup::Fraction`]) and the linear probe's
/// `CosineAnnealingLR` (no warmup).
#[derive(Debug, Clone, PartialEq)]
pub struct CosineSchedule {
    base: f64,
    final_value: f64,
    total: usize,
    warmup: usize,
    start_warmup: f64,
    freeze: usize,
    zeroed: usize,
    style: Warmup,
}

impl CosineSchedule {
    /// `total` iterations: `warmup` of linear ramp ([`Warmup::Linspace`]),
    /// the rest cosine. `warmup > total` is clamped to `total`.
    pub fn new(
        base: f64,
        final_value: f64,
        total: usize,
        warmup: usize,
        start_warmup: f64,
    ) -> Self {
        Self::with_freeze(base, final_value, total, warmup, start_warmup, 0)
    }

    /// Like [`Self::new`] with `freeze` leading zeros before the warmup.
    pub fn with_freeze(
        base: f64,
        final_value: f64,
        total: usize,
        warmup: usize,
        start_warmup: f64,
        freeze: usize,
    ) -> Self {
        let freeze = freeze.min(total);
        Self {
            base,
            final_value,
            total,
            warmup: warmup.min(total - freeze),
            start_warmup,
            freeze,
            zeroed: 0,
            style: Warmup::Linspace,
        }
    }

    /// The same schedule with another warmup style.
    pub fn with_warmup(mut self, style: Warmup) -> Self {
        self.style = style;
        self
    }

    /// The value at iteration `it` (`final` from `total` on).
    pub fn at(&self, it: usize) -> f64 {
        if it >= self.total {
            return self.final_value;
        }
        if it < self.zeroed || it < self.freeze {
            return 0.0;
        }
        let i = it - self.freeze;
        if i < self.warmup {
            return self.warmup_value(i);
        }
        let i = i - self.warmup;
        let len = self.total - self.freeze - self.warmup;
        let angle = match self.style {
            Warmup::Linspace => std::f64::consts::PI * i as f64 / len as f64,
            Warmup::Fraction => std::f64::consts::PI * (i as f64 / len as f64),
        };
        self.final_value + 0.5 * (self.base - self.final_value) * (1.0 + angle.cos())
    }

    /// Warmup iteration `i` of `self.warmup`.
    fn warmup_value(&self, i: usize) -> f64 {
        let (start, stop, n) = (self.start_warmup, self.base, self.warmup);
        match self.style {
            // numpy `linspace(start, stop, n)`: `start + i·step`, last exactly `stop`.
            Warmup::Linspace if n == 1 => start,
            Warmup::Linspace if i == n - 1 => stop,
            Warmup::Linspace => i as f64 * ((stop - start) / (n - 1) as f64) + start,
            Warmup::Fraction => start + (stop - start) * i as f64 / n as f64,
        }
    }

    /// Number of scheduled iterations.
    pub fn len(&self) -> usize {
        self.total
    }

    /// True when no iteration is scheduled (every index returns `final`).
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// The per-iteration values.
    pub fn values(&self) -> Vec<f64> {
        (0..self.total).map(|it| self.at(it)).collect()
    }

    /// Sets the first `n` iterations to 0 (DINOv2's last-layer freeze: the
    /// lr schedule itself, zeroed, not shifted).
    pub fn zero_first(mut self, n: usize) -> Self {
        self.zeroed = n.min(self.total);
        self
    }
}

/// The config keys that define 3DINO's schedules (spec §2.1). `Default` is
/// stage 1 on 4 GPUs (global batch 512); [`Self::high_res`] is stage 2.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleConfig {
    /// `optim.epochs`.
    pub epochs: usize,
    /// `train.OFFICIAL_EPOCH_LENGTH` (iterations per "epoch").
    pub epoch_len: usize,
    /// `optim.base_lr`, defined for a global batch of 1024.
    pub base_lr: f64,
    /// Global batch (per-GPU batch × GPUs) for the sqrt scaling rule.
    pub global_batch: usize,
    /// `optim.min_lr`.
    pub min_lr: f64,
    /// `optim.warmup_epochs`.
    pub warmup_epochs: usize,
    /// `optim.weight_decay`.
    pub weight_decay: f64,
    /// `optim.weight_decay_end`.
    pub weight_decay_end: f64,
    /// `teacher.momentum_teacher`.
    pub momentum_teacher: f64,
    /// `teacher.final_momentum_teacher`.
    pub final_momentum_teacher: f64,
    /// `teacher.warmup_teacher_temp`.
    pub warmup_teacher_temp: f64,
    /// `teacher.teacher_temp`.
    pub teacher_temp: f64,
    /// `teacher.warmup_teacher_temp_epochs`.
    pub warmup_teacher_temp_epochs: usize,
    /// `optim.freeze_last_layer_epochs`.
    pub freeze_last_layer_epochs: usize,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        Self {
            epochs: 100,
            epoch_len: 1250,
            base_lr: 0.002,
            global_batch: 512,
            min_lr: 1e-6,
            warmup_epochs: 10,
            weight_decay: 0.04,
            weight_decay_end: 0.4,
            momentum_teacher: 0.992,
            final_momentum_teacher: 1.0,
            warmup_teacher_temp: 0.04,
            teacher_temp: 0.07,
            warmup_teacher_temp_epochs: 30,
            freeze_last_layer_epochs: 1,
        }
    }
}

impl ScheduleConfig {
    /// Stage 2 (`train/vit3d_highres`): epoch length 125, base lr 0.001,
    /// global batch 256; everything else as stage 1.
    pub fn high_res() -> Self {
        Self {
            epoch_len: 125,
            base_lr: 0.001,
            global_batch: 256,
            ..Self::default()
        }
    }

    /// Peak lr by `sqrt_wrt_1024`: `base_lr · √(global_batch / 1024)`.
    pub fn peak_lr(&self) -> f64 {
        self.base_lr * (self.global_batch as f64 / 1024.0).sqrt()
    }

    /// Total iterations `epochs · epoch_len`.
    pub fn total_iters(&self) -> usize {
        self.epochs * self.epoch_len
    }
}

/// The values every schedule gives at one iteration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScheduleValues {
    /// Learning rate (before per-group multipliers).
    pub lr: f64,
    /// Learning rate of the prototype layers (0 while frozen).
    pub last_layer_lr: f64,
    /// Weight decay (before per-group multipliers).
    pub wd: f64,
    /// Teacher EMA momentum.
    pub momentum: f64,
    /// Teacher softmax / Sinkhorn temperature.
    pub teacher_temp: f64,
}

/// 3DINO's five schedules.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedules {
    /// lr: warmup from 0 to the peak, cosine to `min_lr`.
    pub lr: CosineSchedule,
    /// lr zeroed for the first `freeze_last_layer_epochs`.
    pub last_layer_lr: CosineSchedule,
    /// Weight decay, cosine increase without warmup.
    pub wd: CosineSchedule,
    /// Teacher momentum, cosine to the final value.
    pub momentum: CosineSchedule,
    /// Teacher temperature: linear warmup, then constant.
    pub teacher_temp: CosineSchedule,
}

impl Schedules {
    /// Builds the schedules of `cfg`.
    pub fn new(cfg: &ScheduleConfig) -> Self {
        let total = cfg.total_iters();
        let lr = CosineSchedule::new(
            cfg.peak_lr(),
            cfg.min_lr,
            total,
            cfg.warmup_epochs * cfg.epoch_len,
            0.0,
        );
        let last_layer_lr = lr
            .clone()
            .zero_first(cfg.freeze_last_layer_epochs * cfg.epoch_len);
        let wd = CosineSchedule::new(cfg.weight_decay, cfg.weight_decay_end, total, 0, 0.0);
        let momentum = CosineSchedule::new(
            cfg.momentum_teacher,
            cfg.final_momentum_teacher,
            total,
            0,
            0.0,
        );
        let temp_iters = cfg.warmup_teacher_temp_epochs * cfg.epoch_len;
        let teacher_temp = CosineSchedule::new(
            cfg.teacher_temp,
            cfg.teacher_temp,
            temp_iters,
            temp_iters,
            cfg.warmup_teacher_temp,
        );
        Self {
            lr,
            last_layer_lr,
            wd,
            momentum,
            teacher_temp,
        }
    }

    /// Every schedule's value at iteration `it`.
    pub fn at(&self, it: usize) -> ScheduleValues {
        ScheduleValues {
            lr: self.lr.at(it),
            last_layer_lr: self.last_layer_lr.at(it),
            wd: self.wd.at(it),
            momentum: self.momentum.at(it),
            teacher_temp: self.teacher_temp.at(it),
        }
    }
}

impl From<ScheduleValues> for crate::optim::StepValues {
    fn from(v: ScheduleValues) -> Self {
        Self {
            lr: v.lr,
            last_layer_lr: v.last_layer_lr,
            wd: v.wd,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-12 * b.abs().max(1.0)
    }

    #[test]
    fn small_cosine_matches_hand_values() {
        // base 1, final 0, total 6, warmup 2 from 0.5: [0.5, 1] then
        // 0.5(1 + cos(πi/4)) for i = 0..4.
        let s = CosineSchedule::new(1.0, 0.0, 6, 2, 0.5);
        let h = std::f64::consts::FRAC_1_SQRT_2;
        let want = [0.5, 1.0, 1.0, 0.5 * (1.0 + h), 0.5, 0.5 * (1.0 - h)];
        assert_eq!(s.len(), 6);
        for (i, w) in want.iter().enumerate() {
            assert!(close(s.at(i), *w), "{i}: {} vs {w}", s.at(i));
        }
        assert_eq!(s.at(6), 0.0);
        assert_eq!(s.at(1_000_000), 0.0);
        // Freeze prepends zeros and shortens the cosine part.
        let f = CosineSchedule::with_freeze(1.0, 0.0, 4, 1, 0.0, 2);
        assert_eq!(f.values(), &[0.0, 0.0, 0.0, 1.0]);
    }

    #[test]
    fn stage1_numbers_match_the_spec() {
        let cfg = ScheduleConfig::default();
        assert_eq!(cfg.total_iters(), 125_000);
        let peak = 0.002 * 0.5f64.sqrt();
        assert!(close(cfg.peak_lr(), peak));
        let s = Schedules::new(&cfg);
        assert_eq!(s.lr.len(), 125_000);
        // Warmup: linspace(0, peak, 12500), endpoint included.
        assert_eq!(s.lr.at(0), 0.0);
        assert!(close(s.lr.at(1), peak / 12_499.0));
        assert!(close(s.lr.at(6_000), 6_000.0 * peak / 12_499.0));
        assert_eq!(s.lr.at(12_499), peak);
        // Cosine: i = 0 at 12,500 is the peak; the midpoint is the mean.
        assert!(close(s.lr.at(12_500), peak));
        let mid = 12_500 + 56_250;
        assert!(close(s.lr.at(mid), 1e-6 + 0.5 * (peak - 1e-6)));
        let last = 1e-6
            + 0.5 * (peak - 1e-6) * (1.0 + (std::f64::consts::PI * 112_499.0 / 112_500.0).cos());
        assert!(close(s.lr.at(124_999), last));
        assert_eq!(s.lr.at(125_000), 1e-6);
        // Last layer: zero for the first epoch (1250 its), then the lr.
        assert_eq!(s.last_layer_lr.at(0), 0.0);
        assert_eq!(s.last_layer_lr.at(1_249), 0.0);
        assert_eq!(s.last_layer_lr.at(1_250), s.lr.at(1_250));
        assert!(s.last_layer_lr.at(1_250) > 0.0);
        // Weight decay 0.04 → 0.4, momentum 0.992 → 1, no warmup.
        assert!(close(s.wd.at(0), 0.04));
        assert!(close(s.wd.at(62_500), 0.22));
        assert_eq!(s.wd.at(125_000), 0.4);
        assert!(close(s.momentum.at(0), 0.992));
        assert!(close(s.momentum.at(62_500), 0.996));
        assert_eq!(s.momentum.at(200_000), 1.0);
        // Teacher temperature: linspace(0.04, 0.07, 37500), then 0.07.
        assert_eq!(s.teacher_temp.len(), 37_500);
        assert_eq!(s.teacher_temp.at(0), 0.04);
        assert!(close(
            s.teacher_temp.at(18_749),
            0.04 + 18_749.0 * 0.03 / 37_499.0
        ));
        assert!((s.teacher_temp.at(18_749) - 0.055).abs() < 1e-6);
        assert_eq!(s.teacher_temp.at(37_499), 0.07);
        assert_eq!(s.teacher_temp.at(37_500), 0.07);
        assert_eq!(s.teacher_temp.at(100_000), 0.07);
        let v = s.at(12_499);
        assert_eq!((v.lr, v.last_layer_lr), (peak, peak));
    }

    #[test]
    fn high_res_numbers_match_the_spec() {
        let cfg = ScheduleConfig::high_res();
        assert_eq!(cfg.total_iters(), 12_500);
        assert!(close(cfg.peak_lr(), 5e-4));
        let s = Schedules::new(&cfg);
        assert_eq!(s.lr.at(1_249), 5e-4);
        assert!(close(s.lr.at(1_250), 5e-4));
        assert_eq!(s.last_layer_lr.at(124), 0.0);
        assert!(s.last_layer_lr.at(125) > 0.0);
        assert_eq!(s.teacher_temp.len(), 3_750);
        assert_eq!(s.teacher_temp.at(3_749), 0.07);
        assert_eq!(s.momentum.at(12_500), 1.0);
    }

    /// The schedules dino3d had before there was one: DINOv2's precomputed
    /// array, the segmentation task's MONAI formula and the linear probe's
    /// `CosineAnnealingLR`, kept as references.
    mod before {
        pub(super) fn dinov2(
            base: f64,
            final_value: f64,
            total: usize,
            warmup: usize,
            start_warmup: f64,
            freeze: usize,
            zero_first: usize,
        ) -> Vec<f64> {
            let freeze = freeze.min(total);
            let warmup = warmup.min(total - freeze);
            let mut values = vec![0.0; freeze];
            values.extend(match warmup {
                0 => Vec::new(),
                1 => vec![start_warmup],
                n => {
                    let step = (base - start_warmup) / (n - 1) as f64;
                    let mut v: Vec<f64> = (0..n).map(|i| i as f64 * step + start_warmup).collect();
                    v[n - 1] = base;
                    v
                }
            });
            let len = total - freeze - warmup;
            values.extend((0..len).map(|i| {
                let c = (std::f64::consts::PI * i as f64 / len as f64).cos();
                final_value + 0.5 * (base - final_value) * (1.0 + c)
            }));
            let n = zero_first.min(values.len());
            values[..n].fill(0.0);
            values
        }

        pub(super) fn monai(lr: f64, warmup_iters: usize, iterations: usize, it: usize) -> f64 {
            let warm = warmup_iters.min(iterations);
            if it < warm {
                return lr * it as f64 / warm.max(1) as f64;
            }
            let progress = (it - warm) as f64 / (iterations - warm).max(1) as f64;
            lr * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
        }

        pub(super) fn cosine_annealing(base: f64, it: usize, total: usize) -> f64 {
            base * 0.5 * (1.0 + (std::f64::consts::PI * it as f64 / total.max(1) as f64).cos())
        }
    }

    /// Many settings from a fixed xorshift stream.
    fn settings(n: usize) -> Vec<(f64, f64, usize, usize, f64)> {
        let mut s = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        (0..n)
            .map(|_| {
                let base = (next() % 10_000) as f64 * 1.37e-4;
                let fin = (next() % 1000) as f64 * 3.1e-6;
                let total = (next() % 400) as usize;
                let warmup = (next() % 450) as usize;
                let start = (next() % 100) as f64 * 1e-3;
                (base, fin, total, warmup, start)
            })
            .collect()
    }

    #[test]
    fn the_closed_form_is_bit_identical_to_the_dinov2_array() {
        for (k, (base, fin, total, warmup, start)) in settings(400).into_iter().enumerate() {
            let freeze = [0, 1, 7, total / 3][k % 4];
            let zeroed = [0, 3, total / 2, total + 5][k % 4];
            let want = before::dinov2(base, fin, total, warmup, start, freeze, zeroed);
            let s = CosineSchedule::with_freeze(base, fin, total, warmup, start, freeze)
                .zero_first(zeroed);
            assert_eq!(s.len(), want.len());
            for (it, w) in want.iter().enumerate() {
                assert_eq!(s.at(it).to_bits(), w.to_bits(), "{k}: it {it}");
            }
            assert_eq!(s.at(total).to_bits(), fin.to_bits());
            assert_eq!(s.at(total + 1000).to_bits(), fin.to_bits());
        }
        // The shipped stage-1 schedules, every iteration.
        let cfg = ScheduleConfig::default();
        let s = Schedules::new(&cfg);
        let lr = before::dinov2(cfg.peak_lr(), cfg.min_lr, 125_000, 12_500, 0.0, 0, 0);
        let last = before::dinov2(cfg.peak_lr(), cfg.min_lr, 125_000, 12_500, 0.0, 0, 1250);
        let temp = before::dinov2(0.07, 0.07, 37_500, 37_500, 0.04, 0, 0);
        for it in 0..125_000 {
            assert_eq!(s.lr.at(it).to_bits(), lr[it].to_bits());
            assert_eq!(s.last_layer_lr.at(it).to_bits(), last[it].to_bits());
            let t = temp.get(it).copied().unwrap_or(0.07);
            assert_eq!(s.teacher_temp.at(it).to_bits(), t.to_bits());
        }
    }

    #[test]
    fn the_fraction_warmup_is_bit_identical_to_the_segmentation_schedule() {
        for (k, (base, _, total, warmup, _)) in settings(400).into_iter().enumerate() {
            let lr = base.min(1.0);
            let total = total.max(1);
            let s = CosineSchedule::new(lr, 0.0, total, warmup, 0.0).with_warmup(Warmup::Fraction);
            for it in 0..total {
                let want = before::monai(lr, warmup, total, it);
                assert_eq!(s.at(it).to_bits(), want.to_bits(), "{k}: it {it}");
            }
        }
    }

    #[test]
    fn no_warmup_is_bit_identical_to_the_probes_cosine_annealing() {
        for (k, (base, _, total, _, _)) in settings(400).into_iter().enumerate() {
            let s = CosineSchedule::new(base, 0.0, total, 0, 0.0);
            for it in 0..total {
                let want = before::cosine_annealing(base, it, total);
                assert_eq!(s.at(it).to_bits(), want.to_bits(), "{k}: it {it}");
            }
        }
    }
}
