"""Ember's engine against Hugging Face transformers, the implementation users trust.

Models are created by transformers itself with random weights (tools/make_hf_model.py),
saved as safetensors, run by transformers (float32, eager attention) and by
`ember-generate` on the CPU backend; the logits of the prompt and of every decode step
must agree to 1e-3 of the logits' scale and the greedy tokens must be identical. Prompts
and 45 decode steps cross several 16-token KV blocks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tools"))

from make_hf_model import make_model  # noqa: E402
from objstore import LocalS3  # noqa: E402

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

GENERATE = os.environ.get("EMBER_GENERATE", str(REPO / "build" / "worker" / "ember-generate"))
STEPS = 45
RELATIVE_TOLERANCE = 1e-3
# BF16 carries 8 significant bits: two computations of the same BF16 model that round at
# different places differ by a few BF16 ulps of the logits' scale.
BF16_RELATIVE_TOLERANCE = 3e-2
# The float32 comparisons run the CPU backend in exact precision (FP32 activations).
EXACT = ["--compute-precision", "f32"]

VARIANTS = ["llama-gqa", "llama3-rope", "llama-tied-hd128", "mistral-window", "qwen2-bias", "qwen3"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """variant name (or name:dtype) -> model directory, created once per module."""
    root = tmp_path_factory.mktemp("hf_models")
    cache: dict[str, Path] = {}

    def get(variant: str, dtype: str = "float32") -> Path:
        key = f"{variant}:{dtype}"
        if key not in cache:
            path = root / key.replace(":", "-")
            make_model(variant, path, dtype=dtype)
            cache[key] = path
        return cache[key]

    return get


def prompt_for(vocab: int, length: int, seed: int) -> list[int]:
    return np.random.default_rng(seed).integers(0, vocab, size=length).tolist()


def hf_generate(model_dir: Path, prompt: list[int], steps: int = STEPS, dtype: str = "float32"):
    """transformers' greedy tokens and raw logits [steps, vocab] (as float32), computed in
    `dtype`."""
    model = transformers.AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=getattr(torch, dtype), attn_implementation="eager")
    model.eval()
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=steps, min_new_tokens=steps,
                             do_sample=False, output_logits=True, return_dict_in_generate=True)
    tokens = out.sequences[0, len(prompt):].tolist()
    logits = torch.stack(out.logits, dim=1)[0].float().numpy()
    return tokens, logits


def ember_generate(model: str, prompts: list[list[int]], tmp_path: Path, steps: int = STEPS,
                   extra: list[str] | None = None, env: dict | None = None):
    """Runs ember-generate; returns (outputs per prompt, logits array, parsed JSON)."""
    logits_path = tmp_path / "logits.npy"
    cmd = [GENERATE, "--model", model, "--backend", "cpu", "--max-tokens", str(steps),
           "--ignore-eos", "--json", "--quiet", "--logits-out", str(logits_path),
           "--prompt-ids", ";".join(",".join(map(str, p)) for p in prompts)] + (extra or [])
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, **(env or {})})
    assert proc.returncode == 0, f"ember-generate failed:\n{proc.stderr}"
    result = json.loads(proc.stdout)
    return result["outputs"], np.load(logits_path), result


def assert_close(ember_logits: np.ndarray, hf_logits: np.ndarray, what: str):
    assert ember_logits.shape == hf_logits.shape, what
    scale = float(np.abs(hf_logits).max())
    diff = float(np.abs(ember_logits - hf_logits).max())
    assert diff <= RELATIVE_TOLERANCE * scale, (
        f"{what}: max |ember - transformers| = {diff:.3g}, scale {scale:.3g}")


def assert_bf16_close(tokens: list[int], logits: np.ndarray, hf_tokens: list[int],
                      hf_logits: np.ndarray, what: str):
    """Logits within a few BF16 ulps of the logits' scale, compared step by step while the
    greedy sequences agree: a legitimately different choice at a near-tie (top-2 margin within
    the tolerance) changes everything after it."""
    scale = float(np.abs(hf_logits).max())
    for step, (mine, ref) in enumerate(zip(tokens, hf_tokens)):
        diff = float(np.abs(logits[step] - hf_logits[step]).max())
        assert diff <= BF16_RELATIVE_TOLERANCE * scale, (
            f"{what} step {step}: {diff:.3g} vs scale {scale:.3g}")
        if mine != ref:
            top2 = np.sort(hf_logits[step])[-2:]
            assert top2[1] - top2[0] <= 2 * BF16_RELATIVE_TOLERANCE * scale, (
                f"{what} step {step}: ember chose {mine}, transformers {ref} with a clear margin")
            break


@pytest.mark.parametrize("variant", VARIANTS)
def test_logits_and_greedy_tokens_match_transformers(variant, models, tmp_path):
    model_dir = models(variant)
    vocab = json.loads((model_dir / "config.json").read_text())["vocab_size"]
    prompt = prompt_for(vocab, 11, seed=1)
    hf_tokens, hf_logits = hf_generate(model_dir, prompt)
    outputs, logits, _ = ember_generate(str(model_dir), [prompt], tmp_path)
    assert_close(logits, hf_logits, variant)
    assert outputs[0] == hf_tokens


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_checkpoints_match_their_float32_upcast(dtype, models, tmp_path):
    # Ember reads 16-bit weights and accumulates in FP32; transformers upcasting the same
    # checkpoint to float32 computes the same function.
    model_dir = models("llama-gqa", dtype)
    header = json.loads((model_dir / "config.json").read_text())
    assert header.get("dtype", header.get("torch_dtype")) == dtype
    prompt = prompt_for(header["vocab_size"], 9, seed=2)
    hf_tokens, hf_logits = hf_generate(model_dir, prompt)
    outputs, logits, _ = ember_generate(str(model_dir), [prompt], tmp_path, extra=EXACT)
    assert_close(logits, hf_logits, dtype)
    assert outputs[0] == hf_tokens


@pytest.mark.parametrize("variant", ["llama-gqa", "qwen2-bias", "qwen3"])
def test_bf16_compute_matches_transformers_in_bf16(variant, models, tmp_path):
    # The CLIs' default for BF16 weights: activations rounded to BF16 for the matmuls,
    # against transformers computing in bfloat16 throughout. The 40-token prompt takes
    # oneDNN's GEMM (10 tokens or more), the 45 one-token decode steps Ember's own loop.
    model_dir = models(variant, "bfloat16")
    vocab = json.loads((model_dir / "config.json").read_text())["vocab_size"]
    prompt = prompt_for(vocab, 40, seed=4)
    hf_tokens, hf_logits = hf_generate(model_dir, prompt, dtype="bfloat16")
    outputs, logits, result = ember_generate(str(model_dir), [prompt], tmp_path)
    if result["compute_precision"] != "bf16":
        pytest.skip(f"BF16 compute unavailable: {result['compute_precision']}")
    assert_bf16_close(outputs[0], logits, hf_tokens, hf_logits, variant)


@pytest.mark.parametrize("variant", ["llama-gqa", "mistral-window", "qwen2-bias", "qwen3"])
def test_sequences_batched_together_match_each_alone(variant, models, tmp_path):
    model_dir = models(variant)
    vocab = json.loads((model_dir / "config.json").read_text())["vocab_size"]
    prompts = [prompt_for(vocab, n, seed=10 + n) for n in (3, 17, 33)]
    outputs, logits, _ = ember_generate(str(model_dir), prompts, tmp_path)
    assert logits.shape == (3, STEPS, vocab)
    for i, prompt in enumerate(prompts):
        hf_tokens, hf_logits = hf_generate(model_dir, prompt)
        assert_close(logits[i], hf_logits, f"{variant} prompt {i} in a batch of 3")
        assert outputs[i] == hf_tokens


def test_chunked_prefill_matches_transformers(models, tmp_path):
    # A 40-token prompt prefilled 8 tokens per step (chunks straddle KV blocks).
    model_dir = models("llama-gqa")
    prompt = prompt_for(1000, 40, seed=3)
    hf_tokens, hf_logits = hf_generate(model_dir, prompt)
    outputs, logits, _ = ember_generate(str(model_dir), [prompt], tmp_path,
                                        extra=["--max-step-tokens", "8"])
    assert_close(logits, hf_logits, "chunked prefill")
    assert outputs[0] == hf_tokens


def test_generates_from_a_model_on_the_local_s3_server(models, tmp_path):
    model_dir = models("qwen2-bias")
    prompt = prompt_for(999, 7, seed=4)
    local_outputs, local_logits, _ = ember_generate(str(model_dir), [prompt], tmp_path, steps=12)
    with LocalS3(tmp_path / "s3root", etag_hash=None) as s3:
        s3.make_bucket("models")
        s3.upload_dir(model_dir, "models", "qwen2-bias")
        outputs, logits, result = ember_generate("s3://models/qwen2-bias", [prompt], tmp_path,
                                                 steps=12, env=s3.env())
    assert outputs == local_outputs
    np.testing.assert_array_equal(logits, local_logits)
    assert result["generated_tokens"] == 12


def test_a_kv_cache_too_small_for_the_request_is_a_clear_error(models, tmp_path):
    model_dir = models("llama-gqa")
    proc = subprocess.run([GENERATE, "--model", str(model_dir), "--backend", "cpu", "--quiet",
                           "--prompt-ids", ",".join(["5"] * 40), "--max-tokens", "10",
                           "--kv-blocks", "2"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "KV cache full" in proc.stderr and "2 of 2 are free" in proc.stderr


def test_a_misconfigured_model_fails_naming_the_cause(models, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    src = models("llama-gqa")
    (bad / "model.safetensors").symlink_to(src / "model.safetensors")
    config = json.loads((src / "config.json").read_text())
    config["rope_parameters"] = {"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0}
    (bad / "config.json").write_text(json.dumps(config))
    proc = subprocess.run([GENERATE, "--model", str(bad), "--backend", "cpu", "--quiet",
                           "--prompt-ids", "1,2"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "rope_parameters type 'yarn' is not supported" in proc.stderr

    config["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0}
    config["num_hidden_layers"] = 3  # the checkpoint has 2: layer 2's tensors are missing
    (bad / "config.json").write_text(json.dumps(config))
    proc = subprocess.run([GENERATE, "--model", str(bad), "--backend", "cpu", "--quiet",
                           "--prompt-ids", "1,2"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "missing" in proc.stderr and "model.layers.2.self_attn.q_proj.weight" in proc.stderr
