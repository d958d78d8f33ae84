//! Model code, as in candle-transformers: each model is plain structs with `load` and
//! `forward` (or what the model is for: `embed`, `classify`), knowing nothing of jobs,
//! events or the service. The runners (`crate::runners`) adapt jobs to them.
//!
//! - [`llama`]: the llama-architecture decoder from a GGUF file, its quantized CPU
//!   kernels and attention, the GGUF's tokenizer and chat template;
//! - [`bert`]: the sentence embedder on a BERT model (load, forward, mean pooling), with
//!   its own CPU encoder;
//! - [`sgemm`]: f32 matrix products for the CPU (AVX-512 and AVX2 kernels): linear layers
//!   with weights packed at load, and products of any two matrices, for training;
//! - [`vector_math`]: vectorized exp, erf, GELU, softmax, layer norm and sums;
//! - [`attention_math`]: one query's attention scores and weighted values, SIMD, for
//!   both models' CPU attention;
//! - [`vision`]: the image classifiers: images decoded to tensors, the networks, the
//!   training loop, a trained classifier saved, loaded and labelling images;
//! - [`disjoint`]: one output buffer written by parallel tasks, for the CPU kernels;
//! - [`amx`]: whether Intel AMX may be used here, and its tile configuration.

pub mod amx;
pub mod attention_math;
pub mod bert;
pub mod disjoint;
pub mod llama;
pub mod sgemm;
pub mod vector_math;
pub mod vision;
