"""Peer fetch: a serving ember-worker hands its weight files to workers starting with the same
model, and what they load is always what the object store holds.

A real S3 server (rclone, with MD5 ETags so versions can be told apart) holds the model; a
warm ember-worker serves it with --peer_port; the starting side is ember-pull (byte-exact
copies with --out, to compare) or a second ember-worker. Faults come from the fault proxy in
front of the peer: a connection reset mid-range (a peer dying mid-transfer) and a flipped bit
(a peer sending corrupt bytes). Also: the token (403 without it), a peer holding another
version of the model (refused, the store used), and paths outside the model (404).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tools"))

from fault_proxy import FaultProxy, Faults  # noqa: E402
from make_hf_model import add_chat_tokenizer, make_model  # noqa: E402
from objstore import LocalS3, place  # noqa: E402
from worker_process import WorkerProcess  # noqa: E402

PULL = os.environ.get("EMBER_PULL", str(REPO / "build" / "loader" / "ember-pull"))
BUCKET = "models"
TOKEN = "peer-token-0123456789abcdef"
MIB = 1 << 20


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("model") / "m"
    make_model("llama-gqa", directory, dtype="float32")
    add_chat_tokenizer(directory, 1000)
    return directory


@pytest.fixture(scope="module")
def s3(model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("s3root")
    place(model_dir, root / BUCKET / "m")
    with LocalS3(root, etag_hash="MD5") as server:
        yield server


@pytest.fixture(scope="module")
def peer(s3):
    worker = WorkerProcess(f"s3://{BUCKET}/m", args=["--backend=cpu", "--kv_blocks=64", "--peer_port=0"],
                           env={**s3.env(), "EMBER_PEER_TOKEN": TOKEN})
    worker.start()
    yield worker
    worker.stop()


def weight_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.safetensors"))


def pull(s3, source: str, out: Path, peers: str, token: str = TOKEN, *flags: str) -> tuple[dict, str]:
    """ember-pull through the peers into `out`; returns its JSON result and its log."""
    run = subprocess.run(
        [PULL, source, f"--out={out}", "--target=host", "--json", "--chunk_size=1048576",
         "--staging_bytes=8388608", "--connections=4", f"--peers={peers}"],
        env={**os.environ, **s3.env(), "EMBER_PEER_TOKEN": token, "AWS_EC2_METADATA_DISABLED": "true"},
        capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert token not in run.stderr + run.stdout
    return json.loads(run.stdout), run.stderr


def assert_same_files(got: Path, want: Path) -> None:
    for f in weight_files(want):
        assert (got / f.name).read_bytes() == f.read_bytes(), f"{f.name} differs from the store's"


def get(url: str, token: str | None, range_: str | None = None) -> tuple[int, bytes, dict]:
    headers = {}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if range_:
        headers["Range"] = range_
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


def test_a_new_worker_loads_byte_exact_from_a_warm_peer(s3, peer, model_dir, tmp_path):
    result, log = pull(s3, f"s3://{BUCKET}/m", tmp_path / "out", f"127.0.0.1:{peer.peer_port}")
    assert_same_files(tmp_path / "out", model_dir)
    # Most weight bytes came from the peer, some from the store (striped), none twice.
    assert 0 < result["bytes_from_peers"] < result["bytes"], result
    assert "fetching from peers" in log


def test_a_worker_started_with_peers_serves_the_same_answers(s3, peer):
    second = WorkerProcess(f"s3://{BUCKET}/m", args=["--backend=cpu", "--kv_blocks=64",
                                                     f"--peers=127.0.0.1:{peer.peer_port}"],
                           env={**s3.env(), "EMBER_PEER_TOKEN": TOKEN})
    with second:
        metrics = second.metrics()
        assert metrics['ember_load_bytes{source="peer"}'] > 0, metrics
        from worker_process import stubs
        pb = stubs()[0]
        request = pb.GenerateRequest(token_ids=pb.TokenIds(ids=[1, 5, 9, 42]),
                                     stopping=pb.StoppingCriteria(max_tokens=8, ignore_eos=True))
        outputs = []
        for worker in (peer, second):
            ids = [i for r in worker.stub().Generate(request, timeout=60) for i in r.token_ids]
            outputs.append(ids)
        assert outputs[0] == outputs[1] and len(outputs[0]) == 8


def test_the_peer_wants_the_token(s3, peer, tmp_path):
    base = f"http://127.0.0.1:{peer.peer_port}"
    for token in (None, "wrong-token-0123456789", TOKEN[:-1]):
        status, body, _ = get(base + "/v1/peer/manifest", token)
        assert status == 403, (token, status)
        status, _, _ = get(base + "/v1/peer/objects/model.safetensors", token, "bytes=0-99")
        assert status == 403
    status, body, _ = get(base + "/v1/peer/manifest", TOKEN)
    assert status == 200 and json.loads(body)["source"] == f"s3://{BUCKET}/m/"
    # A starting worker with the wrong token loads from the store alone.
    result, log = pull(s3, f"s3://{BUCKET}/m", tmp_path / "out", f"127.0.0.1:{peer.peer_port}",
                       "wrong-token-0123456789")
    assert result["bytes_from_peers"] == 0
    assert "refused the token" in log


def test_only_the_models_weight_files_are_served(peer, model_dir):
    base = f"http://127.0.0.1:{peer.peer_port}/v1/peer/objects/"
    for name in ("config.json", "../../../../etc/passwd", "%2e%2e/config.json", "nosuch.safetensors", ""):
        status, _, _ = get(base + name, TOKEN)
        assert status == 404, name
    weights = weight_files(model_dir)[0]
    size = weights.stat().st_size
    status, body, headers = get(base + weights.name, TOKEN, f"bytes={size - 100}-{size + 50}")
    assert status == 206 and body == weights.read_bytes()[-100:]
    assert headers["Content-Range"] == f"bytes {size - 100}-{size - 1}/{size}"
    status, _, headers = get(base + weights.name, TOKEN, f"bytes={size}-")
    assert status == 416 and headers["Content-Range"] == f"bytes */{size}"


@pytest.mark.parametrize("fault,log_says", [
    # Cut after 100 kB on every range: each retry resumes where the last stopped, from the peer.
    (Faults(reset_after_bytes=100_000, fault_requests=1000), "retrying range"),
    # Gone after its first range: no retry gets a byte, so its ranges go to the store.
    (Faults(reset_after_bytes=0, fault_skip=1, fault_requests=1000), "peer failed"),
    (Faults(corrupt_at_byte=12345, fault_skip=1, fault_requests=1), "do not match the peer's checksum"),
])
def test_a_failing_or_lying_peer_never_reaches_the_load(s3, peer, model_dir, tmp_path, fault, log_says):
    with FaultProxy(f"http://127.0.0.1:{peer.peer_port}", fault) as proxy:
        result, log = pull(s3, f"s3://{BUCKET}/m", tmp_path / "out", f"127.0.0.1:{proxy.listen_port}")
        assert proxy.stats["faults"] >= 1
    assert_same_files(tmp_path / "out", model_dir)
    assert log_says in log, log[-3000:]
    if log_says != "retrying range":
        assert result["bytes_from_peers"] < result["bytes"] - 0.5 * MIB


def test_a_peer_killed_mid_transfer(s3, model_dir, tmp_path):
    """A real peer process, killed while its ranges flow (slowed to 2 MB/s by the proxy)."""
    import threading
    worker = WorkerProcess(f"s3://{BUCKET}/m", args=["--backend=cpu", "--kv_blocks=64", "--peer_port=0"],
                           env={**s3.env(), "EMBER_PEER_TOKEN": TOKEN}).start()
    try:
        with FaultProxy(f"http://127.0.0.1:{worker.peer_port}", bytes_per_second=2e6) as proxy:
            killer = threading.Timer(1.0, worker.kill)
            killer.start()
            result, log = pull(s3, f"s3://{BUCKET}/m", tmp_path / "out", f"127.0.0.1:{proxy.listen_port}")
            killer.join()
    finally:
        worker.kill()
    assert_same_files(tmp_path / "out", model_dir)
    assert "peer failed" in log, log[-3000:]
    assert 0 < result["bytes_from_peers"] < result["bytes"], result


def test_a_peer_holding_another_version_is_refused(s3, model_dir, tmp_path):
    # A second copy of the model, served by its own peer; then the store's copy changes.
    root = s3.root_dir / BUCKET / "v"
    shutil.copytree(model_dir, root)
    worker = WorkerProcess(f"s3://{BUCKET}/v", args=["--backend=cpu", "--kv_blocks=64", "--peer_port=0"],
                           env={**s3.env(), "EMBER_PEER_TOKEN": TOKEN})
    with worker:
        weights = weight_files(root)[0]
        data = bytearray(weights.read_bytes())
        data[-1] ^= 0xFF  # same size, other bytes: another ETag
        tmp = weights.with_suffix(".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, weights)
        result, log = pull(s3, f"s3://{BUCKET}/v", tmp_path / "out", f"127.0.0.1:{worker.peer_port}")
    assert result["bytes_from_peers"] == 0
    assert "another version" in log, log[-2000:]
    assert (tmp_path / "out" / weights.name).read_bytes() == bytes(data)
