//! Training a classifier with candle-nn: seeded split and shuffling, mini-batches,
//! cross-entropy, SGD or AdamW, and metrics after every step for the caller to report.
//! The options ([`TrainOptions`]) are read from a request by `deephardway::train`.

use std::time::Instant;

use candle_core::{D, DType, Device, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, SGD, VarMap};
use deephardway::train::{OptimizerKind, TrainOptions};
use rand::{SeedableRng, rngs::StdRng, seq::SliceRandom};

use super::{
    dataset::Dataset,
    fused_adamw::FusedAdamW,
    network::{ModelConfig, Network, initialised},
};

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
    /// Images in this step's batch.
    pub batch_images: usize,
    /// This step ended an epoch.
    pub epoch_end: bool,
}

/// A trained network and what it reached.
pub struct Trained {
    pub config: ModelConfig,
    pub vars: VarMap,
    pub network: Network,
    pub last: Progress,
    /// The seed training used: the options', or the one picked when they had none.
    pub seed: u64,
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
    /// AdamW on the CPU (see [`FusedAdamW`]).
    FusedAdamW(FusedAdamW),
}

impl AnyOptimizer {
    fn new(options: &TrainOptions, vars: &VarMap, device: &Device) -> candle_core::Result<Self> {
        Ok(match options.optimizer {
            OptimizerKind::Sgd => AnyOptimizer::Sgd(SGD::new(vars.all_vars(), options.learning_rate)?),
            OptimizerKind::AdamW => {
                let params = ParamsAdamW { lr: options.learning_rate, ..Default::default() };
                if device.is_cpu() {
                    AnyOptimizer::FusedAdamW(FusedAdamW::new(vars.all_vars(), params)?)
                } else {
                    AnyOptimizer::AdamW(AdamW::new(vars.all_vars(), params)?)
                }
            }
        })
    }

    fn backward_step(&mut self, loss: &Tensor) -> candle_core::Result<()> {
        match self {
            AnyOptimizer::Sgd(o) => o.backward_step(loss),
            AnyOptimizer::AdamW(o) => o.backward_step(loss),
            AnyOptimizer::FusedAdamW(o) => o.backward_step(loss),
        }
    }

    fn set_learning_rate(&mut self, lr: f64) {
        match self {
            AnyOptimizer::Sgd(o) => o.set_learning_rate(lr),
            AnyOptimizer::AdamW(o) => o.set_learning_rate(lr),
            AnyOptimizer::FusedAdamW(o) => o.set_learning_rate(lr),
        }
    }
}

/// Images and their labels, `(n, channels, size, size)` and `(n,)`.
type Batch = (Tensor, Tensor);

/// Trains on `dataset`, validating on a split of it or on `separate_validation`; `on_progress` sees
/// every step and returns false to stop.
pub fn train(
    dataset: &Dataset,
    separate_validation: Option<&Dataset>,
    options: &TrainOptions,
    device: &Device,
    on_progress: impl FnMut(&Progress) -> bool,
) -> Result<Trained, Stopped> {
    let seed = options.seed.unwrap_or_else(rand::random);
    let config = ModelConfig {
        architecture: options.architecture.clone(),
        input: dataset.shape,
        classes: dataset.classes.clone(),
    };
    let mut rng = StdRng::seed_from_u64(seed);
    let (training, validation) = split(dataset, separate_validation, options.validation_split, &mut rng, device)?;
    let (network, vars) = initialised(&config, seed, device)?;
    let optimizer = AnyOptimizer::new(options, &vars, device)?;
    let mut run = Run { dataset, options, device, network: &network, optimizer, rng, on_progress };
    let last = run.epochs(training, validation.as_ref())?;
    Ok(Trained { config, vars, network, last, seed })
}

/// The rows of `dataset` to train on, shuffled, and the validation set: the split held
/// out of `dataset`, or else `separate` (if any).
fn split(
    dataset: &Dataset,
    separate: Option<&Dataset>,
    validation_split: f64,
    rng: &mut StdRng,
    device: &Device,
) -> Result<(Vec<u32>, Option<Batch>), Stopped> {
    let n = dataset.files.len();
    let mut order: Vec<u32> = (0..n as u32).collect();
    order.shuffle(rng);
    let held_out = ((n as f64) * validation_split).round() as usize;
    let (validation, training) = (order[..held_out].to_vec(), order[held_out..].to_vec());
    if training.is_empty() {
        return Err(Stopped::Failed(anyhow::anyhow!("no images left to train on after the validation split")));
    }
    let validation_set = match separate {
        _ if !validation.is_empty() => Some(pick(dataset, &validation, device)?),
        Some(set) => {
            if set.classes != dataset.classes || set.shape != dataset.shape {
                return Err(Stopped::Failed(anyhow::anyhow!("the validation set's classes or shape differ")));
            }
            Some((set.images.clone(), set.labels.clone()))
        }
        None => None,
    };
    Ok((training, validation_set))
}

