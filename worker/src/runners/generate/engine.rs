//! The decoding loop: one thread owns the model and advances every running generation
//! together, one token per step (continuous batching).
//!
//! Jobs hand [`Request`]s to the engine and read [`Update`]s back. Each step the engine
//! admits waiting requests, then runs one forward pass for every active sequence: a
//! decoding sequence feeds its last token, a new one the next chunk of its prompt (at most
//! [`PREFILL_CHUNK`] prompt tokens per step in all, so a long prompt delays the others'
//! next token by a bounded amount instead of stalling them until it is read). It samples
//! each decoding sequence's next token and sends each job its new text. A sequence leaves
//! as soon as it is done, cancelled or its job stops listening, and a new one can join at
//! the next step. Cancellation is checked before every step, so a cancelled job stops
//! within one token (or one prompt chunk).

use std::sync::{Arc, mpsc};

use candle_core::Tensor;
use candle_transformers::generation::{LogitsProcessor, Sampling};
use tokenizers::Tokenizer;
use tokio_util::sync::CancellationToken;

use super::text::TextStream;
use crate::activity::Activity;
use crate::models::llama::{Llama, Sequence};

/// How the next token is chosen.
#[derive(Debug, Clone)]
pub struct SamplingParams {
    pub temperature: f64,
    pub top_p: f64,
    pub top_k: usize,
    pub repetition_penalty: f32,
    pub seed: u64,
}

/// Prompt tokens read per step, across all sequences still reading their prompts.
pub const PREFILL_CHUNK: usize = 128;

/// How many recent tokens the repetition penalty looks at (llama.cpp's default).
const REPETITION_WINDOW: usize = 64;

impl SamplingParams {
    fn processor(&self) -> LogitsProcessor {
        let temperature = self.temperature;
        let top_p = self.top_p > 0.0 && self.top_p < 1.0;
        let sampling = match (temperature <= 0.0, self.top_k > 0, top_p) {
            (true, _, _) => Sampling::ArgMax,
            (false, true, true) => Sampling::TopKThenTopP { k: self.top_k, p: self.top_p, temperature },
            (false, true, false) => Sampling::TopK { k: self.top_k, temperature },
            (false, false, true) => Sampling::TopP { p: self.top_p, temperature },
            (false, false, false) => Sampling::All { temperature },
        };
        LogitsProcessor::from_sampling(self.seed, sampling)
    }
}

/// A generation to run.
pub struct Request {
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    pub cancel: CancellationToken,
    pub updates: tokio::sync::mpsc::UnboundedSender<Update>,
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// `max_tokens` or the model's context was reached.
    Length,
    /// A stop string appeared.
    Stop,
    /// The model produced an end-of-generation token.
    EndOfSequence,
    /// The job was cancelled or stopped listening.
    Cancelled,
}

/// What the engine tells a job.
#[derive(Debug)]
pub enum Update {
    /// The first token is about to be decoded: the prompt has been read.
    PromptDone,
    /// New text, and how many tokens have been generated so far.
    Text {
        text: String,
        tokens: usize,
    },
    Finished {
        text: String,
        completion_tokens: usize,
        reason: FinishReason,
    },
    Failed(String),
}

/// The sending side of the engine; cheap to clone.
#[derive(Clone)]
pub struct Engine {
    requests: mpsc::Sender<Request>,
}

impl Engine {
    /// Starts the engine thread; at most `max_batch` sequences decode together. Each
    /// step's batch size and the tokens cached are recorded in `activity` under `name`.
    pub fn start(
        model: Arc<Llama>,
        tokenizer: Arc<Tokenizer>,
        end_of_generation: Vec<u32>,
        max_batch: usize,
        name: String,
        activity: Arc<Activity>,
    ) -> Self {
        let (requests, incoming) = mpsc::channel();
        let engine = Loop { model, tokenizer, end_of_generation, max_batch: max_batch.max(1), name, activity };
        std::thread::Builder::new()
            .name("generate".into())
            .spawn(move || engine.run(incoming))
            .expect("spawn the generate thread");
        Engine { requests }
    }

    pub fn submit(&self, request: Request) -> Result<(), Request> {
        self.requests.send(request).map_err(|e| e.0)
    }
}

struct Loop {
    model: Arc<Llama>,
    tokenizer: Arc<Tokenizer>,
    end_of_generation: Vec<u32>,
    max_batch: usize,
    /// The model's name, for `activity`.
    name: String,
    activity: Arc<Activity>,
}

/// A sequence being decoded.
struct Active {
    request: Request,
    sequence: Sequence,
    processor: LogitsProcessor,
    /// Prompt and generated tokens, for the repetition penalty.
    context: Vec<u32>,
    /// How many prompt tokens the sequence has read so far.
    read: usize,
    generated: usize,
    /// The token to feed at the next step.
    next: u32,
    text: TextStream,
    /// A stop string appeared in the text.
    stopped: bool,
}

