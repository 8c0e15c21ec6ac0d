#!/usr/bin/env python3
"""ember-worker as a child process, for the end-to-end tests, bench-serve and the demo.

`WorkerProcess` starts the binary, follows its JSON log on stderr (the "listening" line
gives the ports, "serving" says the model is ready), reads /metrics, and stops it with
SIGTERM (a drain). `stubs()` compiles proto/ember/v1/inference.proto with grpcio-tools
into a temporary directory once per process and returns the generated modules.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_BINARY = REPO / "build" / "worker" / "ember-worker"


@functools.cache
def stubs():
    """(inference_pb2, inference_pb2_grpc) generated from the repository's proto, or taken
    from $EMBER_PROTO_STUBS where they were generated ahead (a machine without grpcio-tools:
    tools/gpu-check carries them)."""
    if ready := os.environ.get("EMBER_PROTO_STUBS"):
        sys.path.insert(0, ready)
        from ember.v1 import inference_pb2, inference_pb2_grpc
        return inference_pb2, inference_pb2_grpc
    from grpc_tools import protoc
    out = Path(tempfile.mkdtemp(prefix="ember-stubs-"))
    proto_dir = REPO / "proto"
    rc = protoc.main(["protoc", f"-I{proto_dir}", f"--python_out={out}", f"--grpc_python_out={out}",
                      str(proto_dir / "ember" / "v1" / "inference.proto")])
    if rc != 0:
        raise RuntimeError("grpc_tools.protoc failed on proto/ember/v1/inference.proto")
    sys.path.insert(0, str(out))
    from ember.v1 import inference_pb2, inference_pb2_grpc
    return inference_pb2, inference_pb2_grpc


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text -> {'name{labels}': value} (comments dropped)."""
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


