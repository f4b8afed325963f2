"""What watches a run: small stateful callbacks. Their `state_dict` is saved in every checkpoint.

The training loop calls, in order of the list: `on_train_start(trainer)` once (after a resume
too), `on_before_update(trainer)` when the gradients are ready and the weights not yet updated,
`on_step_end(trainer, metrics)` after every update (`metrics` holds what was read this step:
always `step`; `loss` and the rest on logged steps; `val_loss` on eval steps), and
`on_train_end(trainer, metrics)`.
"""

from __future__ import annotations

import json
import math
import time
from typing import TYPE_CHECKING

import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from vslm.files import write_text
from vslm.plain import dumps
from vslm.train.checkpoint import checkpoint_name, prune, save_checkpoint
from vslm.train.run_folder import CHECKPOINTS, METRICS, SNAPSHOTS

if TYPE_CHECKING:
    from vslm.train.trainer import Trainer


class Callback:
    def on_train_start(self, trainer: Trainer) -> None: ...

    def on_before_update(self, trainer: Trainer) -> None: ...

    def on_step_end(self, trainer: Trainer, metrics: dict) -> None: ...

    def on_train_end(self, trainer: Trainer, metrics: dict) -> None: ...

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None: ...


class MetricsLog(Callback):
    """Appends logged steps to metrics.jsonl, flushed at once so a killed run keeps its lines.

    On resume, lines past the checkpoint's step are dropped: the resumed run writes them anew."""

    def on_train_start(self, trainer: Trainer) -> None:
        path = trainer.run_dir / METRICS
        lines = path.read_text().splitlines() if path.exists() else []
        kept = [ln for ln in lines if step_of_line(ln) <= trainer.step]  # a line cut by a kill is dropped too
        write_text(path, "".join(ln + "\n" for ln in kept))
        self.file = path.open("a", buffering=1)

    def on_step_end(self, trainer: Trainer, metrics: dict) -> None:
        if "loss" in metrics:  # strict JSON: a diverged step's NaN or infinity is null, as in probes.jsonl
            self.file.write(dumps(metrics) + "\n")

    def on_train_end(self, trainer: Trainer, metrics: dict) -> None:
        self.file.close()


