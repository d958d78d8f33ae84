//! Text generation on the real SmolLM2-135M-Instruct Q4_1 GGUF (fetched by
//! scripts/fetch-models), checked against llama.cpp on the same file.
//!
//! The reference (worker/tests/data/generate_reference.json) is made by
//! scripts/reference/generate_reference.py: llama.cpp's tokens for each prompt, its greedy
//! completion, and its top logits at every position. Quantized arithmetic legitimately
//! differs between implementations (llama.cpp quantizes activations to Q8_1 in blocks, sums
//! in a different order), so the tests check what must hold anyway:
//! - where llama.cpp's best token leads the runner-up by ≥ 0.5 (logits), ours is the same;
//! - free-running greedy output equals llama.cpp's up to its first closer call.

use std::{
    sync::{Arc, OnceLock},
    time::Duration,
};

use candle_core::Device;
use deephardway_worker::{
    models::llama::{
        self, Llama, Loaded,
        chat::{ChatTemplate, Message},
        top2,
    },
    runners::{
        default_models_dir,
        generate::engine::{self, Engine, FinishReason, Request, SamplingParams, Update},
    },
};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

/// A top-1 lead (in logits) above which two correct implementations must agree.
const CLEAR_MARGIN: f32 = 0.5;

#[derive(Deserialize)]
struct Reference {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    prompt: Option<String>,
    messages: Option<Vec<ReferenceMessage>>,
    rendered: Option<String>,
    prompt_tokens: Vec<u32>,
    completion_tokens: Vec<u32>,
    completion_text: String,
    /// Per position: `[token, logit]` pairs, best first.
    top_logits: Vec<Vec<(u32, f32)>>,
}

#[derive(Deserialize)]
struct ReferenceMessage {
    role: String,
    content: String,
}

impl Case {
    fn name(&self) -> String {
        self.prompt.clone().unwrap_or_else(|| "chat".into())
    }

    fn margin(&self, position: usize) -> f32 {
        let top = &self.top_logits[position];
        top[0].1 - top[1].1
    }
}

fn reference() -> Reference {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/generate_reference.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn model() -> &'static Loaded {
    static MODEL: OnceLock<Loaded> = OnceLock::new();
    MODEL.get_or_init(|| {
        let dir = default_models_dir().join("smollm2-135m-instruct");
        assert!(dir.exists(), "{} is missing: run scripts/fetch-models", dir.display());
        llama::load(&dir, &Device::Cpu).expect("loads")
    })
}

#[test]
fn tokenizer_and_chat_template_match_llama_cpp() {
    let loaded = model();
    let tokenizer = &loaded.tokenizer;
    for case in reference().cases {
        let text = match (&case.prompt, &case.messages) {
            (Some(prompt), _) => prompt.clone(),
            (None, Some(messages)) => {
                let template = ChatTemplate::new(
                    loaded.chat_template.clone().expect("SmolLM2 has a chat template"),
                    tokenizer.bos_text.clone(),
                    tokenizer.eos_text.clone(),
                )
                .unwrap();
                let messages: Vec<Message> =
                    messages.iter().map(|m| Message { role: &m.role, content: &m.content }).collect();
                let rendered = template.render(&messages).unwrap();
                assert_eq!(&rendered, case.rendered.as_ref().unwrap(), "chat template rendering");
                rendered
            }
            _ => unreachable!(),
        };
        let ids = tokenizer.tokenizer.encode(text.as_str(), false).unwrap().get_ids().to_vec();
        assert_eq!(ids, case.prompt_tokens, "tokens of {:?}", case.name());
        let completion = tokenizer.tokenizer.decode(&case.completion_tokens, true).unwrap();
        let expected = case.completion_text.replace("<|im_end|>", "");
        assert_eq!(completion, expected, "decoded completion of {:?}", case.name());
    }
}

