"""Every CLI: --help exits 0 and prints its usage and its own flags with defaults, on stdout,
without the build machine's source paths; --helpfull adds the flags of the libraries; an unknown
flag still fails."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

BUILD = Path(os.environ.get("EMBER_BUILD_DIR", Path(__file__).resolve().parents[2] / "build"))
CLIS = {
    "ember-worker": ("worker/ember-worker", ["model", "grpc_port", "peer_port", "no_sign_request"]),
    "ember-generate": ("worker/ember-generate", ["model", "max_tokens", "no_sign_request"]),
    "ember-tokenize": ("worker/ember-tokenize", ["tokenizer", "chat"]),
    "ember-pull": ("loader/ember-pull", ["out", "connections", "peers", "no_sign_request"]),
}


@pytest.mark.parametrize("name", sorted(CLIS))
def test_help_exits_0_with_the_programs_flags_and_no_source_paths(name):
    path, flags = CLIS[name]
    binary = BUILD / path
    if not binary.exists():
        pytest.fail(f"{binary} not built")
    run = subprocess.run([binary, "--help"], capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith(name), run.stdout[:200]
    for flag in flags:
        assert f"--{flag} (default: " in run.stdout, flag
    assert ".cc" not in run.stdout and "/work/" not in run.stdout and "Flags from" not in run.stdout
    assert "--flagfile" not in run.stdout  # Abseil's own flags only with --helpfull
    full = subprocess.run([binary, "--helpfull"], capture_output=True, text=True, timeout=30)
    assert full.returncode == 0 and "--flagfile" in full.stdout and ".cc" not in full.stdout
    bad = subprocess.run([binary, "--no_such_flag"], capture_output=True, text=True, timeout=30)
    assert bad.returncode != 0 and "no_such_flag" in bad.stderr
