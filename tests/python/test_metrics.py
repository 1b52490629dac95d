"""/metrics: the documented series exist, move with traffic, and pass `promtool check metrics`."""

from __future__ import annotations

import pytest

from olutil import metric_value, promtool_problems

HISTOGRAMS = [
    "openlora_time_to_first_token_seconds",
    "openlora_inter_token_latency_seconds",
    "openlora_e2e_request_latency_seconds",
]
SERIES = [
    "openlora_requests_total",
    "openlora_prompt_tokens_total",
    "openlora_generation_tokens_total",
    "openlora_kv_cache_usage_ratio",
    "vllm:num_requests_waiting",
    "vllm:num_requests_running",
    "vllm:kv_cache_usage_perc",
    "vllm:lora_requests_info",
]


@pytest.fixture(scope="module")
def traffic(server):
    client = server.client()
    before = server.metrics()
    adapter = server.demo_adapters[0]
    for model in (server.base_model, adapter):
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hi"}],
                                       max_tokens=4, temperature=0)
        list(client.completions.create(model=model, prompt="One, two,", max_tokens=4, temperature=0,
                                       stream=True))
    try:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    except Exception:  # noqa: BLE001 - a 404 we only count
        pass
    return before, server.metrics(), adapter


def test_metric_names_present(traffic):
    _, m, _ = traffic
    for name in SERIES:
        assert name in m, f"{name} missing from /metrics"
    for h in HISTOGRAMS:
        for suffix in ("_bucket", "_sum", "_count"):
            assert h + suffix in m, f"{h}{suffix} missing"
        assert metric_value(m, h + "_count") > 0, h
    for labels, _ in m["openlora_requests_total"]:
        assert {"adapter", "outcome"} <= labels.keys(), labels
    for labels, _ in m["vllm:lora_requests_info"]:
        assert {"max_lora", "running_lora_adapters", "waiting_lora_adapters"} <= labels.keys(), labels


def test_counters_move_with_traffic(traffic):
    before, after, adapter = traffic

    def total(m, name, **labels):
        return metric_value(m, name, **labels) or 0.0

    assert total(after, "openlora_requests_total") >= total(before, "openlora_requests_total") + 4
    assert total(after, "openlora_requests_total", adapter=adapter) >= total(
        before, "openlora_requests_total", adapter=adapter) + 2
    assert total(after, "openlora_prompt_tokens_total", adapter=adapter) > total(
        before, "openlora_prompt_tokens_total", adapter=adapter)
    assert total(after, "openlora_generation_tokens_total", adapter=adapter) >= total(
        before, "openlora_generation_tokens_total", adapter=adapter) + 2


def test_promtool_check_metrics(server, traffic, tmp_path):
    problems = promtool_problems(server.metrics_text(), tmp_path)
    if problems is None:
        pytest.skip("promtool not on PATH (apt-get install prometheus)")
    assert not problems, "promtool lint problems:\n" + "\n".join(problems)
