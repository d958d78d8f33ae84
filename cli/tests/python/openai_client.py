"""OpenAI's own Python client against deephardway's OpenAI-compatible API.

Usage: openai_client.py BASE_URL GENERATE_MODEL EMBED_MODEL

Runs what a user of the `openai` package would, checks what only the client can see
(the types it parses, the exceptions it raises), and prints one JSON object with what
it got, for cli/tests/openai.rs to compare with the job API's own answers.
"""

import json
import sys
import time

import openai
from openai import OpenAI

base_url, generate_model, embed_model = sys.argv[1:4]
client = OpenAI(base_url=base_url, api_key="not-checked-with-auth-off", max_retries=0, timeout=120)
out = {}

# --- models --------------------------------------------------------------------------
models = {m.id: m for m in client.models.list()}
assert generate_model in models and embed_model in models, models
out["models"] = sorted(models)

# --- chat completions, whole and streamed ----------------------------------------------
chat = dict(
    model=generate_model,
    messages=[{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Name three colors."}],
    max_tokens=12,
    temperature=0,
    seed=7,
)
raw = client.chat.completions.with_raw_response.create(**chat)
whole = raw.parse()
out["chat_job_id"] = raw.headers["x-deephardway-job-id"]
assert whole.object == "chat.completion", whole
assert whole.choices[0].message.role == "assistant"
assert whole.choices[0].finish_reason in ("stop", "length"), whole
assert whole.usage.completion_tokens > 0 and whole.usage.prompt_tokens > 0, whole.usage
out["chat_text"] = whole.choices[0].message.content
out["chat_usage"] = whole.usage.model_dump()

streamed_text, usage, finish, chunks = "", None, None, 0
for chunk in client.chat.completions.create(**chat, stream=True, stream_options={"include_usage": True}):
    chunks += 1
    assert chunk.object == "chat.completion.chunk", chunk
    if chunk.usage is not None:
        usage = chunk.usage
        assert chunk.choices == [], chunk
        continue
    delta = chunk.choices[0].delta
    streamed_text += delta.content or ""
    finish = chunk.choices[0].finish_reason or finish
assert streamed_text == out["chat_text"], (streamed_text, out["chat_text"])
assert usage is not None and usage.completion_tokens == whole.usage.completion_tokens, usage
assert finish == whole.choices[0].finish_reason, finish
out["chat_stream_chunks"] = chunks

# --- completions -----------------------------------------------------------------------
completion = dict(model=generate_model, prompt="The capital of France is", max_tokens=6, temperature=0, seed=3)
whole = client.completions.create(**completion)
assert whole.object == "text_completion", whole
out["completion_text"] = whole.choices[0].text
out["completion_finish"] = whole.choices[0].finish_reason
streamed_text = "".join(c.choices[0].text for c in client.completions.create(**completion, stream=True) if c.choices)
assert streamed_text == out["completion_text"], (streamed_text, out["completion_text"])

# --- embeddings (the client asks for base64 and decodes it; floats asked too) -----------
texts = ["A man is playing a guitar.", "Someone plays an instrument."]
embedded = client.embeddings.create(model=embed_model, input=texts)
as_floats = client.embeddings.create(model=embed_model, input=texts, encoding_format="float")
assert [e.index for e in embedded.data] == [0, 1]
assert embedded.usage.prompt_tokens > len(texts), embedded.usage
for a, b in zip(embedded.data, as_floats.data):
    assert max(abs(x - y) for x, y in zip(a.embedding, b.embedding)) < 1e-6
out["embeddings"] = [e.embedding for e in embedded.data]
out["embedding_tokens"] = embedded.usage.prompt_tokens
single = client.embeddings.create(model=embed_model, input="one string")
assert len(single.data) == 1

# --- responses in the background: retrieve, replay from a sequence number, cancel -------
created = client.responses.create(
    model=generate_model, input="Say hello.", background=True, max_output_tokens=8, temperature=0
)
assert created.status in ("queued", "in_progress", "completed"), created.status
assert created.id.startswith("resp_")
response = created
for _ in range(600):
    response = client.responses.retrieve(created.id)
    if response.status not in ("queued", "in_progress"):
        break
    time.sleep(0.1)
assert response.status in ("completed", "incomplete"), response
assert response.output_text, response
out["response_id"] = created.id
out["response_text"] = response.output_text
out["response_status"] = response.status

events = list(client.responses.retrieve(created.id, stream=True))
numbers = [e.sequence_number for e in events]
assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers), numbers
assert events[0].type == "response.created", events[0]
assert events[-1].type in ("response.completed", "response.incomplete"), events[-1]
replay_text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
assert replay_text == response.output_text, (replay_text, response.output_text)
middle = numbers[len(numbers) // 2]
resumed = list(client.responses.retrieve(created.id, stream=True, starting_after=middle))
assert [e.sequence_number for e in resumed] == [n for n in numbers if n > middle], (middle, numbers, resumed)
out["response_events"] = [e.type for e in events]

long = client.responses.create(
    model=generate_model, input="Count from one to one thousand.", background=True, max_output_tokens=400
)
cancelled = client.responses.cancel(long.id)
for _ in range(300):
    cancelled = client.responses.retrieve(long.id)
    if cancelled.status == "cancelled":
        break
    time.sleep(0.1)
assert cancelled.status == "cancelled", cancelled.status
out["cancelled_id"] = long.id


# --- refusals: the documented status and error object ----------------------------------
def refused(exception, call):
    try:
        call()
    except exception as e:
        return {"status": e.status_code, "param": (e.body or {}).get("param"), "message": (e.body or {}).get("message")}
    raise AssertionError(f"expected {exception.__name__}")


out["refusals"] = {
    "unknown_model": refused(
        openai.NotFoundError,
        lambda: client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}]),
    ),
    "n_2": refused(
        openai.BadRequestError,
        lambda: client.chat.completions.create(
            model=generate_model, messages=[{"role": "user", "content": "x"}], n=2
        ),
    ),
    "empty_messages": refused(
        openai.BadRequestError, lambda: client.chat.completions.create(model=generate_model, messages=[])
    ),
    "token_array": refused(
        openai.BadRequestError, lambda: client.embeddings.create(model=embed_model, input=[[1, 2, 3]])
    ),
    "bad_temperature": refused(
        openai.BadRequestError,
        lambda: client.chat.completions.create(
            model=generate_model, messages=[{"role": "user", "content": "x"}], temperature=9
        ),
    ),
}
print(json.dumps(out))
