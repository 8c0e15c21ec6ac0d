"""ember-worker end to end: a real grpcio client over TCP against a worker whose model comes
from the local S3 server. The streamed text against Hugging Face tokenizers, concurrency
against requests sent alone, cancellation, Abort and deadlines against the worker's
metrics, malformed requests, overload, drain, health and reflection."""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from conftest import REPO

TIMEOUT = 60


def generate(stub, request, timeout=TIMEOUT):
    """(token ids, text, responses) of one streamed Generate."""
    responses = list(stub.Generate(request, timeout=timeout))
    ids = [t for r in responses for t in r.token_ids]
    return ids, "".join(r.text for r in responses), responses


def hf_tokenizer(tiny_dir):
    from tokenizers import Tokenizer
    return Tokenizer.from_file(str(tiny_dir / "tokenizer.json"))


# --- streaming and text ------------------------------------------------------------------------

def test_streamed_text_equals_decoded_tokens(stub, pb, tiny_dir):
    tok = hf_tokenizer(tiny_dir)
    prompt = "Grüße aus München! 日本語 🙂🚀 def add(a, b):"
    request = pb.GenerateRequest(request_id="stream-1", prompt=prompt,
                                 stopping=pb.StoppingCriteria(max_tokens=48, ignore_eos=True))
    ids, text, responses = generate(stub, request)
    assert len(ids) == 48
    assert all(r.request_id == "stream-1" for r in responses)
    assert text == tok.decode(ids, skip_special_tokens=True)
    last = responses[-1]
    assert last.finish_reason == pb.FINISH_REASON_LENGTH
    assert last.usage.completion_tokens == 48
    assert last.usage.prompt_tokens == len(tok.encode(prompt).ids)
    assert 0 < last.usage.time_to_first_token_s <= last.usage.total_time_s
    assert all(r.finish_reason == pb.FINISH_REASON_UNSPECIFIED for r in responses[:-1])


def test_text_deltas_never_split_a_character(stub, pb, tiny_dir):
    # Byte-level tokens of multi-byte characters, fed as ids: every delta must be whole
    # characters (a split one would reach Python as an invalid-UTF-8 decode error or U+FFFD).
    tok = hf_tokenizer(tiny_dir)
    text = "日本語のテキスト🙂🚀✨Привет"
    byte_ids = [tok.token_to_id(piece) for piece in tok.encode(text).tokens]
    request = pb.GenerateRequest(token_ids=pb.TokenIds(ids=byte_ids),
                                 stopping=pb.StoppingCriteria(max_tokens=24, ignore_eos=True))
    ids, streamed, responses = generate(stub, request)
    assert streamed == tok.decode(ids, skip_special_tokens=True)
    for r in responses:
        assert r.text.encode("utf-8").decode("utf-8") == r.text


def test_stream_text_off_sends_ids_only(stub, pb):
    request = pb.GenerateRequest(prompt="hello", stream_text=False,
                                 stopping=pb.StoppingCriteria(max_tokens=5, ignore_eos=True))
    ids, text, _ = generate(stub, request)
    assert len(ids) == 5 and text == ""


def test_tokenize_matches_tokenizers_and_chat_template(stub, pb, tiny_dir):
    tok = hf_tokenizer(tiny_dir)
    text = "The quick brown fox, 日本語 and 🙂 123"
    assert list(stub.Tokenize(pb.TokenizeRequest(text=text), timeout=TIMEOUT).token_ids) == tok.encode(text).ids
    from transformers import AutoTokenizer
    hf = AutoTokenizer.from_pretrained(str(tiny_dir))
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Grüße!"}]
    expected = hf.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if isinstance(expected, dict) or hasattr(expected, "input_ids"):
        expected = expected["input_ids"]
    chat = pb.ChatMessages(messages=[pb.ChatMessage(**m) for m in messages])
    assert list(stub.Tokenize(pb.TokenizeRequest(chat=chat), timeout=TIMEOUT).token_ids) == list(expected)
    ids, _, responses = generate(stub, pb.GenerateRequest(
        chat=chat, stopping=pb.StoppingCriteria(max_tokens=3, ignore_eos=True)))
    assert responses[-1].usage.prompt_tokens == len(expected)


QWEN3_TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                                    "days": {"type": "integer"}},
                   "required": ["city"]}}}]


