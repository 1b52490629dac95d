#!/usr/bin/env python3
"""GPU benchmarks run on the device machine by scripts/gpu-run.sh (torch/transformers/peft there).

Measures, in one call, and writes a markdown table to OUT/bench.md:
  * HBM copy bandwidth (device-to-device, large tensor), the roofline's denominator;
  * a Llama-3-8B-shaped model with random bf16 weights built on the GPU: weight bytes and the
    HBM roofline of one decode step (weight bytes / copy bandwidth);
  * HF transformers decode step time at batch 1/32/128 (no adapters) as a reference point;
  * HF transformers + PEFT mixed-adapter generation (`adapter_names`, rank-16 adapters on all seven
    projections, Zipf(1.0) adapter popularity), tokens/s: the peer openlora is measured against;
  * cold adapter page-in: pinned host -> device copy of one such adapter (the transfer floor).
openlora's own rows (the device executor's decode step on this model, 1/100/1000 adapters) are
not measured by this script yet; the table says so instead of reporting a number.
"""
import argparse
import os
import time

import torch


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


@torch.no_grad()
def decode_step_s(model, batch, ctx=128):
    ids = torch.randint(0, 1000, (batch, ctx), device="cuda")
    out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
    past = out.past_key_values
    nxt = ids[:, -1:]
    # Each timed step appends one token to the cache (6 in all): negligible next to ctx=128.
    return timed(lambda: model(input_ids=nxt, past_key_values=past, logits_to_keep=1), 5)


PROJ = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@torch.no_grad()
def peft_throughput(model, n_adapters, batch, steps, rng):
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=".")
    ap.add_argument("--layers", type=int, default=32, help="8B shape: 32")
    ap.add_argument("--adapters", default="1,100", help="PEFT adapter counts (1000 takes long)")
    a = ap.parse_args()
    rows = []
    bw = copy_bandwidth()
    rows.append(("HBM copy bandwidth", f"{bw / 1e9:.0f} GB/s"))
    model = llama8b(a.layers)
    wbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    roof = wbytes / bw
    rows.append((f"weights ({a.layers} layers, bf16)", f"{wbytes / 2**30:.2f} GiB"))
    rows.append(("decode roofline (weights / bandwidth)", f"{roof * 1e3:.2f} ms/step"))
    for b in (1, 32, 128):
        s = decode_step_s(model, b)
        rows.append((f"HF decode step, batch {b}, no adapters", f"{s * 1e3:.2f} ms ({roof / s:.0%} of roofline)"))
    rng = torch.Generator().manual_seed(0)
    for n in [int(x) for x in a.adapters.split(",")]:
        tps, model = peft_throughput(model, n, 32, 32, rng)
        rows.append((f"HF+PEFT mixed generate, {n} adapters (Zipf 1.0), batch 32", f"{tps:.0f} tok/s"))
    s, nbytes = page_in_s(a.layers)
    rows.append(("adapter page-in floor (pinned H2D, r16 x 7 proj)", f"{s * 1e3:.2f} ms for {nbytes / 2**20:.1f} MiB"))
    rows.append(("openlora GPU decode / adapter throughput", "pending: not measured by this script yet (the device executor runs on CUDA; its bench is to be written)"))
    dev = torch.cuda.get_device_name()
    lines = [f"device: {dev}", "", "| measurement | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    with open(os.path.join(a.out, "bench.md"), "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
