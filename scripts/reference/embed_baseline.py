"""The embedding benchmark's baseline: sentence-transformers on PyTorch CPU, on the same
sentences and weights as `deephardway bench --embed` (see scripts/bench-embed)."""

import sys
import time

import torch
from sentence_transformers import SentenceTransformer

WORDS = ["the", "model", "streams", "tokens", "while", "jobs", "wait", "in", "line"]


def sentences(n):
    return [" ".join(WORDS[(i + w) % 9] for w in range(6 + (i * 7) % 30)) for i in range(n)]


def main():
    model_dir, n, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    torch.set_num_threads(threads)
    model = SentenceTransformer(model_dir, device="cpu")
    texts = sentences(n)
    model.encode(texts[:8])
    print(f"sentence-transformers {__import__('sentence_transformers').__version__}, torch {torch.__version__}, {threads} threads")
    for batch in (1, 32):
        started = time.perf_counter()
        model.encode(texts, batch_size=batch, normalize_embeddings=True)
        print(f"batch {batch:<2}  {n / (time.perf_counter() - started):10.1f} sentences/s")


if __name__ == "__main__":
    main()
