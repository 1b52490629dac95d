"""Residency metrics with 1,000 registered adapters and 2 device slots: `/metrics` passes promtool,
stays the same size whatever the number registered (no per-registered-adapter series), and the
series a LoRA-affinity router reads (`openlora_lora_resident_info`, labelled like
`vllm:lora_requests_info`) follows adapters as they page in and out. The reference for which
adapters are on device is LRU over the requests the test made, cross-checked against each
adapter's `tier` in `GET /v1/adapters` (the admin view, read from the pager directly)."""

from __future__ import annotations

import os
import re

import pytest

from conftest import ADMIN, KEY_ARGS, launch_server, stop_server, wait_ready
from olutil import REPO, metric_value, promtool_problems

N = 1000
SLOTS = 2


def _register_copies(adapters_dir, n: int) -> list[str]:
    """`n` adapters r0000.. as hard links of one demo adapter's files (registration reads only the
    config and the safetensors header, as for any folder)."""
    src = sorted(p for p in (REPO / "adapters").glob("*") if (p / "adapter_config.json").is_file())
    if not src:
        src = sorted(p for p in (REPO / "tests/fixtures/smollm2/adapters").glob("*"))
    names = []
    for i in range(n):
        d = adapters_dir / f"r{i:04d}"
        d.mkdir(parents=True)
        for f in ("adapter_config.json", "adapter_model.safetensors"):
            os.link(src[0] / f, d / f)
        names.append(d.name)
    return names


@pytest.fixture(scope="module")
def crowded(tmp_path_factory):
    work = tmp_path_factory.mktemp("residency")
    names = _register_copies(work / "adapters", N)
    srv = launch_server(work, KEY_ARGS + ["--adapter-device-slots", str(SLOTS)])
    try:
        yield wait_ready(srv), names
    finally:
        stop_server(srv)


def resident_info(m: dict) -> tuple[dict, list[str], float]:
    series = m["openlora_lora_resident_info"]
    assert len(series) == 1, series
    labels, value = series[0]
    running = [a for a in labels["running_lora_adapters"].split(",") if a]
    return labels, running, value


def device_tier(srv) -> set[str]:
    r = srv.http.get("/v1/adapters", headers={"Authorization": f"Bearer {ADMIN}"})
    assert r.status_code == 200, r.text
    body = r.json()
    rows = body["data"] if isinstance(body, dict) else body
    return {a["name"] if "name" in a else a["id"] for a in rows if a["tier"] == "device"}


def ask(srv, adapter: str) -> None:
    srv.client().completions.create(model=adapter, prompt="Hello", max_tokens=2, temperature=0)


def test_promtool_passes_and_size_does_not_grow_with_registered_adapters(crowded, tmp_path):
    srv, names = crowded
    text = srv.metrics_text()
    m = srv.metrics()
    assert metric_value(m, "openlora_adapters_registered") >= N
    problems = promtool_problems(text, tmp_path)
    if problems is None:
        pytest.skip("promtool not on PATH (apt-get install prometheus)")
    assert not problems, "promtool lint problems:\n" + "\n".join(problems)
    # No series names a registered adapter that was never used.
    named = set(re.findall(r"\br\d{4}\b", text))
    assert named <= {n for n in names[:3]}, sorted(named)[:10]
    labels, running, _ = resident_info(m)
    assert labels["max_lora"] == str(SLOTS)


def test_residency_series_follows_page_ins_and_evictions(crowded):
    srv, names = crowded
    a, b, c = names[:3]
    before = srv.metrics()
    lru: list[str] = []
    for i, adapter in enumerate([a, b, c, b]):
        ask(srv, adapter)
        if adapter in lru:
            lru.remove(adapter)
        lru.append(adapter)
        expected = set(lru[-SLOTS:])
        m = srv.metrics()
        labels, running, value = resident_info(m)
        assert set(running) == expected, (i, adapter, running, expected)
        assert running == sorted(running)
        assert device_tier(srv) == expected
        assert metric_value(m, "openlora_adapters_resident", tier="device") == len(expected)
        assert value > 0
    after = srv.metrics()

    def delta(name, **labels):
        return (metric_value(after, name, **labels) or 0) - (metric_value(before, name, **labels) or 0)

    # a, b, c paged in (c evicted a); the second b was a hit.
    assert delta("openlora_adapter_loads_total", tier="device") == 3
    assert delta("openlora_adapter_evictions_total", tier="device") == 1
    assert delta("openlora_adapter_page_in_wait_seconds_count") == 3
    assert delta("openlora_adapter_hits_total", tier="device") >= 1
    assert metric_value(after, "openlora_adapters_pinned") == 0
