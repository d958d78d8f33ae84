//! The embed runner on the real all-MiniLM-L6-v2 weights (fetched by scripts/fetch-models).

use candle_core::Device;
use deephardway_worker::runners::{default_models_dir, embed::EmbedRunner};

fn runner() -> EmbedRunner {
    let dir = default_models_dir().join("all-minilm-l6-v2");
    assert!(dir.join("model.safetensors").exists(), "{} is missing: run scripts/fetch-models", dir.display());
    EmbedRunner::load("all-minilm-l6-v2", &dir, &Device::Cpu).expect("loads")
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[test]
fn similar_sentences_are_closer_than_unrelated_ones() {
    let runner = runner();
    let texts: Vec<String> = [
        "A man is playing a guitar.",
        "Someone plays an acoustic guitar.",
        "The stock market fell sharply today.",
        "",
        "Ein Mann spielt Gitarre. 男人在弹吉他。",
    ]
    .map(String::from)
    .to_vec();
    let vectors = runner.embed(&texts).unwrap();
    assert_eq!(vectors.len(), texts.len());
    for v in &vectors {
        assert_eq!(v.len(), 384);
        let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "L2-normalised: {norm}");
    }
    let related = cosine(&vectors[0], &vectors[1]);
    let unrelated = cosine(&vectors[0], &vectors[2]);
    assert!(related > 0.5 && related > unrelated + 0.3, "related {related}, unrelated {unrelated}");
}

#[test]
fn batching_and_truncation_do_not_change_a_texts_vector() {
    let runner = runner();
    let long = "word ".repeat(2000);
    let texts: Vec<String> = vec!["short one".into(), long.clone(), "a medium length sentence here".into()];
    let batch = runner.embed(&texts).unwrap();
    for (i, text) in texts.iter().enumerate() {
        let alone = runner.embed(std::slice::from_ref(text)).unwrap().remove(0);
        let agreement = cosine(&alone, &batch[i]);
        assert!(agreement > 0.9999, "text {i}: batch vs alone cosine {agreement}");
    }
    // A text past the 256-token limit embeds like its first 256 tokens.
    let truncated = runner.embed(&["word ".repeat(300)]).unwrap().remove(0);
    assert!(cosine(&truncated, &batch[1]) > 0.9999);
}

/// Agreement with sentence-transformers on the same weights (reference made by
/// scripts/reference/embed_reference.py and committed): cosine ≥ 0.999 for every text,
/// including an empty one, non-ASCII ones and one past the 256-token limit.
#[test]
fn agrees_with_sentence_transformers() {
    #[derive(serde::Deserialize)]
    struct Reference {
        texts: Vec<String>,
        embeddings: Vec<Vec<f32>>,
    }
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/embed_reference.json");
    let reference: Reference = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let ours = runner().embed(&reference.texts).unwrap();
    let mut worst = (f32::MAX, 0.0f32);
    for ((text, want), got) in reference.texts.iter().zip(&reference.embeddings).zip(&ours) {
        let agreement = cosine(want, got);
        let largest_difference = want.iter().zip(got).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        worst = (worst.0.min(agreement), worst.1.max(largest_difference));
        assert!(
            agreement >= 0.999,
            "{:?}…: cosine {agreement} with sentence-transformers",
            text.chars().take(30).collect::<String>()
        );
    }
    println!("{} texts: lowest cosine {:.6}, largest element difference {:.2e}", ours.len(), worst.0, worst.1);
}

/// The GPU's encoder (candle-transformers' BERT, texts padded in sub-batches) agrees with
/// the CPU's (packed kernels, no padding) in f32 on the reference texts, run here on the
/// CPU. (Where the CPU has AMX, the default CPU encoder's products are bfloat16: the
/// sentence-transformers test above holds that one.)
#[test]
fn the_cpu_and_gpu_encoders_agree() {
    use deephardway_worker::models::bert::SentenceEmbedder;

    let dir = default_models_dir().join("all-minilm-l6-v2");
    let texts: Vec<String> =
        ["", "short", "A man is playing a guitar.", &"a much longer text, ".repeat(40), "Ein Mann spielt Gitarre."]
            .map(String::from)
            .to_vec();
    let ours = SentenceEmbedder::load_f32(&dir).unwrap().embed(&texts).unwrap();
    let candle = SentenceEmbedder::load_with_candle(&dir, &Device::Cpu).unwrap().embed(&texts).unwrap();
    for (i, (a, b)) in ours.iter().zip(&candle).enumerate() {
        assert!(cosine(a, b) > 0.99999, "text {i}: cosine {}", cosine(a, b));
    }
}
