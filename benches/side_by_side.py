#!/usr/bin/env python3
"""openlora vs llama.cpp's llama-server, side by side, one server at a time (stdlib only).

Called by benches/llamacpp_side_by_side.sh, which builds/fetches everything and passes paths:

    side_by_side.py --llama-server BIN --openlora BIN --model M.gguf --adapters-root DIR --names a,b,...
                    [--threads 2] [--reps 3] [--tokens 128] [--accuracy REFERENCE.json] [--json OUT]
    side_by_side.py --8b --model 8B.gguf --names NAME ...   load time, resident memory, decode tok/s (base and
                                                            with adapter NAME) on the 8B file

Each server is started, measured and stopped before the other one starts. Measurements (medians over
--reps repetitions, both servers through their OpenAI-compatible /v1/completions):
  decode   one stream, --tokens tokens, temperature 0, ignore_eos; client-side tok/s over the stream
           ((tokens - 1) / (last chunk - first chunk)) and TTFT (first chunk - request sent)
  prefill  a fresh ~1,000-token prompt (distinct words from its first token on, every repetition; llama.cpp
           with "cache_prompt": false), max_tokens 1: prompt tokens / request latency
  concurrent  8 streams at once, stream i with adapter i, --tokens each: aggregate tok/s = all tokens /
           (last stream's end - first request sent); TTFT p50/p99 pooled over streams and repetitions
  memory   VmRSS and VmHWM from /proc/PID/status after the runs above
  accuracy the cases of tests/fixtures/smollm2/reference.json (prompt ids x {base, adapters}): greedy
           tokens from the prompt ids, compared with the f32 transformers+PEFT reference
"""
import argparse
import http.client
import json
import os
import platform
import random
import shlex
import statistics
import subprocess
import sys
import threading
import time

HOST = "127.0.0.1"
WORDS = ("river stone garden market winter silver lantern harbor meadow copper forest signal orbit cable "
         "thunder violet canyon pepper rocket marble feather glacier velvet circuit planet saddle bridge "
         "echo falcon prism cedar ember quartz tunnel beacon walnut ocean ribbon summit compass voyage "
         "pixel anchor meadow lumber cactus dragon jungle kettle ladder mirror needle oyster pillow quiver "
         "rhythm shadow timber umbrella vessel whisper yonder zephyr").split()
SHORT_PROMPT = "Once upon a time, in a small village by the sea, there lived an old fisherman who"


# ----------------------------------------------------------------------------- HTTP

def post(port, path, body, timeout=600):
    c = http.client.HTTPConnection(HOST, port, timeout=timeout)
    c.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
    r = c.getresponse()
    data = r.read()
    c.close()
    if r.status != 200:
        raise RuntimeError(f"POST {path} -> {r.status}: {data[:500]!r}")
    return json.loads(data)


def get(port, path, timeout=5):
    c = http.client.HTTPConnection(HOST, port, timeout=timeout)
    c.request("GET", path)
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, data


def stream(port, body, t_send_box=None):
    """Streams /v1/completions; returns dict(t_send, t_first, t_last, tokens, chunks)."""
    body = dict(body, stream=True, stream_options={"include_usage": True})
    c = http.client.HTTPConnection(HOST, port, timeout=600)
    t_send = time.perf_counter()
    c.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    r = c.getresponse()
    if r.status != 200:
        raise RuntimeError(f"stream -> {r.status}: {r.read()[:500]!r}")
    t_first = t_last = None
    chunks, usage = 0, None
    while True:
        line = r.readline()
        if not line:
            break
        line = line.strip()
        if not line.startswith(b"data:"):
            continue
        payload = line[5:].strip()
        if payload == b"[DONE]":
            break
        ev = json.loads(payload)
        if ev.get("usage"):
            usage = ev["usage"]
        if ev.get("choices"):
            now = time.perf_counter()
            if t_first is None:
                t_first = now
            t_last = now
            chunks += 1
    c.close()
    tokens = usage["completion_tokens"] if usage else chunks
    return {"t_send": t_send, "t_first": t_first, "t_last": t_last, "tokens": tokens, "chunks": chunks}


# ----------------------------------------------------------------------------- servers

