//! AdamW for parameters on the CPU, each parameter's update one pass over its values.
//!
//! candle-nn's `AdamW` computes the same update as eleven tensor operations per
//! parameter, each allocating and filling a new tensor the size of the parameter (the
//! CNN's largest layer has half a million weights, updated a dozen times an epoch). This
//! one updates the parameter and its moments in place (a candle in-place op), reading
//! the gradient once, in chunks spread over candle's thread pool, with candle-nn's
//! arithmetic: decoupled weight decay, bias-corrected moments, `ε` added to the square
//! root.

use candle_core::{CpuStorage, InplaceOp2, Layout, Result, Tensor, Var, backprop::GradStore, bail};
use candle_nn::ParamsAdamW;

use crate::models::disjoint::DisjointSlice;

pub struct FusedAdamW {
    params: ParamsAdamW,
    step: i32,
    vars: Vec<Moments>,
}

/// A parameter and its running moments.
struct Moments {
    var: Var,
    first: Vec<f32>,
    second: Vec<f32>,
}

impl FusedAdamW {
    /// An optimiser for `vars`, which must be f32 tensors on the CPU.
    pub fn new(vars: Vec<Var>, params: ParamsAdamW) -> Result<Self> {
        let vars = vars
            .into_iter()
            .map(|var| {
                if !var.device().is_cpu() || var.dtype() != candle_core::DType::F32 {
                    candle_core::bail!("the fused AdamW takes f32 parameters on the CPU");
                }
                let n = var.elem_count();
                Ok(Moments { var, first: vec![0.0; n], second: vec![0.0; n] })
            })
            .collect::<Result<_>>()?;
        Ok(FusedAdamW { params, step: 0, vars })
    }

    pub fn set_learning_rate(&mut self, lr: f64) {
        self.params.lr = lr;
    }

    /// Backpropagates `loss` and takes one step.
    pub fn backward_step(&mut self, loss: &Tensor) -> Result<()> {
        let grads = loss.backward()?;
        self.step_with(&grads)
    }

    fn step_with(&mut self, grads: &GradStore) -> Result<()> {
        self.step += 1;
        let p = &self.params;
        let constants = Constants {
            beta1: p.beta1 as f32,
            beta2: p.beta2 as f32,
            scale_m: (1.0 / (1.0 - p.beta1.powi(self.step))) as f32,
            scale_v: (1.0 / (1.0 - p.beta2.powi(self.step))) as f32,
            decay: (1.0 - p.lr * p.weight_decay) as f32,
            lr: p.lr as f32,
            eps: p.eps as f32,
        };
        for moments in &mut self.vars {
            let Some(grad) = grads.get(&moments.var) else { continue };
            let update = Update {
                first: DisjointSlice::new(&mut moments.first),
                second: DisjointSlice::new(&mut moments.second),
                constants,
            };
            moments.var.as_tensor().inplace_op2(&grad.contiguous()?, &update)?;
        }
        Ok(())
    }
}

/// One step's numbers, the same for every value.
#[derive(Clone, Copy)]
struct Constants {
    beta1: f32,
    beta2: f32,
    /// The moments' bias corrections, `1 / (1 - βᵗ)`.
    scale_m: f32,
    scale_v: f32,
    /// `1 - lr · weight decay`.
    decay: f32,
    lr: f32,
    eps: f32,
}

/// Values per task: a parameter's update is a few passes over memory, too short to split
/// finer.
const CHUNK: usize = 16 * 1024;

/// One parameter's update in place, from its gradient, with its moments.
struct Update<'a> {
    first: DisjointSlice<'a, f32>,
    second: DisjointSlice<'a, f32>,
    constants: Constants,
}

impl InplaceOp2 for Update<'_> {
    fn name(&self) -> &'static str {
        "adamw-update"
    }

    fn cpu_fwd(&self, s1: &mut CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<()> {
        let (CpuStorage::F32(theta), CpuStorage::F32(grad)) = (s1, s2) else { bail!("{}: f32 only", self.name()) };
        let (Some(t), Some(g)) = (l1.contiguous_offsets(), l2.contiguous_offsets()) else {
            bail!("{}: contiguous tensors only", self.name())
        };
        let (theta, grad) = (&mut theta[t.0..t.1], &grad[g.0..g.1]);
        if grad.len() != theta.len() {
            bail!("{}: a gradient of {} values for {}", self.name(), grad.len(), theta.len());
        }
        let Constants { beta1, beta2, scale_m, scale_v, decay, lr, eps } = self.constants;
        let len = theta.len();
        let theta = DisjointSlice::new(theta);
        candle_core::utils::barrier_pool().execute_chunked(len.div_ceil(CHUNK), |chunks| {
            for chunk in chunks {
                let range = chunk * CHUNK..len.min((chunk + 1) * CHUNK);
                // SAFETY: chunk `chunk` of the parameter and of its moments belongs to this
                // task alone (the moments are as long as the parameter: `FusedAdamW::new`).
                let (theta, m, v) = unsafe {
                    (
                        theta.slice_mut(range.clone()),
                        self.first.slice_mut(range.clone()),
                        self.second.slice_mut(range.clone()),
                    )
                };
                for (((theta, g), m), v) in theta.iter_mut().zip(&grad[range]).zip(m).zip(v) {
                    *m = *m * beta1 + g * (1.0 - beta1);
                    *v = *v * beta2 + g * g * (1.0 - beta2);
                    let adjusted = (*m * scale_m) / ((*v * scale_v).sqrt() + eps);
                    *theta = *theta * decay - adjusted * lr;
                }
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;
    use candle_nn::{AdamW, Optimizer};

    use super::*;

    #[test]
    fn takes_the_same_steps_as_candle_nns_adamw() {
        // A parameter of one chunk and one of several.
        for shape in [(3, 5), (300, 70)] {
            takes_the_same_steps_for(shape);
        }
    }

    fn takes_the_same_steps_for(shape: (usize, usize)) {
        let start = Tensor::randn(0f32, 1.0, shape, &Device::Cpu).unwrap();
        let target = Tensor::randn(0f32, 1.0, shape, &Device::Cpu).unwrap();
        let (ours, theirs) = (Var::from_tensor(&start).unwrap(), Var::from_tensor(&start).unwrap());
        let params = ParamsAdamW { lr: 0.05, weight_decay: 0.1, ..Default::default() };
        let mut fused = FusedAdamW::new(vec![ours.clone()], params.clone()).unwrap();
        let mut reference = AdamW::new(vec![theirs.clone()], params).unwrap();
        let loss = |v: &Var| (v.as_tensor() - &target).unwrap().sqr().unwrap().sum_all().unwrap();
        for step in 0..20 {
            if step == 10 {
                fused.set_learning_rate(0.01);
                reference.set_learning_rate(0.01);
            }
            fused.backward_step(&loss(&ours)).unwrap();
            reference.backward_step(&loss(&theirs)).unwrap();
        }
        let diff = (ours.as_tensor() - theirs.as_tensor()).unwrap().abs().unwrap().max_all().unwrap();
        assert!(diff.to_scalar::<f32>().unwrap() < 1e-5, "parameters differ by {diff}");
        assert!(
            loss(&ours).to_scalar::<f32>().unwrap()
                < loss(&Var::from_tensor(&start).unwrap()).to_scalar::<f32>().unwrap()
        );
    }
}
