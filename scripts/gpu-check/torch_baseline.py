#!/usr/bin/env python3
"""PyTorch on the same GPU, same stand-in weights: the baseline that scripts/gpu-check/run
prints beside `deephardway bench --embed/--generate --device cuda`.

    torch_baseline.py MODELS_DIR [DEVICE]

- embed: the BERT stand-in (all-MiniLM-L6-v2's shape) in float32, mean pooled and
  normalised, on the benchmark's sentences' token counts (its words are one token each,
  plus [CLS] and [SEP]), 32 per batch: sentences/s.
- generate: the llama stand-in (SmolLM2-135M's shape) with its Q4_1/Q8_0 weights
  dequantized to float16, greedy decoding with a KV cache, 128 tokens per stream, 1 and 16
  streams: aggregate tokens/s. (deephardway keeps the weights quantized; PyTorch has no
  Q4_1 kernels, so float16 is what a PyTorch user would run.)

Written against PyTorch's own operators only (no transformers, no safetensors package),
since the GPU machine has PyTorch and no network.
"""

import json
import struct
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from make_models import BERT, BLOCKS, GGUF, GGUF_FILE, gguf_layout  # noqa: E402


def load_safetensors(path, device):
    data = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__" or info["dtype"] != "F32":
            continue
        start, end = info["data_offsets"]
        raw = bytearray(data[8 + n + start : 8 + n + end])
        tensors[name] = torch.frombuffer(raw, dtype=torch.float32).reshape(info["shape"]).to(device)
    return tensors


