#!/usr/bin/env python3
"""The GPU check: the same models and jobs on a GPU and on the CPU, compared.

Run by scripts/gpu-check/run on the GPU machine (see that script). Starts two
`deephardway up` processes, one per device, each serving the random-weight stand-ins
that make_models.py wrote, and checks through the public APIs that the GPU computes
what the CPU does:

- embed: 16 texts through /v1/embeddings; every vector's cosine to the CPU's >= 0.999;
- generate: 4 prompts, greedy, 16 tokens, through /v1/completions; the texts are equal
  on at least 3 of the 4 (random weights make near-ties likelier than a trained model's;
  every prompt's agreement is printed);
- train: the digits CNN (60 epochs, AdamW, seed 1) through `deephardway submit train`;
  validation accuracy >= 0.95 on both and within 0.03 of each other;
- classify: the test digits through `deephardway submit classify` with each device's
  trained model; >= 0.95 of them right on the GPU.

Prints one line per check and exits non-zero if any failed. Standard library only.
"""

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Embeddings map sentences to vectors.",
    "A GPU and a CPU should agree on this.",
    "deephardway streams job progress over gRPC.",
    "Paris is the capital of France.",
    "Training a classifier on handwritten digits.",
    "short",
    "A somewhat longer sentence that goes on for a while, so that padding and masks matter "
    "when it is batched with the short ones around it.",
] * 2
PROMPTS = ["Once upon a time", "The capital of France is", "def fibonacci(n):", "In 1905, Albert Einstein"]
TRAIN = [
    "--architecture", "cnn", "--epochs", "60", "--batch-size", "32", "--optimizer", "adamw",
    "--learning-rate", "0.003", "--schedule", "cosine", "--augment-shift", "1", "--seed", "1",
]


class Up:
    """`deephardway up` on a port of its own choosing, on one device."""

    def __init__(self, binary, device, models, work):
        self.device = device
        data = Path(tempfile.mkdtemp(prefix=f"up-{device.replace(':', '')}-", dir=work))
        self.log = open(data / "up.log", "w+")
        command = [
            binary, "up", "--listen", "127.0.0.1:0", "--device", device, "--slots", "4",
            "--data-dir", str(data), "--artifact-cache", str(data / "cache"), "--models-dir", str(data / "none"),
            "--model", f"smollm2-135m-instruct={models}/smollm2-135m-instruct",
            "--model", f"all-minilm-l6-v2={models}/all-minilm-l6-v2",
        ]
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT)
        self.url = None
        deadline = time.time() + 300
        while time.time() < deadline and self.process.poll() is None:
            self.log.seek(0)
            found = re.search(r"deephardway is up on (http://\S+)", self.log.read())
            if found:
                self.url = found.group(1)
                break
            time.sleep(0.2)
        if not self.url:
            self.fail("did not start")
        while time.time() < deadline:
            ids = {m["id"] for m in self.get("/v1/models")["data"]}
            if {"smollm2-135m-instruct", "all-minilm-l6-v2"} <= ids:
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.5)
        self.fail("did not serve both models")

    def fail(self, why):
        self.log.seek(0)
        sys.exit(f"deephardway up --device {self.device} {why}:\n{self.log.read()[-4000:]}")

    def get(self, path):
        with urllib.request.urlopen(self.url + path, timeout=60) as response:
            return json.load(response)

    def post(self, path, body):
        request = urllib.request.Request(
            self.url + path, json.dumps(body).encode(), {"content-type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=600) as response:
            return json.load(response)

    def cli(self, binary, *args):
        done = subprocess.run([binary, *args, "--server", self.url], capture_output=True, text=True, timeout=1800)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} on {self.device}: {done.stderr[-2000:]}")
        return done.stdout

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()


def cosine(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def check_embed(gpu, cpu):
    body = {"model": "all-minilm-l6-v2", "input": TEXTS}
    ours, theirs = gpu.post("/v1/embeddings", body)["data"], cpu.post("/v1/embeddings", body)["data"]
    worst = min(cosine(a["embedding"], b["embedding"]) for a, b in zip(ours, theirs))
    return worst >= 0.999, f"{len(TEXTS)} texts, least cosine to the CPU's {worst:.6f} (bar 0.999)"


def check_generate(gpu, cpu):
    agree, lines = 0, []
    for prompt in PROMPTS:
        body = {"model": "smollm2-135m-instruct", "prompt": prompt, "max_tokens": 16, "temperature": 0}
        ours, theirs = (up.post("/v1/completions", body)["choices"][0]["text"] for up in (gpu, cpu))
        same = os.path.commonprefix([ours, theirs])
        agree += ours == theirs
        lines.append(f"    {prompt!r}: {'equal' if ours == theirs else f'{len(same)} of {len(theirs)} chars equal'}")
    return agree >= 3, f"{agree} of {len(PROMPTS)} greedy 16-token texts equal (bar 3)\n" + "\n".join(lines)


def trained(output):
    found = re.search(r"validation accuracy ([0-9.]+) on (\d+) images, ([0-9.]+) ms per epoch", output)
    if not found:
        raise RuntimeError(f"no training result in: {output[-500:]}")
    return float(found.group(1)), float(found.group(3))


def check_train(binary, gpu, cpu, digits):
    results = []
    for up in (gpu, cpu):
        up.cli(binary, "datasets", "upload", "digits", str(digits))
        results.append(trained(up.cli(binary, "submit", "--watch", "train", "digits", *TRAIN)))
    (g_acc, g_ms), (c_acc, c_ms) = results
    ok = g_acc >= 0.95 and c_acc >= 0.95 and abs(g_acc - c_acc) <= 0.03
    return ok, (
        f"digits CNN, 60 epochs: validation accuracy {g_acc:.3f} on {gpu.device}, {c_acc:.3f} on cpu "
        f"(bars 0.95 each, 0.03 apart); {g_ms:.1f} vs {c_ms:.1f} ms per epoch"
    )


def check_classify(binary, gpu, digits):
    images = sorted((digits / "test").glob("*/*.png"))
    right = 0
    for start in range(0, len(images), 32):
        chunk = images[start : start + 32]
        output = gpu.cli(binary, "submit", "--watch", "--model", "digits", "classify", *map(str, chunk))
        labels = dict(re.findall(r"^(\d+): (\S+) \(", output, re.M))
        right += sum(1 for i, image in enumerate(chunk) if labels.get(str(i)) == image.parent.name)
    share = right / len(images)
    return share >= 0.95, f"{right} of {len(images)} test digits right on {gpu.device} ({share:.3f}; bar 0.95)"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--binary", required=True)
    parser.add_argument("--models", required=True, type=Path)
    parser.add_argument("--digits", type=Path)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--work", default=tempfile.gettempdir())
    args = parser.parse_args()
    gpu = Up(args.binary, args.device, args.models, args.work)
    cpu = Up(args.binary, "cpu", args.models, args.work)
    checks = [("embed", lambda: check_embed(gpu, cpu)), ("generate", lambda: check_generate(gpu, cpu))]
    if args.digits:
        checks.append(("train", lambda: check_train(args.binary, gpu, cpu, args.digits)))
        checks.append(("classify", lambda: check_classify(args.binary, gpu, args.digits)))
    failed = 0
    try:
        for name, check in checks:
            try:
                ok, detail = check()
            except Exception as e:  # a check that cannot run has failed; say why, go on
                ok, detail = False, f"error: {e}"
            failed += not ok
            print(f"{'PASS' if ok else 'FAIL'} {name}: {detail}", flush=True)
    finally:
        gpu.stop()
        cpu.stop()
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
