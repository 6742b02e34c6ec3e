//! DINO / iBOT projection head: MLP, L2 normalisation, weight-normalised
//! prototype layer.

use candle_core::{D, Module, Tensor};
use candle_nn::{Init, VarBuilder};

use crate::linear::Linear;
use crate::{ModelError, Result};

/// Head sizes. 3DINO: hidden 2048, bottleneck 256, 65,536 prototypes, 3 layers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DinoHeadConfig {
    /// Input width (the backbone's embed dim).
    pub in_dim: usize,
    /// Hidden width of the MLP.
    pub hidden_dim: usize,
    /// Bottleneck width (output of the MLP, input of the prototypes).
    pub bottleneck_dim: usize,
    /// Number of prototypes K.
    pub n_prototypes: usize,
    /// MLP layers (≥ 1); GELU between them, none after the last.
    pub n_layers: usize,
}

impl DinoHeadConfig {
    /// 3DINO's head for a backbone of width `in_dim`.
    pub fn new(in_dim: usize) -> Self {
        Self {
            in_dim,
            hidden_dim: 2048,
            bottleneck_dim: 256,
            n_prototypes: 65_536,
            n_layers: 3,
        }
    }
}

/// L2 norm clamp of `F.normalize` in fp32.
const L2_EPS: f64 = 1e-12;

/// Divides each row (last axis) by `max(‖row‖₂, eps)`, like `F.normalize`.
pub(crate) fn l2_normalize(x: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    let norm = x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?.maximum(eps)?;
    x.broadcast_div(&norm)
}

/// Prototype layer `y = x Wᵀ`, `W = g · v / ‖v‖` per row (PyTorch
/// `weight_norm(dim=0)`): `weight_g (K, 1)` and `weight_v (K, bottleneck)`.
#[derive(Debug, Clone)]
struct WeightNormLinear {
    weight_g: Tensor,
    weight_v: Tensor,
}

impl WeightNormLinear {
    fn new(vb: VarBuilder, in_dim: usize, out_dim: usize) -> candle_core::Result<Self> {
        // v keeps PyTorch's default Linear init (the head's trunc-normal init
        // runs before weight_norm wraps this layer); g starts at 1.
        let bound = 1.0 / (in_dim as f64).sqrt();
        let weight_v = vb.get_with_hints(
            (out_dim, in_dim),
            "weight_v",
            Init::Uniform {
                lo: -bound,
                up: bound,
            },
        )?;
        let weight_g = vb.get_with_hints((out_dim, 1), "weight_g", Init::Const(1.0))?;
        Ok(Self { weight_g, weight_v })
    }

    fn weight(&self) -> candle_core::Result<Tensor> {
        crate::fused::weight_norm(&self.weight_v, &self.weight_g)
    }
}

/// DINO / iBOT head. Names: `mlp.{0,2,4}.{weight,bias}` (PyTorch
/// `Sequential` indices, GELUs in between) and `last_layer.weight_{g,v}`.
#[derive(Debug, Clone)]
pub struct DinoHead {
    mlp: Vec<Linear>,
    last_layer: WeightNormLinear,
    cfg: DinoHeadConfig,
}

impl DinoHead {
    /// Builds (or loads) the head under `vb`.
    pub fn new(cfg: DinoHeadConfig, vb: VarBuilder) -> Result<Self> {
        if cfg.n_layers == 0 {
            return Err(ModelError::Config(
                "DINO head needs at least one layer".into(),
            ));
        }
        let mut widths = vec![cfg.in_dim];
        widths.extend(std::iter::repeat_n(cfg.hidden_dim, cfg.n_layers - 1));
        widths.push(cfg.bottleneck_dim);
        let mlp = widths
            .windows(2)
            .enumerate()
            .map(|(i, w)| Linear::new(vb.pp(format!("mlp.{}", 2 * i)), w[0], w[1], true))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let last_layer =
            WeightNormLinear::new(vb.pp("last_layer"), cfg.bottleneck_dim, cfg.n_prototypes)?;
        Ok(Self {
            mlp,
            last_layer,
            cfg,
        })
    }

    /// The configuration it was built with.
    pub fn config(&self) -> &DinoHeadConfig {
        &self.cfg
    }

    /// L2-normalised bottleneck features `(…, bottleneck_dim)`.
    pub fn bottleneck(&self, x: &Tensor) -> Result<Tensor> {
        // Under bf16 autocast the hidden layers are kept in bf16 only, as in
        // the backbone's MLP; the bottleneck comes out f32.
        let mut h = x.clone();
        for (i, layer) in self.mlp.iter().enumerate() {
            if i + 1 < self.mlp.len() {
                h = crate::fused::gelu_erf(&layer.forward_hidden(&h)?)?;
            } else {
                h = layer.forward(&h)?;
            }
        }
        Ok(l2_normalize(&h, L2_EPS)?)
    }

    /// Prototype logits `(…, K)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let z = self.bottleneck(x)?;
        let w = self.last_layer.weight()?;
        let dims = z.dims().to_vec();
        let rows = z.elem_count() / self.cfg.bottleneck_dim;
        let y = crate::precision::matmul(&z.reshape((rows, self.cfg.bottleneck_dim))?, &w.t()?)?;
        let mut out = dims;
        *out.last_mut().expect("non-empty") = self.cfg.n_prototypes;
        Ok(y.reshape(out)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn logits_are_bounded_by_g_and_names_match_pytorch() {
        let dev = Device::Cpu;
        let vm = candle_nn::VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &dev);
        let cfg = DinoHeadConfig {
            in_dim: 8,
            hidden_dim: 16,
            bottleneck_dim: 4,
            n_prototypes: 10,
            n_layers: 3,
        };
        let head = DinoHead::new(cfg, vb).unwrap();
        let x = Tensor::randn(0f32, 1.0, (5, 8), &dev).unwrap();
        let y = head.forward(&x).unwrap();
        assert_eq!(y.dims(), &[5, 10]);
        // Unit bottleneck and unit-norm prototype rows (g = 1): |logit| ≤ 1.
        let m = y
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(m <= 1.0 + 1e-5);
        let mut names: Vec<String> = vm.data().lock().unwrap().keys().cloned().collect();
        names.sort();
        assert_eq!(
            names,
            [
                "last_layer.weight_g",
                "last_layer.weight_v",
                "mlp.0.bias",
                "mlp.0.weight",
                "mlp.2.bias",
                "mlp.2.weight",
                "mlp.4.bias",
                "mlp.4.weight"
            ]
        );
    }
}
