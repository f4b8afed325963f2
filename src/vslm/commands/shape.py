"""`vslm shape RUN --prompt A --prompt B --continuation Y`: how prompts reshape the distribution of a
fixed continuation (RESEARCH.md section 7), as a table, a plot and JSON.

Per prompt (the empty prompt, the end-of-text token, first): log p(y | prompt), the mean of KL and
Jensen-Shannon from the empty prompt's next-token distributions along y, the mean PMI
log p(y_t | prompt, y<t) - log p(y_t | empty, y<t), the first-token and mean entropy, how the
Jensen-Shannon falls along y (its first-token value, the token where it is half that, its log-log
slope: probes.shape.decay); then sampled continuations under each prompt and the Jensen-Shannon
divergence between their token histograms.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from vslm.errors import VSLMError
from vslm.probes import shape_metrics
from vslm.probes.shape import decay
from vslm.progress import quiet
from vslm.train.run_folder import load_run
from vslm.train.sampling import sample_text


def _js_histograms(p: np.ndarray, q: np.ndarray) -> float:
    p, q = p / max(p.sum(), 1), q / max(q.sum(), 1)
    m = (p + q) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = lambda a: np.where(a > 0, a * np.log(a / m), 0.0).sum()  # noqa: E731
        return float((terms(p) + terms(q)) / 2)


def shape_run(run: Path, prompts: list[str], continuation: str, samples: int = 8, sample_tokens: int = 100,
              seed: int = 0, track: Callable = quiet) -> dict:
    """The measurements as plain lists (JSON-ready)."""
    cfg, model, tokenizer = load_run(run)
    prompt_ids = [tokenizer.encode(p) for p in prompts]
    target_ids = tokenizer.encode(continuation)
    if not target_ids:
        raise VSLMError("--continuation is empty")
    longest = max([len(p) for p in prompt_ids] + [1]) + len(target_ids)
    if longest > cfg.model.context:
        raise VSLMError(f"prompt + continuation take {longest} tokens, more than the model's context "
                        f"{cfg.model.context}; shorten them")
    m = shape_metrics(model, prompt_ids, target_ids, empty_id=tokenizer.eos_id)
    labels = ["empty", *prompts]
    histograms = []
    for prompt in track(["", *prompts], f"sampling {samples} continuations of each prompt"):
        texts = sample_text(model, tokenizer, prompt, num=samples, tokens=sample_tokens, seed=seed)
        ids = [i for t in texts for i in tokenizer.encode(t[len(prompt):])]
        histograms.append((np.bincount(ids, minlength=tokenizer.vocab_size).astype(float), texts[0]))
    rows = []
    for k, label in enumerate(labels):
        rows.append({
            "prompt": label,
            "log_prob": float(m["log_prob"][k].sum()),
            "kl_from_empty": float(m["kl"][k, 0].mean()),
            "js_from_empty": float(m["js"][k, 0].mean()),
            "pmi_mean": float(m["pmi"][k].mean()),
            "entropy_first": float(m["entropy"][k, 0]),
            "entropy_mean": float(m["entropy"][k].mean()),
            "sample_js_from_empty": _js_histograms(histograms[k][0], histograms[0][0]),
            "sample": histograms[k][1],
            # how the effect falls along y (RESEARCH.md section 7): first token, half distance, log-log slope
            **{f"js_{key}": value for key, value in decay(m["js"][k, 0]).items()},
        })
    tokens = [tokenizer.decode([t]) for t in m["targets"].tolist()]
    arrays = {key: np.asarray(value).tolist() for key, value in m.items()}
    return {"run": str(run), "labels": labels, "tokens": tokens, "summary": rows, "per_token": arrays}


def write_plot(result: dict, out: Path) -> Path:
    from vslm.report.figures import shape_figure

    per_token = {k: np.asarray(v) for k, v in result["per_token"].items()}
    fig = shape_figure(result["tokens"], result["labels"], per_token)
    fig.savefig(out, dpi=100, bbox_inches="tight")
    return out


def to_json(result: dict) -> str:
    return json.dumps(result)