def test_qwen3_template_with_tools_and_thinking_end_to_end(start_worker, pb, s3_root):
    """Qwen3's real template (chat_template.jinja) served: tools, a tool call and its result,
    enable_thinking false; the prompt equals transformers' apply_chat_template, a generation
    runs on it, and JSON text that does not parse is named by its field."""
    import json as jsonlib

    from transformers import AutoTokenizer
    model_dir = s3_root / "models" / "qwen3chat"
    worker = start_worker("qwen3chat", "--max_step_tokens=64", "--kv_blocks=512")
    stub = worker.stub()
    call = {"city": "Zürich", "days": 2}
    messages = [
        {"role": "system", "content": "You can call tools."},
        {"role": "user", "content": "Weather in Zürich?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": "get_weather", "arguments": call}}]},
        {"role": "tool", "content": jsonlib.dumps({"temp_c": 3})},
        {"role": "user", "content": "Thanks! And tomorrow?"},
    ]
    hf = AutoTokenizer.from_pretrained(str(model_dir))
    expected = hf.apply_chat_template(messages, tools=QWEN3_TOOLS, add_generation_prompt=True,
                                      enable_thinking=False, tokenize=True)
    if hasattr(expected, "keys"):
        expected = expected["input_ids"]
    expected_text = hf.apply_chat_template(messages, tools=QWEN3_TOOLS, add_generation_prompt=True,
                                           enable_thinking=False, tokenize=False)
    assert "<tool_call>" in expected_text and "<think>\n\n</think>" in expected_text

    def turn(m):
        out = pb.ChatMessage(role=m["role"], content=m["content"])
        for c in m.get("tool_calls", []):
            out.tool_calls.add(name=c["function"]["name"],
                               arguments_json=jsonlib.dumps(c["function"]["arguments"]))
        return out

    chat = pb.ChatMessages(messages=[turn(m) for m in messages],
                           tools_json=[jsonlib.dumps(t) for t in QWEN3_TOOLS],
                           template_kwargs_json=jsonlib.dumps({"enable_thinking": False}))
    got = stub.Tokenize(pb.TokenizeRequest(chat=chat), timeout=TIMEOUT)
    assert list(got.token_ids) == list(expected)
    # A generation from the same template (a short conversation: the tool preamble alone
    # outgrows the tiny model's 512-token context).
    short = [{"role": "user", "content": "Hi!"}]
    expected_short = hf.apply_chat_template(short, add_generation_prompt=True,
                                            enable_thinking=False, tokenize=True)
    if hasattr(expected_short, "keys"):
        expected_short = expected_short["input_ids"]
    ids, _, responses = generate(stub, pb.GenerateRequest(
        chat=pb.ChatMessages(messages=[turn(m) for m in short],
                             template_kwargs_json=jsonlib.dumps({"enable_thinking": False})),
        stopping=pb.StoppingCriteria(max_tokens=4, ignore_eos=True)))
    assert len(ids) == 4 and responses[-1].usage.prompt_tokens == len(expected_short)

    # Bad JSON text is named by its field.
    bad = pb.ChatMessages(messages=[pb.ChatMessage(role="user", content="hi")], tools_json=["{"])
    with pytest.raises(grpc.RpcError) as invalid:
        stub.Tokenize(pb.TokenizeRequest(chat=bad), timeout=TIMEOUT)
    assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "chat.tools_json[0]" in invalid.value.details()
    worker.stop()


def test_a_templates_refusal_reaches_the_client_with_its_message(start_worker, pb):
    worker = start_worker("mistralchat", "--kv_blocks=256")
    stub = worker.stub()
    same_role_twice = pb.ChatMessages(messages=[pb.ChatMessage(role="user", content="a"),
                                                pb.ChatMessage(role="user", content="b")])
    for call in (lambda: stub.Tokenize(pb.TokenizeRequest(chat=same_role_twice), timeout=TIMEOUT),
                 lambda: generate(stub, pb.GenerateRequest(chat=same_role_twice))):
        with pytest.raises(grpc.RpcError) as refused:
            call()
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "Conversation roles must alternate user/assistant/user/assistant/..." in \
            refused.value.details()
    worker.stop()


def test_a_template_ember_cannot_parse_refuses_chat_and_serves_prompts(start_worker, pb):
    worker = start_worker("badchat", "--kv_blocks=256")
    stub = worker.stub()
    assert not stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=TIMEOUT).chat_template
    chat = pb.ChatMessages(messages=[pb.ChatMessage(role="user", content="hi")])
    for call in (lambda: stub.Tokenize(pb.TokenizeRequest(chat=chat), timeout=TIMEOUT),
                 lambda: generate(stub, pb.GenerateRequest(chat=chat))):
        with pytest.raises(grpc.RpcError) as refused:
            call()
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        details = refused.value.details()
        assert "include" in details and "line 2" in details and "send a text prompt" in details, \
            details
    ids, _, _ = generate(stub, pb.GenerateRequest(
        prompt="Hello", stopping=pb.StoppingCriteria(max_tokens=3, ignore_eos=True)))
    assert len(ids) == 3
    worker.stop()


