"""Ember's chat templates against transformers' apply_chat_template.

The fixtures in chat_templates/ are the Jinja templates that the public tokenizer_config.json
files of Qwen2/Qwen2.5, SmolLM2, Llama 3/3.1/3.2 and Mistral 7B Instruct v0.1-v0.3 carry.
For each, conversations with and without a system message, multi-turn, with whitespace to
trim and non-ASCII text are rendered by transformers (tokenize=False, and tokenize=True for
the ids) and by `ember-tokenize --chat`: the text and ids must be identical, and a
conversation the template refuses must be refused by Ember too.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

transformers = pytest.importorskip("transformers")
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
TOKENIZE = os.environ.get("EMBER_TOKENIZE", str(REPO / "build" / "worker" / "ember-tokenize"))
TEMPLATES = Path(__file__).resolve().parent / "chat_templates"

FAMILIES = {  # fixture -> (bos, eos)
    "qwen2-instruct": ("", "<|im_end|>"),
    "qwen2.5-instruct": ("", "<|im_end|>"),
    "smollm2-instruct": ("<|im_start|>", "<|im_end|>"),
    "llama-3-instruct": ("<|begin_of_text|>", "<|eot_id|>"),
    "llama-3.1-instruct": ("<|begin_of_text|>", "<|eot_id|>"),
    "llama-3.2-instruct": ("<|begin_of_text|>", "<|eot_id|>"),
    "mistral-7b-instruct-v0.1": ("<s>", "</s>"),
    "mistral-7b-instruct-v0.2": ("<s>", "</s>"),
    "mistral-7b-instruct-v0.3": ("<s>", "</s>"),
}
SPECIALS = ["<|im_start|>", "<|im_end|>", "<|begin_of_text|>", "<|eot_id|>",
            "<|start_header_id|>", "<|end_header_id|>", "<s>", "</s>", "[INST]", "[/INST]"]

CONVERSATIONS = [
    [{"role": "user", "content": "Hello!"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi"}],
    [{"role": "user", "content": "  padded question \n"},
     {"role": "assistant", "content": " padded answer  "},
     {"role": "user", "content": "Und jetzt auf Deutsch? 日本語も 😀"}],
    [{"role": "system", "content": "  Be brief.\n"}, {"role": "user", "content": "1+1?"},
     {"role": "assistant", "content": "2"}, {"role": "user", "content": "2+2?"}],
    [{"role": "system", "content": "sys"}, {"role": "user", "content": "q"},
     {"role": "assistant", "content": "a"}],
    [{"role": "user", "content": "multi\nline\n\ncontent\twith tabs"}],
    # Refused by Mistral's templates (roles must alternate, no system for v0.1).
    [{"role": "assistant", "content": "I start"}, {"role": "user", "content": "odd"}],
    [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
]


def tokenizer_with_specials() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    text = [m["content"] for c in CONVERSATIONS for m in c]
    text += [p.read_text() for p in TEMPLATES.glob("*.jinja")]
    tok.train_from_iterator(text * 5, trainers.BpeTrainer(
        vocab_size=600, show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[AddedToken(s, special=True, normalized=False) for s in SPECIALS]))
    return tok


@pytest.fixture(scope="module")
def tokenizer_json(tmp_path_factory):
    path = tmp_path_factory.mktemp("chat") / "tokenizer.json"
    path.write_text(tokenizer_with_specials().to_str())
    return path


def hf_render(path: Path, template: str, bos: str, eos: str, conversation, generation: bool):
    tok = transformers.PreTrainedTokenizerFast(tokenizer_file=str(path), bos_token=bos or None,
                                               eos_token=eos)
    try:
        text = tok.apply_chat_template(conversation, chat_template=template, tokenize=False,
                                       add_generation_prompt=generation)
        ids = tok.apply_chat_template(conversation, chat_template=template, tokenize=True,
                                      add_generation_prompt=generation)
    except Exception as e:  # jinja2's TemplateError from raise_exception
        return {"error": str(e)}
    if hasattr(ids, "keys"):  # transformers 5 returns a BatchEncoding
        ids = ids["input_ids"]
    return {"text": text, "ids": list(ids)}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_rendering_matches_transformers(family, tokenizer_json, tmp_path):
    if not Path(TOKENIZE).exists():
        pytest.fail(f"ember-tokenize not found at {TOKENIZE} (build it or set EMBER_TOKENIZE)")
    template = (TEMPLATES / f"{family}.jinja").read_text()
    bos, eos = FAMILIES[family]
    config = tmp_path / "tokenizer_config.json"
    config.write_text(json.dumps({"chat_template": template, "bos_token": bos, "eos_token": eos}))
    requests = [{"messages": c, "add_generation_prompt": g}
                for c in CONVERSATIONS for g in (True, False)]
    run = subprocess.run(
        [TOKENIZE, f"--tokenizer={tokenizer_json}", f"--config={config}", "--chat", "--jsonl"],
        input="".join(json.dumps(r) + "\n" for r in requests), capture_output=True,
        encoding="utf-8", timeout=120)
    answers = [json.loads(line) for line in run.stdout.split("\n") if line]
    assert len(answers) == len(requests), run.stderr
    for request, answer in zip(requests, answers):
        expected = hf_render(tokenizer_json, template, bos, eos, request["messages"],
                             request["add_generation_prompt"])
        if "error" in expected:
            assert "error" in answer, (family, request, answer)
        else:
            assert answer == expected, (family, request)


def test_unknown_template_asks_for_a_prompt(tokenizer_json, tmp_path):
    config = tmp_path / "tokenizer_config.json"
    config.write_text(json.dumps({"chat_template": "{% for m in messages %}{{ m.content }}{% endfor %}"}))
    run = subprocess.run(
        [TOKENIZE, f"--tokenizer={tokenizer_json}", f"--config={config}", "--chat"],
        input=json.dumps({"messages": [{"role": "user", "content": "hi"}]}),
        capture_output=True, encoding="utf-8", timeout=60)
    assert run.returncode == 1
    assert "send a text prompt" in run.stderr, run.stderr
