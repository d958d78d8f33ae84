//! The image classifiers a train job can build ([`Architecture`]): the original
//! project's fully connected network with configurable hidden sizes, and a small
//! convolutional network.

use candle_core::{D, DType, Device, Module, Result, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder, VarMap};
use deephardway::train::{Architecture, check_network};
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde::{Deserialize, Serialize};

use super::{cpu_ops, dataset::InputShape};

/// Everything needed to rebuild a trained network: kept beside its weights as
/// `config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub architecture: Architecture,
    pub input: InputShape,
    pub classes: Vec<String>,
}

enum Layer {
    Linear(candle_nn::Linear),
    /// A 3×3 convolution with padding 1, then ReLU and 2×2 max pooling.
    ConvReluPool(candle_nn::Conv2d),
    Relu,
    Flatten,
}

/// A classifier: images `(n, channels, size, size)` in, logits `(n, classes)` out.
pub struct Network {
    layers: Vec<Layer>,
}

impl Network {
    /// Builds the layers, creating (or, from loaded weights, finding) their variables.
    pub fn new(config: &ModelConfig, vb: VarBuilder) -> Result<Self> {
        let InputShape { channels, size } = config.input;
        let classes = config.classes.len();
        let mut layers = Vec::new();
        match &config.architecture {
            Architecture::Mlp { hidden } => {
                layers.push(Layer::Flatten);
                let mut width = config.input.features();
                for (i, &h) in hidden.iter().enumerate() {
                    layers.push(Layer::Linear(candle_nn::linear(width, h, vb.pp(format!("fc{i}")))?));
                    layers.push(Layer::Relu);
                    width = h;
                }
                layers.push(Layer::Linear(candle_nn::linear(width, classes, vb.pp("out"))?));
            }
            Architecture::Cnn => {
                let conv = Conv2dConfig { padding: 1, ..Default::default() };
                layers.push(Layer::ConvReluPool(candle_nn::conv2d(channels, 16, 3, conv, vb.pp("conv0"))?));
                layers.push(Layer::ConvReluPool(candle_nn::conv2d(16, 32, 3, conv, vb.pp("conv1"))?));
                layers.push(Layer::Flatten);
                let side = size / 4;
                layers.push(Layer::Linear(candle_nn::linear(32 * side * side, 64, vb.pp("fc0"))?));
                layers.push(Layer::Relu);
                layers.push(Layer::Linear(candle_nn::linear(64, classes, vb.pp("out"))?));
            }
        }
        Ok(Network { layers })
    }

    pub fn forward(&self, images: &Tensor) -> Result<Tensor> {
        let mut x = images.clone();
        for layer in &self.layers {
            x = match layer {
                Layer::Linear(l) if x.device().is_cpu() => {
                    cpu_ops::linear(&x, l.weight(), &bias_or_zeros(l.bias(), l.weight())?)?
                }
                Layer::Linear(l) => l.forward(&x)?,
                Layer::ConvReluPool(c) if x.device().is_cpu() => {
                    cpu_ops::conv3x3_relu_pool(&x, c.weight(), &bias_or_zeros(c.bias(), c.weight())?)?
                }
                Layer::ConvReluPool(c) => max_pool2x2_by_reduction(&conv3x3_same_relu(&x, c.weight(), c.bias())?)?,
                Layer::Relu => x.relu()?,
                Layer::Flatten => x.flatten_from(1)?,
            };
        }
        Ok(x)
    }

    /// Class probabilities, `(n, classes)`.
    pub fn probabilities(&self, images: &Tensor) -> Result<Tensor> {
        candle_nn::ops::softmax(&self.forward(images)?, D::Minus1)
    }
}

/// A layer's bias, or zeros for each of the weight's outputs.
fn bias_or_zeros(bias: Option<&Tensor>, weight: &Tensor) -> Result<Tensor> {
    match bias {
        Some(bias) => Ok(bias.clone()),
        None => Tensor::zeros(weight.dim(0)?, weight.dtype(), weight.device()),
    }
}

