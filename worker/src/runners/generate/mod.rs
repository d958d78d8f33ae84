//! The `generate` job: text from a llama-architecture model ([`crate::models::llama`]),
//! streamed as it is decoded.
//!
//! - [`engine`]: the thread that decodes every running job together, one token per step
//!   (continuous batching);
//! - [`text`]: tokens to UTF-8 text chunks, with stop strings.
//!
//! This module is the [`Runner`]: it reads a job's input into prompt tokens (through the
//! chat template for messages), checks it against the model's context, hands it to the
//! engine and turns the engine's updates into job events. A bad input fails the job with
//! INVALID_ARGUMENT naming the field (`generate.messages[1].role`, `generate.max_tokens`).

pub mod engine;
pub mod text;

use std::{
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use candle_core::Device;
use deephardway::{
    errors::invalid_field,
    v1::{
        ChatMessage, FinishReason as ApiFinishReason, GenerateInput, GenerateResult, JobKind, JobOutput, JobProgress,
        JobResult, chat_message::Role, job_event::Event, job_result, job_spec::Input,
    },
    worker::v1::{ModelActivity, ServedModel},
};
use tokenizers::Tokenizer;
use tokio::sync::mpsc::UnboundedReceiver;
use tonic::Status;

use self::engine::{Engine, FinishReason, Request, SamplingParams, Update};
use crate::{
    activity::Activity,
    models::llama::{
        self, Loaded,
        chat::{ChatTemplate, Message},
    },
    runner::{JobContext, JobError, Runner, wrong_kind},
};

/// Tokens generated when a request does not say.
pub const DEFAULT_MAX_TOKENS: usize = 256;

/// How often a running job reports tokens/s as progress.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(250);

/// Serves one generative model.
pub struct GenerateRunner {
    name: String,
    description: String,
    engine: Engine,
    tokenizer: Arc<Tokenizer>,
    add_bos: Option<u32>,
    chat: Option<ChatTemplate>,
    context_length: usize,
    /// The engine's batch sizes and cache, for the heartbeats.
    activity: Arc<Activity>,
}

impl GenerateRunner {
    /// Loads the model at `path` (a GGUF file or a directory holding one), served under
    /// `name`; up to `max_batch` jobs decode together.
    pub fn load(name: &str, path: &Path, device: &Device, max_batch: usize) -> anyhow::Result<Self> {
        let Loaded { model, tokenizer, chat_template } = llama::load(path, device)?;
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
        let activity = Arc::new(Activity::default());
        let engine = Engine::start(
            Arc::new(model),
            shared.clone(),
            tokenizer.end_of_generation,
            max_batch,
            name.to_string(),
            activity.clone(),
        );
        Ok(GenerateRunner {
            name: name.to_string(),
            description,
            engine,
            tokenizer: shared,
            add_bos: tokenizer.add_bos.then_some(tokenizer.bos).flatten(),
            chat,
            context_length: config.context_length,
            activity,
        })
    }

    /// The prompt's tokens: raw text as is, or messages through the chat template.
    fn prompt_tokens(&self, input: &GenerateInput) -> Result<Vec<u32>, JobError> {
        let (field, text) = if input.messages.is_empty() {
            ("generate.prompt", input.prompt.clone())
        } else {
            let chat = self.chat.as_ref().ok_or_else(|| {
                invalid_field("generate.messages", format!("{} has no chat template; send a prompt", self.name))
            })?;
            let roles = input.messages.iter().enumerate().map(|(i, m)| role(i, m)).collect::<Result<Vec<_>, _>>()?;
            let messages: Vec<Message> =
                input.messages.iter().zip(roles).map(|(m, role)| Message { role, content: &m.content }).collect();
            let rendered = chat
                .render(&messages)
                .map_err(|e| invalid_field("generate.messages", format!("the chat template failed: {e:#}")))?;
            ("generate.messages", rendered)
        };
        let encoding =
            self.tokenizer.encode(text, false).map_err(|e| invalid_field(field, format!("cannot tokenize: {e}")))?;
        let tokens: Vec<u32> = self.add_bos.into_iter().chain(encoding.get_ids().iter().copied()).collect();
        if tokens.is_empty() {
            return Err(invalid_field(field, "the prompt is empty").into());
        }
        Ok(tokens)
    }
}

/// The most tokens to generate, checked with the prompt (`prompt` tokens) against the
/// `context` that `model` can hold: a prompt that leaves no room is the prompt's fault, a
/// `max_tokens` that does not fit beside a prompt that does is `max_tokens`'s.
fn max_tokens(input: &GenerateInput, prompt: usize, context: usize, model: &str) -> Result<usize, Status> {
    let max_tokens = if input.max_tokens == 0 { DEFAULT_MAX_TOKENS } else { input.max_tokens as usize };
    if prompt + max_tokens <= context {
        return Ok(max_tokens);
    }
    let why = format!(
        "the prompt is {prompt} tokens and max_tokens {max_tokens}, more than the {context} tokens {model} can hold"
    );
    let field = match (input.max_tokens, input.messages.is_empty()) {
        (1.., _) if prompt < context => "generate.max_tokens",
        (_, true) => "generate.prompt",
        (_, false) => "generate.messages",
    };
    Err(invalid_field(field, why))
}

/// A chat message's role as chat templates name it.
fn role(index: usize, message: &ChatMessage) -> Result<&'static str, Status> {
    match Role::try_from(message.role) {
        Ok(Role::System) => Ok("system"),
        Ok(Role::User) => Ok("user"),
        Ok(Role::Assistant) => Ok("assistant"),
        Ok(Role::Unspecified) | Err(_) => Err(invalid_field(
            format!("generate.messages[{index}].role"),
            "must be set: ROLE_SYSTEM, ROLE_USER or ROLE_ASSISTANT",
        )),
    }
}

