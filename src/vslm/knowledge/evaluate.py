"""`vslm facts eval RUN --world DIR`: every knowledge metric of a trained run on a FactWorld.

The held-out questions (split `test`) are asked closed-book, open-book (gold facts and distractors)
and with the retriever's cards (`retrieved`), on the seen and the novel pool; the counterfactual
ones with their counterfactual facts in the context. The training questions are asked closed-book
too (`seen_train`: did it learn what it read?). Each group keeps at most `per_group` questions of
each hop count. The linear probe reads the names of the seen and of the novel people.

The result (also written to RUN/facts-eval.json):

    {"run", "world", "scoring", "distractors", "retrieval": {k, rounds},
     "closed_book": {"seen", "novel", "seen_train"}, "open_book": {"seen", "novel"},
     "retrieved": {"seen", "novel"}, "retrieval_recall": {"seen", "novel"},
     "counterfactual": {accuracy, n, chance, original, other, memorisation_ratio},
     "by_hops": {setting: {pool: {hops: {accuracy, n, chance}}}},
     "probe": {attribute, seen: {...}, novel: {...}}, "truncated" (prompts cut to the context, in all),
     "adapters" (with adapter_steps): {groups, steps, parts, tokens (rows owned, mean a group), fit, routing,
                                       novel, oracle, by_hops}}

where each accuracy is {accuracy, se, n, chance} (metrics.accuracy) with `cut`, how many of its prompts
were longer than the model's context (they lose their oldest tokens, the first facts: knowledge.scoring;
for a reader that writes its steps, with the steps it wrote), `scoring` says how the run was asked,
and recall is {mean, all}: the mean share of supporting facts retrieved and the share of questions with
all of them. vslm.report.facts lays the result out as tables (the command's, the run report's section).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from vslm.errors import VSLMError
from vslm.files import write_text
from vslm.knowledge import metrics, render
from vslm.knowledge.contexts import Contexts
from vslm.knowledge.folder import WorldFolder, load_world_folder, world_key
from vslm.knowledge.questions import Question
from vslm.knowledge.retrieval import Retriever, support_recall
from vslm.plain import dumps
from vslm.report.facts import SCORING
from vslm.report.runs import FACTS as RESULT

if TYPE_CHECKING:  # torch is imported only when a run is evaluated
    from vslm.config import RunConfig
    from vslm.data.shards import Corpus
    from vslm.knowledge.scoring import LMScorer

ADAPTERS = "adapters"  # RUN/adapters/<base checkpoint>/<world and grouping>/<group>: the adapter arm's fine-tunes


def select(questions: Sequence[Question], pool: str, split: str, counterfactual: bool,
           per_group: int | None) -> list[Question]:
    """The questions of one group, at most `per_group` of each hop count (the first ones: they are in
    random order already)."""
    return metrics.per_hops([q for q in questions if q.pool == pool and q.split == split
                             and q.counterfactual == counterfactual], per_group)


def retriever_for(folder: WorldFolder) -> Retriever:
    """An index of every real card, seen and novel (never the counterfactual ones)."""
    return Retriever((c for c in folder.cards.values() if not c.counterfactual), synonyms=render.SYNONYMS)


def evaluate_world(scorer: metrics.Scorer, folder: WorldFolder, distractors: int = 4, per_group: int | None = 100,
                   k: int = 8, rounds: int | None = None, seed: int = 0) -> dict:
    """The metrics of any scorer on a world (a model's, or a hand-built one in the tests)."""
    ctx = Contexts(folder, distractors, seed)
    rounds = rounds or folder.settings.hops
    retriever = retriever_for(folder)
    out: dict = {"scoring": getattr(scorer, "scoring", SCORING), "distractors": distractors,
                 "retrieval": {"k": k, "rounds": rounds}, "closed_book": {}, "open_book": {}, "retrieved": {},
                 "retrieval_recall": {},
                 "by_hops": {"closed_book": {}, "open_book": {}, "retrieved": {}, "counterfactual": {}}}

    def ask(setting: str, pool: str, questions: list[Question], prompts: list[str]) -> None:
        answers, cut = pick_counting_cuts(scorer, prompts, questions)
        out[setting][pool] = {**metrics.accuracy(questions, answers), "cut": cut}
        if setting in out["by_hops"]:
            out["by_hops"][setting][pool] = metrics.by_hops(questions, answers)

    for pool in ("seen", "novel"):
        test = select(folder.questions, pool, "test", False, per_group)
        if not test:
            continue
        ask("closed_book", pool, test, [ctx.closed_book(q) for q in test])
        ask("open_book", pool, test, [ctx.open_book(q) for q in test])
        found = [ctx.retrieved_cards(q, retriever, k, rounds) for q in test]
        recalls = [support_recall(cards, q.support) for cards, q in zip(found, test, strict=True)]
        out["retrieval_recall"][pool] = {"mean": metrics.mean([r for r, _ in recalls]),
                                         "all": metrics.mean([float(a) for _, a in recalls])}
        ask("retrieved", pool, test, [ctx.with_cards(q, cards) for q, cards in zip(test, found, strict=True)])
    train = select(folder.questions, "seen", "train", False, per_group)
    if train:
        ask("closed_book", "seen_train", train, [ctx.closed_book(q) for q in train])
    cf = select(folder.questions, "seen", "test", True, per_group)
    if cf:
        answers, cut = pick_counting_cuts(scorer, [ctx.open_book(q) for q in cf], cf)
        out["counterfactual"] = {**metrics.counterfactual(cf, answers), "cut": cut}
        out["by_hops"]["counterfactual"]["seen"] = metrics.by_hops(cf, answers)
    return out


def pick_counting_cuts(scorer: metrics.Scorer, prompts: list[str], questions: list[Question]) -> tuple[list[str], int]:
    """metrics.pick, and how many of the prompts the scorer cut to its model's context (0 for a scorer that
    cuts none: a hand-built one)."""
    before = getattr(scorer, "truncated", 0)
    answers = metrics.pick(scorer, prompts, questions)
    return answers, getattr(scorer, "truncated", 0) - before


def evaluate_adapters(scorer: LMScorer, folder: WorldFolder, cfg: RunConfig, corpus: Corpus, out: Path,
                      group_size: int = 10, steps: int = 200, per_group: int | None = 100, seed: int = 0,
                      device: str = "cpu", parts: str = "both") -> dict:
    """Facts loaded as adapters: a LoRA per group of novel entities, with the rows of the tokens the model
    never trained on (`parts`: adapters.PARTS), fitted on that group's facts (facts the model never trained
    on; a run of the training loop in out/GROUP, reused when done), then the novel test questions asked
    closed-book with the adapter the retriever picks (`novel`) and with the adapter of the question's
    subject (`oracle`). `cfg` is the scored model's run config, `corpus` its text in its own tokens. The
    scorer's model keeps the adapters (switched off on return)."""
    from vslm.knowledge import adapters

    model = scorer.model
    groups, texts = adapter_texts(folder, group_size, seed)
    fitted = {}
    for name, docs in texts.items():
        adapters.add_adapter(model, name, seed=seed)
        fitted[name] = adapters.fit_adapter(model, cfg, corpus, name, docs, Path(out) / name, steps=steps, seed=seed,
                                            device=device, parts=parts)
    router = adapters.AdapterRouter(retriever_for(folder), folder.world, groups)
    home = {e: g for g, entities in groups.items() for e in entities}
    test = select(folder.questions, "novel", "test", False, per_group)
    routed = [router.route(q.question) for q in test]
    rows = model.__dict__.get(adapters.ROWS)
    out: dict = {"groups": len(groups), "steps": steps, "parts": parts,
                 "tokens": metrics.mean([len(rows.ids.get(g, ())) if rows else 0 for g in groups]),
                 "fit": {k: metrics.mean([f[k] for f in fitted.values()]) for k in ("loss", "val_loss")},
                 "routing": metrics.mean([float(r == home[q.starts[0]]) for r, q in zip(routed, test, strict=True)]),
                 "by_hops": {}}
    for label, chosen in (("novel", routed), ("oracle", [home[q.starts[0]] for q in test])):
        answers, cuts = [""] * len(test), 0
        for group in dict.fromkeys(chosen):
            idx = [i for i, g in enumerate(chosen) if g == group]
            adapters.use_adapter(model, group)
            picked, cut = pick_counting_cuts(scorer, [render.closed_book_prompt(test[i].question) for i in idx],
                                             [test[i] for i in idx])
            cuts += cut
            for i, a in zip(idx, picked, strict=True):
                answers[i] = a
        out[label] = {**metrics.accuracy(test, answers), "cut": cuts}
        out["by_hops"][label] = metrics.by_hops(test, answers)
    adapters.use_adapter(model, None)
    return out


def adapter_texts(folder: WorldFolder, group_size: int, seed: int) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """The novel pool's groups (group -> entity ids) and each group's text, what its adapter fits on."""
    from vslm.knowledge import adapters

    groups = adapters.fact_groups(folder.world, "novel", group_size, seed)
    return groups, {name: adapters.group_documents(folder.world, entities, folder.settings.renderings, seed)
                    for name, entities in groups.items()}


def eval_settings(world: str, distractors: int = 4, per_group: int | None = 100, k: int = 8,
                  rounds: int | None = None, probe: str = "birth_city", checkpoint: Path | None = None, seed: int = 0,
                  adapter_steps: int = 0, group_size: int = 10, adapter_parts: str = "both") -> dict:
    """What an evaluation of one checkpoint depends on besides the run, as facts-eval.json records it: the
    world (its WorldFolder.key) and the settings. A saved result is reused only for the same ones (one from
    before adapters had token rows has no `adapter_parts`: its adapters are fitted again)."""
    return {"world": world, "distractors": distractors, "per_group": per_group, "k": k, "rounds": rounds,
            "probe": probe, "checkpoint": None if checkpoint is None else Path(checkpoint).name, "seed": seed,
            "adapter_steps": adapter_steps, "group_size": group_size if adapter_steps > 0 else None,
            **({"adapter_parts": adapter_parts} if adapter_steps > 0 else {})}


def adapters_dir(run: Path, checkpoint: Path, folder: WorldFolder, group_size: int, steps: int, seed: int,
                 parts: str = "both") -> Path:
    """Where the adapters of one base checkpoint, world, grouping and fit go: an evaluation on another world,
    with other groups, another number of steps or other parts fits its own, never reuses these."""
    return (Path(run) / ADAPTERS / checkpoint.stem /
            f"world-{folder.key}-groups-{group_size}-steps-{steps}-seed-{seed}-{parts}")


def evaluate_run(run: Path, world: Path, distractors: int = 4, per_group: int | None = 100, k: int = 8,
                 rounds: int | None = None, probe: str = "birth_city", checkpoint: Path | None = None,
                 device: str = "cpu", seed: int = 0, adapter_steps: int = 0, group_size: int = 10,
                 adapter_parts: str = "both") -> dict:
    """Load the run and the world, measure everything, write RUN/facts-eval.json; returns the result.
    With adapter_steps > 0, also the adapter arm (evaluate_adapters, fitting `adapter_parts`), last: it adds
    to the model."""
    from vslm.knowledge.probe import probe_attribute
    from vslm.knowledge.scoring import run_scorer
    from vslm.knowledge.world import RELATIONS
    from vslm.train.run_folder import latest_checkpoint, load_run

    if probe not in RELATIONS or RELATIONS[probe].domain != "person":
        people = ", ".join(n for n, r in RELATIONS.items() if r.domain == "person")
        raise VSLMError(f"cannot probe '{probe}': choose a person's relation ({people})")
    folder = load_world_folder(world)
    cfg, model, tokenizer = load_run(Path(run), checkpoint, device)
    if adapter_steps > 0:
        from vslm.data.shards import prepare_corpus
        from vslm.knowledge.adapters import tokens_to_own

        corpus = prepare_corpus(cfg.data, tokenizer=tokenizer)  # the run's text in the run's own tokens
        if adapter_parts == "tokens":  # parts that leave a group nothing to train: refused before the evaluation
            for name, docs in adapter_texts(folder, group_size, seed)[1].items():
                tokens_to_own(corpus, name, docs, adapter_parts)
    scorer = run_scorer(Path(run), model, tokenizer)  # a reader trained to write its steps writes them
    result = {"run": str(run), "world": str(world),
              "settings": eval_settings(folder.key, distractors, per_group, k, rounds, probe, checkpoint, seed,
                                        adapter_steps, group_size, adapter_parts),
              **evaluate_world(scorer, folder, distractors, per_group, k, rounds, seed)}
    result["probe"] = {"attribute": probe, **{pool: probe_attribute(scorer, folder.world, probe, pool, seed=seed)
                                              for pool in ("seen", "novel")}}
    if adapter_steps > 0:
        base = checkpoint or latest_checkpoint(Path(run))
        result["adapters"] = evaluate_adapters(scorer, folder, cfg, corpus,
                                               adapters_dir(run, base, folder, group_size, adapter_steps, seed,
                                                            adapter_parts),
                                               group_size, adapter_steps, per_group, seed, device, adapter_parts)
    result["truncated"] = scorer.truncated
    if (other := trained_on_another_world(cfg, world, folder)) is not None:
        result["note"] = (f"the run trained on the text of another world ({other}), not on {world}'s: its closed-book "
                          "accuracy here measures nothing it was taught")
    write_text(Path(run) / RESULT, dumps(result, indent=1) + "\n")
    return result


def trained_on_another_world(cfg: RunConfig, world: Path, folder: WorldFolder) -> Path | None:
    """The world folder whose train.txt or fixed.txt the run trained on, where it is not `folder`'s world (read
    from `world`)."""
    from vslm.knowledge.preloaded import FIXED

    source = Path(cfg.data.source).expanduser()
    if source.name not in ("train.txt", FIXED) or not (source.parent / "world.json").is_file() or \
            source.parent.resolve() == Path(world).resolve():
        return None
    key = world_key(source.parent)
    return source.parent if key is not None and key != folder.key else None


def novel_summary(result: dict) -> dict:
    """The reader's numbers (issue 23) from a result: accuracy by hops ("1", "2", ...) open-book and
    closed-book on the novel pool, under counterfactual contexts (the world's counterfactual questions,
    all of the seen pool: a reader that never trained on the world saw neither pool), and chance (the
    novel pool's)."""
    by = result["by_hops"]

    def hops(setting: str, pool: str, key: str = "accuracy") -> dict[str, float]:
        return {str(h): a[key] for h, a in by[setting].get(pool, {}).items()}

    return {"open_book": hops("open_book", "novel"), "counterfactual": hops("counterfactual", "seen"),
            "closed_book": hops("closed_book", "novel"), "chance": hops("open_book", "novel", "chance")}
