//! One data-parallel step's gradient averaging, bucket by bucket while the
//! backward runs: the backward reports each parameter's gradient once it is
//! final ([`GradientSync::on_final`], [`GradientSync::settle_stored`]), and
//! each bucket of the [`BucketPlan`] starts its all-reduce as soon as it and
//! every bucket before it are complete. On NCCL that reduction runs on its
//! own stream beside the rest of the backward; [`GradientSync::finish`]
//! waits for all of them and writes the averages back.

use std::collections::{HashMap, HashSet};

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, TensorId, Var};

use super::{BucketPlan, Collective, PendingReduce, ReduceOp, check_wire};
use crate::{ModelError, Result};

/// What one step's synchronisation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncReport {
    /// All-reduces this step.
    pub buckets: usize,
    /// Of those, the ones started before [`GradientSync::finish`]: their
    /// communication overlapped the backward.
    pub started_in_backward: usize,
    /// The parameter indices in the order their gradients became final on
    /// this rank, those still open at the end last (in index order): the
    /// order a [`BucketPlan`] for the next steps follows.
    pub order: Vec<usize>,
}

/// One step's bucketed gradient all-reduce (see the module).
pub struct GradientSync<'a> {
    vars: &'a [&'a Var],
    plan: &'a BucketPlan,
    comm: &'a dyn Collective,
    wire: DType,
    index: HashMap<TensorId, usize>,
    /// Each final gradient of this rank, flat in the wire dtype, until its
    /// bucket leaves (`None`: not final yet, or final without a gradient).
    parts: Vec<Option<Tensor>>,
    is_final: Vec<bool>,
    /// Per bucket, its parameters not final yet.
    open: Vec<usize>,
    /// The next bucket to start: buckets start in plan order on every rank.
    next: usize,
    pending: Vec<PendingReduce>,
    order: Vec<usize>,
    /// See [`Self::reached_later`].
    later: HashSet<TensorId>,
}

impl std::fmt::Debug for GradientSync<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GradientSync")
            .field("parameters", &self.vars.len())
            .field("buckets", &self.plan.buckets().len())
            .field("started", &self.next)
            .finish()
    }
}

