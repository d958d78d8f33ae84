//! Training a classifier with candle-nn: seeded split and shuffling, mini-batches,
//! cross-entropy, SGD or AdamW, and metrics after every step for the caller to report.

use std::time::Instant;

use candle_core::{D, DType, Device, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, SGD, VarMap};
use rand::{SeedableRng, rngs::StdRng, seq::SliceRandom};

use super::{
    dataset::Dataset,
    network::{Architecture, ModelConfig, Network, initialised},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptimizerKind {
    Sgd,
    AdamW,
}

/// How to train.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    pub architecture: Architecture,
    pub epochs: usize,
    /// Images per step; 0 or more than the training set: the whole set (gradient descent).
    pub batch_size: usize,
    pub optimizer: OptimizerKind,
    pub learning_rate: f64,
    /// Fraction of the training images held out for validation; when 0, the separate
    /// validation set given to [`train`] (if any) is used.
    pub validation_split: f64,
    pub seed: u64,
    /// Shift each training image by up to this many pixels each way, at random, every
    /// time it is seen (zeros fill in): more varied data for small sets.
    pub augment_shift: usize,
    /// Lower the learning rate along a half cosine to zero by the last step, instead of
    /// keeping it constant: the last epochs settle instead of bouncing around.
    pub cosine_decay: bool,
}

/// Where training stands, after a step.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    pub epoch: usize,
    pub step: usize,
    pub steps: usize,
    /// Mean loss and accuracy over the epoch so far.
    pub loss: f64,
    pub train_accuracy: f64,
    /// Accuracy on the held-out images, measured at the end of each epoch.
    pub validation_accuracy: Option<f64>,
    /// How many images that accuracy is over.
    pub validation_images: usize,
    pub images_per_second: f64,
    /// This step ended an epoch.
    pub epoch_end: bool,
}

/// A trained network and what it reached.
pub struct Trained {
    pub config: ModelConfig,
    pub vars: VarMap,
    pub network: Network,
    pub last: Progress,
}

/// Why training stopped early.
#[derive(Debug)]
pub enum Stopped {
    /// The progress callback asked to stop.
    Cancelled,
    Failed(anyhow::Error),
}

impl From<candle_core::Error> for Stopped {
    fn from(e: candle_core::Error) -> Self {
        Stopped::Failed(e.into())
    }
}

/// The optimiser chosen, behind one interface.
enum AnyOptimizer {
    Sgd(SGD),
    AdamW(AdamW),
}

impl AnyOptimizer {
    fn backward_step(&mut self, loss: &Tensor) -> candle_core::Result<()> {
        match self {
            AnyOptimizer::Sgd(o) => o.backward_step(loss),
            AnyOptimizer::AdamW(o) => o.backward_step(loss),
        }
    }

    fn set_learning_rate(&mut self, lr: f64) {
        match self {
            AnyOptimizer::Sgd(o) => o.set_learning_rate(lr),
            AnyOptimizer::AdamW(o) => o.set_learning_rate(lr),
        }
    }
}

