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
    /// A 3×3 convolution with padding 1, then ReLU.
    ConvRelu(candle_nn::Conv2d),
    Relu,
    Pool,
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
                layers.push(Layer::ConvRelu(candle_nn::conv2d(channels, 16, 3, conv, vb.pp("conv0"))?));
                layers.push(Layer::Pool);
                layers.push(Layer::ConvRelu(candle_nn::conv2d(16, 32, 3, conv, vb.pp("conv1"))?));
                layers.push(Layer::Pool);
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
                    let y = cpu_ops::linear(&x, l.weight())?;
                    match l.bias() {
                        Some(bias) => y.broadcast_add(bias)?,
                        None => y,
                    }
                }
                Layer::Linear(l) => l.forward(&x)?,
                Layer::ConvRelu(c) => conv3x3_same_relu(&x, c.weight(), c.bias())?,
                Layer::Relu => x.relu()?,
                Layer::Pool if x.device().is_cpu() => cpu_ops::max_pool2x2(&x)?,
                Layer::Pool => max_pool2x2_by_reduction(&x)?,
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

/// A 3×3 convolution with padding 1, as candle's `conv2d` computes it, then ReLU: the
/// image's patches (im2col) and one matrix product per image. Same weights and results
/// (tested), but faster to train than candle's CPU `conv2d` / `conv_transpose2d`. On the
/// CPU the patches and the bias with ReLU are custom ops with direct backwards
/// ([`cpu_ops`]); elsewhere the patches are nine shifted views of a padded copy.
fn conv3x3_same_relu(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let o = weight.dim(0)?;
    let cpu = x.device().is_cpu();
    // (n, c·9, h·w): each input channel's nine taps in the kernel's (dy, dx) order, which
    // is the order of the weight's last two dimensions.
    let patches = if cpu {
        cpu_ops::patches3x3(x)?
    } else {
        let padded = x.pad_with_zeros(2, 1, 1)?.pad_with_zeros(3, 1, 1)?;
        let mut shifted = Vec::with_capacity(9);
        for dy in 0..3 {
            for dx in 0..3 {
                shifted.push(padded.narrow(2, dy, h)?.narrow(3, dx, w)?);
            }
        }
        Tensor::stack(&shifted, 2)?.reshape((n, c * 9, h * w))?
    };
    let kernel = weight.reshape((o, c * 9))?.broadcast_left(n)?;
    let out = kernel.matmul(&patches)?.reshape((n, o, h, w))?;
    match bias {
        Some(bias) if cpu => cpu_ops::bias_relu(&out, bias),
        Some(bias) => out.broadcast_add(&bias.reshape((1, o, 1, 1))?)?.relu(),
        None => out.relu(),
    }
}

/// 2×2 max pooling as two `max` reductions over a reshaped view, for devices other than
/// the CPU. Not candle's `max_pool2d`: its backward hands on a quarter of each gradient
/// (see `cpu_ops`), where a reduction's gives it whole to the largest element, as the CPU
/// op and PyTorch do (to every tied one, where the CPU op picks the first).
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
    use super::*;

    #[test]
    fn pooling_by_reduction_matches_the_cpu_op_forward_and_backward() {
        let x = candle_core::Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 3, 7, 6), &Device::Cpu).unwrap()).unwrap();
        let (ours, cpu) = (max_pool2x2_by_reduction(&x).unwrap(), cpu_ops::max_pool2x2(&x).unwrap());
        let weights = Tensor::randn(0f32, 1.0, (2, 3, 3, 3), &Device::Cpu).unwrap();
        let gradient = |pooled: &Tensor| {
            let grads = (pooled * &weights).unwrap().sum_all().unwrap().backward().unwrap();
            grads.get(&x).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()
        };
        let values = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(values(&ours), values(&cpu));
        assert_eq!(gradient(&ours), gradient(&cpu));
    }

    #[test]
    fn the_conv_matches_candles_conv2d_and_relu_forward_and_backward() {
        let device = Device::Cpu;
        let x = candle_core::Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 3, 5, 6), &device).unwrap()).unwrap();
        let weight = candle_core::Var::from_tensor(&Tensor::randn(0f32, 1.0, (4, 3, 3, 3), &device).unwrap()).unwrap();
        let bias = Tensor::randn(0f32, 1.0, 4, &device).unwrap();
        let ours = conv3x3_same_relu(&x, &weight, Some(&bias)).unwrap();
        let theirs = x
            .conv2d(&weight, 1, 1, 1, 1)
            .unwrap()
            .broadcast_add(&bias.reshape((1, 4, 1, 1)).unwrap())
            .unwrap()
            .relu()
            .unwrap();
        // Relative to the largest magnitude: the weight gradients reach the hundreds or
        // thousands (sums over every position of the batch), where two f32 summation
        // orders differ in the last bit (1.2e-4 at 1024); a wrong convolution differs by
        // far more than 1e-5 of the scale.
        let close = |a: &Tensor, b: &Tensor| {
            let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            let scale = b.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap().max(1.0);
            assert!(diff <= 1e-5 * scale, "differ by {diff} at a scale of {scale}");
        };
        close(&ours, &theirs);
        let (ours, theirs) = (ours.sqr().unwrap().sum_all().unwrap(), theirs.sqr().unwrap().sum_all().unwrap());
        let (g1, g2) = (ours.backward().unwrap(), theirs.backward().unwrap());
        close(g1.get(&x).unwrap(), g2.get(&x).unwrap());
        close(g1.get(&weight).unwrap(), g2.get(&weight).unwrap());
    }
}