#[tonic::async_trait]
impl Runner for GenerateRunner {
    fn models(&self) -> Vec<ServedModel> {
        vec![ServedModel {
            name: self.name.clone(),
            kind: JobKind::Generate as i32,
            description: self.description.clone(),
            context_length: self.context_length as u32,
        }]
    }

    fn activity(&self) -> Vec<ModelActivity> {
        self.activity.take()
    }

    async fn run(&self, job: JobContext) -> Result<JobResult, JobError> {
        let Some(Input::Generate(input)) = job.input() else {
            return Err(wrong_kind("generate"));
        };
        let prompt = self.prompt_tokens(input)?;
        let max_tokens = max_tokens(input, prompt.len(), self.context_length, &self.name)?;
        let prompt_tokens = prompt.len();
        let seed = input.seed.unwrap_or_else(rand::random);
        let (updates, received) = tokio::sync::mpsc::unbounded_channel();
        let request = Request {
            prompt,
            max_tokens,
            sampling: SamplingParams {
                temperature: f64::from(input.temperature),
                top_p: f64::from(input.top_p),
                top_k: input.top_k as usize,
                repetition_penalty: input.repetition_penalty,
                seed,
            },
            stop: input.stop.clone(),
            cancel: job.cancel.clone(),
            updates,
        };
        self.engine.submit(request).map_err(|_| JobError::internal("the generate engine stopped"))?;
        let (text, completion_tokens, reason) = stream(&job, received, max_tokens).await?;
        let finish_reason = match reason {
            FinishReason::Length => ApiFinishReason::Length,
            FinishReason::Stop => ApiFinishReason::Stop,
            FinishReason::EndOfSequence => ApiFinishReason::Eos,
            FinishReason::Cancelled => return Err(JobError::Cancelled),
        };
        Ok(JobResult {
            value: Some(job_result::Value::Generate(GenerateResult {
                text,
                prompt_tokens: prompt_tokens as u32,
                completion_tokens: completion_tokens as u32,
                finish_reason: finish_reason as i32,
                seed,
            })),
        })
    }
}

/// Turns the engine's updates into output and progress events until the generation
/// ends; returns its text, its token count and why it ended.
async fn stream(
    job: &JobContext,
    mut received: UnboundedReceiver<Update>,
    max_tokens: usize,
) -> Result<(String, usize, FinishReason), JobError> {
    let mut decoding_since = None;
    let mut last_progress = Instant::now();
    while let Some(update) = received.recv().await {
        match update {
            Update::PromptDone => decoding_since = Some(Instant::now()),
            Update::Text { text, tokens } => {
                job.emit(Event::Output(JobOutput { text }));
                if last_progress.elapsed() >= PROGRESS_INTERVAL {
                    last_progress = Instant::now();
                    let seconds = decoding_since.map_or(0.0, |t| t.elapsed().as_secs_f64());
                    job.emit(Event::Progress(JobProgress {
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
            Update::Finished { text, completion_tokens, reason } => return Ok((text, completion_tokens, reason)),
            Update::Failed(message) => return Err(JobError::internal(message)),
        }
    }
    Err(JobError::internal("the generate engine stopped"))
}

#[cfg(test)]
mod tests {
    use deephardway::errors::violations;
    use tonic::Code;

    use super::*;

    fn field(status: &Status) -> String {
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        violations(status).remove(0).field
    }

    #[test]
    fn roles_map_to_template_names_and_an_unset_one_is_named() {
        let message = |role: Role| ChatMessage { role: role as i32, content: String::new() };
        assert_eq!(role(0, &message(Role::System)).unwrap(), "system");
        assert_eq!(role(0, &message(Role::User)).unwrap(), "user");
        assert_eq!(role(0, &message(Role::Assistant)).unwrap(), "assistant");
        assert_eq!(field(&role(2, &message(Role::Unspecified)).unwrap_err()), "generate.messages[2].role");
        assert_eq!(
            field(&role(1, &ChatMessage { role: 7, content: String::new() }).unwrap_err()),
            "generate.messages[1].role"
        );
    }

    #[test]
    fn a_generation_too_long_for_the_context_names_the_field_at_fault() {
        let prompt = |max_tokens| GenerateInput { prompt: "x".into(), max_tokens, ..Default::default() };
        assert_eq!(max_tokens(&prompt(0), 10, 2048, "m").unwrap(), DEFAULT_MAX_TOKENS);
        assert_eq!(max_tokens(&prompt(100), 10, 110, "m").unwrap(), 100);
        assert_eq!(field(&max_tokens(&prompt(101), 10, 110, "m").unwrap_err()), "generate.max_tokens");
        assert_eq!(field(&max_tokens(&prompt(0), 2000, 2048, "m").unwrap_err()), "generate.prompt");
        assert_eq!(field(&max_tokens(&prompt(5), 2048, 2048, "m").unwrap_err()), "generate.prompt");
        let chat = GenerateInput { messages: vec![ChatMessage::default()], ..Default::default() };
        assert_eq!(field(&max_tokens(&chat, 2000, 2048, "m").unwrap_err()), "generate.messages");
    }
}
