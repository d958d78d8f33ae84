//! Trains a classifier on a folder-per-class dataset and reports its accuracy on another:
//! for trying architectures and settings without the service.
//!
//!     cargo run -p deephardway-worker --example train -- TRAIN_DIR TEST_DIR SIZE mlp:64 adamw 0.003 40 32
//!     (architecture: mlp:H1,H2,… or cnn; optimizer: sgd or adamw; then learning rate,
//!     epochs and batch size, 0 for the whole set)

use std::{path::PathBuf, time::Instant};

use candle_core::Device;
use deephardway::train::{Architecture, OptimizerKind, TrainOptions};
use deephardway_worker::models::vision::{classifier::Classifier, dataset, training::train};

fn main() -> anyhow::Result<()> {
    // As the `deephardway` binary does.
    deephardway_worker::device::keep_freed_memory();
    let args: Vec<String> = std::env::args().skip(1).collect();
    anyhow::ensure!(args.len() == 8, "usage: train TRAIN_DIR TEST_DIR SIZE ARCH OPTIMIZER LR EPOCHS BATCH");
    let size: usize = args[2].parse()?;
    let architecture = match args[3].strip_prefix("mlp:") {
        Some(sizes) => Architecture::Mlp { hidden: sizes.split(',').map(str::parse).collect::<Result<_, _>>()? },
        None => Architecture::Cnn,
    };
    let optimizer = if args[4] == "sgd" { OptimizerKind::Sgd } else { OptimizerKind::AdamW };
    let options = TrainOptions {
        architecture,
        epochs: args[6].parse()?,
        batch_size: args[7].parse()?,
        optimizer,
        learning_rate: args[5].parse()?,
        validation_split: 0.0,
        seed: Some(std::env::var("SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(1)),
        augment_shift: std::env::var("SHIFT").ok().and_then(|s| s.parse().ok()).unwrap_or(0),
        cosine_decay: std::env::var("COSINE").is_ok_and(|v| v == "1"),
    };
    let training = dataset::load(&PathBuf::from(&args[0]), size, &Device::Cpu)?;
    let test = dataset::load(&PathBuf::from(&args[1]), size, &Device::Cpu)?;
    let started = Instant::now();
    let trained = train(&training, None, &options, &Device::Cpu, |_| true).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let elapsed = started.elapsed();
    let last = trained.last.clone();
    let classifier = Classifier::from_trained(trained, &Device::Cpu);
    // A line for scripts/bench-train to read.
    println!("ms_per_epoch {:.3}", elapsed.as_secs_f64() * 1000.0 / options.epochs as f64);
    println!(
        "{:.1?} ({:.1?} per epoch); loss {:.4}, train accuracy {:.3}; test accuracy {:.3}",
        elapsed,
        elapsed / options.epochs as u32,
        last.loss,
        last.train_accuracy,
        classifier.accuracy(&test)?
    );
    Ok(())
}