def test_stop_string_ends_the_stream_before_it(stub, pb, tiny_dir):
    tok = hf_tokenizer(tiny_dir)
    base = pb.GenerateRequest(prompt="Grüße aus", stopping=pb.StoppingCriteria(max_tokens=40, ignore_eos=True))
    ids, full_text, _ = generate(stub, base)
    # A stop string from the middle of the greedy output (at least two characters).
    cut = len(full_text) // 2
    stop = full_text[cut:cut + 3]
    assert len(stop) >= 2
    request = pb.GenerateRequest()
    request.CopyFrom(base)
    request.stopping.stop.append(stop)
    stop_ids, stop_text, responses = generate(stub, request)
    assert responses[-1].finish_reason == pb.FINISH_REASON_STOP_SEQUENCE
    assert stop_text == full_text[:full_text.index(stop)]
    assert stop_ids == ids[:len(stop_ids)]
    assert stop in tok.decode(stop_ids, skip_special_tokens=True)


def test_stop_token_ids_and_min_tokens(stub, pb):
    base_ids, _, _ = generate(stub, pb.GenerateRequest(
        token_ids=pb.TokenIds(ids=[5, 6, 7]), stopping=pb.StoppingCriteria(max_tokens=20, ignore_eos=True)))
    stop_at = base_ids[3]
    first = base_ids.index(stop_at)
    ids, _, responses = generate(stub, pb.GenerateRequest(
        token_ids=pb.TokenIds(ids=[5, 6, 7]),
        stopping=pb.StoppingCriteria(max_tokens=20, ignore_eos=True, stop_token_ids=[stop_at])))
    assert ids == base_ids[:first + 1]
    assert responses[-1].finish_reason == pb.FINISH_REASON_STOP
    # min_tokens: the stop token cannot come before it; greedy picks the next best instead.
    ids, _, responses = generate(stub, pb.GenerateRequest(
        token_ids=pb.TokenIds(ids=[5, 6, 7]),
        stopping=pb.StoppingCriteria(max_tokens=20, min_tokens=first + 2, ignore_eos=True,
                                     stop_token_ids=[stop_at])))
    assert stop_at not in ids[:first + 2]


def test_logprobs_are_normalized_and_ranked(stub, pb):
    ids, _, responses = generate(stub, pb.GenerateRequest(
        token_ids=pb.TokenIds(ids=[11, 12, 13]), top_logprobs=5,
        stopping=pb.StoppingCriteria(max_tokens=6, ignore_eos=True)))
    logprobs = [lp for r in responses for lp in r.logprobs]
    assert len(logprobs) == len(ids) == 6
    for token, lp in zip(ids, logprobs):
        assert lp.chosen.token_id == token
        assert len(lp.top) == 5
        values = [t.logprob for t in lp.top]
        assert values == sorted(values, reverse=True) and values[0] <= 0
        assert lp.top[0].token_id == token  # greedy picks the most likely
        assert lp.chosen.logprob == pytest.approx(values[0], abs=1e-6)


def test_penalties_change_the_output_deterministically(stub, pb):
    def run(**sampling):
        return generate(stub, pb.GenerateRequest(
            token_ids=pb.TokenIds(ids=[21, 22, 23]), sampling=pb.SamplingParams(**sampling),
            stopping=pb.StoppingCriteria(max_tokens=30, ignore_eos=True)))[0]
    plain = run()
    penalized = run(repetition_penalty=3.0, presence_penalty=2.0)
    assert penalized == run(repetition_penalty=3.0, presence_penalty=2.0)
    assert penalized != plain
    # A strong presence penalty makes repeats rarer than in the plain greedy output.
    assert len(set(penalized)) >= len(set(plain))


# --- batching ----------------------------------------------------------------------------------

def mixed_requests(pb, count: int, vocab: int = 1000) -> list:
    rng = random.Random(1234)
    requests = []
    for i in range(count):
        length = rng.choice([1, 3, 17, 64, 65, 150, 300])  # chunked prefill is 64 tokens
        sampling = pb.SamplingParams()
        kind = i % 4
        if kind == 1:
            sampling = pb.SamplingParams(temperature=0.8, top_k=50, seed=1000 + i)
        elif kind == 2:
            sampling = pb.SamplingParams(temperature=1.2, top_p=0.9, min_p=0.05, seed=2000 + i)
        elif kind == 3:
            sampling = pb.SamplingParams(frequency_penalty=0.5, repetition_penalty=1.3)
        requests.append(pb.GenerateRequest(
            request_id=f"mix-{i}", token_ids=pb.TokenIds(ids=[rng.randrange(vocab) for _ in range(length)]),
            sampling=sampling, top_logprobs=2 if i % 5 == 0 else 0,
            stopping=pb.StoppingCriteria(max_tokens=rng.randint(4, 40), ignore_eos=True)))
    return requests


