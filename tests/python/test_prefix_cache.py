"""Prefix cache and n > 1 through the real openai SDK against the real binary.

Isolation end to end (the llama.cpp `cache_prompt` failure): the same long system prompt sent to
the base model and three adapters in an interleaved order must give, per request, the tokens and
logprobs of a server started with `--no-enable-prefix-caching`. n > 1: `choices[0..n]`, streamed
and not; greedy choices equal the single answer; seeded ones are reproducible; the prompt is
counted once in usage.
"""

from __future__ import annotations

import pytest

from conftest import KEY_ARGS, launch_server, stop_server, wait_ready
from olutil import metric_value

SYSTEM = ("You are the support assistant of a parcel delivery company. " * 3
          + "Answer questions about tracking, delivery windows, customs forms, refunds and lost "
            "items. Be short and polite; never invent tracking numbers. " * 5)


def msgs(user: str) -> list[dict]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def ask(client, model, user, **kw):
    kw.setdefault("max_tokens", 8)
    kw.setdefault("temperature", 0)
    return client.chat.completions.create(model=model, messages=msgs(user), **kw)


@pytest.fixture(scope="module")
def no_cache_server(tmp_path_factory):
    srv = launch_server(tmp_path_factory.mktemp("nocache"), KEY_ARGS + ["--no-enable-prefix-caching"])
    try:
        yield wait_ready(srv)
    finally:
        stop_server(srv)


def _tokens_and_logprobs(resp):
    c = resp.choices[0]
    return c.message.content, [(t.token, t.logprob) for t in c.logprobs.content]


def test_shared_system_prompt_never_crosses_adapters(server, no_cache_server):
    models = [server.base_model] + server.demo_adapters[:3]
    assert len(models) == 4
    order = [(m, u) for u in ("Where is my parcel?", "Can I get a refund?") for m in models]
    order += list(reversed(order))
    on_client, off_client = server.client(), no_cache_server.client()
    before = server.metrics()
    for model, user in order:
        kw = dict(logprobs=True, top_logprobs=2, extra_body={"ignore_eos": True})
        on = _tokens_and_logprobs(ask(on_client, model, user, **kw))
        off = _tokens_and_logprobs(ask(off_client, model, user, **kw))
        assert on == off, f"{model}/{user}: cache on {on} != cache off {off}"
    after = server.metrics()
    hits = metric_value(after, "vllm:prefix_cache_hits_total") - (
        metric_value(before, "vllm:prefix_cache_hits_total") or 0)
    assert hits > 0, "the cache was never used"
    assert metric_value(no_cache_server.metrics(), "vllm:prefix_cache_hits_total") == 0


def test_prefix_cache_counters(server):
    client = server.client()
    before = server.metrics()
    first = ask(client, server.base_model, "What are your opening hours?")
    ask(client, server.base_model, "What are your opening hours?")
    after = server.metrics()
    for prefix in ("openlora_prefix_cache", "vllm:prefix_cache"):
        q = metric_value(after, f"{prefix}_queries_total") - (metric_value(before, f"{prefix}_queries_total") or 0)
        h = metric_value(after, f"{prefix}_hits_total") - (metric_value(before, f"{prefix}_hits_total") or 0)
        assert q >= 2 * first.usage.prompt_tokens, (prefix, q)
        # The second request finds at least every full block but the last token's.
        assert h >= first.usage.prompt_tokens - 16, (prefix, h)


def test_n_greedy_choices_equal_the_single_answer(server):
    client = server.client()
    kw = dict(max_tokens=10, extra_body={"ignore_eos": True})
    one = ask(client, server.base_model, "Name a colour.", **kw)
    many = ask(client, server.base_model, "Name a colour.", n=3, **kw)
    assert [c.index for c in many.choices] == [0, 1, 2]
    for c in many.choices:
        assert c.message.content == one.choices[0].message.content
        assert c.finish_reason == "length"
    # The prompt is counted once, the completions of every choice.
    assert many.usage.prompt_tokens == one.usage.prompt_tokens
    assert many.usage.completion_tokens == 3 * one.usage.completion_tokens


def test_n_streamed_choices_and_usage(server):
    client = server.client()
    adapter = server.demo_adapters[0]
    kw = dict(max_tokens=10, extra_body={"ignore_eos": True})
    ref = ask(client, adapter, "Say hello.", n=2, **kw)
    texts, finishes, usage = {}, {}, None
    for chunk in ask(client, adapter, "Say hello.", n=2, stream=True,
                     stream_options={"include_usage": True}, **kw):
        if chunk.usage:
            usage = chunk.usage
        for c in chunk.choices:
            texts[c.index] = texts.get(c.index, "") + (c.delta.content or "")
            if c.finish_reason:
                assert c.index not in finishes
                finishes[c.index] = c.finish_reason
    assert texts == {0: ref.choices[0].message.content, 1: ref.choices[1].message.content}
    assert finishes == {0: "length", 1: "length"}
    assert usage.prompt_tokens == ref.usage.prompt_tokens
    assert usage.completion_tokens == 20


def test_n_seeded_choices_are_reproducible_and_differ(server):
    client = server.client()
    kw = dict(n=3, temperature=1.0, seed=1234, max_tokens=12, extra_body={"ignore_eos": True})
    a = [c.message.content for c in ask(client, server.base_model, "Tell me a story.", **kw).choices]
    b = [c.message.content for c in ask(client, server.base_model, "Tell me a story.", **kw).choices]
    assert a == b
    assert len(set(a)) > 1, a


def test_completions_n_with_several_prompts(server):
    client = server.client()
    r = client.completions.create(model=server.base_model, prompt=["One, two,", "Red, green,"], n=2,
                                  max_tokens=4, temperature=0, extra_body={"ignore_eos": True})
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    assert r.choices[0].text == r.choices[1].text
    assert r.choices[2].text == r.choices[3].text
    single = [client.completions.create(model=server.base_model, prompt=p, max_tokens=4, temperature=0,
                                        extra_body={"ignore_eos": True}) for p in ("One, two,", "Red, green,")]
    assert [r.choices[0].text, r.choices[2].text] == [s.choices[0].text for s in single]
    assert r.usage.prompt_tokens == sum(s.usage.prompt_tokens for s in single)
    assert r.usage.completion_tokens == 16


@pytest.mark.parametrize("n", [0, -1, 129])
def test_bad_n_is_400(server, n):
    import openai
    with pytest.raises(openai.BadRequestError) as e:
        ask(server.client(), server.base_model, "hi", n=n)
    assert e.value.response.json()["error"]["param"] == "n"


def test_best_of_returns_the_most_likely_of_the_n_choices(server):
    client = server.client()
    kw = dict(model=server.base_model, prompt="The weather today is", max_tokens=8, temperature=1.0,
              seed=99, extra_body={"ignore_eos": True})
    # The same seed gives the same choices: the n=3 run is the reference for best_of=3.
    all3 = client.completions.create(n=3, logprobs=0, **kw)
    means = [sum(c.logprobs.token_logprobs) / len(c.logprobs.token_logprobs) for c in all3.choices]
    best = client.completions.create(n=1, best_of=3, **kw)
    assert len(best.choices) == 1 and best.choices[0].index == 0
    assert best.choices[0].text == all3.choices[means.index(max(means))].text
    assert best.choices[0].logprobs is None
    assert best.usage.completion_tokens == 24  # every generated choice is billed
    import openai
    with pytest.raises(openai.BadRequestError):
        client.completions.create(n=2, best_of=1, **kw)
    with pytest.raises(openai.BadRequestError):
        client.completions.create(n=1, best_of=2, stream=True, **kw)
