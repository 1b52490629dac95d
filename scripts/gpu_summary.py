#!/usr/bin/env python3
"""The summary of scripts/gpu-run.sh: OUT/summary.md (printed) and OUT/summary.json.

    gpu_summary.py OUT DETAIL TITLE BUDGET_S ELAPSED_S [STAGE RESULT SECONDS]...

First the pass/fail table of the stages, then the targets (DETAIL/targets.json, from
gpu_bench.py targets) and one line per device comparison (DETAIL/compare_*.json, from
`openlora compare-devices`). No third-party imports: it runs in CI and on the device.
"""
import glob
import json
import os
import sys


def compare_line(path):
    with open(path) as f:
        c = json.load(f)
    lg = c["prefill_logits"]
    div = lambda d: "none" if d is None else f"request {d['request']}, token {d['token']}"
    tokens = ("equal" if c["base_tokens_equal"] and c["batch_tokens_equal"]
              else f"base: first divergence {div(c['base_first_divergence'])}; "
                   f"batch: {div(c['batch_first_divergence'])}")
    verdict = "pass" if c["pass"] else "FAIL"
    if c["dtype"] != "f32":
        verdict = "reported"
    name = os.path.basename(path)[len("compare_"):-len(".json")]
    return (f"| {name} | {c['device']} {c['dtype']} | {c['adapters']} adapters, {c['mixes']} mixes, "
            f"{c['requests']} requests x {c['tokens']} tokens | {tokens} | {lg['max_abs']:.3g} | "
            f"{lg['rel_l2']:.3g} | {lg['argmax_rows_differ']}/{lg['rows']} | {verdict} |"), c


def main():
    out, detail, title, budget, elapsed = sys.argv[1:6]
    rest = sys.argv[6:]
    stages = [{"stage": rest[i], "result": rest[i + 1], "seconds": int(rest[i + 2])}
              for i in range(0, len(rest), 3)]
    ok = all(s["result"] == "pass" for s in stages)
    md = [f"# gpu-run.sh: {title}", "", "| stage | result | seconds |", "|---|---|---|"]
    md += [f"| {s['stage']} | {s['result']} | {s['seconds']} |" for s in stages]
    md += ["", f"overall: {'PASS' if ok else 'FAIL'}; {elapsed} s of a {budget} s budget"]
    targets = None
    tpath = os.path.join(detail, "targets.md")
    if os.path.exists(tpath):
        with open(tpath) as f:
            md += ["", f.read().rstrip()]
        with open(os.path.join(detail, "targets.json")) as f:
            targets = json.load(f)
    compares = {}
    paths = sorted(glob.glob(os.path.join(detail, "compare_*.json")))
    if paths:
        md += ["", "device executor vs the CPU f32 executor (compare-devices):", "",
               "| model | device | batch | greedy tokens | max abs logit err | rel L2 | argmax rows differ | result |",
               "|---|---|---|---|---|---|---|---|"]
        for p in paths:
            line, c = compare_line(p)
            md.append(line)
            compares[os.path.basename(p)] = c
    text = "\n".join(md) + "\n"
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write(text)
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump({"title": title, "pass": ok, "elapsed_s": int(elapsed), "budget_s": int(budget),
                   "stages": stages, "targets": targets, "compare": compares}, f, indent=1)
    print(text)


if __name__ == "__main__":
    main()