/// Trains on `dataset`, validating on a split of it or on `separate_validation`; `on_progress` sees
/// every step and returns false to stop.
pub fn train(
    dataset: &Dataset,
    separate_validation: Option<&Dataset>,
    options: &TrainOptions,
    device: &Device,
    mut on_progress: impl FnMut(&Progress) -> bool,
) -> Result<Trained, Stopped> {
    let config = ModelConfig {
        architecture: options.architecture.clone(),
        input: dataset.shape,
        classes: dataset.classes.clone(),
    };
    let n = dataset.files.len();
    let mut rng = StdRng::seed_from_u64(options.seed);
    let mut order: Vec<u32> = (0..n as u32).collect();
    order.shuffle(&mut rng);
    let held_out = ((n as f64) * options.validation_split).round() as usize;
    let (validation, mut training) = (order[..held_out].to_vec(), order[held_out..].to_vec());
    if training.is_empty() {
        return Err(Stopped::Failed(anyhow::anyhow!("no images left to train on after the validation split")));
    }
    let pick = |indices: &[u32]| -> candle_core::Result<(Tensor, Tensor)> {
        let indices = Tensor::new(indices, device)?;
        Ok((dataset.images.index_select(&indices, 0)?, dataset.labels.index_select(&indices, 0)?))
    };
    let validation_set = match separate_validation {
        _ if !validation.is_empty() => Some(pick(&validation)?),
        Some(set) => {
            if set.classes != dataset.classes || set.shape != dataset.shape {
                return Err(Stopped::Failed(anyhow::anyhow!("the validation set's classes or shape differ")));
            }
            Some((set.images.clone(), set.labels.clone()))
        }
        None => None,
    };

    let (network, vars) = initialised(&config, options.seed, device)?;
    let mut optimizer = match options.optimizer {
        OptimizerKind::Sgd => AnyOptimizer::Sgd(SGD::new(vars.all_vars(), options.learning_rate)?),
        OptimizerKind::AdamW => {
            let params = ParamsAdamW { lr: options.learning_rate, ..Default::default() };
            AnyOptimizer::AdamW(AdamW::new(vars.all_vars(), params)?)
        }
    };

    let batch = if options.batch_size == 0 { training.len() } else { options.batch_size.min(training.len()) };
    let per_epoch = training.len().div_ceil(batch);
    let mut progress = Progress { steps: per_epoch * options.epochs, ..Default::default() };
    for epoch in 0..options.epochs {
        training.shuffle(&mut rng);
        let (mut loss_sum, mut correct, mut seen) = (0f64, 0usize, 0usize);
        let started = Instant::now();
        for (i, chunk) in training.chunks(batch).enumerate() {
            let (images, labels) = pick(chunk)?;
            let images =
                if options.augment_shift > 0 { shifted(&images, options.augment_shift, &mut rng)? } else { images };
            let logits = network.forward(&images)?;
            let loss = candle_nn::loss::cross_entropy(&logits, &labels)?;
            if options.cosine_decay {
                let done = progress.step as f64 / progress.steps as f64;
                optimizer.set_learning_rate(options.learning_rate * 0.5 * (1.0 + (std::f64::consts::PI * done).cos()));
            }
            optimizer.backward_step(&loss)?;
            loss_sum += loss.to_scalar::<f32>()? as f64 * chunk.len() as f64;
            correct += correct_count(&logits, &labels)?;
            seen += chunk.len();
            progress.epoch = epoch + 1;
            progress.step += 1;
            progress.loss = loss_sum / seen as f64;
            progress.train_accuracy = correct as f64 / seen as f64;
            progress.images_per_second = seen as f64 / started.elapsed().as_secs_f64().max(1e-9);
            progress.epoch_end = i + 1 == per_epoch;
            if progress.epoch_end
                && let Some((images, labels)) = &validation_set
            {
                let logits = network.forward(images)?;
                progress.validation_accuracy = Some(correct_count(&logits, labels)? as f64 / labels.dim(0)? as f64);
                progress.validation_images = labels.dim(0)?;
            }
            if !on_progress(&progress) {
                return Err(Stopped::Cancelled);
            }
        }
    }
    Ok(Trained { config, vars, network, last: progress })
}

/// Each image of `(n, c, s, s)` moved by a random offset in ±`k` pixels on both axes.
fn shifted(images: &Tensor, k: usize, rng: &mut StdRng) -> candle_core::Result<Tensor> {
    use rand::Rng;
    let size = images.dim(2)?;
    let padded = images.pad_with_zeros(2, k, k)?.pad_with_zeros(3, k, k)?;
    let moved: Vec<Tensor> = (0..images.dim(0)?)
        .map(|i| {
            let (dy, dx) = (rng.random_range(0..=2 * k), rng.random_range(0..=2 * k));
            padded.narrow(0, i, 1)?.narrow(2, dy, size)?.narrow(3, dx, size)
        })
        .collect::<candle_core::Result<_>>()?;
    Tensor::cat(&moved, 0)
}

/// How many rows' largest logit is their label.
pub fn correct_count(logits: &Tensor, labels: &Tensor) -> candle_core::Result<usize> {
    let predicted = logits.argmax(D::Minus1)?;
    predicted.eq(labels)?.to_dtype(DType::F32)?.sum_all()?.to_scalar::<f32>().map(|c| c as usize)
}
