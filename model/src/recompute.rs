//! Activation checkpointing per transformer block: a forward pass that keeps
//! only each block's input, and a backward that recomputes the blocks one at
//! a time from those inputs.
//!
//! candle's autograd keeps every intermediate of the graph alive until the
//! backward: for a ViT-L block that is about twenty `(B, T, E)`-sized tensors
//! plus the `(B, H, T, T)` scores and probabilities. Under
//! [`Activations::Recompute`] the forward detaches each block's output, so
//! the block's graph is freed at once, and continues from a copy of it made a
//! leaf variable, which the [`BlockTape`] records. The loss's own backward
//! then stops at those leaves, and [`BlockTape::backward`] walks the blocks
//! from the last: recompute block `i` from its recorded input with its
//! recorded drop path, and backpropagate `sum(out · grad_out)`, whose
//! gradient with respect to `out` is exactly `grad_out`. One block's
//! intermediates are alive at a time, for one extra forward of the blocks.

use candle_core::Tensor;
use candle_core::backprop::GradStore;

use crate::Result;
use crate::attention::{AttentionKernel, current_kernel, use_attention_kernel};
use crate::block::{Block, BranchDrop};
use crate::precision::{self, Precision};

/// What a forward pass keeps of each block's activations for a backward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Activations {
    /// Everything, as candle's autograd does (the default).
    #[default]
    Keep,
    /// Only each block's input; the backward recomputes the rest
    /// ([`BlockTape::backward`]). Gradients are those of `Keep` up to the
    /// order of float additions.
    Recompute,
    /// Nothing: each block's graph is dropped as soon as its output exists,
    /// so no gradient reaches the blocks (teacher and inference passes).
    Discard,
}

/// The record of one [`Activations::Recompute`] forward pass.
#[derive(Debug, Clone)]
pub struct BlockTape {
    /// Block 0's input with its graph (patch embedding, tokens, positions).
    tokens: Tensor,
    /// Leaf variables: `inputs[i]` is block `i`'s input, the last one the
    /// last block's output.
    inputs: Vec<Tensor>,
    /// Each block's drop-path draw, replayed by the recomputation.
    drops: Vec<BranchDrop>,
    /// The attention kernel the forward ran, replayed too (the same
    /// function, whatever the thread's setting at backward time).
    kernel: AttentionKernel,
    /// The precision the forward ran in (autocast), replayed likewise.
    precision: Precision,
}

impl BlockTape {
    /// Starts a tape at block 0's input `tokens`; returns it with the leaf
    /// the first block reads. `probs`: the forward asks for attention maps
    /// (which only the composed kernel gives).
    pub(crate) fn start(tokens: Tensor, probs: bool) -> Result<(Self, Tensor)> {
        let leaf = shared_leaf(&tokens)?;
        let kernel = if probs {
            AttentionKernel::Composed
        } else {
            current_kernel()
        };
        let tape = Self {
            tokens,
            inputs: vec![leaf.clone()],
            drops: Vec::new(),
            kernel,
            precision: precision::current(),
        };
        Ok((tape, leaf))
    }

    /// Records a block's output (graph dropped) and its drop path; returns
    /// the leaf the next block reads.
    pub(crate) fn record(&mut self, out: &Tensor, drop: BranchDrop) -> Result<Tensor> {
        let leaf = shared_leaf(out)?;
        self.inputs.push(leaf.clone());
        self.drops.push(drop);
        Ok(leaf)
    }

    /// Completes `grads`, the loss's backward, through the recorded blocks:
    /// adds every block parameter's and the token parameters' gradients and
    /// removes the tape's leaves. `blocks` must be the blocks that ran.
    pub(crate) fn backward(self, blocks: &[Block], grads: &mut GradStore) -> Result<()> {
        Self::backward_all(vec![self], blocks, grads, &mut |_| Ok(()))
    }