class Server:
    """One server process: started, waited for, measured, stopped."""

    def __init__(self, kind, argv, port, log_path, ready_path, env=None):
        self.kind, self.argv, self.port, self.log_path, self.ready_path = kind, argv, port, log_path, ready_path
        self.env = env
        self.proc = None
        self.load_s = None

    def __enter__(self):
        self.log = open(self.log_path, "w")
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(self.argv, stdout=self.log, stderr=subprocess.STDOUT, env=self.env)
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind} exited with {self.proc.returncode}; see {self.log_path}")
            try:
                status, _ = get(self.port, self.ready_path)
                if status == 200:
                    break
            except OSError:
                pass
            if time.perf_counter() - t0 > 1800:
                raise RuntimeError(f"{self.kind} not ready after 30 min")
            time.sleep(0.05)
        self.load_s = time.perf_counter() - t0
        return self

    def memory(self):
        out = {}
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                    out[k] = int(v.split()[0]) / 1024.0  # MiB
        return out

    def __exit__(self, *exc):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


class Flavor:
    """How a request names the base model or an adapter, per server."""

    def __init__(self, kind, names, base_model=None):
        self.kind, self.names, self.base_model = kind, names, base_model

    def body(self, adapter, **kw):
        """adapter: None for the base model, else an index into names."""
        if self.kind == "llamacpp":
            lora = [{"id": 0, "scale": 0.0}] if adapter is None else [{"id": adapter, "scale": 1.0}]
            return dict(kw, model="x", lora=lora, cache_prompt=False)
        return dict(kw, model=self.base_model if adapter is None else self.names[adapter])


def llamacpp_server(a, model, lora_paths, log):
    argv = [a.llama_server, "-m", model, "--host", HOST, "--port", str(a.llama_port),
            "--threads", str(a.threads), "--threads-batch", str(a.threads),
            "-np", str(a.slots), "-kvu", "-c", str(a.ctx), "--cache-ram", "0", "--no-webui"]
    if lora_paths:
        argv += ["--lora", ",".join(lora_paths), "--lora-init-without-apply"]
    argv += shlex.split(os.environ.get("LLAMACPP_FLAGS", ""))
    return Server("llama.cpp", argv, a.llama_port, log, "/health")


def openlora_server(a, model, adapters_dir, log):
    argv = [a.openlora, "serve", "--model", model, "--port", str(a.openlora_port), "--host", HOST]
    if adapters_dir:
        argv += ["--adapters-dir", adapters_dir]
    argv += shlex.split(os.environ.get("OPENLORA_FLAGS", ""))
    # the f32 path's rayon pool; `--threads N` in OPENLORA_FLAGS is the executor's own setting
    env = dict(os.environ, RAYON_NUM_THREADS=os.environ.get("RAYON_NUM_THREADS", str(a.threads)))
    return Server("openlora", argv, a.openlora_port, log, "/ready", env)


def openlora_base_name(port, names):
    _, data = get(port, "/v1/models")
    ids = [m["id"] for m in json.loads(data)["data"]]
    base = [i for i in ids if i not in names]
    return base[0] if base else ids[0]


# ----------------------------------------------------------------------------- measurements

def pct(xs, q):
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * q / 100.0
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def long_prompt(rep, words=900):
    """~1,000 tokens of distinct words; the repetition number and a shuffled order come first, so no two
    repetitions share a prefix."""
    rng = random.Random(7919 * rep + 17)
    return f"Session {rep}: " + " ".join(rng.choice(WORDS) for _ in range(words)) + "\nSummary:"


def measure_decode(port, fl, a, adapter=None):
    rates, ttfts, counts = [], [], []
    for rep in range(a.reps):
        s = stream(port, fl.body(adapter, prompt=SHORT_PROMPT, max_tokens=a.tokens, temperature=0,
                                 ignore_eos=True))
        counts.append(s["tokens"])
        ttfts.append(s["t_first"] - s["t_send"])
        rates.append((s["tokens"] - 1) / (s["t_last"] - s["t_first"]))
    return {"decode_tok_s": med(rates), "ttft_s": med(ttfts), "decode_tokens": counts,
            "decode_all": rates}


def measure_prefill(port, fl, a):
    rates, ntok = [], []
    for rep in range(a.reps):
        body = fl.body(None, prompt=long_prompt(rep + 1000 * a.seed), max_tokens=1, temperature=0)
        t0 = time.perf_counter()
        r = post(port, "/v1/completions", body)
        dt = time.perf_counter() - t0
        n = r["usage"]["prompt_tokens"]
        ntok.append(n)
        rates.append(n / dt)
    return {"prefill_tok_s": med(rates), "prefill_prompt_tokens": ntok, "prefill_all": rates}


