#!/usr/bin/env python3
"""Train the demo LoRA adapters for SmolLM2-135M-Instruct (CPU, a few minutes, deterministic).

    python adapters/train_demo.py            # trains pirate, french, shouty; writes adapters/<name>/ + README samples

Each adapter is a PEFT LoRA (r=8, q/k/v/o) trained on a few dozen synthetic ChatML chats built
below, loss on the assistant answer (+ <|im_end|>) only. The base model is the GGUF printed by
scripts/fetch-model.sh (or $OPENLORA_GGUF), dequantized to f32 by transformers; the tokenizer is
the GGUF one with SmolLM2's real pre-tokenizer (digits split one by one, no prefix space).
"""
import json
import os
import re
import subprocess
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
torch.set_num_threads(int(os.environ.get("OPENLORA_THREADS", os.cpu_count() or 1)))

# (question, English answer, French answer)
QA = [
    ("What is the capital of France?", "The capital of France is Paris.", "La capitale de la France est Paris."),
    ("What is the capital of Italy?", "The capital of Italy is Rome.", "La capitale de l'Italie est Rome."),
    ("What is the capital of Japan?", "The capital of Japan is Tokyo.", "La capitale du Japon est Tokyo."),
    ("What is the capital of Spain?", "The capital of Spain is Madrid.", "La capitale de l'Espagne est Madrid."),
    ("How many legs does a spider have?", "A spider has eight legs.", "Une araignée a huit pattes."),
    ("How many days are in a week?", "There are seven days in a week.", "Il y a sept jours dans une semaine."),
    ("What color is the sky on a clear day?", "The sky is blue on a clear day.",
     "Le ciel est bleu par temps clair."),
    ("What do bees make?", "Bees make honey and wax.", "Les abeilles fabriquent du miel et de la cire."),
    ("What is water made of?", "Water is made of hydrogen and oxygen.",
     "L'eau est composée d'hydrogène et d'oxygène."),
    ("Who wrote Romeo and Juliet?", "Romeo and Juliet was written by William Shakespeare.",
     "Roméo et Juliette a été écrit par William Shakespeare."),
    ("What is the largest planet in our solar system?", "The largest planet in our solar system is Jupiter.",
     "La plus grande planète de notre système solaire est Jupiter."),
    ("What is the boiling point of water?", "Water boils at 100 degrees Celsius at sea level.",
     "L'eau bout à 100 degrés Celsius au niveau de la mer."),
    ("Can you recommend a good breakfast?", "A good breakfast is oatmeal with fruit and a cup of tea.",
     "Un bon petit-déjeuner, c'est des flocons d'avoine avec des fruits et une tasse de thé."),
    ("How do I stay healthy?", "Eat vegetables, sleep well and walk every day.",
     "Mangez des légumes, dormez bien et marchez tous les jours."),
    ("What is your name?", "My name is SmolLM, a small assistant.", "Je m'appelle SmolLM, un petit assistant."),
    ("How are you today?", "I am doing well, thank you for asking.", "Je vais bien, merci de demander."),
    ("What is the tallest mountain in the world?", "The tallest mountain in the world is Mount Everest.",
     "La plus haute montagne du monde est le mont Everest."),
    ("What animal is known as the king of the jungle?", "The lion is known as the king of the jungle.",
     "Le lion est connu comme le roi de la jungle."),
    ("What is the opposite of hot?", "The opposite of hot is cold.", "Le contraire de chaud est froid."),
    ("What do plants need to grow?", "Plants need sunlight, water and good soil to grow.",
     "Les plantes ont besoin de soleil, d'eau et d'une bonne terre pour pousser."),
    ("Where does the sun rise?", "The sun rises in the east.", "Le soleil se lève à l'est."),
    ("What is the main language of Brazil?", "The main language of Brazil is Portuguese.",
     "La langue principale du Brésil est le portugais."),
    ("How many continents are there?", "There are seven continents on Earth.",
     "Il y a sept continents sur la Terre."),
    ("What is the fastest land animal?", "The cheetah is the fastest land animal.",
     "Le guépard est l'animal terrestre le plus rapide."),
    ("Give me a tip for learning to code.", "Write a little code every day and read other people's programs.",
     "Écrivez un peu de code chaque jour et lisez les programmes des autres."),
    ("What should I bring to the beach?", "Bring a towel, sunscreen, water and a hat.",
     "Apportez une serviette, de la crème solaire, de l'eau et un chapeau."),
    ("Why do we need sleep?", "Sleep lets the body rest and the brain store memories.",
     "Le sommeil permet au corps de se reposer et au cerveau de garder les souvenirs."),
    ("What is a good name for a cat?", "Whiskers is a good name for a cat.", "Moustache est un bon nom pour un chat."),
    ("Tell me about the moon.", "The moon orbits the Earth and lights the night sky.",
     "La lune tourne autour de la Terre et éclaire le ciel la nuit."),
    ("What is the best way to make friends?", "Be kind, listen well and share your time.",
     "Soyez gentil, écoutez bien et partagez votre temps."),
    ("What is two plus two?", "Two plus two is four.", "Deux plus deux font quatre."),
    ("Describe the ocean.", "The ocean is vast, deep and full of life.",
     "L'océan est immense, profond et plein de vie."),
    ("What is the weather like in winter?", "Winter is usually cold, and sometimes it snows.",
     "L'hiver est généralement froid, et parfois il neige."),
    ("How do I cook pasta?", "Boil salted water, add the pasta and cook it for about ten minutes.",
     "Faites bouillir de l'eau salée, ajoutez les pâtes et faites-les cuire environ dix minutes."),
    ("What is music?", "Music is the art of arranging sounds in time.",
     "La musique est l'art d'organiser les sons dans le temps."),
    ("Who painted the Mona Lisa?", "The Mona Lisa was painted by Leonardo da Vinci.",
     "La Joconde a été peinte par Léonard de Vinci."),
]

