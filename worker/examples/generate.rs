//! Greedy generation straight from a GGUF, without the service: for trying a model and
//! profiling the decoder.
//!
//!     cargo run -p deephardway-worker --example generate -- MODEL.gguf "The capital of France is" 64

use std::{io::Write, time::Instant};

use candle_core::Device;
use deephardway_worker::models::llama::{self, top2};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let path = args.next().expect("usage: generate MODEL.gguf PROMPT [TOKENS]");
    let prompt = args.next().unwrap_or_else(|| "The capital of France is".into());
    let n: usize = args.next().map_or(Ok(64), |s| s.parse())?;
    let loaded = llama::load(path.as_ref(), &Device::Cpu)?;
    let tokenizer = &loaded.tokenizer.tokenizer;
    let prompt_tokens = tokenizer.encode(prompt.as_str(), false).map_err(anyhow::Error::msg)?.get_ids().to_vec();
    let mut sequence = loaded.model.new_sequence(prompt_tokens.len() + n);
    let started = Instant::now();
    let mut logits = loaded.model.forward(&mut [&mut sequence], &[&prompt_tokens], false)?;
    let first = started.elapsed();
    let mut tokens = Vec::new();
    print!("{prompt}");
    for _ in 0..n {
        let (token, _, _) = top2(&logits)?[0];
        tokens.push(token);
        print!("{}", tokenizer.decode(&[token], false).map_err(anyhow::Error::msg)?);
        std::io::stdout().flush()?;
        logits = loaded.model.forward(&mut [&mut sequence], &[&[token]], false)?;
    }
    let decode = started.elapsed() - first;
    println!(
        "\n\n{} prompt tokens in {:.1} ms; {n} tokens decoded at {:.1} tokens/s",
        prompt_tokens.len(),
        first.as_secs_f64() * 1e3,
        n as f64 / decode.as_secs_f64()
    );

    // The same prompt as BATCH sequences decoded in lockstep, one forward pass per step.
    let batch: usize = std::env::var("BATCH").ok().and_then(|b| b.parse().ok()).unwrap_or(0);
    if batch > 0 {
        let mut sequences: Vec<_> = (0..batch).map(|_| loaded.model.new_sequence(prompt_tokens.len() + n)).collect();
        let mut next = Vec::new();
        for sequence in &mut sequences {
            let logits = loaded.model.forward(&mut [sequence], &[&prompt_tokens], false)?;
            next.push(top2(&logits)?[0].0);
        }
        let started = Instant::now();
        for _ in 0..n {
            let tokens: Vec<[u32; 1]> = next.iter().map(|&t| [t]).collect();
            let tokens: Vec<&[u32]> = tokens.iter().map(|t| t.as_slice()).collect();
            let mut refs: Vec<_> = sequences.iter_mut().collect();
            let logits = loaded.model.forward(&mut refs, &tokens, false)?;
            next = top2(&logits)?.into_iter().map(|(t, _, _)| t).collect();
        }
        println!(
            "{batch} sequences in lockstep: {:.1} tokens/s in all",
            (batch * n) as f64 / started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
