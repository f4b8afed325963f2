"""Loss by position in the context, the in-context-learning score and the induction probe
(RESEARCH.md section 1; Olsson et al. 2022, "In-context learning and induction heads").

Positions in code are 0-based: idx[:, t] is the token at position t, and the prediction made at
position t (after reading tokens 0..t) is scored against idx[:, t + 1].
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from vslm.model.gpt import GPT
from vslm.model.hooks import capture
from vslm.probes.bootstrap import bootstrap_se

OLSSON_CONTEXT = 512  # contexts at least this long get the paper's score (tokens 500 and 50)


def token_nll(logits: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """(B, T, V) logits of idx (B, T) -> (B, T - 1) nll[b, t] = -log p(idx[b, t + 1] | idx[b, <= t])."""
    B, T = idx.shape
    nll = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), idx[:, 1:].flatten(), reduction="none")
    return nll.view(B, T - 1)


@torch.no_grad()
def position_loss(model: nn.Module, idx: torch.Tensor) -> np.ndarray:
    """The loss curve over positions: curve[t] = mean over b of -log p(idx[b, t + 1] | idx[b, <= t]).

    model maps (B, T) token ids to (B, T, V) logits (a GPT). Returns (T - 1,) float64; curve[t] is the
    loss of the prediction made after reading t + 1 tokens.
    """
    return token_nll(model(idx), idx).mean(0).double().cpu().numpy()


def icl_score(curve: np.ndarray, short: str = "bands") -> tuple[float, str]:
    """In-context-learning score: loss late in the context minus loss early in it (negative = the model
    uses its context), and a label saying which definition was used.

    Tokens are counted from 1: "the loss at token k" is curve[k - 1], the loss of the prediction made
    after reading k tokens (of position_loss). With T = len(curve) + 1, the context the curve came from:
      T >= 512: loss at token 500 - loss at token 50 = curve[499] - curve[49], label "olsson"
                (Olsson et al. 2022);
      T <  512: label "short-context", with w = T // 10: the mean loss over the last w tokens
                (T - w .. T - 1) minus the mean loss over w tokens centred on token T // 10
                (T // 10 - w // 2 .. T // 10 - w // 2 + w - 1). Bands rather than single tokens, because
                one token's loss is noisy even over a few hundred windows (a probe set); not
                comparable with "olsson" scores nor across contexts;
                with short="tokens" (logging.icl_short = "tokens"), RESEARCH.md's own definition,
                single tokens: loss at token T - 1 - loss at token T // 10 = curve[T - 2] - curve[T // 10 - 1],
                label "short-context-tokens".
    """
    T = len(curve) + 1
    if T >= OLSSON_CONTEXT:
        return float(curve[499] - curve[49]), "olsson"
    if T < 10:
        raise ValueError(f"a loss curve of {len(curve)} positions is too short for an ICL score (needs 9 or more)")
    if short == "tokens":
        return float(curve[T - 2] - curve[T // 10 - 1]), "short-context-tokens"
    if short != "bands":
        raise ValueError(f"short must be 'bands' or 'tokens', got {short!r}")
    w = T // 10
    first = T // 10 - w // 2  # the early band's first token, >= 1
    late = curve[T - w - 1 : T - 1].mean()
    early = curve[first - 1 : first - 1 + w].mean()
    return float(late - early), "short-context"


def prefix_matching(weights: torch.Tensor, length: int) -> np.ndarray:
    """Prefix-matching score per head of attention weights (B, H, 2L, 2L) over a sequence repeated twice
    (L = length): the mean over b and over queries i = L..2L-1 of the weight from i to i - L + 1, the token
    right after the previous occurrence of token i. Raw weights, not renormalised (for attention whose rows
    do not sum to 1, read it beside attention_stats' row_sum). Returns (H,) float64.
    """
    i = torch.arange(length, 2 * length, device=weights.device)  # queries in the second copy
    return weights[:, :, i, i - length + 1].mean(dim=(0, 2)).double().cpu().numpy()  # (B, H, L) -> (H,)


def repeat_statistics(windows: np.ndarray, n: int = 1) -> dict[str, float]:
    """How much copying can pay in these windows (N, T) of token ids: at how many positions an induction
    head has something to copy, and how often copying would be right (for n = 1, the "bigram repetition
    frequency and reliability" of Aoyama, Wilcox & Schneider 2025, who find that induction heads form
    only where both are high enough).

      repeat_frequency:   the share of positions t (of the N * (T - n) that have n tokens up to t and a
                          next token) whose last n tokens x[t-n+1..t] already occurred earlier in the window;
      repeat_reliability: among those, the share where the token after the latest earlier occurrence
                          (ending at s) equals the next token, x[s + 1] == x[t + 1]: the accuracy of pure
                          copying after matching n tokens.
    Python loop over positions: meant for a probe set (a few hundred windows), not a corpus.
    """
    windows = np.asarray(windows)
    if windows.ndim != 2 or n < 1 or windows.shape[1] <= n:
        raise ValueError(f"repeat statistics need (N, T) windows with T > n = {n}, got shape {windows.shape}")
    repeated = copied = 0
    for row in windows.tolist():
        for t, s in latest_occurrences(row, n):
            repeated += 1
            copied += row[s + 1] == row[t + 1]
    positions = windows.shape[0] * (windows.shape[1] - n)
    return {"repeat_frequency": repeated / positions,
            "repeat_reliability": copied / repeated if repeated else math.nan}


def latest_occurrences(row: list[int], n: int = 1) -> Iterator[tuple[int, int]]:
    """(t, s) for every position t < len(row) - 1 (one with a next token) whose last n tokens row[t-n+1..t]
    occurred earlier: s is where their latest earlier occurrence ends, so row[s + 1] is what copying predicts
    for row[t + 1]."""
    latest: dict[tuple[int, ...], int] = {}  # n-gram -> the position its latest occurrence so far ends at
    for t in range(n - 1, len(row) - 1):
        key = tuple(row[t - n + 1 : t + 1])
        if (s := latest.get(key)) is not None:
            yield t, s
        latest[key] = t


def multiset_loss(first: np.ndarray) -> float:
    """The mean nll, over the second copy's tokens 1..L-1 of each row of `first` (B, L) written twice,
    of the Bayes-optimal predictor that ignores order: given the first copy's multiset of tokens and
    the second copy so far, the rest of the second copy is a uniformly random order of what is left
    (the tokens are drawn independently, so every order of a multiset is equally likely), and token t
    has probability (its count left) / (tokens left). Token 0 of the second copy is left out, as in
    induction_probe's loss_second, but counts as used."""
    total, n = 0.0, 0
    for row in first:
        left = Counter(row.tolist())
        left[row[0]] -= 1
        for t in range(1, len(row)):
            total -= math.log(left[row[t]] / (len(row) - t))
            left[row[t]] -= 1
            n += 1
    return total / n


@torch.no_grad()
def induction_probe(model: GPT, vocab_size: int, length: int, batch: int, generator: torch.Generator,
                    support: torch.Tensor | None = None) -> dict:
    """Induction probe: `batch` random sequences s of `length` tokens, drawn with the CPU `generator`
    uniformly over `support` (the token ids to draw from; None = all of 0..vocab_size-1), each repeated
    twice: idx = [s, s], (B, 2L) with L = length. A training run passes the tokens that occur in its
    training text: ids it never saw (unused characters, special tokens) have untrained embeddings, and a
    model of a low-entropy corpus gives them losses of 15 nats and more, which says nothing of copying.

    Returns
      loss_first:  mean nll of the first copy's tokens 1..L-1 (token 0 has no prediction);
      loss_second: mean nll of the second copy's tokens L+1..2L-1, each predictable by copying what
                   followed its previous occurrence (token L, where the repeat starts, is not, and is left
                   out, so both losses average L - 1 tokens); it collapses once induction heads form;
      loss_first_se, loss_second_se: their bootstrap standard errors over the `batch` sequences
                   (vslm.probes.bootstrap; rough at a few sequences, and 0 at one);
      loss_multiset: the same tokens' loss under the best predictor blind to order (multiset_loss):
                   one that knows which tokens the first copy holds and which the second has used.
                   A model that does better than this copies by position in the sequence; one that
                   only lowers loss_second towards it uses the set of tokens seen, not their order;
      prefix_matching: a list with one (H_d,) array per depth d (heads may differ by depth), the
                   prefix-matching score of each head (see prefix_matching).
    """
    if length < 2 or 2 * length > model.cfg.context:
        raise ValueError(f"length {length} must be at least 2 and at most half the context {model.cfg.context}")
    device = next(model.parameters()).device
    if support is None:
        first = torch.randint(vocab_size, (batch, length), generator=generator)  # (B, L)
    else:
        first = support[torch.randint(len(support), (batch, length), generator=generator)]  # (B, L)
    first = first.to(device)
    idx = torch.cat((first, first), dim=1)  # (B, 2L)
    names = [f"attn.{d}" for d in range(len(model.order))]
    with capture(model, *names) as seen:
        nll = token_nll(model(idx), idx)  # (B, 2L - 1), nll[:, t] scores token t + 1
    first_loss = nll[:, : length - 1].double().mean(1).cpu().numpy()  # (B,) per sequence
    second_loss = nll[:, length:].double().mean(1).cpu().numpy()  # (B,)
    return {
        "loss_first": float(first_loss.mean()),
        "loss_second": float(second_loss.mean()),
        "loss_first_se": float(bootstrap_se(first_loss)),
        "loss_second_se": float(bootstrap_se(second_loss)),
        "loss_multiset": multiset_loss(first.cpu().numpy()),
        "prefix_matching": [prefix_matching(seen[name], length) for name in names],
    }
