//! AdamW with per-parameter lr / weight-decay multipliers and savable state.
//!
//! Same update as PyTorch's `torch.optim.AdamW` (non-amsgrad):
//! `p ← p·(1 − lr·wd)`, `m ← β₁m + (1−β₁)g`, `v ← β₂v + (1−β₂)g²`,
//! `p ← p − lr/(1−β₁ᵗ) · m / (√v/√(1−β₂ᵗ) + ε)`.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Tensor, Var, backprop::GradStore};

use crate::checkpoint::{load_tensors, save_tensors};
use crate::optim::{GroupRules, ParamMultipliers};
use crate::{ModelError, Result};

/// AdamW constants (3DINO: β = (0.9, 0.999), ε = 1e-8).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Denominator epsilon.
    pub eps: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        }
    }
}

/// Scheduled values for one step; each parameter's lr is
/// `(last_layer_lr if prototype else lr) · lr_mult`, its decay `wd · wd_mult`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepValues {
    /// Learning rate from the lr schedule.
    pub lr: f64,
    /// Learning rate of the prototype layers (0 while frozen).
    pub last_layer_lr: f64,
    /// Weight decay from the wd schedule.
    pub wd: f64,
}

/// One optimised parameter and its moments.
#[derive(Debug)]
struct Slot {
    name: String,
    var: Var,
    mults: ParamMultipliers,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
}

/// AdamW over named parameters, each with its own multipliers.
///
/// Moments are kept in the parameter's dtype and device.
#[derive(Debug)]
pub struct AdamW {
    cfg: AdamWConfig,
    slots: Vec<Slot>,
    step: u64,
}

