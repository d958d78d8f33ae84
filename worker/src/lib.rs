//! deephardway's worker: connects to a service replica, announces the models it serves
//! and its device, runs the jobs it is assigned and streams their events back.
//!
//! The tree separates the model code from the code that adapts jobs to it:
//!
//! - [`connection`]: the session with the service: hello, assignments (each routed to
//!   the runner serving its model for its kind), cancellations, reports, and
//!   reconnecting with backoff when the stream breaks.
//! - [`runner`]: the [`Runner`] trait, one implementation per kind of job, and
//!   [`JobError`], the status a failed job carries (bad fields named, as the service
//!   names them).
//! - [`runners`]: the job adapters: [`runners::diagnostic`], [`runners::generate`]
//!   (with its continuous-batching engine and text streaming), [`runners::embed`] (with
//!   dynamic batching), [`runners::classify`], [`runners::train`], and
//!   [`runners::open`], which picks one for a model on disk.
//! - [`models`]: the model code, as in candle-transformers, knowing nothing of jobs:
//!   [`models::llama`] (the decoder, its quantized kernels and attention, the GGUF's
//!   tokenizer and chat template), [`models::bert`] (the sentence embedder) and
//!   [`models::vision`] (images to tensors, the networks, training, the classifier).
//! - [`activity`]: what the models did between heartbeats (batch sizes, cache in use,
//!   training images), sent to the service for its metrics.
//! - [`artifacts`]: datasets and trained models fetched from the service, cached on disk.
//! - [`traces`]: a job's `run` span and its GenAI span, in the job's trace.
//! - [`device`]: choosing a candle device (`auto`, `cpu`, `cuda[:N]`).
//!
//! What needs no candle (reading dataset archives, a train job's options) is in the
//! root crate, `deephardway::datasets` and `deephardway::train`, shared with the service.

pub mod activity;
pub mod artifacts;
pub mod connection;
pub mod device;
pub mod models;
pub mod runner;
pub mod runners;
pub mod traces;

pub use connection::{WorkerOptions, run};
pub use runner::{JobContext, JobError, Runner};
