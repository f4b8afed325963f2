"""Distilling knowledge out of the weights (RESEARCH.md section 5 (c)): `vslm facts distill`.

A teacher knows world W closed-book; a naive model never saw W. The student starts from the teacher's
weights and is trained with

    L = w_ob * CE(answer | gold facts + distractors, q)              open_book
      + w_cf * CE(answer' | counterfactual facts, q)                 counterfactual
      + w_f  * KL(p_naive(.|q) || p_student(.|q))                    forget (closed book, W's questions)
      + w_r  * KL(p_teacher || p_student) on general text            retain (the embedded stories)

so it reads facts from the context, follows the context against its weights, answers W's questions
closed-book as a model that never saw W would, and keeps its language elsewhere. The ablations put
another forgetting term in place of `forget`: gradient ascent (-CE on W's closed-book answers) or NPO
(Zhang et al. 2024) with the teacher at the start as reference.

The loss is the objective `vslm.train.objectives.Distillation` (each term a pure function of
logits); this module builds its batches (`DistillBatches`) and runs it through the one training
loop (train/finetune.py): the student is a run folder with metrics.jsonl, checkpoints and exact
resume like any other.

W's questions here are the seen pool's training questions (split `train`); the held-out ones are left
for `vslm facts eval`. A counterfactual context is the open-book one with the last supporting card's
answer replaced by another of the question's choices (the target is that choice); questions whose
card does not spell the answer (older-than) are not used for it.

The relearning test (`relearn`) fine-tunes a copy of a run's model on the training text of 10% of
W's people, by the same loop, and measures closed-book accuracy on the questions about the rest.
"""

from __future__ import annotations

import copy
import json
import os
import random
from collections.abc import Sequence
from pathlib import Path

import torch

from vslm.data.answers import IGNORE, AnswerSampler
from vslm.data.shards import prepare_corpus
from vslm.data.stories import iter_stories
from vslm.data.tokenizer import Tokenizer
from vslm.errors import UsageError, VSLMError, refuse_file_in_the_way
from vslm.files import write_text
from vslm.knowledge import metrics, render
from vslm.knowledge.adapters import group_documents
from vslm.knowledge.contexts import Contexts
from vslm.knowledge.folder import WorldFolder, load_world_folder
from vslm.knowledge.questions import Question
from vslm.knowledge.scoring import run_scorer, writes_steps
from vslm.plain import dumps
from vslm.train.finetune import fine_tune, finetune_config
from vslm.train.objectives import Distillation, check_weights
from vslm.train.run_folder import TOKENIZER, load_run

RESULT = "distill.json"
MEASURED = ("questions", "last", "val", "relearning")  # what distill.json holds beyond the settings it was asked
STARTED = "distill-settings.json"  # the settings a resumed distillation must have
METHODS: dict[str, dict[str, float]] = {  # default weights; --weight NAME=VALUE changes any
    "combined": {"open_book": 1.0, "counterfactual": 1.0, "forget": 1.0, "retain": 1.0},
    "gradient-ascent": {"open_book": 1.0, "counterfactual": 1.0, "gradient_ascent": 1.0, "retain": 1.0},
    "npo": {"open_book": 1.0, "counterfactual": 1.0, "npo": 1.0, "retain": 1.0},
}


# ------------------------------------------------------------------------------------ batches


