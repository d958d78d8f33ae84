"""A deephardway client in Python, generated from proto/ with grpcio-tools at run time.

Usage: client.py PROTO_DIR HOST:PORT STEPS
Submits a diagnostic job, then watches it, printing each event as one JSON line.
This is what a user of another language does: generate from proto/, call the service.
"""

import importlib
import sys
import tempfile

from grpc_tools import protoc
import grpc
from google.protobuf import json_format


def generate(proto_dir: str, out_dir: str) -> None:
    files = [f"deephardway/v1/{name}.proto" for name in ("jobs", "models", "workers")]
    include = protoc.__file__.rsplit("/", 1)[0] + "/_proto"
    args = ["protoc", f"-I{proto_dir}", f"-I{include}", f"--python_out={out_dir}", f"--grpc_python_out={out_dir}"]
    if protoc.main(args + files) != 0:
        raise SystemExit("protoc failed")


def main() -> None:
    proto_dir, target, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
    out_dir = tempfile.mkdtemp()
    generate(proto_dir, out_dir)
    sys.path.insert(0, out_dir)
    jobs_pb2 = importlib.import_module("deephardway.v1.jobs_pb2")
    jobs_pb2_grpc = importlib.import_module("deephardway.v1.jobs_pb2_grpc")

    with grpc.insecure_channel(target) as channel:
        stub = jobs_pb2_grpc.JobsStub(channel)
        request = jobs_pb2.SubmitRequest(diagnostic=jobs_pb2.DiagnosticInput(steps=steps, step_ms=10, echo="from python"))
        job = stub.Submit(request).job
        for event in stub.Watch(jobs_pb2.WatchRequest(job_id=job.id, after_seq=0)):
            print(json_format.MessageToJson(event, indent=None), flush=True)


if __name__ == "__main__":
    main()
