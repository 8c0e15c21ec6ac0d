#!/usr/bin/env python3
"""Streams one chat request from ember-worker, printing the text as it arrives, then the usage.

Needs grpcio and grpcio-tools (tools/requirements.txt pins them). From the repository root:

    python -m grpc_tools.protoc -Iproto --python_out=. --grpc_python_out=. proto/ember/v1/inference.proto
    PYTHONPATH=. python docs/examples/generate_client.py --address localhost:50051 --prompt "Tell me a story."

The first command writes the stubs to ember/v1/inference_pb2.py and inference_pb2_grpc.py under the
current directory. The API is documented in docs/api.md.
"""

import argparse
import sys

import grpc

from ember.v1 import inference_pb2 as pb
from ember.v1 import inference_pb2_grpc as pb_grpc


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", default="localhost:50051", help="the worker's host:port")
    parser.add_argument("--prompt", default="Tell me a story.", help="the user's message")
    parser.add_argument("--max-tokens", type=int, default=64, help="tokens to generate at most")
    parser.add_argument("--timeout", type=float, default=900, help="the call's deadline in seconds")
    args = parser.parse_args()

    request = pb.GenerateRequest(
        chat=pb.ChatMessages(messages=[
            pb.ChatMessage(role="system", content="You are a helpful assistant."),
            pb.ChatMessage(role="user", content=args.prompt),
        ]),
        sampling=pb.SamplingParams(temperature=0.7, top_p=0.9, seed=42),
        stopping=pb.StoppingCriteria(max_tokens=args.max_tokens),
    )
    with grpc.insecure_channel(args.address) as channel:
        stub = pb_grpc.InferenceStub(channel)
        try:
            # wait_for_ready: while the worker is not reachable yet, wait (up to the deadline)
            # instead of failing at once with UNAVAILABLE.
            for response in stub.Generate(request, timeout=args.timeout, wait_for_ready=True):
                print(response.text, end="", flush=True)
                if response.finish_reason != pb.FINISH_REASON_UNSPECIFIED:  # the last response
                    u = response.usage
                    print(f"\n[{pb.FinishReason.Name(response.finish_reason)}] {response.request_id}: "
                          f"{u.prompt_tokens} prompt + {u.completion_tokens} generated tokens; "
                          f"first token after {u.time_to_first_token_s:.3f} s, "
                          f"total {u.total_time_s:.3f} s, queued {u.queue_time_s:.3f} s")
        except grpc.RpcError as err:
            print(f"\nGenerate failed: {err.code().name}: {err.details()}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
