"""`vslm bench`: the nanogpt preset timed side by side with shared/bench/reference_gpt.py; with
`--attention`, the attention normalisations; with `--prepare`, data preparation (speed, memory).

Both run as fresh subprocesses of the same Python, one after the other, on the same text, for the
same number of steps, `repeat` times alternately; the figures are medians. Tokens per second
count training steps only (forward, backward, optimizer, and for vslm its per-step logging), not
data preparation or evaluation, as the reference counts them.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from vslm.data.registry import REGISTRY
from vslm.data.sources import data_dirs
from vslm.errors import VSLMError

BENCH_CONFIG = "nanogpt-shakespeare"


def find_reference(given: Path | None) -> Path:
    if given:
        candidates = [given]
    else:  # beside the data folder, or in the shared folder beside this checkout
        beside_checkout = Path(__file__).resolve().parents[3] / "shared"
        candidates = [d.parent / "bench" / "reference_gpt.py" for d in [*data_dirs(), beside_checkout / "data"]]
    for c in candidates:
        if c and c.is_file():
            return c
    raise VSLMError("reference_gpt.py not found; pass --reference PATH (it lives in shared/bench/)")


def find_data(given: Path | None) -> Path:
    if given:
        if not given.is_file():
            raise VSLMError(f"bench data file {given} not found")
        return given
    shakespeare = REGISTRY["tinyshakespeare"].local["train"][0]
    for d in data_dirs():
        if (d / shakespeare).is_file():
            return d / shakespeare
    raise VSLMError("tiny Shakespeare not found; set VSLM_DATA_DIR or pass --data FILE")


def _run(cmd: list[str]) -> str:
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise VSLMError(f"benchmark run failed ({' '.join(cmd[:4])} ...): {r.stderr.strip().splitlines()[-1:]}")
    return r.stdout


def run_reference(reference: Path, data: Path, steps: int) -> dict:
    out = _run([sys.executable, str(reference), "--data", str(data), "--iters", str(steps)])
    return json.loads(out.strip().splitlines()[-1])


def run_vslm(data: Path, steps: int, overrides: list[str] = ()) -> dict:
    with tempfile.TemporaryDirectory(prefix="vslm-bench-") as tmp:
        _run([sys.executable, "-m", "vslm", "train", BENCH_CONFIG, f"data.source={data.resolve()}",
              f"train.steps={steps}", "logging.progress=false", "logging.log_every=100", *overrides,
              "--out", f"{tmp}/run"])
        last = json.loads((Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    return {"tokens_per_s": last["tokens"] / last["train_time_s"], "train_s": last["train_time_s"],
            "val_loss": last["val_loss"]}


def run_bench(data: Path | None, steps: int, repeat: int, reference: Path | None,
              console: Console | None) -> dict:
    data, reference = find_data(data), find_reference(reference)
    ours, theirs = [], []
    for i in range(repeat):
        if console:
            console.print(f"run {i + 1}/{repeat}: reference ...", highlight=False)
        theirs.append(run_reference(reference, data, steps))
        if console:
            console.print(f"run {i + 1}/{repeat}: vslm ...", highlight=False)
        ours.append(run_vslm(data, steps))
    med = statistics.median
    ratios = [o["tokens_per_s"] / t["tokens_per_s"] for o, t in zip(ours, theirs, strict=True)]
    result = {
        "steps": steps,
        "repeat": repeat,
        "vslm_tokens_per_s": round(med(o["tokens_per_s"] for o in ours), 1),
        "reference_tokens_per_s": round(med(t["tokens_per_s"] for t in theirs), 1),
        "ratio": round(med(ratios), 3),
        "vslm_val_loss": round(med(o["val_loss"] for o in ours), 4),
        "reference_val_loss": round(med(t["val_loss"] for t in theirs), 4),
    }
    if console:
        table = Table(title=f"nanogpt preset vs reference_gpt.py, {steps} steps, median of {repeat}")
        for col in ("", "tokens/s", "val loss"):
            table.add_column(col, justify="right")
        table.add_row("reference", f"{result['reference_tokens_per_s']:,.0f}", f"{result['reference_val_loss']:.4f}")
        table.add_row("vslm", f"{result['vslm_tokens_per_s']:,.0f}", f"{result['vslm_val_loss']:.4f}")
        console.print(table)
        console.print(f"ratio (vslm / reference tokens/s): {result['ratio']:.3f}  per run: "
                      f"{', '.join(f'{r:.3f}' for r in ratios)}", highlight=False)
    return result


ATTENTION_KINDS = ("softmax", "power", "softmax1", "ssmax", "sigmoid")


def run_attention_bench(steps: int, repeat: int, console: Console | None) -> dict:
    """Training-step time of each attention normalisation on the arch-base model (context 128),
    interleaved `repeat` times in one process; medians and ratios to softmax's fast SDPA path."""
    import torch
    import torch.nn.functional as F

    from vslm.config import load_config
    from vslm.model import GPT

    cfg = load_config("arch-base", ["model.vocab_size=64"])
    B, T, V = cfg.train.batch_size, cfg.model.context, 64
    models = {}
    for kind in ATTENTION_KINDS:
        torch.manual_seed(0)
        model = GPT(cfg.model.model_copy(update={"attention": kind, "attention_gamma": 0.5}))
        models[kind] = (model, torch.optim.AdamW(model.parameters(), lr=1e-3))
    idx = torch.randint(V, (B, T + 1), generator=torch.Generator().manual_seed(0))
    times: dict[str, list[float]] = {kind: [] for kind in ATTENTION_KINDS}
    for _ in range(repeat):
        for kind, (model, opt) in models.items():
            for i in range(steps + 2):  # two warm-up steps
                started = time.perf_counter()
                loss = F.cross_entropy(model(idx[:, :-1]).view(-1, V), idx[:, 1:].reshape(-1))
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                if i >= 2:
                    times[kind].append(time.perf_counter() - started)
    ms = {kind: 1000 * statistics.median(t) for kind, t in times.items()}
    result = {"steps": steps, "repeat": repeat, "batch": B, "context": T,
              "ms_per_step": {k: round(v, 2) for k, v in ms.items()},
              "ratio_to_softmax": {k: round(v / ms["softmax"], 3) for k, v in ms.items()}}
    if console:
        table = Table(title=f"attention normalisations: training step, arch-base model, batch {B} x {T}")
        for col in ("attention", "ms/step (median)", "x softmax"):
            table.add_column(col, justify="right")
        for kind in ATTENTION_KINDS:
            table.add_row(kind, f"{ms[kind]:.1f}", f"{ms[kind] / ms['softmax']:.2f}")
        console.print(table)
    return result


