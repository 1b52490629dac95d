#!/usr/bin/env python3
"""Prefix cache on vs off, side by side in one run (stdlib only; one server at a time).

    python3 benches/prefix_cache.py --openlora BIN --model M.gguf --adapters-root adapters \
        [--extra-adapters tests/fixtures/smollm2/adapters] [--threads 2] [--reps 3] [--json OUT]

Measurements, through /v1/chat/completions (streamed, temperature 0, ignore_eos):
  ttft      a ~1,000-token system prompt. cold: a system prompt never seen (fresh words every
            repetition); cached: the same system prompt again with another user turn. TTFT = first
            content chunk - request sent; medians over --reps. Run on both servers.
  multiturn 8 users x 4 turns, one shared ~400-token system prompt, user i on adapter i % 4; each turn
            sends the whole conversation so far (earlier answers included); the 8 users run
            concurrently, turns in order. Aggregate completion tok/s = all completion tokens / wall
            time, and the mean TTFT.
"""
import argparse
import http.client
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HOST = "127.0.0.1"
WORDS = ("river stone garden market winter silver lantern harbor meadow copper forest signal orbit cable "
         "thunder violet canyon pepper rocket marble feather glacier velvet circuit planet saddle bridge "
         "echo falcon prism cedar ember quartz tunnel beacon walnut ocean ribbon summit compass voyage").split()
QUESTIONS = ["Where is my parcel?", "Can I change the delivery day?", "How do customs forms work?",
             "My item arrived broken, what now?"]


def free_port():
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def stream_chat(port, model, messages, max_tokens):
    """-> (ttft seconds, text, completion tokens)."""
    body = {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0,
            "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
    c = http.client.HTTPConnection(HOST, port, timeout=600)
    t0 = time.perf_counter()
    c.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
    r = c.getresponse()
    assert r.status == 200, r.read()
    ttft, text, tokens = None, [], 0
    for line in r:
        line = line.strip()
        if not line.startswith(b"data: ") or line == b"data: [DONE]":
            continue
        ev = json.loads(line[6:])
        if ev.get("usage"):
            tokens = ev["usage"]["completion_tokens"]
        for ch in ev["choices"]:
            if ch["delta"].get("content"):
                ttft = ttft or time.perf_counter() - t0
                text.append(ch["delta"]["content"])
    c.close()
    return ttft, "".join(text), tokens


def start(binary, model, adapters, threads, cache):
    port = free_port()
    cmd = [binary, "serve", "--model", model, "--adapters-dir", adapters, "--port", str(port),
           "--threads", str(threads), "--max-queue", "256"]
    if not cache:
        cmd.append("--no-enable-prefix-caching")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(600):
        try:
            c = http.client.HTTPConnection(HOST, port, timeout=2)
            c.request("GET", "/ready")
            if c.getresponse().status == 200:
                return proc, port
        except OSError:
            pass
        time.sleep(0.2)
    proc.kill()
    sys.exit("server did not start")


def system_prompt(rng, words):
    return "You are a helpful assistant. Context: " + " ".join(rng.choice(WORDS) for _ in range(words))


def ttft_pair(port, base, reps, rng):
    cold, cached = [], []
    for _ in range(reps):
        system = system_prompt(rng, 900)
        t, _, _ = stream_chat(port, base, [{"role": "system", "content": system},
                                           {"role": "user", "content": "Summarize."}], 4)
        cold.append(t)
        t, _, _ = stream_chat(port, base, [{"role": "system", "content": system},
                                           {"role": "user", "content": "List three words."}], 4)
        cached.append(t)
    return statistics.median(cold), statistics.median(cached)


def multiturn(port, models, system, max_tokens=24):
    results = []

    def user(i):
        msgs = [{"role": "system", "content": system}]
        for turn in range(4):
            msgs.append({"role": "user", "content": QUESTIONS[(i + turn) % 4] + f" (user {i})"})
            ttft, text, n = stream_chat(port, models[i % 4], msgs, max_tokens)
            msgs.append({"role": "assistant", "content": text})
            results.append((ttft, n))

    t0 = time.perf_counter()
    threads = [threading.Thread(target=user, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return sum(n for _, n in results) / wall, statistics.mean(t for t, _ in results)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--openlora", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--adapters-root", default="adapters")
    ap.add_argument("--extra-adapters", default="tests/fixtures/smollm2/adapters")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--json")
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="openlora-prefix-bench-")
    names = []
    for root in (a.adapters_root, a.extra_adapters):
        for n in sorted(os.listdir(root)):
            if os.path.isfile(os.path.join(root, n, "adapter_model.safetensors")) and len(names) < 3:
                shutil.copytree(os.path.join(root, n), os.path.join(work, n))
                names.append(n)
    out = {}
    rng = random.Random(7)
    shared = system_prompt(random.Random(1), 350)
    for cache in (True, False):
        proc, port = start(a.openlora, a.model, work, a.threads, cache)
        try:
            c = http.client.HTTPConnection(HOST, port)
            c.request("GET", "/v1/models")
            base = json.loads(c.getresponse().read())["data"][0]["id"]
            models = [base] + names
            cold, cached = ttft_pair(port, base, a.reps, rng)
            tps, mean_ttft = multiturn(port, models, shared)
            out["on" if cache else "off"] = {"ttft_cold_s": cold, "ttft_cached_s": cached,
                                             "multiturn_tok_s": tps, "multiturn_mean_ttft_s": mean_ttft}
        finally:
            proc.terminate()
            proc.wait()
    shutil.rmtree(work)
    on, off = out["on"], out["off"]
    print(f"adapters: base + {', '.join(names)}; threads {a.threads}; reps {a.reps}")
    print("| | cache on | cache off | on / off |")
    print("|---|---|---|---|")
    print(f"| TTFT, ~1,000-token system prompt cold, ms | {on['ttft_cold_s']*1e3:.0f} | {off['ttft_cold_s']*1e3:.0f} | |")
    print(f"| TTFT, same system prompt again (cached), ms | {on['ttft_cached_s']*1e3:.0f} | {off['ttft_cached_s']*1e3:.0f} | "
          f"{on['ttft_cached_s']/off['ttft_cached_s']:.3f} |")
    print(f"| cold / cached TTFT | {on['ttft_cold_s']/on['ttft_cached_s']:.1f}x | {off['ttft_cold_s']/off['ttft_cached_s']:.1f}x | |")
    print(f"| multi-turn 8 users x 4 turns, 4 adapters, tok/s | {on['multiturn_tok_s']:.1f} | {off['multiturn_tok_s']:.1f} | "
          f"{on['multiturn_tok_s']/off['multiturn_tok_s']:.2f} |")
    print(f"| multi-turn mean TTFT, ms | {on['multiturn_mean_ttft_s']*1e3:.0f} | {off['multiturn_mean_ttft_s']*1e3:.0f} | "
          f"{on['multiturn_mean_ttft_s']/off['multiturn_mean_ttft_s']:.2f} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
