"""What a training step minimises: an objective maps (model, batch) to a loss and its metrics.

    loss, metrics = objective(model, batch)     # inside the trainer's autocast, batch on the device

`metrics` holds scalar tensors (detached or not): the trainer averages them over gradient
accumulation and logs them beside `loss` on logged steps. The batch is whatever the run's batch
source gives (train/trainer.py): `(inputs, targets)` for next-token training, a dict of named parts
for distillation. Every loss term is a pure function of logits, targets (-100 where a position does
not count) and, for the KL terms, another model's logits:

  next_token     CE over the counted targets: language-model training on windows, answer-only
                 training on whole documents (the batch source masks all but the answers), a LoRA
                 fact adapter (only the adapter's weights train), relearning;
  distillation   w_ob CE(open book) + w_cf CE(counterfactual) + w_f KL(naive || student)
                 + w_r KL(teacher || student), or gradient ascent or NPO in place of the KL forget
                 term (knowledge/distill.py builds its batches; RESEARCH.md section 5c).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping
from typing import Protocol

import torch
import torch.nn.functional as F

from vslm.data.answers import IGNORE
from vslm.errors import VSLMError

Batch = tuple[torch.Tensor, torch.Tensor] | Mapping[str, "Batch | None"]


class Objective(Protocol):
    def __call__(self, model: Callable[[torch.Tensor], torch.Tensor], batch) -> tuple[torch.Tensor, dict]: ...


# ------------------------------------------------------------------------------------ loss terms


def next_token_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the counted tokens: -(1/N) sum_{t: y_t != -100} log softmax(z_t)[y_t].
    logits (B, T, V), targets (B, T)."""
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE)


