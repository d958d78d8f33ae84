//! Training image classifiers on the shared datasets (`../shared/datasets`, see its
//! README): the original project's cat/non-cat network, a small convolutional network,
//! and handwritten digits, each to its accuracy bar on the held-out `test/` images.
//!
//! The accuracy tests are ignored by default to keep CI short: CI trains the seed network
//! on catvnoncat and the digits CNN through the whole service instead
//! (`service/tests/training.rs`). Run these with
//! `cargo test -p deephardway-worker --test vision -- --ignored --nocapture`.

use std::{path::PathBuf, time::Instant};

use candle_core::Device;
use deephardway::train::{Architecture, OptimizerKind, TrainOptions};
use deephardway_worker::models::vision::{
    classifier::Classifier,
    dataset::{self, Dataset},
    training::{Stopped, train},
};

/// `$DEEPHARDWAY_DATASETS`, else `../shared/datasets` beside the repository.
fn datasets() -> Option<PathBuf> {
    let dir = std::env::var_os("DEEPHARDWAY_DATASETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/datasets")));
    if dir.exists() {
        return Some(dir);
    }
    // The datasets are not part of the repository; without them these tests cannot run.
    eprintln!("SKIPPED: {} is missing (the shared test datasets; set DEEPHARDWAY_DATASETS)", dir.display());
    None
}

fn load(name: &str, part: &str, size: usize) -> Dataset {
    dataset::load(&datasets().expect("datasets").join(name).join(part), size, &Device::Cpu).unwrap()
}

/// Trains, reports time per epoch and accuracy, and returns the classifier.
fn train_and_test(name: &str, size: usize, options: TrainOptions, bar: f64) -> Option<Classifier> {
    datasets()?;
    let (training, test) = (load(name, "train", size), load(name, "test", size));
    assert_eq!(training.classes, test.classes);
    let started = Instant::now();
    let trained = train(&training, None, &options, &Device::Cpu, |_| true).unwrap_or_else(|e| panic!("{e:?}"));
    let per_epoch = started.elapsed() / options.epochs as u32;
    let last = trained.last.clone();
    let classifier = Classifier::from_trained(trained, &Device::Cpu);
    let accuracy = classifier.accuracy(&test).unwrap();
    println!(
        "{name} {:?}: {} epochs, {per_epoch:?} per epoch on CPU; loss {:.4}, train accuracy {:.3}, test accuracy {accuracy:.3}",
        options.architecture, options.epochs, last.loss, last.train_accuracy
    );
    assert!(accuracy >= bar, "{name}: test accuracy {accuracy:.3} < {bar}");
    Some(classifier)
}

/// The original project: 12288→20→7→5→(2), ReLU, plain gradient descent on the whole
/// training set, 2,500 iterations at 0.0075. It reported about 80% on the test set.
#[test]
#[ignore = "fifteen seconds of training; 78% on the 50 test images with seed 1, one image above the bar"]
fn catvnoncat_with_the_original_network() {
    let options = TrainOptions {
        architecture: Architecture::Mlp { hidden: vec![20, 7, 5] },
        epochs: 2500,
        batch_size: 0,
        optimizer: OptimizerKind::Sgd,
        learning_rate: 0.0075,
        validation_split: 0.0,
        seed: Some(1),
        augment_shift: 0,
        cosine_decay: false,
    };
    let Some(classifier) = train_and_test("catvnoncat", 64, options, 0.75) else { return };
    let photo = std::fs::read(datasets().unwrap().join("catvnoncat/gray-cat.jpeg")).unwrap();
    let prediction = classifier.classify(&[("gray-cat.jpeg", &photo)]).unwrap().remove(0);
    println!("gray-cat.jpeg: {prediction:?}");
}

#[test]
#[ignore = "five seconds of training; 92% with seed 1"]
fn catvnoncat_with_a_small_cnn() {
    let options = TrainOptions {
        architecture: Architecture::Cnn,
        epochs: 20,
        batch_size: 16,
        optimizer: OptimizerKind::AdamW,
        learning_rate: 1e-3,
        validation_split: 0.0,
        seed: Some(1),
        augment_shift: 0,
        cosine_decay: false,
    };
    train_and_test("catvnoncat", 64, options, 0.80);
}

/// Without augmentation the CNN overfits this split (93–95% depending on the seed; an
/// MLP reaches 90–92%, as scikit-learn's does). One-pixel random shifts and a cosine
/// learning-rate decay give 94.9–97.6% over seeds 1–7 (only seed 5 under 95%).
#[test]
#[ignore = "slow; CI runs the same training through the service (service/tests/training.rs)"]
fn digits() {
    let options = TrainOptions {
        architecture: Architecture::Cnn,
        epochs: 60,
        batch_size: 32,
        optimizer: OptimizerKind::AdamW,
        learning_rate: 3e-3,
        validation_split: 0.0,
        seed: Some(1),
        augment_shift: 1,
        cosine_decay: true,
    };
    train_and_test("digits", 8, options, 0.95);
}

/// Same seed, same model; saved and loaded, the same predictions; stopping is honoured;
/// a broken image is an error naming the file.
#[test]
fn deterministic_round_trips_cancels_and_names_bad_files() {
    if datasets().is_none() {
        return;
    }
    let digits = load("digits", "train", 8);
    let options = TrainOptions {
        architecture: Architecture::Cnn,
        epochs: 2,
        batch_size: 64,
        optimizer: OptimizerKind::AdamW,
        learning_rate: 1e-3,
        validation_split: 0.2,
        seed: Some(42),
        augment_shift: 0,
        cosine_decay: false,
    };
    let run = || train(&digits, None, &options, &Device::Cpu, |_| true).unwrap_or_else(|e| panic!("{e:?}"));
    let (a, b) = (run(), run());
    assert_eq!(a.last.loss, b.last.loss, "same seed, same training");
    assert!(a.last.validation_accuracy.is_some());

    let dir = tempfile::tempdir().unwrap();
    Classifier::save(&a, dir.path()).unwrap();
    let loaded = Classifier::load(dir.path(), &Device::Cpu).unwrap();
    let fresh = Classifier::from_trained(a, &Device::Cpu);
    let image = std::fs::read(datasets().unwrap().join("digits/train").join(&digits.files[0])).unwrap();
    let (x, y) = (
        loaded.classify(&[("0.png", &image)]).unwrap().remove(0),
        fresh.classify(&[("0.png", &image)]).unwrap().remove(0),
    );
    assert_eq!(x.label, y.label);
    assert_eq!(x.probabilities, y.probabilities);

    let mut steps = 0;
    let stopped = train(&digits, None, &options, &Device::Cpu, |_| {
        steps += 1;
        steps < 3
    });
    assert!(matches!(stopped, Err(Stopped::Cancelled)));
    assert_eq!(steps, 3);

    let error = loaded.classify(&[("broken.png", b"\x89PNG\r\n\x1a\nnot really")]).unwrap_err();
    assert!(format!("{error:#}").contains("broken.png"), "{error:#}");
}
