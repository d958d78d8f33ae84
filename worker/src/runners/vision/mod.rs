//! Image classifiers trained on the worker (the original project's "cats" and digits).
//!
//! - [`source`]: a dataset's files from a folder or an uploaded archive, checked;
//! - [`dataset`]: those images decoded and resized into tensors;
//! - [`network`]: the architectures (fully connected, small convolutional) and their
//!   seeded initialisation;
//! - [`training`]: the training loop with its metrics;
//! - [`classifier`]: a trained network saved, loaded and labelling images.
//!
//! The `train` and `classify` job runners (`runners::train`, `runners::classify`) use
//! these; `worker/tests/vision.rs` trains on the shared datasets directly.

pub mod classifier;
pub mod dataset;
pub mod network;
pub mod source;
pub mod training;