/// Fed llama.cpp's tokens, our best token agrees with llama.cpp's wherever its lead is
/// clear; prints the agreement rate over all positions and the largest logit differences.
#[test]
fn teacher_forced_logits_agree_with_llama_cpp() {
    let loaded = model();
    let (mut positions, mut agreeing, mut clear) = (0, 0, 0);
    let (mut largest_difference, mut largest_gap_difference) = (0f32, 0f32);
    for case in reference().cases {
        let tokens: Vec<u32> = case.prompt_tokens.iter().chain(&case.completion_tokens).copied().collect();
        let input = &tokens[..tokens.len() - 1];
        let mut sequence = loaded.model.new_sequence(input.len());
        let logits = loaded.model.forward(&mut [&mut sequence], &[input], true).unwrap();
        let rows = logits.to_vec2::<f32>().unwrap();
        let ours = top2(&logits).unwrap();
        assert_eq!(ours.len(), case.top_logits.len());
        for (position, ((token, _, _), expected)) in ours.iter().zip(&case.top_logits).enumerate() {
            positions += 1;
            if *token == expected[0].0 {
                agreeing += 1;
            }
            let row = &rows[position];
            let (best, best_logit) = expected[0];
            for &(id, logit) in expected {
                largest_difference = largest_difference.max((row[id as usize] - logit).abs());
                // A shift of every logit alike changes no probability; gaps to the best
                // token are what sampling sees.
                let gap = |ours: f32, theirs: f32| (ours - row[best as usize]) - (theirs - best_logit);
                largest_gap_difference = largest_gap_difference.max(gap(row[id as usize], logit).abs());
            }
            if case.margin(position) >= CLEAR_MARGIN {
                clear += 1;
                assert_eq!(
                    *token,
                    expected[0].0,
                    "{:?}, position {position}: llama.cpp's margin is {:.3}",
                    case.name(),
                    case.margin(position)
                );
            }
        }
    }
    println!(
        "teacher forcing: top-1 agrees at {agreeing} of {positions} positions ({clear} with a margin ≥ {CLEAR_MARGIN}, all agree); \
         on llama.cpp's top-5 tokens, the largest logit difference is {largest_difference:.3}, \
         the largest difference in a logit's gap to the best token {largest_gap_difference:.3}"
    );
    assert!(positions > 100);
}

/// The prompt read in one pass, then `n` tokens decoded greedily one at a time.
fn greedy_tokens(model: &Llama, prompt: &[u32], n: usize) -> Vec<u32> {
    let mut sequence = model.new_sequence(prompt.len() + n);
    let mut logits = model.forward(&mut [&mut sequence], &[prompt], false).unwrap();
    let mut generated = Vec::new();
    for _ in 0..n {
        let (token, _, _) = top2(&logits).unwrap()[0];
        generated.push(token);
        logits = model.forward(&mut [&mut sequence], &[&[token]], false).unwrap();
    }
    generated
}

/// Greedy decoding token by token (the cached path, not one pass) follows llama.cpp up to
/// the first position where llama.cpp's own choice was a close call.
#[test]
fn greedy_decoding_follows_llama_cpp() {
    let loaded = model();
    for case in reference().cases {
        let prompt = &case.prompt_tokens;
        let n = case.completion_tokens.len();
        let generated = greedy_tokens(&loaded.model, prompt, n);
        // Completion token i is predicted at position prompt.len() - 1 + i.
        let certain = (0..n).take_while(|i| case.margin(prompt.len() - 1 + i) >= CLEAR_MARGIN).count();
        assert_eq!(
            &generated[..certain],
            &case.completion_tokens[..certain],
            "{:?}: the first {certain} greedy tokens",
            case.name()
        );
        let common = generated.iter().zip(&case.completion_tokens).take_while(|(a, b)| a == b).count();
        println!(
            "{:?}: the first {common} of {n} greedy tokens equal llama.cpp's ({certain} had to: clear calls)",
            case.name()
        );
    }
}

