//! The job adapters: one [`Runner`] per kind of job. A runner reads a job's input,
//! checks what only the model can check (a prompt against its context, images against
//! their format), runs the model code in [`crate::models`] off the async threads and
//! turns what it produces into the job's events and result. Batching jobs together
//! (generate's engine, embed's batches) is a runner's business too: the models take
//! whatever batch they are given.
//!
//! - [`diagnostic`]: the built-in test job, no model;
//! - [`generate`]: text generation, its continuous-batching engine and text streaming;
//! - [`embed`]: sentence embeddings, batched dynamically;
//! - [`classify`]: labelling images with trained models fetched from the service;
//! - [`train`]: training a classifier and publishing it;
//! - [`open`]: the runner for a model on disk.

pub mod classify;
pub mod diagnostic;
pub mod embed;
pub mod generate;
pub mod train;

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::Context;
use candle_core::Device;

use crate::{artifacts::cache_dir, runner::Runner};

/// Where `scripts/fetch-models` keeps model weights: `$DEEPHARDWAY_MODELS`, else
/// `models` in deephardway's cache ([`cache_dir`]).
pub fn default_models_dir() -> PathBuf {
    std::env::var_os("DEEPHARDWAY_MODELS").map(PathBuf::from).unwrap_or_else(|| cache_dir().join("models"))
}

/// How a worker runs the models it opens.
#[derive(Debug, Clone)]
pub struct ModelOptions {
    /// Jobs that may run on one model at once (generation decodes them together).
    pub concurrency: usize,
    /// How embed jobs are batched.
    pub embed_batch: embed::BatchOptions,
}

/// Opens the model at `path` and serves it under `name`, choosing the runner from what
/// the path holds: a GGUF file (or a directory with one) is a text-generation model, a
/// directory with `config.json` and `model.safetensors` a BERT sentence-embedding model.
pub fn open(name: &str, path: &Path, device: &Device, options: &ModelOptions) -> anyhow::Result<Arc<dyn Runner>> {
    let is_gguf = |p: &Path| p.extension().is_some_and(|e| e == "gguf");
    let holds_gguf = path.is_dir()
        && std::fs::read_dir(path)
            .with_context(|| format!("cannot read {}", path.display()))?
            .any(|e| e.is_ok_and(|e| is_gguf(&e.path())));
    if (path.is_file() && is_gguf(path)) || holds_gguf {
        return Ok(Arc::new(generate::GenerateRunner::load(name, path, device, options.concurrency)?));
    }
    if path.join("config.json").is_file() && path.join("model.safetensors").is_file() {
        return Ok(Arc::new(embed::EmbedRunner::load_with(name, path, device, options.embed_batch.clone())?));
    }
    anyhow::bail!(
        "{}: not a model deephardway can serve (expected a .gguf file, or a directory with config.json and model.safetensors)",
        path.display()
    )
}
