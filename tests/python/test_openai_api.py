"""OpenAI-compatible API driven with the official `openai` SDK: shapes, streaming, sampling
options, model/adapter selection and error mapping."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from conftest import ALICE, BOB
from olutil import REPO

PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "List three colors.",
]


def chat(client, model, content, **kw):
    kw.setdefault("max_tokens", 12)
    kw.setdefault("temperature", 0)
    return client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": content}], **kw
    )


def stream_chat(client, model, content, **kw):
    kw.setdefault("max_tokens", 12)
    kw.setdefault("temperature", 0)
    return list(
        client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": content}], stream=True, **kw
        )
    )


def chunks_text(chunks) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


# --- health, models -------------------------------------------------------------------------


def test_health_ready(server):
    assert server.http.get("/health").status_code == 200
    assert server.http.get("/ready").status_code == 200
    m = server.http.get("/metrics")
    assert m.status_code == 200
    assert "openlora_" in m.text


def test_models_list(server, client, base_model):
    models = client.models.list()
    ids = [m.id for m in models.data]
    assert ids[0] == base_model
    assert models.data[0].object == "model"
    for name in server.demo_adapters:
        assert name in ids, f"adapter {name} missing from /v1/models: {ids}"
    for m in models.data[1:]:
        assert m.owned_by == "openlora"
        assert getattr(m, "parent", None) == base_model, m
    raw = server.http.get("/v1/models", headers={"Authorization": f"Bearer {ALICE}"}).json()
    assert raw["object"] == "list"


# --- chat -----------------------------------------------------------------------------------


def test_readme_example_answers_like_the_f32_model(client, base_model):
    """The README's first example on default flags (the GGUF's Q4_1 weights, default activations):
    the answer names Paris, as the f32 transformers reference does."""
    r = chat(client, base_model, "What is the capital of France?", max_tokens=24)
    assert "Paris" in r.choices[0].message.content, r.choices[0].message.content


def test_chat_non_streaming_shape(client, base_model):
    r = chat(client, base_model, PROMPTS[0])
    assert r.object == "chat.completion"
    assert r.id
    assert r.model
    assert len(r.choices) == 1
    c = r.choices[0]
    assert c.index == 0
    assert c.message.role == "assistant"
    assert isinstance(c.message.content, str) and c.message.content
    assert c.finish_reason in ("stop", "length")
    u = r.usage
    assert u.prompt_tokens > 0
    assert 0 < u.completion_tokens <= 12
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens
    if c.finish_reason == "length":
        assert u.completion_tokens == 12


def test_chat_stream_equals_non_stream(client, base_model):
    ref = chat(client, base_model, PROMPTS[1], max_tokens=16)
    chunks = stream_chat(
        client, base_model, PROMPTS[1], max_tokens=16, stream_options={"include_usage": True}
    )
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1, "all chunks of one stream share an id"
    first = next(c for c in chunks if c.choices)
    assert first.choices[0].delta.role == "assistant"
    content_chunks = [c for c in chunks if c.choices]
    finishes = [c.choices[0].finish_reason for c in content_chunks if c.choices[0].finish_reason]
    assert finishes == [ref.choices[0].finish_reason], finishes
    assert content_chunks[-1].choices[0].finish_reason is not None
    assert chunks_text(chunks) == ref.choices[0].message.content
    # include_usage: one final chunk with no choices and the usage
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert last.usage.prompt_tokens == ref.usage.prompt_tokens
    assert last.usage.completion_tokens == ref.usage.completion_tokens
    assert all(c.usage is None for c in chunks[:-1])


def test_chat_stream_raw_sse_done(server, base_model):
    body = {
        "model": base_model,
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 3,
        "stream": True,
    }
    with server.http.stream(
        "POST", "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {ALICE}"}
    ) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        data = [l[len("data:"):].strip() for l in r.iter_lines() if l.startswith("data:")]
    assert data[-1] == "[DONE]"
    for d in data[:-1]:
        assert json.loads(d)["object"] == "chat.completion.chunk"


def test_chat_content_parts_equal_string(client, base_model):
    a = chat(client, base_model, PROMPTS[2])
    b = client.chat.completions.create(
        model=base_model,
        messages=[{"role": "user", "content": [{"type": "text", "text": PROMPTS[2]}]}],
        max_tokens=12,
        temperature=0,
    )
    assert a.choices[0].message.content == b.choices[0].message.content


def test_chat_system_and_multi_turn(client, base_model):
    r = client.chat.completions.create(
        model=base_model,
        messages=[
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "Name a fruit."},
        ],
        max_tokens=6,
        temperature=0,
        user="tester",
    )
    assert r.choices[0].message.content


def test_max_completion_tokens(client, base_model):
    r = client.chat.completions.create(
        model=base_model,
        messages=[{"role": "user", "content": "Count from 1 to 100 separated by commas."}],
        max_completion_tokens=5,
        temperature=0,
    )
    assert r.usage.completion_tokens <= 5
    assert r.choices[0].finish_reason == "length"


def test_sampling_params_accepted(client, base_model):
    r = chat(client, base_model, PROMPTS[0], temperature=0.7, top_p=0.9, presence_penalty=0.5,
             frequency_penalty=0.5, seed=7, max_tokens=6)
    assert r.choices[0].finish_reason in ("stop", "length")


def test_seed_reproducible(client, base_model):
    kw = dict(temperature=1.0, max_tokens=12)
    a = chat(client, base_model, PROMPTS[1], seed=1234, **kw).choices[0].message.content
    b = chat(client, base_model, PROMPTS[1], seed=1234, **kw).choices[0].message.content
    assert a == b
    others = {chat(client, base_model, PROMPTS[1], seed=s, **kw).choices[0].message.content for s in (1, 2)}
    assert len(others | {a}) > 1, "different seeds at temperature 1 all gave the same text"


def test_stop_string_not_included(client, base_model):
    prompt = "Count from 1 to 20 separated by commas."
    full = chat(client, base_model, prompt, max_tokens=24).choices[0].message.content
    assert "5" in full, f"prompt did not produce a count: {full!r}"
    stop = "5"
    expected = full[: full.index(stop)]
    r = chat(client, base_model, prompt, max_tokens=24, stop=[stop])
    assert r.choices[0].message.content == expected
    assert r.choices[0].finish_reason == "stop"
    s = stream_chat(client, base_model, prompt, max_tokens=24, stop=stop)
    assert chunks_text(s) == expected
    assert [c.choices[0].finish_reason for c in s if c.choices and c.choices[0].finish_reason] == ["stop"]


def test_chat_logprobs(client, base_model):
    r = chat(client, base_model, PROMPTS[0], max_tokens=6, logprobs=True, top_logprobs=3)
    lp = r.choices[0].logprobs
    assert lp is not None and lp.content
    assert len(lp.content) == r.usage.completion_tokens
    assert "".join(t.token for t in lp.content) == r.choices[0].message.content
    for t in lp.content:
        assert t.logprob <= 0
        assert len(t.top_logprobs) == 3
        # greedy: the chosen token is the most likely one
        assert t.logprob >= max(x.logprob for x in t.top_logprobs) - 1e-4
        assert all(x.logprob <= 0 for x in t.top_logprobs)


def test_chat_stream_logprobs_count_equals_usage(client, base_model):
    chunks = stream_chat(client, base_model, PROMPTS[2], max_tokens=8, logprobs=True, top_logprobs=2,
                         stream_options={"include_usage": True})
    n = sum(len(c.choices[0].logprobs.content) for c in chunks
            if c.choices and c.choices[0].logprobs and c.choices[0].logprobs.content)
    assert n == chunks[-1].usage.completion_tokens
    assert n > 0


# --- completions ----------------------------------------------------------------------------


def test_completion_string(client, base_model):
    r = client.completions.create(model=base_model, prompt="The capital of France is", max_tokens=8,
                                  temperature=0)
    assert r.object == "text_completion"
    assert len(r.choices) == 1 and r.choices[0].index == 0
    assert r.choices[0].text
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens > 0
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_completion_stream_equals_non_stream(client, base_model):
    kw = dict(model=base_model, prompt="Once upon a time", max_tokens=10, temperature=0)
    ref = client.completions.create(**kw)
    chunks = list(client.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == ref.choices[0].text
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == ref.usage.completion_tokens
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        ref.choices[0].finish_reason
    ]


def test_completion_list_of_prompts(client, base_model):
    prompts = ["The sky is", "One, two,"]
    r = client.completions.create(model=base_model, prompt=prompts, max_tokens=6, temperature=0)
    assert sorted(c.index for c in r.choices) == [0, 1]
    by_index = {c.index: c.text for c in r.choices}
    for i, p in enumerate(prompts):
        alone = client.completions.create(model=base_model, prompt=p, max_tokens=6, temperature=0)
        assert by_index[i] == alone.choices[0].text


def test_completion_token_ids(client, base_model):
    cases = json.loads((REPO / "tests/fixtures/tokenizer/smollm2_cases.json").read_text())["cases"]
    case = next(c for c in cases if c["text"].startswith("The quick brown fox"))
    a = client.completions.create(model=base_model, prompt=case["ids"], max_tokens=6, temperature=0)
    b = client.completions.create(model=base_model, prompt=case["text"], max_tokens=6, temperature=0)
    assert a.usage.prompt_tokens == len(case["ids"])
    assert a.choices[0].text == b.choices[0].text


def test_completion_logprobs(client, base_model):
    r = client.completions.create(model=base_model, prompt="The sky is", max_tokens=5, temperature=0,
                                  logprobs=2)
    lp = r.choices[0].logprobs
    assert lp is not None
    n = r.usage.completion_tokens
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == n
    assert "".join(lp.tokens) == r.choices[0].text
    assert all(x <= 0 for x in lp.token_logprobs)
    assert all(len(t) == 2 for t in lp.top_logprobs)
    if lp.text_offset is not None:
        assert len(lp.text_offset) == n


# --- adapters -------------------------------------------------------------------------------


def _greedy_outputs(client, model):
    return [chat(client, model, p, max_tokens=10).choices[0].message.content for p in PROMPTS]


def test_adapter_changes_output(server, client, base_model):
    assert server.demo_adapters, "no demo adapters were found"
    base = _greedy_outputs(client, base_model)
    for name in server.demo_adapters:
        out = _greedy_outputs(client, name)
        assert out != base, f"adapter {name} produced the same greedy output as the base model"
        qualified = chat(client, f"{base_model}:{name}", PROMPTS[0], max_tokens=10)
        assert qualified.choices[0].message.content == out[0]


def test_weighted_adapter_mix(server, client, base_model):
    name = server.demo_adapters[0]
    alone = chat(client, name, PROMPTS[0], max_tokens=10).choices[0].message.content
    mixed = chat(client, base_model, PROMPTS[0], max_tokens=10,
                 extra_body={"adapters": [{"id": name, "weight": 1.0}]})
    assert mixed.choices[0].message.content == alone
    if len(server.demo_adapters) >= 2:
        r = chat(client, base_model, PROMPTS[0], max_tokens=6, extra_body={
            "adapters": [{"id": n, "weight": 0.5} for n in server.demo_adapters[:2]]})
        assert r.choices[0].message.content
    with pytest.raises(openai.NotFoundError):
        chat(client, base_model, PROMPTS[0], max_tokens=2,
             extra_body={"adapters": [{"id": "no-such-adapter", "weight": 1.0}]})


# --- errors ---------------------------------------------------------------------------------


def _assert_error_shape(body: dict):
    err = body["error"]
    for k in ("message", "type", "param", "code"):
        assert k in err, f"error object lacks {k}: {body}"
    assert isinstance(err["message"], str) and err["message"]


def test_unknown_model_404(server, client):
    with pytest.raises(openai.NotFoundError) as e:
        chat(client, "no-such-model", "hi", max_tokens=2)
    _assert_error_shape(e.value.response.json())
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="no-such-model", prompt="hi", max_tokens=2)


def test_bad_temperature_400(client, base_model):
    with pytest.raises(openai.BadRequestError) as e:
        chat(client, base_model, "hi", temperature=-1)
    body = e.value.response.json()
    _assert_error_shape(body)
    assert body["error"]["param"] == "temperature"


def test_n_out_of_range_400(client, base_model):
    with pytest.raises(openai.BadRequestError):
        chat(client, base_model, "hi", n=129)


def test_bad_api_key_401(server, base_model):
    bad = server.client(api_key="sk-wrong")
    with pytest.raises(openai.AuthenticationError) as e:
        chat(bad, base_model, "hi", max_tokens=2)
    _assert_error_shape(e.value.response.json())
    r = server.http.post("/v1/chat/completions",
                         json={"model": base_model, "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 401, r.text
    # the second configured key works too
    assert chat(server.client(api_key=BOB), base_model, "hi", max_tokens=2).choices


def test_context_length_exceeded(client, base_model):
    with pytest.raises(openai.BadRequestError) as e:
        chat(client, base_model, "hello " * 9000, max_tokens=4)
    body = e.value.response.json()
    _assert_error_shape(body)
    assert body["error"]["code"] == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=base_model, prompt="hello " * 9000, max_tokens=4)
    assert e.value.response.json()["error"]["code"] == "context_length_exceeded"


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b"[]",
        b'{"messages": "nope"}',
        b'{"model": 5, "messages": []}',
        b'{"model": "x", "messages": [{"role": "user", "content": "hi"}], "max_tokens": -3}',
    ],
)
def test_malformed_chat_body_4xx_not_500(server, content):
    r = server.http.post("/v1/chat/completions", content=content,
                         headers={"Authorization": f"Bearer {ALICE}", "Content-Type": "application/json"})
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    if content == b"{not json":
        assert r.status_code == 400
        _assert_error_shape(r.json())


def test_malformed_completion_body_no_500(server, base_model):
    for body in (b"{", b'{"model": "%s"}' % base_model.encode(), b'{"model": "%s", "prompt": [[]]}' % base_model.encode()):
        r = server.http.post("/v1/completions", content=body,
                             headers={"Authorization": f"Bearer {ALICE}", "Content-Type": "application/json"})
        assert r.status_code < 500, (body, r.status_code, r.text)
    r = server.http.post("/v1/completions", content=b"{",
                         headers={"Authorization": f"Bearer {ALICE}", "Content-Type": "application/json"})
    assert r.status_code == 400
    server.assert_alive()
