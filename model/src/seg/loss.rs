//! Segmentation losses with MONAI 1.3's defaults, from differentiable ops.
//!
//! - [`dice_ce`]: `DiceCELoss(to_onehot_y=True, softmax=True)` for the
//!   single-label datasets (BTCV, LA-SEG, TDSC-ABUS);
//! - [`sigmoid_dice`]: `DiceLoss(sigmoid=True, squared_pred=True,
//!   smooth_nr=0, smooth_dr=1e-5)` for BraTS's overlapping regions, with
//!   [`brats_regions`] / [`brats_regions_tensor`] for the targets.

use candle_core::{D, DType, Tensor};

use crate::{ModelError, Result};

/// MONAI's default Dice smoothing (numerator and denominator of DiceCE).
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

/// `logits (B, K, ...)` as `(B, K, N)` after checking that `other` holds
/// `per_class · N` values per sample.
fn flatten(logits: &Tensor, other: &Tensor, per_class: usize) -> Result<(Tensor, usize, usize)> {
    let dims = logits.dims();
    if dims.len() < 3 {
        return Err(ModelError::Input(format!(
            "logits must be (B, K, ...), got {dims:?}"
        )));
    }
    let (b, k) = (dims[0], dims[1]);
    let n = logits.elem_count() / (b * k).max(1);
    if other.elem_count() != b * per_class * n || other.dim(0)? != b {
        return Err(ModelError::Input(format!(
            "targets {:?} do not match logits {dims:?}",
            other.dims()
        )));
    }
    Ok((logits.reshape((b, k, n))?, b, n))
}

/// `DiceCELoss(to_onehot_y=True, softmax=True)` with MONAI 1.3's defaults:
/// soft Dice per sample and class (background included) with smooth 1e-5
/// on both sides, averaged, plus the mean voxel cross-entropy; weights 1
/// and 1. `logits (B, K, ...)`, `labels` u32 class indices `(B, ...)` or
/// `(B, 1, ...)`.
///
/// # Errors
/// Mismatched shapes; labels that are not u32.
pub fn dice_ce(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let (flat, b, n) = flatten(logits, labels, 1)?;
    let k = flat.dim(1)?;
    let target = one_hot(&labels.reshape((b, n))?, k, logits.dtype())?;
    let log_p = candle_nn::ops::log_softmax(&flat, 1)?;
    let p = log_p.exp()?;
    let ce = ((&target * &log_p)?.sum_all()? * (-1.0 / (b * n) as f64))?;
    Ok((soft_dice(&p, &target, false, DICE_SMOOTH, DICE_SMOOTH)? + ce)?)
}

/// `DiceLoss(sigmoid=True, squared_pred=True, smooth_nr=0, smooth_dr=1e-5)`
/// as 3DINO uses it for BraTS: `logits (B, K, ...)`, `target (B, K, ...)`
/// in {0, 1} of the logits' dtype (one channel per overlapping region).
///
/// # Errors
/// Mismatched shapes.
pub fn sigmoid_dice(logits: &Tensor, target: &Tensor) -> Result<Tensor> {
    let (flat, b, n) = flatten(logits, target, logits.dim(1)?)?;
    let p = candle_nn::ops::sigmoid(&flat)?;
    let t = target.reshape((b, (), n))?;
    Ok(soft_dice(&p, &t, true, 0.0, 1e-5)?)
}

