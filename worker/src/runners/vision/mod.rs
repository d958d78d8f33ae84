//! Image classifiers trained on the worker (the original project's "cats" and digits).
//!
//! - [`dataset`]: folder-per-class image sets, decoded and resized into tensors;
//! - [`network`]: the architectures (fully connected, small convolutional) and their
//!   seeded initialisation;
//! - [`training`]: the training loop with its metrics;
//! - [`classifier`]: a trained network saved, loaded and labelling images.
//!
//! The `train` and `classify` job runners built on these are not written yet (datasets and
//! trained models still need the service's artifact store); the tests in
//! `worker/tests/vision.rs` train on the shared datasets directly.

pub mod classifier;
pub mod dataset;
pub mod network;
pub mod training;
