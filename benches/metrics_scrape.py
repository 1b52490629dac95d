"""/metrics cost vs the number of registered adapters, side by side in one run.

Starts `openlora serve` twice on the same model, with 10 and with 10,000 registered adapters (hard
links of one demo adapter: registration reads only config + header), pages the same 8 adapters onto
the device tier in both, then times `GET /metrics` (median and p99 of N scrapes) and reports the
exposition size and the residency series. The claim checked: the residency series and the whole
scrape cost do not grow with the adapters registered.

    OPENLORA_BIN=target/release/openlora ~/.cache/openlora/venv-ci/bin/python benches/metrics_scrape.py [--scrapes 300]
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]


def model_path() -> str:
    out = subprocess.run(["bash", str(REPO / "scripts/fetch-model.sh")], check=True, capture_output=True, text=True)
    return out.stdout.strip().splitlines()[-1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_adapters(root: Path, n: int) -> list[str]:
    src = sorted(p for p in (REPO / "adapters").glob("*") if (p / "adapter_config.json").is_file())[0]
    names = []
    for i in range(n):
        d = root / f"r{i:05d}"
        d.mkdir(parents=True)
        for f in ("adapter_config.json", "adapter_model.safetensors"):
            os.link(src / f, d / f)
        names.append(d.name)
    return names


def run(binary: str, n: int, scrapes: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        names = make_adapters(Path(tmp) / "adapters", n)
        port = free_port()
        started = time.monotonic()
        proc = subprocess.Popen(
            [binary, "serve", "--model", model_path(), "--adapters-dir", str(Path(tmp) / "adapters"),
             "--port", str(port), "--threads", "2", "--kv-cache-mb", "128"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120)
        try:
            while True:
                try:
                    if http.get("/ready").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert proc.poll() is None, "server exited"
                time.sleep(0.1)
            startup = time.monotonic() - started
            for name in names[:8]:
                r = http.post("/v1/completions", json={"model": name, "prompt": "Hi", "max_tokens": 1})
                assert r.status_code == 200, r.text
            times = []
            for _ in range(scrapes):
                t = time.perf_counter()
                text = http.get("/metrics").text
                times.append(time.perf_counter() - t)
            info = [l for l in text.splitlines() if l.startswith("openlora_lora_resident_info{")]
            times.sort()
            return {"registered": n, "startup_s": startup, "median_ms": 1e3 * statistics.median(times),
                    "p99_ms": 1e3 * times[int(0.99 * (len(times) - 1))], "bytes": len(text),
                    "info_bytes": len(info[0]) if info else 0}
        finally:
            http.close()
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scrapes", type=int, default=300)
    args = ap.parse_args()
    binary = os.environ.get("OPENLORA_BIN", str(REPO / "target/release/openlora"))
    small, large = run(binary, 10, args.scrapes), run(binary, 10_000, args.scrapes)
    print("| | 10 registered | 10,000 registered | ratio |")
    print("|---|---|---|---|")
    for key, label in [("median_ms", "GET /metrics median, ms"), ("p99_ms", "GET /metrics p99, ms"),
                       ("bytes", "exposition size, bytes"), ("info_bytes", "residency series line, bytes"),
                       ("startup_s", "start-up to /ready, s")]:
        a, b = small[key], large[key]
        print(f"| {label} | {a:.3g} | {b:.3g} | {b / a if a else float('nan'):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