/// Decoding several sequences in one forward pass gives each the logits it gets alone.
/// The reference prompts are repeated to thirteen sequences, so that where the CPU has
/// AMX the batched steps take its kernel (twelve rows or more) and each sequence alone
/// the AVX-512 one.
#[test]
fn batched_decoding_equals_decoding_alone() {
    let loaded = model();
    let model = &loaded.model;
    let cases = reference().cases;
    let prompts: Vec<&[u32]> =
        cases.iter().cycle().take(cases.len().max(13)).map(|c| c.prompt_tokens.as_slice()).collect();
    let steps = 6;
    // Alone.
    let mut alone = Vec::new();
    for prompt in &prompts {
        let mut sequence = model.new_sequence(prompt.len() + steps);
        let mut logits = model.forward(&mut [&mut sequence], &[prompt], false).unwrap();
        let mut rows = Vec::new();
        for _ in 0..steps {
            let (token, _, _) = top2(&logits).unwrap()[0];
            rows.push(logits.to_vec2::<f32>().unwrap().remove(0));
            logits = model.forward(&mut [&mut sequence], &[&[token]], false).unwrap();
        }
        alone.push(rows);
    }
    // Together: prompts read one by one (different lengths), then every step batched.
    let mut sequences: Vec<_> = prompts.iter().map(|p| model.new_sequence(p.len() + steps)).collect();
    let mut next: Vec<u32> = Vec::new();
    let mut together: Vec<Vec<Vec<f32>>> = vec![Vec::new(); prompts.len()];
    for (i, prompt) in prompts.iter().enumerate() {
        let logits = model.forward(&mut [&mut sequences[i]], &[prompt], false).unwrap();
        together[i].push(logits.to_vec2::<f32>().unwrap().remove(0));
        next.push(top2(&logits).unwrap()[0].0);
    }
    for _ in 1..steps {
        let tokens: Vec<[u32; 1]> = next.iter().map(|&t| [t]).collect();
        let tokens: Vec<&[u32]> = tokens.iter().map(|t| t.as_slice()).collect();
        let mut refs: Vec<_> = sequences.iter_mut().collect();
        let logits = model.forward(&mut refs, &tokens, false).unwrap();
        for (i, (token, _, _)) in top2(&logits).unwrap().into_iter().enumerate() {
            together[i].push(logits.get(i).unwrap().to_vec1::<f32>().unwrap());
            next[i] = token;
        }
    }
    for (i, (a, b)) in alone.iter().zip(&together).enumerate() {
        for (step, (x, y)) in a.iter().zip(b).enumerate() {
            let difference = x.iter().zip(y).map(|(p, q)| (p - q).abs()).fold(0f32, f32::max);
            // Activations are quantized per row and every kernel sums a row the same way
            // whatever it is batched with; a change in summation order would still show
            // here, amplified by requantization in the next layer.
            assert!(difference < 1e-3, "sequence {i}, step {step}: logits differ by {difference}");
        }
    }
}

fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let dir = default_models_dir().join("smollm2-135m-instruct");
        let Loaded { model, tokenizer, .. } = llama::load(&dir, &Device::Cpu).unwrap();
        let activity = Arc::new(deephardway_worker::activity::Activity::default());
        let (tokenizer, end) = (Arc::new(tokenizer.tokenizer), tokenizer.end_of_generation);
        Engine::start(Arc::new(model), tokenizer, end, 8, "smollm2-135m-instruct".into(), activity)
    })
}

fn greedy(prompt: &[u32], max_tokens: usize, stop: &[&str]) -> (Request, tokio::sync::mpsc::UnboundedReceiver<Update>) {
    let (updates, received) = tokio::sync::mpsc::unbounded_channel();
    let request = Request {
        prompt: prompt.to_vec(),
        max_tokens,
        sampling: SamplingParams { temperature: 0.0, top_p: 1.0, top_k: 0, repetition_penalty: 1.0, seed: 0 },
        stop: stop.iter().map(|s| s.to_string()).collect(),
        cancel: CancellationToken::new(),
        updates,
    };
    (request, received)
}

/// Collects a generation's streamed text and its final update.
async fn collect(mut received: tokio::sync::mpsc::UnboundedReceiver<Update>) -> (String, String, usize, FinishReason) {
    let mut streamed = String::new();
    while let Some(update) = received.recv().await {
        match update {
            Update::PromptDone => {}
            Update::Text { text, .. } => streamed.push_str(&text),
            Update::Finished { text, completion_tokens, reason } => return (streamed, text, completion_tokens, reason),
            Update::Failed(message) => panic!("failed: {message}"),
        }
    }
    panic!("the engine hung up");
}

/// Several jobs at once through the engine: each streams exactly the text it would get
/// alone, and the streamed chunks add up to the result.
#[tokio::test]
async fn engine_serves_concurrent_jobs_like_single_ones() {
    let cases = reference().cases;
    let mut receivers = Vec::new();
    for case in &cases {
        let (request, received) = greedy(&case.prompt_tokens, 12, &[]);
        engine().submit(request).ok().unwrap();
        receivers.push(received);
    }
    let mut together = Vec::new();
    for received in receivers {
        together.push(collect(received).await);
    }
    for (case, (streamed, text, tokens, reason)) in cases.iter().zip(together) {
        assert_eq!(streamed, text, "streamed chunks add up to the result");
        let (request, received) = greedy(&case.prompt_tokens, 12, &[]);
        engine().submit(request).ok().unwrap();
        let (_, alone, alone_tokens, alone_reason) = collect(received).await;
        assert_eq!((text.as_str(), tokens, reason), (alone.as_str(), alone_tokens, alone_reason), "{:?}", case.name());
    }
}

