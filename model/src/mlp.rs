//! Transformer feed-forward block: Linear, exact GELU, Linear.

use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;

use crate::linear::Linear;

/// `fc2(gelu_erf(fc1(x)))`, hidden width `hidden`.
#[derive(Debug, Clone)]
pub(crate) struct Mlp {
    fc1: Linear,
    fc2: Linear,
}

impl Mlp {
    pub(crate) fn new(vb: VarBuilder, dim: usize, hidden: usize) -> candle_core::Result<Self> {
        Ok(Self {
            fc1: Linear::new(vb.pp("fc1"), dim, hidden, true)?,
            fc2: Linear::new(vb.pp("fc2"), hidden, dim, true)?,
        })
    }
}

impl Module for Mlp {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        // As autocast, under bf16 the hidden layer (4x the width: the step's
        // largest activation) exists in bf16 only, before and after the
        // GELU; kept in f32 next to its bf16 copies it took 2.5x the memory.
        let hidden = self.fc1.forward_hidden(x)?;
        // PyTorch's default GELU is the exact erf form, not the tanh approximation.
        self.fc2.forward(&crate::fused::gelu_erf(&hidden)?)
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor, Var};
    use candle_nn::VarMap;

    use super::*;
    use crate::attention::Attention;
    use crate::kernels_ref::testing::{max_rel_err, normal};
    use crate::precision::{Precision, autocast};

    /// The MLP and the attention with their bf16 activations: outputs and
    /// every gradient (input and parameters) f32 and equal to the f32
    /// layers' up to bf16 rounding, and bf16 really used.
    #[test]
    fn bf16_activations_give_the_f32_layers_to_bf16_accuracy() {
        let dev = Device::Cpu;
        let vars = VarMap::new();
        let vb = VarBuilder::from_varmap(&vars, DType::F32, &dev);
        let mlp = Mlp::new(vb.pp("mlp"), 32, 128).unwrap();
        let attn = Attention::new(vb.pp("attn"), 32, 4, true).unwrap();
        let x =
            Var::from_tensor(&Tensor::from_vec(normal(2 * 9 * 32, 5), (2, 9, 32), &dev).unwrap())
                .unwrap();
        let run = |p: Precision| {
            let _g = autocast(p);
            let (a, probs) = attn.forward(x.as_tensor(), true).unwrap();
            let y = (mlp.forward(&a).unwrap() + a).unwrap();
            assert_eq!(y.dtype(), DType::F32);
            assert_eq!(probs.unwrap().dtype(), DType::F32);
            let grads = (&y * &y).unwrap().sum_all().unwrap().backward().unwrap();
            let flat = |t: &Tensor| {
                assert_eq!(t.dtype(), DType::F32);
                t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
            };
            let mut all = vec![flat(&y), flat(grads.get(x.as_tensor()).unwrap())];
            let data = vars.data().lock().unwrap();
            let mut names: Vec<_> = data.keys().cloned().collect();
            names.sort();
            for n in names {
                let g = grads.get(data[&n].as_tensor());
                all.push(flat(g.unwrap_or_else(|| panic!("{n}: no gradient"))));
            }
            all
        };
        let (f32s, bf16s) = (run(Precision::F32), run(Precision::Bf16));
        assert_eq!(f32s.len(), 2 + 8, "output, input and 8 parameter gradients");
        for (i, (half, full)) in bf16s.iter().zip(&f32s).enumerate() {
            let err = max_rel_err(half, full);
            assert!(err < 5e-2, "tensor {i}: rel err {err:.3e}");
            assert!(
                err > 1e-5,
                "tensor {i}: rel err {err:.3e}, so bf16 was not used"
            );
        }
    }
}
