"""`vslm plan --hours H`: the model size and token budget that fit in H hours on this machine.

1. Candidates: a ladder of GPT shapes, width 32 to 768 with depth about width / 64 (nanoGPT's
   recipes have that aspect: 4 x 128, 6 x 384, 12 x 768), heads of 32 dimensions below width 256
   and of 64 from there; context and batch from the base config.
2. Measure: a few candidates are trained for `seconds` each by the real trainer on this machine,
   with the device choices the real run will make; their steady tokens/s is kept.
3. Fit: seconds per token = a + b x (training FLOPs per token), least squares over the measured
   sizes (b is one over the FLOP/s the machine sustains on large models, a the per-token cost that
   does not scale with the model: kernel launches, the optimizer, Python).
4. Choose: the compute-optimal size trains on 20 tokens per parameter (Hoffmann et al. 2022); the
   candidate whose 20 N tokens take closest to H hours at the predicted speed (in ratio) is taken,
   and given all of the H hours: its tokens per parameter then stay within a factor ~2 of 20, as the
   ladder's sizes are a factor ~2-3 apart. Measuring starts at the smallest size and goes on at the
   size the current fit chooses and the next larger one, until both are measured.
5. Write: a config of that shape with steps = H hours x predicted tokens/s / tokens per step.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from vslm.commands.bench import throughput
from vslm.config import RunConfig, apply_overrides, fields_set_by, load_config, save_config, validate
from vslm.data.shards import Corpus, prepare_corpus
from vslm.errors import UsageError
from vslm.train.callbacks import MetricsLog, StopAfter
from vslm.train.run_folder import device_of, read_metrics
from vslm.train.trainer import Trainer

TOKENS_PER_PARAM = 20
WIDTHS = (32, 48, 64, 96, 128, 160, 192, 224, 256, 320, 384, 448, 512, 576, 640, 768)
PLAN_BASE = "tiny"  # only its data and logging sections matter: the plan sets the rest
EVALS = 5  # evaluations per planned run
EVAL_WINDOWS = 400


@dataclass(frozen=True)
class Shape:
    width: int

    @property
    def depth(self) -> int:
        return max(2, int(self.width / 64 + 0.5))

    @property
    def heads(self) -> int:
        return self.width // (32 if self.width < 256 else 64)

    def overrides(self) -> list[str]:
        return [f"model.width={self.width}", f"model.depth={self.depth}", f"model.heads={self.heads}"]


@dataclass
class Measured:
    shape: Shape
    params: int
    flops_per_token: int
    tokens_per_s: float


@dataclass(frozen=True)
class CostFit:
    """seconds per token = overhead + per_flop x FLOPs per token."""

    overhead: float
    per_flop: float

    def tokens_per_s(self, flops_per_token: float) -> float:
        return 1.0 / (self.overhead + self.per_flop * flops_per_token)


def fit_cost(points: list[Measured]) -> CostFit:
    """Least squares of seconds per token on FLOPs per token; through the origin when there is one
    point, or when the fitted overhead comes out negative (noise on a loaded machine)."""
    flops = np.array([p.flops_per_token for p in points], dtype=float)
    secs = np.array([1.0 / p.tokens_per_s for p in points])
    if len(points) >= 2 and np.ptp(flops) > 0:
        per_flop, overhead = np.polyfit(flops, secs, 1)
        if overhead >= 0 and per_flop > 0:
            return CostFit(float(overhead), float(per_flop))
    return CostFit(0.0, float((secs * flops).sum() / (flops * flops).sum()))


def base_config(overrides: list[str], data: str | None) -> tuple[RunConfig, bool]:
    """The config every candidate starts from (context 256; batch 16 on CPU, 64 on CUDA, unless the
    overrides say otherwise), and whether it trains on CUDA."""
    words = [f"data.source={data}"] if data else []
    defaults = ["model.context=256", "train.batch_size=16", "model.dropout=0.0", "logging.progress=false",
                "logging.tensorboard=false", "train.snapshots=false"]
    cfg = load_config(PLAN_BASE, [*defaults, *words, *overrides])
    cuda = device_of(cfg.train.device).type == "cuda"
    if cuda and not any(w.startswith("train.batch_size=") for w in overrides):
        cfg = load_config(PLAN_BASE, [*defaults, "train.batch_size=64", *words, *overrides])
    return cfg, cuda


def with_shape(cfg: RunConfig, shape: Shape, extra: list[str] = ()) -> RunConfig:
    return validate(apply_overrides(cfg.to_raw(), [*shape.overrides(), *extra]))


def measure(cfg: RunConfig, shape: Shape, seconds: float, corpus: Corpus, cuda: bool) -> Measured:
    """Steady tokens/s of the real trainer on this shape, after its first logged window."""
    timing = with_shape(cfg, shape, ["train.steps=1000000", "train.warmup=0", "train.lr=1e-4", "train.min_lr=1e-5",
                                     "train.eval_every=0", "train.checkpoint_every=0",
                                     f"logging.log_every={10 if cuda else 1}"])
    with tempfile.TemporaryDirectory(prefix="vslm-plan-") as tmp:
        trainer = Trainer(timing, Path(tmp) / "run", corpus=corpus,
                          callbacks=[MetricsLog(), StopAfter(seconds, min_steps=20 if cuda else 3)])
        trainer.fit()
        lines = read_metrics(Path(tmp) / "run")
    speed = throughput(lines)
    return Measured(shape, trainer.params, trainer.flops_per_token,
                    speed.get("steady_tokens_per_s", speed["tokens_per_s"]))


def probe_cost(cfg: RunConfig, corpus: Corpus) -> tuple[int, float]:
    """(probe steps, seconds) of the planned run's training-dynamics probes (logging.probe_every; "auto": log-
    spaced, about log2(steps) of them): their set-up and one pass timed here on a model of the planned shape
    (random weights cost what trained ones do), the pass times the steps. (0, 0.0) with the probes off."""
    from vslm.model import GPT
    from vslm.train.probing import build_probe_set, probe_due, probe_interval, run_probes

    every, steps = probe_interval(cfg), cfg.train.steps
    if not every:
        return 0, 0.0
    count = 1 + sum(probe_due(step, every, steps) for step in range(1, steps + 1))  # step 0, then ProbeCallback's
    log, device = cfg.logging, device_of(cfg.train.device)
    started = time.perf_counter()
    probes = build_probe_set(corpus, cfg.model.context, corpus.tokenizer.vocab_size, log.probe_windows,
                             log.induction_length, log.induction_support, log.icl_short)
    set_up = time.perf_counter() - started
    model = GPT.for_weights(cfg.with_vocab_size(corpus.tokenizer.vocab_size).model).to(device)
    started = time.perf_counter()
    run_probes(model, probes)
    return count, set_up + count * (time.perf_counter() - started)


def size_of(cfg: RunConfig, shape: Shape, vocab: int) -> tuple[int, int]:
    """(parameters, training FLOPs per token) of a shape, built on the meta device (no memory)."""
    from vslm.model import GPT, parameter_count, training_flops_per_token

    with torch.device("meta"):
        model = GPT(with_shape(cfg, shape).model.model_copy(update={"vocab_size": vocab}))
    return parameter_count(model), training_flops_per_token(model)


def choose(sizes: dict[Shape, tuple[int, int]], fit: CostFit, seconds: float) -> Shape:
    """The shape whose 20-tokens-per-parameter budget trains in the time closest to `seconds`,
    closeness being the ratio (a size 2x too slow is as far as one 2x too fast)."""
    def hours_off(shape: Shape) -> float:
        n, f = sizes[shape]
        return abs(math.log(TOKENS_PER_PARAM * n / fit.tokens_per_s(f) / seconds))

    return min(sizes, key=hours_off)


def next_larger(shape: Shape) -> Shape | None:
    i = WIDTHS.index(shape.width)
    return Shape(WIDTHS[i + 1]) if i + 1 < len(WIDTHS) else None


def make_plan(hours: float, data: str | None = None, overrides: list[str] = (), seconds: float = 5.0,
              max_measure: int = 5, console: Console | None = None, chooser=None) -> dict:
    """Measure, fit and choose (see the module docstring); returns the plan and its config. `chooser`
    (sizes, cost fit, seconds) -> Shape replaces the 20-tokens-per-parameter choice (`vslm plan --from
    fit.json`: vslm.commands.scaling)."""
    chooser = chooser or choose
    check_plan_args(hours, seconds, max_measure, overrides)
    cfg, cuda = base_config(list(overrides), data)
    corpus = prepare_corpus(cfg.data)
    vocab = corpus.tokenizer.vocab_size
    sizes = {Shape(w): size_of(cfg, Shape(w), vocab) for w in WIDTHS}
    budget_s = hours * 3600
    measured: dict[Shape, Measured] = {}
    shape = Shape(WIDTHS[0])
    while len(measured) < max_measure:
        # the chosen size and the next larger one bracket the answer: measure both
        todo = [s for s in (shape, next_larger(shape)) if s is not None and s not in measured]
        if not todo:
            break
        if console:
            console.print(f"measuring width {todo[0].width}, depth {todo[0].depth} ({sizes[todo[0]][0]:,} "
                          f"parameters) for {seconds:g} s ...", highlight=False)
        measured[todo[0]] = measure(cfg, todo[0], seconds, corpus, cuda)
        fit = fit_cost(list(measured.values()))
        shape = chooser(sizes, fit, budget_s)
    params, flops = sizes[shape]
    tokens_per_step = cfg.train.batch_size * cfg.model.context
    # the size measured itself: its own speed (a fit through two points may miss each by a quarter); else the fit's
    tps = measured[shape].tokens_per_s if shape in measured else fit.tokens_per_s(flops)
    steps = max(1, round(budget_s * tps / tokens_per_step))  # all of the hours
    predicted_s = steps * tokens_per_step / tps
    planned = planned_config(cfg, shape, steps, corpus, predicted_s, params, overrides)
    probes, probe_s = probe_cost(planned, corpus)
    train_tokens = len(corpus.train.tokens)
    if planned.data.max_bytes != cfg.data.max_bytes:  # stories made to measure: tokens in proportion
        train_tokens = train_tokens * planned.data.max_bytes / cfg.data.max_bytes
    lo, hi = min(m.params for m in measured.values()), max(m.params for m in measured.values())
    return {
        "hours": hours, "config": planned, "shape": shape, "params": params, "flops_per_token": flops,
        "tokens": steps * tokens_per_step, "steps": steps, "predicted_tokens_per_s": tps,
        "predicted_train_s": predicted_s,
        "predicted_eval_s": EVALS * EVAL_WINDOWS * cfg.model.context / tps / 3,  # forward only: a third
        "speed_measured": shape in measured, "probes": probes, "predicted_probe_s": probe_s,
        "fit": fit, "measured": list(measured.values()), "sizes": sizes,
        "within_measured": lo <= params <= hi, "tokens_per_param": steps * tokens_per_step / params,
        "epochs": steps * tokens_per_step / train_tokens,
    }


# what the plan sets itself (the shape, the steps and their schedule, evaluations and checkpoints): an override of
# one would be lost, so it is refused; the config the plan writes is the place to change them
PLANNED = ("model.width", "model.depth", "model.heads", "train.steps", "train.lr", "train.min_lr", "train.warmup",
           "train.schedule", "train.eval_every", "train.eval_windows", "train.checkpoint_every")


def check_plan_args(hours: float, seconds: float, max_measure: int, overrides: Sequence[str]) -> None:
    """The plan's numbers and overrides, refused in one line before the minutes of measuring."""
    if not (math.isfinite(hours) and hours > 0):
        raise UsageError(f"--hours must be a positive number of hours, got {hours:g}")
    if not (math.isfinite(seconds) and seconds > 0):
        raise UsageError(f"--seconds must be a positive number of seconds per measured size, got {seconds:g}")
    if max_measure < 1:
        raise UsageError(f"--max-measure must be 1 or more sizes, got {max_measure}")
    for word in overrides:
        if set_here := fields_set_by(word, PLANNED):
            raise UsageError(f"override '{word}': the plan sets {', '.join(set_here)} itself (the shape, the "
                             "steps and their schedule); change them in the config it writes")