impl Loop {
    fn run(self, incoming: mpsc::Receiver<Request>) {
        let mut active: Vec<Active> = Vec::new();
        let mut waiting: std::collections::VecDeque<Request> = Default::default();
        loop {
            if active.is_empty() && waiting.is_empty() {
                match incoming.recv() {
                    Ok(request) => waiting.push_back(request),
                    Err(_) => return, // every Engine handle is gone
                }
            }
            waiting.extend(incoming.try_iter());
            while active.len() < self.max_batch {
                let Some(request) = waiting.pop_front() else { break };
                active.extend(self.admit(request));
            }
            active.retain_mut(|a| !self.finish_if_done(a));
            let cached = active.iter().map(|a| a.sequence.len()).sum();
            self.activity.kv_cache_tokens(&self.name, cached);
            if active.is_empty() {
                continue;
            }
            self.activity.batch(&self.name, active.len());
            if let Err(e) = self.step(&mut active) {
                for a in active.drain(..) {
                    let _ = a.request.updates.send(Update::Failed(format!("decoding failed: {e}")));
                }
            }
        }
    }

    /// Starts a sequence for a request; its prompt is read by the next steps.
    fn admit(&self, request: Request) -> Option<Active> {
        if request.cancel.is_cancelled() || request.updates.is_closed() {
            let _ = request.updates.send(Update::Finished {
                text: String::new(),
                completion_tokens: 0,
                reason: FinishReason::Cancelled,
            });
            return None;
        }
        Some(Active {
            sequence: self.model.new_sequence(request.prompt.len() + request.max_tokens),
            processor: request.sampling.processor(),
            context: request.prompt.clone(),
            read: 0,
            text: TextStream::new(self.tokenizer.clone(), request.stop.clone()),
            stopped: false,
            request,
            generated: 0,
            next: 0,
        })
    }

    /// One forward pass: a token for every decoding sequence, a prompt chunk for those
    /// still reading.
    fn step(&self, active: &mut [Active]) -> anyhow::Result<()> {
        let mut budget = PREFILL_CHUNK;
        let mut inputs: Vec<Vec<u32>> = Vec::with_capacity(active.len());
        for a in active.iter() {
            let left = a.request.prompt.len() - a.read;
            inputs.push(if left == 0 {
                vec![a.next]
            } else {
                // Every reading sequence advances by at least one token per step.
                let take = left.min(budget).max(1);
                budget = budget.saturating_sub(take);
                a.request.prompt[a.read..a.read + take].to_vec()
            });
        }
        let tokens: Vec<&[u32]> = inputs.iter().map(Vec::as_slice).collect();
        let mut sequences: Vec<&mut Sequence> = active.iter_mut().map(|a| &mut a.sequence).collect();
        let logits = self.model.forward(&mut sequences, &tokens, false)?;
        for (i, (a, input)) in active.iter_mut().zip(&inputs).enumerate() {
            if a.read < a.request.prompt.len() {
                a.read += input.len();
                if a.read < a.request.prompt.len() {
                    continue; // more prompt to read
                }
                let _ = a.request.updates.send(Update::PromptDone);
            }
            self.accept(a, &logits.get(i)?)?;
        }
        Ok(())
    }

    /// Samples a sequence's next token from its logits and streams its text.
    fn accept(&self, a: &mut Active, logits: &Tensor) -> anyhow::Result<()> {
        let penalty = a.request.sampling.repetition_penalty;
        let logits = if penalty > 0.0 && penalty != 1.0 {
            let recent = &a.context[a.context.len().saturating_sub(REPETITION_WINDOW)..];
            candle_transformers::utils::apply_repeat_penalty(logits, penalty, recent)?
        } else {
            logits.clone()
        };
        let token = a.processor.sample(&logits)?;
        a.context.push(token);
        a.next = token;
        a.generated += 1;
        if self.end_of_generation.contains(&token) {
            return Ok(());
        }
        let step = a.text.push(token)?;
        if !step.text.is_empty() {
            let _ = a.request.updates.send(Update::Text { text: step.text, tokens: a.generated });
        }
        a.stopped = step.stopped;
        Ok(())
    }

    /// Ends a sequence that is done; returns whether it was.
    fn finish_if_done(&self, a: &mut Active) -> bool {
        let reason = if a.request.cancel.is_cancelled() || a.request.updates.is_closed() {
            FinishReason::Cancelled
        } else if a.generated == 0 {
            return false; // still reading its prompt
        } else if a.stopped {
            FinishReason::Stop
        } else if self.end_of_generation.contains(&a.next) {
            FinishReason::EndOfSequence
        } else if a.generated >= a.request.max_tokens || a.sequence.len() + 1 >= self.model.config.context_length {
            FinishReason::Length
        } else {
            return false;
        };
        let rest = if reason == FinishReason::Stop { String::new() } else { a.text.finish() };
        if !rest.is_empty() {
            let _ = a.request.updates.send(Update::Text { text: rest, tokens: a.generated });
        }
        let _ = a.request.updates.send(Update::Finished {
            text: a.text.text().to_string(),
            completion_tokens: a.generated,
            reason,
        });
        true
    }
}
