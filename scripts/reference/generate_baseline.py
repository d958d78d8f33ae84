"""The generation benchmark's baseline: llama.cpp (llama-cpp-python) on the same GGUF,
prompt, token count and thread count as `deephardway bench --generate` (see
scripts/bench-generate). Greedy, one stream; the time to first token counts reading the
prompt and choosing the first token, like deephardway's."""

import sys
import time

import llama_cpp
import numpy as np
from llama_cpp import Llama

PROMPT = "Once upon a time, in a small village,"  # = GENERATE_PROMPT in service/src/cli/bench/models.rs


def main():
    gguf, tokens, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    llm = Llama(model_path=gguf, n_ctx=1024, n_threads=threads, n_threads_batch=threads, verbose=False)
    prompt = llm.tokenize(PROMPT.encode(), add_bos=False)
    print(f"llama.cpp (llama-cpp-python {llama_cpp.__version__}), {threads} threads, greedy, {tokens} tokens")
    first_token, per_second = [], []
    for _ in range(4):  # the first round warms up and is not counted
        llm.reset()
        started = time.perf_counter()
        llm.eval(prompt)
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        first = time.perf_counter()
        for _ in range(tokens - 1):
            llm.eval([token])
            token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        done = time.perf_counter()
        first_token.append((first - started) * 1e3)
        per_second.append((tokens - 1) / (done - first))
    print(f"single stream  first token {np.mean(first_token[1:]):.1f} ms  {np.mean(per_second[1:]):.1f} tokens/s")


if __name__ == "__main__":
    main()