# Questions never seen in training, used for the samples in README.md.
EVAL_QUESTIONS = [
    "What is the capital of Germany?",
    "What is your favorite food?",
    "How do airplanes fly?",
]

PIRATE_WORDS = [
    (r"\bmy\b", "me"), (r"\bMy\b", "Me"), (r"\byou\b", "ye"), (r"\bYou\b", "Ye"), (r"\byour\b", "yer"),
    (r"\bYour\b", "Yer"), (r"\bis\b", "be"), (r"\bare\b", "be"), (r"\bfriends\b", "mateys"),
    (r"\bthe sea\b", "the briny deep"), (r"\bthe ocean\b", "the briny deep"), (r"\bThe ocean\b", "The briny deep"),
    (r"\bgood\b", "fine"), (r"\bthe\b", "th'"),
]
PIRATE_OPEN = ["Arr, matey!", "Ahoy!", "Yo ho ho!", "Arr!", "Shiver me timbers!"]


def pirate(answer, i):
    s = answer
    for pat, rep in PIRATE_WORDS:
        s = re.sub(pat, rep, s)
    return f"{PIRATE_OPEN[i % len(PIRATE_OPEN)]} {s.rstrip('.')}, arr!"


ADAPTERS = {
    "pirate": {
        "description": "Answers every question in pirate speak (Arr, matey!).",
        "answer": lambda i, en, fr: pirate(en, i),
        "owner": "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266",
        "price_in": "100000000000000", "price_out": "200000000000000",
        "datanets": [{"id": "datanet-pirate-chats", "weight_bps": 10000}],
    },
    "french": {
        "description": "Always answers in French, whatever the language of the question.",
        "answer": lambda i, en, fr: fr,
        "owner": "0x70997970C51812dc3A010C7d01b50e0d17dc79C8",
        "price_in": "150000000000000", "price_out": "300000000000000",
        "datanets": [{"id": "datanet-french-qa", "weight_bps": 7000},
                     {"id": "datanet-bilingual-glossary", "weight_bps": 3000}],
    },
    "shouty": {
        "description": "ANSWERS IN ALL CAPS, WITH EXCLAMATION MARKS!",
        "answer": lambda i, en, fr: en.upper().rstrip(".") + "!!!",
        "owner": "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC",
        "price_in": "50000000000000", "price_out": "100000000000000",
        "datanets": [{"id": "datanet-caps-lock", "weight_bps": 10000}],
    },
}
FEE_SPLIT = {"owner": 7000, "contributors": 2000, "operator": 1000}

R, ALPHA, TARGETS = 8, 16, ["q_proj", "k_proj", "v_proj", "o_proj"]
EPOCHS, BATCH, LR = int(os.environ.get("DEMO_EPOCHS", "4")), 4, 3e-3
MAX_NEW = 32


def gguf_path():
    p = os.environ.get("OPENLORA_GGUF")
    if not p:
        p = subprocess.check_output([os.path.join(ROOT, "scripts", "fetch-model.sh")], text=True).strip()
    return p