def planned_config(cfg: RunConfig, shape: Shape, steps: int, corpus: Corpus, predicted_s: float,
                   params: int, overrides: Sequence[str] = ()) -> RunConfig:
    """The run to train: the shape, the step count, a learning rate by width (nanoGPT's 1e-3 at
    width 384 and GPT-2's 6e-4 at 768), cosine decay to a tenth, five evaluations and checkpoints;
    snapshots, progress and tensorboard on unless `overrides` (the command line's) say otherwise."""
    lr = 2e-3 if shape.width <= 128 else 1e-3 if shape.width <= 384 else 6e-4
    every = math.ceil(steps / EVALS)  # EVALS of them, the last at the last step (steps // EVALS made one more)
    words = [f"train.steps={steps}", f"train.lr={lr}", f"train.min_lr={lr / 10}",
             f"train.warmup={min(100, steps // 10)}", "train.schedule=cosine", f"train.eval_every={every}",
             f"train.eval_windows={EVAL_WINDOWS}", f"train.checkpoint_every={every}", "train.snapshots=true",
             "logging.progress=true", "logging.tensorboard=auto"]
    # the command line's own settings stay (PLANNED ones are refused before): a planned word they set goes
    words = [w for w in words if not any(fields_set_by(o, [w.partition("=")[0]]) for o in overrides)]
    if cfg.data.source == "stories" and cfg.data.max_bytes is not None:  # the generator makes what the budget needs
        sample = np.asarray(corpus.train.tokens[:1_000_000], dtype=np.int64)
        bytes_per_token = float(corpus.token_bytes[sample].mean())
        need = steps * cfg.train.batch_size * cfg.model.context * bytes_per_token / (1 - cfg.data.val_fraction)
        words.append(f"data.max_bytes={max(cfg.data.max_bytes, min(int(need * 1.05), 256_000_000))}")
    tokens = steps * cfg.train.batch_size * cfg.model.context
    # the ratio this plan trains at, as print_plan says it (not the target ratio, which the hours may not allow)
    description = (f"from vslm plan: {tokens:,} tokens, {tokens / params:.0f} per parameter (compute-optimal: "
                   f"{TOKENS_PER_PARAM}), predicted "
                   f"{predicted_s / 60:.1f} min of training on the machine it measured")
    return with_shape(cfg, shape, words).model_copy(
        update={"name": f"plan-{shape.width}x{shape.depth}", "description": description})


