"""Probes: pure functions of (model, batch) returning numbers, numpy arrays or small dicts.

They know the model (its hook points, `vslm.model.hooks`), never the trainer. The caller puts the
model in eval mode; each probe runs under torch.no_grad.
"""

from vslm.probes.attention import attention_stats
from vslm.probes.bootstrap import bootstrap_se, resample_counts, resampled_means
from vslm.probes.distribution import (
    CorpusStats,
    corpus_stats,
    distribution_by_window,
    distribution_of_logits,
    distribution_probe,
    distribution_summary,
    unigram_kl,
)
from vslm.probes.divergence import entropy, js, kl
from vslm.probes.position import (
    icl_score,
    induction_probe,
    latest_occurrences,
    position_loss,
    prefix_matching,
    repeat_statistics,
    token_nll,
)
from vslm.probes.shape import shape_metrics

__all__ = [
    "CorpusStats",
    "attention_stats",
    "bootstrap_se",
    "corpus_stats",
    "distribution_by_window",
    "distribution_of_logits",
    "distribution_probe",
    "distribution_summary",
    "entropy",
    "icl_score",
    "induction_probe",
    "js",
    "kl",
    "latest_occurrences",
    "position_loss",
    "prefix_matching",
    "repeat_statistics",
    "resample_counts",
    "resampled_means",
    "shape_metrics",
    "token_nll",
    "unigram_kl",
]
