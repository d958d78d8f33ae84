//! A linear layer, `x · Wᵀ + b`, forward and backward through [`crate::models::sgemm`]
//! (the weight, which changes every step, packed at each call).

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor, bail};

use super::{contiguous_f32, tensor_f32};
use crate::models::sgemm::{Activation, Matrix, Start, multiply};

/// `x · weightᵀ + bias` for a linear layer, `x` `(n, inputs)`, `weight` `(outputs,
/// inputs)` and `bias` `(outputs,)`, with a backward that computes the input's gradient
/// only when something needs it. candle's own product computes both sides' gradients
/// every time, and the first layer's input is the images: for the original network on
/// catvnoncat that was a second 209 × 20 × 12,288 product, and a zero-filled buffer the
/// size of the data set added into, on every step, for nothing.
pub fn linear(x: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op3(&weight.contiguous()?, &bias.contiguous()?, Linear)
}

struct Linear;

impl CustomOp3 for Linear {
    fn name(&self) -> &'static str {
        "linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, inputs) = l1.shape().dims2()?;
        let (outputs, weight_inputs) = l2.shape().dims2()?;
        if inputs != weight_inputs || l3.shape().dims() != [outputs] {
            bail!("{}: {inputs} inputs for a weight of {:?} and a bias of {:?}", self.name(), l2.shape(), l3.shape());
        }
        let name = self.name();
        let (x, weight, bias) =
            (contiguous_f32(name, s1, l1)?, contiguous_f32(name, s2, l2)?, contiguous_f32(name, s3, l3)?);
        let mut out = vec![0f32; n * outputs];
        let (x, weight) = (Matrix::row_major(x, n, inputs), Matrix::row_major(weight, outputs, inputs));
        multiply(x, weight.t(), Start::ColumnBias(bias), Activation::None, &mut out);
        Ok((CpuStorage::F32(out), Shape::from((n, outputs))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _bias: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let name = self.name();
        let ((n, inputs), outputs) = (x.dims2()?, weight.dim(0)?);
        let grad_res = grad_res.contiguous()?;
        let (gs, gl) = grad_res.storage_and_layout();
        let (xs, xl) = x.storage_and_layout();
        let (g, data) = (tensor_f32(name, &gs, gl)?, tensor_f32(name, &xs, xl)?);
        // dL/db = the columns' sums of g, dL/dW = gᵀ · x, dL/dx = g · W.
        let mut grad_bias = vec![0f32; outputs];
        for row in g.chunks_exact(outputs) {
            grad_bias.iter_mut().zip(row).for_each(|(sum, v)| *sum += v);
        }
        let g = Matrix::row_major(g, n, outputs);
        let mut grad_weight = vec![0f32; outputs * inputs];
        multiply(g.t(), Matrix::row_major(data, n, inputs), Start::Zero, Activation::None, &mut grad_weight);
        let grad_x = if x.track_op() {
            let (ws, wl) = weight.storage_and_layout();
            let w = Matrix::row_major(tensor_f32(name, &ws, wl)?, outputs, inputs);
            let mut grad_x = vec![0f32; n * inputs];
            multiply(g, w, Start::Zero, Activation::None, &mut grad_x);
            Some(Tensor::from_vec(grad_x, (n, inputs), x.device())?)
        } else {
            None
        };
        let device = x.device();
        Ok((
            grad_x,
            Some(Tensor::from_vec(grad_weight, (outputs, inputs), device)?),
            Some(Tensor::from_vec(grad_bias, outputs, device)?),
        ))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::{super::close, *};

    #[test]
    fn linear_matches_candles_product_and_skips_gradients_nobody_needs() {
        let weight = Var::from_tensor(&Tensor::randn(0f32, 1.0, (20, 70), &Device::Cpu).unwrap()).unwrap();
        let bias = Var::from_tensor(&Tensor::randn(0f32, 1.0, 20, &Device::Cpu).unwrap()).unwrap();
        let data = Tensor::randn(0f32, 1.0, (9, 70), &Device::Cpu).unwrap();
        let hidden = Var::from_tensor(&data).unwrap();
        let weights = Tensor::randn(0f32, 1.0, (9, 20), &Device::Cpu).unwrap();
        let loss = |p: &Tensor| (p * &weights).unwrap().sum_all().unwrap();
        for x in [&data, hidden.as_tensor()] {
            let ours = linear(x, &weight, &bias).unwrap();
            let theirs = x.matmul(&weight.t().unwrap()).unwrap().broadcast_add(&bias).unwrap();
            close(&ours, &theirs);
            let (g1, g2) = (loss(&ours).backward().unwrap(), loss(&theirs).backward().unwrap());
            close(g1.get(&weight).unwrap(), g2.get(&weight).unwrap());
            close(g1.get(&bias).unwrap(), g2.get(&bias).unwrap());
            match g2.get(x) {
                Some(want) if x.track_op() => close(g1.get(x).unwrap(), want),
                _ => assert!(g1.get(x).is_none(), "no gradient for data"),
            }
        }
    }
}
