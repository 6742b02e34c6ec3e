//! ViT-Adapter's injector: the (channel-averaged) ViT tokens attend to the
//! spatial-prior pyramid with 3-level deformable attention, and the result,
//! scaled by a learned per-channel `γ` (init 1e-6), is added back to the
//! tokens of every input channel.
//!
//! Names: `query_norm.*`, `feat_norm.*` (LayerNorms), `attn.*` (see
//! [`MsDeformAttn`]), `gamma (E)`.

use candle_core::{Module, Tensor};
use candle_nn::{Init, VarBuilder};

use super::ADAPTER_LN_EPS;
use super::deform_attn::{MsDeformAttn, MsDeformAttnConfig};
use crate::Result;
use crate::norm::LayerNorm;

/// Pyramid → ViT cross-attention.
#[derive(Debug, Clone)]
pub struct Injector {
    query_norm: LayerNorm,
    feat_norm: LayerNorm,
    attn: MsDeformAttn,
    gamma: Tensor,
}

impl Injector {
    /// Creates (or loads) the injector under `vb`; `attn.dim` is E.
    ///
    /// # Errors
    /// Bad attention sizes; a failed variable lookup.
    pub fn new(vb: VarBuilder, attn: MsDeformAttnConfig, gamma_init: f64) -> Result<Self> {
        let e = attn.dim;
        Ok(Injector {
            query_norm: LayerNorm::new(vb.pp("query_norm"), e, ADAPTER_LN_EPS)?,
            feat_norm: LayerNorm::new(vb.pp("feat_norm"), e, ADAPTER_LN_EPS)?,
            attn: MsDeformAttn::new(attn, vb.pp("attn"))?,
            gamma: vb.get_with_hints(e, "gamma", Init::Const(gamma_init))?,
        })
    }

    /// The update `γ · attn(LN(query), LN(feat))` for `query (B, N, E)`
    /// with reference points `(N, 3)` and the pyramid tokens
    /// `feat (B, ΣN_l, E)` of the levels `shapes`; the caller adds it to the
    /// tokens of every channel.
    ///
    /// # Errors
    /// Shapes that do not fit.
    pub fn forward(
        &self,
        query: &Tensor,
        reference: &Tensor,
        feat: &Tensor,
        shapes: &[[usize; 3]],
    ) -> Result<Tensor> {
        let a = self.attn.forward(
            &self.query_norm.forward(query)?,
            reference,
            &self.feat_norm.forward(feat)?,
            shapes,
        )?;
        Ok(a.broadcast_mul(&self.gamma)?)
    }
}