def test_32_concurrent_requests_equal_each_alone(tiny, stub, pb):
    requests = mixed_requests(pb, 32)
    alone = [generate(stub, r)[0] for r in requests]
    barrier = threading.Barrier(len(requests))

    def together(request):
        barrier.wait(TIMEOUT)
        return generate(stub, request)[0]

    with ThreadPoolExecutor(len(requests)) as pool:
        concurrent = list(pool.map(together, requests))
    for request, a, c in zip(requests, alone, concurrent):
        assert c == a, f"{request.request_id}: concurrent output differs from alone"
        assert len(c) == request.stopping.max_tokens


# --- malformed requests ------------------------------------------------------------------------

@pytest.mark.parametrize("build, field", [
    (lambda pb: pb.GenerateRequest(), "input"),
    (lambda pb: pb.GenerateRequest(prompt=""), "prompt"),
    (lambda pb: pb.GenerateRequest(token_ids=pb.TokenIds()), "token_ids.ids"),
    (lambda pb: pb.GenerateRequest(token_ids=pb.TokenIds(ids=[1, 1000])), "token_ids.ids[1]"),
    (lambda pb: pb.GenerateRequest(token_ids=pb.TokenIds(ids=[-1])), "token_ids.ids[0]"),
    (lambda pb: pb.GenerateRequest(chat=pb.ChatMessages()), "chat.messages"),
    (lambda pb: pb.GenerateRequest(prompt="hi", sampling=pb.SamplingParams(temperature=float("nan"))),
     "sampling.temperature"),
    (lambda pb: pb.GenerateRequest(prompt="hi", sampling=pb.SamplingParams(temperature=-0.5)),
     "sampling.temperature"),
    (lambda pb: pb.GenerateRequest(prompt="hi", sampling=pb.SamplingParams(temperature=2e6)),
     "sampling.temperature"),
    (lambda pb: pb.GenerateRequest(prompt="hi", sampling=pb.SamplingParams(top_p=0)), "sampling.top_p"),
    (lambda pb: pb.GenerateRequest(prompt="hi", sampling=pb.SamplingParams(top_p=1.5)), "sampling.top_p"),
    (lambda pb: pb.GenerateRequest(prompt="hi", sampling=pb.SamplingParams(top_k=-1)), "sampling.top_k"),
    (lambda pb: pb.GenerateRequest(prompt="hi", sampling=pb.SamplingParams(min_p=2)), "sampling.min_p"),
    (lambda pb: pb.GenerateRequest(prompt="hi", sampling=pb.SamplingParams(repetition_penalty=0)),
     "sampling.repetition_penalty"),
    (lambda pb: pb.GenerateRequest(prompt="hi", sampling=pb.SamplingParams(presence_penalty=float("inf"))),
     "sampling.presence_penalty"),
    (lambda pb: pb.GenerateRequest(prompt="hi", stopping=pb.StoppingCriteria(max_tokens=0)), "stopping.max_tokens"),
    (lambda pb: pb.GenerateRequest(prompt="hi", stopping=pb.StoppingCriteria(max_tokens=-3)), "stopping.max_tokens"),
    (lambda pb: pb.GenerateRequest(prompt="hi", stopping=pb.StoppingCriteria(max_tokens=600)),
     "stopping.max_tokens"),
    (lambda pb: pb.GenerateRequest(token_ids=pb.TokenIds(ids=[3] * 512)), "prompt"),
    (lambda pb: pb.GenerateRequest(prompt="hi", stopping=pb.StoppingCriteria(max_tokens=4, min_tokens=5)),
     "stopping.min_tokens"),
    (lambda pb: pb.GenerateRequest(prompt="hi", stopping=pb.StoppingCriteria(stop=[""])), "stopping.stop[0]"),
    (lambda pb: pb.GenerateRequest(prompt="hi", stopping=pb.StoppingCriteria(stop_token_ids=[5000])),
     "stopping.stop_token_ids[0]"),
    (lambda pb: pb.GenerateRequest(prompt="hi", top_logprobs=21), "top_logprobs"),
    (lambda pb: pb.GenerateRequest(chat=pb.ChatMessages(messages=[pb.ChatMessage(role="", content="x")])),
     "chat.messages[0].role"),
])
def test_malformed_request_is_invalid_argument_naming_the_field(stub, pb, build, field):
    with pytest.raises(grpc.RpcError) as err:
        list(stub.Generate(build(pb), timeout=TIMEOUT))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert err.value.details().startswith(field + ":"), err.value.details()


def test_invalid_utf8_is_invalid_argument_naming_the_field(tiny, pb):
    # grpcio will not serialize invalid UTF-8 in a string field, so the request is built
    # as bytes: a valid one with a placeholder, the placeholder's bytes then broken.
    request = pb.GenerateRequest(prompt="ab\x01\x01cd").SerializeToString()
    broken = request.replace(b"\x01\x01", b"\xc3\x28")
    with tiny.channel() as channel:
        call = channel.unary_stream("/ember.v1.Inference/Generate", request_serializer=lambda b: b,
                                    response_deserializer=lambda b: b)
        with pytest.raises(grpc.RpcError) as err:
            list(call(broken, timeout=TIMEOUT))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert "prompt" in err.value.details() and "UTF-8" in err.value.details()


