//! Segmentation losses with MONAI 1.3's defaults, from differentiable ops.

use candle_core::{D, DType, Tensor};

/// MONAI's default Dice smoothing (numerator and denominator).
pub const DICE_SMOOTH: f64 = 1e-5;

/// One-hot `(B, K, N)` of `dtype` from integer labels `(B, N)` (u32).
///
/// # Errors
/// Labels of the wrong rank or type.
pub fn one_hot(labels: &Tensor, classes: usize, dtype: DType) -> candle_core::Result<Tensor> {
    let (b, n) = labels.dims2()?;
    let ids = Tensor::arange(0u32, classes as u32, labels.device())?.reshape((1, classes, 1))?;
    labels
        .reshape((b, 1, n))?
        .broadcast_eq(&ids)?
        .to_dtype(dtype)
}

/// `DiceCELoss(to_onehot_y=True, softmax=True)` with MONAI's defaults: Dice
/// per sample and class (background included), smooth 1e-5 on both sides,
/// averaged; plus the mean voxel cross-entropy; weights 1 and 1.
/// `logits (B, K, ...)`, `labels (B, ...)` u32 class indices.
///
/// # Errors
/// Mismatched shapes.
pub fn dice_ce(logits: &Tensor, labels: &Tensor) -> candle_core::Result<Tensor> {
    let dims = logits.dims();
    let (b, k) = (dims[0], dims[1]);
    let flat = logits.reshape((b, k, ()))?;
    let n = flat.dim(2)?;
    let target = one_hot(&labels.reshape((b, n))?, k, logits.dtype())?;
    let log_p = candle_nn::ops::log_softmax(&flat, 1)?;
    let p = log_p.exp()?;
    let ce = ((&target * &log_p)?.sum_all()? * (-1.0 / (b * n) as f64))?;
    soft_dice(&p, &target, DICE_SMOOTH, DICE_SMOOTH)? + ce
}

/// `DiceLoss(sigmoid=True, squared_pred=True, smooth_nr=0, smooth_dr=1e-5)`
/// as 3DINO uses it for BraTS: `logits (B, K, ...)`, `target (B, K, ...)`
/// float32 in {0, 1} (one channel per overlapping region).
///
/// # Errors
/// Mismatched shapes.
pub fn sigmoid_dice(logits: &Tensor, target: &Tensor) -> candle_core::Result<Tensor> {
    let dims = logits.dims();
    let (b, k) = (dims[0], dims[1]);
    let p = candle_nn::ops::sigmoid(&logits.reshape((b, k, ()))?)?;
    let t = target.reshape((b, k, ()))?;
    let inter = (&p * &t)?.sum(D::Minus1)?;
    let denom = (p.sqr()?.sum(D::Minus1)? + t.sqr()?.sum(D::Minus1)?)?;
    let dice = ((inter * 2.0)? / (denom + 1e-5)?)?;
    (dice.neg()? + 1.0)?.mean_all()
}

/// `1 − mean_{b,k} (2 Σ p t + nr) / (Σ p + Σ t + dr)` over `(B, K, N)`.
fn soft_dice(p: &Tensor, t: &Tensor, nr: f64, dr: f64) -> candle_core::Result<Tensor> {
    let inter = (p * t)?.sum(D::Minus1)?;
    let denom = (p.sum(D::Minus1)? + t.sum(D::Minus1)?)?;
    let dice = (((inter * 2.0)? + nr)? / (denom + dr)?)?;
    (dice.neg()? + 1.0)?.mean_all()
}

/// BraTS regions from its labels (1 necrosis, 2 oedema, 3 enhancing):
/// channels TC = {1, 3}, WT = {1, 2, 3}, ET = {3}, as 3DINO converts them.
pub fn brats_regions(labels: &[u8]) -> [Vec<f32>; 3] {
    let region = |set: &[u8]| {
        labels
            .iter()
            .map(|l| f32::from(u8::from(set.contains(l))))
            .collect()
    };
    [region(&[1, 3]), region(&[1, 2, 3]), region(&[3])]
}
