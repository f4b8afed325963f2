"""`vslm experiment NAME`: an experiment of any kind, by the `kind` its TOML names.

A plain experiment (variants of a config over seeds) runs in vslm.lab.experiments; `kind = "knowledge"`
(arms, a world per seed, criteria) runs in vslm.knowledge.experiment, which trains its arms through
vslm.lab.runner (reader arms through vslm.knowledge.reader). The choice is made here, in the commands
layer, so that lab/ never imports knowledge/ and the imports stay one way: commands -> knowledge -> lab.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from vslm.errors import ConfigError
from vslm.lab import experiments
from vslm.lab.parallel import Launcher


def run_experiment(spec_name_or_path: str, out: Path, seeds: int | None = None, extra_overrides: Sequence[str] = (),
                   console: Console | None = None, launcher: Launcher | None = None, resolve: float | None = None,
                   max_seeds: int | None = None, sweep: Sequence[str] | None = None,
                   sweep_seeds: int | None = None, variants: Sequence[str] | None = None) -> dict:
    """The summary of a plain experiment (vslm.lab.experiments.run_experiment) or the results of a
    knowledge experiment (vslm.knowledge.experiment.run_knowledge_experiment). launcher, resolve, max_seeds,
    sweep, sweep_seeds and variants apply to plain experiments; a knowledge experiment runs its arms x seeds in
    launcher.jobs local processes."""
    name, raw, label = experiments.read_experiment(spec_name_or_path)
    kind = experiments.experiment_kind(raw, label)
    if kind is None:
        return experiments.run_experiment(spec_name_or_path, out, seeds, extra_overrides, console, launcher, resolve,
                                          max_seeds, sweep, sweep_seeds, variants)
    _refuse_variant_flags(label, resolve, max_seeds, sweep, sweep_seeds, variants, launcher)
    from vslm.knowledge.experiment import parse_spec, run_knowledge_experiment  # the one kind there is

    return run_knowledge_experiment(name, parse_spec(raw, label), Path(out), seeds, extra_overrides, console,
                                    spec_name_or_path, jobs=launcher.jobs if launcher else 1)


def dry_run_experiment(spec_name_or_path: str, out: Path, seeds: int | None = None,
                       extra_overrides: Sequence[str] = (), resolve: float | None = None,
                       max_seeds: int | None = None, sweep: Sequence[str] | None = None,
                       sweep_seeds: int | None = None, variants: Sequence[str] | None = None,
                       launcher: Launcher | None = None) -> dict:
    """What run_experiment would train, checked as it checks, nothing trained or written: a plain experiment's
    plan (vslm.lab.experiments.dry_run) or a knowledge experiment's (vslm.knowledge.experiment.plan_knowledge,
    with "kind": "knowledge")."""
    name, raw, label = experiments.read_experiment(spec_name_or_path)
    if experiments.experiment_kind(raw, label) is None:
        return experiments.dry_run(spec_name_or_path, out, seeds, extra_overrides, resolve, max_seeds, sweep,
                                   sweep_seeds, variants)
    _refuse_variant_flags(label, resolve, max_seeds, sweep, sweep_seeds, variants, launcher)
    from vslm.knowledge.experiment import parse_spec, plan_knowledge

    return plan_knowledge(name, parse_spec(raw, label), Path(out), seeds, extra_overrides)


def _refuse_variant_flags(label: str, resolve, max_seeds, sweep, sweep_seeds, variants,
                          launcher: Launcher | None) -> None:
    if (resolve is not None or max_seeds is not None or sweep or sweep_seeds is not None or variants
            or (launcher and launcher.kind != "local")):
        raise ConfigError(f"{label}: --resolve, --max-seeds, --sweep, --sweep-seeds, --variants and --launcher "
                          "apply to comparisons of variants; a knowledge experiment runs its arms here (--jobs N: "
                          "in N worker processes)")


def print_dry_run(plan: dict, console: Console) -> None:
    """dry_run_experiment's answer: a table per corpus (per arm, for a knowledge experiment), then what would
    train."""
    from vslm.lab.tables import print_table

    if plan.get("kind") == "knowledge":
        _print_knowledge_plan(plan, console)
        return

    looks = plan["looks"]
    seeds = f"{looks[0]} seeds" + (f", up to {looks[-1]} (looks at {', '.join(map(str, looks))})"
                                   if len(looks) > 1 else "")
    columns = ("variant", "params", "FLOPs/token", "tokens/run", "pairs with baseline", "runs", "finished",
               "stopped", "in use", "other settings")
    first = most = reused = 0
    tokens = flops = 0
    for corpus, part in plan["corpora"].items():
        rows = []
        for r in part["variants"]:
            runs = f"{r['runs_first']}" if r["runs_first"] == r["runs_most"] else f"{r['runs_first']}-{r['runs_most']}"
            note = (f" (sweep: {experiments.seeds_words(r['runs_first'])})" if r["sweep"] else
                    f" (after the sweep: keeps {r['kept']})" if r.get("kept") is not None else
                    " (after the sweep, at most)" if r.get("after_sweep") else "")
            rows.append((r["variant"] + (f" ({r['choice']})" if r["choice"] else ""), f"{r['params']:,}",
                         f"{r['flops_per_token']:,}", f"{r['tokens']:,}", "yes" if r["paired"] else "no (Welch)",
                         runs + note,
                         *(str(r[state]) for state in experiments.RUN_STATES)))
            first, most, reused = first + r["runs_first"], most + r["runs_most"], reused + r["finished"]
            tokens += (r["runs_most"] - r["finished"]) * r["tokens"]
            flops += (r["runs_most"] - r["finished"]) * r["tokens"] * r["flops_per_token"]
        where = f" on {corpus}" if corpus else ""
        print_table(console, escape(f"{plan['experiment']}{where}: {seeds}, in {part['folder']}"), columns, rows)
    console.print(f"{first} runs at the first look, {most} at most; {reused} finished in the folder and reused. "
                  f"Left to train at most: {tokens:,} tokens, {flops:.3g} training FLOPs. Nothing was trained, and "
                  "nothing in the folder written.", highlight=False)
    busy = sum(r["in_use"] for part in plan["corpora"].values() for r in part["variants"])
    if busy:
        console.print(f"{busy} run folders are in use by another process: the experiment waits for none, it "
                      "refuses them; let them finish first", highlight=False)
    conflicts = [f for part in plan["corpora"].values() for r in part["variants"] for f in r["other_settings_folders"]]
    if conflicts:
        console.print(f"{len(conflicts)} run folders hold runs of other settings, which the experiment refuses: "
                      f"{', '.join(conflicts[:3])}{' ...' if len(conflicts) > 3 else ''}; move them away or pass "
                      "another --out", highlight=False, markup=False)



def _print_knowledge_plan(plan: dict, console: Console) -> None:
    from vslm.lab.tables import print_table

    def count(n: int | float | None) -> str:
        return "-" if n is None else f"{n:,}"

    seeds = plan["seeds"]
    columns = ("arm", "trains on", "params", "FLOPs/token", "steps x rows", "tokens/seed", "also", "trained",
               "done")
    rows = [(r["arm"], r["trains"], count(r["params"]), count(r["flops_per_token"]),
             f"{r['steps']:,} x {r['rows_per_step']}", f"{r['tokens']:,}", "; ".join(r["also"]) or "-",
             f"{len(r['seeds_trained'])} of {seeds}", f"{len(r['seeds_done'])} of {seeds}") for r in plan["arms"]]
    print_table(console, escape(f"{plan['experiment']}: {seeds} seed{'s' * (seeds > 1)}, a world each, in "
                                f"{plan['folder']}"), columns, rows)
    unknown = [r["arm"] for r in plan["arms"] if r["params"] is None]
    flops = "" if unknown else f", {plan['flops_left']:.3g} training FLOPs"
    console.print(f"{len(plan['arms']) * seeds} arm runs; one trained in the folder is reused (done: its evaluation "
                  f"and relearning too, with these settings). Left to train at most: {plan['tokens_left']:,} "
                  f"tokens{flops} (a distilled arm: at most four groups of rows a step, with its teacher's and naive "
                  "model's forward passes; not the evaluations, adapters or relearning)."
                  + (f" {', '.join(unknown)}: parameters from the world's text, counted when it trains." if unknown
                     else "") + " Nothing was trained, and nothing in the folder written.", highlight=False)