impl<'a> GradientSync<'a> {
    /// A step's synchronisation of the gradients of `vars` (in the same
    /// order on every rank) over `comm`, in `wire` (f32, or bf16 for half
    /// the bytes), bucketed as `plan` says.
    ///
    /// # Errors
    /// Another wire dtype; a plan for another number of parameters.
    pub fn new(
        vars: &'a [&'a Var],
        plan: &'a BucketPlan,
        comm: &'a dyn Collective,
        wire: DType,
    ) -> Result<Self> {
        check_wire(wire)?;
        if plan.len() != vars.len() {
            return Err(ModelError::Input(format!(
                "a gradient bucket plan for {} parameters, given {}",
                plan.len(),
                vars.len()
            )));
        }
        let mut open = vec![0; plan.buckets().len()];
        for i in 0..vars.len() {
            open[plan.bucket_of(i)] += 1;
        }
        Ok(Self {
            vars,
            plan,
            comm,
            wire,
            index: vars.iter().enumerate().map(|(i, v)| (v.id(), i)).collect(),
            parts: vec![None; vars.len()],
            is_final: vec![false; vars.len()],
            open,
            next: 0,
            pending: Vec::new(),
            order: Vec::with_capacity(vars.len()),
            later: HashSet::new(),
        })
    }

    /// The backward reached `leaf`: its gradient (`grad`, none if none
    /// reached it) will not change any more. Leaves that are not among the
    /// parameters, parameters reported before, and those a later backward
    /// may still reach ([`Self::reached_later`]: [`Self::settle_stored`]
    /// settles them after it) are ignored.
    ///
    /// # Errors
    /// A failed conversion or collective.
    pub fn on_final(&mut self, leaf: &Tensor, grad: Option<&Tensor>) -> Result<()> {
        match self.index.get(&leaf.id()) {
            Some(&i) if !self.is_final[i] && !self.later.contains(&leaf.id()) => {
                self.settle(i, grad)?;
                self.start_complete_buckets()
            }
            _ => Ok(()),
        }
    }

    /// Every parameter with a gradient in `grads` has its final gradient
    /// (e.g. after the recomputed backward of a block: the blocks before it
    /// have none yet).
    ///
    /// # Errors
    /// A failed conversion or collective.
    pub fn settle_stored(&mut self, grads: &GradStore) -> Result<()> {
        for i in 0..self.vars.len() {
            if !self.is_final[i]
                && let Some(g) = grads.get(self.vars[i].as_tensor())
            {
                self.settle(i, Some(g))?;
            }
        }
        self.start_complete_buckets()
    }

    /// Parameters that a later backward (the checkpointed blocks'
    /// recomputation) may reach: [`Self::settle_outside`] leaves them open.
    pub fn reached_later(&mut self, leaves: impl IntoIterator<Item = TensorId>) {
        self.later.extend(leaves);
    }

    /// The backward about to run reaches only the leaves in `graph`: every
    /// parameter outside it (and not [`Self::reached_later`]) is final now,
    /// without a gradient (e.g. the iBOT head on a rank without masked
    /// tokens), so its bucket need not wait for the end of the backward.
    ///
    /// # Errors
    /// A failed conversion or collective.
    pub fn settle_outside(&mut self, graph: &HashSet<TensorId>) -> Result<()> {
        for i in 0..self.vars.len() {
            let id = self.vars[i].id();
            if !self.is_final[i] && !graph.contains(&id) && !self.later.contains(&id) {
                self.settle(i, None)?;
            }
        }
        self.start_complete_buckets()
    }

    /// Starts the remaining buckets (a parameter still open counts with
    /// its gradient in `grads`, or as zero), waits for every bucket, and
    /// replaces each gradient in `grads` by its mean over the ranks, in the
    /// parameter's dtype. A parameter without a gradient on any rank keeps
    /// none, so the optimiser skips it as a single process would.
    ///
    /// # Errors
    /// A failed conversion or collective.
    pub fn finish(mut self, grads: &mut GradStore) -> Result<SyncReport> {
        let started_in_backward = self.next;
        for i in 0..self.vars.len() {
            if !self.is_final[i] {
                self.settle(i, grads.get(self.vars[i].as_tensor()))?;
            }
        }
        self.start_complete_buckets()?;
        debug_assert_eq!(self.next, self.plan.buckets().len());
        let pending = std::mem::take(&mut self.pending);
        let plan = self.plan;
        for (members, pending) in plan.buckets().iter().zip(pending) {
            let reduced = self.comm.wait_all_reduce(pending)?;
            let total: usize = members.iter().map(|&i| self.vars[i].elem_count()).sum();
            let present = reduced
                .narrow(0, total, members.len())?
                .to_dtype(DType::F32)?
                .to_vec1::<f32>()?;
            let mut at = 0;
            for (&i, &anywhere) in members.iter().zip(&present) {
                let v = self.vars[i];
                let n = v.elem_count();
                if anywhere > 0.0 {
                    let g = reduced
                        .narrow(0, at, n)?
                        .reshape(v.dims())?
                        .to_dtype(v.dtype())?;
                    grads.insert(v.as_tensor(), g);
                }
                at += n;
            }
        }
        Ok(SyncReport {
            buckets: plan.buckets().len(),
            started_in_backward,
            order: self.order,
        })
    }

    fn settle(&mut self, i: usize, grad: Option<&Tensor>) -> Result<()> {
        self.parts[i] = grad
            .map(|g| -> Result<Tensor> { Ok(g.to_dtype(self.wire)?.flatten_all()?) })
            .transpose()?;
        self.is_final[i] = true;
        self.order.push(i);
        self.open[self.plan.bucket_of(i)] -= 1;
        Ok(())
    }

    /// Starts buckets in plan order while the next one is complete.
    fn start_complete_buckets(&mut self) -> Result<()> {
        while self.next < self.open.len() && self.open[self.next] == 0 {
            self.start(self.next)?;
            self.next += 1;
        }
        Ok(())
    }

    /// One bucket's all-reduce: its gradients (zeros where this rank has
    /// none), then one presence flag per parameter, so every rank learns
    /// which parameters have a gradient anywhere.
    fn start(&mut self, b: usize) -> Result<()> {
        let plan = self.plan;
        let members = &plan.buckets()[b];
        let device = self.vars[members[0]].device();
        let mut flat = Vec::with_capacity(members.len() + 1);
        let mut present = Vec::with_capacity(members.len());
        for &i in members {
            match self.parts[i].take() {
                Some(g) => {
                    flat.push(g);
                    present.push(1f32);
                }
                None => {
                    let n = self.vars[i].elem_count();
                    flat.push(Tensor::zeros(n, self.wire, device)?);
                    present.push(0.0);
                }
            }
        }
        let n = present.len();
        flat.push(Tensor::from_vec(present, n, device)?.to_dtype(self.wire)?);
        // A new tensor (`cat` of at least two parts), given away whole.
        let bucket = Tensor::cat(&flat, 0)?;
        drop(flat);
        self.pending
            .push(self.comm.start_all_reduce_owned(bucket, ReduceOp::Mean)?);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;
    use crate::dist::{average_gradients, on_ranks};

    const WORLD: usize = 3;
    /// Parameter sizes: several buckets at 64-byte budgets.
    const SIZES: [usize; 6] = [5, 9, 3, 12, 4, 7];
    /// The order the "backward" finishes them in.
    const ORDER: [usize; 6] = [5, 4, 3, 2, 1, 0];

    fn params() -> Vec<Var> {
        SIZES
            .iter()
            .map(|&n| Var::zeros((1, n), DType::F32, &Device::Cpu).unwrap())
            .collect()
    }

    fn grad(rank: usize, i: usize) -> Vec<f32> {
        crate::kernels_ref::testing::uniform(SIZES[i], (10 * rank + i) as u64, 1.0)
    }

    /// Rank `r`'s gradients: parameter 4 has none on rank 1, parameter 0
    /// none anywhere.
    fn has_grad(rank: usize, i: usize) -> bool {
        i != 0 && !(i == 4 && rank == 1)
    }

    fn store(rank: usize, vars: &[Var]) -> GradStore {
        // A GradStore is only made by a backward: one whose gradients are
        // 1, then replaced.
        let mut loss = Tensor::zeros((), DType::F32, &Device::Cpu).unwrap();
        for v in vars {
            loss = (loss + v.as_tensor().sum_all().unwrap()).unwrap();
        }
        let mut grads = loss.backward().unwrap();
        for (i, v) in vars.iter().enumerate() {
            if has_grad(rank, i) {
                let g = Tensor::from_vec(grad(rank, i), (1, SIZES[i]), &Device::Cpu).unwrap();
                grads.insert(v.as_tensor(), g);
            } else {
                grads.remove(v.as_tensor());
            }
        }
        grads
    }

    fn values(grads: &GradStore, vars: &[Var]) -> Vec<Option<Vec<f32>>> {
        vars.iter()
            .map(|v| {
                grads
                    .get(v.as_tensor())
                    .map(|g| g.flatten_all().unwrap().to_vec1().unwrap())
            })
            .collect()
    }

    /// Each rank's "backward" reports its gradients in `ORDER`, except
    /// rank 1's parameter 4, which it never reaches. Buckets start during
    /// the backward up to that one on rank 1, all of them on the others;
    /// the results are those of the one-bucket reduction after the
    /// backward, bit for bit, in f32 and in bf16.
    #[test]
    fn buckets_started_during_the_backward_average_as_one_bucket_after_it() {
        for wire in [DType::F32, DType::BF16] {
            let out = on_ranks(WORLD, move |comm| {
                let rank = comm.rank();
                let vars = params();
                let refs: Vec<&Var> = vars.iter().collect();
                let plan = BucketPlan::new(&ORDER, &SIZES, 4, 64, true).unwrap();
                let mut grads = store(rank, &vars);
                let mut sync = GradientSync::new(&refs, &plan, &comm, wire).unwrap();
                for i in ORDER {
                    if i == 4 && rank == 1 {
                        continue;
                    }
                    let g = grads.get(vars[i].as_tensor()).cloned();
                    sync.on_final(vars[i].as_tensor(), g.as_ref()).unwrap();
                }
                // Not a parameter: ignored.
                sync.on_final(&Tensor::zeros(2, DType::F32, &Device::Cpu).unwrap(), None)
                    .unwrap();
                let report = sync.finish(&mut grads).unwrap();
                let mut one = store(rank, &vars);
                average_gradients(&mut one, &refs, &comm, wire).unwrap();
                (report, plan, values(&grads, &vars), values(&one, &vars))
            });
            for (rank, (report, plan, bucketed, one_bucket)) in out.iter().enumerate() {
                assert!(plan.buckets().len() >= 3, "{:?}", plan.buckets());
                assert_eq!(report.buckets, plan.buckets().len());
                let expect_early = if rank == 1 {
                    plan.bucket_of(4)
                } else {
                    plan.buckets().len()
                };
                assert_eq!(report.started_in_backward, expect_early, "rank {rank}");
                let mut sorted = report.order.clone();
                sorted.sort_unstable();
                assert_eq!(sorted, (0..6).collect::<Vec<_>>());
                if rank == 1 {
                    assert_eq!(report.order.last(), Some(&4));
                }
                assert_eq!(bucketed, one_bucket, "{wire:?} rank {rank}");
                assert_eq!(bucketed, &out[0].2, "every rank the same");
            }
            // Against the mean written out: parameter 0 keeps no gradient,
            // parameter 4 averages rank 1's zeros in.
            let got = &out[0].2;
            assert!(got[0].is_none());
            let tol = if wire == DType::F32 { 1e-6 } else { 1e-2 };
            for i in 1..6 {
                let got = got[i].as_ref().expect("a gradient");
                for (k, &g) in got.iter().enumerate() {
                    let sum: f64 = (0..WORLD)
                        .filter(|&r| has_grad(r, i))
                        .map(|r| f64::from(grad(r, i)[k]))
                        .sum();
                    let want = sum / WORLD as f64;
                    assert!(
                        (f64::from(g) - want).abs() <= tol,
                        "{i}[{k}]: {g} vs {want}"
                    );
                }
            }
        }
    }

    /// `settle_stored` finishes what the store holds, and only that.
    #[test]
    fn settling_the_store_starts_the_complete_buckets() {
        let out = on_ranks(2, |comm| {
            let vars = params();
            let refs: Vec<&Var> = vars.iter().collect();
            let plan = BucketPlan::new(&ORDER, &SIZES, 4, 64, true).unwrap();
            let mut grads = store(comm.rank(), &vars);
            // Rank 1 lacks parameter 4: the bucket holding it waits.
            let mut sync = GradientSync::new(&refs, &plan, &comm, DType::F32).unwrap();
            sync.settle_stored(&grads).unwrap();
            let started = sync.next;
            let report = sync.finish(&mut grads).unwrap();
            (started, report, plan.bucket_of(0), plan.bucket_of(4))
        });
        // Parameter 0 (no gradient anywhere) is in the last bucket: rank 0
        // starts every bucket before it; rank 1 those before parameter 4's.
        let (started0, report0, last, _) = &out[0];
        assert_eq!(*started0, *last);
        assert_eq!(report0.started_in_backward, *last);
        let (started1, _, _, fourth) = &out[1];
        assert_eq!(started1, fourth);
        assert_eq!(out[0].1.buckets, *last + 1);
    }

    /// Every rank follows rank 0's order, whatever order it saw.
    #[test]
    fn the_plan_is_rank_zero_s() {
        let out = on_ranks(2, |comm| {
            let order: Vec<usize> = if comm.rank() == 0 {
                ORDER.to_vec()
            } else {
                (0..6).collect()
            };
            BucketPlan::agreed(&order, &SIZES, 4, 64, &comm).unwrap()
        });
        assert_eq!(out[0], out[1]);
        assert_eq!(
            out[0],
            BucketPlan::new(&ORDER, &SIZES, 4, 64, true).unwrap()
        );
    }

    #[test]
    fn a_plan_for_other_parameters_is_refused() {
        let vars = params();
        let refs: Vec<&Var> = vars.iter().collect();
        let plan = BucketPlan::single(5);
        let e =
            GradientSync::new(&refs, &plan, &crate::dist::SingleProcess, DType::F32).unwrap_err();
        assert!(e.to_string().contains("for 5 parameters, given 6"), "{e}");
        let plan = BucketPlan::single(6);
        assert!(GradientSync::new(&refs, &plan, &crate::dist::SingleProcess, DType::F16).is_err());
    }
}
