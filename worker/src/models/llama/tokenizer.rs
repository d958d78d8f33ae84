//! The tokenizer a GGUF file carries in its metadata, rebuilt with the `tokenizers` crate.
//!
//! GGUF files made by llama.cpp's converter ship no `tokenizer.json`; instead
//! `tokenizer.ggml.*` holds the vocabulary, the BPE merges, each token's type and the
//! special ids. For `tokenizer.ggml.model = gpt2` that is a byte-level BPE, and
//! `tokenizer.ggml.pre` names the pre-tokenizer the model was trained with; control tokens
//! (type 3) and user-defined ones (type 4) become special tokens, so chat markers such as
//! `<|im_start|>` in a rendered template encode to their single ids.

use anyhow::{Context, bail};
use candle_core::quantized::gguf_file::{Content, Value};
use tokenizers::{
    AddedToken, Tokenizer,
    decoders::byte_level::ByteLevel as ByteLevelDecoder,
    models::bpe::{BPE, Vocab},
    pre_tokenizers::{PreTokenizerWrapper, byte_level::ByteLevel, digits::Digits, sequence::Sequence},
};

/// GGUF token types (llama.cpp's `llama_token_type`).
const CONTROL: u32 = 3;
const USER_DEFINED: u32 = 4;

/// A tokenizer and the ids generation needs.
pub struct GgufTokenizer {
    pub tokenizer: Tokenizer,
    pub bos: Option<u32>,
    /// Whether prompts start with `bos` (`tokenizer.ggml.add_bos_token`).
    pub add_bos: bool,
    /// Tokens that end generation: the GGUF's eos, and `<|endoftext|>` where it is a
    /// separate control token (base-model style end of document).
    pub end_of_generation: Vec<u32>,
    pub bos_text: String,
    pub eos_text: String,
}

pub fn from_gguf(content: &Content) -> anyhow::Result<GgufTokenizer> {
    let get = |key: &str| content.metadata.get(key).with_context(|| format!("GGUF has no {key}"));
    let model = get("tokenizer.ggml.model")?.to_string()?;
    if model != "gpt2" {
        bail!("tokenizer.ggml.model = {model}: only byte-level BPE (gpt2) tokenizers are supported");
    }
    let tokens: Vec<String> =
        get("tokenizer.ggml.tokens")?.to_vec()?.iter().map(|v| v.to_string().cloned()).collect::<Result<_, _>>()?;
    let merges = get("tokenizer.ggml.merges")?
        .to_vec()?
        .iter()
        .map(|v| {
            let merge = v.to_string()?;
            let (a, b) = merge.split_once(' ').with_context(|| format!("malformed merge {merge:?}"))?;
            Ok((a.to_string(), b.to_string()))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let types: Vec<u32> = match content.metadata.get("tokenizer.ggml.token_type") {
        Some(Value::Array(values)) => values.iter().map(|v| v.to_i32().map(|t| t as u32)).collect::<Result<_, _>>()?,
        _ => vec![1; tokens.len()],
    };
    let vocab: Vocab = tokens.iter().enumerate().map(|(id, t)| (t.clone(), id as u32)).collect();
    let bpe = BPE::builder().vocab_and_merges(vocab, merges).build().map_err(|e| anyhow::anyhow!("BPE: {e}"))?;

    let mut tokenizer = Tokenizer::new(bpe);
    let pre = content.metadata.get("tokenizer.ggml.pre").and_then(|v| v.to_string().ok()).map_or("default", |s| s);
    tokenizer.with_pre_tokenizer(Some(pre_tokenizer(pre)?));
    tokenizer.with_decoder(Some(ByteLevelDecoder::default()));
    let special: Vec<AddedToken> = tokens
        .iter()
        .zip(&types)
        .filter(|(_, t)| **t == CONTROL || **t == USER_DEFINED)
        .map(|(token, _)| AddedToken::from(token.clone(), true))
        .collect();
    tokenizer.add_special_tokens(special).map_err(|e| anyhow::anyhow!("special tokens: {e}"))?;

    let id = |key: &str| content.metadata.get(key).and_then(|v| v.to_u32().ok());
    let text = |id: Option<u32>| id.and_then(|i| tokens.get(i as usize)).cloned().unwrap_or_default();
    let eos = id("tokenizer.ggml.eos_token_id");
    let mut end_of_generation: Vec<u32> = eos.into_iter().collect();
    if let Some(eot) = tokens.iter().position(|t| t == "<|endoftext|>")
        && types.get(eot) == Some(&CONTROL)
        && !end_of_generation.contains(&(eot as u32))
    {
        end_of_generation.push(eot as u32);
    }
    let bos = id("tokenizer.ggml.bos_token_id");
    let add_bos = content.metadata.get("tokenizer.ggml.add_bos_token").and_then(|v| v.to_bool().ok()).unwrap_or(false);
    Ok(GgufTokenizer { tokenizer, bos, add_bos, end_of_generation, bos_text: text(bos), eos_text: text(eos) })
}

/// The pre-tokenizer a `tokenizer.ggml.pre` name stands for, as in the model's original
/// `tokenizer.json`: GPT-2's byte-level split, with digits split one by one for the
/// SmolLM and StarCoder families.
fn pre_tokenizer(name: &str) -> anyhow::Result<PreTokenizerWrapper> {
    let byte_level = ByteLevel::new(false, true, true);
    Ok(match name {
        "default" | "gpt2" | "gpt-2" => byte_level.into(),
        "smollm" | "starcoder" | "refact" | "codeshell" => {
            Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into()
        }
        other => bail!("tokenizer.ggml.pre = {other}: unknown pre-tokenizer"),
    })
}
