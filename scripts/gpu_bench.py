#!/usr/bin/env python3
"""GPU benchmarks for scripts/gpu-run.sh stage d, and the comparison of openlora's against its targets.

    gpu_bench.py peer --out DIR      (torch/transformers/peft, on the device machine)
    gpu_bench.py targets --openlora bench_device.json [--peer DIR/peer.json] [--rehearse] --out DIR

`peer` measures, in one call, and writes DIR/peer.json and a markdown table to DIR/bench.md:
  * HBM copy bandwidth (device-to-device, large tensor), the roofline's denominator;
  * a Llama-3-8B-shaped model with random bf16 weights built on the GPU: weight bytes and the
    HBM roofline of one decode step (weight bytes / copy bandwidth);
  * HF transformers decode step time at batch 1/32/128 (no adapters) as a reference point;
  * HF transformers + PEFT mixed-adapter generation (`adapter_names`, rank-16 adapters on all seven
    projections, Zipf(1.0) adapter popularity), tokens/s: the peer openlora is measured against;
  * cold adapter page-in: pinned host -> device copy of one such adapter (the transfer floor).
openlora's own rows come from `openlora bench-device` (its JSON); `targets` (no torch needed, so
CI runs it on the twin's JSON) prints pass/fail per target and writes DIR/targets.{md,json}:
  batch-1 decode >= 85% of the HBM roofline; 1000 adapters >= 95% of no-adapter throughput;
  >= 30x transformers+PEFT tokens/s (same batch, same adapter count); cold page-in <= 5 ms p50.
Exit status of `targets`: 1 when a target is missed (with --rehearse: only when a row is missing,
since twin figures are no GPU claims).
"""
import argparse
import json
import os
import sys
import time

try:
    import torch
except ImportError:  # `targets` runs without torch (CI)
    torch = None


def timed(fn, reps):
    fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / reps


def copy_bandwidth():
    n = 1 << 30  # 2 GiB of bf16
    a = torch.empty(n, dtype=torch.bfloat16, device="cuda")
    b = torch.empty_like(a)
    s = timed(lambda: b.copy_(a), 20)
    return 2 * a.numel() * a.element_size() / s  # read + write bytes per second


def llama8b(layers):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                      num_hidden_layers=layers, num_attention_heads=32, num_key_value_heads=8,
                      rope_theta=500000.0, max_position_embeddings=8192, tie_word_embeddings=False)
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)  # build in bf16 directly (fp32 first would be 32 GB)
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg).eval()
    torch.set_default_dtype(torch.float32)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02)
    return model


def decode_step_s(model, batch, ctx=128):
    torch.set_grad_enabled(False)
    ids = torch.randint(0, 1000, (batch, ctx), device="cuda")
    out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
    past = out.past_key_values
    nxt = ids[:, -1:]
    # Each timed step appends one token to the cache (6 in all): negligible next to ctx=128.
    return timed(lambda: model(input_ids=nxt, past_key_values=past, logits_to_keep=1), 5)


PROJ = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def peft_throughput(model, n_adapters, batch, steps, rng):
    torch.set_grad_enabled(False)
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=16, lora_alpha=32, target_modules=PROJ, init_lora_weights=False)
    pm = get_peft_model(model, cfg, adapter_name="a0")
    for i in range(1, n_adapters):
        pm.add_adapter(f"a{i}", cfg)
    w = torch.tensor([1.0 / (k + 1) for k in range(n_adapters)])  # Zipf(1.0)
    names = [f"a{int(i)}" for i in torch.multinomial(w, batch, replacement=True, generator=rng)]
    ids = torch.randint(0, 1000, (batch, 64), device="cuda")
    kw = dict(max_new_tokens=steps, min_new_tokens=steps, do_sample=False, pad_token_id=0)
    t = time.perf_counter()
    pm.generate(input_ids=ids, attention_mask=torch.ones_like(ids), adapter_names=names, **kw)
    torch.cuda.synchronize()
    tps = batch * steps / (time.perf_counter() - t)
    model = pm.unload()  # back to the bare base model for the next run
    return tps, model