    /// [`Self::backward`] of several passes through the same `blocks` (the
    /// student's global and local passes), block by block: block `i` is
    /// recomputed for every tape before block `i - 1`, so once it is done
    /// its parameters' gradients are final, and `after_block(grads)` is
    /// called (every parameter with a gradient in `grads` then has its final
    /// gradient: the earlier blocks and the tokens have none yet). Each
    /// parameter's gradient adds the tapes' parts in the tapes' order, as
    /// running the tapes one after another does.
    pub(crate) fn backward_all(
        tapes: Vec<Self>,
        blocks: &[Block],
        grads: &mut GradStore,
        after_block: &mut dyn FnMut(&GradStore) -> Result<()>,
    ) -> Result<()> {
        let mut tapes = tapes;
        for tape in &tapes {
            debug_assert_eq!(tape.drops.len(), blocks.len());
        }
        for (i, block) in blocks.iter().enumerate().rev() {
            for tape in &mut tapes {
                let _kernel = use_attention_kernel(tape.kernel);
                let _precision = precision::autocast(tape.precision);
                let output = tape.inputs.pop().expect("one leaf per block output");
                let Some(grad_out) = grads.remove(&output) else {
                    continue;
                };
                drop(output);
                let input = tape.inputs.last().expect("one leaf per block input");
                let (out, _) = block.forward(input, &tape.drops[i], false)?;
                grads.extend(seeded_backward(&out, &grad_out)?)?;
            }
            after_block(grads)?;
        }
        for tape in tapes {
            let _kernel = use_attention_kernel(tape.kernel);
            let _precision = precision::autocast(tape.precision);
            let Self {
                tokens, mut inputs, ..
            } = tape;
            let first = inputs.pop().expect("block 0's input");
            if let Some(grad) = grads.remove(&first) {
                grads.extend(seeded_backward(&tokens, &grad)?)?;
            }
        }
        Ok(())
    }
}

/// `t` as a leaf variable (its values shared, not copied: block outputs are
/// never changed in place), so the loss's backward stops at it and leaves
/// its gradient in the store.
fn shared_leaf(t: &Tensor) -> Result<Tensor> {
    Ok(t.detach_as_leaf())
}