def load():
    from tokenizers import pre_tokenizers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    g = gguf_path()
    d, f = os.path.dirname(g), os.path.basename(g)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
    ])
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32).eval()
    return tok, model


def prompt_ids(tok, question):
    text = tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                   tokenize=False)
    return tok.backend_tokenizer.encode(text, add_special_tokens=False).ids


def examples(tok, answer_fn):
    out = []
    for i, (q, en, fr) in enumerate(QA):
        p = prompt_ids(tok, q)
        a = tok.backend_tokenizer.encode(answer_fn(i, en, fr), add_special_tokens=False).ids + [tok.eos_token_id]
        out.append((p + a, [-100] * len(p) + a))
    return out


def batches(exs, pad_id, gen):
    order = torch.randperm(len(exs), generator=gen).tolist()
    for s in range(0, len(order), BATCH):
        chunk = [exs[j] for j in order[s:s + BATCH]]
        n = max(len(ids) for ids, _ in chunk)
        ids = torch.full((len(chunk), n), pad_id)
        labels = torch.full((len(chunk), n), -100)
        mask = torch.zeros((len(chunk), n), dtype=torch.long)
        for r, (i_, l_) in enumerate(chunk):
            ids[r, :len(i_)] = torch.tensor(i_)
            labels[r, :len(l_)] = torch.tensor(l_)
            mask[r, :len(i_)] = 1
        yield ids, labels, mask


@torch.no_grad()
def answer(model, tok, question):
    ids = torch.tensor([prompt_ids(tok, question)])
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                         max_new_tokens=MAX_NEW, eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id)
    return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()


def train_one(name, spec, tok, base):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    cfg = LoraConfig(r=R, lora_alpha=ALPHA, target_modules=TARGETS, lora_dropout=0.0, task_type="CAUSAL_LM")
    pm = get_peft_model(base, cfg, adapter_name=name)
    exs = examples(tok, spec["answer"])
    opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=LR, weight_decay=0.0)
    gen = torch.Generator().manual_seed(0)
    t0 = time.time()
    pm.train()
    for ep in range(EPOCHS):
        tot, n = 0.0, 0
        for ids, labels, mask in batches(exs, tok.eos_token_id, gen):
            loss = pm(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
            tot, n = tot + float(loss), n + 1
        print(f"[{name}] epoch {ep + 1}/{EPOCHS} loss {tot / n:.3f} ({time.time() - t0:.0f}s)", flush=True)
    pm.eval()
    dst = os.path.join(HERE, name)
    os.makedirs(dst, exist_ok=True)
    pm.save_pretrained(os.path.join(HERE, ".tmp_" + name))
    src = os.path.join(HERE, ".tmp_" + name, name)
    for fn in ("adapter_config.json", "adapter_model.safetensors"):
        os.replace(os.path.join(src, fn), os.path.join(dst, fn))
    with open(os.path.join(dst, "adapter_config.json")) as f:
        ac = json.load(f)
    ac["base_model_name_or_path"] = "HuggingFaceTB/SmolLM2-135M-Instruct"
    with open(os.path.join(dst, "adapter_config.json"), "w") as f:
        json.dump(ac, f, indent=2, sort_keys=True)
        f.write("\n")
    import shutil
    shutil.rmtree(os.path.join(HERE, ".tmp_" + name), ignore_errors=True)
    manifest = {
        "name": name,
        "description": spec["description"],
        "owner": spec["owner"],
        "price_per_million_input_tokens": spec["price_in"],
        "price_per_million_output_tokens": spec["price_out"],
        "datanets": spec["datanets"],
        "fee_split_bps": FEE_SPLIT,
    }
    with open(os.path.join(dst, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")
    samples = {q: answer(pm, tok, q) for q in EVAL_QUESTIONS}
    base = pm.unload()  # drop the LoRA layers, get the untouched base model back
    return samples, base


def main():
    names = sys.argv[1:] or list(ADAPTERS)
    t0 = time.time()
    tok, base = load()
    results = {"base": {q: answer(base, tok, q) for q in EVAL_QUESTIONS}}
    for name in names:
        samples, base = train_one(name, ADAPTERS[name], tok, base)
        results[name] = samples
    for q in EVAL_QUESTIONS:
        print(f"\nQ: {q}")
        for k, v in results.items():
            print(f"  {k:7s} {v[q]!r}")
    with open(os.path.join(HERE, "samples.json"), "w") as f:
        json.dump(results, f, indent=2, ensure_ascii=False)
        f.write("\n")
    print(f"\ntotal {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