/// The images and labels of `dataset` at `indices`.
fn pick(dataset: &Dataset, indices: &[u32], device: &Device) -> candle_core::Result<Batch> {
    let indices = Tensor::new(indices, device)?;
    Ok((dataset.images.index_select(&indices, 0)?, dataset.labels.index_select(&indices, 0)?))
}

/// One training run's state, from the first step to the last.
struct Run<'a, F> {
    dataset: &'a Dataset,
    options: &'a TrainOptions,
    device: &'a Device,
    network: &'a Network,
    optimizer: AnyOptimizer,
    rng: StdRng,
    on_progress: F,
}

impl<F: FnMut(&Progress) -> bool> Run<'_, F> {
    /// Every epoch over the `training` rows, each shuffled anew (unless every step takes
    /// them all); returns the last step's progress.
    fn epochs(&mut self, mut training: Vec<u32>, validation: Option<&Batch>) -> Result<Progress, Stopped> {
        let options = self.options;
        let batch = if options.batch_size == 0 { training.len() } else { options.batch_size.min(training.len()) };
        let per_epoch = training.len().div_ceil(batch);
        let mut progress = Progress { steps: per_epoch * options.epochs, ..Default::default() };
        // When every step takes the whole set unchanged, the batch is the same each epoch
        // (its order would change nothing but rounding): gathered once, not copied anew
        // every step.
        let whole_set = if per_epoch == 1 && options.augment_shift == 0 {
            Some(pick(self.dataset, &training, self.device)?)
        } else {
            None
        };
        for epoch in 0..options.epochs {
            if whole_set.is_none() {
                training.shuffle(&mut self.rng);
            }
            let (mut loss_sum, mut correct, mut seen) = (0f64, 0usize, 0usize);
            let started = Instant::now();
            for (i, chunk) in training.chunks(batch).enumerate() {
                let (loss, right) = match &whole_set {
                    Some(batch) => self.step_on(batch, &progress)?,
                    None => self.step(chunk, &progress)?,
                };
                loss_sum += loss * chunk.len() as f64;
                correct += right;
                seen += chunk.len();
                progress.epoch = epoch + 1;
                progress.step += 1;
                progress.batch_images = chunk.len();
                progress.loss = loss_sum / seen as f64;
                progress.train_accuracy = correct as f64 / seen as f64;
                progress.images_per_second = seen as f64 / started.elapsed().as_secs_f64().max(1e-9);
                progress.epoch_end = i + 1 == per_epoch;
                if progress.epoch_end
                    && let Some((images, labels)) = validation
                {
                    let logits = self.network.forward(images)?;
                    progress.validation_accuracy = Some(correct_count(&logits, labels)? as f64 / labels.dim(0)? as f64);
                    progress.validation_images = labels.dim(0)?;
                }
                if !(self.on_progress)(&progress) {
                    return Err(Stopped::Cancelled);
                }
            }
        }
        Ok(progress)
    }

    /// One optimisation step on the rows `chunk`: their loss and how many of them the
    /// network labelled right (before the step).
    fn step(&mut self, chunk: &[u32], progress: &Progress) -> Result<(f64, usize), Stopped> {
        let options = self.options;
        let (images, labels) = pick(self.dataset, chunk, self.device)?;
        let images =
            if options.augment_shift > 0 { shifted(&images, options.augment_shift, &mut self.rng)? } else { images };
        self.step_on(&(images, labels), progress)
    }

    /// One optimisation step on a batch already gathered.
    fn step_on(&mut self, (images, labels): &Batch, progress: &Progress) -> Result<(f64, usize), Stopped> {
        let options = self.options;
        let logits = self.network.forward(images)?;
        let loss = candle_nn::loss::cross_entropy(&logits, labels)?;
        if options.cosine_decay {
            let done = progress.step as f64 / progress.steps as f64;
            self.optimizer.set_learning_rate(options.learning_rate * 0.5 * (1.0 + (std::f64::consts::PI * done).cos()));
        }
        self.optimizer.backward_step(&loss)?;
        Ok((loss.to_scalar::<f32>()? as f64, correct_count(&logits, labels)?))
    }
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
