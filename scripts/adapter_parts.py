"""The adapter ablation of docs/EXPERIMENTS.md: what in an adapter holds the facts, its LoRA or its new tokens' rows?

    python scripts/adapter_parts.py runs/experiments/knowledge-adapters [--threads 1]

OUT is a finished `vslm experiment knowledge-adapters` folder. For every seed k there, the closed-1x run is
copied (so that its own facts-eval.json, the experiment's, stays as it is) and evaluated as
`vslm facts eval COPY --world OUT/seed-k/world --seed k --adapters 100 --group-size 8 --adapter-parts P` does,
for P = lora and tokens; the experiment's own evaluation is P = both. Printed: per part, the routed and the
oracle adapters' accuracy on the novel pool (all hops, and 1 hop), the fits' last training loss (nats a token,
mean over the groups) and the base corpus's validation loss with the adapter on, mean ± std over seeds; then
each part minus both, paired over seeds with its 95% interval and two-sided p (Holm over the four comparisons);
then each part alone minus chance, the same way (Holm over those four).
Copies go to OUT/parts/ (reused when their evaluation is there with these settings).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from vslm.knowledge.evaluate import evaluate_run
from vslm.knowledge.experiment import chance, metric, parse_spec
from vslm.lab.experiments import read_experiment
from vslm.lab.stats import holm, mean_std, paired_difference

PARTS = ("both", "lora", "tokens")
METRICS = (("routed, all hops", "adapters.novel"), ("oracle, 1 hop", "adapters.oracle.hops1"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--experiment", default="knowledge-adapters", help="the experiment OUT ran (its arm with adapters)")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    import torch

    torch.set_num_threads(a.threads)
    spec = parse_spec(*read_experiment(a.experiment)[1:])
    arm = next(arm for arm in spec.arms if arm.adapters)
    seeds = sorted(int(p.name.split("-")[1]) for p in a.out.glob("seed-*")
                   if (p / arm.name / "facts-eval.json").is_file())
    if not seeds:
        print(f"{a.out}: no evaluated seed-k/{arm.name}; run vslm experiment {a.experiment} first", file=sys.stderr)
        return 1
    results: dict[str, list[dict]] = {p: [] for p in PARTS}
    for seed in seeds:
        folder = a.out / f"seed-{seed}"
        asked = {"seed": seed, "per_group": spec.per_group, "adapter_steps": arm.adapters,
                 "group_size": spec.group_size}
        both = json.loads((folder / arm.name / "facts-eval.json").read_text(encoding="utf-8"))
        settings = both["settings"]
        if settings.get("adapter_parts") != "both" or any(settings.get(k) != v for k, v in asked.items()):
            print(f"{folder / arm.name}: its evaluation is not the experiment's with both parts ({both['settings']}); "
                  f"run vslm experiment {a.experiment} --out {a.out} again first", file=sys.stderr)
            return 1
        results["both"].append(both)
        for part in PARTS[1:]:
            copy = a.out / "parts" / f"seed-{seed}-{part}"
            saved = json.loads((copy / "facts-eval.json").read_text(encoding="utf-8")) \
                if (copy / "facts-eval.json").is_file() else {}
            if saved.get("settings") != {**both["settings"], "adapter_parts": part}:
                shutil.rmtree(copy, ignore_errors=True)
                shutil.copytree(folder / arm.name, copy,
                                ignore=shutil.ignore_patterns("adapters", "facts-eval.json", "report.html"))
                saved = evaluate_run(copy, folder / "world", per_group=spec.per_group, seed=seed,
                                     adapter_steps=arm.adapters, group_size=spec.group_size, adapter_parts=part)
            results[part].append(json.loads(json.dumps(saved)))  # as read back: hop counts as strings
            print(f"seed {seed} {part}: " + ", ".join(f"{label} {metric(results[part][-1], path):.3f}"
                                                       for label, path in METRICS), flush=True)
    print(f"\n{len(seeds)} seeds ({', '.join(map(str, seeds))}); chance "
          + ", ".join(f"{label} {mean_std([chance(r, path) for r in results['both']])['mean']:.3f}"
                      for label, path in METRICS))
    print("| adapter parts | " + " | ".join(label for label, _ in METRICS) + " | fit's last loss | validation loss |")
    print("|---|" + "---|" * (len(METRICS) + 2))
    for part in PARTS:
        cells = [mean_std([metric(r, path) for r in results[part]]) for _, path in METRICS]
        cells += [mean_std([r["adapters"]["fit"][key] for r in results[part]]) for key in ("loss", "val_loss")]
        print(f"| {part} | " + " | ".join(f"{c['mean']:.3f} ± {c['std']:.3f}" for c in cells) + " |")
    for title, baseline in (("part - both", lambda part, path: [metric(r, path) for r in results["both"]]),
                            ("part alone - chance", lambda part, path: [chance(r, path) for r in results[part]])):
        diffs = [(part, label, paired_difference(baseline(part, path), [metric(r, path) for r in results[part]]))
                 for part in PARTS[1:] for label, path in METRICS]
        adjusted = holm([d["p"] for _, _, d in diffs])
        print(f"\n| {title} | metric | difference [95% CI] | p | Holm p |")
        print("|---|---|---|---|---|")
        for (part, label, d), h in zip(diffs, adjusted, strict=True):
            print(f"| {part} | {label} | {d['diff']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}] | {d['p']:.2g} "
                  f"| {h:.2g} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
