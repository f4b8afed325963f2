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

W's questions here are the seen pool's training questions (split `train`); the held-out ones are left
for `vslm facts eval`. A counterfactual context is the open-book one with the last supporting card's
answer replaced by another of the question's choices (the target is that choice); questions whose
card does not spell the answer (older-than) are not used for it.

Every loss term is a pure function of logits, targets (-100 where not counted) and, for the KL
terms, the other model's logits. The relearning test (`relearn`) fine-tunes a model on the training
text of 10% of W's people and measures closed-book accuracy on the questions about the rest.
"""

from __future__ import annotations

import copy
import json
import random
import shutil
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from vslm.data.answers import IGNORE, AnswerSampler
from vslm.data.stories import iter_stories
from vslm.data.tokenizer import Tokenizer
from vslm.errors import VSLMError
from vslm.knowledge import metrics, render
from vslm.knowledge.adapters import group_documents
from vslm.knowledge.contexts import Contexts
from vslm.knowledge.folder import WorldFolder, load_world_folder
from vslm.knowledge.questions import Question
from vslm.knowledge.scoring import LMScorer
from vslm.model import GPT
from vslm.train.checkpoint import checkpoint_name, save_checkpoint
from vslm.train.run_folder import CHECKPOINTS, CONFIG, METRICS, SUMMARY, TOKENIZER, load_run

RESULT = "distill.json"
TERMS = ("open_book", "counterfactual", "forget", "retain", "gradient_ascent", "npo")
METHODS: dict[str, dict[str, float]] = {  # default weights; --weight NAME=VALUE changes any
    "combined": {"open_book": 1.0, "counterfactual": 1.0, "forget": 1.0, "retain": 1.0},
    "gradient-ascent": {"open_book": 1.0, "counterfactual": 1.0, "gradient_ascent": 1.0, "retain": 1.0},
    "npo": {"open_book": 1.0, "counterfactual": 1.0, "npo": 1.0, "retain": 1.0},
}


# ------------------------------------------------------------------------------------ loss terms


def answer_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the counted tokens: -(1/N) sum_{t: y_t != -100} log softmax(z_t)[y_t].
    logits (B, T, V), targets (B, T). The open-book and the counterfactual terms are this, on batches
    whose prompts hold the gold facts, or the counterfactual ones (target: the context's answer)."""
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE)