/// A 3×3 convolution with padding 1, as candle's `conv2d` computes it, then ReLU, for
/// devices other than the CPU: the image's patches (im2col), nine shifted views of a
/// padded copy, and one matrix product per image, which trains faster than candle's
/// `conv2d` / `conv_transpose2d`. Same weights and results (tested). On the CPU,
/// [`cpu_ops::conv3x3_relu_pool`] does this and the pooling after it in one op.
fn conv3x3_same_relu(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let o = weight.dim(0)?;
    // (n, c·9, h·w): each input channel's nine taps in the kernel's (dy, dx) order, which
    // is the order of the weight's last two dimensions.
    let padded = x.pad_with_zeros(2, 1, 1)?.pad_with_zeros(3, 1, 1)?;
    let mut shifted = Vec::with_capacity(9);
    for dy in 0..3 {
        for dx in 0..3 {
            shifted.push(padded.narrow(2, dy, h)?.narrow(3, dx, w)?);
        }
    }
    let patches = Tensor::stack(&shifted, 2)?.reshape((n, c * 9, h * w))?;
    let kernel = weight.reshape((o, c * 9))?.broadcast_left(n)?;
    let out = kernel.matmul(&patches)?.reshape((n, o, h, w))?;
    match bias {
        Some(bias) => out.broadcast_add(&bias.reshape((1, o, 1, 1))?)?.relu(),
        None => out.relu(),
    }
}

/// 2×2 max pooling as two `max` reductions over a reshaped view, for devices other than
/// the CPU. Not candle's `max_pool2d`: its backward hands on a quarter of each gradient
/// (it scales by the share of the window that is largest where it means to divide by
/// it), where a reduction's gives it whole to the largest element, as the CPU op and
/// PyTorch do (to every tied one, where the CPU op picks the first).
fn max_pool2x2_by_reduction(x: &Tensor) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let (oh, ow) = (h / 2, w / 2);
    let x = x.narrow(2, 0, 2 * oh)?.narrow(3, 0, 2 * ow)?.contiguous()?;
    x.reshape((n, c, oh, 2, ow, 2))?.max(5)?.max(3)
}

/// Checks a configuration (a trained model's `config.json`) before anything is built,
/// with messages for the user.
pub fn check(config: &ModelConfig) -> std::result::Result<(), String> {
    let InputShape { channels, size } = config.input;
    if size == 0 {
        return Err("input_size 0: must be at least 1".into());
    }
    if channels != 1 && channels != 3 {
        return Err(format!("{channels} channels: only 1 or 3"));
    }
    check_network(&config.architecture, size).map_err(|v| v.to_string())
}