def page_in_s(layers):
    # One rank-16 adapter on all seven projections of every layer, bf16.
    h, kv, f, r = 4096, 1024, 14336, 16
    per_layer = r * (h + h) + r * (h + kv) * 2 + r * (h + h) + r * (h + f) * 2 + r * (f + h)
    host = torch.empty(per_layer * layers, dtype=torch.bfloat16).pin_memory()
    dev = torch.empty_like(host, device="cuda")
    return timed(lambda: dev.copy_(host, non_blocking=True), 20), host.numel() * 2


def peer(a):
    rows, data = [], {"device": torch.cuda.get_device_name(), "layers": a.layers}
    bw = copy_bandwidth()
    data["copy_bandwidth_bytes_per_s"] = bw
    rows.append(("HBM copy bandwidth", f"{bw / 1e9:.0f} GB/s"))
    model = llama8b(a.layers)
    wbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    roof = wbytes / bw
    data["weight_bytes"] = wbytes
    rows.append((f"weights ({a.layers} layers, bf16)", f"{wbytes / 2**30:.2f} GiB"))
    rows.append(("decode roofline (weights / bandwidth)", f"{roof * 1e3:.2f} ms/step"))
    data["hf_decode"] = []
    for b in (1, 32, 128):
        s = decode_step_s(model, b)
        data["hf_decode"].append({"batch": b, "step_ms": s * 1e3})
        rows.append((f"HF decode step, batch {b}, no adapters", f"{s * 1e3:.2f} ms ({roof / s:.0%} of roofline)"))
        write(a.out, data, rows)  # what is measured so far survives a timeout
    rng = torch.Generator().manual_seed(0)
    data["peft"] = []
    for n in [int(x) for x in a.adapters.split(",")]:
        tps, model = peft_throughput(model, n, a.batch, 32, rng)
        data["peft"].append({"adapters": n, "batch": a.batch, "tokens_per_s": tps})
        rows.append((f"HF+PEFT mixed generate, {n} adapters (Zipf 1.0), batch {a.batch}", f"{tps:.0f} tok/s"))
        write(a.out, data, rows)
    s, nbytes = page_in_s(a.layers)
    data["page_in_floor_ms"] = s * 1e3
    rows.append(("adapter page-in floor (pinned H2D, r16 x 7 proj)", f"{s * 1e3:.2f} ms for {nbytes / 2**20:.1f} MiB"))
    write(a.out, data, rows)