def kl_to(target_logits: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """KL(p || q) = sum_v p_v (log p_v - log q_v), averaged over the counted positions (y_t != -100),
    p = softmax(target_logits) (the naive model, or the teacher: no gradient), q = softmax(logits)
    (the student). forget: p = naive, positions = the answers of W's closed-book questions; retain:
    p = teacher, positions = every token of general text."""
    mask = targets != IGNORE  # (B, T)
    log_p = F.log_softmax(target_logits.detach().float(), dim=-1)[mask]  # (N, V)
    log_q = F.log_softmax(logits.float(), dim=-1)[mask]
    return (log_p.exp() * (log_p - log_q)).sum(-1).mean()


def gradient_ascent(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """-CE on the forget answers: minimising it pushes their likelihood down without bound."""
    return -answer_ce(logits, targets)


def sequence_logp(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(B,): log p(answer) = sum of the counted tokens' log-probabilities in each row."""
    mask = targets != IGNORE
    logp = F.log_softmax(logits.float(), dim=-1).gather(-1, targets.clamp(min=0)[..., None])[..., 0]  # (B, T)
    return (logp * mask).sum(-1)


def npo(logits: torch.Tensor, reference_logits: torch.Tensor, targets: torch.Tensor, beta: float) -> torch.Tensor:
    """Negative preference optimisation (Zhang et al. 2024), over the rows' answers:
    mean_b -(2/beta) log sigmoid(-beta (log p_student(a_b) - log p_ref(a_b)))
    = mean_b (2/beta) log(1 + (p_student / p_ref)^beta). Its gradient is gradient ascent's, weighted by
    2 sigmoid(beta * log ratio) (at most 2, vanishing as p_student falls below p_ref): bounded forgetting."""
    ratio = sequence_logp(logits, targets) - sequence_logp(reference_logits.detach(), targets)
    return (-(2.0 / beta) * F.logsigmoid(-beta * ratio)).mean()


def combine(weights: dict[str, float], terms: dict[str, torch.Tensor]) -> torch.Tensor:
    """sum_k w_k * term_k over the terms with a weight other than 0."""
    unknown = set(weights) - set(TERMS)
    if unknown:
        raise VSLMError(f"unknown loss term {sorted(unknown)[0]!r}; the terms are {', '.join(TERMS)}")
    used = [k for k, w in weights.items() if w != 0]
    if not used:
        raise VSLMError("every loss weight is 0")
    return sum(weights[k] * terms[k] for k in used)  # type: ignore[return-value]


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


# ------------------------------------------------------------------------------------ training


def step_terms(student: GPT, teacher: GPT, naive: GPT, weights: dict[str, float], batches: dict[str, tuple],
               beta: float = 0.1) -> dict[str, torch.Tensor]:
    """The loss terms with a weight other than 0, each from the batch it reads: `open_book`,
    `counterfactual`, `closed_book` ((x, y) from encode_pairs) and `general` ((x, y) windows)."""
    out: dict[str, torch.Tensor] = {}
    want = {k for k, w in weights.items() if w != 0}
    for term, key in (("open_book", "open_book"), ("counterfactual", "counterfactual")):
        if term in want and batches.get(key) is not None:
            x, y = batches[key]
            out[term] = answer_ce(student(x), y)
    if want & {"forget", "gradient_ascent", "npo"}:
        x, y = batches["closed_book"]
        logits = student(x)
        if "forget" in want:
            with torch.no_grad():
                target = naive(x)
            out["forget"] = kl_to(target, logits, y)
        if "gradient_ascent" in want:
            out["gradient_ascent"] = gradient_ascent(logits, y)
        if "npo" in want:
            with torch.no_grad():
                ref = teacher(x)
            out["npo"] = npo(logits, ref, y, beta)
    if "retain" in want:
        x, y = batches["general"]
        with torch.no_grad():
            target = teacher(x)
        out["retain"] = kl_to(target, student(x), y)
    for k in want - set(out):
        out[k] = torch.zeros(())  # no such batch (no counterfactual question in this draw)
    return out


def distill(teacher_run: Path, naive_run: Path, world: Path, out: Path, method: str = "combined", steps: int = 200,
            batch_size: int = 16, lr: float = 1e-3, weights: dict[str, float] | None = None, beta: float = 0.1,
            seed: int = 0, device: str = "cpu", distractors: int = 4) -> dict:
    """Train a student from the teacher's weights; write it to `out` as a run folder (the teacher's
    config and tokenizer, one checkpoint, metrics.jsonl with every term) and distill.json; returns it."""
    if method not in METHODS:
        raise VSLMError(f"unknown method {method!r}; choose {', '.join(METHODS)}")
    weights = {**METHODS[method], **(weights or {})}
    out = Path(out)
    if (out / CONFIG).exists():
        raise VSLMError(f"{out} already holds a run")
    _, teacher, tokenizer = load_run(Path(teacher_run), device=device)
    _, naive, _ = load_run(Path(naive_run), device=device)
    if naive.cfg.vocab_size != teacher.cfg.vocab_size:
        raise VSLMError(f"the naive model's vocabulary ({naive.cfg.vocab_size}) is not the teacher's "
                        f"({teacher.cfg.vocab_size}): train it with the same data.tokenizer")
    folder = load_world_folder(world)
    torch.manual_seed(seed)
    student = copy.deepcopy(teacher).train()
    for m in (teacher, naive):
        m.eval().requires_grad_(False)
    context = teacher.cfg.context
    ctx = Contexts(folder, distractors, seed)
    questions = forget_questions(folder)
    if not questions:
        raise VSLMError(f"{world} has no training questions of the seen pool")
    general = general_windows(tokenizer, context, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    rng = random.Random(f"distill:{seed}")
    optimizer = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=0.0)
    out.mkdir(parents=True, exist_ok=True)
    log = []
    for step in range(1, steps + 1):
        qs = [questions[i] for i in torch.randint(len(questions), (batch_size,), generator=gen).tolist()]
        cf = [p for p in (counterfactual_prompt(q, ctx, rng) for q in qs) if p is not None]
        rows = general[torch.randint(len(general), (batch_size,), generator=gen)]
        batches = {"open_book": encode_pairs(tokenizer, [(ctx.open_book(q), q.answer) for q in qs], context),
                   "counterfactual": encode_pairs(tokenizer, cf, context) if cf else None,
                   "closed_book": encode_pairs(tokenizer, [(ctx.closed_book(q), q.answer) for q in qs], context),
                   "general": (rows[:, :-1], rows[:, 1:])}
        batches = {k: None if v is None else tuple(t.to(device) for t in v) for k, v in batches.items()}
        terms = step_terms(student, teacher, naive, weights, batches, beta)
        loss = combine(weights, terms)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        log.append({"step": step, "loss": loss.item(), **{k: v.item() for k, v in terms.items()}})
    for name in (CONFIG, TOKENIZER, SUMMARY):
        if (Path(teacher_run) / name).is_file():
            shutil.copy(Path(teacher_run) / name, out / name)
    save_checkpoint(out / CHECKPOINTS / checkpoint_name(steps), student.state_dict(), {"step": steps})
    (out / METRICS).write_text("".join(json.dumps(r) + "\n" for r in log), encoding="utf-8")
    result = {"teacher": str(teacher_run), "naive": str(naive_run), "world": str(world), "method": method,
              "weights": weights, "beta": beta, "steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed,
              "questions": len(questions), "last": log[-1] if log else None}
    (out / RESULT).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return result


# ------------------------------------------------------------------------------------ relearning


def relearn(model: GPT, tokenizer: Tokenizer, folder: WorldFolder, fraction: float = 0.1, steps: int = 100,
            lr: float = 1e-3, batch_size: int = 16, per_group: int | None = 100, seed: int = 0) -> dict:
    """The relearning test: fine-tune a copy of `model` on the training text (every rendering of each
    fact) of `fraction` of W's people, then ask closed-book, before and after, the questions of W that
    use none of those facts (`rest`) and those that do (`relearned`). Knowledge only suppressed comes
    back on `rest` faster than for a model that never knew it.

    Returns {fraction, steps, people, facts, before: {rest, relearned}, after: {rest, relearned}},
    each an accuracy dict (metrics.accuracy)."""
    world = folder.world
    people = [e.id for e in world.of_kind("person", "seen")]
    random.Random(f"relearn:{seed}").shuffle(people)
    chosen = people[: max(1, round(fraction * len(people)))]
    facts = {f.id for e in chosen for f in world.facts_about(e)}
    asked = [q for q in folder.questions if q.pool == "seen" and not q.counterfactual]
    groups = {"rest": [q for q in asked if not facts & set(q.support)],
              "relearned": [q for q in asked if facts & set(q.support)]}
    groups = {k: metrics.per_hops(v, per_group) for k, v in groups.items()}
    model = copy.deepcopy(model)
    scorer = LMScorer(model, tokenizer)

    def measure() -> dict:
        return {k: metrics.accuracy(qs, metrics.pick(scorer, [render.closed_book_prompt(q.question) for q in qs], qs))
                for k, qs in groups.items()}

    before = measure()
    torch.manual_seed(seed)
    docs = group_documents(world, chosen, folder.settings.renderings, seed)
    sampler = AnswerSampler(docs, tokenizer, model.cfg.context, batch_size, seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    device = next(model.parameters()).device
    model.train().requires_grad_(True)
    for _ in range(steps):
        x, y = sampler.next_batch()
        loss = answer_ce(model(x.to(device)), y.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return {"fraction": fraction, "steps": steps, "people": len(chosen), "facts": len(facts),
            "before": before, "after": measure()}