class WorkerProcess:
    """One ember-worker. args: extra command-line flags; env: added to os.environ."""

    def __init__(self, model: str, *, args: list[str] | tuple = (), env: dict[str, str] | None = None,
                 binary: str | os.PathLike | None = None, echo_log: bool = False):
        self.binary = str(binary or os.environ.get("EMBER_WORKER") or DEFAULT_BINARY)
        self.model, self.args, self.env, self.echo_log = model, list(args), dict(env or {}), echo_log
        self.logs: list[dict] = []
        self.proc: subprocess.Popen | None = None
        self.grpc_port = self.metrics_port = self.peer_port = None
        self._listening, self._serving, self._exited = threading.Event(), threading.Event(), threading.Event()
        self._lock = threading.Lock()

    # --- lifetime --------------------------------------------------------------------------

    def start(self, *, wait_serving: bool = True, timeout: float = 120.0) -> "WorkerProcess":
        argv = [self.binary, f"--model={self.model}", *self.args]
        if not any(a.startswith("--grpc_port") for a in self.args) and "EMBER_GRPC_PORT" not in self.env \
                and "PORT" not in self.env:
            argv.append("--grpc_port=0")
        if not any(a.startswith("--metrics_port") for a in self.args) and "EMBER_METRICS_PORT" not in self.env:
            argv.append("--metrics_port=0")
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, env={**os.environ, **self.env})
        threading.Thread(target=self._follow, daemon=True).start()
        if not self._listening.wait(timeout) or self.grpc_port is None:
            self.kill()
            raise RuntimeError(f"ember-worker did not start listening: {self.log_text()}")
        if wait_serving:
            self.wait_serving(timeout)
        return self

    def _follow(self) -> None:
        for raw in self.proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            if self.echo_log:
                print(line, file=sys.stderr, flush=True)
            try:
                entry = json.loads(line)
            except ValueError:
                entry = {"msg": line, "level": "raw"}
            with self._lock:
                self.logs.append(entry)
            if entry.get("msg") == "listening":
                self.grpc_port, self.metrics_port = entry["grpc_port"], entry["metrics_port"]
                self.peer_port = entry.get("peer_port")
                self._listening.set()
            elif entry.get("msg") == "serving":
                self._serving.set()
        self._listening.set()
        self._exited.set()

    def wait_serving(self, timeout: float = 120.0) -> None:
        if not self._serving.wait(timeout):
            raise RuntimeError(f"ember-worker did not turn SERVING within {timeout} s: {self.log_text()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        """Sends `sig` (a drain by default) and waits for the exit status."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise RuntimeError(f"ember-worker did not exit within {timeout} s after signal {sig}")
        self._exited.wait(5)
        return rc

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> "WorkerProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.kill() if exc[0] is not None else self.stop()

    # --- clients ---------------------------------------------------------------------------

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def channel(self):
        import grpc
        return grpc.insecure_channel(self.address)

    def stub(self, channel=None):
        return stubs()[1].InferenceStub(channel or self.channel())

    def metrics(self) -> dict[str, float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as r:
            return parse_metrics(r.read().decode())

    def wait_metric(self, name: str, predicate, timeout: float = 20.0) -> float:
        """Polls /metrics until predicate(value of `name`) holds; returns the value."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.metrics().get(name)
            if value is not None and predicate(value):
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"{name} = {value} after {timeout} s")
            time.sleep(0.05)

    def log_text(self, limit: int | None = 30) -> str:
        """The last `limit` log lines (all with None), as JSON lines."""
        with self._lock:
            entries = self.logs if limit is None else self.logs[-limit:]
            return "\n".join(json.dumps(e) for e in entries)

    def log_entries(self, msg: str) -> list[dict]:
        with self._lock:
            return [e for e in self.logs if e.get("msg") == msg]


# --- a request that arrives before the worker --------------------------------------------------

# Channel arguments for a client that dials a worker while it starts: gRPC's default
# reconnect backoff starts at 1 s and grows, which would hide when the worker really could
# answer; these retry every 50 to 200 ms.
FAST_RECONNECT = (("grpc.initial_reconnect_backoff_ms", 50), ("grpc.min_reconnect_backoff_ms", 50),
                  ("grpc.max_reconnect_backoff_ms", 200))


@dataclass
class ColdStartCall:
    """What generate_during_cold_start saw. The worker is stopped (drained)."""
    worker: WorkerProcess
    exit_code: int
    launch_to_first_token_s: float | None  # None when no token came
    last: object | None                    # the final GenerateResponse (finish reason, usage)
    error: Exception | None                # the call's grpc.RpcError, if it failed

    def coldstart(self) -> dict:
        """The worker's cold-start log record ({} when it wrote none)."""
        records = self.worker.log_entries("coldstart")
        return records[-1] if records else {}


def generate_during_cold_start(model: str, request, *, flags=(), env: dict | None = None, binary=None,
                               on_response=None, timeout: float = 600.0) -> ColdStartCall:
    """Scale from zero: sends `request` (a GenerateRequest, with wait-for-ready) to a port where
    nothing listens yet, then launches ember-worker there as an autoscaler would, and times
    the first token from the launch. on_response(response) sees every streamed response."""
    import grpc
    from objstore import free_port
    port = free_port()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=list(FAST_RECONNECT))
    stub = stubs()[1].InferenceStub(channel)
    first_token_at: list[float] = []
    last: list = []
    errors: list[Exception] = []
    sent = threading.Event()

    def client() -> None:
        sent.set()
        try:
            for response in stub.Generate(request, timeout=timeout, wait_for_ready=True):
                if response.token_ids and not first_token_at:
                    first_token_at.append(time.perf_counter())
                if on_response is not None:
                    on_response(response)
                if response.finish_reason:
                    last.append(response)
        except grpc.RpcError as e:
            errors.append(e)

    thread = threading.Thread(target=client, daemon=True)
    thread.start()
    sent.wait()
    time.sleep(0.2)  # the call is really waiting before the worker exists
    worker = WorkerProcess(model, args=[*flags, f"--grpc_port={port}"], env=env, binary=binary)
    launched = time.perf_counter()
    worker.start(wait_serving=False, timeout=timeout)
    thread.join(timeout)
    exit_code = worker.stop()
    channel.close()
    return ColdStartCall(worker, exit_code, first_token_at[0] - launched if first_token_at else None,
                         last[0] if last else None, errors[0] if errors else None)


# --- CLI -------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    import argparse
    parser = argparse.ArgumentParser(
        description="Start ember-worker, wait until it is SERVING, print one JSON line "
                    '({"grpc_port", "metrics_port", "pid"}) on stdout, and drain it (SIGTERM) when '
                    "stdin closes or this process gets SIGTERM. Flags after -- go to the worker.")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run one worker")
    serve.add_argument("--model", required=True, help="model source (s3://..., a path)")
    serve.add_argument("--binary", help="ember-worker (default: $EMBER_WORKER or build/worker/ember-worker)")
    serve.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for SERVING")
    serve.add_argument("flags", nargs="*", help="worker flags (after --)")
    args = parser.parse_args(argv)

    worker = WorkerProcess(args.model, args=args.flags, binary=args.binary, echo_log=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        worker.start(timeout=args.timeout)
        print(json.dumps({"grpc_port": worker.grpc_port, "metrics_port": worker.metrics_port,
                          "pid": worker.proc.pid}), flush=True)
        sys.stdin.read()  # until the parent closes our stdin
    finally:
        rc = worker.stop()
    return rc


if __name__ == "__main__":
    sys.exit(main())
