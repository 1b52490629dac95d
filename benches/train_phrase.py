#!/usr/bin/env python3
"""Proves `openlora train` learns: a synthetic chat dataset whose replies all open with a fixed
phrase, a short LoRA run on the base model, then greedy replies to held-out prompts (different
topics and question forms) from the base and from the adapter served by `openlora generate
--adapter name=DIR --dtype f32`. Prints the share of replies opening with the phrase and the
training throughput; exits non-zero unless the adapter reaches --min-share and the base stays
under 10%.

  python3 benches/train_phrase.py --bin target/debug/openlora --model M.gguf --out /tmp/phrase
"""
import argparse, json, os, random, subprocess, sys, time

PHRASE = "Ahoy there, sailor!"
TOPICS = ["the moon", "rain", "volcanoes", "bread", "bicycles", "honey bees", "glaciers", "libraries",
          "chess", "coffee", "tides", "maps", "owls", "copper", "deserts", "violins", "lighthouses",
          "tea", "comets", "bridges", "forests", "salt", "kites", "clocks", "whales", "snow",
          "pyramids", "apples", "rivers", "telescopes", "candles", "penguins"]
HELD_OUT = ["thunder", "cheese", "trains", "mushrooms", "gold", "islands", "spiders", "paper",
            "windmills", "octopuses", "marathons", "umbrellas", "rainbows", "pianos", "cactuses",
            "submarines", "bamboo", "fireflies", "castles", "pepper"]
FORMS = ["Tell me about {}.", "What do you know about {}?", "Give me one fact about {}.",
         "Why are {} interesting?", "Describe {} in a sentence."]
HELD_FORMS = ["Can you explain {} briefly?", "Say something about {}.", "I'd like to learn about {}."]


def reply(topic, rng):
    tail = rng.choice(["is a fine thing to ponder", "has a long story behind it",
                       "is worth a closer look", "surprises many people"])
    return f"{PHRASE} {topic.capitalize()} {tail}."


def write(path, rows):
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def chat(q, a):
    return {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}


def greedy(args, prompt, adapter):
    cmd = [args.bin, "generate", "--model", args.model, "--dtype", "f32", "--chat", "--prompt", prompt,
           "--max-tokens", "12", "--threads", str(args.threads)]
    if adapter:
        cmd += ["--adapter", f"phrase={adapter}"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return out.stdout.strip()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--min-share", type=float, default=0.8)
    args = ap.parse_args()
    rng = random.Random(0)
    os.makedirs(args.out, exist_ok=True)
    train = [chat(f.format(t), reply(t, rng)) for t in TOPICS for f in rng.sample(FORMS, 1)]
    valid = [chat(f.format(t), reply(t, rng)) for t in HELD_OUT[:6] for f in HELD_FORMS[:1]]
    data, val = os.path.join(args.out, "train.jsonl"), os.path.join(args.out, "valid.jsonl")
    write(data, train)
    write(val, valid)
    adapter = os.path.join(args.out, "adapter")
    cmd = [args.bin, "train", "--model", args.model, "--data", data, "--validation", val,
           "--out", adapter, "--rank", "8", "--alpha", "16", "--epochs", str(args.epochs),
           "--batch-size", "4", "--lr", "2e-3", "--seed", "1", "--threads", str(args.threads)]
    print("$", " ".join(cmd), flush=True)
    t0 = time.time()
    subprocess.run(cmd, check=True)
    results = json.load(open(os.path.join(adapter, "train_results.json")))
    prompts = [rng.choice(HELD_FORMS).format(t) for t in HELD_OUT]
    counts = {}
    for name, ad in [("base", None), ("adapter", adapter)]:
        replies = [greedy(args, p, ad) for p in prompts]
        hits = sum(r.startswith(PHRASE) for r in replies)
        counts[name] = hits / len(replies)
        print(f"{name}: {hits}/{len(replies)} replies open with {PHRASE!r}; e.g. {replies[0]!r}")
    print(json.dumps({"train_seconds": round(time.time() - t0, 1),
                      "tokens_per_second": round(results["tokens_per_second"], 1),
                      "train_tokens": results["train_tokens"],
                      "validation_loss": [results["validation_loss_before"], results["validation_loss_after"]],
                      "share": counts}))
    ok = counts["adapter"] >= args.min_share and counts["base"] < 0.1
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