impl AdamW {
    /// Optimises `params` (name, variable, multipliers), zero moments, step 0.
    pub fn new(
        params: impl IntoIterator<Item = (String, Var, ParamMultipliers)>,
        cfg: AdamWConfig,
    ) -> Result<Self> {
        let mut slots = params
            .into_iter()
            .map(|(name, var, mults)| {
                let exp_avg = var.zeros_like()?;
                let exp_avg_sq = var.zeros_like()?;
                Ok(Slot {
                    name,
                    var,
                    mults,
                    exp_avg,
                    exp_avg_sq,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        // Name order makes iteration (and clipping sums) deterministic.
        slots.sort_by(|a, b| a.name.cmp(&b.name));
        if let Some(w) = slots.windows(2).find(|w| w[0].name == w[1].name) {
            return Err(ModelError::Config(format!(
                "parameter {} given twice",
                w[0].name
            )));
        }
        Ok(Self {
            cfg,
            slots,
            step: 0,
        })
    }

    /// All variables of `varmap` with multipliers from 3DINO's `rules`.
    pub fn from_varmap(
        varmap: &candle_nn::VarMap,
        rules: &GroupRules,
        cfg: AdamWConfig,
    ) -> Result<Self> {
        let vars = varmap.data().lock().expect("VarMap lock poisoned").clone();
        Self::new(
            vars.into_iter().map(|(name, var)| {
                let m = rules.multipliers(&name);
                (name, var, m)
            }),
            cfg,
        )
    }

    /// Steps taken so far.
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// Parameter names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.slots.iter().map(|s| s.name.as_str())
    }

    /// Multipliers of a parameter.
    pub fn multipliers(&self, name: &str) -> Option<ParamMultipliers> {
        self.slot(name).map(|s| s.mults)
    }

    /// The optimised variables whose names start with `prefix`.
    pub fn vars_with_prefix(&self, prefix: &str) -> Vec<&Var> {
        self.slots
            .iter()
            .filter(|s| s.name.starts_with(prefix))
            .map(|s| &s.var)
            .collect()
    }

    fn slot(&self, name: &str) -> Option<&Slot> {
        self.slots
            .binary_search_by(|s| s.name.as_str().cmp(name))
            .ok()
            .map(|i| &self.slots[i])
    }

    /// One update with the gradients in `grads`. Parameters without a
    /// gradient are skipped entirely (moments untouched), like PyTorch.
    pub fn step(&mut self, grads: &GradStore, values: StepValues) -> Result<()> {
        self.step += 1;
        let t = self.step as i32;
        let (b1, b2) = (self.cfg.beta1, self.cfg.beta2);
        let bc1 = 1.0 - b1.powi(t);
        let bc2_sqrt = (1.0 - b2.powi(t)).sqrt();
        for s in &mut self.slots {
            let Some(g) = grads.get(s.var.as_tensor()) else {
                continue;
            };
            let g = g.detach();
            let base = if s.mults.is_last_layer {
                values.last_layer_lr
            } else {
                values.lr
            };
            let lr = base * s.mults.lr_mult;
            let wd = values.wd * s.mults.wd_mult;
            let scalars = super::fused::Scalars {
                b1,
                b2,
                eps: self.cfg.eps,
                lr,
                wd,
                bc1,
                bc2_sqrt,
            };
            let p = s.var.as_tensor();
            if super::fused::adamw_in_place(p, &g, &s.exp_avg, &s.exp_avg_sq, scalars)? {
                continue;
            }
            s.exp_avg = ((&s.exp_avg * b1)? + (&g * (1.0 - b1))?)?;
            s.exp_avg_sq = ((&s.exp_avg_sq * b2)? + (g.sqr()? * (1.0 - b2))?)?;
            let denom = ((s.exp_avg_sq.sqrt()? / bc2_sqrt)? + self.cfg.eps)?;
            let update = (s.exp_avg.div(&denom)? * (lr / bc1))?;
            let p = s.var.as_tensor().detach();
            let p = ((p * (1.0 - lr * wd))? - update)?;
            s.var.set(&p)?;
        }
        Ok(())
    }

    /// The state as named tensors: `{name}.exp_avg`, `{name}.exp_avg_sq`,
    /// and `step` (a u32 pair `[low, high]` of the 64-bit count).
    pub fn state_tensors(&self) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::with_capacity(2 * self.slots.len() + 1);
        for s in &self.slots {
            // Copies: the moments are updated in place by later steps.
            out.insert(format!("{}.exp_avg", s.name), s.exp_avg.copy()?);
            out.insert(format!("{}.exp_avg_sq", s.name), s.exp_avg_sq.copy()?);
        }
        // u32 pair: candle's safetensors writer has no u64.
        let step = [self.step as u32, (self.step >> 32) as u32];
        out.insert(
            "step".into(),
            Tensor::new(&step, &candle_core::Device::Cpu)?,
        );
        Ok(out)
    }

    /// Restores the state from [`Self::state_tensors`]' layout. Every
    /// parameter must be present with its shape; extra entries are an error.
    pub fn load_state_tensors(&mut self, mut state: HashMap<String, Tensor>) -> Result<()> {
        let bad = |m: String| ModelError::Input(format!("optimizer state: {m}"));
        let step = state
            .remove("step")
            .ok_or_else(|| bad("no `step` entry".into()))?
            .to_dtype(DType::U32)?
            .to_vec1::<u32>()?;
        let [lo, hi] = step[..] else {
            return Err(bad("`step` must hold 2 values".into()));
        };
        let mut moments = Vec::with_capacity(self.slots.len());
        for s in &self.slots {
            let mut take = |suffix: &str| {
                let key = format!("{}.{suffix}", s.name);
                let t = state
                    .remove(&key)
                    .ok_or_else(|| bad(format!("missing {key}")))?;
                if t.dims() != s.var.dims() {
                    return Err(bad(format!(
                        "{key} has shape {:?}, parameter {:?}",
                        t.dims(),
                        s.var.dims()
                    )));
                }
                // A copy: updated in place later, so never shared with
                // the caller's tensor (or with the other moment).
                Ok(t.to_dtype(s.var.dtype())?
                    .to_device(s.var.device())?
                    .copy()?)
            };
            moments.push((take("exp_avg")?, take("exp_avg_sq")?));
        }
        if let Some(k) = state.keys().min() {
            return Err(bad(format!("unexpected entry {k}")));
        }
        for (s, (m, v)) in self.slots.iter_mut().zip(moments) {
            s.exp_avg = m;
            s.exp_avg_sq = v;
        }
        self.step = u64::from(lo) | (u64::from(hi) << 32);
        Ok(())
    }

    /// Writes the state to a safetensors file (atomically).
    pub fn save(&self, path: &Path) -> Result<()> {
        save_tensors(&self.state_tensors()?, path)
    }

    /// Reads the state written by [`Self::save`].
    pub fn load(&mut self, path: &Path) -> Result<()> {
        let device = self
            .slots
            .first()
            .map(|s| s.var.device().clone())
            .unwrap_or(candle_core::Device::Cpu);
        self.load_state_tensors(load_tensors(path, &device)?)
    }
}