@pytest.mark.parametrize("body", [b"\x0a\xff\xff\xff\xff", b"\xff\xff\xff", b"\x0a\x05ab"],
                         ids=["bad-length", "garbage", "truncated"])
@pytest.mark.parametrize("method,streaming", [("Generate", True), ("Tokenize", False),
                                              ("GetModelInfo", False), ("Abort", False)])
def test_a_body_that_is_no_message_is_invalid_argument(tiny, method, streaming, body):
    """Not UNIMPLEMENTED with no message, which gRPC's generated handlers would answer."""
    with tiny.channel() as channel:
        make = channel.unary_stream if streaming else channel.unary_unary
        call = make(f"/ember.v1.Inference/{method}", request_serializer=lambda b: b,
                    response_deserializer=lambda b: b)
        with pytest.raises(grpc.RpcError) as err:
            result = call(body, timeout=TIMEOUT)
            if streaming:
                list(result)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (err.value.code(), err.value.details())
    assert err.value.details() == "the request is not a valid message"


def test_a_worker_serving_on_the_cpu_maps_no_cublas(tiny):
    """cuBLAS is opened only when the CUDA backend starts (kernels/cuda/cublas_api.h): mapping
    it before main() cost every start 0.17 s here."""
    maps = Path(f"/proc/{tiny.proc.pid}/maps").read_text()
    assert "libcublas" not in maps, [line for line in maps.splitlines() if "cublas" in line][:3]


def test_duplicate_running_request_id_is_already_exists(start_worker, pb):
    worker = start_worker("slow", "--kv_blocks=512")
    stub = worker.stub()
    long = pb.GenerateRequest(request_id="dup", token_ids=pb.TokenIds(ids=[1, 2, 3]),
                              stopping=pb.StoppingCriteria(max_tokens=2000, ignore_eos=True))
    stream = stub.Generate(long, timeout=TIMEOUT)
    next(stream)
    with pytest.raises(grpc.RpcError) as err:
        list(stub.Generate(long, timeout=TIMEOUT))
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    stream.cancel()
    assert worker.stop() == 0


# --- cancellation, Abort, deadlines ------------------------------------------------------------

@pytest.fixture(scope="module")
def slow(start_worker):
    """SmolLM2-135M's shape on the CPU: a 2000-token generation takes far longer than any
    test waits, so cancellation always lands mid-stream."""
    return start_worker("slow", "--kv_blocks=1024", "--max_batch=8")


def long_request(pb, request_id: str, max_tokens: int = 2000):
    return pb.GenerateRequest(request_id=request_id, token_ids=pb.TokenIds(ids=list(range(1, 40))),
                              stopping=pb.StoppingCriteria(max_tokens=max_tokens, ignore_eos=True))


def test_client_cancel_frees_the_blocks(slow, pb):
    before = slow.metrics()
    stream = slow.stub().Generate(long_request(pb, "cancel-me"), timeout=TIMEOUT)
    next(stream)
    assert slow.metrics()["ember_kv_blocks_used"] > 0
    stream.cancel()
    slow.wait_metric('ember_requests_total{outcome="cancelled"}',
                     lambda v: v == before['ember_requests_total{outcome="cancelled"}'] + 1)
    slow.wait_metric("ember_kv_blocks_used", lambda v: v == 0)
    slow.wait_metric("ember_requests_in_flight", lambda v: v == 0)


def test_abort_ends_the_stream_and_frees_the_blocks(slow, pb):
    stub = slow.stub()
    before = slow.metrics()['ember_requests_total{outcome="aborted"}']
    stream = stub.Generate(long_request(pb, "abort-me"), timeout=TIMEOUT)
    first = next(stream)
    assert stub.Abort(pb.AbortRequest(request_id="abort-me"), timeout=TIMEOUT).found
    rest = list(stream)
    assert rest[-1].finish_reason == pb.FINISH_REASON_ABORTED
    assert 0 < rest[-1].usage.completion_tokens < 2000
    assert len(first.token_ids) + sum(len(r.token_ids) for r in rest) == rest[-1].usage.completion_tokens
    assert not stub.Abort(pb.AbortRequest(request_id="abort-me"), timeout=TIMEOUT).found
    assert not stub.Abort(pb.AbortRequest(request_id="never-seen"), timeout=TIMEOUT).found
    slow.wait_metric('ember_requests_total{outcome="aborted"}', lambda v: v == before + 1)
    slow.wait_metric("ember_kv_blocks_used", lambda v: v == 0)