def bert_embed(w, ids, mask, heads=12, layers=6):
    b, t = ids.shape
    pos = torch.arange(t, device=ids.device)
    x = w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][pos]
    x = x + w["embeddings.token_type_embeddings.weight"][0]
    x = F.layer_norm(x, x.shape[-1:], w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], 1e-12)
    bias = (1.0 - mask[:, None, None, :].float()) * -1e4
    for i in range(layers):
        p = f"encoder.layer.{i}."
        lin = lambda h, name: F.linear(h, w[p + name + ".weight"], w[p + name + ".bias"])  # noqa: E731
        split = lambda h: h.view(b, t, heads, -1).transpose(1, 2)  # noqa: E731
        q, k, v = (split(lin(x, f"attention.self.{n}")) for n in ("query", "key", "value"))
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        a = lin(a.transpose(1, 2).reshape(b, t, -1), "attention.output.dense")
        ln = lambda h, name: F.layer_norm(h, h.shape[-1:], w[p + name + ".weight"], w[p + name + ".bias"], 1e-12)  # noqa: E731
        x = ln(x + a, "attention.output.LayerNorm")
        h = lin(F.gelu(lin(x, "intermediate.dense")), "output.dense")
        x = ln(x + h, "output.LayerNorm")
    pooled = (x * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    return F.normalize(pooled, dim=-1)


def embed_bench(models, device, sentences=512):
    w = load_safetensors(models / BERT / "model.safetensors", device)
    # The benchmark's sentences: 6 + (i*7) % 30 words, one token each, plus [CLS], [SEP].
    lengths = [6 + (i * 7) % 30 + 2 for i in range(sentences)]
    batches = []
    for s in range(0, sentences, 32):
        chunk = lengths[s : s + 32]
        t = max(chunk)
        ids = torch.randint(1000, 30000, (len(chunk), t), device=device)
        mask = torch.tensor([[1] * n + [0] * (t - n) for n in chunk], device=device)
        batches.append((ids, mask))
    with torch.inference_mode():
        for ids, mask in batches[:2]:
            bert_embed(w, ids, mask)
        torch.cuda.synchronize()
        started = time.perf_counter()
        for ids, mask in batches:
            bert_embed(w, ids, mask).cpu()
        elapsed = time.perf_counter() - started
    print(f"pytorch embed, batch 32, float32: {sentences / elapsed:.1f} sentences/s")


def dequantize(raw, kind, count):
    """GGUF tensor bytes of type F32 (0), Q4_1 (3) or Q8_0 (8) to float32 values."""
    if kind == 0:
        return torch.frombuffer(bytearray(raw), dtype=torch.float32)[:count].clone()
    size = 20 if kind == 3 else 34
    blocks = torch.frombuffer(bytearray(raw), dtype=torch.uint8)[: count // 32 * size].view(-1, size)
    d = blocks[:, 0:2].contiguous().view(torch.float16).float()
    if kind == 3:
        m = blocks[:, 2:4].contiguous().view(torch.float16).float()
        qs = blocks[:, 4:]
        q = torch.cat([qs & 0x0F, qs >> 4], dim=1).float()  # low nibbles are the first 16
        return (q * d + m).flatten()
    q = blocks[:, 2:].contiguous().view(torch.int8).float()
    return (q * d).flatten()


def load_llama(models, device):
    path = models / GGUF / GGUF_FILE
    data = path.read_bytes()
    tensors, start = gguf_layout(data)
    w = {}
    for name, kind, count, offset in tensors:
        per, size = BLOCKS[kind]
        raw = data[start + offset : start + offset + count // per * size]
        w[name] = dequantize(raw, kind, count).to(device, torch.float16)
    return w


def llama_decode(w, batch, tokens, device, dim=576, layers=30, heads=9, kv_heads=3, theta=100000.0):
    hd = dim // heads
    vocab = w["token_embd.weight"].numel() // dim
    emb = w["token_embd.weight"].view(vocab, dim)
    mat = lambda name, rows: w[name].view(rows, -1)  # noqa: E731 GGUF dims are (in, out): rows = out
    inv = 1.0 / theta ** (torch.arange(0, hd, 2, device=device).float() / hd)
    cache = [(torch.empty(batch, kv_heads, 0, hd, device=device, dtype=torch.float16),) * 2 for _ in range(layers)]
    ids = torch.randint(1000, vocab, (batch,), device=device)

    def rope(x, pos):
        f = pos * inv
        cos, sin = f.cos().to(x.dtype), f.sin().to(x.dtype)
        a, b = x[..., : hd // 2], x[..., hd // 2 :]
        return torch.cat([a * cos - b * sin, a * sin + b * cos], -1)

    def rms(x, name):
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + 1e-5)).to(x.dtype) * w[name]

    for pos in range(tokens):
        x = emb[ids][:, None, :]
        for i in range(layers):
            p = f"blk.{i}."
            h = rms(x, p + "attn_norm.weight")
            q = F.linear(h, mat(p + "attn_q.weight", dim)).view(batch, 1, heads, hd).transpose(1, 2)
            k = F.linear(h, mat(p + "attn_k.weight", kv_heads * hd)).view(batch, 1, kv_heads, hd).transpose(1, 2)
            v = F.linear(h, mat(p + "attn_v.weight", kv_heads * hd)).view(batch, 1, kv_heads, hd).transpose(1, 2)
            q, k = rope(q, pos), rope(k, pos)
            ck, cv = torch.cat([cache[i][0], k], 2), torch.cat([cache[i][1], v], 2)
            cache[i] = (ck, cv)
            rep = heads // kv_heads
            a = F.scaled_dot_product_attention(q, ck.repeat_interleave(rep, 1), cv.repeat_interleave(rep, 1))
            x = x + F.linear(a.transpose(1, 2).reshape(batch, 1, dim), mat(p + "attn_output.weight", dim))
            h = rms(x, p + "ffn_norm.weight")
            ff = w[p + "ffn_gate.weight"].numel() // dim
            g = F.silu(F.linear(h, mat(p + "ffn_gate.weight", ff))) * F.linear(h, mat(p + "ffn_up.weight", ff))
            x = x + F.linear(g, mat(p + "ffn_down.weight", dim))
        logits = F.linear(rms(x, "output_norm.weight"), emb)
        ids = logits[:, -1].argmax(-1)
    return ids


def generate_bench(models, device, tokens=128):
    w = load_llama(models, device)
    with torch.inference_mode():
        llama_decode(w, 1, 4, device)
        for batch in (1, 16):
            torch.cuda.synchronize()
            started = time.perf_counter()
            llama_decode(w, batch, tokens, device)
            torch.cuda.synchronize()
            elapsed = time.perf_counter() - started
            print(f"pytorch generate, float16, {batch} streams: {batch * tokens / elapsed:.1f} aggregate tokens/s")


if __name__ == "__main__":
    models = Path(sys.argv[1])
    device = sys.argv[2] if len(sys.argv) > 2 else "cuda"
    embed_bench(models, device)
    generate_bench(models, device)