def measure_concurrent(port, fl, a):
    n = len(fl.names)
    aggs, ttfts, counts = [], [], []
    for rep in range(a.reps):
        results = [None] * n
        barrier = threading.Barrier(n)

        def run(i):
            barrier.wait()
            results[i] = stream(port, fl.body(i, prompt=SHORT_PROMPT, max_tokens=a.tokens, temperature=0,
                                              ignore_eos=True))

        th = [threading.Thread(target=run, args=(i,)) for i in range(n)]
        for t in th:
            t.start()
        for t in th:
            t.join()
        start = min(r["t_send"] for r in results)
        end = max(r["t_last"] for r in results)
        total = sum(r["tokens"] for r in results)
        counts.append(total)
        aggs.append(total / (end - start))
        ttfts += [r["t_first"] - r["t_send"] for r in results]
    return {"conc_tok_s": med(aggs), "conc_ttft_p50_s": pct(ttfts, 50), "conc_ttft_p99_s": pct(ttfts, 99),
            "conc_tokens": counts, "conc_all": aggs, "conc_streams": n}


# ----------------------------------------------------------------------------- accuracy

def gguf_vocab(model):
    """Each token's text (tokenizer.ggml.tokens, GPT-2 byte-level form decoded; control tokens as written)."""
    from gguf import GGUFReader
    r = GGUFReader(model)
    f = r.fields["tokenizer.ggml.tokens"]
    toks = [bytes(f.parts[i]).decode("utf-8") for i in f.data]
    # GPT-2's bytes_to_unicode, inverted
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1)) + \
        list(range(ord("\xae"), ord("\xff") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    byte_of = {chr(c): b for b, c in zip(bs, cs)}

    def text(t):
        if all(ch in byte_of for ch in t):
            return bytes(byte_of[ch] for ch in t).decode("utf-8", errors="replace")
        return t

    return [text(t) for t in toks]


def accuracy_llamacpp(port, ref, names, steps):
    """Greedy ids via /completion with prompt ids. llama.cpp's ignore_eos bans EOG tokens, but the reference
    generates through them, so: generate without ignore_eos; when it stops on an EOG token (returned last in
    `tokens`), continue from prompt + everything generated so far (cache_prompt false: a fresh prefill)."""
    out = []
    for c in ref["cases"]:
        ids = ref["prompts"][c["prompt_index"]]["ids"]
        lora = ([{"id": 0, "scale": 0.0}] if c["adapter"] is None
                else [{"id": names.index(c["adapter"]), "scale": 1.0}])
        gen = []
        while len(gen) < steps:
            r = post(port, "/completion", {"prompt": ids + gen, "n_predict": steps - len(gen), "temperature": 0,
                                            "cache_prompt": False, "return_tokens": True, "lora": lora,
                                            "samplers": ["top_k"], "top_k": 1})
            toks = r.get("tokens") or []
            if not toks:
                break
            gen += toks
        out.append(gen[:steps])
    return out


def accuracy_openlora(port, ref, base_name, steps, vocab):
    """Greedy via /v1/completions with prompt ids, ignore_eos (the reference never stops on EOS); the
    generated ids are read back from logprobs' per-token strings (mapped to ids through the GGUF vocab)."""
    out = []
    for c in ref["cases"]:
        ids = ref["prompts"][c["prompt_index"]]["ids"]
        r = post(port, "/v1/completions", {"model": base_name if c["adapter"] is None else c["adapter"],
                                           "prompt": ids, "max_tokens": steps, "temperature": 0,
                                           "ignore_eos": True, "logprobs": 1})
        out.append(r["choices"][0]["logprobs"]["tokens"])
    return out


def score(ref, got, as_text=None):
    """Exact matches (all `steps` tokens) and the matching prefix length per case."""
    rows = []
    for c, g in zip(ref["cases"], got):
        want = c["greedy"] if as_text is None else [as_text(i) for i in c["greedy"]]
        k = 0
        while k < min(len(want), len(g)) and want[k] == g[k]:
            k += 1
        rows.append({"adapter": c["adapter"] or "base", "prompt": c["prompt_index"], "exact": k == len(want),
                     "prefix": k})
    return rows


# ----------------------------------------------------------------------------- runs

def run_server(a, kind, model, names, lora_paths, adapters_dir, ref, vocab):
    log = os.path.join(a.workdir, f"{kind}.log")
    srv = (llamacpp_server(a, model, lora_paths, log) if kind == "llamacpp"
           else openlora_server(a, model, adapters_dir, log))
    res = {"server": kind, "argv": " ".join(shlex.quote(x) for x in srv.argv)}
    with srv:
        res["load_s"] = srv.load_s
        port = srv.port
        base = openlora_base_name(port, names) if kind == "openlora" else None
        fl = Flavor(kind, names, base)
        post(port, "/v1/completions", fl.body(None, prompt="Hi", max_tokens=4, temperature=0))  # warm-up
        print(f"[{kind}] ready in {srv.load_s:.2f} s; measuring ...", file=sys.stderr)
        if a.mode_8b:
            res.update(measure_decode(port, fl, a))
            res["rss_after_base_mib"] = srv.memory()["VmRSS"]
            d = measure_decode(port, fl, a, adapter=0)
            res["decode_adapter_tok_s"], res["decode_adapter_tokens"] = d["decode_tok_s"], d["decode_tokens"]
        else:
            res.update(measure_decode(port, fl, a))
            print(f"[{kind}] decode {res['decode_tok_s']:.1f} tok/s", file=sys.stderr)
            res.update(measure_prefill(port, fl, a))
            print(f"[{kind}] prefill {res['prefill_tok_s']:.1f} tok/s", file=sys.stderr)
            res.update(measure_concurrent(port, fl, a))
            print(f"[{kind}] {len(names)} streams {res['conc_tok_s']:.1f} tok/s", file=sys.stderr)
        res.update(srv.memory())
        if ref is not None:
            steps = ref["greedy_steps"]
            if kind == "llamacpp":
                res["accuracy"] = score(ref, accuracy_llamacpp(port, ref, names, steps))
            else:
                res["accuracy"] = score(ref, accuracy_openlora(port, ref, base, steps, vocab), vocab.__getitem__)
    return res


def git_commit(path):
    try:
        return subprocess.run(["git", "-C", path, "log", "-1", "--format=%h %cd", "--date=short"],
                              capture_output=True, text=True, check=True).stdout.strip()
    except (subprocess.CalledProcessError, FileNotFoundError):
        return "?"


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def fmt(x, nd=1):
    return "-" if x is None or x != x else f"{x:.{nd}f}"


def ratio(o, l, invert=False):
    if o is None or l is None or not l or o != o or l != l:
        return "-"
    return f"{o / l:.2f}"


def table(a, results):
    o, l = results.get("openlora", {}), results.get("llamacpp", {})
    rows = []
    if a.mode_8b:
        spec = [("load time (spawn -> ready), s", "load_s", 2),
                ("single stream decode, base, tok/s", "decode_tok_s", 2),
                (f"single stream decode, rank-16 adapter, tok/s", "decode_adapter_tok_s", 2),
                ("single stream TTFT, s", "ttft_s", 2),
                ("resident memory after runs (VmRSS), MiB", "VmRSS", 0),
                ("  of which anonymous (RssAnon), MiB", "RssAnon", 0),
                ("  of which file-backed, e.g. mmap'd weights (RssFile), MiB", "RssFile", 0),
                ("peak resident memory (VmHWM), MiB", "VmHWM", 0)]
    else:
        spec = [("single stream decode, tok/s", "decode_tok_s", 1),
                ("single stream TTFT, ms", "ttft_ms", 1),
                ("prefill of a fresh prompt, tok/s", "prefill_tok_s", 1),
                (f"{a.slots} concurrent streams, each its own adapter, aggregate tok/s", "conc_tok_s", 1),
                (f"{a.slots} streams TTFT p50, ms", "conc_ttft_p50_ms", 0),
                (f"{a.slots} streams TTFT p99, ms", "conc_ttft_p99_ms", 0),
                ("resident memory after runs (VmRSS), MiB", "VmRSS", 0),
                ("  of which anonymous (RssAnon), MiB", "RssAnon", 0),
                ("  of which file-backed, e.g. mmap'd weights (RssFile), MiB", "RssFile", 0),
                ("peak resident memory (VmHWM), MiB", "VmHWM", 0),
                ("load time (spawn -> ready), s", "load_s", 2)]
        for r in (o, l):
            for k in ("ttft", "conc_ttft_p50", "conc_ttft_p99"):
                if r.get(k + "_s") is not None:
                    r[k + "_ms"] = r[k + "_s"] * 1000
    lines = ["| | openlora | llama.cpp | openlora / llama.cpp |", "|---|---|---|---|"]
    for label, key, nd in spec:
        lines.append(f"| {label} | {fmt(o.get(key), nd)} | {fmt(l.get(key), nd)} | {ratio(o.get(key), l.get(key))} |")
    rows.append("\n".join(lines))
    return "\n".join(rows)


def loadavg():
    try:
        with open("/proc/loadavg") as f:
            return float(f.read().split()[0])
    except OSError:
        return float("nan")


def report(a, results):
    out = []
    title = "Llama-3-8B-shaped random Q4_K GGUF" if a.mode_8b else "SmolLM2-135M-Instruct Q4_1"
    out.append(f"## openlora vs llama.cpp: {title}, {a.threads} threads each, one server at a time\n")
    out.append(f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    out.append(f"- openlora: {git_commit(a.repo)} (`{os.path.basename(a.openlora)}`), "
               f"OPENLORA_FLAGS=`{os.environ.get('OPENLORA_FLAGS', '')}`")
    out.append(f"- llama.cpp: {a.llama_version}, LLAMACPP_FLAGS=`{os.environ.get('LLAMACPP_FLAGS', '')}`")
    out.append(f"- CPU: {cpu_name()}, {os.cpu_count()} logical cores; model: `{os.path.basename(a.model)}`")
    out.append(f"- adapters ({len(a.names_list)}): {', '.join(a.names_list)}")
    end_load = loadavg()
    busy = " -- BUSY MACHINE: other work shared the cores, figures are not reliable" if max(
        a.load_start, end_load) > 1.5 * (os.cpu_count() or 1) else ""
    out.append(f"- 1-min load average at start / end: {a.load_start:.1f} / {end_load:.1f}{busy}")
    out.append(f"- {a.reps} repetitions, medians; decode {a.tokens} tokens (temperature 0, ignore_eos)")
    for k, r in results.items():
        out.append(f"- {k}: `{r['argv']}`")
        extra = []
        for key in ("decode_tokens", "decode_adapter_tokens", "prefill_prompt_tokens", "conc_tokens"):
            if key in r:
                extra.append(f"{key}={r[key]}")
        for key in ("decode_all", "prefill_all", "conc_all"):
            if key in r:
                extra.append(f"{key}=[{', '.join(f'{x:.1f}' for x in r[key])}]")
        if extra:
            out.append(f"  - {'; '.join(extra)}")
    out.append("")
    out.append(table(a, results))
    for k, r in results.items():
        if "accuracy" in r:
            acc = r["accuracy"]
            n = sum(x["exact"] for x in acc)
            out.append(f"\nAccuracy, {k}: {n} of {len(acc)} greedy {a.steps}-token references reproduced exactly "
                       f"(f32 transformers+PEFT, tests/fixtures/smollm2/reference.json); matching prefix per case "
                       f"(adapter/prompt:len): "
                       + ", ".join(f"{x['adapter']}/{x['prompt']}:{x['prefix']}" for x in acc))
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llama-server", required=True)
    ap.add_argument("--llama-version", default="?")
    ap.add_argument("--openlora", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--adapters-root", required=True, help="holds peft/<name>/ and gguf/<name>.gguf")
    ap.add_argument("--names", required=True, help="comma-separated adapter names (order = llama.cpp ids)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--slots", type=int, default=8)
    ap.add_argument("--ctx", type=int, default=8192)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0, help="varies the prefill prompts between runs")
    ap.add_argument("--accuracy", help="reference.json to check greedy tokens against")
    ap.add_argument("--only", choices=["llamacpp", "openlora"])
    ap.add_argument("--8b", dest="mode_8b", action="store_true")
    ap.add_argument("--llama-port", type=int, default=18180)
    ap.add_argument("--openlora-port", type=int, default=18181)
    ap.add_argument("--workdir", default=os.path.expanduser("~/.cache/openlora/bench-runs"))
    ap.add_argument("--repo", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    ap.add_argument("--json")
    a = ap.parse_args()
    a.names_list = a.names.split(",")
    a.load_start = loadavg()
    os.makedirs(a.workdir, exist_ok=True)
    ref, vocab = None, None
    if a.accuracy:
        with open(a.accuracy) as f:
            ref = json.load(f)
        a.steps = ref["greedy_steps"]
        vocab = gguf_vocab(a.model)
    lora_paths = [os.path.join(a.adapters_root, "gguf", f"{n}.gguf") for n in a.names_list]
    adapters_dir = os.path.join(a.adapters_root, "peft")
    results = {}
    for kind in ("llamacpp", "openlora"):
        if a.only and a.only != kind:
            continue
        try:
            results[kind] = run_server(a, kind, a.model, a.names_list, lora_paths, adapters_dir, ref, vocab)
        except Exception as e:  # report what ran; say what failed
            print(f"[{kind}] FAILED: {e}", file=sys.stderr)
            results[kind] = {"argv": "(failed: " + str(e).replace("`", "'")[:300] + ")"}
    text = report(a, results)
    print(text)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
