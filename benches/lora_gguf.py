#!/usr/bin/env python3
"""PEFT LoRA adapters <-> llama.cpp GGUF LoRA, without torch (numpy + the `gguf` package).

    lora_gguf.py convert PEFT_DIR BASE.gguf OUT.gguf       one PEFT folder -> one GGUF LoRA
    lora_gguf.py random OUT_DIR BASE.gguf --rank 16 --seed S [--targets q,k,v,o] [--std 0.03]
                                                          a random PEFT adapter shaped for BASE.gguf
    lora_gguf.py bench-set BASE.gguf OUT_ROOT SRC_DIR...   the 8-adapter bench set: copies the given PEFT
                                                          folders, tops up with random rank-16 ones, writes
                                                          OUT_ROOT/peft/<name>/ and OUT_ROOT/gguf/<name>.gguf
                                                          and prints the names in order, one a line.

GGUF LoRA layout (what llama.cpp's convert_lora_to_gguf.py writes): tensors
`blk.{i}.{attn_q,attn_k,attn_v,attn_output,ffn_gate,ffn_up,ffn_down}.weight.lora_a` with numpy shape [r, in]
and `.lora_b` [out, r]; the rows of q/k's lora_b permuted like the base q/k weights (HF rotate_half layout ->
llama.cpp interleaved); KVs general.type=adapter, adapter.type=lora, adapter.lora.alpha (llama.cpp scales by
alpha / r, so an rsLoRA adapter's alpha is written as alpha * sqrt(r)).
"""
import argparse
import json
import math
import os
import shutil
import struct
import sys

import numpy as np

PROJ = {  # PEFT module -> (HF parent, GGUF tensor)
    "q_proj": ("self_attn", "attn_q"),
    "k_proj": ("self_attn", "attn_k"),
    "v_proj": ("self_attn", "attn_v"),
    "o_proj": ("self_attn", "attn_output"),
    "gate_proj": ("mlp", "ffn_gate"),
    "up_proj": ("mlp", "ffn_up"),
    "down_proj": ("mlp", "ffn_down"),
}
SHORT = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj", "gate": "gate_proj", "up": "up_proj",
         "down": "down_proj"}


# ----------------------------------------------------------------------------- safetensors (stdlib + numpy)

def read_safetensors(path):
    """name -> float32 array (F32, F16 and BF16 tensors)."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        a, b = t["data_offsets"]
        raw = data[a:b]
        dt = t["dtype"]
        if dt == "F32":
            x = np.frombuffer(raw, "<f4")
        elif dt == "F16":
            x = np.frombuffer(raw, "<f2").astype(np.float32)
        elif dt == "BF16":
            x = (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            raise ValueError(f"{path}: {name} has dtype {dt}")
        out[name] = x.reshape(t["shape"]).astype(np.float32)
    return out


def write_safetensors(path, tensors):
    """float32 tensors -> a safetensors file."""
    header, blobs, off = {}, [], 0
    for name in sorted(tensors):
        b = np.ascontiguousarray(tensors[name], dtype="<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(tensors[name].shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


# ----------------------------------------------------------------------------- base model shape

def base_dims(base_gguf):
    from gguf import GGUFReader
    r = GGUFReader(base_gguf)
    arch = bytes(r.fields["general.architecture"].parts[-1]).decode()

    def kv(key):
        f = r.fields[f"{arch}.{key}"]
        return int(f.parts[f.data[0]][0])

    n_head = kv("attention.head_count")
    return {
        "arch": arch,
        "n_layer": kv("block_count"),
        "hidden": kv("embedding_length"),
        "ffn": kv("feed_forward_length"),
        "n_head": n_head,
        "n_head_kv": kv("attention.head_count_kv") if f"{arch}.attention.head_count_kv" in r.fields else n_head,
    }


def proj_shape(d, module):
    """(out, in) of a projection in HF layout."""
    head_dim = d["hidden"] // d["n_head"]
    return {
        "q_proj": (d["n_head"] * head_dim, d["hidden"]),
        "k_proj": (d["n_head_kv"] * head_dim, d["hidden"]),
        "v_proj": (d["n_head_kv"] * head_dim, d["hidden"]),
        "o_proj": (d["hidden"], d["n_head"] * head_dim),
        "gate_proj": (d["ffn"], d["hidden"]),
        "up_proj": (d["ffn"], d["hidden"]),
        "down_proj": (d["hidden"], d["ffn"]),
    }[module]


def permute_rows(w, n_head):
    """HF rotate_half row order -> llama.cpp's interleaved order (convert_hf_to_gguf's LlamaModel.permute)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


# ----------------------------------------------------------------------------- conversion