def test_deadline_stops_generation(slow, pb):
    before = slow.metrics()['ember_requests_total{outcome="deadline"}']
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as err:
        list(slow.stub().Generate(long_request(pb, "deadline-me"), timeout=1.5))
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 10
    slow.wait_metric('ember_requests_total{outcome="deadline"}', lambda v: v == before + 1)
    slow.wait_metric("ember_kv_blocks_used", lambda v: v == 0)


# --- overload ----------------------------------------------------------------------------------

def test_full_queue_is_resource_exhausted(start_worker, pb):
    # One sequence at a time and two waiting: the fourth request is refused at once.
    worker = start_worker("slow", "--max_batch=1", "--max_queue=2", "--kv_blocks=256")
    stub = worker.stub()
    running = stub.Generate(long_request(pb, "run"), timeout=TIMEOUT)
    next(running)
    queued = [stub.Generate(long_request(pb, f"queued-{i}"), timeout=TIMEOUT) for i in range(2)]
    worker.wait_metric("ember_queue_depth", lambda v: v == 2)
    with pytest.raises(grpc.RpcError) as err:
        list(stub.Generate(long_request(pb, "one-too-many"), timeout=TIMEOUT))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "max_queue 2" in err.value.details()
    # A request that could never fit the KV cache is refused with its numbers.
    with pytest.raises(grpc.RpcError) as err:
        list(stub.Generate(long_request(pb, "too-big", max_tokens=8000), timeout=TIMEOUT))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "KV cache blocks" in err.value.details()
    assert worker.metrics()['ember_requests_total{outcome="rejected"}'] == 2
    for call in [running, *queued]:
        call.cancel()
    worker.wait_metric("ember_queue_depth", lambda v: v == 0)
    worker.wait_metric("ember_requests_in_flight", lambda v: v == 0)
    assert worker.stop() == 0


# --- drain, health, reflection, ports ---------------------------------------------------------

def health_status(channel, service: str = "") -> int:
    return health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT).status


def test_sigterm_drain_finishes_in_flight_requests(start_worker, pb):
    worker = start_worker("slow", "--max_batch=4", "--kv_blocks=512", "--drain_timeout_s=60")
    channel = worker.channel()
    stub = worker.stub(channel)
    requests = [long_request(pb, f"drain-{i}", max_tokens=24 + 8 * i) for i in range(4)]
    streams = [stub.Generate(r, timeout=TIMEOUT) for r in requests]
    firsts = [next(s) for s in streams]
    worker.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 10
    while health_status(channel) != health_pb2.HealthCheckResponse.NOT_SERVING:
        assert time.monotonic() < deadline, "health did not turn NOT_SERVING after SIGTERM"
        time.sleep(0.02)
    assert health_status(channel, "ember.v1.Inference") == health_pb2.HealthCheckResponse.NOT_SERVING
    with pytest.raises(grpc.RpcError) as err:
        list(stub.Generate(long_request(pb, "after-sigterm", 5), timeout=TIMEOUT))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    for request, first, stream in zip(requests, firsts, streams):
        rest = list(stream)
        ids = list(first.token_ids) + [t for r in rest for t in r.token_ids]
        assert len(ids) == request.stopping.max_tokens, request.request_id
        assert rest[-1].finish_reason == pb.FINISH_REASON_LENGTH
    assert worker.proc.wait(TIMEOUT) == 0
    assert worker.log_entries("stopped")[-1]["drained"] is True


def test_drain_timeout_aborts_what_is_left_and_exits_0(start_worker, pb):
    worker = start_worker("slow", "--kv_blocks=512", "--drain_timeout_s=1")
    stream = worker.stub().Generate(long_request(pb, "too-long-for-drain"), timeout=TIMEOUT)
    next(stream)
    worker.proc.send_signal(signal.SIGTERM)
    rest = list(stream)
    assert rest[-1].finish_reason == pb.FINISH_REASON_ABORTED
    assert worker.proc.wait(TIMEOUT) == 0
    assert worker.log_entries("stopped")[-1]["drained"] is False


