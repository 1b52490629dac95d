#!/usr/bin/env python3
"""`openlora serve --device candle-cpu` (the device executor's CPU twin) vs `--device cpu`, side by side
(stdlib only). One server at a time, in alternating order (cpu, candle-cpu, cpu, ...) so a change in the
machine's load hits both; medians over --reps rounds. Per server, through /v1/completions
(temperature 0, ignore_eos):
  single      one request of --tokens tokens: completion tokens / latency
  concurrent  4 requests at once (base, pirate, french, shouty), --tokens each: all tokens / wall time
Also the start-up time to a ready /v1/models and VmHWM after the runs.

    python3 benches/device_twin.py --openlora target/debug/openlora --model M.gguf [--reps 2] [--tokens 48]
"""
import argparse
import http.client
import json
import statistics
import subprocess
import threading
import time

ADAPTERS = [None, "pirate", "french", "shouty"]
PROMPT = "The history of the river town is"


def post(port, body):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    c.request("POST", "/v1/completions", json.dumps(body), {"content-type": "application/json"})
    r = c.getresponse()
    data = json.loads(r.read())
    assert r.status == 200, data
    return data["usage"]["completion_tokens"]


def complete(port, model, tokens):
    return post(port, {"model": model, "prompt": PROMPT, "max_tokens": tokens, "temperature": 0,
                       "ignore_eos": True})


def start(a, device, port):
    argv = [a.openlora, "serve", "--model", a.model, "--adapters-dir", a.adapters, "--port", str(port),
            "--device", device, "--threads", str(a.threads), "--kv-cache-mb", "256"]
    t0 = time.time()
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=open(f"/tmp/device_twin_{device}.log", "w"))
    while True:
        assert p.poll() is None, f"{device} server exited; see /tmp/device_twin_{device}.log"
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            c.request("GET", "/v1/models")
            models = json.loads(c.getresponse().read())
            return p, time.time() - t0, models["data"][0]["id"]
        except (OSError, ValueError, KeyError):
            time.sleep(0.5)


def measure(a, device, port):
    p, startup, base = start(a, device, port)
    try:
        complete(port, base, 4)  # warm-up
        t = time.time()
        n = complete(port, base, a.tokens)
        single = n / (time.time() - t)
        counts = []

        def one(ad):
            counts.append(complete(port, ad or base, a.tokens))
        threads = [threading.Thread(target=one, args=(ad,)) for ad in ADAPTERS]
        t = time.time()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        conc = sum(counts) / (time.time() - t)
        hwm = next(l.split()[1] for l in open(f"/proc/{p.pid}/status") if l.startswith("VmHWM"))
        return {"single": single, "concurrent": conc, "startup": startup, "hwm_mib": int(hwm) / 1024}
    finally:
        p.terminate()
        p.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--openlora", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--adapters", default="adapters")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--port", type=int, default=18191)
    a = ap.parse_args()
    runs = {"cpu": [], "candle-cpu": []}
    for _ in range(a.reps):
        for dev in runs:
            runs[dev].append(measure(a, dev, a.port))
            print(dev, runs[dev][-1], flush=True)
    med = {d: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for d, rs in runs.items()}
    print("\n| `--device` | single stream tok/s | 4 concurrent (3 adapters + base) tok/s | start-up s | VmHWM MiB |")
    print("|---|---|---|---|---|")
    for d, m in med.items():
        print(f"| {d} | {m['single']:.1f} | {m['concurrent']:.1f} | {m['startup']:.1f} | {m['hwm_mib']:.0f} |")
    c, t = med["cpu"], med["candle-cpu"]
    print(f"\ncandle-cpu / cpu: single {t['single'] / c['single']:.2f}x, concurrent {t['concurrent'] / c['concurrent']:.2f}x")


if __name__ == "__main__":
    main()
