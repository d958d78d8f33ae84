//! Sentence embeddings straight from a model directory, without the service: for timing
//! and profiling the BERT forward pass (`perf record` around it).
//!
//!     cargo run -p deephardway-worker --example embed -- MODEL_DIR [SENTENCES] [BATCH] [ROUNDS]
//!
//! The sentences are the service benchmark's (`deephardway bench --embed`).

use std::time::Instant;

use candle_core::Device;
use deephardway_worker::models::bert::SentenceEmbedder;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().expect("usage: embed MODEL_DIR [SENTENCES] [BATCH] [ROUNDS]");
    let n: usize = args.next().map_or(Ok(256), |s| s.parse())?;
    let batch: usize = args.next().map_or(Ok(32), |s| s.parse())?;
    let rounds: usize = args.next().map_or(Ok(3), |s| s.parse())?;
    let embedder = SentenceEmbedder::load(dir.as_ref(), &Device::Cpu)?;
    let texts = deephardway_worker::runners::embed::benchmark_texts(n);
    embedder.embed(&texts[..batch.min(n)])?; // warm up
    for _ in 0..rounds {
        let started = Instant::now();
        for chunk in texts.chunks(batch) {
            embedder.embed(chunk)?;
        }
        let elapsed = started.elapsed().as_secs_f64();
        println!("batch {batch}: {n} sentences in {elapsed:.3} s, {:.1} sentences/s", n as f64 / elapsed);
    }
    Ok(())
}