def test_health_not_serving_while_loading_then_serving(start_worker, s3, pb):
    # The fault proxy holds the link to 2 MB/s: the 6 MB of weights take about 3 s, so the
    # load is visibly in progress.
    from fault_proxy import FaultProxy, Faults
    with FaultProxy(s3.endpoint, Faults(), bytes_per_second=2e6) as proxy:
        worker = start_worker("tiny", endpoint=proxy.endpoint, wait_serving=False)
        channel = worker.channel()
        assert health_status(channel) == health_pb2.HealthCheckResponse.NOT_SERVING
        assert health_status(channel, "ember.v1.Inference") == health_pb2.HealthCheckResponse.NOT_SERVING
        with pytest.raises(grpc.RpcError) as err:
            worker.stub(channel).GetModelInfo(pb.GetModelInfoRequest(), timeout=TIMEOUT)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        # A Generate sent during the load runs while the weights arrive: the engine is built
        # on their places before the stream ends, the request is admitted (in flight) while
        # health still says NOT_SERVING, and it streams once the last layer has landed.
        request = pb.GenerateRequest(prompt="hello", stopping=pb.StoppingCriteria(max_tokens=4, ignore_eos=True))
        with ThreadPoolExecutor(1) as pool:
            during = pool.submit(generate, worker.stub(channel), request)
            worker.wait_metric("ember_requests_in_flight", lambda v: v == 1)
            assert health_status(channel) == health_pb2.HealthCheckResponse.NOT_SERVING
            assert worker.log_entries("computing while loading")
            assert not worker.log_entries("serving")
            ids, _, responses = during.result(timeout=TIMEOUT)
        assert len(ids) == 4 and responses[-1].finish_reason == pb.FINISH_REASON_LENGTH
        assert health_status(channel) == health_pb2.HealthCheckResponse.SERVING
        # The same greedy request once the model is loaded gives the same tokens.
        assert generate(worker.stub(channel), request)[0] == ids
        # On the backend asked for (the emulated build runs this test on its CUDA backend).
        assert worker.log_entries("serving")[0]["backend"] == os.environ.get("EMBER_WORKER_BACKEND", "cpu")
        assert health_status(channel, "ember.v1.Inference") == health_pb2.HealthCheckResponse.SERVING
        # The warm-up did not delay the waiting request: it was skipped, or (when the request
        # finished before the load's bookkeeping did) it ran only after the first token.
        deadline = time.monotonic() + 10
        while not worker.log_entries("coldstart"):
            assert time.monotonic() < deadline, "no coldstart line after the first token"
            time.sleep(0.05)
        record = worker.log_entries("coldstart")[0]
        phases = {p["name"]: p for p in record["phases"]}
        assert "engine" in phases and "first_request" in phases
        if "warmup" in phases:
            assert phases["warmup"]["start_s"] >= record["first_token_s"], record
        else:
            assert worker.log_entries("warm-up skipped")
        assert worker.stop() == 0


def test_reflection_lists_the_services(tiny):
    with tiny.channel() as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = stub.ServerReflectionInfo(iter([
            reflection_pb2.ServerReflectionRequest(list_services=""),
            reflection_pb2.ServerReflectionRequest(file_containing_symbol="ember.v1.Inference"),
        ]), timeout=TIMEOUT)
        listing, descriptor = list(responses)
    names = {s.name for s in listing.list_services_response.service}
    assert {"ember.v1.Inference", "grpc.health.v1.Health"} <= names
    assert descriptor.file_descriptor_response.file_descriptor_proto  # a generic client can decode


def test_model_info(stub, pb):
    info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=TIMEOUT)
    assert info.architecture == "LlamaForCausalLM"
    assert info.vocab_size == 1000 and info.context_length == 512
    assert info.source.rstrip("/") == "s3://models/tiny" and info.backend == "cpu"
    assert info.chat_template and list(info.eos_token_ids) == [2]
    assert 0 < info.timings.headers_s <= info.timings.weights_s <= info.timings.serving_s


def test_knative_port_env_and_env_flags(start_worker, s3, pb):
    from objstore import free_port
    port = free_port()
    worker = start_worker("tiny", env={"PORT": str(port), "EMBER_MAX_BATCH": "3", "EMBER_MAX_QUEUE": "5"})
    assert worker.grpc_port == port
    info = worker.stub().GetModelInfo(pb.GetModelInfoRequest(), timeout=TIMEOUT)
    assert info.max_batch == 3
    assert worker.stop() == 0


def test_request_log_never_contains_the_prompt(tiny, stub, pb):
    secret = "zebra-unicorn-prompt-text"
    generate(stub, pb.GenerateRequest(request_id="log-1", prompt=secret,
                                      stopping=pb.StoppingCriteria(max_tokens=2, ignore_eos=True)))
    deadline = time.monotonic() + 10
    while not [e for e in tiny.log_entries("finished") if e.get("request_id") == "log-1"]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    entry = [e for e in tiny.log_entries("finished") if e.get("request_id") == "log-1"][0]
    assert entry["prompt_tokens"] > 0 and entry["completion_tokens"] == 2
    assert entry["finish_reason"] == "length"
    assert secret not in tiny.log_text()


def test_grpc_port_speaks_h2c_with_prior_knowledge(tiny):
    # What Kubernetes' appProtocol kubernetes.io/h2c promises to proxies (the KEDA interceptor,
    # Knative's activator): cleartext HTTP/2 without an upgrade. curl sends one gRPC health
    # check as a raw HTTP/2 POST (a 5-byte frame header and an empty HealthCheckRequest).
    import shutil
    import subprocess
    curl = shutil.which("curl")
    if curl is None or "HTTP2" not in subprocess.run([curl, "--version"], capture_output=True, text=True).stdout:
        pytest.skip("curl with HTTP/2 support is not installed")
    out = subprocess.run(
        [curl, "-sS", "--http2-prior-knowledge", "-X", "POST", "--max-time", "10",
         "-H", "content-type: application/grpc", "-H", "te: trailers", "--data-binary", "@-",
         "-D", "-", "-o", "/dev/null", f"http://{tiny.address}/grpc.health.v1.Health/Check"],
        input=b"\x00\x00\x00\x00\x00", capture_output=True, timeout=30)
    headers = out.stdout.decode().lower()
    assert out.returncode == 0, out.stderr.decode()
    assert headers.startswith("http/2 200"), headers
    assert "content-type: application/grpc" in headers
    assert "grpc-status: 0" in headers  # in the trailers, which -D prints too