/// `1 − mean_{b,k} (2 Σ p t + nr) / (Σ p^e + Σ t^e + dr)` over `(B, K, N)`,
/// e = 2 when `squared` else 1.
fn soft_dice(
    p: &Tensor,
    t: &Tensor,
    squared: bool,
    nr: f64,
    dr: f64,
) -> candle_core::Result<Tensor> {
    let inter = (p * t)?.sum(D::Minus1)?;
    let denom = if squared {
        (p.sqr()?.sum(D::Minus1)? + t.sqr()?.sum(D::Minus1)?)?
    } else {
        (p.sum(D::Minus1)? + t.sum(D::Minus1)?)?
    };
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

/// [`brats_regions`] on a label tensor `(B, ...)` or `(B, 1, ...)` of any
/// integer or float type: `(B, 3, ...)` of `dtype` (TC, WT, ET).
///
/// # Errors
/// An empty or scalar tensor.
pub fn brats_regions_tensor(labels: &Tensor, dtype: DType) -> Result<Tensor> {
    let dims = labels.dims();
    if dims.is_empty() {
        return Err(ModelError::Input("BraTS labels must be (B, ...)".into()));
    }
    let b = dims[0];
    let mut spatial: Vec<usize> = dims[1..].to_vec();
    if spatial.len() > 1 && spatial[0] == 1 {
        spatial.remove(0);
    }
    let l = labels.to_dtype(DType::F32)?.reshape((b, 1, ()))?;
    let is = |v: f64| l.eq(v);
    let (one, two, three) = (is(1.0)?, is(2.0)?, is(3.0)?);
    let tc = one.maximum(&three)?;
    let wt = tc.maximum(&two)?;
    let mut out_dims = vec![b, 3];
    out_dims.extend(spatial);
    Ok(Tensor::cat(&[&tc, &wt, &three], 1)?
        .to_dtype(dtype)?
        .reshape(out_dims)?)
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor, Var};

    use super::*;
    use crate::seg::test_util::{check_fd, f64s, tensor};

    fn scalar(t: Result<Tensor>) -> f64 {
        t.unwrap().to_scalar::<f64>().unwrap()
    }

    #[test]
    fn dice_ce_matches_a_hand_computed_case() {
        // One sample, 2 classes, 2 voxels: logits (0, ln 3) and (0, 0); labels 1, 0.
        let l3 = 3f64.ln();
        let logits = Tensor::new(&[[[0.0f64, 0.0], [l3, 0.0]]], &Device::Cpu).unwrap();
        let labels = Tensor::new(&[[1u32, 0]], &Device::Cpu).unwrap();
        let got = scalar(dice_ce(&logits, &labels));
        // p(class 1) = (0.75, 0.5), p(class 0) = (0.25, 0.5).
        let s = 1e-5;
        let dice0 = (2.0 * 0.5 + s) / (0.75 + 1.0 + s);
        let dice1 = (2.0 * 0.75 + s) / (1.25 + 1.0 + s);
        let ce = -(0.75f64.ln() + 0.5f64.ln()) / 2.0;
        let want = 1.0 - (dice0 + dice1) / 2.0 + ce;
        assert!((got - want).abs() < 1e-12, "{got} vs {want}");
        // (B, 1, ...) labels are the same thing.
        let labels1 = labels.reshape((1, 1, 2)).unwrap();
        assert!((scalar(dice_ce(&logits, &labels1)) - want).abs() < 1e-15);
        assert!(dice_ce(&logits, &Tensor::new(&[[1u32]], &Device::Cpu).unwrap()).is_err());
    }

    #[test]
    fn perfect_predictions_cost_almost_nothing() {
        let sure = Tensor::new(&[[[-30.0f64, 30.0], [30.0, -30.0]]], &Device::Cpu).unwrap();
        let labels = Tensor::new(&[[1u32, 0]], &Device::Cpu).unwrap();
        assert!(scalar(dice_ce(&sure, &labels)) < 1e-5);
        // An absent class predicted absent: Dice = (0 + 1e-5)/(≈0 + 1e-5) ≈ 1.
        let three = Tensor::new(
            &[[[-30.0f64, 30.0], [30.0, -30.0], [-30.0, -30.0]]],
            &Device::Cpu,
        )
        .unwrap();
        assert!(scalar(dice_ce(&three, &labels)) < 1e-5);
        let target = Tensor::new(&[[[1.0f64, 0.0], [1.0, 1.0]]], &Device::Cpu).unwrap();
        let logits = ((&target * 60.0).unwrap() - 30.0).unwrap();
        // Only the 1e-5 denominator smoothing remains (smooth_nr is 0).
        let want = 1.0 - (2.0 / (2.0 + 1e-5) + 4.0 / (4.0 + 1e-5)) / 2.0;
        let got = scalar(sigmoid_dice(&logits, &target));
        assert!((got - want).abs() < 1e-12 && got < 4e-6, "{got} vs {want}");
    }

    #[test]
    fn sigmoid_dice_matches_a_hand_computed_case() {
        // One sample, 2 regions, 2 voxels; logits 0 → p = ½ everywhere.
        let logits = Tensor::zeros((1, 2, 2), DType::F64, &Device::Cpu).unwrap();
        let target = Tensor::new(&[[[1.0f64, 0.0], [0.0, 0.0]]], &Device::Cpu).unwrap();
        // Region 0: 2·½ / (2·¼ + 1 + 1e-5); region 1: 0 / (½ + 1e-5).
        let d0 = 1.0 / (1.5 + 1e-5);
        let want = 1.0 - d0 / 2.0;
        let got = scalar(sigmoid_dice(&logits, &target));
        assert!((got - want).abs() < 1e-12, "{got} vs {want}");
    }

    #[test]
    fn gradients_match_central_differences() {
        let shape = [2, 3, 2, 2, 2];
        let x = Var::from_tensor(&tensor(&shape, 9, DType::F64)).unwrap();
        let labels = Tensor::new(
            &[[0u32, 1, 2, 2, 1, 0, 0, 2], [1, 1, 0, 2, 2, 2, 0, 1]],
            &Device::Cpu,
        )
        .unwrap()
        .reshape((2, 2, 2, 2))
        .unwrap();
        let loss = |t: &Tensor| Ok(dice_ce(t, &labels).unwrap());
        let g = loss(x.as_tensor()).unwrap().backward().unwrap();
        let xv = f64s(x.as_tensor());
        check_fd(
            &xv,
            &shape,
            &f64s(g.get(x.as_tensor()).unwrap()),
            loss,
            1e-6,
        );

        let target = Tensor::from_vec(
            (0..48)
                .map(|i| f64::from(u8::from(i % 3 == 0)))
                .collect::<Vec<_>>(),
            &shape,
            &Device::Cpu,
        )
        .unwrap();
        let loss = |t: &Tensor| Ok(sigmoid_dice(t, &target).unwrap());
        let g = loss(x.as_tensor()).unwrap().backward().unwrap();
        check_fd(
            &xv,
            &shape,
            &f64s(g.get(x.as_tensor()).unwrap()),
            loss,
            1e-6,
        );
    }

    #[test]
    fn brats_regions_nest() {
        let [tc, wt, et] = brats_regions(&[0, 1, 2, 3]);
        assert_eq!(tc, vec![0.0, 1.0, 0.0, 1.0]);
        assert_eq!(wt, vec![0.0, 1.0, 1.0, 1.0]);
        assert_eq!(et, vec![0.0, 0.0, 0.0, 1.0]);
        let labels = Tensor::new(&[0u8, 1, 2, 3, 3, 2, 1, 0], &Device::Cpu)
            .unwrap()
            .reshape((2, 1, 2, 2))
            .unwrap();
        let t = brats_regions_tensor(&labels, DType::F32).unwrap();
        assert_eq!(t.dims(), &[2, 3, 2, 2]);
        assert_eq!(
            f64s(&t),
            vec![
                0., 1., 0., 1., 0., 1., 1., 1., 0., 0., 0., 1., // sample 0
                1., 0., 1., 0., 1., 1., 1., 0., 1., 0., 0., 0., // sample 1
            ]
        );
    }
}
