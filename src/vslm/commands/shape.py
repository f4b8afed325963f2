"""`vslm shape RUN --prompt A --prompt B --continuation Y`: how prompts reshape the distribution of a
fixed continuation (RESEARCH.md section 7), as a table, a plot and JSON; with `--over-training`, the
same at every snapshot of the run.

Per prompt (the empty prompt, the end-of-text token, first): log p(y | prompt), the mean of KL and
Jensen-Shannon from the empty prompt's next-token distributions along y, the mean PMI
log p(y_t | prompt, y<t) - log p(y_t | empty, y<t), the first-token and mean entropy, how the
Jensen-Shannon falls along y (its first-token value, the token where it is half that, its log-log
slope: probes.shape.decay); then sampled continuations under each prompt and the Jensen-Shannon
divergence between their token histograms.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from vslm.errors import VSLMError
from vslm.plain import dumps, listed
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


NO_EOS_NOTE = ("this run's tokenizer has no end-of-text token, so nothing can stand for the empty prompt before "
               "y1: y1 follows every prompt, and y is scored from its 2nd token ('1st scored' below)")


def _encode(cfg, tokenizer, prompts: list[str], continuation: str) -> tuple[list[list[int]], list[int]]:
    """The prompts' and the continuation's token ids; a one-line error for an empty continuation, one of a
    single token where the tokenizer has no end-of-text token (nothing would be scored: shape_metrics), or
    one that does not fit the model's context after the longest prompt (the model reads the prompt, or the
    empty prompt's one token, and every token of y but the last)."""
    prompt_ids = [tokenizer.encode(p) for p in prompts]
    target_ids = tokenizer.encode(continuation)
    if not target_ids:
        raise VSLMError("--continuation is empty")
    if tokenizer.eos_id is None and len(target_ids) < 2:
        raise VSLMError(f"--continuation {continuation!r} is 1 token, and this run's tokenizer has no end-of-text "
                        "token: its first token stands for the empty prompt and only the rest is scored; give 2 "
                        "tokens or more")
    read = max([len(p) for p in prompt_ids] + [0 if tokenizer.eos_id is None else 1]) + len(target_ids) - 1
    if read > cfg.model.context:
        raise VSLMError(f"prompt + continuation put {read} tokens before the last one it predicts, more than the "
                        f"model's context {cfg.model.context}; shorten them")
    return prompt_ids, target_ids


def shape_run(run: Path, prompts: list[str], continuation: str, samples: int = 8, sample_tokens: int = 100,
              seed: int = 0, track: Callable = quiet) -> dict:
    """The measurements as plain lists (JSON-ready); `prompts` a list of strings (or one alone)."""
    prompts = listed(prompts, "prompts")
    cfg, model, tokenizer = load_run(run)
    prompt_ids, target_ids = _encode(cfg, tokenizer, prompts, continuation)
    m = shape_metrics(model, prompt_ids, target_ids, empty_id=tokenizer.eos_id)
    labels = ["(empty)", *prompts]  # the plot's legend and the table's first column; "prompt" the text itself
    histograms = []
    for prompt in track(["", *prompts], f"sampling {samples} continuations of each prompt"):
        texts = sample_text(model, tokenizer, prompt, num=samples, tokens=sample_tokens, seed=seed)
        ids = [i for t in texts for i in tokenizer.encode(t[len(prompt):])]
        histograms.append((np.bincount(ids, minlength=tokenizer.vocab_size).astype(float), texts[0]))
    rows = []
    for k, prompt in enumerate(["", *prompts]):
        rows.append({
            "prompt": prompt,
            "label": labels[k],
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
    note = {"note": NO_EOS_NOTE} if tokenizer.eos_id is None else {}
    return {"run": str(run), "labels": labels, "tokens": tokens, "summary": rows, "per_token": arrays, **note}


def shape_course(run: Path, prompts: list[str], continuation: str, track: Callable = quiet) -> dict:
    """The same measurements at every snapshot of the run (steps 0, 1, 2, 4, ...) and its last checkpoint
    (RESEARCH.md section 7: the prompt's effect decays with distance, more slowly after the induction
    phase): per step and prompt, log p(y | prompt) - log p(y | empty), the mean Jensen-Shannon from
    the empty prompt along y and its decay (first token, half distance, log-log slope); and the
    Jensen-Shannon by token, steps x prompts x tokens. No sampling."""
    from vslm.data.tokenizer import load_tokenizer
    from vslm.model import GPT
    from vslm.train.checkpoint import check_fits, list_checkpoints, load_checkpoint
    from vslm.train.run_folder import CHECKPOINTS, SNAPSHOTS, TOKENIZER, read_run_config

    prompts = listed(prompts, "prompts")
    run = Path(run)
    saved_cfg = read_run_config(run)  # a folder that is no run: said so first
    saved = dict(list_checkpoints(run / SNAPSHOTS))
    checkpoints = list_checkpoints(run / CHECKPOINTS)
    if checkpoints:
        saved.setdefault(*checkpoints[-1])  # the last checkpoint, where no snapshot has its step
    if len(saved) < 2:
        why = "train.snapshots is false" if not saved_cfg.train.snapshots else "it has saved fewer than two yet"
        raise VSLMError(f"--over-training needs snapshots of {run} at two steps or more, and {why}")
    # the model without weights: each step's are loaded below (a diverged snapshot gives its NaN row)
    cfg, tokenizer = saved_cfg, load_tokenizer(run / TOKENIZER)
    model = GPT.for_weights(cfg.model).eval()
    prompt_ids, target_ids = _encode(cfg, tokenizer, prompts, continuation)
    rows, js_by_step = [], []
    for step in track(sorted(saved), f"measuring {len(saved)} snapshots"):
        weights, _ = load_checkpoint(saved[step])
        check_fits(saved[step], weights, model)
        model.load_state_dict(weights)
        m = shape_metrics(model, prompt_ids, target_ids, empty_id=tokenizer.eos_id)
        js_by_step.append(m["js"][1:, 0].tolist())
        for k, prompt in enumerate(prompts, start=1):
            rows.append({"step": step, "prompt": prompt,
                         "log_prob_shift": float(m["log_prob_shift_total"][k, 0]),
                         "js_from_empty": float(m["js"][k, 0].mean()),
                         **{f"js_{key}": value for key, value in decay(m["js"][k, 0]).items()}})
    tokens = [tokenizer.decode([t]) for t in m["targets"].tolist()]
    note = {"note": NO_EOS_NOTE} if tokenizer.eos_id is None else {}
    return {"run": str(run), "prompts": prompts, "continuation": continuation, "tokens": tokens,
            "steps": sorted(saved), "rows": rows, "js": js_by_step, **note}


def write_course_plot(result: dict, out: Path) -> Path:
    from vslm.report.figures import shape_course_figure

    fig = shape_course_figure(result["steps"], result["prompts"], result["tokens"], np.asarray(result["js"]),
                              result["rows"])
    fig.savefig(out, dpi=100, bbox_inches="tight")
    return out


def write_plot(result: dict, out: Path) -> Path:
    from vslm.report.figures import shape_figure

    per_token = {k: np.asarray(v) for k, v in result["per_token"].items()}
    fig = shape_figure(result["tokens"], result["labels"], per_token)
    fig.savefig(out, dpi=100, bbox_inches="tight")
    return out


def to_json(result: dict) -> str:
    return dumps(result)


