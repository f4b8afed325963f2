"""Is the fact in the weights? A linear probe from the hidden state at a person's name to an attribute.

The model reads the name alone, as a document's first words (where a training document about that
person starts); the residual stream after each block (hook point `resid_post.D`) at the name's last
token is the feature. A multinomial logistic regression is fitted on some people and scored on the
others (P-probing, Allen-Zhu & Li 2023): well above the majority baseline means the name's
representation already holds the attribute. The novel pool is the control: its facts were never
trained, so a probe on it must stay at the baseline.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from vslm.knowledge.scoring import LMScorer
from vslm.knowledge.world import Pool, World
from vslm.model.hooks import capture


@torch.no_grad()
def name_states(scorer: LMScorer, names: Sequence[str]) -> list[torch.Tensor]:
    """For each depth, (N, width) residual stream after the block at each name's last token."""
    model = scorer.model
    depths = range(len(model.order))
    rows = [scorer.prompt_ids(n)[-model.cfg.context :] for n in names]
    device = next(model.parameters()).device
    out: list[list[torch.Tensor]] = [[] for _ in depths]
    for start in range(0, len(rows), scorer.batch_size):
        batch = rows[start : start + scorer.batch_size]
        x = torch.zeros(len(batch), max(map(len, batch)), dtype=torch.long)  # right-padded: causal, so harmless
        for b, ids in enumerate(batch):
            x[b, : len(ids)] = torch.tensor(ids)
        last = torch.tensor([len(ids) - 1 for ids in batch])
        with capture(model, *(f"resid_post.{d}" for d in depths)) as seen:
            model(x.to(device))
        for d in depths:
            out[d].append(seen[f"resid_post.{d}"].float().cpu()[torch.arange(len(batch)), last])
    return [torch.cat(parts) for parts in out]


def fit_probe(x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor,
              steps: int = 300, lr: float = 0.05, l2: float = 1e-3) -> float:
    """Test accuracy of a softmax regression fitted on standardised training features (full batch, Adam)."""
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    a, b = (x_train - mean) / std, (x_test - mean) / std
    classes = int(max(y_train.max(), y_test.max())) + 1
    w = torch.zeros(a.shape[1], classes, requires_grad=True)
    bias = torch.zeros(classes, requires_grad=True)
    opt = torch.optim.Adam([w, bias], lr=lr)
    with torch.enable_grad():
        for _ in range(steps):
            opt.zero_grad()
            loss = F.cross_entropy(a @ w + bias, y_train) + l2 * w.square().sum()
            loss.backward()
            opt.step()
    return float(((b @ w + bias).argmax(1) == y_test).float().mean())


def majority_baseline(y_train: Sequence[int], y_test: Sequence[int]) -> float:
    """Accuracy on the test labels of always answering the most common training label."""
    top = Counter(y_train).most_common(1)[0][0]
    return sum(y == top for y in y_test) / len(y_test)


def attribute_labels(world: World, attribute: str, pool: Pool) -> list[tuple[str, str]]:
    """(name, the attribute's value) of each person of the pool who has it; of a symmetric relation (a spouse,
    stored once, read from both ends) the far end, never the person."""
    return [(e.name, fact.other(e.id)) for e in world.of_kind("person", pool)
            if (fact := world.lookup(e.id, attribute)) is not None]


def probe_attribute(scorer: LMScorer, world: World, attribute: str, pool: Pool, test_fraction: float = 0.3,
                    seed: int = 0) -> dict:
    """{by_depth: [test accuracy after each block], best, baseline, n_train, n_test} for the people of a pool."""
    people = attribute_labels(world, attribute, pool)
    random.Random(f"probe:{seed}").shuffle(people)
    n_test = max(1, round(test_fraction * len(people)))
    if len(people) - n_test < 2:
        return {"by_depth": [], "best": float("nan"), "baseline": float("nan"), "n_train": 0, "n_test": 0}
    classes = {v: i for i, v in enumerate(sorted({v for _, v in people}))}
    labels = torch.tensor([classes[v] for _, v in people])
    states = name_states(scorer, [n for n, _ in people])
    test, train = slice(0, n_test), slice(n_test, None)
    by_depth = [fit_probe(s[train], labels[train], s[test], labels[test]) for s in states]
    return {"by_depth": by_depth, "best": max(by_depth),
            "baseline": majority_baseline(labels[train].tolist(), labels[test].tolist()),
            "n_train": len(people) - n_test, "n_test": n_test}
