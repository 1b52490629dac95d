#!/usr/bin/env python3
"""A random-weight Llama and random PEFT adapters for it, made by transformers + peft (seeded):
the model the GPU run's stage b compares `--device cuda` against the CPU f32 executor on
(scripts/gpu-run.sh). Nothing is downloaded: the weights are transformers' own initialisation
(normal, std 0.02), the adapters PEFT's LoRA layers with A and B drawn normal (std 0.05), saved
by PEFT's save_pretrained exactly as a trained adapter would be.

    python3 scripts/make_random_llama.py OUT [--shape smollm2|tiny] [--seed 0] [--tokenizer JSON]

Writes OUT/model/ (config.json + model.safetensors, float32) and OUT/adapters/<name>/ for
  r_qv8   rank 8 on q_proj, v_proj
  r_all16 rank 16 on all seven projections
  r_mlp4  rank 4 on gate_proj, up_proj, down_proj
`smollm2` is SmolLM2-135M's shape (so its adapters, e.g. the demo adapters in adapters/, fit).
`--tokenizer` copies an HF tokenizer.json (the SmolLM2 one: tests/fixtures/tokenizer/) beside the
model with a ChatML template, so `openlora serve` can chat with it (stage c); the text is noise.
"""
import argparse
import json
import os
import shutil
import tempfile

import torch

SHAPES = {
    "smollm2": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                    num_attention_heads=9, num_key_value_heads=3, head_dim=64,
                    max_position_embeddings=8192, rms_norm_eps=1e-5, rope_theta=100000.0),
    "tiny": dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                 max_position_embeddings=512, rms_norm_eps=1e-5, rope_theta=10000.0),
}
ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content']"
          " + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
ADAPTERS = [("r_qv8", 8, ["q_proj", "v_proj"]), ("r_all16", 16, ALL),
            ("r_mlp4", 4, ["gate_proj", "up_proj", "down_proj"])]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--shape", default="smollm2", choices=sorted(SHAPES))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tokenizer", help="an HF tokenizer.json with <|im_start|>/<|im_end|>")
    a = ap.parse_args()
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(a.seed)
    cfg = LlamaConfig(hidden_act="silu", tie_word_embeddings=True, **SHAPES[a.shape])
    model = LlamaForCausalLM(cfg).float().eval()
    mdir = os.path.join(a.out, "model")
    model.save_pretrained(mdir, safe_serialization=True)
    if a.tokenizer:
        shutil.copy(a.tokenizer, os.path.join(mdir, "tokenizer.json"))
        with open(os.path.join(mdir, "tokenizer_config.json"), "w") as f:
            json.dump({"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "chat_template": CHATML}, f)
    pm = None
    for name, r, targets in ADAPTERS:
        lc = LoraConfig(r=r, lora_alpha=2 * r, target_modules=targets, lora_dropout=0.0,
                        init_lora_weights=False)
        if pm is None:
            pm = get_peft_model(model, lc, adapter_name=name)
        else:
            pm.add_adapter(name, lc)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_A" in n or "lora_B" in n:
                p.normal_(0.0, 0.05)
    names = [n for n, _, _ in ADAPTERS]
    with tempfile.TemporaryDirectory() as tmp:
        pm.save_pretrained(tmp, selected_adapters=names)
        for name in names:
            src = os.path.join(tmp, name) if os.path.isdir(os.path.join(tmp, name)) else tmp
            dst = os.path.join(a.out, "adapters", name)
            shutil.rmtree(dst, ignore_errors=True)
            os.makedirs(dst)
            for f in ("adapter_model.safetensors", "adapter_config.json"):
                shutil.copy(os.path.join(src, f), dst)
    print(json.dumps({"model": mdir, "shape": a.shape, "seed": a.seed, "adapters": names,
                      "params": sum(p.numel() for p in model.parameters())}))


if __name__ == "__main__":
    main()