# --- cold start and the node cache ------------------------------------------------------------

def first_token(worker, pb):
    ids, _, _ = generate(worker.stub(), pb.GenerateRequest(
        token_ids=pb.TokenIds(ids=[1, 2, 3]), stopping=pb.StoppingCriteria(max_tokens=2, ignore_eos=True)))
    assert len(ids) == 2
    deadline = time.monotonic() + 10
    while not worker.log_entries("coldstart"):
        assert time.monotonic() < deadline, "no coldstart line after the first token"
        time.sleep(0.05)
    return worker.log_entries("coldstart")[0]


def test_coldstart_line_and_metrics_after_the_first_token(start_worker, pb, tmp_path):
    worker = start_worker("tiny")
    record = first_token(worker, pb)
    phases = {p["name"]: p for p in record["phases"]}
    assert set(phases) == {"exec", "listening", "backend", "headers", "files", "weights", "kv_cache",
                           "engine", "warmup", "first_request"}
    for p in record["phases"]:
        assert 0 <= p["start_s"] <= p["end_s"], p
    # The timeline starts when the process did: what ran before main() is its first phase,
    # and every moment from the last weight byte to SERVING belongs to a named phase.
    assert phases["exec"]["start_s"] == 0 and phases["exec"]["end_s"] == phases["listening"]["start_s"]
    assert phases["headers"]["end_s"] <= phases["files"]["start_s"] <= phases["files"]["end_s"] <= phases["kv_cache"]["start_s"]
    # The engine is built on the weights' places once the config is parsed and the KV cache
    # allocated, while the weights may still stream (computing while they arrive); the
    # warm-up runs once both the weights and the engine are there.
    assert max(phases["files"]["end_s"], phases["kv_cache"]["end_s"]) <= phases["engine"]["start_s"]
    assert phases["headers"]["end_s"] <= record["first_byte_s"] <= phases["weights"]["end_s"]
    assert phases["headers"]["end_s"] <= phases["kv_cache"]["start_s"]
    assert max(phases["engine"]["end_s"], phases["weights"]["end_s"]) <= phases["warmup"]["start_s"]
    assert phases["warmup"]["end_s"] <= record["serving_s"] <= record["first_token_s"]
    assert record["first_token_s"] == phases["first_request"]["end_s"]
    assert record["cache"] == "disabled" and record["weight_bytes"] > 0
    metrics = worker.metrics()
    assert metrics['ember_coldstart_phase_seconds{phase="first_token"}'] == pytest.approx(record["first_token_s"])
    assert metrics['ember_coldstart_phase_seconds{phase="serving"}'] == pytest.approx(record["serving_s"])
    # A second request does not log another cold start.
    first_token(worker, pb)
    assert len(worker.log_entries("coldstart")) == 1
    # The report tool draws it.
    log = tmp_path / "worker.log"
    log.write_text(worker.log_text(limit=None))
    import subprocess
    import sys
    out = subprocess.run([sys.executable, str(REPO / "tools" / "coldstart-report"), str(log), "--out",
                          str(tmp_path / "t.svg")], capture_output=True, text=True, check=True)
    assert f"zero to first token: {record['first_token_s']:.3f} s" in out.stdout
    svg = (tmp_path / "t.svg").read_text()
    assert svg.count("<rect") == 1 + len(record["phases"])  # background + one bar per phase


def test_node_cache_filled_then_hit(start_worker, pb, tmp_path):
    cache = tmp_path / "cache"
    outcomes = []
    for _ in range(2):
        worker = start_worker("tiny", f"--cache_dir={cache}")
        outcomes.append(first_token(worker, pb)["cache"])
        assert worker.stop() == 0
    assert outcomes == ["filled", "hit"]
    # A copy that matches the listing but is corrupt: the worker loads it, fails, and streams
    # from the source (config, tokenizer and KV cache are prepared a second time).
    [shard] = [p for p in cache.rglob("model.safetensors")]
    with open(shard, "r+b") as f:
        f.write(b"\xff" * 7 + b"\x7f")
    worker = start_worker("tiny", f"--cache_dir={cache}")
    assert first_token(worker, pb)["cache"] == "filled"
    assert worker.stop() == 0
