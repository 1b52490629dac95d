#!/usr/bin/env python3
"""Write a Llama-3-8B-shaped GGUF with RANDOM weights in Q4_K (output.weight Q6_K, norms F32), plus a random
rank-16 PEFT adapter for it (q,k,v,o, every layer) -- a scale test, not a model: it generates garbage text.

    python scripts/make-8b-gguf.py [--out ~/.cache/openlora/llama3-8b-random-q4_k.gguf] [--seed 0]
           [--layers 32] [--adapter-dir ~/.cache/openlora/llama3-8b-adapters/peft/rand_r16_0]

Never writes into the repository. Needs numpy + gguf (benches/bench_venv.sh makes a venv with both).

Shape: llama arch, 32 layers, hidden 4096, 32 heads / 8 KV heads (head dim 128), ffn 14336, vocab 128256,
rope base 500000, rms eps 1e-5, context 8192, untied output. The tokenizer is SmolLM2's byte-level BPE
(tokens, types, merges, `smollm` pre-tokenizer, ChatML template, read from the SmolLM2 GGUF that
scripts/fetch-model.sh prints) padded with control tokens `<|reserved_special_token_N|>` to 128256 entries, so
the vocabulary matches the embedding.

The quantized blocks are written directly as random bytes, so no quantizer is needed:
  Q4_K (256 weights, 144 bytes): f16 d, f16 dmin, 12 bytes of 6-bit sub-scales/mins, 128 bytes of 4-bit
       quants. Each sub-block's min equals its scale and dmin = 7.5 d, so w = d*sc*(q - 7.5): zero-mean,
       |w| <= 7.5*d*63 with d = 1e-4 (about 0.02 std).
  Q6_K (256 weights, 210 bytes): 128 bytes low 4 bits, 64 bytes high 2 bits, 16 int8 scales, f16 d:
       w = d*sc*(q - 32) with sc in [8, 16], d = 9e-5 (about 0.02 std).
"""
import argparse
import os
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
CACHE = os.environ.get("OPENLORA_CACHE", os.path.expanduser("~/.cache/openlora"))

CFG = dict(n_layer=32, hidden=4096, n_head=32, n_head_kv=8, ffn=14336, vocab=128256, rope_base=500000.0,
           eps=1e-5, ctx=8192)
QK = 256


