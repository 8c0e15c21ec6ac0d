#!/usr/bin/env python3
"""Random-weight Llama-family models made by Hugging Face transformers itself, for the
reference tests and the decode benchmark.

Each named variant is a small config covering one feature Ember must match (GQA, Mistral's
sliding window, Qwen2's biases, tied embeddings, llama3 rope scaling, head_dim 64 and 128,
a vocabulary that is not a multiple of 64); `smollm2-135m` and `llama-1b` are full-size
shapes for benchmarks. Weights are drawn with a fixed seed and saved as safetensors.

    make_hf_model.py VARIANT OUT_DIR [--dtype float32|bfloat16|float16] [--chat-tokenizer]

--chat-tokenizer adds a byte-level BPE tokenizer trained here by Hugging Face `tokenizers`
(SmolLM2's layout and ChatML chat template, <|im_end|> as end of sequence), so the model
takes text and chat messages (the worker's end-to-end tests).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

BENCH_MODELS = Path(__file__).resolve().parents[1] / "models" / "bench"

# Small models: hidden 256 so head_dim 64 and 128 both fit; 2 layers; odd vocabularies.
# initializer_range 0.1 spreads the logits so greedy choices are decisive.
_SMALL = dict(hidden_size=256, intermediate_size=384, num_hidden_layers=2,
              initializer_range=0.1, bos_token_id=None, eos_token_id=None, pad_token_id=None,
              rms_norm_eps=1e-5)

# Full-size shapes: no special tokens (random weights never stop on one), 8k context.
_BENCH = dict(bos_token_id=None, eos_token_id=None, pad_token_id=None, rms_norm_eps=1e-5,
              max_position_embeddings=8192, rope_theta=500000.0)

VARIANTS: dict[str, tuple[str, dict]] = {
    # Llama with GQA 4:2, head_dim 64, vocabulary 1000 (1000 % 64 = 40).
    "llama-gqa": ("llama", dict(_SMALL, num_attention_heads=4, num_key_value_heads=2,
                                vocab_size=1000, max_position_embeddings=512, rope_theta=10000.0)),
    # Llama 3.1-style rope scaling, GQA 4:1, head_dim 64.
    "llama3-rope": ("llama", dict(_SMALL, num_attention_heads=4, num_key_value_heads=1,
                                  vocab_size=777, max_position_embeddings=1024,
                                  rope_theta=500000.0,
                                  rope_scaling={"rope_type": "llama3", "factor": 8.0,
                                                "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                "original_max_position_embeddings": 64})),
    # Tied embeddings and an explicit head_dim 128 wider than hidden / heads (q_width 512).
    "llama-tied-hd128": ("llama", dict(_SMALL, num_attention_heads=4, num_key_value_heads=2,
                                       head_dim=128, vocab_size=1001, tie_word_embeddings=True,
                                       max_position_embeddings=512)),
    # Mistral: sliding window 24 so 40+ decode steps run past it; MQA (one kv head).
    "mistral-window": ("mistral", dict(_SMALL, num_attention_heads=4, num_key_value_heads=1,
                                       vocab_size=517, sliding_window=24,
                                       max_position_embeddings=512)),
    # Qwen2: q/k/v biases, head_dim 128, GQA 2:1.
    "qwen2-bias": ("qwen2", dict(_SMALL, num_attention_heads=2, num_key_value_heads=1,
                                 vocab_size=999, max_position_embeddings=512,
                                 use_sliding_window=False)),
    # Qwen3: RMSNorm of each query and key head (q_norm, k_norm), head_dim 64 with 4 heads
    # (q_width 256), GQA 2:1, no biases.
    "qwen3": ("qwen3", dict(_SMALL, num_attention_heads=4, num_key_value_heads=2, head_dim=64,
                            vocab_size=1003, max_position_embeddings=512, use_sliding_window=False)),
    # Benchmark shapes.
    "smollm2-135m": ("llama", dict(_BENCH, hidden_size=576, intermediate_size=1536,
                                   num_hidden_layers=30, num_attention_heads=9,
                                   num_key_value_heads=3, vocab_size=49152,
                                   tie_word_embeddings=True, rope_theta=100000.0)),
    "llama-1b": ("llama", dict(_BENCH, hidden_size=2048, intermediate_size=8192,
                               num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                               vocab_size=128256, tie_word_embeddings=True)),
    "llama-8b": ("llama", dict(_BENCH, hidden_size=4096, intermediate_size=14336,
                               num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                               vocab_size=128256)),
}


def make_config(variant: str):
    import transformers
    family, kwargs = VARIANTS[variant]
    cls = {"llama": transformers.LlamaConfig, "mistral": transformers.MistralConfig,
           "qwen2": transformers.Qwen2Config, "qwen3": transformers.Qwen3Config}[family]
    return cls(**kwargs)


def make_model(variant: str, out_dir: str | Path, dtype: str = "float32", seed: int = 0) -> None:
    """Creates the model with transformers and saves it to out_dir in `dtype`."""
    import torch
    import transformers
    torch.manual_seed(seed)
    config = make_config(variant)
    config._attn_implementation = "eager"
    with torch.device("cpu"):
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.eval()
    # transformers initialises norms to one and biases to zero, which would leave both
    # untested: perturb them.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.add_(0.2 * torch.randn_like(param))
            elif name.endswith(".bias"):
                param.copy_(0.1 * torch.randn_like(param))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.to(getattr(torch, dtype)).save_pretrained(out, safe_serialization=True)


def cached_bench_model(variant: str) -> Path:
    """models/bench/VARIANT-bf16, made on first use (BF16, seed 0) in a temporary directory and
    renamed, so an interrupted run never leaves a half-written model that later runs would reuse."""
    path = BENCH_MODELS / f"{variant}-bf16"
    if not path.exists():
        print(f"make_hf_model: creating {variant} (random BF16 weights) in {path}", file=sys.stderr)
        tmp = path.with_name(path.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        make_model(variant, tmp, dtype="bfloat16")
        os.replace(tmp, path)
    return path


def _random_word(i: int) -> str:
    """A deterministic pseudo-random lowercase word (no global random state)."""
    x, word = i * 2654435761 % 4294967296, ""
    for _ in range(2 + i % 6):
        x = (x * 1103515245 + 12345) % 2147483648
        word += chr(97 + (x >> 16) % 26)
    return word


# Training text for --chat-tokenizer: several scripts, so byte-level merges cover multi-byte
# characters and decoded streams really cross UTF-8 boundaries.
_CORPUS = [
    "The quick brown fox jumps over the lazy dog. 0123456789",
    "def add(a, b):\n    return a + b\n",
    "Grüße aus München! Ça va très bien, merci.",
    "日本語のテキストと中文文本，还有한국어 문장도 있습니다。",
    "Emoji: 🙂🚀✨ and symbols ∑ ∞ ≠ → ←",
    "Привет, мир! Γειά σου κόσμε. مرحبا بالعالم",
] * 20 + [  # and enough distinct words for a thousand merges
    " ".join(a + b + c for a in ("ka", "lo", "mi", "su", "te", "ør", "dé", "ni")
             for b in ("ra", "n", "chi", "vo", "ße", "ly") for c in ("", "s", "ing", "ed", "语"))
] * 3 + [" ".join(_random_word(i) for i in range(4000))] * 2
_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def add_chat_tokenizer(out_dir: str | Path, vocab_size: int) -> None:
    """Trains a SmolLM2-style byte-level BPE of `vocab_size` tokens (specials first) and
    writes tokenizer.json, tokenizer_config.json (ChatML template) and the eos id into
    config.json and generation_config.json."""
    import json
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    out = Path(out_dir)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=_SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(_CORPUS, trainer=trainer)
    tok.save(str(out / "tokenizer.json"))
    template = (Path(__file__).resolve().parent.parent / "tests" / "engine" / "chat_templates" /
                "smollm2-instruct.jinja").read_text()
    (out / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "chat_template": template,
        "add_bos_token": False, "tokenizer_class": "GPT2Tokenizer"}, indent=1))
    eos = tok.token_to_id("<|im_end|>")
    for name in ("config.json", "generation_config.json"):
        path = out / name
        if path.exists():
            data = json.loads(path.read_text())
            data["eos_token_id"] = eos
            path.write_text(json.dumps(data, indent=1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variant", choices=sorted(VARIANTS))
    parser.add_argument("out_dir")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--chat-tokenizer", action="store_true",
                        help="add a trained byte-level BPE tokenizer with a ChatML template")
    args = parser.parse_args(argv)
    print(f"make_hf_model: {args.variant} ({args.dtype}) -> {args.out_dir}", file=sys.stderr)
    make_model(args.variant, args.out_dir, args.dtype, args.seed)
    if args.chat_tokenizer:
        add_chat_tokenizer(args.out_dir, make_config(args.variant).vocab_size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