def run_prepare_bench(n_bytes: int, tokenizer: str, console: Console | None) -> dict:
    """`vslm data prepare` of n_bytes of generated stories into a fresh cache, in a subprocess: its
    tokenization speed (text bytes over the wall time spent inside the tokenizer's encode calls, from
    the shard builder's meta.json, and over their CPU time: on a busy machine the wall time measures
    the neighbours too), its overall speed, and its peak resident memory (the child's ru_maxrss,
    which covers the whole process: Python, the tokenizer's threads, the text in flight)."""
    import resource

    with tempfile.TemporaryDirectory(prefix="vslm-bench-data-") as cache:
        started = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "vslm", "data", "prepare", "stories", "--max-bytes", str(n_bytes),
                            "--tokenizer", tokenizer, "--quiet"], capture_output=True, text=True,
                           env={**os.environ, "VSLM_CACHE_DIR": cache})
        wall = time.perf_counter() - started
        if r.returncode != 0:
            raise VSLMError(f"benchmark preparation failed: {(r.stderr.strip().splitlines() or ['?'])[-1]}")
        meta = json.loads((Path(r.stdout.strip().splitlines()[-1]) / "meta.json").read_text())
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # Linux: kilobytes
    mb = meta["text_bytes"] / 1e6
    result = {"bytes": meta["text_bytes"], "tokenizer": tokenizer, "vocab_size": meta["vocab_size"],
              "tokens": meta["train_tokens"] + meta["val_tokens"], "cpus": os.cpu_count(),
              "tokenize_mb_per_s": round(mb / meta["encode_s"], 2),
              "tokenize_mb_per_cpu_s": round(mb / meta["encode_cpu_s"], 2), "tokenizer_training_s": meta["tokenizer_s"],
              "prepare_s": meta["prepare_s"], "overall_mb_per_s": round(mb / meta["prepare_s"], 2),
              "wall_s": round(wall, 1), "peak_rss_mb": round(peak_mb, 1)}
    if console:
        table = Table(title=f"vslm data prepare stories: {mb:,.0f} MB generated, {tokenizer} tokenizer, "
                            f"{os.cpu_count()} CPUs")
        for col in ("tokenization MB/s", "MB per CPU s", "tokenizer training s", "prepare s", "overall MB/s",
                    "peak RSS MB"):
            table.add_column(col, justify="right")
        table.add_row(f"{result['tokenize_mb_per_s']:.1f}", f"{result['tokenize_mb_per_cpu_s']:.1f}",
                      f"{meta['tokenizer_s']:.1f}", f"{meta['prepare_s']:.1f}", f"{result['overall_mb_per_s']:.1f}",
                      f"{peak_mb:,.0f}")
        console.print(table)
    return result
