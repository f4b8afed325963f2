"""How prompts reshape the distribution of a fixed continuation (RESEARCH.md section 7).

For a continuation y = y_1..y_n and prompts, each token y_t is predicted under every prompt k from
p_k,t = p(. | prompt k, y<t). Prompt 0 is always the empty prompt.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn

from vslm.probes.divergence import entropy, js, kl


def _next_token_log_probs(model: nn.Module, context: list[int], targets: list[int]) -> torch.Tensor:
    """(n, V) float64 log p(. | context, targets[:t]) for t = 0..n-1."""
    device = next(model.parameters()).device
    idx = torch.tensor([context + targets[:-1]], device=device)  # (1, len(context) + n - 1)
    return model(idx)[0, len(context) - 1 :].double().log_softmax(-1)


@torch.no_grad()
def shape_metrics(model: nn.Module, prompt_ids: list[list[int]], continuation: list[int],
                  empty_id: int | None = None) -> dict[str, np.ndarray]:
    """Effect of each prompt on the next-token distributions along the continuation, as float64 arrays.

    Prompts are indexed k = 0..K-1: k = 0 is the empty prompt, k >= 1 is prompt_ids[k - 1]. The empty
    prompt is the single token `empty_id`; pass the tokenizer's eos_id, which separates documents, so the
    model sees what starts a fresh document. Without it no token can condition y_1: the empty prompt is
    then y_1 itself, every prompt is followed by y_1, and all measurements start at y_2 (`targets`). An
    empty list in prompt_ids is the empty prompt. model maps (B, T) ids to (B, T, V) logits (a GPT).

    Keys (n = number of targets):
      targets (n,):                   the continuation tokens scored, y_1..y_n (or y_2..y_n);
      log_prob (K, n):                log p(y_t | k, y<t);
      entropy (K, n):                 H(p_k,t) along y;
      kl (K, K, n):                   kl[k, l, t] = KL(p_k,t || p_l,t);
      js (K, K, n):                   js[k, l, t] = Jensen-Shannon divergence of p_k,t and p_l,t (symmetric);
      log_prob_shift (K, K, n):       log p(y_t | k, y<t) - log p(y_t | l, y<t);
      log_prob_shift_total (K, K):    log p(y | k) - log p(y | l), the sum of the above over t;
      pmi (K, n):                     log p(y_t | k, y<t) - log p(y_t | 0, y<t) (row 0 is zero).
    """
    if empty_id is None:
        empty, head, targets = [], continuation[:1], continuation[1:]
    else:
        empty, head, targets = [empty_id], [], continuation
    if not targets:
        raise ValueError(f"the continuation needs {'2 tokens' if empty_id is None else '1 token'} or more")
    contexts = [empty] + [prompt or empty for prompt in prompt_ids]
    log_probs = torch.stack([_next_token_log_probs(model, c + head, targets) for c in contexts])  # (K, n, V)
    y = torch.tensor(targets, device=log_probs.device)
    log_p = log_probs.gather(-1, y.expand(len(contexts), -1)[..., None]).squeeze(-1)  # (K, n)
    probs = log_probs.exp()
    shift = log_p[:, None] - log_p[None, :]  # (K, K, n)
    out = {
        "log_prob": log_p,
        "entropy": entropy(probs),
        "kl": kl(probs[:, None], probs[None, :]),
        "js": js(probs[:, None], probs[None, :]),
        "log_prob_shift": shift,
        "log_prob_shift_total": shift.sum(-1),
        "pmi": log_p - log_p[0],
    }
    return {"targets": np.array(targets), **{key: value.cpu().numpy() for key, value in out.items()}}


def decay(effect: np.ndarray) -> dict[str, float]:
    """How a prompt's effect along the continuation (e.g. js[k, 0]: Jensen-Shannon from the empty prompt at
    each token t = 1..n) falls with distance (RESEARCH.md section 7: largest on the first tokens, then
    decaying): {"first": effect[0], "half_at": the first t whose effect is at most half the first's (NaN
    if none, or no effect at the first token to halve), "slope": the least-squares slope of log effect on
    log t over the tokens with effect > 0 (negative: a power-law fall; NaN under 2 such tokens)}."""
    effect = np.asarray(effect, dtype=float)
    if not len(effect):
        return {"first": math.nan, "half_at": math.nan, "slope": math.nan}
    t = np.arange(1, len(effect) + 1, dtype=float)
    below = np.flatnonzero(effect <= effect[0] / 2) if effect[0] > 0 else np.array([], dtype=int)
    below = below[below > 0]
    positive = effect > 0
    slope = (float(np.polyfit(np.log(t[positive]), np.log(effect[positive]), 1)[0])
             if positive.sum() >= 2 and np.ptp(t[positive]) > 0 else math.nan)
    return {"first": float(effect[0]), "half_at": float(t[below[0]]) if len(below) else math.nan, "slope": slope}
