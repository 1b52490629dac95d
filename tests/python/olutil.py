"""Helpers shared by the black-box server tests (no pytest fixtures here)."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

REPO = Path(__file__).resolve().parents[2]

# SmolLM2-135M geometry.
HIDDEN = 576
LAYERS = 30
KV_OUT = 192  # 3 KV heads * head_dim 64


def write_random_adapter(path: Path, seed: int, r: int = 8, std: float = 0.02) -> Path:
    """A PEFT LoRA (q_proj, v_proj) for SmolLM2 with random A and B, distinct per seed."""
    path.mkdir(parents=True, exist_ok=True)
    cfg = {
        "peft_type": "LORA",
        "r": r,
        "lora_alpha": 16,
        "target_modules": ["q_proj", "v_proj"],
        "bias": "none",
        "use_rslora": False,
    }
    (path / "adapter_config.json").write_text(json.dumps(cfg))
    rng = np.random.default_rng(seed)
    tensors = {}
    for i in range(LAYERS):
        p = f"base_model.model.model.layers.{i}.self_attn"
        tensors[f"{p}.q_proj.lora_A.weight"] = rng.normal(0, std, (r, HIDDEN)).astype(np.float32)
        tensors[f"{p}.q_proj.lora_B.weight"] = rng.normal(0, std, (HIDDEN, r)).astype(np.float32)
        tensors[f"{p}.v_proj.lora_A.weight"] = rng.normal(0, std, (r, HIDDEN)).astype(np.float32)
        tensors[f"{p}.v_proj.lora_B.weight"] = rng.normal(0, std, (KV_OUT, r)).astype(np.float32)
    save_file(tensors, str(path / "adapter_model.safetensors"))
    return path


def copy_demo_adapters(dest: Path) -> list[str]:
    """Copy the repo's demo adapters (or, if none are committed, the SmolLM2 fixture adapters)
    into `dest`; returns the adapter names (folder names)."""
    dest.mkdir(parents=True, exist_ok=True)
    sources = [d for d in sorted((REPO / "adapters").glob("*")) if (d / "adapter_config.json").is_file()]
    if not sources:
        fx = REPO / "tests" / "fixtures" / "smollm2" / "adapters"
        sources = [d for d in sorted(fx.glob("*")) if (d / "adapter_config.json").is_file()]
    names = []
    for src in sources:
        shutil.copytree(src, dest / src.name)
        names.append(src.name)
    return names


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


def parse_metrics(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Prometheus text -> {sample name: [(labels, value)]}."""
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if not m:
            continue
        labels = dict(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        out.setdefault(m.group(1), []).append((labels, float(m.group(3))))
    return out


def metric_value(metrics: dict, name: str, **labels) -> float | None:
    """Sum of the samples of `name` whose labels include `labels`; None when absent."""
    if name not in metrics:
        return None
    return sum(v for l, v in metrics[name] if all(l.get(k) == val for k, val in labels.items()))


def env_bin() -> str:
    return os.environ.get("OPENLORA_BIN", str(REPO / "target" / "debug" / "openlora"))


def promtool_problems(text: str, tmp_path: Path) -> list[str] | None:
    """`promtool check metrics` on an exposition: the problems it reports (empty when clean), or
    None when promtool is not installed. Exit 3 = lint problems (the text parsed); the `vllm:*`
    series the API must expose always trip promtool's "no ':' in names" lint (promtool 2.42 has no
    flag to disable one lint), so that problem alone is dropped. A text promtool cannot parse is
    an assertion failure."""
    import subprocess

    promtool = shutil.which("promtool")
    if promtool is None:
        return None
    path = tmp_path / "metrics.txt"
    path.write_text(text)
    with open(path, "rb") as f:
        p = subprocess.run([promtool, "check", "metrics"], stdin=f, capture_output=True, text=True)
    if p.returncode == 0:
        return []
    assert p.returncode == 3, f"promtool could not parse /metrics ({p.returncode}):\n{p.stdout}\n{p.stderr}"
    problems = [l for l in (p.stdout + p.stderr).splitlines() if l.strip()]
    return [l for l in problems
            if not (l.startswith("vllm:") and l.endswith("metric names should not contain ':'"))]
