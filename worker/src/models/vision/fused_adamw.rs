//! AdamW for parameters on the CPU, each parameter's update one pass over its values.
//!
//! candle-nn's `AdamW` computes the same update as eleven tensor operations per
//! parameter, each allocating and filling a new tensor the size of the parameter (the
//! CNN's largest layer has half a million weights, updated a dozen times an epoch). This
//! one reads the gradient and the parameter once, updates the moments in place and writes
//! the parameter back once, with candle-nn's arithmetic: decoupled weight decay, bias-
//! corrected moments, `ε` added to the square root.

use candle_core::{Result, Tensor, Var, backprop::GradStore};
use candle_nn::ParamsAdamW;

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
        let (beta1, beta2) = (p.beta1 as f32, p.beta2 as f32);
        let scale_m = (1.0 / (1.0 - p.beta1.powi(self.step))) as f32;
        let scale_v = (1.0 / (1.0 - p.beta2.powi(self.step))) as f32;
        let decay = (1.0 - p.lr * p.weight_decay) as f32;
        let (lr, eps) = (p.lr as f32, p.eps as f32);
        for moments in &mut self.vars {
            let Some(grad) = grads.get(&moments.var) else { continue };
            let grad = grad.flatten_all()?.to_vec1::<f32>()?;
            let mut theta = moments.var.flatten_all()?.to_vec1::<f32>()?;
            for (((theta, g), m), v) in theta.iter_mut().zip(&grad).zip(&mut moments.first).zip(&mut moments.second) {
                *m = *m * beta1 + g * (1.0 - beta1);
                *v = *v * beta2 + g * g * (1.0 - beta2);
                let adjusted = (*m * scale_m) / ((*v * scale_v).sqrt() + eps);
                *theta = *theta * decay - adjusted * lr;
            }
            moments.var.set(&Tensor::from_vec(theta, moments.var.shape(), moments.var.device())?)?;
        }
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
        let start = Tensor::randn(0f32, 1.0, (3, 5), &Device::Cpu).unwrap();
        let target = Tensor::randn(0f32, 1.0, (3, 5), &Device::Cpu).unwrap();
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
