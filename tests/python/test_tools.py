"""Tests for the Python tools the C++ integration tests and the benchmark rely on.

tools/objstore.py (rclone serve s3), tools/fault_proxy.py, tools/make_test_model.py, tools/bench-load,
tools/prepare_smollm2.py (its weight transforms; no model download).
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import botocore.exceptions
import numpy as np
import pytest
import safetensors
import safetensors.numpy

REPO = Path(__file__).resolve().parents[2]
TOOLS = REPO / "tools"
sys.path.insert(0, str(TOOLS))

from fault_proxy import FaultProxy, Faults  # noqa: E402
from make_test_model import (DTYPE_SIZES, read_safetensors_header, write_model,  # noqa: E402
                             write_safetensors, write_single_object)
from objstore import LocalS3, s3_client  # noqa: E402
from prepare_smollm2 import f32_to_bf16_bytes, gguf_to_hf_qk, hf_to_gguf_qk  # noqa: E402

BUCKET = "bkt"
OBJECT_SIZE = 1 << 20


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    with LocalS3(tmp_path_factory.mktemp("s3root"), etag_hash=None) as s3:
        s3.make_bucket(BUCKET)
        yield s3


@pytest.fixture(scope="module")
def payload(store):
    data = os.urandom(OBJECT_SIZE)
    store.put(BUCKET, "obj", data)
    return data


def no_retry_client(store, endpoint, **kwargs):
    return store.client(endpoint, retries={"total_max_attempts": 1}, **kwargs)


# --- a curl-like raw HTTP client: signed with SigV4, reads until the connection says otherwise ---

def signed_headers(store, endpoint: str, path: str, extra: dict) -> dict:
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    request = AWSRequest(method="GET", url=endpoint + path, headers=dict(extra))
    S3SigV4Auth(Credentials(store.access_key, store.secret_key), "s3", store.region).add_auth(request)
    headers = dict(request.headers.items())
    headers["Host"] = endpoint.removeprefix("http://")
    return headers


def open_socket(endpoint: str, timeout: float = 10) -> socket.socket:
    host, port = endpoint.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=timeout)


def raw_get(sock: socket.socket, store, endpoint: str, path: str, byte_range: str):
    """Sends one signed ranged GET; returns (status, headers, body bytes, error or None)."""
    headers = signed_headers(store, endpoint, path, {"Range": byte_range})
    head = f"GET {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    sock.sendall(head.encode())
    buf = b""
    try:
        while b"\r\n\r\n" not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                return None, {}, b"", EOFError("closed before the response head")
            buf += chunk
    except OSError as e:
        return None, {}, b"", e
    raw_head, body = buf.split(b"\r\n\r\n", 1)
    lines = raw_head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    response_headers = {k.strip().lower(): v.strip() for k, v in (l.split(":", 1) for l in lines[1:])}
    length = int(response_headers.get("content-length", -1))
    error = None
    try:
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                error = EOFError("closed inside the body")
                break
            body += chunk
    except OSError as e:
        error = e
    return status, response_headers, body, error


# --- objstore ------------------------------------------------------------------------------------

def test_objstore_serves_with_sigv4_and_rejects_wrong_secret(store, payload):
    assert store.client().get_object(Bucket=BUCKET, Key="obj")["Body"].read() == payload
    wrong = s3_client(store.endpoint, store.access_key, "not-the-secret",
                      retries={"total_max_attempts": 1})
    with pytest.raises(botocore.exceptions.ClientError) as info:
        wrong.get_object(Bucket=BUCKET, Key="obj")
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert info.value.response["Error"]["Code"] == "SignatureDoesNotMatch"


def test_objstore_env_names_the_server(store):
    env = store.env()
    assert env["AWS_ENDPOINT_URL"] == store.endpoint
    assert env["AWS_SECRET_ACCESS_KEY"] == store.secret_key
    assert env["AWS_REGION"] == "us-east-1"


def test_objstore_ranged_get_answers_200_with_content_range(store, payload):
    # rclone answers ranged GETs with 200 (not 206) plus a correct Content-Range and body.
    with open_socket(store.endpoint) as sock:
        status, headers, body, error = raw_get(sock, store, store.endpoint, f"/{BUCKET}/obj",
                                               "bytes=100-199")
    assert error is None and status in (200, 206)
    assert headers["content-range"] == f"bytes 100-199/{OBJECT_SIZE}"
    assert body == payload[100:200]


def test_objstore_cli_uploads_prints_json_and_stops_when_stdin_closes(tmp_path):
    upload = tmp_path / "up"
    (upload / "sub").mkdir(parents=True)
    (upload / "sub" / "a.bin").write_bytes(b"abc" * 1000)
    proc = subprocess.Popen(
        [sys.executable, str(TOOLS / "objstore.py"), "serve", "--root", str(tmp_path / "root"),
         "--upload", str(upload), "models/m1"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        info = json.loads(proc.stdout.readline())
        assert set(info) >= {"endpoint", "access_key", "secret_key", "region", "pid"}
        client = s3_client(info["endpoint"], info["access_key"], info["secret_key"], info["region"])
        assert client.get_object(Bucket="models", Key="m1/sub/a.bin")["Body"].read() == b"abc" * 1000
        proc.stdin.close()
        assert proc.wait(timeout=15) == 0
        stderr = proc.stderr.read()
        assert info["secret_key"] not in stderr
        with pytest.raises(OSError):
            open_socket(info["endpoint"], timeout=2).close()
    finally:
        proc.kill()
        proc.wait()


# --- fault proxy -------------------------------------------------------------------------------

def test_proxy_passes_requests_through_unchanged(store, payload):
    with FaultProxy(store.endpoint) as proxy:
        client = no_retry_client(store, proxy.endpoint)
        got = client.get_object(Bucket=BUCKET, Key="obj", Range="bytes=1000-300999")["Body"].read()
        assert got == payload[1000:301000]
        assert client.get_object(Bucket=BUCKET, Key="obj")["Body"].read() == payload
        assert client.head_object(Bucket=BUCKET, Key="obj")["ContentLength"] == OBJECT_SIZE
        client.put_object(Bucket=BUCKET, Key="via-proxy", Body=b"x" * 5000)
        assert store.client().get_object(Bucket=BUCKET, Key="via-proxy")["Body"].read() == b"x" * 5000
        # Keep-alive: the raw client sends two requests on one connection.
        with open_socket(proxy.endpoint) as sock:
            for first in (0, 5000):
                status, _, body, error = raw_get(sock, store, proxy.endpoint, f"/{BUCKET}/obj",
                                                 f"bytes={first}-{first + 99}")
                assert error is None and body == payload[first:first + 100]
    assert proxy.stats["ranged_gets"] == 3
    assert proxy.stats["faults"] == 0


def test_proxy_resets_connection_mid_body(store, payload):
    with FaultProxy(store.endpoint, Faults(reset_after_bytes=12345, fault_requests=2)) as proxy:
        for _ in range(2):
            with open_socket(proxy.endpoint) as sock:
                status, _, body, error = raw_get(sock, store, proxy.endpoint, f"/{BUCKET}/obj",
                                                 "bytes=0-99999")
            assert status in (200, 206)
            assert isinstance(error, ConnectionResetError)
            assert body == payload[:12345]
        with open_socket(proxy.endpoint) as sock:
            _, _, body, error = raw_get(sock, store, proxy.endpoint, f"/{BUCKET}/obj", "bytes=0-99999")
        assert error is None and body == payload[:100000]
    assert proxy.stats["faults"] == 2


def test_proxy_fault_skip_lets_first_requests_through(store, payload):
    with FaultProxy(store.endpoint, Faults(reset_after_bytes=10, fault_skip=1)) as proxy:
        client = no_retry_client(store, proxy.endpoint)
        assert client.get_object(Bucket=BUCKET, Key="obj", Range="bytes=0-999")["Body"].read() == payload[:1000]
        with pytest.raises(botocore.exceptions.ResponseStreamingError):
            client.get_object(Bucket=BUCKET, Key="obj", Range="bytes=0-999")["Body"].read()


def test_proxy_slowdown_then_success_on_same_connection(store, payload):
    with FaultProxy(store.endpoint, Faults(slowdown=2)) as proxy:
        with open_socket(proxy.endpoint) as sock:
            for _ in range(2):
                status, headers, body, error = raw_get(sock, store, proxy.endpoint, f"/{BUCKET}/obj",
                                                       "bytes=0-9")
                assert error is None and status == 503
                assert b"<Code>SlowDown</Code>" in body
                assert int(headers["content-length"]) == len(body)
            status, _, body, error = raw_get(sock, store, proxy.endpoint, f"/{BUCKET}/obj", "bytes=0-9")
            assert error is None and body == payload[:10]
        # Requests without a Range header are not counted and never faulted.
        assert no_retry_client(store, proxy.endpoint).head_object(Bucket=BUCKET, Key="obj")
    assert proxy.stats["faults"] == 2


@pytest.mark.parametrize("status,code", [(500, "InternalError"), (503, "ServiceUnavailable"),
                                         (403, "AccessDenied"), (404, "NoSuchKey"),
                                         (429, "TooManyRequests")])
def test_proxy_injects_status_with_s3_error(store, payload, status, code):
    with FaultProxy(store.endpoint, Faults(status=status)) as proxy:
        client = no_retry_client(store, proxy.endpoint)
        with pytest.raises(botocore.exceptions.ClientError) as info:
            client.get_object(Bucket=BUCKET, Key="obj", Range="bytes=0-9")
        assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == status
        assert info.value.response["Error"]["Code"] == code
        assert client.get_object(Bucket=BUCKET, Key="obj", Range="bytes=0-9")["Body"].read() == payload[:10]


def test_proxy_stalls_mid_body_then_closes(store, payload):
    with FaultProxy(store.endpoint, Faults(stall_after_bytes=100, stall_seconds=1.0)) as proxy:
        with open_socket(proxy.endpoint, timeout=0.4) as sock:
            start = time.monotonic()
            status, _, body, error = raw_get(sock, store, proxy.endpoint, f"/{BUCKET}/obj",
                                             "bytes=0-9999")
            assert isinstance(error, TimeoutError) and body == payload[:100]
            sock.settimeout(5)
            assert sock.recv(100) == b""  # then the proxy closes the connection
            assert 0.9 < time.monotonic() - start < 4


def test_proxy_swaps_object_on_nth_ranged_get(store, tmp_path):
    target = store.root_dir / BUCKET / "swapped"
    target.write_bytes(b"A" * 1000)  # written behind rclone's back: LocalS3 uses --dir-cache-time 0s
    replacement = store.root_dir / BUCKET / ".replacement"
    replacement.write_bytes(b"B" * 2000)
    faults = Faults(swap_after_requests=2, swap_path=str(target), swap_with=str(replacement))
    with FaultProxy(store.endpoint, faults) as proxy:
        client = no_retry_client(store, proxy.endpoint)
        first = client.get_object(Bucket=BUCKET, Key="swapped", Range="bytes=0-99")
        second = client.get_object(Bucket=BUCKET, Key="swapped", Range="bytes=0-99")
        assert first["Body"].read() == b"A" * 100
        assert second["Body"].read() == b"B" * 100
        assert second["ContentRange"] == "bytes 0-99/2000"
    assert proxy.stats["swaps"] == 1 and not replacement.exists()


def test_proxy_cli_prints_endpoint_and_stats_on_sigterm(store, payload):
    proc = subprocess.Popen(
        [sys.executable, str(TOOLS / "fault_proxy.py"), "--upstream", store.endpoint, "--status", "500"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        info = json.loads(proc.stdout.readline())
        assert info["pid"] == proc.pid
        with pytest.raises(botocore.exceptions.ClientError):
            no_retry_client(store, info["endpoint"]).get_object(Bucket=BUCKET, Key="obj", Range="bytes=0-9")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        stats = json.loads(proc.stderr.read().split("stats ", 1)[1])
        assert stats["faults"] == 1 and stats["ranged_gets"] == 1
    finally:
        proc.kill()
        proc.wait()


# --- make_test_model -------------------------------------------------------------------------------

def test_write_safetensors_roundtrips_with_reference_reader(tmp_path):
    data = np.arange(12, dtype=np.float32)
    path = tmp_path / "t.safetensors"
    write_safetensors(path, {"odd": ("U8", [3], b"\x01\x02\x03"), "x": ("F32", [3, 4], data.tobytes())},
                      metadata={"format": "pt"})
    loaded = safetensors.numpy.load_file(str(path))
    assert loaded["odd"].tolist() == [1, 2, 3]
    np.testing.assert_array_equal(loaded["x"], data.reshape(3, 4))
    with pytest.raises(ValueError):
        write_safetensors(path, {"bad": ("F32", [2], b"123")})


def test_model_single_covers_every_dtype(tmp_path):
    (path,) = write_model(tmp_path, dtypes=list(DTYPE_SIZES))
    parsed = {name: t for name, t in safetensors.deserialize(path.read_bytes())}
    assert {t["dtype"] for t in parsed.values()} >= set(DTYPE_SIZES)
    assert set(parsed["test.dtype.BOOL"]["data"]) <= {0, 1}
    header, data_start = read_safetensors_header(path)
    assert data_start % 8 == 0
    assert all(v["data_offsets"][0] % 8 == 0 for k, v in header.items() if k != "__metadata__")
    config = json.loads((tmp_path / "config.json").read_text())
    assert parsed["model.layers.0.mlp.up_proj.weight"]["shape"] == [config["intermediate_size"],
                                                                    config["hidden_size"]]
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        json.loads((tmp_path / name).read_text())


def test_model_sharded_misaligned_index_matches_shards(tmp_path):
    files = write_model(tmp_path, layout="sharded", shards=3, dtypes=["U8", "I8", "BOOL", "F16", "F64"],
                        misaligned=True, weight_dtype="F16")
    assert [f.name for f in files] == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    total = 0
    unaligned = 0
    for f in files:
        tensors = safetensors.numpy.load_file(str(f))
        assert {n for n, shard in index["weight_map"].items() if shard == f.name} == set(tensors)
        total += sum(t.nbytes for t in tensors.values())
        header, data_start = read_safetensors_header(f)
        unaligned += sum((data_start + v["data_offsets"][0]) % 2
                         for k, v in header.items() if k != "__metadata__")
    assert index["metadata"]["total_size"] == total
    assert unaligned > 0


def test_model_total_mb_scales_size(tmp_path):
    files = write_model(tmp_path, total_mb=8)
    size = sum(f.stat().st_size for f in files)
    assert 7 * 2**20 < size < 9 * 2**20


def test_single_object_is_one_u8_tensor(tmp_path):
    path = tmp_path / "model.safetensors"
    size = write_single_object(path, 3)
    header, data_start = read_safetensors_header(path)
    assert header["data"] == {"dtype": "U8", "shape": [3 << 20], "data_offsets": [0, 3 << 20]}
    assert size == path.stat().st_size == data_start + (3 << 20)


def test_make_test_model_cli(tmp_path):
    subprocess.run([sys.executable, str(TOOLS / "make_test_model.py"), str(tmp_path), "--layout",
                    "sharded", "--shards", "2", "--dtypes", "BF16,U8", "--seed", "3"], check=True)
    assert (tmp_path / "model-00002-of-00002.safetensors").exists()


# --- prepare_smollm2 ----------------------------------------------------------------------------

@pytest.mark.parametrize("n_head,head_dim,cols", [(9, 64, 576), (3, 64, 576), (2, 4, 1), (4, 8, 3)])
def test_qk_unpermute_inverts_llama_cpp_permutation(n_head, head_dim, cols):
    w = np.random.default_rng(n_head * cols).standard_normal((n_head * head_dim, cols), dtype=np.float32)
    gguf_order = hf_to_gguf_qk(w, n_head)
    assert not np.array_equal(gguf_order, w)
    np.testing.assert_array_equal(gguf_to_hf_qk(gguf_order, n_head), w)
    np.testing.assert_array_equal(hf_to_gguf_qk(gguf_to_hf_qk(w, n_head), n_head), w)
    # 1-D too (a bias vector): the permutation only moves rows.
    np.testing.assert_array_equal(gguf_to_hf_qk(hf_to_gguf_qk(w[:, 0], n_head), n_head), w[:, 0])


def test_qk_permutation_interleaves_head_halves():
    # Each head's halves [x0 x1 | y0 y1] (Hugging Face's rotate_half) become pairs x0 y0 x1 y1.
    rows = np.arange(8, dtype=np.float32).reshape(8, 1)
    assert hf_to_gguf_qk(rows, 2)[:, 0].tolist() == [0, 2, 1, 3, 4, 6, 5, 7]  # 2 heads of 4 rows
    assert gguf_to_hf_qk(rows, 2)[:, 0].tolist() == [0, 2, 1, 3, 4, 6, 5, 7]  # (its own inverse)
    assert hf_to_gguf_qk(rows, 1)[:, 0].tolist() == [0, 4, 1, 5, 2, 6, 3, 7]
    assert gguf_to_hf_qk(rows, 1)[:, 0].tolist() == [0, 2, 4, 6, 1, 3, 5, 7]


def test_bf16_conversion_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.standard_normal(4096, dtype=np.float32) * 10.0 ** rng.integers(-6, 6, 4096),
                             np.array([0.0, -0.0, 1.0, -2.5, np.inf, -np.inf, 3.4e38, -3.4e38, 1e-40,
                                       1.00390625, 1.01171875], dtype=np.float32)])
    expected = torch.from_numpy(values).to(torch.bfloat16).view(torch.int16).numpy().view("<u2")
    assert f32_to_bf16_bytes(values) == expected.tobytes()
    nan = np.frombuffer(f32_to_bf16_bytes(np.array([np.nan], dtype=np.float32)), dtype="<u2")
    assert torch.from_numpy(nan.view(np.int16).copy()).view(torch.bfloat16).isnan().all()


# --- bench-load --------------------------------------------------------------------------------

def test_bench_load_smoke(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [str(TOOLS / "bench-load"), "--size-mb", "4", "--runs", "1", "--warmup", "0", "--skip", "ember",
         "--skip", "gpu", "--work-dir", str(tmp_path / "work"), "--json-out", str(out)],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "boto3 download_fileobj" in proc.stdout
    report = json.loads(out.read_text())
    rows = {row["tool"]: row for row in report["groups"]["host"]}
    assert all(row["runs"] == 1 for row in rows.values()), rows


# --- coldstart-report ------------------------------------------------------------------------

COLDSTART = {"msg": "coldstart", "phases": [
    {"name": "listening", "start_s": 0.0, "end_s": 0.004},
    {"name": "weights", "start_s": 0.05, "end_s": 0.8},
    {"name": "headers", "start_s": 0.004, "end_s": 0.03},
    {"name": "first_request", "start_s": 0.2, "end_s": 1.0}],
    "serving_s": 0.85, "first_token_s": 1.0, "model": "s3://m/<x>", "backend": "cpu"}


def run_report(tmp_path, lines: list[str], *args: str):
    log = tmp_path / "worker.log"
    log.write_text("\n".join(lines) + "\n")
    return subprocess.run([sys.executable, str(TOOLS / "coldstart-report"), str(log), *args],
                          capture_output=True, text=True, cwd=tmp_path)


def test_coldstart_report_draws_every_phase_in_time_order(tmp_path):
    out = run_report(tmp_path, ['{"msg": "listening"}', "not json", json.dumps(COLDSTART)],
                     "--out", str(tmp_path / "t.svg"))
    assert out.returncode == 0, out.stderr
    text = out.stdout.splitlines()
    assert text[0] == "zero to first token: 1.000 s"
    # Phases in start-up order (headers before weights), whatever order the line had.
    names = [line.split("|")[0].strip() for line in text[1:5]]
    assert names == ["gRPC port open", "listing + headers", "weights stream", "first request"]
    svg = (tmp_path / "t.svg").read_text()
    assert svg.startswith("<svg") and svg.rstrip().endswith("</svg>")
    assert svg.count("<rect") == 1 + 4
    assert "s3://m/&lt;x&gt;" in svg  # escaped
    # The backend bar says which backend came up (never "CUDA context" on the CPU).
    with_backend = dict(COLDSTART, phases=COLDSTART["phases"] + [{"name": "backend", "start_s": 0.004, "end_s": 0.01}])
    out = run_report(tmp_path, [json.dumps(with_backend)])
    assert "backend (CPU)" in out.stdout and "CUDA" not in out.stdout
    assert "SERVING 0.850 s" in svg and "first token 1.000 s" in svg


def test_coldstart_report_says_what_is_missing(tmp_path):
    out = run_report(tmp_path, ['{"msg": "serving"}'])
    assert out.returncode != 0 and "no cold-start line" in out.stderr
    bad = dict(COLDSTART, phases=[{"name": "weights", "start_s": "x", "end_s": 1}])
    out = run_report(tmp_path, [json.dumps(bad)])
    assert out.returncode != 0 and "phase 'weights' has no numeric start_s/end_s" in out.stderr