def print_plan(plan: dict, out: Path, console: Console) -> None:
    table = Table(title=f"model sizes for {plan['hours']:g} hours here (20 tokens per parameter)")
    for col in ("width x depth", "params", "FLOPs/token", "tokens/s measured", "tokens/s fitted", "hours for 20 N"):
        table.add_column(col, justify="right")
    measured = {m.shape: m for m in plan["measured"]}
    for shape, (n, f) in plan["sizes"].items():
        tps = plan["fit"].tokens_per_s(f)
        mark = " <- plan" if shape == plan["shape"] else ""
        seen = f"{measured[shape].tokens_per_s:,.0f}" if shape in measured else ""
        table.add_row(f"{shape.width} x {shape.depth}{mark}", f"{n:,}", f"{f:,}", seen, f"{tps:,.0f}",
                      f"{TOKENS_PER_PARAM * n / tps / 3600:.3g}")
    console.print(table)
    fit = plan["fit"]
    cfg = plan["config"]
    console.print(
        f"plan: width {plan['shape'].width}, depth {plan['shape'].depth}, {plan['params']:,} parameters, "
        f"{plan['tokens']:,} tokens ({plan['tokens_per_param']:.0f} per parameter) = {plan['steps']:,} steps of "
        f"{cfg.train.batch_size} x {cfg.model.context}; predicted {plan['predicted_tokens_per_s']:,.0f} tokens/s, "
        f"{plan['predicted_train_s'] / 60:.1f} min of training (+ ~{plan['predicted_eval_s'] / 60:.1f} min of "
        f"evaluation" + (f", + ~{plan['predicted_probe_s'] / 60:.1f} min of probes at {plan['probes']} steps"
                         if plan["probes"] else "") + ")", highlight=False)
    notes = [
        f"{TOKENS_PER_PARAM} tokens per parameter is Hoffmann et al.'s (2022) compute-optimal ratio, fitted "
        "at 70M-16B parameters; at this size it is an extrapolation. Parameters include the embeddings. "
        "The size is the candidate nearest that optimum; it gets all of the hours.",
        f"Speed: seconds per token = {fit.overhead:.3g} + {fit.per_flop:.3g} x FLOPs per token (sustained "
        f"{1 / fit.per_flop / 1e9:.1f} GFLOP/s), fitted to {len(plan['measured'])} sizes measured for a few seconds "
        "each on this machine now, under its present load. The planned size is "
        + ("inside the measured range." if plan["within_measured"] else "outside the measured range (extrapolated)."),
        "The predicted time counts training steps (as train_time_s does), not data preparation or evaluation. "
        + ("The planned size's steps use its own measured speed." if plan["speed_measured"] else
           "The planned size's steps use the fitted speed (it was not measured itself)."),
    ]
    if plan["probes"] and plan["predicted_probe_s"] > 0.2 * plan["predicted_train_s"]:
        notes.append(f"The probes (logging.probe_every, timed here: one pass and its set-up) add "
                     f"{plan['predicted_probe_s'] / plan['predicted_train_s']:.0%} to the training time; "
                     "logging.probe_every=0 in the config turns them off.")
    if not 10 <= plan["tokens_per_param"] <= 40:
        notes.append(f"{plan['tokens_per_param']:.0f} tokens per parameter: the hours given are outside what the "
                     "candidates (widths 32 to 768) can use compute-optimally.")
    if plan["epochs"] > 1:
        notes.append(f"The budget reads the training split {plan['epochs']:.1f} times (repeated data is worth less "
                     "than fresh: Muennighoff et al. 2023 find up to ~4 epochs nearly as good).")
    for note in notes:
        console.print(f"  - {note}", highlight=False)
    console.print(f"config written to {out}; train it with: vslm train {out}", highlight=False, markup=False)


def write_plan(plan: dict, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    save_config(plan["config"], out)
    return out
