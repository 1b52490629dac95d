"""Serving under load: many adapters at once, client disconnects, adapter unload while streaming."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from olutil import metric_value


def messages(prompt):
    # a short system message replaces the template's default one: fewer prompt tokens on CPU
    return [{"role": "system", "content": "Be brief."}, {"role": "user", "content": prompt}]


def stream_text(client, model, prompt, max_tokens=12, **kw):
    """One greedy streaming chat request -> (text, finish_reason)."""
    text, finish = [], None
    stream = client.chat.completions.create(
        model=model,
        messages=messages(prompt),
        max_tokens=max_tokens,
        temperature=0,
        stream=True,
        **kw,
    )
    for chunk in stream:
        if chunk.choices:
            text.append(chunk.choices[0].delta.content or "")
            if chunk.choices[0].finish_reason:
                assert finish is None, "two finish_reasons in one stream"
                finish = chunk.choices[0].finish_reason
    assert finish in ("stop", "length"), finish
    return "".join(text), finish


def wait_idle(server, timeout=10.0):
    """Poll /metrics until no request runs or waits and the KV cache is empty."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        m = server.metrics()
        kv = metric_value(m, "openlora_kv_cache_usage_ratio")
        if kv is None:
            kv = metric_value(m, "vllm:kv_cache_usage_perc")
        running = metric_value(m, "vllm:num_requests_running")
        waiting = metric_value(m, "vllm:num_requests_waiting")
        last = dict(kv=kv, running=running, waiting=waiting)
        assert kv is not None and running is not None, f"metrics missing: {last}"
        if kv == 0 and running == 0 and (waiting or 0) == 0:
            return last
        if time.monotonic() > deadline:
            pytest.fail(f"server not idle within {timeout} s: {last}")
        time.sleep(0.2)


def test_concurrent_streams_across_random_adapters(server, random_adapters):
    adapters = random_adapters(8, prefix="conc")
    for name, path in adapters:
        r = server.load_adapter(name, path)
        assert r.status_code == 200, (name, r.status_code, r.text)
    names = [n for n, _ in adapters]
    listed = {m.id for m in server.client().models.list().data}
    assert set(names) <= listed
    jobs = [(names[i % 8], f"Give me one short fact about the number {i}.") for i in range(64)]
    client = server.client()
    with ThreadPoolExecutor(max_workers=64) as pool:
        concurrent = list(pool.map(lambda j: stream_text(client, *j), jobs))
    assert len(concurrent) == 64
    for (model, prompt), (text, _) in zip(jobs, concurrent):
        assert text, (model, prompt)
    for (model, prompt), got in zip(jobs, concurrent):
        alone = stream_text(client, model, prompt)
        assert got == alone, f"{model} / {prompt!r}: batched {got!r} != alone {alone!r}"
    wait_idle(server)


def test_client_disconnect_frees_resources(server, base_model):
    client = server.client()
    errors = []

    def open_and_drop(i):
        try:
            with client.chat.completions.create(
                model=base_model,
                messages=[{"role": "user", "content": f"Count from {i} to 500 separated by commas."}],
                max_tokens=200,
                temperature=0,
                stream=True,
            ) as stream:
                for k, _chunk in enumerate(stream):
                    if k >= 2:
                        break
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    with ThreadPoolExecutor(max_workers=20) as pool:
        list(pool.map(open_and_drop, range(20)))
    assert not errors, errors
    wait_idle(server, timeout=10)
    # still serving normally
    text, _ = stream_text(client, base_model, "Say hi.", max_tokens=4)
    assert text


def test_unload_while_streaming(server, random_adapters):
    [(name, path)] = random_adapters(1, prefix="hot")
    assert server.load_adapter(name, path).status_code == 200
    client = server.client()
    prompts = ["Describe a cat in one sentence.", "Describe a dog in one sentence."]
    ref = {p: stream_text(client, name, p, max_tokens=24) for p in prompts}

    first_chunk = threading.Barrier(9, timeout=120)
    results, errors = {}, []

    def run(i):
        p = prompts[i % 2]
        text, finish = [], None
        try:
            stream = client.chat.completions.create(
                model=name, messages=messages(p), max_tokens=24,
                temperature=0, stream=True)
            for k, chunk in enumerate(stream):
                if chunk.choices:
                    text.append(chunk.choices[0].delta.content or "")
                    finish = chunk.choices[0].finish_reason or finish
                if k == 0:
                    first_chunk.wait()
            results[i] = ("".join(text), finish)
        except Exception as e:  # noqa: BLE001
            errors.append(repr(e))
            try:
                first_chunk.abort()
            except Exception:  # noqa: BLE001
                pass

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    first_chunk.wait()  # all 8 streams are running
    unload = server.unload_adapter(name)
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    assert unload.status_code < 500, (unload.status_code, unload.text)
    for i in range(8):
        assert results[i] == ref[prompts[i % 2]], (i, results[i], ref[prompts[i % 2]])
    if unload.status_code != 200:
        assert unload.json()["error"]["message"]
        r = server.unload_adapter(name)
        assert r.status_code == 200, (r.status_code, r.text)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model=name, messages=[{"role": "user", "content": "hi"}],
                                       max_tokens=2)
    assert name not in {m.id for m in client.models.list().data}
    # reload: works again with the same output
    assert server.load_adapter(name, path).status_code == 200
    assert stream_text(client, name, prompts[0], max_tokens=24) == ref[prompts[0]]
    wait_idle(server)