def q4_k_rows(rng, rows, cols, d=1e-4):
    """Random Q4_K rows: uint8 [rows, cols/256*144]."""
    nb = rows * cols // QK
    blk = np.empty((nb, 144), np.uint8)
    blk[:, 0:2] = np.frombuffer(np.full(nb, d, np.float16).tobytes(), np.uint8).reshape(nb, 2)
    blk[:, 2:4] = np.frombuffer(np.full(nb, 7.5 * d, np.float16).tobytes(), np.uint8).reshape(nb, 2)
    sc = rng.integers(16, 64, (nb, 8), dtype=np.uint8)  # 6-bit sub-scales; mins = scales
    m = sc
    s = np.empty((nb, 12), np.uint8)
    # inverse of ggml's get_scale_min_k4
    s[:, 0:4] = (sc[:, 0:4] & 63) | ((sc[:, 4:8] >> 4) << 6)
    s[:, 4:8] = (m[:, 0:4] & 63) | ((m[:, 4:8] >> 4) << 6)
    s[:, 8:12] = (sc[:, 4:8] & 0xF) | ((m[:, 4:8] & 0xF) << 4)
    blk[:, 4:16] = s
    blk[:, 16:144] = rng.integers(0, 256, (nb, 128), dtype=np.uint8)
    return blk.reshape(rows, cols // QK * 144)


def q6_k_rows(rng, rows, cols, d=9e-5):
    """Random Q6_K rows: uint8 [rows, cols/256*210]."""
    nb = rows * cols // QK
    blk = np.empty((nb, 210), np.uint8)
    blk[:, 0:192] = rng.integers(0, 256, (nb, 192), dtype=np.uint8)  # ql, qh
    blk[:, 192:208] = rng.integers(8, 17, (nb, 16), dtype=np.int8).view(np.uint8)
    blk[:, 208:210] = np.frombuffer(np.full(nb, d, np.float16).tobytes(), np.uint8).reshape(nb, 2)
    return blk.reshape(rows, cols // QK * 210)


def tensor_plan(c):
    """(name, rows, cols, kind) in file order; rows = output features (numpy shape [rows, cols])."""
    h, kv = c["hidden"], c["hidden"] // c["n_head"] * c["n_head_kv"]
    plan = [("token_embd.weight", c["vocab"], h, "q4_k")]
    for i in range(c["n_layer"]):
        p = f"blk.{i}."
        plan += [(p + "attn_norm.weight", 1, h, "norm"), (p + "attn_q.weight", h, h, "q4_k"),
                 (p + "attn_k.weight", kv, h, "q4_k"), (p + "attn_v.weight", kv, h, "q4_k"),
                 (p + "attn_output.weight", h, h, "q4_k"), (p + "ffn_norm.weight", 1, h, "norm"),
                 (p + "ffn_gate.weight", c["ffn"], h, "q4_k"), (p + "ffn_up.weight", c["ffn"], h, "q4_k"),
                 (p + "ffn_down.weight", h, c["ffn"], "q4_k")]
    plan += [("output_norm.weight", 1, h, "norm"), ("output.weight", c["vocab"], h, "q6_k")]
    return plan


def borrowed_tokenizer(src_gguf, vocab):
    from gguf import GGUFReader
    r = GGUFReader(src_gguf)

    def strs(key):
        f = r.fields[key]
        return [bytes(f.parts[i]).decode("utf-8") for i in f.data]

    def scalar(key):
        f = r.fields[key]
        return f.parts[f.data[0]].tolist()[0]

    tokens = strs("tokenizer.ggml.tokens")
    types = [int(r.fields["tokenizer.ggml.token_type"].parts[i][0]) for i in r.fields["tokenizer.ggml.token_type"].data]
    n0 = len(tokens)
    tokens += [f"<|reserved_special_token_{i}|>" for i in range(vocab - n0)]
    types += [3] * (vocab - n0)  # CONTROL
    tmpl = r.fields.get("tokenizer.chat_template")
    return {
        "tokens": tokens, "types": types, "merges": strs("tokenizer.ggml.merges"),
        "pre": bytes(r.fields["tokenizer.ggml.pre"].parts[-1]).decode() if "tokenizer.ggml.pre" in r.fields else "default",
        "bos": scalar("tokenizer.ggml.bos_token_id"), "eos": scalar("tokenizer.ggml.eos_token_id"),
        "template": bytes(tmpl.parts[-1]).decode() if tmpl else None,
    }


def write_gguf(out, c, tok, seed):
    from gguf import GGMLQuantizationType as T, GGUFWriter
    w = GGUFWriter(out, "llama")
    w.add_name("llama3-8b-shaped-random-q4_k")
    w.add_file_type(14)  # MOSTLY_Q4_K_S
    w.add_context_length(c["ctx"])
    w.add_embedding_length(c["hidden"])
    w.add_block_count(c["n_layer"])
    w.add_feed_forward_length(c["ffn"])
    w.add_head_count(c["n_head"])
    w.add_head_count_kv(c["n_head_kv"])
    w.add_rope_dimension_count(c["hidden"] // c["n_head"])
    w.add_rope_freq_base(c["rope_base"])
    w.add_layer_norm_rms_eps(c["eps"])
    w.add_vocab_size(c["vocab"])
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(tok["pre"])
    w.add_token_list(tok["tokens"])
    w.add_token_types(tok["types"])
    w.add_token_merges(tok["merges"])
    w.add_bos_token_id(tok["bos"])
    w.add_eos_token_id(tok["eos"])
    w.add_add_bos_token(False)
    if tok["template"]:
        w.add_chat_template(tok["template"])
    plan = tensor_plan(c)
    for name, rows, cols, kind in plan:
        if kind == "norm":
            w.add_tensor_info(name, [cols], np.dtype(np.float32), cols * 4)
        else:
            qt, nbytes = (T.Q4_K, 144) if kind == "q4_k" else (T.Q6_K, 210)
            w.add_tensor_info(name, [rows, cols // QK * nbytes], np.dtype(np.uint8), rows * cols // QK * nbytes,
                              raw_dtype=qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    rng = np.random.default_rng(seed)
    for name, rows, cols, kind in plan:
        if kind == "norm":
            w.write_tensor_data(np.ones(cols, np.float32))
        elif kind == "q4_k":
            w.write_tensor_data(q4_k_rows(rng, rows, cols))
        else:
            w.write_tensor_data(q6_k_rows(rng, rows, cols))
    w.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(CACHE, "llama3-8b-random-q4_k.gguf"))
    ap.add_argument("--adapter-dir", default=os.path.join(CACHE, "llama3-8b-adapters", "peft", "rand_r16_0"))
    ap.add_argument("--tokenizer-from", help="GGUF to borrow the tokenizer from (default: scripts/fetch-model.sh)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--layers", type=int, default=CFG["n_layer"], help="fewer layers for a quick check")
    a = ap.parse_args()
    out = os.path.abspath(os.path.expanduser(a.out))
    if out.startswith(REPO + os.sep):
        sys.exit(f"refusing to write a model file into the repository: {out}")
    c = dict(CFG, n_layer=a.layers)
    src = a.tokenizer_from or subprocess.run(["bash", os.path.join(HERE, "fetch-model.sh")], check=True,
                                             capture_output=True, text=True).stdout.strip()
    os.makedirs(os.path.dirname(out), exist_ok=True)
    t0 = time.time()
    write_gguf(out + ".part", c, borrowed_tokenizer(src, c["vocab"]), a.seed)
    os.replace(out + ".part", out)
    print(f"wrote {out} ({os.path.getsize(out) / 2**30:.2f} GiB) in {time.time() - t0:.0f} s", file=sys.stderr)
    sys.path.insert(0, os.path.join(REPO, "benches"))
    from lora_gguf import make_random
    make_random(a.adapter_dir, out, 16, 1000 + a.seed, ["q_proj", "k_proj", "v_proj", "o_proj"], 0.03)
    print(f"wrote {a.adapter_dir} (random rank-16 PEFT adapter, q,k,v,o)", file=sys.stderr)
    print(out)


if __name__ == "__main__":
    main()
