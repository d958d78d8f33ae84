//! Text generation with a llama-architecture model from a GGUF file (SmolLM2 by default).
//!
//! - [`tokenizer`]: the tokenizer rebuilt from the GGUF's metadata;
//! - [`chat`]: chat messages rendered through the GGUF's Jinja chat template;
//! - [`model`]: the decoder, run for many sequences per forward pass;
//! - [`attention`]: attention over per-sequence caches on the CPU, all sequences in one call;
//! - [`qmatmul`]: the SIMD quantized matrix multiplication (Q4_1, Q8_0) the CPU path uses;
//! - [`engine`]: the thread that decodes every running job together, one token per step;
//! - [`text`]: tokens to UTF-8 text chunks, with stop strings.
//!
//! This module is the [`Runner`]: it checks a job's input against the model (context
//! length), hands it to the engine and turns the engine's updates into job events.

pub mod attention;
pub mod chat;
pub mod engine;
pub mod model;
pub mod qmatmul;
pub mod text;
pub mod tokenizer;

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use candle_core::{Device, quantized::gguf_file};
use deephardway::v1::{
    GenerateInput, GenerateResult, JobKind, JobResult, Output, Progress, WorkerModel, job_event::Event, job_result,
    submit_request::Input,
};
use tokenizers::Tokenizer;
use tonic::Code;

use self::{
    chat::{ChatTemplate, Message},
    engine::{Engine, FinishReason, Request, SamplingParams, Update},
    model::Llama,
};
use crate::runner::{JobContext, JobError, Runner};

/// Tokens generated when a request does not say.
pub const DEFAULT_MAX_TOKENS: usize = 256;

/// How often a running job reports tokens/s as progress.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(250);

/// A model and tokenizer loaded from one GGUF file.
pub struct Loaded {
    pub model: Llama,
    pub tokenizer: tokenizer::GgufTokenizer,
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

/// Serves one generative model.
pub struct GenerateRunner {
    name: String,
    description: String,
    engine: Engine,
    tokenizer: Arc<Tokenizer>,
    add_bos: Option<u32>,
    chat: Option<ChatTemplate>,
    context_length: usize,
}

impl GenerateRunner {
    /// Loads the model at `path` (a GGUF file or a directory holding one), served under
    /// `name`; up to `max_batch` jobs decode together.
    pub fn load(name: &str, path: &Path, device: &Device, max_batch: usize) -> anyhow::Result<Self> {
        let Loaded { model, tokenizer, chat_template } = load(path, device)?;
        let chat = chat_template
            .map(|source| ChatTemplate::new(source, tokenizer.bos_text.clone(), tokenizer.eos_text.clone()))
            .transpose()?;
        let config = model.config.clone();
        let description = format!(
            "text generation, llama architecture, {} layers, {} hidden, context {} tokens{}",
            config.layers,
            config.hidden,
            config.context_length,
            if chat.is_some() { ", chat template" } else { "" }
        );
        let shared = Arc::new(tokenizer.tokenizer);
        let engine = Engine::start(Arc::new(model), shared.clone(), tokenizer.end_of_generation, max_batch);
        Ok(GenerateRunner {
            name: name.to_string(),
            description,
            engine,
            tokenizer: shared,
            add_bos: tokenizer.add_bos.then_some(tokenizer.bos).flatten(),
            chat,
            context_length: config.context_length,
        })
    }

