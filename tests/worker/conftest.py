"""Fixtures for the worker's end-to-end tests: models made by transformers, a local S3 server
holding them, and ember-worker processes serving them from s3:// over real TCP."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tools"))

from chat_template_corpus import corpus  # noqa: E402
from make_hf_model import add_chat_tokenizer, make_model  # noqa: E402
from objstore import LocalS3, place  # noqa: E402
from worker_process import WorkerProcess, stubs  # noqa: E402

BUCKET = "models"


@pytest.fixture(scope="session")
def pb():
    return stubs()[0]


@pytest.fixture(scope="session")
def s3_root(tmp_path_factory) -> Path:
    """The S3 server's root: bucket `models` with `tiny` (fast, with a chat tokenizer),
    `qwen3chat` (tiny's weights and tokenizer with Qwen3's real chat template as
    chat_template.jinja: thinking and tool calls), `mistralchat` (the same with Mistral 7B
    v0.1's template, which refuses roles that do not alternate), `badchat` (the same with a
    template Ember cannot parse: it includes another file) and `slow` (SmolLM2-135M's shape,
    random weights: long generations take seconds on a CPU)."""
    root = tmp_path_factory.mktemp("s3root")
    models = tmp_path_factory.mktemp("models")
    make_model("llama-gqa", models / "tiny", dtype="float32")
    add_chat_tokenizer(models / "tiny", 1000)
    make_model("smollm2-135m", models / "slow", dtype="bfloat16")
    place(models / "tiny", root / BUCKET / "tiny")
    templates = {"qwen3chat": corpus()["Qwen-Qwen3-0.6B"], "mistralchat": (
        REPO / "tests" / "engine" / "chat_templates" / "mistral-7b-instruct-v0.1.jinja").read_text(),
        "badchat": "{{ bos_token }}{% for m in messages %}\n{% include 'turn.jinja' %}{% endfor %}"}
    for name, template in templates.items():
        # tiny's files with the template in chat_template.jinja alone (as transformers saves
        # it); tokenizer_config.json is rewritten, not changed through tiny's hard link.
        place(models / "tiny", root / BUCKET / name)
        config_path = root / BUCKET / name / "tokenizer_config.json"
        config = json.loads(config_path.read_text())
        del config["chat_template"]
        config_path.unlink()
        config_path.write_text(json.dumps(config))
        (root / BUCKET / name / "chat_template.jinja").write_text(template)
    place(models / "slow", root / BUCKET / "slow")
    return root


@pytest.fixture(scope="session")
def tiny_dir(s3_root) -> Path:
    return s3_root / BUCKET / "tiny"


@pytest.fixture(scope="session")
def s3(s3_root):
    with LocalS3(s3_root, etag_hash=None) as server:
        yield server


@pytest.fixture(scope="session")
def start_worker(s3):
    """start_worker(model, *flags, env=..., wait_serving=True) -> a started WorkerProcess,
    stopped (drained) at the end of the session if the test did not stop it."""
    workers = []

    def start(model: str, *flags: str, env: dict | None = None, wait_serving: bool = True,
              endpoint: str | None = None) -> WorkerProcess:
        environment = {**s3.env(), **(env or {})}
        if endpoint:
            environment["AWS_ENDPOINT_URL"] = endpoint
        # EMBER_WORKER_BACKEND: the emulated build runs some of these on its CUDA backend.
        backend = os.environ.get("EMBER_WORKER_BACKEND", "cpu")
        worker = WorkerProcess(f"s3://{BUCKET}/{model}", args=[f"--backend={backend}", *flags],
                               env=environment)
        workers.append(worker)
        return worker.start(wait_serving=wait_serving)

    yield start
    for worker in workers:
        worker.kill()


@pytest.fixture(scope="module")
def tiny(start_worker):
    """The fast model, chunked prefill of 64 tokens, room for 64 sequences."""
    return start_worker("tiny", "--max_step_tokens=64", "--kv_blocks=2048", "--max_queue=64")


@pytest.fixture(scope="module")
def stub(tiny):
    return tiny.stub()