/// The backward of `out` given its gradient (that of `sum(out · grad)`),
/// seeded with `grad` directly.
fn seeded_backward(out: &Tensor, grad: &Tensor) -> Result<GradStore> {
    Ok(out.backward_from(grad.clone())?)
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::*;
    use crate::{DropPathMode, ForwardOptions, ViT3d, ViT3dConfig, ViT3dOutput};

    fn vit(mode: DropPathMode) -> (ViT3d, candle_nn::VarMap) {
        let cfg = ViT3dConfig {
            embed_dim: 24,
            depth: 3,
            num_heads: 2,
            pos_grid: 2,
            drop_path_rate: 0.25,
            drop_path_mode: mode,
            // Large enough that every branch carries real gradient.
            layerscale_init: 0.5,
            ..ViT3dConfig::tiny()
        };
        ViT3d::with_varmap(cfg, &Device::Cpu).unwrap()
    }

    fn noise(seed: u64, shape: &[usize]) -> Tensor {
        let n = shape.iter().product();
        let v = crate::kernels_ref::testing::uniform(n, seed, 1.0);
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn pass(vit: &ViT3d, x: &Tensor, masks: &Tensor, activations: Activations) -> ViT3dOutput {
        let opts = ForwardOptions {
            masks: Some(masks),
            intermediate_layers: &[1],
            drop_path_seed: Some(11),
            activations,
            ..Default::default()
        };
        vit.forward_with(x, &opts).unwrap()
    }

    /// A loss reading the \[CLS\], the patch tokens and an intermediate
    /// block output, so gradients enter the blocks at two depths.
    fn loss(out: &ViT3dOutput) -> Tensor {
        let w = |seed, t: &Tensor| (t * noise(seed, t.dims())).unwrap().sum_all().unwrap();
        let cls = w(1, &out.cls_norm);
        let patches = w(2, &out.patch_norm);
        let mid = w(3, &out.intermediates[0]);
        ((cls + patches).unwrap() + mid).unwrap()
    }

    fn max_abs(t: &Tensor) -> f32 {
        t.abs().unwrap().max_all().unwrap().to_scalar().unwrap()
    }

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        max_abs(&(a - b).unwrap())
    }

    /// Under f32 and under bf16 autocast (bf16 activations are recomputed
    /// in bf16 too: the same to bf16 rounding of the summation order).
    #[test]
    fn recomputed_gradients_equal_kept_ones() {
        use crate::precision::{Precision, autocast};
        for (mode, precision, tol) in [
            (DropPathMode::Subset, Precision::F32, 1e-5),
            (DropPathMode::PerSample, Precision::F32, 1e-5),
            (DropPathMode::Subset, Precision::Bf16, 1e-2),
        ] {
            let _precision = autocast(precision);
            let mode_name = format!("{mode:?} {precision:?}");
            let (vit, vm) = vit(mode);
            let x = noise(5, &[4, 1, 32, 32, 32]);
            let masks = noise(6, &[4, 8]).gt(0.3).unwrap();
            let kept = pass(&vit, &x, &masks, Activations::Keep);
            let grads_kept = loss(&kept).backward().unwrap();
            let mut re = pass(&vit, &x, &masks, Activations::Recompute);
            assert_eq!(max_abs_diff(&kept.prenorm, &re.prenorm), 0.0, "{mode_name}");
            let tape = re.tape.take().expect("a tape under Recompute");
            assert_eq!(tape.inputs.len(), 4, "block 0's input and 3 outputs");
            let leaves: Vec<_> = tape.inputs.iter().map(Tensor::id).collect();
            let mut grads_re = loss(&re).backward().unwrap();
            vit.backward_tape(tape, &mut grads_re).unwrap();
            let vars = vm.data().lock().unwrap();
            // candle also stores gradients of untracked operands (the loss's
            // weights, the patches); both stores must hold the same entries
            // in number, and no tape leaf may be left.
            assert_eq!(
                grads_re.get_ids().count(),
                grads_kept.get_ids().count(),
                "{mode_name}"
            );
            assert!(leaves.iter().all(|id| grads_re.get_id(*id).is_none()));
            for (name, v) in vars.iter() {
                let a = grads_kept.get(v.as_tensor()).expect("kept gradient");
                let b = grads_re
                    .get(v.as_tensor())
                    .unwrap_or_else(|| panic!("{mode_name} {name}: no recomputed gradient"));
                let scale = max_abs(a);
                assert!(scale > 0.0, "{mode_name} {name}: the loss must reach it");
                let d = max_abs_diff(a, b);
                assert!(d <= tol * scale, "{mode_name} {name}: {d} (scale {scale})");
            }
        }
    }

    /// The backward recomputes the blocks in the forward's precision and
    /// attention kernel, whatever the thread's settings when it runs.
    #[test]
    fn the_tape_replays_the_forward_s_precision() {
        use crate::precision::{Precision, autocast};
        let (vit, vm) = vit(DropPathMode::Subset);
        let x = noise(9, &[2, 1, 32, 32, 32]);
        let masks = noise(10, &[2, 8]).gt(0.3).unwrap();
        let grads = |backward_in: Precision| {
            let guard = autocast(Precision::Bf16);
            let mut out = pass(&vit, &x, &masks, Activations::Recompute);
            let tape = out.tape.take().expect("a tape under Recompute");
            let mut grads = loss(&out).backward().unwrap();
            drop(guard);
            let _backward = autocast(backward_in);
            vit.backward_tape(tape, &mut grads).unwrap();
            grads
        };
        let (same, other) = (grads(Precision::Bf16), grads(Precision::F32));
        for (name, v) in vm.data().lock().unwrap().iter() {
            let (a, b) = (same.get(v.as_tensor()), other.get(v.as_tensor()));
            let (a, b) = (a.expect("a gradient"), b.expect("a gradient"));
            assert_eq!(max_abs_diff(a, b), 0.0, "{name}");
        }
    }

    /// Two passes' tapes (the student's global and local crops) recomputed
    /// block by block give the gradients of recomputing one tape after the
    /// other, bit for bit; after each block, every gradient in the store is
    /// already final, and the earlier blocks have none yet.
    #[test]
    fn tapes_recomputed_block_by_block_equal_tapes_in_turn() {
        let (vit, vm) = vit(DropPathMode::Subset);
        let passes = [
            (noise(11, &[2, 1, 32, 32, 32]), noise(12, &[2, 8])),
            (noise(13, &[3, 1, 32, 32, 32]), noise(14, &[3, 8])),
        ];
        let run = || {
            let outs: Vec<ViT3dOutput> = passes
                .iter()
                .map(|(x, m)| pass(&vit, x, &m.gt(0.3).unwrap(), Activations::Recompute))
                .collect();
            let total = (loss(&outs[0]) + loss(&outs[1])).unwrap();
            let tapes: Vec<BlockTape> = outs
                .into_iter()
                .map(|mut o| o.tape.take().unwrap())
                .collect();
            (total.backward().unwrap(), tapes)
        };
        let (mut in_turn, tapes) = run();
        for tape in tapes {
            vit.backward_tape(tape, &mut in_turn).unwrap();
        }
        let (mut interleaved, tapes) = run();
        let vars = vm.data().lock().unwrap();
        let mut seen: Vec<Vec<(String, Vec<f32>)>> = Vec::new();
        vit.backward_tapes(tapes, &mut interleaved, &mut |grads| {
            let mut now = Vec::new();
            for (name, v) in vars.iter() {
                if let Some(g) = grads.get(v.as_tensor()) {
                    now.push((name.clone(), g.flatten_all()?.to_vec1()?));
                }
            }
            seen.push(now);
            Ok(())
        })
        .unwrap();
        assert_eq!(seen.len(), 3, "once per block");
        assert!(seen[0].iter().any(|(n, _)| n.starts_with("blocks.2.")));
        assert!(seen[2].iter().any(|(n, _)| n.starts_with("blocks.0.")));
        for (after, now) in seen.iter().enumerate() {
            let done = 3 - after;
            for (name, g) in now {
                let block = name
                    .strip_prefix("blocks.")
                    .map(|rest| rest.split('.').next().unwrap().parse::<usize>().unwrap());
                assert!(
                    block.is_none_or(|b| b >= done - 1),
                    "{name} has a gradient before its block ran"
                );
                assert!(!name.starts_with("patch_embed"), "{name} before the tokens");
                let want = in_turn.get(vars.get(name).unwrap().as_tensor()).unwrap();
                assert_eq!(
                    g,
                    &want.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                    "{name} final"
                );
            }
        }
        for (name, v) in vars.iter() {
            let (a, b) = (in_turn.get(v.as_tensor()), interleaved.get(v.as_tensor()));
            let (a, b) = (a.expect("a gradient"), b.expect("a gradient"));
            assert_eq!(max_abs_diff(a, b), 0.0, "{name}");
        }
    }

    #[test]
    fn discarded_activations_give_the_same_outputs_and_no_block_gradient() {
        let (vit, vm) = vit(DropPathMode::Subset);
        let x = noise(7, &[2, 1, 32, 32, 32]);
        let masks = noise(8, &[2, 8]).gt(0.0).unwrap();
        let kept = pass(&vit, &x, &masks, Activations::Keep);
        let out = pass(&vit, &x, &masks, Activations::Discard);
        assert!(out.tape.is_none());
        assert_eq!(max_abs_diff(&kept.cls_norm, &out.cls_norm), 0.0);
        assert_eq!(max_abs_diff(&kept.patch_norm, &out.patch_norm), 0.0);
        let grads = loss(&out).backward().unwrap();
        for (name, v) in vm.data().lock().unwrap().iter() {
            let reached = grads.get(v.as_tensor()).is_some();
            assert_eq!(reached, name.starts_with("norm."), "{name}");
        }
    }
}
