//! A llama-architecture language model (SmolLM2 by default) and everything it carries in
//! its GGUF file.
//!
//! - [`decoder`]: the decoder, run for many sequences per forward pass;
//! - [`attention`]: attention over per-sequence caches on the CPU, all sequences in one call;
//! - [`qmatmul`]: the SIMD quantized matrix multiplication (Q4_1, Q8_0) the CPU path uses
//!   (AVX2, AVX-512 VNNI, and AMX tiles for twelve rows or more);
//! - [`tokenizer`]: the tokenizer rebuilt from the GGUF's metadata;
//! - [`chat`]: chat messages rendered through the GGUF's Jinja chat template.
//!
//! [`load`] reads all of it from one file. Decoding jobs together and streaming their
//! text is the generate runner's business (`runners::generate`), not the model's.

pub mod attention;
pub mod chat;
pub mod decoder;
pub mod qmatmul;
pub mod tokenizer;

use std::path::{Path, PathBuf};

use anyhow::Context;
use candle_core::{Device, quantized::gguf_file};

pub use self::decoder::{Config, Llama, Sequence, top2};

/// A model and tokenizer loaded from one GGUF file.
pub struct Loaded {
    pub model: Llama,
    pub tokenizer: tokenizer::GgufTokenizer,
    /// The Jinja source of `tokenizer.chat_template`, if the file has one.
    pub chat_template: Option<String>,
}

/// Loads a GGUF file, or the one GGUF file in a directory.
pub fn load(path: &Path, device: &Device) -> anyhow::Result<Loaded> {
    let file = gguf_file_in(path)?;
    let mut reader = std::fs::File::open(&file).with_context(|| format!("cannot open {}", file.display()))?;
    let content =
        gguf_file::Content::read(&mut reader).with_context(|| format!("{} is not a GGUF file", file.display()))?;
    let tokenizer = tokenizer::from_gguf(&content).with_context(|| format!("{}: tokenizer", file.display()))?;
    let model = Llama::load(&content, &mut reader, device).with_context(|| format!("{}: model", file.display()))?;
    let chat_template = content.metadata.get("tokenizer.chat_template").and_then(|v| v.to_string().ok()).cloned();
    Ok(Loaded { model, tokenizer, chat_template })
}

/// `path` itself if it is a file, else the only `*.gguf` in the directory.
pub fn gguf_file_in(path: &Path) -> anyhow::Result<PathBuf> {
    if path.is_file() {
        return Ok(path.to_path_buf());
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir(path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "gguf"))
        .collect();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => anyhow::bail!("no .gguf file in {}", path.display()),
        _ => anyhow::bail!("several .gguf files in {}; name one", path.display()),
    }
}