def write(out, data, rows):
    lines = [f"device: {data['device']}", "", "| measurement | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in rows]
    text = "\n".join(lines) + "\n"
    print(text, flush=True)
    with open(os.path.join(out, "bench.md"), "w") as f:
        f.write(text)
    with open(os.path.join(out, "peer.json"), "w") as f:
        json.dump(data, f, indent=1)


def target_rows(ol, peer):
    """(target, measured, pass: True/False/None when not measurable) per target."""
    rows = []
    b1 = [d for d in ol.get("decode", []) if d["batch"] == 1]
    # The roofline over the higher of the two measured copy bandwidths (candle's, torch's): a slow
    # copy in one of them must not flatter the fraction.
    bw_ol = ol["copy_bandwidth_bytes_per_s"]
    bw = max(bw_ol, (peer or {}).get("copy_bandwidth_bytes_per_s", 0))
    if b1:
        roof_ms = b1[0]["roofline_ms"] * bw_ol / bw
        frac = roof_ms / b1[0]["step_ms"]
        rows.append(("batch-1 decode >= 85% of the roofline",
                     f"{frac:.0%} ({b1[0]['step_ms']:.2f} ms vs {roof_ms:.2f} ms at {bw / 1e9:.0f} GB/s)"
                     + (" -- above the roofline: a measurement is wrong" if frac > 1.1 else ""),
                     0.85 <= frac <= 1.1))
    else:
        rows.append(("batch-1 decode >= 85% of the roofline", "no batch-1 row", None))
    thr = ol.get("adapter_throughput", [])
    most = max((t["adapters"] for t in thr), default=0)
    for b in sorted({t["batch"] for t in thr}):
        base = [t["tokens_per_s"] for t in thr if t["batch"] == b and t["adapters"] == 0]
        top = [t["tokens_per_s"] for t in thr if t["batch"] == b and t["adapters"] == most]
        if not base or not top or most == 0:
            rows.append((f"{most} adapters >= 95% of no-adapter tok/s, batch {b}", "missing rows", None))
            continue
        r = top[0] / (sum(base) / len(base))
        spread = (max(base) - min(base)) / max(base)
        rows.append((f"{most} adapters >= 95% of no-adapter tok/s, batch {b}",
                     f"{r:.0%} ({top[0]:.0f} vs {sum(base) / len(base):.0f} tok/s; no-adapter runs differ {spread:.0%})", r >= 0.95))
    for p in (peer or {}).get("peft", []):
        mine = [t["tokens_per_s"] for t in thr if t["batch"] == p["batch"] and t["adapters"] == p["adapters"]]
        x = mine[0] / p["tokens_per_s"] if mine else None
        rows.append((f">= 30x transformers+PEFT, {p['adapters']} adapters, batch {p['batch']}",
                     f"{x:.1f}x ({mine[0]:.0f} vs {p['tokens_per_s']:.0f} tok/s)" if mine else "no openlora row at that batch/count",
                     x >= 30 if x is not None else None))
    if not peer:
        rows.append((">= 30x transformers+PEFT", "no peer measurement (peer.json missing)", None))
    pi = ol.get("page_in")
    rows.append(("cold page-in <= 5 ms p50", f"{pi['p50_ms']:.2f} ms p50, {pi['p90_ms']:.2f} ms p90 ({pi['host_bytes'] / 2**20:.1f} MiB host f32)" if pi else "not measured",
                 pi["p50_ms"] <= 5.0 if pi else None))
    if not thr:
        rows.append(("adapters >= 95% of no-adapter tok/s", "not measured", None))
    return rows


def targets(a):
    if not os.path.exists(a.openlora):
        print(f"no openlora bench-device JSON at {a.openlora}: stage d-bench did not run or write it")
        return 1
    with open(a.openlora) as f:
        ol = json.load(f)
    peer_data = None
    if a.peer and os.path.exists(a.peer):
        with open(a.peer) as f:
            peer_data = json.load(f)
    rows = target_rows(ol, peer_data)
    word = lambda ok: "n/a (twin)" if a.rehearse else {True: "pass", False: "FAIL", None: "not measured"}[ok]
    head = f"openlora bench-device on {ol['device']} ({ol['dtype']}, {ol['shape']}, {ol['layers']} layers)"
    lines = [head + (" -- rehearsal on the CPU twin: no GPU claim" if a.rehearse else ""), "",
             "| target | measured | result |", "|---|---|---|"]
    lines += [f"| {t} | {m} | {word(ok)} |" for t, m, ok in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    with open(os.path.join(a.out, "targets.md"), "w") as f:
        f.write(text)
    with open(os.path.join(a.out, "targets.json"), "w") as f:
        json.dump([{"target": t, "measured": m, "pass": ok} for t, m, ok in rows], f, indent=1)
    if a.rehearse:
        return 0
    return 0 if all(ok is True for _, _, ok in rows) else 1


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("peer")
    p.add_argument("--out", default=".")
    p.add_argument("--layers", type=int, default=32, help="8B shape: 32")
    p.add_argument("--adapters", default="1,100", help="PEFT adapter counts (1000 takes long)")
    p.add_argument("--batch", type=int, default=32)
    t = sub.add_parser("targets")
    t.add_argument("--openlora", required=True, help="openlora bench-device --out JSON")
    t.add_argument("--peer", help="peer.json of `peer`")
    t.add_argument("--rehearse", action="store_true")
    t.add_argument("--out", default=".")
    a = ap.parse_args()
    if a.cmd == "peer":
        peer(a)
        return 0
    return targets(a)


if __name__ == "__main__":
    sys.exit(main())
