//! Seeded parameter initialisation.
//!
//! candle's CPU random generator cannot be seeded, so a `VarMap` filled
//! through it differs on every run. This backend creates each variable from
//! a SplitMix64 stream keyed by (seed, parameter name): the same seed gives
//! the same weights on any machine and thread count, whatever the order in
//! which modules are built.

use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder, VarMap};

pub use crate::drop_path::SplitMix64;

/// A `VarBuilder` that creates missing variables in `varmap` from `seed`.
pub fn seeded_var_builder(
    varmap: &VarMap,
    seed: u64,
    dtype: DType,
    device: &Device,
) -> VarBuilder<'static> {
    let backend: Box<dyn SimpleBackend> = Box::new(Seeded {
        varmap: varmap.clone(),
        seed,
    });
    VarBuilder::from_backend(backend, dtype, device.clone())
}

struct Seeded {
    varmap: VarMap,
    seed: u64,
}

/// FNV-1a of the name, mixed with the seed.
fn stream_seed(seed: u64, name: &str) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

fn values(init: &Init, n: usize, rng: &mut SplitMix64) -> candle_core::Result<Vec<f64>> {
    Ok(match *init {
        Init::Const(c) => vec![c; n],
        Init::Uniform { lo, up } => (0..n).map(|_| lo + (up - lo) * rng.next_f64()).collect(),
        Init::Randn { mean, stdev } => (0..n)
            .map(|_| {
                // Box-Muller; 1 − u keeps the logarithm finite.
                let u1 = 1.0 - rng.next_f64();
                let u2 = rng.next_f64();
                mean + stdev * (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
            })
            .collect(),
        Init::Kaiming { .. } => candle_core::bail!("seeded init: Kaiming is not supported"),
    })
}

impl SimpleBackend for Seeded {
    fn get(
        &self,
        s: Shape,
        name: &str,
        h: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let mut data = self.varmap.data().lock().expect("VarMap lock");
        if let Some(v) = data.get(name) {
            if v.shape() != &s {
                candle_core::bail!("shape mismatch on {name}: {s:?} <> {:?}", v.shape());
            }
            return Ok(v.as_tensor().clone());
        }
        let mut rng = SplitMix64::new(stream_seed(self.seed, name));
        let v = values(&h, s.elem_count(), &mut rng)?;
        let t = Tensor::from_vec(v, s, &Device::Cpu)?
            .to_dtype(dtype)?
            .to_device(dev)?;
        let var = Var::from_tensor(&t)?;
        let out = var.as_tensor().clone();
        data.insert(name.to_string(), var);
        Ok(out)
    }

    fn get_unchecked(
        &self,
        name: &str,
        _dtype: DType,
        _dev: &Device,
    ) -> candle_core::Result<Tensor> {
        candle_core::bail!("seeded init: {name} needs a shape")
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.varmap
            .data()
            .lock()
            .expect("VarMap lock")
            .contains_key(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(seed: u64) -> VarMap {
        let vm = VarMap::new();
        let vb = seeded_var_builder(&vm, seed, DType::F32, &Device::Cpu);
        let cfg = crate::ViT3dConfig {
            embed_dim: 24,
            depth: 1,
            num_heads: 2,
            pos_grid: 2,
            ..crate::ViT3dConfig::tiny()
        };
        crate::ViT3d::new(cfg, vb).unwrap();
        vm
    }

    fn get(vm: &VarMap, name: &str) -> Vec<f32> {
        vm.data().lock().unwrap()[name]
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    #[test]
    fn same_seed_same_weights_other_seed_other_weights() {
        let (a, b, c) = (build(1), build(1), build(2));
        for name in [
            "pos_embed",
            "blocks.0.attn.qkv.weight",
            "patch_embed.proj.weight",
        ] {
            assert_eq!(get(&a, name), get(&b, name), "{name}");
            assert_ne!(get(&a, name), get(&c, name), "{name}");
        }
        // Constants stay constants; normals have about the asked deviation.
        assert!(get(&a, "norm.weight").iter().all(|&w| w == 1.0));
        let pos = get(&a, "pos_embed");
        let sd = (pos.iter().map(|v| v * v).sum::<f32>() / pos.len() as f32).sqrt();
        assert!((sd - 0.02).abs() < 0.005, "{sd}");
    }
}