def kl_to(target_logits: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """KL(p || q) = sum_v p_v (log p_v - log q_v), averaged over the counted positions (y_t != -100),
    p = softmax(target_logits) (another model's: no gradient), q = softmax(logits) (the one trained)."""
    mask = targets != IGNORE  # (B, T)
    log_p = F.log_softmax(target_logits.detach().float(), dim=-1)[mask]  # (N, V)
    log_q = F.log_softmax(logits.float(), dim=-1)[mask]
    return (log_p.exp() * (log_p - log_q)).sum(-1).mean()


def gradient_ascent(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """-CE on the counted tokens: minimising it pushes their likelihood down without bound."""
    return -next_token_loss(logits, targets)


def sequence_logp(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(B,): log p(answer) = sum of the counted tokens' log-probabilities in each row."""
    mask = targets != IGNORE
    logp = F.log_softmax(logits.float(), dim=-1).gather(-1, targets.clamp(min=0)[..., None])[..., 0]  # (B, T)
    return (logp * mask).sum(-1)


def npo(logits: torch.Tensor, reference_logits: torch.Tensor, targets: torch.Tensor, beta: float) -> torch.Tensor:
    """Negative preference optimisation (Zhang et al. 2024), over the rows' answers:
    mean_b -(2/beta) log sigmoid(-beta (log p(a_b) - log p_ref(a_b))) = mean_b (2/beta) log(1 + (p / p_ref)^beta).
    Its gradient is gradient ascent's weighted by 2 sigmoid(beta * log ratio) (at most 2, vanishing as
    p falls below p_ref): bounded forgetting."""
    ratio = sequence_logp(logits, targets) - sequence_logp(reference_logits.detach(), targets)
    return (-(2.0 / beta) * F.logsigmoid(-beta * ratio)).mean()


# ------------------------------------------------------------------------------------ objectives


class NextToken:
    """Next-token cross-entropy on `(inputs, targets)`; targets of -100 do not count."""

    def __call__(self, model, batch) -> tuple[torch.Tensor, dict]:
        x, y = batch
        return next_token_loss(model(x), y), {}


TERMS = ("open_book", "counterfactual", "forget", "retain", "gradient_ascent", "npo")
FORGETTING = ("forget", "gradient_ascent", "npo")  # read the closed-book part


def check_weights(weights: Mapping[str, float]) -> dict[str, float]:
    """The weights with a value other than 0; an unknown term, a weight that is negative or not finite (a negative
    one turns its term around: gradient_ascent is the term that ascends), or no term at all is an error."""
    unknown = set(weights) - set(TERMS)
    if unknown:
        raise VSLMError(f"unknown loss term {sorted(unknown)[0]!r}; the terms are {', '.join(TERMS)}")
    for k, w in weights.items():
        if isinstance(w, bool) or not isinstance(w, numbers.Real) or not (math.isfinite(w) and w >= 0):
            raise VSLMError(f"loss weight {k}={w}: a finite number, 0 or more (a negative weight turns the term "
                            "around; gradient_ascent is the term that ascends)")
    used = {k: float(w) for k, w in weights.items() if w != 0}
    if not used:
        raise VSLMError("every loss weight is 0")
    return used


def _stack(parts: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of several (x, y) parts in one (sum B, max T) batch, right-padded (targets -100): causal
    attention makes a row's logits at its own positions independent of the padding after them."""
    T = max(x.size(1) for x, _ in parts)
    xs = [F.pad(x, (0, T - x.size(1))) for x, _ in parts]
    ys = [F.pad(y, (0, T - y.size(1)), value=IGNORE) for _, y in parts]
    return torch.cat(xs), torch.cat(ys)


class Distillation:
    """sum_k w_k * term_k over the terms with a weight (TERMS), from a batch of named parts, each
    `(x, y)` or None: `open_book` and `counterfactual` (prompts holding facts, targets the answers),
    `closed_book` (W's questions, no facts) and `general` (windows of general text). The trained
    model sees all parts in one forward pass (one pass per step also suits DDP); `teacher` and
    `naive` are frozen models on the same device, called without gradients."""

    def __init__(self, teacher: torch.nn.Module, naive: torch.nn.Module, weights: Mapping[str, float],
                 beta: float = 0.1):
        self.teacher, self.naive, self.beta = teacher, naive, beta
        self.weights = check_weights(weights)

    def _parts(self) -> list[str]:
        want = set(self.weights)
        parts = [p for p in ("open_book", "counterfactual") if p in want]
        if want & set(FORGETTING):
            parts.append("closed_book")
        if "retain" in want:
            parts.append("general")
        return parts

    def __call__(self, model, batch: Mapping) -> tuple[torch.Tensor, dict]:
        present = [p for p in self._parts() if batch.get(p) is not None and batch[p][0].size(0) > 0]
        logits: dict[str, torch.Tensor] = {}
        if present:
            x, _ = _stack([batch[p] for p in present])
            out = model(x)
            row = 0
            for p in present:
                px, _ = batch[p]
                logits[p] = out[row : row + px.size(0), : px.size(1)]
                row += px.size(0)
        terms: dict[str, torch.Tensor] = {}
        for term in ("open_book", "counterfactual"):
            if term in logits:
                terms[term] = next_token_loss(logits[term], batch[term][1])
        if "closed_book" in logits:
            x, y = batch["closed_book"]
            if "forget" in self.weights:
                with torch.no_grad():
                    target = self.naive(x)
                terms["forget"] = kl_to(target, logits["closed_book"], y)
            if "gradient_ascent" in self.weights:
                terms["gradient_ascent"] = gradient_ascent(logits["closed_book"], y)
            if "npo" in self.weights:
                with torch.no_grad():
                    ref = self.teacher(x)
                terms["npo"] = npo(logits["closed_book"], ref, y, self.beta)
        if "general" in logits:
            x, y = batch["general"]
            with torch.no_grad():
                target = self.teacher(x)
            terms["retain"] = kl_to(target, logits["general"], y)
        zero = next(iter(logits.values())).sum() * 0 if logits else torch.zeros(())
        for k in self.weights:
            terms.setdefault(k, zero)  # no such part in this draw (no counterfactual question, say)
        loss = sum(self.weights[k] * terms[k] for k in self.weights)
        return loss, terms  # type: ignore[return-value]