/// A new network with its variables initialised from `seed` (candle's CPU random numbers
/// cannot be seeded): weights normal with standard deviation 1/√fan_in, as the original
/// project initialised its network, biases zero.
pub fn initialised(config: &ModelConfig, seed: u64, device: &Device) -> Result<(Network, VarMap)> {
    let vars = VarMap::new();
    let network = Network::new(config, VarBuilder::from_varmap(&vars, DType::F32, device))?;
    let mut rng = StdRng::seed_from_u64(seed);
    let data = vars.data().lock().expect("no poisoned lock");
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    // A bias's fan-in is its layer's weight's.
    let fan_in = |name: &str| -> usize {
        let weight = data[&name.replace(".bias", ".weight")].as_tensor().dims().to_vec();
        weight[1..].iter().product()
    };
    for name in names {
        let var = &data[name];
        let deviation = 1.0 / (fan_in(name) as f32).sqrt();
        let values: Vec<f32> = if name.ends_with(".bias") {
            vec![0.0; var.elem_count()]
        } else {
            // Box–Muller: two uniforms to one standard normal.
            (0..var.elem_count())
                .map(|_| {
                    let (u, v): (f32, f32) = (rng.random_range(f32::EPSILON..1.0), rng.random());
                    deviation * (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
                })
                .collect()
        };
        var.set(&Tensor::from_vec(values, var.shape(), device)?)?;
    }
    drop(data);
    Ok((network, vars))
}

#[cfg(test)]
mod tests {
    use candle_core::Var;

    use super::*;

    /// Relative to the largest magnitude: the weight gradients reach the hundreds or
    /// thousands (sums over every position of the batch), where two f32 summation orders
    /// differ in the last bit (1.2e-4 at 1024); a wrong gradient differs by far more than
    /// 1e-5 of the scale.
    fn close(a: &Tensor, b: &Tensor) {
        let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        let scale = b.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap().max(1.0);
        assert!(diff <= 1e-5 * scale, "differ by {diff} at a scale of {scale}");
    }

    #[test]
    fn the_cpu_layer_matches_candles_conv2d_relu_and_pooling_forward_and_backward() {
        let device = Device::Cpu;
        // An odd size: the last row and column are pooled by neither.
        for (h, w) in [(6, 8), (5, 7), (2, 2)] {
            let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 3, h, w), &device).unwrap()).unwrap();
            let weight = Var::from_tensor(&Tensor::randn(0f32, 1.0, (4, 3, 3, 3), &device).unwrap()).unwrap();
            let bias = Var::from_tensor(&Tensor::randn(0f32, 1.0, 4, &device).unwrap()).unwrap();
            let ours = cpu_ops::conv3x3_relu_pool(&x, &weight, &bias).unwrap();
            let convolved = x.conv2d(&weight, 1, 1, 1, 1).unwrap().broadcast_add(&bias.reshape((1, 4, 1, 1)).unwrap());
            let candles = convolved.unwrap().relu().unwrap();
            close(&ours, &candles.max_pool2d(2).unwrap());
            // And the other devices' layer, run here: the same values and gradients.
            let theirs = max_pool2x2_by_reduction(&conv3x3_same_relu(&x, &weight, Some(&bias)).unwrap()).unwrap();
            close(&ours, &theirs);
            let weights = Tensor::randn(0f32, 1.0, ours.shape(), &device).unwrap();
            let loss = |t: &Tensor| (t * &weights).unwrap().sum_all().unwrap();
            let (g1, g2) = (loss(&ours).backward().unwrap(), loss(&theirs).backward().unwrap());
            for var in [x.as_tensor(), weight.as_tensor(), bias.as_tensor()] {
                close(g1.get(var).unwrap(), g2.get(var).unwrap());
            }
            // Images need no gradient, and get none.
            let images = x.as_tensor().detach();
            let grads = loss(&cpu_ops::conv3x3_relu_pool(&images, &weight, &bias).unwrap()).backward().unwrap();
            assert!(grads.get(&images).is_none());
            close(grads.get(&weight).unwrap(), g2.get(&weight).unwrap());
        }
    }

    #[test]
    fn a_tie_sends_the_gradient_to_the_first_largest() {
        // A convolution of zeros with a zero weight and a bias of 1: every window ties.
        let device = Device::Cpu;
        let x = Var::from_tensor(&Tensor::zeros((1, 1, 2, 2), DType::F32, &device).unwrap()).unwrap();
        let weight = Var::from_tensor(&Tensor::zeros((1, 1, 3, 3), DType::F32, &device).unwrap()).unwrap();
        let bias = Tensor::ones(1, DType::F32, &device).unwrap();
        let out = cpu_ops::conv3x3_relu_pool(&x, &weight, &bias).unwrap();
        assert_eq!(out.flatten_all().unwrap().to_vec1::<f32>().unwrap(), [1.0]);
        let grads = out.sum_all().unwrap().backward().unwrap();
        // Only the top-left output carries a gradient: its taps are the centre and the
        // three inputs right of and below it (zeros here), so the weight's gradient is
        // zero and the input's is the weight's (zero); the bias's is 1.
        let tapped = grads.get(&weight).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(tapped, [0.0; 9]);
        let with_ones = Var::from_tensor(&Tensor::ones((1, 1, 2, 2), DType::F32, &device).unwrap()).unwrap();
        let out = cpu_ops::conv3x3_relu_pool(&with_ones, &weight, &bias).unwrap();
        let grads = out.sum_all().unwrap().backward().unwrap();
        // The top-left output's patch: zeros above and left of it, ones elsewhere.
        let tapped = grads.get(&weight).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(tapped, [0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0]);
    }
}