def step_of_line(line: str) -> float:
    """The step of a JSON line; infinity for a line cut short (so a resume drops it)."""
    try:
        return json.loads(line)["step"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return math.inf


class Checkpointer(Callback):
    """Full training state every `every` steps and at the end (`due`), and on the steps the trainer
    adds (`trainer.checkpoint_now`: after `train.checkpoint_minutes`, on SIGTERM/SIGINT); keeps the
    newest `keep_last`. A state with a non-finite tensor is never written: the trainer stops instead."""

    def __init__(self, every: int, keep_last: int):
        self.every, self.keep_last = every, keep_last

    def due(self, step: int, last: int) -> bool:
        return step == last or (self.every > 0 and step % self.every == 0)

    def on_step_end(self, trainer: Trainer, metrics: dict) -> None:
        if trainer.checkpoint_now or self.due(trainer.step, trainer.cfg.train.steps):
            folder = trainer.run_dir / CHECKPOINTS
            weights, state = trainer.weights(), trainer.state_dict()
            trainer.check_finite(weights, state)
            save_checkpoint(folder / checkpoint_name(trainer.step), weights, state)
            prune(folder, self.keep_last)


def is_log_spaced(step: int) -> bool:
    """0, 1, 2, 4, 8, 16, ..."""
    return step == 0 or step & (step - 1) == 0


class Snapshots(Callback):
    """Weights at log-spaced steps (0, 1, 2, 4, ...) and at the end, for training-dynamics studies."""

    def _save(self, trainer: Trainer) -> None:
        path = trainer.run_dir / SNAPSHOTS / checkpoint_name(trainer.step)
        if not path.exists():
            save_checkpoint(path, trainer.weights(), {"step": trainer.step})

    def on_train_start(self, trainer: Trainer) -> None:
        if trainer.step == 0:
            self._save(trainer)

    def on_step_end(self, trainer: Trainer, metrics: dict) -> None:
        if is_log_spaced(trainer.step) or trainer.step == trainer.cfg.train.steps:
            self._save(trainer)


class Samples(Callback):
    """logging.samples continuations of an empty prompt (temperature 0.8, logging.sample_tokens each) at the end
    of a run that reached train.steps, into samples.txt, where the report finds them; `texts` keeps them for
    the caller to print (`vslm train`, the demo). A run stopped early, diverged or failing samples nothing."""

    def __init__(self, num: int, tokens: int):
        self.num, self.tokens, self.texts = num, tokens, []

    def on_train_end(self, trainer: Trainer, metrics: dict) -> None:
        if not trainer.completed or trainer.step < trainer.cfg.train.steps or trainer.stop_signal is not None:
            return
        from vslm.data.tokenizer import EOS
        from vslm.train.sampling import sample_text, save_samples

        self.texts = sample_text(trainer.model, trainer.corpus.tokenizer, num=self.num, tokens=self.tokens,
                                 end_of_text=EOS)  # where one document ends and the next begins, shown
        save_samples(trainer.run_dir, self.texts)


def samples_of(trainer: Trainer) -> list[str]:
    """The texts the run's Samples callback wrote at its end ([] if it has none, or sampled nothing)."""
    return next((cb.texts for cb in trainer.callbacks if isinstance(cb, Samples)), [])


class ProgressBar(Callback):
    """A live bar with loss and throughput; when output is not a terminal (a log file, CI), a plain
    line every tenth of the run instead."""

    def __init__(self, console: Console | None = None):
        self.console = console or Console(stderr=True)
        self.last_val = ""

    def on_train_start(self, trainer: Trainer) -> None:
        self.live = self.console.is_terminal
        self.every = max(1, trainer.cfg.train.steps // 10)
        if not self.live:
            return
        self.progress = Progress(
            TextColumn("[bold]train[/]"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
            console=self.console, refresh_per_second=4,
        )
        self.progress.start()
        self.task = self.progress.add_task("train", total=trainer.cfg.train.steps, completed=trainer.step, info="")

    def on_step_end(self, trainer: Trainer, metrics: dict) -> None:
        if "val_loss" in metrics:
            self.last_val, self.last_val_step = f"  val {metrics['val_loss']:.3f}", trainer.step
        info = None
        if "loss" in metrics:  # an older validation loss says from which step it is, never passes for new
            val = self.last_val if not self.last_val or self.last_val_step == trainer.step else \
                f"{self.last_val} (step {self.last_val_step})"
            info = f"loss {metrics['loss']:.3f}  {metrics['tokens_per_s']:,.0f} tok/s{val}"
        if self.live:
            self.progress.update(self.task, completed=trainer.step, **({"info": info} if info else {}))
        elif info and (trainer.step % self.every == 0 or trainer.step == trainer.cfg.train.steps):
            self.console.print(f"step {trainer.step}/{trainer.cfg.train.steps}  {info}", highlight=False)

    def on_train_end(self, trainer: Trainer, metrics: dict) -> None:
        if self.live:
            self.progress.stop()


class WeightDiagnostics(Callback):
    """Every `every` steps, per hidden matrix: the mean and spread of its row norms, the mean cosine
    between each row and its gradient, and the update-to-weight ratio ||dW|| / ||W|| of the step, as
    `diag/<matrix>/<stat>` in the metrics: tangent descent should hold the norms and the cosine near 0."""

    def __init__(self, every: int):
        self.every = every
        self.before: dict[str, torch.Tensor] = {}
        self.cosines: dict[str, torch.Tensor] = {}  # on the device: read with the rest, in one sync

    def _matrices(self, trainer: Trainer):
        from vslm.train.optim import is_hidden_matrix

        return [(n, p) for n, p in trainer.model.named_parameters() if is_hidden_matrix(n, p) and p.grad is not None]

    def on_before_update(self, trainer: Trainer) -> None:
        if (trainer.step + 1) % self.every:
            return
        with torch.no_grad():
            for name, w in self._matrices(trainer):
                self.before[name] = w.detach().clone()
                self.cosines[name] = torch.nn.functional.cosine_similarity(w, w.grad, dim=1).mean()

    def on_step_end(self, trainer: Trainer, metrics: dict) -> None:
        if not self.before:
            return
        if "loss" not in metrics:  # a step not logged: its copy would measure a later step against it (never kept)
            self.before.clear()
            return
        names, stats = [], []
        with torch.no_grad():
            for name, w in trainer.model.named_parameters():
                if name in self.before:
                    norms = w.norm(dim=1)
                    ratio = (w - self.before[name]).norm() / self.before[name].norm()
                    names.append(name)
                    stats.append(torch.stack([norms.mean(), norms.std() / norms.mean(), self.cosines[name].to(w.dtype),
                                              ratio]).float())
        for name, (row_norm, spread, cos, ratio) in zip(names, torch.stack(stats).tolist() if stats else [],
                                                         strict=True):  # one host sync for every matrix
            key = f"diag/{name.removesuffix('.weight')}"
            metrics.update({f"{key}/row_norm": round(row_norm, 6), f"{key}/row_norm_spread": round(spread, 6),
                            f"{key}/cos_w_grad": round(cos, 6), f"{key}/update_ratio": round(ratio, 8)})
        self.before.clear()
        self.cosines.clear()


class StopAfter(Callback):
    """Ends training after `seconds` of wall time, evaluation included, but not before `min_steps`
    updates: benchmarks and the size planner time a model without knowing its speed in advance.
    The clock starts with training, or with `after_first_step` once the first step is done (its
    compilation then does not eat into the time)."""

    def __init__(self, seconds: float, min_steps: int = 1, after_first_step: bool = False):
        self.seconds, self.min_steps, self.after_first_step = seconds, min_steps, after_first_step

    def on_train_start(self, trainer: Trainer) -> None:
        self.started, self.first_step = time.perf_counter(), trainer.step

    def on_before_update(self, trainer: Trainer) -> None:  # before the step's metrics: it is logged
        enough = trainer.step + 1 - self.first_step >= self.min_steps
        if enough and time.perf_counter() - self.started >= self.seconds:
            trainer.request_stop()

    def on_step_end(self, trainer: Trainer, metrics: dict) -> None:
        if self.after_first_step and trainer.step == self.first_step + 1:
            self.started = time.perf_counter()


class StopAtLoss(Callback):
    """Ends training at the first evaluation whose validation loss reaches `target`, and records
    when: the step, the training time (`train_time_s`, evaluation excluded) and the wall time since
    the start of training (compilation and evaluation included)."""

    def __init__(self, target: float):
        self.target = target
        self.reached: dict | None = None

    def on_train_start(self, trainer: Trainer) -> None:
        self.started = time.perf_counter()

    def on_step_end(self, trainer: Trainer, metrics: dict) -> None:
        if self.reached is None and metrics.get("val_loss", float("inf")) <= self.target:
            self.reached = {"step": trainer.step, "val_loss": metrics["val_loss"],
                            "train_time_s": round(trainer.train_time_s, 3),
                            "wall_s": round(time.perf_counter() - self.started, 3)}
            trainer.request_stop()
