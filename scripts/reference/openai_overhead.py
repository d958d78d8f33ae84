"""What the OpenAI-compatible API costs over the gRPC API, in one process, one run.

Usage: openai_overhead.py PROTO_DIR HOST:PORT EMBED_MODEL GENERATE_MODEL JOBS CLIENTS

The same jobs both ways, alternating so that the machine's noise falls on both: one-text
embed jobs (`POST /v1/embeddings` through OpenAI's own client, against `JobService.RunJob`
through a client generated from proto/), and 8-token greedy completions. Prints jobs/s
and latency percentiles for each, and the ratio HTTP / gRPC. The gRPC side is the baseline:
both run the same job through the same queue and worker; the difference is the HTTP
layer (JSON, the SSE-less whole answer, OpenAI's client) against gRPC's.
"""

import importlib
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
from grpc_tools import protoc
from openai import OpenAI

proto_dir, target, embed_model, generate_model = sys.argv[1:5]
jobs, clients = int(sys.argv[5]), int(sys.argv[6])

out_dir = tempfile.mkdtemp()
include = protoc.__file__.rsplit("/", 1)[0] + "/_proto"
protos = ["deephardway/v1/inputs.proto", "deephardway/v1/jobs.proto", "google/rpc/status.proto"]
if protoc.main(["protoc", f"-I{proto_dir}", f"-I{include}", f"--python_out={out_dir}", f"--grpc_python_out={out_dir}"] + protos):
    raise SystemExit("protoc failed")
sys.path.insert(0, out_dir)
inputs_pb2 = importlib.import_module("deephardway.v1.inputs_pb2")
jobs_pb2 = importlib.import_module("deephardway.v1.jobs_pb2")
jobs_pb2_grpc = importlib.import_module("deephardway.v1.jobs_pb2_grpc")

openai_client = OpenAI(base_url=f"http://{target}/v1", api_key="unused", max_retries=0)
stub = jobs_pb2_grpc.JobServiceStub(grpc.insecure_channel(target))


def run_grpc(spec):
    for message in stub.RunJob(jobs_pb2.RunJobRequest(spec=spec)):
        if message.HasField("event") and message.event.WhichOneof("event") in ("result", "failed", "cancelled"):
            assert message.event.WhichOneof("event") == "result", message
            return


def grpc_embed(i):
    run_grpc(jobs_pb2.JobSpec(model=embed_model, embed=inputs_pb2.EmbedInput(texts=[f"sentence number {i}"])))


def http_embed(i):
    openai_client.embeddings.create(model=embed_model, input=f"sentence number {i}", encoding_format="float")


def grpc_generate(i):
    generate = inputs_pb2.GenerateInput(prompt=f"Item {i}:", max_tokens=8, temperature=0)
    run_grpc(jobs_pb2.JobSpec(model=generate_model, generate=generate))


def http_generate(i):
    openai_client.completions.create(model=generate_model, prompt=f"Item {i}:", max_tokens=8, temperature=0)


def measure(call, count):
    latencies = []

    def timed(i):
        started = time.perf_counter()
        call(i)
        latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(timed, range(count)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    return count / elapsed, statistics.median(latencies), latencies[int(0.99 * (len(latencies) - 1))]


for name, grpc_call, http_call, count in [
    ("embed, 1 text", grpc_embed, http_embed, jobs),
    ("generate, 8 tokens", grpc_generate, http_generate, max(jobs // 4, 8)),
]:
    grpc_call(0), http_call(0)  # warm both paths
    rounds = {"grpc": [], "http": []}
    for _ in range(3):  # alternating rounds: the noise falls on both
        rounds["grpc"].append(measure(grpc_call, count))
        rounds["http"].append(measure(http_call, count))
    best = {k: max(v, key=lambda r: r[0]) for k, v in rounds.items()}
    for side, label in [("grpc", "gRPC RunJob (baseline)"), ("http", "OpenAI API over HTTP")]:
        rate, p50, p99 = best[side]
        print(f"{name:20} {label:24} {rate:8.1f} jobs/s  p50 {p50 * 1000:7.1f} ms  p99 {p99 * 1000:7.1f} ms")
    print(f"{name:20} ratio HTTP / gRPC: throughput {best['http'][0] / best['grpc'][0]:.2f}x, "
          f"p50 latency {best['http'][1] / best['grpc'][1]:.2f}x")
