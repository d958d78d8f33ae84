"""A deephardway client in Python, generated from proto/ with grpcio-tools at run time.

Usage: client.py PROTO_DIR HOST:PORT STEPS [--ca-cert FILE]
With --ca-cert, it connects over TLS and checks the service's certificate against that CA.
First sends a job with a bad field and prints the error as one JSON line (code, message,
and the type of each detail of its google.rpc.Status); then creates a diagnostic job,
watches it, and prints each event as one JSON line.
This is what a user of another language does: generate from proto/, call the service.
"""

import argparse
import importlib
import json
import sys
import tempfile

from grpc_tools import protoc
import grpc
from google.protobuf import json_format

# Every file of the API, and what it imports beyond protoc's own well-known types.
PROTOS = [
    "deephardway/v1/inputs.proto",
    "deephardway/v1/jobs.proto",
    "deephardway/v1/models.proto",
    "deephardway/v1/datasets.proto",
    "deephardway/worker/v1/worker.proto",
    "google/rpc/status.proto",
]


def generate(proto_dir: str, out_dir: str) -> None:
    include = protoc.__file__.rsplit("/", 1)[0] + "/_proto"
    args = ["protoc", f"-I{proto_dir}", f"-I{include}", f"--python_out={out_dir}", f"--grpc_python_out={out_dir}"]
    if protoc.main(args + PROTOS) != 0:
        raise SystemExit("protoc failed")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("proto_dir")
    parser.add_argument("target")
    parser.add_argument("steps", type=int)
    parser.add_argument("--ca-cert", help="connect over TLS, trusting this CA (PEM)")
    parser.add_argument("--key", help="the API key to call with (authorization: Bearer KEY)")
    args = parser.parse_args()
    proto_dir, target, steps = args.proto_dir, args.target, args.steps
    out_dir = tempfile.mkdtemp()
    generate(proto_dir, out_dir)
    sys.path.insert(0, out_dir)
    inputs_pb2 = importlib.import_module("deephardway.v1.inputs_pb2")
    jobs_pb2 = importlib.import_module("deephardway.v1.jobs_pb2")
    jobs_pb2_grpc = importlib.import_module("deephardway.v1.jobs_pb2_grpc")
    status_pb2 = importlib.import_module("google.rpc.status_pb2")

    if args.ca_cert:
        with open(args.ca_cert, "rb") as ca:
            channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=ca.read()))
    else:
        channel = grpc.insecure_channel(target)
    # The API key travels as call metadata, as in every gRPC library.
    metadata = (("authorization", f"Bearer {args.key}"),) if args.key else ()
    with channel:
        stub = jobs_pb2_grpc.JobServiceStub(channel)

        # A bad field: INVALID_ARGUMENT, with a google.rpc.Status in the trailers.
        bad = jobs_pb2.JobSpec(diagnostic=inputs_pb2.DiagnosticInput(steps=0))
        try:
            stub.CreateJob(jobs_pb2.CreateJobRequest(spec=bad), metadata=metadata)
            raise SystemExit("a job with 0 steps was accepted")
        except grpc.RpcError as error:
            details = dict(error.trailing_metadata() or ()).get("grpc-status-details-bin")
            status = status_pb2.Status.FromString(details) if details else status_pb2.Status()
            print(
                json.dumps(
                    {
                        "error": {
                            "code": error.code().name,
                            "message": error.details(),
                            "details": [d.type_url for d in status.details],
                        }
                    }
                ),
                flush=True,
            )

        spec = jobs_pb2.JobSpec(diagnostic=inputs_pb2.DiagnosticInput(steps=steps, step_ms=10, echo="from python"))
        spec.timeout.FromSeconds(60)
        job = stub.CreateJob(jobs_pb2.CreateJobRequest(spec=spec, request_id="python-1"), metadata=metadata).job
        for response in stub.WatchJob(jobs_pb2.WatchJobRequest(job_id=job.id, after_seq=0), metadata=metadata):
            if not response.HasField("event"):
                continue  # a queue status (the job's place in line), not an event
            print(json_format.MessageToJson(response.event, indent=None), flush=True)
        final = stub.GetJob(jobs_pb2.GetJobRequest(job_id=job.id), metadata=metadata).job
        print(json_format.MessageToJson(final, indent=None), flush=True)


if __name__ == "__main__":
    main()