#[tokio::test]
async fn stop_strings_and_lengths_end_generation() {
    let case = &reference().cases[0]; // "The capital of France is" → " Paris…"
    let (request, received) = greedy(&case.prompt_tokens, 5, &[]);
    engine().submit(request).ok().unwrap();
    let (_, text, tokens, reason) = collect(received).await;
    assert_eq!((tokens, reason), (5, FinishReason::Length), "{text:?}");

    // Stop at the first word of the greedy completion's second half.
    let (request, received) = greedy(&case.prompt_tokens, 24, &[]);
    engine().submit(request).ok().unwrap();
    let (_, full, ..) = collect(received).await;
    let stop = full.split_whitespace().nth(2).expect("a few words").to_string();
    let (request, received) = greedy(&case.prompt_tokens, 24, &[&stop]);
    engine().submit(request).ok().unwrap();
    let (streamed, text, _, reason) = collect(received).await;
    assert_eq!(reason, FinishReason::Stop);
    assert_eq!(streamed, text);
    assert!(!text.contains(&stop) && full.starts_with(&text), "{text:?} is {full:?} cut before {stop:?}");
}

#[tokio::test]
async fn cancellation_stops_within_one_token() {
    let prompt = &reference().cases[1].prompt_tokens;
    let (request, mut received) = greedy(prompt, 200, &[]);
    let cancel = request.cancel.clone();
    engine().submit(request).ok().unwrap();
    // Wait for a few tokens, then cancel.
    let mut seen = 0;
    while seen < 3 {
        match tokio::time::timeout(Duration::from_secs(60), received.recv()).await.unwrap().unwrap() {
            Update::Text { tokens, .. } => seen = tokens,
            Update::PromptDone => {}
            other => panic!("{other:?} before cancelling"),
        }
    }
    cancel.cancel();
    // Everything the engine had produced before the cancel is already queued; at most the
    // step in progress at that moment may still add a token.
    let mut produced_before_cancel = seen;
    loop {
        match received.try_recv() {
            Ok(Update::Text { tokens, .. }) => produced_before_cancel = tokens,
            Ok(Update::Finished { completion_tokens, reason, .. }) => {
                assert_eq!(reason, FinishReason::Cancelled);
                assert!(completion_tokens <= produced_before_cancel + 1);
                return;
            }
            Ok(other) => panic!("{other:?}"),
            Err(_) => break,
        }
    }
    loop {
        match tokio::time::timeout(Duration::from_secs(60), received.recv()).await.unwrap().unwrap() {
            Update::Text { tokens, .. } => assert!(tokens <= produced_before_cancel + 1, "token {tokens} after cancel"),
            Update::Finished { completion_tokens, reason, .. } => {
                assert_eq!(reason, FinishReason::Cancelled);
                assert!(
                    completion_tokens <= produced_before_cancel + 1,
                    "{produced_before_cancel} tokens when cancelled, {completion_tokens} at the end"
                );
                return;
            }
            other => panic!("{other:?}"),
        }
    }
}

/// A prompt longer than one step's prompt budget is read over several steps, alongside
/// other jobs, and gives exactly what reading it in one pass gives.
#[tokio::test]
async fn long_prompts_are_read_in_chunks_without_changing_the_result() {
    let loaded = model();
    let text = "Once upon a time, in a small village, there lived a baker who rose before the sun. ".repeat(20);
    let prompt = loaded.tokenizer.tokenizer.encode(text.as_str(), false).unwrap().get_ids().to_vec();
    assert!(prompt.len() > 2 * engine::PREFILL_CHUNK, "{} tokens", prompt.len());
    let n = 8;
    // In one pass, then greedy.
    let expected = greedy_tokens(&loaded.model, &prompt, n);
    let expected = loaded.tokenizer.tokenizer.decode(&expected, true).unwrap();
    // Through the engine, while another job decodes.
    let (other, other_updates) = greedy(&reference().cases[0].prompt_tokens, 40, &[]);
    engine().submit(other).ok().unwrap();
    let (request, received) = greedy(&prompt, n, &[]);
    engine().submit(request).ok().unwrap();
    let (streamed, got, tokens, _) = collect(received).await;
    assert_eq!((got.as_str(), tokens), (expected.as_str(), n));
    assert_eq!(streamed, got);
    let (_, _, _, other_reason) = collect(other_updates).await;
    assert!(matches!(other_reason, FinishReason::Length | FinishReason::EndOfSequence), "{other_reason:?}");
}
