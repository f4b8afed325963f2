"""A run's FactWorld evaluation (RUN/facts-eval.json, written by `vslm facts eval`) as tables: the ones the
command prints and the run report's "Knowledge" section. Pure formatting of the saved result; the numbers
are vslm.knowledge.evaluate's."""

from __future__ import annotations

import math
from html import escape

from vslm.report.html import section, table

SCORING = "log-likelihood of each answer choice; the most likely is the answer"  # knowledge.scoring.LMScorer's
STEPS_SCORING = ("greedy steps until the answer's 'A:', then the log-likelihood of each answer choice after them; "
                 "the most likely is the answer")  # knowledge.scoring.StepsScorer's: a reader trained with steps

SETTINGS = (("closed-book", "closed_book"), ("open-book", "open_book"), ("retrieved", "retrieved"))


def summary_rows(result: dict) -> list[tuple[str, ...]]:
    """(setting, pool, accuracy ± its standard error over the questions, chance, n) rows for a printed table;
    n says how many of its prompts were cut to the model's context, where any were ("40 (12 cut)")."""
    def acc_se(acc: dict) -> str:
        se = acc.get("se")  # a result written before the standard errors has none
        return _fmt(acc["accuracy"]) + ("" if se is None or (isinstance(se, float) and math.isnan(se))
                                        else f" ± {se:.3f}")

    def n(acc: dict) -> str:
        return str(acc["n"]) + (f" ({acc['cut']} cut)" if acc.get("cut") else "")

    return [(label, pool, acc_se(acc), _fmt(acc["chance"]), n(acc)) for label, pool, acc in _cells(result)]


def hops_rows(result: dict) -> tuple[list[str], list[tuple[str, ...]]]:
    """(columns, rows): accuracy by number of hops in each setting and pool, the adapters' too."""
    settings = dict(result["by_hops"])
    for label, by in result.get("adapters", {}).get("by_hops", {}).items():
        settings[f"adapters {'routed' if label == 'novel' else label}"] = {"novel": by}
    columns = [f"{setting.replace('_', '-')} {pool}" for setting, pools in settings.items() for pool in pools]
    hops = sorted({int(h) for pools in settings.values() for by in pools.values() for h in by})
    rows = []
    for h in hops:  # hop counts are ints in a fresh result and strings in one read back from JSON
        cells = [_fmt(by[h]["accuracy"]) if h in by else _fmt(by[str(h)]["accuracy"]) if str(h) in by else "-"
                 for pools in settings.values() for by in pools.values()]
        rows.append((str(h), *cells))
    return ["hops", *columns], rows


def probe_line(result: dict) -> str:
    p = result["probe"]
    parts = [f"{pool}: best {_fmt(p[pool]['best'])} over depths "
             f"({', '.join(_fmt(a) for a in p[pool]['by_depth'])}), baseline {_fmt(p[pool]['baseline'])}"
             for pool in ("seen", "novel") if pool in p]
    return f"probe name -> {p['attribute']}: " + "; ".join(parts)


ADAPTER_PARTS = {"both": "a LoRA and the rows of its text's tokens the model never trained on",
                 "lora": "a LoRA alone", "tokens": "the rows of its text's tokens the model never trained on alone"}


def adapter_line(adapters: dict) -> str:
    """What the adapters were and how well the retriever routed to them (a result from before adapters had token
    rows has no `parts`: LoRA alone)."""
    parts = adapters.get("parts", "lora")
    rows = f", {adapters['tokens']:.1f} such tokens a group" if parts != "lora" and "tokens" in adapters else ""
    return (f"adapters: {adapters['groups']} groups, {adapters['steps']} steps each, each {ADAPTER_PARTS[parts]}"
            f"{rows}; the retriever picked the subject's adapter for {_fmt(adapters['routing'])} of the questions")


def cut_line(result: dict) -> str:
    """Which settings had prompts longer than the model's context (their oldest tokens, the first facts, were
    dropped, so that an answer may lack its facts), '' where none did."""
    if not result.get("truncated"):
        return ""
    where = [f"{label} {pool} {acc['cut']} of {acc['n']}" for label, pool, acc in _cells(result) if acc.get("cut")]
    return (f"{result['truncated']} prompts were longer than the model's context and lost their oldest tokens "
            "(facts read first)" + (f": {', '.join(where)}" if where else ""))


def scoring(result: dict) -> str:
    """How the run answered (knowledge.scoring: the choices' log-likelihood, after the steps a reader trained
    with steps writes first); results written before it was recorded were scored by the likelihood alone."""
    return result.get("scoring") or SCORING


def notes(result: dict) -> list[str]:
    """The result's warnings, in the order the command prints them."""
    return [line for line in (result.get("note", ""), cut_line(result)) if line]


def facts_section(result: dict) -> tuple[str, str, str]:
    """The run report's section: the accuracies, accuracy by hops, the adapters, counterfactual and probe lines
    and the evaluation's settings."""
    settings = result.get("settings", {})
    said = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in settings.items() if v is not None and k != "world")
    parts = [f"<p>{escape(str(result.get('run', '')))} on the world in {escape(str(result.get('world', '')))}"
             + (f" ({escape(said)})" if said else "") + f". Scoring: {escape(scoring(result))}. Chance is the mean "
             "of 1 / choices. ± is a standard error over the questions.</p>",
             table(["setting", "pool", "accuracy ± se", "chance", "n"],
                   [[escape(c) for c in row] for row in summary_rows(result)])]
    columns, rows = hops_rows(result)
    parts += ["<p>Accuracy by number of hops:</p>", table(columns, [[escape(c) for c in row] for row in rows])]
    lines = []
    if ad := result.get("adapters"):
        lines.append(adapter_line(ad))
    if cf := result.get("counterfactual"):
        lines.append(f"counterfactual context: memorisation ratio {_fmt(cf['memorisation_ratio'])} (0 reads the "
                     f"context, 1 recites the weights), answers the weights' value {_fmt(cf['original'])}")
    if result.get("probe"):
        lines.append(probe_line(result))
    lines += [f"note: {line}" for line in notes(result)]
    parts += [f"<p>{escape(line)}</p>" for line in lines]
    return section("facts", "Knowledge (facts eval)", *parts)


def _cells(result: dict) -> list[tuple[str, str, dict]]:
    """(setting, pool, its accuracy dict) of every accuracy the result holds, in the printed table's order."""
    cells = [(label, pool.replace("_", " "), acc) for label, key in SETTINGS
             for pool, acc in result.get(key, {}).items()]
    if cf := result.get("counterfactual"):
        cells.append(("counterfactual", "seen", cf))
    if ad := result.get("adapters"):
        cells += [("adapters", f"novel ({'routed' if label == 'novel' else 'oracle'})", ad[label])
                  for label in ("novel", "oracle")]
    return cells


def _fmt(x: float | None) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"
