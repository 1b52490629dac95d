"""The Grafana dashboard (deploy/grafana/openlora.json) queries only metric names a live server
exports: every `openlora_*` / `vllm:*` name in a panel query must be a sample name of the real
server's /metrics (after a little traffic, so labelled histograms have samples), and the dashboard
covers each topic the operator needs."""

from __future__ import annotations

import json
import re

from olutil import REPO

DASHBOARD = REPO / "deploy" / "grafana" / "openlora.json"
NAME = re.compile(r"\b(?:openlora_[a-z0-9_]+|vllm:[a-z0-9_]+)")


def queries() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    out = []
    for p in dash["panels"]:
        out += [t["expr"] for t in p.get("targets", [])]
        for inner in p.get("panels", []):
            out += [t["expr"] for t in inner.get("targets", [])]
    for v in dash.get("templating", {}).get("list", []):
        q = v.get("query")
        out.append(q["query"] if isinstance(q, dict) else str(q or ""))
    return out


def test_dashboard_names_only_exported_metrics(server):
    client = server.client()
    for model in (server.base_model, server.demo_adapters[0]):
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hi"}],
                                       max_tokens=3, temperature=0)
    exported = set(server.metrics())
    used = {n for q in queries() for n in NAME.findall(q)}
    assert len(used) >= 20, sorted(used)
    missing = sorted(used - exported)
    assert not missing, f"the dashboard queries metrics the server does not export: {missing}"


def test_dashboard_covers_every_topic():
    used = {n for q in queries() for n in NAME.findall(q)}
    topics = {
        "request rate and errors": "openlora_requests_total",
        "TTFT": "openlora_time_to_first_token_seconds_bucket",
        "inter-token latency": "openlora_inter_token_latency_seconds_bucket",
        "tokens/s": "openlora_generation_tokens_total",
        "queue length": "openlora_queue_length",
        "KV usage": "openlora_kv_cache_usage_ratio",
        "adapters resident per tier": "openlora_adapters_resident",
        "page-ins": "openlora_adapter_loads_total",
        "page-in latency": "openlora_adapter_load_seconds_bucket",
        "settlement lag": "openlora_settlement_lag_seconds",
        "settlement failures": "openlora_settlement_failures_total",
        "ledger": "openlora_ledger_unsettled_records",
    }
    missing = [t for t, name in topics.items() if name not in used]
    assert not missing, missing
