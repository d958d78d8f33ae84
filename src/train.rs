//! A train job's options: its `TrainInput` read into [`TrainOptions`], the documented
//! defaults filled in and the network checked. The service calls [`options`] before it
//! queues a job and the worker trains with what it returns, so a request the service
//! accepts is one a worker can build, and the two never disagree on a default.
//!
//! [`Architecture`] is also what a trained model's `config.json` records beside its
//! weights (`{"kind": "mlp", "hidden": [20, 7, 5]}` or `{"kind": "cnn"}`), so its serde
//! form must stay readable by models trained before.

use serde::{Deserialize, Serialize};

use crate::{
    errors::FieldViolation,
    v1::{self, TrainInput},
};

/// The hidden layers of an MLP when a request names none: the original project's network.
pub const DEFAULT_HIDDEN_SIZES: [usize; 3] = [20, 7, 5];
/// Passes over the training set when a request does not say.
pub const DEFAULT_EPOCHS: usize = 10;
/// The learning rate of SGD when a request does not say (the original project's).
pub const DEFAULT_SGD_LEARNING_RATE: f64 = 0.0075;
/// The learning rate of AdamW when a request does not say.
pub const DEFAULT_ADAMW_LEARNING_RATE: f64 = 0.001;
/// The largest side images are resized to.
pub const MAX_INPUT_SIZE: usize = 512;
/// The most hidden layers an MLP may have.
pub const MAX_HIDDEN_LAYERS: usize = 8;
/// The most units one hidden layer may have.
pub const MAX_HIDDEN_UNITS: usize = 4096;
/// The smallest images the CNN takes: its two 2×2 poolings halve the side twice.
pub const CNN_MIN_INPUT_SIZE: usize = 4;

/// A classifier's network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Architecture {
    /// Flattened pixels through fully connected layers of these sizes, ReLU between.
    Mlp { hidden: Vec<usize> },
    /// Two 3×3 convolutions (16 and 32 channels, ReLU, 2×2 max-pooling), then a hidden
    /// layer of 64.
    Cnn,
}

impl Architecture {
    /// The architecture as the API states it (`TrainedModel.architecture` and
    /// `hidden_sizes`).
    pub fn to_proto(&self) -> (v1::Architecture, Vec<u32>) {
        match self {
            Architecture::Mlp { hidden } => (v1::Architecture::Mlp, hidden.iter().map(|&h| h as u32).collect()),
            Architecture::Cnn => (v1::Architecture::Cnn, Vec::new()),
        }
    }
}

/// The optimisation algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptimizerKind {
    /// Plain stochastic gradient descent.
    Sgd,
    /// Adam with decoupled weight decay.
    AdamW,
}

/// How to train.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainOptions {
    pub architecture: Architecture,
    pub epochs: usize,
    /// Images per step; 0 or more than the training set: the whole set (gradient descent).
    pub batch_size: usize,
    pub optimizer: OptimizerKind,
    pub learning_rate: f64,
    /// Fraction of the training images held out for validation; when 0, the dataset's
    /// separate validation set (its `test/` images, if any) is used.
    pub validation_split: f64,
    /// Seeds initialisation, splitting and shuffling; `None` picks one at random (the
    /// training reports which).
    pub seed: Option<u64>,
    /// Shift each training image by up to this many pixels each way, at random, every
    /// time it is seen (zeros fill in): more varied data for small sets.
    pub augment_shift: usize,
    /// Lower the learning rate along a half cosine to zero by the last step, instead of
    /// keeping it constant: the last epochs settle instead of bouncing around.
    pub cosine_decay: bool,
}

/// A request's options, with the documented defaults filled in; the violation names the
/// request field that is wrong (`train.architecture`, `train.hidden_sizes[2]` …).
pub fn options(input: &TrainInput) -> Result<TrainOptions, FieldViolation> {
    let architecture = match enum_field::<v1::Architecture>("train.architecture", input.architecture)? {
        v1::Architecture::Unspecified | v1::Architecture::Mlp => Architecture::Mlp {
            hidden: if input.hidden_sizes.is_empty() {
                DEFAULT_HIDDEN_SIZES.to_vec()
            } else {
                input.hidden_sizes.iter().map(|&h| h as usize).collect()
            },
        },
        v1::Architecture::Cnn if input.hidden_sizes.is_empty() => Architecture::Cnn,
        v1::Architecture::Cnn => {
            return Err(FieldViolation::new("train.hidden_sizes", "only for the mlp architecture"));
        }
    };
    check_network(&architecture, input.input_size as usize)?;
    let optimizer = match enum_field::<v1::Optimizer>("train.optimizer", input.optimizer)? {
        v1::Optimizer::Unspecified | v1::Optimizer::Sgd => OptimizerKind::Sgd,
        v1::Optimizer::Adamw => OptimizerKind::AdamW,
    };
    let cosine_decay =
        match enum_field::<v1::LearningRateSchedule>("train.learning_rate_schedule", input.learning_rate_schedule)? {
            v1::LearningRateSchedule::Unspecified | v1::LearningRateSchedule::Constant => false,
            v1::LearningRateSchedule::Cosine => true,
        };
    let learning_rate = match (input.learning_rate, optimizer) {
        (0.0, OptimizerKind::Sgd) => DEFAULT_SGD_LEARNING_RATE,
        (0.0, OptimizerKind::AdamW) => DEFAULT_ADAMW_LEARNING_RATE,
        (lr, _) => f64::from(lr),
    };
    Ok(TrainOptions {
        architecture,
        epochs: if input.epochs == 0 { DEFAULT_EPOCHS } else { input.epochs as usize },
        batch_size: input.batch_size as usize,
        optimizer,
        learning_rate,
        validation_split: f64::from(input.validation_split),
        seed: input.seed,
        augment_shift: input.augment_shift as usize,
        cosine_decay,
    })
}

