"""How far the model's predictions are from the corpus unigram and bigram distributions
(RESEARCH.md section 2; Chang & Bergen 2022, Belrose et al. 2024).

No smoothing is needed anywhere: the corpus distribution is always KL's first argument, so a token the
corpus never shows adds nothing (0 log 0 = 0), and the model's softmax (taken in float64) is never zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from vslm.probes.divergence import entropy, kl

MAX_VOCAB = 8192  # a dense bigram table up to here (V^2 * 8 bytes: 512 MiB at 8192); above it, sparse rows


@dataclass(frozen=True)
class CorpusStats:
    unigram: np.ndarray  # (V,) u[v] = share of tokens equal to v
    bigram: np.ndarray | None  # (V, V) bigram[prev, next] = b(next | prev), rows summing to 1; None above MAX_VOCAB
    log_vocab: float  # ln V: the loss of a uniform prediction
    unigram_entropy: float  # H(u): the loss of predicting u everywhere
    bigram_entropy: float  # H(next | prev): the loss of predicting b(. | last token)
    # above MAX_VOCAB, b's rows as compressed sparse rows: row prev holds next = indices[indptr[prev]:indptr[prev+1]]
    indptr: np.ndarray | None = None
    indices: np.ndarray | None = None
    values: np.ndarray | None = None

    def reference_levels(self) -> dict[str, float]:
        return {"log_vocab": self.log_vocab, "unigram_entropy": self.unigram_entropy,
                "bigram_entropy": self.bigram_entropy}

    def bigram_rows(self, prev: np.ndarray) -> np.ndarray:
        """b(. | prev) for each token id of `prev` (any shape S) -> S + (V,), float64."""
        prev = np.asarray(prev)
        if self.bigram is not None:
            return self.bigram[prev]
        flat = prev.reshape(-1)
        out = np.zeros((len(flat), len(self.unigram)))
        lo, counts = self.indptr[flat], self.indptr[flat + 1] - self.indptr[flat]
        out[counts == 0] = self.unigram  # never followed by a token: the unigram, as in the dense table
        row = np.repeat(np.arange(len(flat)), counts)  # each stored pair of each position, in one gather
        entry = np.repeat(lo - np.cumsum(counts) + counts, counts) + np.arange(counts.sum())
        out[row, self.indices[entry]] = self.values[entry]
        return out.reshape(*prev.shape, len(self.unigram))


def _entropy(p: np.ndarray) -> np.ndarray:
    """H(p) over the last axis, 0 log 0 = 0."""
    return -(p * np.log(np.where(p > 0, p, 1.0))).sum(-1)


def corpus_stats(tokens: np.ndarray, vocab_size: int) -> CorpusStats:
    """Unigram and bigram statistics of a token array (N,), and the loss levels they set.

    u[v] = count(v) / N. b(next | prev) = count(prev, next) / count(prev followed by any token), over the
    N - 1 adjacent pairs; a token never followed by another (absent, or only last) gets b(. | prev) = u.
    H(next | prev) = sum_prev P(prev) H(b(. | prev)), P(prev) = count(prev followed by any) / (N - 1),
    which is the cross-entropy on this corpus of the best bigram predictor.

    Memory: up to MAX_VOCAB, b is a dense float64 (V, V) array (V^2 * 8 bytes); above it (GPT-2's 50,257
    tokens), b keeps only the pairs the text has, as compressed sparse rows (CorpusStats.bigram_rows).
    """
    tokens = np.asarray(tokens, dtype=np.int64)
    if len(tokens) < 2:
        raise ValueError(f"corpus statistics need at least 2 tokens, got {len(tokens)}")
    if tokens.min() < 0 or tokens.max() >= vocab_size:
        raise ValueError(f"token ids must lie in 0..{vocab_size - 1}, found {tokens.min()}..{tokens.max()}")
    V = vocab_size
    unigram = np.bincount(tokens, minlength=V) / len(tokens)  # (V,)
    levels = {"log_vocab": math.log(V), "unigram_entropy": float(_entropy(unigram))}
    if V > MAX_VOCAB:
        pairs, counts = np.unique(tokens[:-1] * V + tokens[1:], return_counts=True)  # sorted by prev, then next
        prev, nxt = pairs // V, pairs % V
        followed = np.bincount(prev, weights=counts, minlength=V)  # (V,)
        values = counts / followed[prev]
        return CorpusStats(unigram=unigram, bigram=None, **levels,
                           bigram_entropy=float(-(counts / (len(tokens) - 1) * np.log(values)).sum()),
                           indptr=np.concatenate([[0], np.cumsum(np.bincount(prev, minlength=V))]),
                           indices=nxt, values=values)
    bigram = np.bincount(tokens[:-1] * V + tokens[1:], minlength=V * V).reshape(V, V).astype(np.float64)
    followed = bigram.sum(1)  # (V,) pairs starting with each token
    bigram /= np.maximum(followed, 1)[:, None]
    bigram[followed == 0] = unigram
    return CorpusStats(
        unigram=unigram,
        bigram=bigram,
        **levels,
        bigram_entropy=float((followed / (len(tokens) - 1)) @ _entropy(bigram)),
    )


@torch.no_grad()
def distribution_probe(model: nn.Module, idx: torch.Tensor, stats: CorpusStats) -> dict[str, float]:
    """Distance of the predictions on idx (B, T) from the corpus unigram u and bigram b, in nats.

    With p_t = p(. | idx[b, <= t]) the prediction at each of the B * T positions (b, t):
      M1 = KL(u || p_bar), p_bar = mean of p_t over all positions;
      M2 = mean over positions of KL(u || p_t);
      M3 = mean over positions of KL(b(. | idx[b, t]) || p_t), the bigram row of the last token read
           (x_{t-1} in RESEARCH.md's notation, where p(. | x<t) predicts x_t);
      entropy = mean over positions of H(p_t);
    and stats' reference levels log_vocab, unigram_entropy, bigram_entropy.
    """
    return distribution_of_logits(model(idx), idx, stats)


def distribution_of_logits(logits: torch.Tensor, idx: torch.Tensor, stats: CorpusStats,
                           rows: int = 8) -> dict[str, float]:
    """distribution_probe on the model's logits (B, T, V) of idx (B, T), for a caller that already ran the
    model; `rows` sequences at a time, so that the float64 (rows * T, V) tables stay small at large V."""
    return distribution_summary(distribution_by_window(logits, idx, stats, rows), stats)


def distribution_by_window(logits: torch.Tensor, idx: torch.Tensor, stats: CorpusStats,
                           rows: int = 8) -> dict[str, np.ndarray]:
    """The per-window quantities the distribution probe is a function of, for logits (B, T, V) of idx (B, T):

      probs:   (B, V) float64, the mean prediction over the window's T positions;
      M2, M3, entropy: (B,) float64, KL(u || p_t), KL(b(. | idx[b, t]) || p_t) and H(p_t) averaged over them.

    Every window has T positions, so the means over windows are the means over all B * T positions
    (distribution_summary), and a bootstrap over windows resamples these rows.
    """
    if logits.shape[-1] != len(stats.unigram):
        raise ValueError(f"the model predicts {logits.shape[-1]} tokens but the corpus stats have {len(stats.unigram)}")
    u = torch.from_numpy(stats.unigram).to(logits.device)  # (V,)
    B, T = idx.shape
    V = logits.shape[-1]
    rows = max(1, min(rows, 2**24 // (T * V)))  # each float64 (rows, T, V) table at most 128 MiB (GPT-2's V)
    probs, m2, m3, spread = [], [], [], []
    for i in range(0, B, rows):
        p = logits[i : i + rows].double().softmax(-1)  # (b, T, V), b <= rows windows
        bigram_rows = torch.from_numpy(stats.bigram_rows(idx[i : i + rows].cpu().numpy())).to(p.device)  # (b, T, V)
        probs.append(p.mean(1))
        m2.append(kl(u, p).mean(1))
        m3.append(kl(bigram_rows, p).mean(1))
        spread.append(entropy(p).mean(1))
    return {key: torch.cat(values).cpu().numpy() for key, values in
            (("probs", probs), ("M2", m2), ("M3", m3), ("entropy", spread))}


def distribution_summary(by_window: dict[str, np.ndarray], stats: CorpusStats) -> dict[str, float]:
    """distribution_probe's values from distribution_by_window's per-window quantities."""
    return {"M1": float(unigram_kl(by_window["probs"].mean(0), stats)),
            **{key: float(by_window[key].mean()) for key in ("M2", "M3", "entropy")}, **stats.reference_levels()}


def unigram_kl(probs: np.ndarray, stats: CorpusStats) -> np.ndarray:
    """KL(u || p) for predictions p (..., V) -> (...), float64: M1 of a mean prediction (or of several, one
    per bootstrap resample)."""
    p = torch.from_numpy(np.asarray(probs, dtype=np.float64))
    return kl(torch.from_numpy(stats.unigram), p).numpy()