def encode_pairs(tokenizer: Tokenizer, pairs: Sequence[tuple[str, str]],
                 context: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(prompt, answer) pairs as inputs and targets (B, T), right-padded, laid out and tokenized as
    scoring.LMScorer scores them: end-of-text, the prompt, then " answer\\n"; targets are -100 except
    on the answer's tokens. A row longer than the context loses its oldest tokens."""
    start = [tokenizer.eos_id] if tokenizer.eos_id is not None else []
    rows = []
    for prompt, answer in pairs:
        head, tail = start + tokenizer.encode(prompt), tokenizer.encode(render.answer_text(answer))
        ids, counted = (head + tail)[-(context + 1) :], ([False] * len(head) + [True] * len(tail))[-(context + 1) :]
        rows.append((ids, counted))
    T = max(len(ids) for ids, _ in rows) - 1
    x = torch.zeros(len(rows), T, dtype=torch.long)
    y = torch.full((len(rows), T), IGNORE, dtype=torch.long)
    for b, (ids, counted) in enumerate(rows):
        x[b, : len(ids) - 1] = torch.tensor(ids[:-1])
        for t in range(len(ids) - 1):
            if counted[t + 1]:
                y[b, t] = ids[t + 1]
    return x, y


def counterfactual_prompt(q: Question, ctx: Contexts, rng: random.Random) -> tuple[str, str] | None:
    """(open-book prompt with the answer swapped for another choice in the last supporting card, that
    choice), or None for an older-than question and when that card does not spell the answer."""
    if q.kind != "chain":  # older-than: the answer is a name the card is about, not the card's value
        return None
    cards = ctx.open_book_cards(q)
    last = q.support[-1]
    if not any(c.id == last and q.answer in c.text for c in cards):
        return None
    other = rng.choice([c for c in q.choices if c != q.answer])
    texts = [c.text.replace(q.answer, other) if c.id == last else c.text for c in cards]
    return render.open_book_prompt(texts, q.question), other


def general_windows(tokenizer: Tokenizer, context: int, n_stories: int = 200, seed: int = 0) -> torch.Tensor:
    """General text for the retain term: the embedded stories (vslm.data.stories), tokenized, cut in
    windows of context + 1 tokens: (N, context + 1)."""
    sep = [tokenizer.eos_id] if tokenizer.eos_id is not None else []
    ids: list[int] = []
    for story in iter_stories(seed, n_stories=n_stories):
        ids += sep + tokenizer.encode(story)
    n = len(ids) // (context + 1)
    if n == 0:
        raise VSLMError("too little general text for one window")
    return torch.tensor(ids[: n * (context + 1)]).view(n, context + 1)


def forget_questions(folder: WorldFolder) -> list[Question]:
    """W's questions the student trains on: the seen pool's training questions."""
    return [q for q in folder.questions if q.pool == "seen" and q.split == "train" and not q.counterfactual]


class DistillBatches:
    """The distillation objective's batches: each step `batch_size` of W's training questions (drawn
    by a seeded generator) asked open-book, with a counterfactual context (where one can be made) and
    closed-book, and as many windows of general text. The generator's and the counterfactual
    choice's states are the data position (saved in every checkpoint)."""

    def __init__(self, folder: WorldFolder, tokenizer: Tokenizer, context: int, batch_size: int, seed: int,
                 distractors: int = 4):
        self.tokenizer, self.context, self.batch_size = tokenizer, context, batch_size
        self.ctx = Contexts(folder, distractors, seed)
        self.questions = forget_questions(folder)
        if not self.questions:
            raise VSLMError("the world has no training questions of the seen pool")
        self.general = general_windows(tokenizer, context, seed=seed)
        self.generator = torch.Generator().manual_seed(seed)
        self.rng = random.Random(f"distill:{seed}")

    def next_batch(self) -> dict[str, tuple[torch.Tensor, torch.Tensor] | None]:
        gen, ctx, tok, T = self.generator, self.ctx, self.tokenizer, self.context
        qs = [self.questions[i] for i in torch.randint(len(self.questions), (self.batch_size,), generator=gen).tolist()]
        cf = [p for p in (counterfactual_prompt(q, ctx, self.rng) for q in qs) if p is not None]
        rows = self.general[torch.randint(len(self.general), (self.batch_size,), generator=gen)]
        return {"open_book": encode_pairs(tok, [(ctx.open_book(q), q.answer) for q in qs], T),
                "counterfactual": encode_pairs(tok, cf, T) if cf else None,
                "closed_book": encode_pairs(tok, [(ctx.closed_book(q), q.answer) for q in qs], T),
                "general": (rows[:, :-1], rows[:, 1:])}

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "rng": self.rng.getstate()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.rng.setstate(state["rng"])


def distill(teacher_run: Path, naive_run: Path, world: Path, out: Path, method: str = "combined", steps: int = 200,
            batch_size: int = 16, lr: float = 1e-3, weights: dict[str, float] | None = None, beta: float = 0.1,
            seed: int = 0, device: str = "cpu", distractors: int = 4, progress: bool = False) -> dict:
    """Train a student from the teacher's weights into the run folder `out` (the teacher's model and
    data config, its tokenizer, metrics.jsonl with every term, checkpoints) and write distill.json;
    returns it. An interrupted distillation of the same settings continues from its last checkpoint; a
    finished one of the same settings is read back. `progress`: a progress bar (`vslm facts distill`'s)."""
    if method not in METHODS:
        raise VSLMError(f"unknown method {method!r}; choose {', '.join(METHODS)}")
    weights = {**METHODS[method], **(weights or {})}
    check_weights(weights)
    if weights.get("npo") and not beta > 0:
        raise UsageError(f"--beta {beta:g}: NPO's beta must be above 0")
    if distractors < 0:
        raise UsageError(f"--distractors {distractors}: a count of wrong facts, 0 or more")
    out = Path(out)
    refuse_file_in_the_way(out)
    # the folders as seen from `out` ("../closed"): the same distillation whichever folder the command runs in,
    # however `out` is spelled, and wherever the experiment folder holding them all has moved
    settings = {"teacher": _from(out, teacher_run), "naive": _from(out, naive_run), "world": _from(out, world),
                "paths": "relative to out", "method": method, "weights": weights, "beta": beta, "steps": steps,
                "batch_size": batch_size, "lr": lr, "seed": seed, "distractors": distractors}
    started = _started_with(out)
    if started is not None and started != settings:
        differ = ", ".join(f"{k} {started.get(k)!r} then, {v!r} now" for k, v in settings.items()
                           if started.get(k) != v)
        raise VSLMError(f"{out} already holds a distillation of other settings ({differ}); --out another folder, "
                        "or move it away")
    if (out / RESULT).is_file() and started == settings:
        return json.loads((out / RESULT).read_text(encoding="utf-8"))
    if started is None and any(out.iterdir() if out.is_dir() else ()):
        raise VSLMError(f"{out} already holds files that are not a distillation's; --out another folder")
    for role, run in (("teacher", teacher_run), ("naive model", naive_run)):
        if writes_steps(run):  # the terms compare answers given at once, after "A:"
            raise VSLMError(f"the {role} {run} is a reader trained to write its steps before its answer; "
                            "distillation's terms compare answers given at once: give a reader trained without steps")
    cfg, teacher, tokenizer = load_run(Path(teacher_run), device=device)
    _, naive, naive_tokenizer = load_run(Path(naive_run), device=device)
    if naive_tokenizer.to_dict() != tokenizer.to_dict():
        raise VSLMError(f"the naive model's tokenizer ({Path(naive_run) / TOKENIZER}) is not the teacher's: the "
                        "forget term compares their predictions token by token; train it with the teacher's "
                        "data.tokenizer on a corpus that gives the same vocabulary")
    folder = load_world_folder(world)
    if not forget_questions(folder):
        raise VSLMError(f"{world} has no training questions of the seen pool")
    batches = DistillBatches(folder, tokenizer, teacher.cfg.context, batch_size, seed, distractors)
    student = copy.deepcopy(teacher).requires_grad_(True)
    for m in (teacher, naive):
        m.eval().requires_grad_(False)
    # checked before the folder and its settings file are written: a bad value leaves nothing that would refuse
    # the corrected command as "a distillation of other settings"
    run_cfg = finetune_config(cfg, steps, lr, batch_size, seed, device, progress,
                              checkpoint_every=max(1, steps // 4))
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / STARTED, json.dumps(settings, indent=1) + "\n")
    final = fine_tune(run_cfg, out, student, prepare_corpus(cfg.data, tokenizer=tokenizer),
                      objective=Distillation(teacher, naive, weights, beta), batches=batches, keep=(STARTED,))
    used = [k for k, w in weights.items() if w != 0]
    result = {**settings, "questions": len(batches.questions),
              "last": {k: final[k] for k in ("step", "loss", *used) if k in final},
              "val": {k: final[k] for k in ("val_loss", "val_bpb") if k in final}}
    write_text(out / RESULT, dumps(result, indent=1) + "\n")
    return result


def _from(out: Path, folder: Path | str) -> str:
    """`folder` relative to `out`, both resolved."""
    return os.path.relpath(Path(folder).resolve(), Path(out).resolve())


def _started_with(out: Path) -> dict | None:
    """The settings a distillation in `out` began with; for a finished one written before the settings file
    outlived its start (2026-12-06), those its distill.json records; for one that recorded its folders as typed
    (before 2026-12-07), those folders as seen from `out` (read from the current folder, as they were typed)."""
    for path in (out / STARTED, out / RESULT):
        if path.is_file():
            saved = json.loads(path.read_text(encoding="utf-8"))
            if path.name != STARTED:
                saved = {"distractors": 4, **{k: v for k, v in saved.items() if k not in MEASURED}}  # 12-02: 4
            if saved.get("paths") != "relative to out":
                saved |= {k: _from(out, saved[k]) for k in ("teacher", "naive", "world") if k in saved}
                saved["paths"] = "relative to out"
            return saved
    return None


# ------------------------------------------------------------------------------------ relearning


def relearn(run: Path, folder: WorldFolder, out: Path, fraction: float = 0.1, steps: int = 100, lr: float = 1e-3,
            batch_size: int = 16, per_group: int | None = 100, seed: int = 0, device: str = "cpu",
            progress: bool = False) -> dict:
    """The relearning test: fine-tune the run's model (a run of the training loop in `out`) on the
    training text (every rendering of each fact) of `fraction` of W's people, then ask closed-book,
    before and after, the questions of W that use none of those facts (`rest`) and those that do
    (`relearned`). Knowledge only suppressed comes back on `rest` faster than for a model that never
    knew it.

    Returns {fraction, steps, people, facts, before: {rest, relearned}, after: {rest, relearned}},
    each an accuracy dict (metrics.accuracy), and the fine-tune's last loss and validation loss. `progress`: a
    progress bar (`vslm facts distill --relearn-steps`'s)."""
    world = folder.world
    people = [e.id for e in world.of_kind("person", "seen")]
    random.Random(f"relearn:{seed}").shuffle(people)
    chosen = people[: max(1, round(fraction * len(people)))]
    facts = {f.id for e in chosen for f in world.facts_about(e)}
    asked = [q for q in folder.questions if q.pool == "seen" and not q.counterfactual]
    groups = {"rest": [q for q in asked if not facts & set(q.support)],
              "relearned": [q for q in asked if facts & set(q.support)]}
    groups = {k: metrics.per_hops(v, per_group) for k, v in groups.items()}
    cfg, model, tokenizer = load_run(Path(run), device=device)
    scorer = run_scorer(Path(run), model, tokenizer)

    def measure() -> dict:
        model.eval()
        return {k: metrics.accuracy(qs, metrics.pick(scorer, [render.closed_book_prompt(q.question) for q in qs], qs))
                for k, qs in groups.items()}

    before = measure()
    docs = group_documents(world, chosen, folder.settings.renderings, seed)
    model.requires_grad_(True)
    final = fine_tune(finetune_config(cfg, steps, lr, batch_size, seed, device, progress), out, model,
                      prepare_corpus(cfg.data, tokenizer=tokenizer),
                      batches=AnswerSampler(docs, tokenizer, model.cfg.context, batch_size, seed))
    return {"fraction": fraction, "steps": steps, "people": len(chosen), "facts": len(facts),
            "before": before, "after": measure(),
            "fit": {k: final[k] for k in ("loss", "val_loss") if k in final}}
