"""The CUDA backend against transformers in BF16, end to end through ember-generate.

Run by CTest as `engine_reference_cuda`: exits 77 (CTest's skip code) with a visible
"GPU test skipped: ..." line when no usable CUDA device is present, otherwise runs the
pytest cases below. The emulated build runs it as `emulated.engine_reference_cuda` with
EMBER_CUDA_EMULATION=1 and its own ember-generate, on the host emulation of CUDA. BF16 tolerance: Ember keeps activations in FP32 but its KV cache in
BF16, so its logits may differ from transformers' float32 run of the same BF16 weights by
a few BF16 ulps of the logits' scale; greedy tokens must agree wherever transformers'
top-2 margin is larger than that tolerance.
"""

from __future__ import annotations

import ctypes
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_reference import (assert_bf16_close, ember_generate, hf_generate, models,  # noqa: E402,F401
                            prompt_for)


def gpu_unavailable_reason() -> str | None:
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError as e:
        return f"no CUDA driver ({e})"
    if cuda.cuInit(0) != 0:
        return "cuInit failed"
    count = ctypes.c_int(0)
    if cuda.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value == 0:
        return "no CUDA device"
    return None


@pytest.mark.parametrize("variant", ["llama-gqa", "qwen2-bias", "llama-tied-hd128", "mistral-window", "qwen3"])
def test_cuda_backend_matches_transformers_in_bf16(variant, models, tmp_path):  # noqa: F811
    model_dir = models(variant, "bfloat16")
    import json
    vocab = json.loads((model_dir / "config.json").read_text())["vocab_size"]
    prompt = prompt_for(vocab, 11, seed=1)
    hf_tokens, hf_logits = hf_generate(model_dir, prompt)
    outputs, logits, result = ember_generate(str(model_dir), [prompt], tmp_path,
                                             extra=["--backend", "cuda"])
    assert result["backend"] == "cuda"
    assert_bf16_close(outputs[0], logits, hf_tokens, hf_logits, variant)


if __name__ == "__main__":
    if os.environ.get("EMBER_CUDA_EMULATION") == "1":
        # ember-generate of the emulated build (tests/cuda_emulation): the same CUDA backend
        # on the host emulation of CUDA. Proves logic, not speed; not a GPU run.
        print("CUDA backend under the host emulation of CUDA (not a GPU)")
    elif reason := gpu_unavailable_reason():
        print(f"GPU test skipped: {reason}")
        sys.exit(77)
    sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", __file__]))