def convert(peft_dir, base_gguf, out_path):
    from gguf import GGUFWriter
    d = base_dims(base_gguf)
    with open(os.path.join(peft_dir, "adapter_config.json")) as f:
        cfg = json.load(f)
    alpha = float(cfg["lora_alpha"])
    if cfg.get("use_rslora"):
        alpha *= math.sqrt(cfg["r"])
    w = read_safetensors(os.path.join(peft_dir, "adapter_model.safetensors"))
    out = {}
    for name, x in w.items():
        # base_model.model.model.layers.{i}.{self_attn|mlp}.{proj}.lora_{A|B}.weight
        parts = name.split(".")
        i = parts.index("layers")
        layer, module, ab = int(parts[i + 1]), parts[i + 3], parts[i + 4]
        if module not in PROJ or ab not in ("lora_A", "lora_B"):
            raise ValueError(f"{peft_dir}: cannot map {name}")
        if ab == "lora_B" and module == "q_proj":
            x = permute_rows(x, d["n_head"])
        elif ab == "lora_B" and module == "k_proj":
            x = permute_rows(x, d["n_head_kv"])
        out[f"blk.{layer}.{PROJ[module][1]}.weight.lora_{ab[-1].lower()}"] = np.ascontiguousarray(x, np.float32)
    wr = GGUFWriter(out_path, d["arch"])
    wr.add_string("general.type", "adapter")
    wr.add_string("general.name", os.path.basename(os.path.normpath(peft_dir)))
    wr.add_string("adapter.type", "lora")
    wr.add_float32("adapter.lora.alpha", alpha)
    for name in sorted(out, key=lambda n: (int(n.split(".")[1]), n)):
        wr.add_tensor(name, out[name])
    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()


def make_random(out_dir, base_gguf, rank, seed, targets, std, alpha=None, dims=None):
    """A random PEFT adapter (A and B both non-zero, float32) for every layer of the base model."""
    d = dims or base_dims(base_gguf)
    rng = np.random.default_rng(seed)
    tensors = {}
    for layer in range(d["n_layer"]):
        for module in targets:
            o, i = proj_shape(d, module)
            pre = f"base_model.model.model.layers.{layer}.{PROJ[module][0]}.{module}"
            tensors[f"{pre}.lora_A.weight"] = rng.normal(0.0, std, (rank, i)).astype(np.float32)
            tensors[f"{pre}.lora_B.weight"] = rng.normal(0.0, std, (o, rank)).astype(np.float32)
    os.makedirs(out_dir, exist_ok=True)
    write_safetensors(os.path.join(out_dir, "adapter_model.safetensors"), tensors)
    cfg = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": alpha or 2 * rank,
        "lora_dropout": 0.0, "bias": "none", "use_rslora": False, "fan_in_fan_out": False,
        "target_modules": list(targets), "base_model_name_or_path": os.path.basename(base_gguf),
    }
    with open(os.path.join(out_dir, "adapter_config.json"), "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")


def bench_set(base_gguf, out_root, sources, total=8):
    """Copies the given PEFT folders, adds random rank-16 ones up to `total`, converts all; returns names."""
    names = []
    for src in sources:
        name = os.path.basename(os.path.normpath(src))
        dst = os.path.join(out_root, "peft", name)
        os.makedirs(dst, exist_ok=True)
        for fn in ("adapter_config.json", "adapter_model.safetensors"):
            shutil.copy(os.path.join(src, fn), dst)
        names.append(name)
    seed = 0
    while len(names) < total:
        name = f"rand_r16_{seed}"
        if not os.path.exists(os.path.join(out_root, "peft", name, "adapter_config.json")):
            make_random(os.path.join(out_root, "peft", name), base_gguf, 16, 1000 + seed,
                        ["q_proj", "k_proj", "v_proj", "o_proj"], 0.03)
        names.append(name)
        seed += 1
    os.makedirs(os.path.join(out_root, "gguf"), exist_ok=True)
    for name in names:
        peft = os.path.join(out_root, "peft", name)
        gg = os.path.join(out_root, "gguf", f"{name}.gguf")
        src = os.path.join(peft, "adapter_model.safetensors")
        if not os.path.exists(gg) or os.path.getmtime(gg) < os.path.getmtime(src):
            convert(peft, base_gguf, gg)
    return names


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("convert")
    c.add_argument("peft_dir"), c.add_argument("base"), c.add_argument("out")
    r = sub.add_parser("random")
    r.add_argument("out_dir"), r.add_argument("base")
    r.add_argument("--rank", type=int, default=16)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--targets", default="q,k,v,o")
    r.add_argument("--std", type=float, default=0.03)
    b = sub.add_parser("bench-set")
    b.add_argument("base"), b.add_argument("out_root"), b.add_argument("sources", nargs="*")
    b.add_argument("--total", type=int, default=8)
    a = ap.parse_args()
    if a.cmd == "convert":
        convert(a.peft_dir, a.base, a.out)
    elif a.cmd == "random":
        make_random(a.out_dir, a.base, a.rank, a.seed, [SHORT.get(t, t) for t in a.targets.split(",")], a.std)
    else:
        for name in bench_set(a.base, a.out_root, a.sources, a.total):
            print(name)


if __name__ == "__main__":
    sys.exit(main())
