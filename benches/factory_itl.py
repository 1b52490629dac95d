#!/usr/bin/env python3
"""Inter-token latency of served streams with and without a fine-tuning job running, in one run of
the real server, plus the job's training throughput. Starts `openlora serve --data-dir ...
--training-threads T`, streams `--streams` concurrent chat completions of `--tokens` tokens each
(greedy, ignore_eos off, prompt varied per stream) and records the gap between content chunks;
then starts a long fine-tuning job through the SDK, waits until it trains (its first forward pass
has begun: the "Training ..." event), measures the same streams again, cancels the job and reads
its tokens/s from the `metrics` events. `--training-nice 0,19` repeats all of it (a fresh server,
its own no-job baseline) for each nice value of the training threads, in one run.

  python3 benches/factory_itl.py --bin target/debug/openlora --model M.gguf [--training-threads 1] \
      [--training-nice 0,19]
"""
import argparse, json, os, random, socket, statistics, subprocess, sys, tempfile, threading, time

import openai


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stream_gaps(client, model, prompt, tokens, out):
    t_last, gaps = None, []
    for chunk in client.chat.completions.create(model=model, stream=True, max_tokens=tokens, temperature=0,
                                                messages=[{"role": "user", "content": prompt}]):
        if chunk.choices and chunk.choices[0].delta.content:
            now = time.perf_counter()
            if t_last is not None:
                gaps.append((now - t_last) * 1000)
            t_last = now
    out.extend(gaps)


def measure(client, model, streams, tokens, rounds):
    gaps = []
    for r in range(rounds):
        threads = [threading.Thread(target=stream_gaps, args=(client, model,
                   f"Write a long story about a dragon number {r * streams + i}.", tokens, gaps))
                   for i in range(streams)]
        [t.start() for t in threads]
        [t.join() for t in threads]
    gaps.sort()
    pct = lambda p: gaps[min(len(gaps) - 1, int(p * (len(gaps) - 1)))]
    return {"n": len(gaps), "p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99), "mean": statistics.mean(gaps)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--training-threads", type=int, default=1)
    ap.add_argument("--streams", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--training-nice", default="19", help="comma-separated nice values, one server each")
    args = ap.parse_args()
    out = {}
    for nice in args.training_nice.split(","):
        out[f"nice {nice}"] = run_one(args, int(nice))
    print(json.dumps(out, indent=1))


def run_one(args, nice):
    work = tempfile.mkdtemp(prefix="factory_itl_")
    port = free_port()
    log = open(os.path.join(work, "server.log"), "wb")
    srv = subprocess.Popen([args.bin, "serve", "--model", args.model, "--port", str(port), "--threads", str(args.threads),
                            "--admin-key", "adm", "--data-dir", os.path.join(work, "data"),
                            "--training-threads", str(args.training_threads), "--training-nice", str(nice)], stdout=log, stderr=subprocess.STDOUT)
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="adm", max_retries=0, timeout=600)
        for _ in range(600):
            try:
                base = client.models.list().data[0].id
                break
            except Exception:
                time.sleep(0.5)
        rng = random.Random(0)
        rows = [{"messages": [{"role": "user", "content": f"Tell me about topic {i}."},
                              {"role": "assistant", "content": f"Ahoy there, sailor! Topic {i} " + rng.choice(["is fine.", "is grand.", "runs deep."])}]}
                for i in range(32)]
        f = client.files.create(file=("d.jsonl", ("\n".join(json.dumps(r) for r in rows) + "\n").encode()), purpose="fine-tune")
        measure(client, base, args.streams, 8, 1)  # warm-up
        idle = measure(client, base, args.streams, args.tokens, args.rounds)
        job = client.fine_tuning.jobs.create(model=base, training_file=f.id, method={"type": "supervised",
                 "supervised": {"hyperparameters": {"n_epochs": 50, "batch_size": 4}}})
        while not any(e.message.startswith("Training ") for e in client.fine_tuning.jobs.list_events(job.id)):
            time.sleep(1)
        time.sleep(2)
        busy = measure(client, base, args.streams, args.tokens, args.rounds)
        evs = [e for e in client.fine_tuning.jobs.list_events(job.id, limit=100) if e.type == "metrics" and "trained_tokens" in e.data]
        client.fine_tuning.jobs.cancel(job.id)
        evs.sort(key=lambda e: e.data["step"])
        tps = None
        if len(evs) >= 2:
            dt = max(evs[-1].created_at - evs[0].created_at, 1)
            tps = (evs[-1].data["trained_tokens"] - evs[0].data["trained_tokens"]) / dt
        return {"idle_itl_ms": idle, "training_itl_ms": busy, "training_steps_seen": len(evs),
                "training_tokens_per_s": tps, "p50_ratio": busy["p50"] / idle["p50"]}
    finally:
        srv.terminate()
        srv.wait()


if __name__ == "__main__":
    main()
