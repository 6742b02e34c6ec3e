//! KoLeo regulariser: pushes each \[CLS\] embedding away from its nearest
//! neighbour in the batch (uniform spreading).

use candle_core::{D, DType, Tensor};

use crate::head::l2_normalize;
use crate::{ModelError, Result};

/// `−mean_i log(‖x̂_i − x̂_nn(i) + ε‖ + ε)` with rows L2-normalised (ε 1e-8),
/// nearest neighbour = largest dot product excluding itself. The
/// `+ ε` inside the norm is `PairwiseDistance`'s. The neighbour search is not
/// differentiated; the distance is, through both endpoints. Unweighted: the
/// caller applies [`super::KOLEO_WEIGHT`] and sums over global crops. With a
/// single row the neighbour is the row itself, as in the reference: a
/// constant loss with zero gradient.
pub fn koleo_loss(x: &Tensor) -> Result<Tensor> {
    const EPS: f64 = 1e-8;
    let (n, _) = x.dims2()?;
    if n == 0 {
        return Err(ModelError::Input("KoLeo on an empty batch".into()));
    }
    let xn = l2_normalize(x, EPS)?;
    let dots: Vec<Vec<f64>> = xn
        .detach()
        .matmul(&xn.detach().t()?)?
        .to_dtype(DType::F64)?
        .to_vec2()?;
    let nn: Vec<u32> = dots
        .iter()
        .enumerate()
        .map(|(i, row)| {
            // Diagonal set to −1 as in the reference; first maximum wins.
            let mut best = (0usize, f64::NEG_INFINITY);
            for (j, &d) in row.iter().enumerate() {
                let d = if i == j { -1.0 } else { d };
                if d > best.1 {
                    best = (j, d);
                }
            }
            best.0 as u32
        })
        .collect();
    let nn = Tensor::from_vec(nn, n, x.device())?;
    let neighbours = xn.index_select(&nn, 0)?;
    let dist = ((xn - neighbours)? + EPS)?.sqr()?.sum(D::Minus1)?.sqrt()?;
    Ok((dist + EPS)?.log()?.mean_all()?.neg()?)
}
