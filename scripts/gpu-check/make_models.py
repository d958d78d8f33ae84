#!/usr/bin/env python3
"""Random-weight stand-ins for the two real models, for the GPU check.

The real weights (SmolLM2-135M-Instruct Q4_1, all-MiniLM-L6-v2 f32: 190 MB together)
are too large to carry to the GPU machine, and it has no network. What the check needs is
the same *function* run on two devices, so it carries only the models' shapes and
tokenizers (`shapes`, a few MB) and makes weights of the same sizes there:

    make_models.py shapes REAL_MODELS_DIR OUT_DIR    # here: keep shapes and tokenizers
    make_models.py models OUT_DIR/shapes MODELS_DIR  # there: write the random models

The llama stand-in keeps the real GGUF's header byte for byte (metadata, tokenizer, tensor
names, types and offsets) and fills each tensor with random blocks of its type (Q4_1,
Q8_0, or F32 norms of ones); the BERT stand-in keeps the real safetensors header and the
tokenizer files, with uniform random weights, LayerNorm weights one and biases zero. Both
are seeded: every run makes the same models. Standard library only (the GPU machine's
Python has PyTorch, which this does not need).
"""

import json
import random
import shutil
import struct
import sys
from array import array
from pathlib import Path

GGUF = "smollm2-135m-instruct"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
BERT = "all-minilm-l6-v2"
SEED = 20261130

# GGUF value types (gguf.h): scalar struct formats, 8 = string, 9 = array.
SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
# Tensor types this needs: (block size in values, bytes per block).
BLOCKS = {0: (1, 4), 3: (32, 20), 8: (32, 34)}  # F32, Q4_1, Q8_0


class Reader:
    def __init__(self, data):
        self.data, self.at = data, 0

    def take(self, fmt):
        (value,) = struct.unpack_from("<" + fmt, self.data, self.at)
        self.at += struct.calcsize("<" + fmt)
        return value

    def string(self):
        n = self.take("Q")
        self.at += n
        return self.data[self.at - n : self.at].decode("utf-8")

    def value(self, kind):
        if kind in SCALARS:
            return self.take(SCALARS[kind])
        if kind == 8:
            return self.string()
        if kind == 9:
            inner, n = self.take("I"), self.take("Q")
            return [self.value(inner) for _ in range(n)]
        raise ValueError(f"GGUF value type {kind}")


def gguf_layout(header):
    """(tensors as (name, type, element count, offset), where their data starts) of a
    GGUF file's first bytes, which must hold its whole header."""
    r = Reader(header)
    if header[:4] != b"GGUF":
        raise ValueError("not a GGUF file")
    r.at = 4
    version, n_tensors, n_kv = r.take("I"), r.take("Q"), r.take("Q")
    if version != 3:
        raise ValueError(f"GGUF version {version}")
    alignment = 32
    for _ in range(n_kv):
        key, kind = r.string(), r.take("I")
        value = r.value(kind)
        if key == "general.alignment":
            alignment = value
    tensors = []
    for _ in range(n_tensors):
        name, dims = r.string(), r.take("I")
        count = 1
        for _ in range(dims):
            count *= r.take("Q")
        kind, offset = r.take("I"), r.take("Q")
        tensors.append((name, kind, count, offset))
    data_start = (r.at + alignment - 1) // alignment * alignment
    return tensors, data_start


def shapes(real_models, out):
    """Keeps what the random models need of the real ones: the GGUF header, and the BERT
    directory without its weights plus their safetensors header."""
    out.mkdir(parents=True, exist_ok=True)
    gguf = (real_models / GGUF / GGUF_FILE).read_bytes()
    _, data_start = gguf_layout(gguf)
    (out / "gguf-header.bin").write_bytes(gguf[:data_start])
    bert_out = out / BERT
    shutil.rmtree(bert_out, ignore_errors=True)
    shutil.copytree(real_models / BERT, bert_out, ignore=shutil.ignore_patterns("model.safetensors", ".verified"))
    with open(real_models / BERT / "model.safetensors", "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        (out / "safetensors-header.json").write_bytes(f.read(n))


def random_blocks(rng, kind, count):
    """`count` values of tensor type `kind` as GGUF stores them."""
    per_block, block_bytes = BLOCKS[kind]
    blocks = count // per_block
    if kind == 0:  # F32 tensors here are norm weights: ones.
        return array("f", [1.0]) * count
    data = bytearray(rng.randbytes(blocks * block_bytes))
    if kind == 3:  # Q4_1: f16 scale d, f16 minimum m, 32 nibbles: m + q*d in [-0.04, 0.04]
        head = struct.pack("<ee", 0.08 / 15, -0.04)
    else:  # Q8_0: f16 scale d, 32 int8: q*d in about [-0.04, 0.04]
        head = struct.pack("<e", 0.04 / 127)
    for i, byte in enumerate(head):
        data[i::block_bytes] = bytes([byte]) * blocks
    return data


def write_gguf(header, path, rng):
    tensors, data_start = gguf_layout(header)
    with open(path, "wb") as f:
        f.write(header)
        for name, kind, count, offset in sorted(tensors, key=lambda t: t[3]):
            if kind not in BLOCKS:
                raise ValueError(f"{name}: tensor type {kind} is not one this script writes")
            f.seek(data_start + offset)
            f.write(random_blocks(rng, kind, count))


def write_safetensors(header, path, rng):
    """The BERT weights: uniform in [-0.04, 0.04] through a byte lookup (fast without
    numpy), LayerNorm weights one, biases zero."""
    meta = json.loads(header)
    table = [(b - 127.5) / 127.5 * 0.04 for b in range(256)]
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header)))
        f.write(header)
        for name, info in sorted(
            ((k, v) for k, v in meta.items() if k != "__metadata__"), key=lambda kv: kv[1]["data_offsets"][0]
        ):
            start, end = info["data_offsets"]
            if info["dtype"] == "I64" and name.endswith("position_ids"):
                f.seek(8 + len(header) + start)
                f.write(array("q", range((end - start) // 8)))
                continue
            if info["dtype"] != "F32":
                raise ValueError(f"{name}: dtype {info['dtype']}")
            count = (end - start) // 4
            if name.endswith("bias"):
                values = array("f", [0.0]) * count
            elif "LayerNorm" in name or name.endswith("norm.weight"):
                values = array("f", [1.0]) * count
            else:
                values = array("f", map(table.__getitem__, rng.randbytes(count)))
            f.seek(8 + len(header) + start)
            f.write(values)


def models(shapes_dir, out):
    rng = random.Random(SEED)
    (out / GGUF).mkdir(parents=True, exist_ok=True)
    write_gguf((shapes_dir / "gguf-header.bin").read_bytes(), out / GGUF / GGUF_FILE, rng)
    shutil.rmtree(out / BERT, ignore_errors=True)
    shutil.copytree(shapes_dir / BERT, out / BERT)
    write_safetensors((shapes_dir / "safetensors-header.json").read_bytes(), out / BERT / "model.safetensors", rng)


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] not in ("shapes", "models"):
        sys.exit(__doc__)
    {"shapes": shapes, "models": models}[sys.argv[1]](Path(sys.argv[2]), Path(sys.argv[3]))
