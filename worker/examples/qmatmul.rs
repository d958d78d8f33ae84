//! The quantized products alone, with and without Intel AMX: SmolLM2-135M's shapes (its
//! Q4_1 layers' 576 × 576, 1536 × 576 and 576 × 1536, and the 49,152 × 576 Q8_0 output
//! layer) with random weights, at 1 to 64 activation rows, on candle's CPU thread pool.
//! Prints µs per product in this process, then runs itself again with
//! `DEEPHARDWAY_NO_AMX=1` (the AVX-512 kernels) and prints that beside it, with the ratio.
//! On a CPU without AMX both columns run the same kernels.
//!
//!     cargo run -p deephardway-worker --example qmatmul

use std::{
    collections::HashMap,
    process::Command,
    time::{Duration, Instant},
};

use candle_core::{Device, Tensor, quantized::GgmlDType, quantized::QTensor};
use deephardway_worker::models::llama::qmatmul::QMatrix;

/// Set in the child run: print machine-readable lines only.
const CHILD: &str = "QMATMUL_EXAMPLE_CHILD";

const SHAPES: [(usize, usize, GgmlDType); 4] = [
    (576, 576, GgmlDType::Q4_1),
    (1536, 576, GgmlDType::Q4_1),
    (576, 1536, GgmlDType::Q4_1),
    (49_152, 576, GgmlDType::Q8_0),
];
const ROWS: [usize; 7] = [1, 4, 8, 12, 16, 32, 64];

fn main() -> anyhow::Result<()> {
    let ours = measure()?;
    if std::env::var_os(CHILD).is_some() {
        for ((shape, rows), us) in &ours {
            println!("{shape} {rows} {us}");
        }
        return Ok(());
    }
    let output = Command::new(std::env::current_exe()?).env(CHILD, "1").env("DEEPHARDWAY_NO_AMX", "1").output()?;
    anyhow::ensure!(output.status.success(), "the run without AMX failed: {}", String::from_utf8_lossy(&output.stderr));
    let mut without: HashMap<(usize, usize), f64> = HashMap::new();
    for line in String::from_utf8(output.stdout)?.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if let [shape, rows, us] = fields[..] {
            without.insert((shape.parse()?, rows.parse()?), us.parse()?);
        }
    }
    let amx = std::env::var_os("DEEPHARDWAY_NO_AMX").is_none();
    println!(
        "quantized products, µs each (best of 5 rounds), {} threads; this run {} AMX",
        candle_core::utils::get_num_threads(),
        if amx { "may use" } else { "without" }
    );
    println!("{:<24} {:>5} {:>12} {:>12} {:>8}", "weight", "rows", "this run", "no AMX", "ratio");
    for (shape, &(out, inp, dtype)) in SHAPES.iter().enumerate() {
        for rows in ROWS {
            let (here, there) = (ours[&(shape, rows)], without[&(shape, rows)]);
            let name = format!("{out} × {inp} {dtype:?}");
            println!("{name:<24} {rows:>5} {here:>12.1} {there:>12.1} {:>7.2}x", there / here);
        }
    }
    println!("ratio = time without AMX / time in this run: above 1 means AMX is faster");
    Ok(())
}

/// µs per product for each (shape index, rows): the best of five rounds of at least
/// 100 ms each.
fn measure() -> anyhow::Result<HashMap<(usize, usize), f64>> {
    let mut results = HashMap::new();
    for (shape, &(out, inp, dtype)) in SHAPES.iter().enumerate() {
        let weights = Tensor::randn(0f32, 1.0, (out, inp), &Device::Cpu)?;
        let matrix = QMatrix::from_qtensor(&QTensor::quantize(&weights, dtype)?)?;
        for rows in ROWS {
            let x = Tensor::randn(0f32, 1.0, (rows, inp), &Device::Cpu)?;
            matrix.forward(&x)?; // warm up
            let mut best = f64::INFINITY;
            for _ in 0..5 {
                let (started, mut n) = (Instant::now(), 0u32);
                while started.elapsed() < Duration::from_millis(100) {
                    matrix.forward(&x)?;
                    n += 1;
                }
                best = best.min(started.elapsed().as_secs_f64() * 1e6 / n as f64);
            }
            results.insert((shape, rows), best);
        }
    }
    Ok(results)
}
