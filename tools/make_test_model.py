#!/usr/bin/env python3
"""Writes small Llama-shaped safetensors test models (numpy only, format written by hand).

Single file or sharded with an index, every safetensors dtype, optionally odd tensor sizes so data
starts at unaligned offsets; also one big random U8 tensor for the loader benchmark.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import struct
import sys
from pathlib import Path

import numpy as np

DTYPE_SIZES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "F64": 8, "I64": 8, "U64": 8,
}
MIB = 1 << 20
WRITE_CHUNK = 64 * MIB

# Tensor = (dtype, shape, data); data is bytes-like of exactly prod(shape) * dtype size bytes.
Tensor = tuple[str, list[int], bytes]


def tensor_nbytes(dtype: str, shape: list[int]) -> int:
    return math.prod(shape) * DTYPE_SIZES[dtype]


def safetensors_header(specs: list[tuple[str, str, list[int]]],
                       metadata: dict[str, str] | None = None) -> bytes:
    """The 8-byte length plus JSON header for tensors (name, dtype, shape) stored back to back in order.

    The JSON is space-padded to a multiple of 8 bytes, as the reference writer does, so the data
    section starts 8-aligned; tensors inside it are as aligned as their sizes make them.
    """
    header: dict = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    for name, dtype, shape in specs:
        if dtype not in DTYPE_SIZES:
            raise ValueError(f"{name}: unknown dtype {dtype}")
        end = offset + tensor_nbytes(dtype, shape)
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, end]}
        offset = end
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text


def write_safetensors(path: str | os.PathLike, tensors: dict[str, Tensor],
                      metadata: dict[str, str] | None = None) -> int:
    """Writes tensors {name: (dtype, shape, bytes)} in dict order; returns the file size."""
    specs = []
    for name, (dtype, shape, data) in tensors.items():
        if dtype not in DTYPE_SIZES:
            raise ValueError(f"{name}: unknown dtype {dtype}")
        if memoryview(data).nbytes != tensor_nbytes(dtype, shape):
            raise ValueError(f"{name}: {len(data)} bytes do not fit {dtype}{list(shape)}")
        specs.append((name, dtype, list(shape)))
    with open(path, "wb") as f:
        f.write(safetensors_header(specs, metadata))
        for _, _, data in tensors.values():
            f.write(data)
        return f.tell()


def read_safetensors_header(path: str | os.PathLike) -> tuple[dict, int]:
    """Returns (header dict, absolute file offset of the data section)."""
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(length)), 8 + length


def _single_object_header(size_mb: int) -> bytes:
    return safetensors_header([("data", "U8", [size_mb * MIB])], {"format": "pt"})


def single_object_size(size_mb: int) -> int:
    """The size of the file write_single_object(path, size_mb) writes."""
    return len(_single_object_header(size_mb)) + size_mb * MIB


def write_single_object(path: str | os.PathLike, size_mb: int) -> int:
    """One U8 tensor "data" of size_mb MiB of os.urandom bytes, written in chunks; returns file size."""
    nbytes = size_mb * MIB
    with open(path, "wb") as f:
        f.write(_single_object_header(size_mb))
        remaining = nbytes
        while remaining:
            n = min(WRITE_CHUNK, remaining)
            f.write(os.urandom(n))
            remaining -= n
        return f.tell()


# --- the test model ---------------------------------------------------------------------------

TORCH_DTYPES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}


def llama_config(total_mb: float | None, weight_dtype: str = "BF16") -> dict:
    """A tiny Llama config; with total_mb, intermediate_size grows until the weights are about that big."""
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
        "vocab_size": 256, "max_position_embeddings": 512, "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0, "hidden_act": "silu", "tie_word_embeddings": False,
        "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": TORCH_DTYPES[weight_dtype],
    }
    if total_mb:
        size = DTYPE_SIZES[weight_dtype]
        fixed = sum(tensor_nbytes(weight_dtype, s) for n, s in llama_shapes(config) if ".mlp." not in n)
        per_unit = 3 * config["hidden_size"] * size * config["num_hidden_layers"]  # bytes per MLP column
        units = max(16, int((total_mb * MIB - fixed) / per_unit) // 16 * 16)
        config["intermediate_size"] = units
    return config


def llama_shapes(config: dict) -> list[tuple[str, list[int]]]:
    h, i, v = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    kv = config["num_key_value_heads"] * config["head_dim"]
    shapes = [("model.embed_tokens.weight", [v, h])]
    for layer in range(config["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        shapes += [
            (p + "input_layernorm.weight", [h]),
            (p + "self_attn.q_proj.weight", [h, h]),
            (p + "self_attn.k_proj.weight", [kv, h]),
            (p + "self_attn.v_proj.weight", [kv, h]),
            (p + "self_attn.o_proj.weight", [h, h]),
            (p + "post_attention_layernorm.weight", [h]),
            (p + "mlp.gate_proj.weight", [i, h]),
            (p + "mlp.up_proj.weight", [i, h]),
            (p + "mlp.down_proj.weight", [h, i]),
        ]
    shapes += [("model.norm.weight", [h]), ("lm_head.weight", [v, h])]
    return shapes


def random_data(rng: np.random.Generator, dtype: str, shape: list[int]) -> bytes:
    nbytes = tensor_nbytes(dtype, shape)
    if dtype == "BOOL":
        return rng.integers(0, 2, nbytes, dtype=np.uint8).tobytes()
    return rng.bytes(nbytes)


def dtype_test_shape(dtype: str, misaligned: bool) -> list[int]:
    """[4, 8] (a multiple of 8 bytes for every dtype), or an odd length for 1-byte dtypes."""
    if misaligned and DTYPE_SIZES[dtype] == 1:
        return [3, 7]
    return [4, 8]


def build_tensors(config: dict, weight_dtype: str, dtypes: list[str],
                  misaligned: bool) -> list[tuple[str, str, list[int]]]:
    specs = [(name, weight_dtype, shape) for name, shape in llama_shapes(config)]
    specs += [(f"test.dtype.{d}", d, dtype_test_shape(d, misaligned)) for d in dtypes]
    return specs


def split_shards(specs: list, shards: int) -> list[list]:
    """Contiguous groups of about equal byte size, none empty."""
    if shards > len(specs):
        raise ValueError(f"{shards} shards but only {len(specs)} tensors")
    total = sum(tensor_nbytes(d, s) for _, d, s in specs)
    groups: list[list] = [[] for _ in range(shards)]
    done = 0
    index = 0
    for i, spec in enumerate(specs):
        # Move on when this shard has its share, keeping one tensor for every later shard.
        must_move = len(specs) - i < shards - index
        if groups[index] and index < shards - 1 and (done >= total * (index + 1) / shards or must_move):
            index += 1
        groups[index].append(spec)
        done += tensor_nbytes(spec[1], spec[2])
    return groups


def write_model(outdir: Path, layout: str = "single", shards: int = 1, dtypes: list[str] = (),
                misaligned: bool = False, total_mb: float | None = None, seed: int = 0,
                weight_dtype: str = "BF16") -> list[Path]:
    """Writes the model files into outdir; returns the safetensors paths."""
    rng = np.random.default_rng(seed)
    outdir.mkdir(parents=True, exist_ok=True)
    config = llama_config(total_mb, weight_dtype)
    specs = build_tensors(config, weight_dtype, list(dtypes), misaligned)
    groups = split_shards(specs, shards if layout == "sharded" else 1)
    files = []
    weight_map = {}
    for index, group in enumerate(groups):
        if misaligned:
            # An odd-sized tensor first, so everything after it starts at an odd offset.
            group.insert(0, (f"test.misalign.{index}", "U8", [13 + 2 * index]))
        name = ("model.safetensors" if layout == "single"
                else f"model-{index + 1:05d}-of-{len(groups):05d}.safetensors")
        tensors = {n: (d, s, random_data(rng, d, s)) for n, d, s in group}
        write_safetensors(outdir / name, tensors, {"format": "pt"})
        weight_map.update({n: name for n in tensors})
        files.append(outdir / name)
    if layout == "sharded":
        total_size = sum(tensor_nbytes(d, s) for g in groups for _, d, s in g)
        index_json = {"metadata": {"total_size": total_size}, "weight_map": weight_map}
        _write_json(outdir / "model.safetensors.index.json", index_json)
    _write_json(outdir / "config.json", config)
    _write_json(outdir / "generation_config.json",
                {"bos_token_id": 1, "eos_token_id": 2, "max_new_tokens": 32})
    _write_json(outdir / "tokenizer.json",
                {"version": "1.0", "model": {"type": "BPE", "vocab": {}, "merges": []}})
    _write_json(outdir / "tokenizer_config.json",
                {"bos_token": "<s>", "eos_token": "</s>", "model_max_length": 512})
    return files


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n")


def _parse_dtypes(text: str) -> list[str]:
    if text == "all":
        return list(DTYPE_SIZES)
    if text == "none":
        return []
    dtypes = [d.strip().upper() for d in text.split(",") if d.strip()]
    unknown = [d for d in dtypes if d not in DTYPE_SIZES]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown dtypes {unknown}; known: {', '.join(DTYPE_SIZES)}")
    return dtypes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--layout", choices=["single", "sharded"], default="single")
    parser.add_argument("--shards", type=int, default=3, help="shard count for --layout sharded (default 3)")
    parser.add_argument("--dtypes", type=_parse_dtypes, default=_parse_dtypes("all"),
                        help='extra "test.dtype.<DTYPE>" tensors: all (default), none, or e.g. BF16,F16')
    parser.add_argument("--misaligned", action="store_true",
                        help="odd tensor byte sizes, so later tensors start at unaligned offsets")
    parser.add_argument("--total-mb", type=float, help="grow the MLP weights to about this many MiB")
    parser.add_argument("--weight-dtype", choices=list(TORCH_DTYPES), default="BF16",
                        help="dtype of the Llama weights (default BF16; numpy cannot read BF16)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--single-object", type=int, metavar="SIZE_MB",
                        help="instead: write OUTDIR/model.safetensors, one U8 tensor of SIZE_MB MiB of random bytes")
    args = parser.parse_args(argv)

    if args.single_object is not None:
        args.outdir.mkdir(parents=True, exist_ok=True)
        size = write_single_object(args.outdir / "model.safetensors", args.single_object)
        print(f"wrote {args.outdir / 'model.safetensors'} ({size} bytes)", file=sys.stderr)
        return 0
    if args.layout == "sharded" and args.shards < 1:
        parser.error("--shards must be at least 1")
    files = write_model(args.outdir, args.layout, args.shards, args.dtypes, args.misaligned,
                        args.total_mb, args.seed, args.weight_dtype)
    total = sum(f.stat().st_size for f in files)
    print(f"wrote {len(files)} safetensors file(s), {total} bytes, to {args.outdir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