/// Checks that `architecture` can be built for images of `input_size` pixels a side
/// (0: not known yet; the dataset's first image decides). The worker checks again once
/// the images have been read and the size is known.
pub fn check_network(architecture: &Architecture, input_size: usize) -> Result<(), FieldViolation> {
    if let Architecture::Mlp { hidden } = architecture {
        if hidden.len() > MAX_HIDDEN_LAYERS {
            return Err(FieldViolation::new(
                "train.hidden_sizes",
                format!("has {} layers; at most {MAX_HIDDEN_LAYERS}", hidden.len()),
            ));
        }
        if let Some((i, h)) = hidden.iter().enumerate().find(|(_, h)| !(1..=MAX_HIDDEN_UNITS).contains(h)) {
            return Err(FieldViolation::new(
                format!("train.hidden_sizes[{i}]"),
                format!("is {h}; must be between 1 and {MAX_HIDDEN_UNITS}"),
            ));
        }
    }
    if input_size > MAX_INPUT_SIZE {
        return Err(FieldViolation::new(
            "train.input_size",
            format!("is {input_size}; must be between 0 and {MAX_INPUT_SIZE}"),
        ));
    }
    if *architecture == Architecture::Cnn && (1..CNN_MIN_INPUT_SIZE).contains(&input_size) {
        return Err(FieldViolation::new(
            "train.input_size",
            format!("is {input_size}; the cnn needs at least {CNN_MIN_INPUT_SIZE}"),
        ));
    }
    Ok(())
}

/// An enum field's value, or a violation naming it when the number is not one of the
/// enum's (a client built from a newer API, or a hand-written request).
fn enum_field<E: TryFrom<i32>>(field: &str, value: i32) -> Result<E, FieldViolation> {
    E::try_from(value).map_err(|_| FieldViolation::new(field, format!("{value} is not a known value")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fill_an_empty_request() {
        let sgd = options(&TrainInput::default()).unwrap();
        assert_eq!(sgd.architecture, Architecture::Mlp { hidden: DEFAULT_HIDDEN_SIZES.to_vec() });
        assert_eq!((sgd.optimizer, sgd.learning_rate), (OptimizerKind::Sgd, DEFAULT_SGD_LEARNING_RATE));
        assert_eq!((sgd.epochs, sgd.seed, sgd.cosine_decay), (DEFAULT_EPOCHS, None, false));

        let adamw = options(&TrainInput {
            architecture: v1::Architecture::Cnn as i32,
            optimizer: v1::Optimizer::Adamw as i32,
            learning_rate_schedule: v1::LearningRateSchedule::Cosine as i32,
            seed: Some(7),
            ..Default::default()
        })
        .unwrap();
        assert_eq!((adamw.architecture, adamw.optimizer), (Architecture::Cnn, OptimizerKind::AdamW));
        assert_eq!((adamw.learning_rate, adamw.seed, adamw.cosine_decay), (DEFAULT_ADAMW_LEARNING_RATE, Some(7), true));
    }

    #[test]
    fn violations_name_the_field() {
        let field = |input: TrainInput| options(&input).unwrap_err().field;
        assert_eq!(field(TrainInput { architecture: 9, ..Default::default() }), "train.architecture");
        assert_eq!(field(TrainInput { optimizer: -1, ..Default::default() }), "train.optimizer");
        assert_eq!(
            field(TrainInput { learning_rate_schedule: 3, ..Default::default() }),
            "train.learning_rate_schedule"
        );
        let cnn_with_layers =
            TrainInput { architecture: v1::Architecture::Cnn as i32, hidden_sizes: vec![8], ..Default::default() };
        assert_eq!(
            options(&cnn_with_layers).unwrap_err().to_string(),
            "train.hidden_sizes: only for the mlp architecture"
        );
        assert_eq!(field(TrainInput { hidden_sizes: vec![4, 0], ..Default::default() }), "train.hidden_sizes[1]");
        assert_eq!(field(TrainInput { hidden_sizes: vec![1; 9], ..Default::default() }), "train.hidden_sizes");
        assert_eq!(field(TrainInput { input_size: 513, ..Default::default() }), "train.input_size");
        let tiny_cnn = TrainInput { architecture: v1::Architecture::Cnn as i32, input_size: 3, ..Default::default() };
        assert_eq!(field(tiny_cnn), "train.input_size");
    }

    #[test]
    fn the_architecture_keeps_its_config_json_form() {
        let mlp = Architecture::Mlp { hidden: vec![20, 7, 5] };
        assert_eq!(serde_json::to_string(&mlp).unwrap(), r#"{"kind":"mlp","hidden":[20,7,5]}"#);
        assert_eq!(serde_json::from_str::<Architecture>(r#"{"kind":"cnn"}"#).unwrap(), Architecture::Cnn);
    }
}