    /// The prompt's tokens: raw text as is, or messages through the chat template.
    fn prompt_tokens(&self, input: &GenerateInput) -> Result<Vec<u32>, JobError> {
        let text = if input.messages.is_empty() {
            input.prompt.clone()
        } else {
            let chat = self.chat.as_ref().ok_or_else(|| {
                JobError::failed(Code::InvalidArgument, format!("{} has no chat template; send a prompt", self.name))
            })?;
            let messages: Vec<Message> =
                input.messages.iter().map(|m| Message { role: &m.role, content: &m.content }).collect();
            chat.render(&messages)
                .map_err(|e| JobError::failed(Code::InvalidArgument, format!("chat template: {e:#}")))?
        };
        let encoding = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| JobError::failed(Code::InvalidArgument, format!("cannot tokenize the prompt: {e}")))?;
        let tokens: Vec<u32> = self.add_bos.into_iter().chain(encoding.get_ids().iter().copied()).collect();
        if tokens.is_empty() {
            return Err(JobError::failed(Code::InvalidArgument, "generate: the prompt is empty"));
        }
        Ok(tokens)
    }
}

#[tonic::async_trait]
impl Runner for GenerateRunner {
    fn models(&self) -> Vec<WorkerModel> {
        vec![WorkerModel {
            name: self.name.clone(),
            kind: JobKind::Generate as i32,
            description: self.description.clone(),
            context_length: self.context_length as u32,
        }]
    }

    async fn run(&self, job: JobContext) -> Result<JobResult, JobError> {
        let Some(Input::Generate(input)) = job.assignment.request.as_ref().and_then(|r| r.input.clone()) else {
            return Err(JobError::failed(Code::InvalidArgument, "not a generate job"));
        };
        let prompt = self.prompt_tokens(&input)?;
        let max_tokens = if input.max_tokens == 0 { DEFAULT_MAX_TOKENS } else { input.max_tokens as usize };
        if prompt.len() + max_tokens > self.context_length {
            return Err(JobError::failed(
                Code::InvalidArgument,
                format!(
                    "generate: the prompt is {} tokens and max_tokens {max_tokens}, more than the {} tokens {} can hold",
                    prompt.len(),
                    self.context_length,
                    self.name
                ),
            ));
        }
        let prompt_tokens = prompt.len();
        let (updates, mut received) = tokio::sync::mpsc::unbounded_channel();
        let request = Request {
            prompt,
            max_tokens,
            sampling: SamplingParams {
                temperature: input.temperature as f64,
                top_p: input.top_p as f64,
                top_k: input.top_k as usize,
                repetition_penalty: input.repetition_penalty,
                seed: input.seed.unwrap_or_else(rand::random),
            },
            stop: input.stop.clone(),
            cancel: job.cancel.clone(),
            updates,
        };
        self.engine.submit(request).map_err(|_| JobError::failed(Code::Unavailable, "the generate engine stopped"))?;

        let mut decoding_since = None;
        let mut last_progress = Instant::now();
        while let Some(update) = received.recv().await {
            match update {
                Update::PromptDone => decoding_since = Some(Instant::now()),
                Update::Text { text, tokens } => {
                    job.emit(Event::Output(Output { text }));
                    if last_progress.elapsed() >= PROGRESS_INTERVAL {
                        last_progress = Instant::now();
                        let seconds = decoding_since.map_or(0.0, |t| t.elapsed().as_secs_f64());
                        job.emit(Event::Progress(Progress {
                            fraction: tokens as f64 / max_tokens as f64,
                            message: format!("{tokens} tokens"),
                            metrics: [
                                ("tokens".to_string(), tokens as f64),
                                ("tokens_per_second".to_string(), tokens as f64 / seconds.max(1e-9)),
                            ]
                            .into(),
                        }));
                    }
                }
                Update::Finished { text, completion_tokens, reason } => {
                    if reason == FinishReason::Cancelled {
                        return Err(JobError::Cancelled);
                    }
                    return Ok(JobResult {
                        value: Some(job_result::Value::Generate(GenerateResult {
                            text,
                            prompt_tokens: prompt_tokens as u32,
                            completion_tokens: completion_tokens as u32,
                            finish_reason: reason.as_str().to_string(),
                        })),
                    });
                }
                Update::Failed(message) => return Err(JobError::failed(Code::Internal, message)),
            }
        }
        Err(JobError::failed(Code::Internal, "the generate engine stopped"))
    }
}
