//! Image classifiers trained on the worker (the original project's "cats" and digits).
//!
//! - [`dataset`]: a dataset's images decoded and resized into tensors;
//! - [`network`]: the networks (fully connected, small convolutional) and their seeded
//!   initialisation;
//! - [`cpu_ops`]: the CNN's patches (im2col) and max pooling as CPU custom ops with
//!   direct backwards;
//! - [`fused_adamw`]: AdamW on the CPU, one pass per parameter;
//! - [`training`]: the training loop with its metrics;
//! - [`classifier`]: a trained network saved, loaded and labelling images.
//!
//! What needs no candle lives in the root crate, shared with the service: reading and
//! checking a dataset's files (`deephardway::datasets`) and a train job's options, the
//! architecture among them (`deephardway::train`). The `train` and `classify` job
//! runners use these; `worker/tests/vision.rs` trains on the shared datasets directly.

pub mod classifier;
pub mod cpu_ops;
pub mod dataset;
pub mod fused_adamw;
pub mod network;
pub mod training;
