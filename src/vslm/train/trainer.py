"""The one training loop.

    trainer = Trainer(cfg, Path("runs/x"))
    final = trainer.fit()          # or Trainer(..., resume=True).fit() to continue exactly

What varies in the step is data: the config, an objective ((model, batch) -> loss and its metrics,
objectives.py; next-token by default) and a batch source (`next_batch()`, `state_dict()`,
`load_state_dict()`; windows of the corpus by default, whole documents with `data.answer_only`).
Fine-tuning passes the model too: a LoRA fact adapter (only its weights require grad), a
distillation student, a relearning copy. What watches the run is a callback (callbacks.py).
Exact resume: the checkpoint holds weights, optimizer state, the step (which fixes the schedule),
the torch RNG (dropout) and the batch source's state (the data position), so a resumed run
computes bit for bit the losses the uninterrupted run computes.

Under torchrun (`torchrun --nproc-per-node N -m vslm train ...`) the same loop runs in every
process, data-parallel (distributed.py): `train.batch_size` is the global batch, each rank
computes its rows, DDP averages the gradients (skipping the all-reduce on all but the last
micro-step of gradient accumulation), evaluation is sharded and summed, and only rank 0 runs the
callbacks (metrics, checkpoints, progress). The losses match a single process's with the same
global batch up to float rounding; checkpoints hold every rank's RNG state, so resume is exact.

What makes a step fast is chosen from the device (`device_plan`): on CUDA, bf16 autocast,
torch.compile, pinned memory and non-blocking copies; on CPU, plain float32 eager (compile pays
little there, see docs/BENCHMARKS.md). The loop reads the loss back (a host sync) only on logged,
evaluation and checkpoint steps.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial, wraps
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vslm.config import DEFAULT_MAX_BYTES, RunConfig, TrainConfig, as_text, flat_values, save_config
from vslm.data.batches import WindowSampler, fixed_windows
from vslm.data.registry import split_name
from vslm.data.shards import Corpus, prepare_corpus
from vslm.data.sources import check_source
from vslm.errors import ConfigError, ResumeRefused, UsageError, VSLMError, refuse_file_in_the_way
from vslm.model import GPT, parameter_count, training_flops_per_token
from vslm.model.attention import Rotary
from vslm.train.callbacks import (
    Callback,
    Checkpointer,
    MetricsLog,
    ProgressBar,
    Samples,
    Snapshots,
    WeightDiagnostics,
)
from vslm.train.checkpoint import (
    atomic_write,
    check_fits,
    list_checkpoints,
    load_checkpoint,
    newest_good,
    nonfinite,
    set_aside,
)
from vslm.train.distributed import init_distributed
from vslm.train.memory import device_memory, estimate_memory, size
from vslm.train.objectives import NextToken, Objective
from vslm.train.optim import build_optimizer, lr_at
from vslm.train.probing import ProbeCallback, probe_interval
from vslm.train.run_folder import (
    CHECKPOINTS,
    CONFIG,
    OLD_NO_LIMIT,
    SUMMARY,
    TOKENIZER,
    RunLock,
    check_not_in_use,
    clear_run_folder,
    corpus_changes,
    data_limit_left_out,
    device_of,
    layout_moved,
    never_checkpointed,
    no_checkpoint_yet,
    read_metrics,
    read_run_config,
    read_summary,
    refuse_a_run_folder,
    same_text_elsewhere,
    saved_by_run,
    schedule_moved,
    update_summary,
)
from vslm.train.tensorboard import TensorBoardLog, tensorboard_available
from vslm.train.trackers import MLflowLog, WandbLog, require

VAL_SEED = 0  # the validation windows are the same for every training seed

# what a resume may change: train.steps (up: extending the run), the learning-rate schedule and the
# regularisation of the steps to come (lowering the lr after a spike, say; extending already reshapes the
# schedule), how the run is executed, and logging; summary.json's config_changes records each change.
# Anything else (model, data, batch, seed, optimizer, validation windows) would make the resumed run
# another one than the run whose steps are in the folder.
RESUME_MAY_CHANGE = ("name", "description", "logging.", "train.steps", "train.lr", "train.min_lr", "train.warmup",
                     "train.schedule", "train.decay_fraction", "train.weight_decay", "train.grad_clip",
                     "train.hidden_lr_scale", "train.device", "train.threads", "train.dtype", "train.compile",
                     "train.checkpoint_every", "train.checkpoint_minutes", "train.keep_last", "train.snapshots",
                     "train.eval_every", "train.eval_lengths")


def config_changes(old: RunConfig, new: RunConfig, folder: Path | None = None) -> dict[str, tuple[object, object]]:
    """{dotted field: (old value, new value)} of the fields where two configs differ, values as JSON has them
    ("-": a field one config lacks). `folder`: the run `old` is the config of, whose data.source at another
    path that holds the very text it began with is no change (run_folder.same_text_elsewhere: the folder, or
    its data, moved)."""
    a, b = (flat_values(c.model_dump(mode="json")) for c in (old, new))
    changes = {k: (a.get(k, "-"), b.get(k, "-")) for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)}
    if "data.source" in changes and folder is not None and same_text_elsewhere(folder, new.data):
        del changes["data.source"]
    return changes


def checked_config(cfg: RunConfig | str | Path, resume: bool = False) -> RunConfig:
    """The config a Trainer trains: a RunConfig validated again (vslm.config.revalidated: a notebook may have
    assigned a field since it was loaded), or a built-in name or TOML path loaded (resume: as a run's own
    config, load_config's `saved`)."""
    from vslm.config import load_config, revalidated

    if isinstance(cfg, (str, Path)):
        return load_config(str(cfg), saved=resume)
    if not isinstance(cfg, RunConfig):
        raise UsageError(f"a Trainer trains a RunConfig (vslm.config.load_config), a config name or a TOML path, "
                         f"not a {type(cfg).__name__}")
    return revalidated(cfg)


def last_logged(run_dir: Path, step: int) -> dict:
    """The run's last complete line of metrics.jsonl up to `step`, else {"step": step}."""
    rows = [row for row in read_metrics(run_dir) if row["step"] <= step]
    return rows[-1] if rows else {"step": step}


class TrainingDiverged(VSLMError):
    pass


class TrainingStopped(VSLMError):
    """SIGTERM or SIGINT: the run wrote a checkpoint at the step it was on and stopped; exit 128 + signal.
    `where`: the signal and the step ("SIGTERM: stopped at step 131"), for a caller's own words on going on.
    Asked for, not a fault: the CLI prints it without "error"."""

    label = ""

    def __init__(self, message: str, signum: int, where: str = ""):
        super().__init__(message)
        self.signum, self.where = signum, where or message
        self.exit_code = 128 + signum


@dataclass(frozen=True)
class DevicePlan:
    """How a step runs on the device, chosen once from the config and the hardware."""

    amp_dtype: torch.dtype | None  # autocast dtype; None = float32 throughout
    compile: bool
    pin_memory: bool  # pinned host batches, copied without blocking the host


def device_plan(device: torch.device, tc: TrainConfig, bf16_supported: bool) -> DevicePlan:
    """bf16 autocast and torch.compile on CUDA unless the config says otherwise; on CPU neither by
    default: CPU autocast to bf16 is emulated without AVX512-BF16/AMX, and compile bought about
    10% on the nanogpt preset for a minute of compiling (docs/BENCHMARKS.md)."""
    cuda = device.type == "cuda"
    amp = tc.dtype == "bfloat16" or (tc.dtype == "auto" and cuda and bf16_supported)
    return DevicePlan(amp_dtype=torch.bfloat16 if amp else None,
                      compile=tc.compile is True or (tc.compile == "auto" and cuda), pin_memory=cuda)


def _no_buffer_sync() -> dict:
    """DDP arguments that skip syncing buffers before each forward: the model's buffers (RoPE
    tables) are constants, and the sync is a collective that sharded evaluation must not hit."""
    ddp_args = inspect.signature(torch.nn.parallel.DistributedDataParallel.__init__).parameters
    return {"forward_sync_buffers": False} if "forward_sync_buffers" in ddp_args else {"broadcast_buffers": False}


def peak_memory_mb(device: torch.device) -> dict[str, float]:
    """Peak resident memory of this process (the kernel's high-water mark, cheap to read), and on
    CUDA the peak memory the caching allocator handed to tensors."""
    out = {}
    if sys.platform != "win32":  # `resource` is POSIX's: Windows logs no peak_rss_mb
        import resource

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
        out["peak_rss_mb"] = round(rss / (2**20 if sys.platform == "darwin" else 2**10), 1)
    if device.type == "cuda":
        out["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return out


_threads_warned = False
_cores_seen: tuple[float, float, str] | None = None  # (when, cores in use, how): set_threads looks every 30 s


def cores_in_use() -> tuple[float, str]:
    """How many cores other processes keep busy now, and the words that say how it was measured: on Linux the
    median of five samples, 20 ms apart, of the tasks running or runnable (/proc/loadavg's fourth field, this
    one counted out); elsewhere the 1-minute load average, which still counts a job that ended a minute ago."""
    try:
        samples = []
        for i in range(5):
            if i:
                time.sleep(0.02)
            samples.append(int(Path("/proc/loadavg").read_text().split()[3].split("/")[0]) - 1)
        busy = float(sorted(samples)[2])
        return busy, f"{busy:g} other tasks running now"
    except (OSError, ValueError, IndexError):
        if not hasattr(os, "getloadavg"):
            return 0.0, ""
        load = os.getloadavg()[0]
        return max(0.0, load - 1), f"load average {load:.1f} (this process counted as one)"


def set_threads(threads: int, warn: bool = True, job: str = "training", setting: str = "train.threads=") -> int:
    """torch's CPU threads: `threads`, or its default when 0; returns the number. Warns once per process
    when other processes leave fewer free cores than that (`cores_in_use`): threads that fight for cores slow
    every step down many times over (docs/BENCHMARKS.md: 848 ms a step against 68 ms with one thread).
    `job` and `setting` word the warning (`vslm sample`: "sampling", "--threads ")."""
    global _threads_warned, _cores_seen
    if threads:
        torch.set_num_threads(threads)
    n = torch.get_num_threads()
    if warn and not _threads_warned and n > 1:  # one thread cannot fight itself
        cores = os.cpu_count() or 1
        if _cores_seen is None or time.monotonic() - _cores_seen[0] > 30:  # 80 ms a look: once in 30 s
            _cores_seen = (time.monotonic(), *cores_in_use())
        _, busy, how = _cores_seen
        free = cores - busy
        if free < n:
            _threads_warned = True
            print(f"warning: {how} on {cores} cores: {max(free, 0):.1f} free for {n} threads; threads that "
                  f"fight for cores slow {job} down: set {setting}1 (or fewer than {n})", file=sys.stderr)
    return n


def check_given_model(model: torch.nn.Module, vocab: int, context: int) -> None:
    """A model handed to the Trainer (model=) that cannot take the run's batches, refused before anything is
    written: fewer embeddings than the tokenizer has ids, or a context shorter than the config's windows. A
    model without a GPT's `cfg` (another kind) is the caller's to match."""
    own = getattr(model, "cfg", None)
    size, reach = getattr(own, "vocab_size", None), getattr(own, "context", None)
    if isinstance(size, int) and size < vocab:
        raise ConfigError(f"the model given (model=) has vocab_size {size}, fewer than the tokenizer's {vocab} ids: "
                          "build it from the run's config (model.vocab_size) or train with its tokenizer")
    if isinstance(reach, int) and reach < context:
        raise ConfigError(f"the model given (model=) has context {reach}, shorter than the config's model.context "
                          f"{context}, the length of every batch: set model.context={reach} or build the model "
                          "from the config")


def _threads_back(init: Callable) -> Callable:
    """Trainer.__init__ sets train.threads for the corpus's preparation; the session's thread count is put back
    when it returns or fails (fit() sets them again for the run, and puts the session's back after it): a Trainer
    built to look at its model changes nothing in the session."""
    @wraps(init)
    def wrapped(self, *args, **kwargs) -> None:
        threads = torch.get_num_threads()
        try:
            init(self, *args, **kwargs)
        finally:
            torch.set_num_threads(threads)
    return wrapped


def default_callbacks(cfg: RunConfig) -> list[Callback]:
    """Weight diagnostics (if on: they add to the step's metrics, so they come first), metrics,
    checkpoints, snapshots (if on), probes (if on), TensorBoard events (if on), the other trackers of
    logging.trackers (W&B, MLflow), the progress bar (if on) and the samples at the end (logging.samples). A
    tracker in logging.trackers whose package is missing is one line here, before the run folder is written."""
    every = cfg.logging.diagnostics_every
    callbacks: list[Callback] = [WeightDiagnostics(every)] if every else []
    callbacks += [MetricsLog(), Checkpointer(cfg.train.checkpoint_every, cfg.train.keep_last)]
    if cfg.train.snapshots:
        callbacks.append(Snapshots())
    if probe_every := probe_interval(cfg):
        callbacks.append(ProbeCallback(probe_every))
    trackers = cfg.logging.trackers
    if "tensorboard" in trackers:
        require("tensorboard")
    if "tensorboard" in trackers or cfg.logging.tensorboard is True or \
            (cfg.logging.tensorboard == "auto" and tensorboard_available()):
        callbacks.append(TensorBoardLog())
    callbacks += [tracker() for tracker in (WandbLog, MLflowLog) if tracker.name in trackers]
    if cfg.logging.progress:
        callbacks.append(ProgressBar())
    if cfg.logging.samples:  # after the bar has closed
        callbacks.append(Samples(cfg.logging.samples, cfg.logging.sample_tokens))
    return callbacks


def default_batches(cfg: RunConfig, corpus: Corpus, rank: int = 0, world: int = 1):
    """The corpus's training windows (this rank's rows of each global batch), or with
    `data.answer_only` whole documents with the loss on their answers."""
    # a text of one document: else windows would start anywhere, or answer_only's rows be pieces of it, without a word
    flag, why = (("answer_only", "there are no documents to draw rows from") if cfg.data.answer_only else
                 ("doc_aligned", "no window could start at one") if cfg.data.doc_aligned else (None, ""))
    if flag and len(corpus.train.doc_starts) < 2:
        raise VSLMError(f"data.{flag}: the training text of {cfg.data.source} is one document (no "
                        f"<|endoftext|> between documents), so {why}; drop data.{flag}")
    if cfg.data.answer_only:
        from vslm.data.answers import AnswerSampler, training_documents

        return AnswerSampler(training_documents(cfg.data, corpus), corpus.tokenizer, cfg.model.context,
                             cfg.train.batch_size, cfg.train.seed)
    return WindowSampler(corpus.train.tokens, cfg.model.context, cfg.train.batch_size, cfg.train.seed,
                         corpus.train.doc_starts if cfg.data.doc_aligned else None, shard=(rank, world))


def map_tensors(batch, fn):
    """fn applied to every tensor of a batch: a tensor, or tuples, lists and dicts of them (None kept)."""
    if isinstance(batch, torch.Tensor):
        return fn(batch)
    if isinstance(batch, dict):
        return {k: map_tensors(v, fn) for k, v in batch.items()}
    if isinstance(batch, tuple | list):
        return type(batch)(map_tensors(v, fn) for v in batch)
    return batch


class Trainer:
    """One run: `cfg` (the model, data and schedule), a run folder, and optionally the callbacks
    (default_callbacks), a prepared corpus, the model to train (default: GPT(cfg.model), seeded),
    the objective (default: next-token), the batch source (default: default_batches) and `on_prepare`,
    called (rank 0) once the run folder is judged usable, just before the corpus is prepared. A batch
    source whose batches are not this rank's share already (no `shard` attribute, as
    WindowSampler has) is sharded by rows: each rank keeps rows rank, rank + world, ... ."""

    SAME_STOP_S = 2.0  # a second stop signal within this many seconds of the first is the same request

    @_threads_back
    def __init__(self, cfg: RunConfig | str | Path, run_dir: Path, callbacks: Sequence[Callback] | None = None,
                 resume: bool = False, corpus: Corpus | None = None, *, model: torch.nn.Module | None = None,
                 objective: Objective | None = None, batches=None, checkpoint: Path | None = None,
                 on_prepare: Callable[[], None] | None = None, origin: dict | None = None):
        cfg = checked_config(cfg, resume)
        if checkpoint is not None and not resume:
            raise UsageError("a checkpoint (--checkpoint) picks where a resumed run continues from: add --resume "
                             "(resume=True in Python)")
        self.run_dir = Path(run_dir)
        self.origin = origin  # where `model`'s weights came from (--init-from-hf): summary.json's init_from
        refuse_file_in_the_way(self.run_dir, "the run folder")
        self.resume = resume
        self.restart = False  # a resume of a run stopped before its first checkpoint: cleared, trained from step 0
        self.nothing_to_train = False  # set by fit() on a run resumed at its last step
        self.resume_from = checkpoint  # resume: this checkpoint instead of the newest good one
        self.device = device_of(cfg.train.device)
        self.dist = init_distributed(cuda=self.device.type == "cuda")
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)  # one GPU per process
        with self.dist.main_first():  # rank 0 judges the lock alone (two ranks taking it would refuse each other);
            if self.dist.is_main:     # the others wait for its verdict, so that no rank calls a live folder deletable
                check_not_in_use(self.run_dir)
        # batches or an objective of the caller's (a fine-tune, the reader, a distillation, a capacity run): said in
        # summary.json, so that `vslm train --resume` (which rebuilds both from the config) refuses the folder
        self.own_training = ", ".join(type(x).__name__ for x in (batches, objective) if x is not None)
        if resume:
            cfg = self._check_resumable(cfg, built_here=model is None)
        else:  # before the corpus is prepared: a refusal in the first second, not after the data's minutes
            self._refuse_a_run_folder()
        if model is None:  # sized from the config before anything is built or read
            self._check_memory(cfg)
        if corpus is None:  # a source that cannot be read is refused here, not after the warnings and "Preparing"
            check_source(cfg.data)
        # after the refusals (a warning about cores above a one-line refusal reads as part of it), before the corpus;
        # the session's own count is put back when __init__ returns, and again when fit() ends
        set_threads(cfg.train.threads, warn=self.device.type == "cpu")
        if on_prepare is not None and self.dist.is_main:  # `vslm train`'s "Preparing the corpus": after the refusals
            on_prepare()
        with self.dist.main_first():  # rank 0 builds the shard cache, the others then read it
            self.corpus = corpus or prepare_corpus(cfg.data)
        if self.resume:  # not a run cleared to train again from step 0 (_check_resumable)
            self._check_same_corpus(cfg)
        vocab = self.corpus.tokenizer.vocab_size
        cfg = cfg.with_vocab_size(vocab)
        if cfg.model.vocab_size < vocab:
            why = (" (the run's config.toml took it from the corpus it first read, which has gained symbols since: "
                   "train anew into another --out)" if self.restart else "")
            raise VSLMError(f"model.vocab_size {cfg.model.vocab_size} is smaller than the tokenizer's {vocab}{why}")
        if model is not None:
            check_given_model(model, vocab, cfg.model.context)
        self.cfg = cfg
        tc = cfg.train
        cuda = self.device.type == "cuda"
        self.plan = device_plan(self.device, tc, cuda and torch.cuda.is_bf16_supported())
        self.amp_dtype = self.plan.amp_dtype

        # the run's random stream starts from its seed here and goes on in fit(); the session's own (a notebook's
        # torch.rand between Trainer() and fit(), or after) is put back each time, and changes no run
        with torch.random.fork_rng(devices=self._rng_devices()):
            torch.manual_seed(tc.seed)
            self.model = (GPT(cfg.model) if model is None else model).to(self.device)
            if self.dist.rank:
                torch.manual_seed(tc.seed + self.dist.rank)  # the same weights, different dropout masks
            self.rng_at_start = self._rng_of_this_rank()
        self.params = parameter_count(self.model)
        self.trainable = parameter_count(self.model, trainable_only=True)
        self.flops_per_token = training_flops_per_token(self.model)
        if self.resume and model is not None:  # a model of the caller's, measured as built (GPT's: _check_resumable)
            self._refuse_moved_layout(schedule_moved(self.run_dir, cfg.model, self.params, self.flops_per_token))
        self.ddp = None
        module: torch.nn.Module = self.model
        if self.dist.enabled:
            self.ddp = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.dist.local_rank] if cuda else None, **_no_buffer_sync())
            module = self.ddp
        if tc.eval_lengths:  # the longest evaluation's positions now, not under a compiled forward later
            for rotary in (m for m in self.model.modules() if isinstance(m, Rotary)):
                rotary.reach(tc.eval_lengths[-1] * cfg.model.context)
        mode = None if tc.compile_mode == "default" else tc.compile_mode
        # dynamo's cache is the process's, keyed on GPT.forward: runs one after another in a process (an experiment's
        # --jobs 1, plan, adapters) filled it and, from torch's recompile limit on, trained uncompiled. Emptied here
        # (a compiled function of the session's own compiles again at its next call)
        if self.plan.compile:
            torch._dynamo.reset()
        self.forward = torch.compile(module, mode=mode) if self.plan.compile else module
        fused = self.device.type in ("cpu", "cuda")  # one kernel per step: 4x faster than the loop on CPU
        self.optimizer = build_optimizer(self.model, tc, fused=fused)
        self.objective = objective or NextToken()
        self.batches = batches or default_batches(cfg, self.corpus, self.dist.rank, self.dist.world)
        # `vslm train --resume` rebuilds a run's batches and objective from its config only: a fine-tune, a reader or
        # a capacity run (batches or an objective of their own) is continued by the command that started it
        self.from_config = not self.own_training
        self.shard_rows = self.dist.world > 1 and not hasattr(self.batches, "shard")
        if self.shard_rows and tc.batch_size % self.dist.world:
            raise VSLMError(f"train.batch_size {tc.batch_size} (the global batch) is not divisible by the "
                            f"{self.dist.world} processes")
        self.val_x, self.val_y = fixed_windows(self.corpus.val.tokens, cfg.model.context,
                                               tc.eval_windows, VAL_SEED)
        if tc.eval_lengths:  # as many tokens as the windows above, in windows of the longest multiple
            longest = tc.eval_lengths[-1] * cfg.model.context
            if len(self.corpus.val.tokens) <= longest:
                raise VSLMError(f"train.eval_lengths: the validation split has {len(self.corpus.val.tokens):,} "
                                f"tokens, fewer than {tc.eval_lengths[-1]} x model.context + 1 = {longest + 1:,}; "
                                "give more text, a larger data.val_fraction or shorter lengths")
            self.long_x, self.long_y = fixed_windows(self.corpus.val.tokens, longest,
                                                     max(1, tc.eval_windows // tc.eval_lengths[-1]), VAL_SEED)
        self.token_bytes = torch.from_numpy(self.corpus.token_bytes.astype(np.int64))  # (V,)
        self.callbacks = list(default_callbacks(cfg) if callbacks is None else callbacks)
        if not self.dist.is_main:
            self.callbacks = []  # rank 0 logs, checkpoints and reports for all
        self.step = 0
        self.train_time_s = 0.0
        self.stop_requested = False
        self.completed = False  # set by fit() when the loop returns rather than raises (diverged, failed)
        self.stop_signal: int | None = None  # SIGTERM or SIGINT received: checkpoint, then stop
        self.stop_time = 0.0  # when (time.monotonic)
        self.checkpointing: bool | None = None  # whether rank 0 checkpoints (known to every rank once fit starts)
        self.checkpoint_now = False  # this step's checkpoint is due (schedule, clock or signal): Checkpointer
        self.last_checkpoint_time = time.monotonic()
        self.rank_rng: list[dict] | None = None  # every rank's RNG state, gathered before a checkpoint

    # ----------------------------------------------------------------------------- state

    def _check_memory(self, cfg: RunConfig) -> None:
        cuda = self.device.type == "cuda"
        bf16 = cfg.train.dtype == "bfloat16" or (cfg.train.dtype == "auto" and cuda and torch.cuda.is_bf16_supported())
        need, have = estimate_memory(cfg, self.dist.world, bf16), device_memory(self.device)
        if have is not None and need.total > have:
            raise ConfigError(f"this run needs {need.line()}; the {self.device.type} has {size(have)}: "
                              "make model.width, model.depth, model.context or train.batch_size smaller")

    def _check_resumable(self, cfg: RunConfig, built_here: bool) -> RunConfig:
        """The run's saved config against `cfg`, and what there is to continue from; `built_here`: the model is
        GPT(cfg.model), whose layout is checked now, on the meta device, before the corpus is prepared."""
        self.saved_cfg = saved = read_run_config(self.run_dir)
        if (own := read_summary(self.run_dir).get("own_training")) and not self.own_training:
            raise ResumeRefused(f"cannot resume {self.run_dir} from its config: it trains with batches or an objective "
                                f"of its own ({own}), which a resume from its config would replace with its text and "
                                "the next-token loss; the command that started it continues it")
        cfg = cfg.with_vocab_size(saved.model.vocab_size)  # the saved config has it from the tokenizer
        fixed = [f"{k}: {as_text(old)} in the run, {as_text(new)} given"  # (summary.json records a moved source)
                 for k, (old, new) in config_changes(saved, cfg, self.run_dir).items()
                 if not k.startswith(RESUME_MAY_CHANGE)]
        if fixed:
            raise ResumeRefused(f"cannot resume {self.run_dir}: {'; '.join(fixed)} (a resume keeps what the run "
                                "trains: it may raise train.steps, change the learning-rate schedule, logging and "
                                "where it runs)")
        if not list_checkpoints(self.run_dir / CHECKPOINTS) and self.resume_from is None:
            if not never_checkpointed(self.run_dir, saved):  # set aside as corrupt, or removed: not ours to clear
                raise VSLMError(f"cannot resume {self.run_dir}: {no_checkpoint_yet(self.run_dir)}")
            # nothing to continue from, and nothing to keep: the same config trains the same steps again; the
            # folder is cleared in fit(), under its lock, once a batch can be drawn
            self._warn(f"{self.run_dir} stopped before its first checkpoint: it trains again from step 0 with its "
                       "config (the steps it had logged are written anew)")
            self.resume, self.restart = False, True
        if self.resume_from is not None and not Path(self.resume_from).is_file():
            raise UsageError(f"checkpoint {self.resume_from}: no such file (the run's checkpoints are in "
                             f"{self.run_dir / CHECKPOINTS})")
        if self.resume and built_here:  # (a run cleared to train again has no weights of another layout)
            self._refuse_moved_layout(layout_moved(self.run_dir, cfg.model))
        return cfg

    def _refuse_moved_layout(self, why: str | None) -> None:
        """run_folder.schedule_moved's reason, if any, as the resume's refusal."""
        if why:
            raise ConfigError(f"cannot resume {self.run_dir}: {why}; train anew into another --out")

    def _check_same_corpus(self, cfg: RunConfig) -> None:
        """A resume continues the batch source's stream over the run's corpus: a corpus that now reads as other
        tokens (its files changed, or data.max_bytes) would go on, silently, on other data. summary.json holds
        the token counts the run began with, tokenizer.json its ids (a char vocabulary whose characters changed,
        as many of them, shifts every id)."""
        differ = corpus_changes(self.run_dir, len(self.corpus.train.tokens), len(self.corpus.val.tokens),
                                self.corpus.tokenizer)
        if not differ:
            return
        if data_limit_left_out(self.run_dir) and cfg.data.max_bytes == DEFAULT_MAX_BYTES:
            why = OLD_NO_LIMIT
        else:
            why = ("the source's files changed since the run began, or this vslm prepares them otherwise (a newer "
                   "version, its cache cleared): put the run's files back, or train anew into another --out")
        # not a ResumeRefused: no config given on the command line would mend it
        raise ConfigError(f"cannot resume {self.run_dir}: its corpus reads as other tokens ({'; '.join(differ)}); "
                          f"{why}")

    def weights(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def request_stop(self) -> None:
        """End the loop after this step, and log it if the request comes before the step's metrics
        are read (`on_before_update`). Under DDP the loop ends at the next logged step, so that all
        ranks stop together. No checkpoint is written for the early stop unless one is due anyway."""
        self.stop_requested = True

    def state_dict(self) -> dict:
        rng = self._rng_of_this_rank()  # this device's CUDA stream only: a resume may see fewer GPUs
        if self.dist.enabled and self.rank_rng is not None:
            rng["ranks"] = self.rank_rng
        return {
            "step": self.step,
            "train_time_s": self.train_time_s,
            "optimizer": self.optimizer.state_dict(),
            "sampler": self.batches.state_dict(),
            "rng": rng,
            "callbacks": {key: cb.state_dict() for key, cb in zip(self._callback_keys(), self.callbacks, strict=True)},
        }

    def _callback_keys(self) -> list[str]:
        """Each callback's key in a checkpoint: its class and its place among callbacks of that class
        ("ProbeCallback:0"), so that a resume adding or dropping another callback (diagnostics, snapshots)
        still finds each one's state."""
        seen: dict[str, int] = {}
        keys = []
        for cb in self.callbacks:
            name = type(cb).__name__
            keys.append(f"{name}:{seen.get(name, 0)}")
            seen[name] = seen.get(name, 0) + 1
        return keys

    def load_state_dict(self, weights: dict[str, torch.Tensor], state: dict) -> None:
        self.model.load_state_dict(weights)
        settings = [{k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups]
        self.optimizer.load_state_dict(state["optimizer"])  # puts back the saved groups' settings too:
        for group, ours in zip(self.optimizer.param_groups, settings, strict=True):
            group.update(ours)  # the config's win (a resume may change weight_decay, hidden_lr_scale)
        self.batches.load_state_dict(state["sampler"])
        self.step = state["step"]
        self.train_time_s = state["train_time_s"]
        self._load_rng(state["rng"])
        saved = state["callbacks"]
        for i, (key, cb) in enumerate(zip(self._callback_keys(), self.callbacks, strict=True)):
            # checkpoints before 2026-12-07 keyed it by position in the list: "3:ProbeCallback"
            cb.load_state_dict(saved.get(key, saved.get(f"{i}:{type(cb).__name__}", {})))

    def _rng_of_this_rank(self) -> dict:
        rng = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return rng

    def _load_rng(self, rng: dict) -> None:
        ranks = rng.get("ranks")
        if self.dist.enabled and ranks is not None and len(ranks) == self.dist.world:
            mine = ranks[self.dist.rank]
            torch.set_rng_state(mine["torch"])
            if "cuda" in mine and self.device.type == "cuda":
                torch.cuda.set_rng_state(mine["cuda"], self.device)
            return
        # a single-process checkpoint, or another number of processes: the data and the weights
        # carry over exactly; dropout masks of the other ranks are drawn afresh
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and self.device.type == "cuda":
            state = rng["cuda"]
            if isinstance(state, list | tuple):  # checkpoints before 2026-12-07: one state per GPU it saw
                index = self.device.index if self.device.index is not None else torch.cuda.current_device()
                state = state[index] if index < len(state) else None  # a GPU it did not see: drawn afresh
            if state is not None:
                torch.cuda.set_rng_state(state, self.device)
        if self.dist.rank:
            torch.manual_seed(self.cfg.train.seed + self.dist.rank + 7919 * self.step)

    # ------------------------------------------------------------------------------ loop

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _to_device(self, t: torch.Tensor) -> torch.Tensor:
        if self.plan.pin_memory:
            return t.pin_memory().to(self.device, non_blocking=True)
        return t.to(self.device)

    def next_batch(self):
        """The batch source's next batch, this rank's rows of it, on the device."""
        batch = self.batches.next_batch()
        if self.shard_rows:
            batch = map_tensors(batch, lambda t: t[self.dist.rank :: self.dist.world])
        return map_tensors(batch, self._to_device)

    def fit(self) -> dict:
        """Train to cfg.train.steps; returns the last logged metrics. SIGTERM or SIGINT (Ctrl-C) during
        training writes a checkpoint at the current step and raises TrainingStopped (a second one, more than
        SAME_STOP_S later, stops at once). A run resumed at its last step trains nothing, writes nothing and says so.
        The run draws on its own random stream, and the session's stream, thread count and float32 matmul
        precision are as they were after it (Trainer.__init__)."""
        session_precision, self.session_threads = torch.get_float32_matmul_precision(), torch.get_num_threads()
        set_threads(self.cfg.train.threads, warn=False)  # (said in __init__, where other processes were counted)
        if self.device.type == "cuda":  # this run's peak (peak_gpu_mb), not that of a run before it in the process
            torch.cuda.reset_peak_memory_stats(self.device)
            torch.set_float32_matmul_precision("high")  # TF32 for what autocast leaves in float32, in this run
        try:
            with torch.random.fork_rng(devices=self._rng_devices()):
                self._set_rng(self.rng_at_start)
                return self._fit()
        finally:
            torch.set_num_threads(self.session_threads)
            torch.set_float32_matmul_precision(session_precision)  # a notebook's evaluation after it: as before

    def _rng_devices(self) -> list[torch.device]:
        """The CUDA device whose random stream fork_rng keeps apart (none on the CPU)."""
        return [self.device] if self.device.type == "cuda" else []

    def _set_rng(self, rng: dict) -> None:
        """This rank's random state as _rng_of_this_rank took it."""
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng:
            torch.cuda.set_rng_state(rng["cuda"], self.device)

    def _fit(self) -> dict:
        self._peek_batch()  # the run folder is made only once a batch can be drawn
        try:
            with RunLock(self.run_dir) if self.dist.is_main else contextlib.nullcontext(), self._on_signals():
                self._open_run_folder()
                if self.step == self.cfg.train.steps:  # resumed at the last step: only the weights loaded
                    self.nothing_to_train = True
                    extend = (f"; train.steps={self.step * 2} (any number above {self.step}) extends it"
                              if self.from_config else "")  # a fine-tune's command sets its own steps
                    self._warn(f"{self.run_dir} is already at its last step ({self.step} = train.steps): nothing "
                               f"to train{extend}")
                    return last_logged(self.run_dir, self.step)
                for cb in self.callbacks:
                    cb.on_train_start(self)
                metrics: dict = {"step": self.step}
                try:
                    metrics = self._loop()
                    self.completed = True  # the loop returned (to train.steps, or stopped): it did not raise
                finally:
                    for cb in self.callbacks:
                        cb.on_train_end(self, metrics)
            # every rank through rank 0's last callbacks before the group is torn down: a rank that
            # destroys it and exits while another still works may abort in gloo's teardown
            self.dist.barrier()
        finally:
            self.dist.close()
        if self.stop_signal is not None:
            name = signal.Signals(self.stop_signal).name
            saved = self.checkpointing if self.checkpointing is not None else any(
                isinstance(cb, Checkpointer) for cb in self.callbacks)
            how = f"continue with vslm train --resume --out {self.run_dir} (resume=True in Python)" \
                if self.from_config else "the same command again continues it"
            then = f"with a checkpoint; {how}" if saved else "(this run writes no checkpoints)"
            where = f"{name}: stopped at step {self.step}"
            raise TrainingStopped(f"{where} {then}", self.stop_signal, where)
        return metrics

    def _peek_batch(self) -> None:
        """Draw the first batch and put the batch source back where it was."""
        state = self.batches.state_dict()
        try:
            self.batches.next_batch()
        except (MemoryError, RuntimeError) as e:
            if isinstance(e, RuntimeError) and "alloc" not in str(e):
                raise
            raise ConfigError(f"cannot draw a batch of {self.cfg.train.batch_size} rows of {self.cfg.model.context} "
                              f"tokens here ({str(e).splitlines()[0]}): make train.batch_size smaller") from None
        self.batches.load_state_dict(state)

    @contextlib.contextmanager
    def _on_signals(self):
        """SIGTERM and SIGINT ask the loop to checkpoint and stop (handlers only in the main thread)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum, frame):
            # asked twice: stop now; but a copy within SAME_STOP_S of the first is the same request (a terminal's
            # Ctrl-C reaches a whole process group, and an experiment's parent passes its own on to its workers)
            if self.stop_signal is not None and time.monotonic() - self.stop_time > self.SAME_STOP_S:
                raise KeyboardInterrupt
            if self.stop_signal is None:
                self.stop_signal, self.stop_time = signum, time.monotonic()

        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for sig, h in previous.items():
                signal.signal(sig, h)

    def _open_run_folder(self) -> None:
        """Load the resume point, or refuse a folder that holds a run; then write the config and the
        summary. A resumed run at its last step (self.step == train.steps) is left as it is."""
        if self.resume:
            self._load_resume_point()
            if self.step > self.cfg.train.steps:
                raise ResumeRefused(f"cannot resume {self.run_dir}: train.steps={self.cfg.train.steps} is below step "
                                    f"{self.step}, which the run has reached; give train.steps={self.step} or more")
            if self.step == self.cfg.train.steps:
                return
        elif self.restart:
            if self.dist.is_main:
                clear_run_folder(self.run_dir)
        else:
            self._refuse_a_run_folder()  # again, now under the run's lock
        self.dist.barrier()  # every rank has looked at the folder before rank 0 writes to it
        if not self.dist.is_main:
            return
        summary = {"params": self.params, "trainable_params": self.trainable,
                   "flops_per_token": self.flops_per_token, "device": str(self.device),
                   "processes": self.dist.world,
                   "tokenizer": self.corpus.tokenizer.kind, "vocab_size": self.corpus.tokenizer.vocab_size,
                   "train_tokens": len(self.corpus.train.tokens), "val_tokens": len(self.corpus.val.tokens),
                   "data_identity": self.corpus.meta["identity"],  # the text read: `vslm eval --on` tells its own
                   **({"own_training": self.own_training} if self.own_training else {})}
        if split_name(source := self.cfg.data.source)[0] is None and Path(source).expanduser().exists():
            summary["data_path"] = str(Path(source).expanduser().resolve())  # a relative path's, from anywhere
        if self.origin:  # a resume keeps the one its start wrote (old | summary below)
            summary["init_from"] = self.origin
        if self.resume:
            self._set_aside_newer()
            # config.toml holds the config from here on; what each resume changed (train.steps: the
            # schedule of the steps before) stays in the summary, so that the run is described whole
            old = {}
            if (self.run_dir / SUMMARY).is_file():
                try:
                    old = json.loads((self.run_dir / SUMMARY).read_text())
                except (json.JSONDecodeError, UnicodeDecodeError) as e:  # derived numbers: written anew below
                    self._warn(f"warning: {self.run_dir / SUMMARY} does not read ({e}); writing it anew")
            old.pop("diverged", None)  # it continues from a finite checkpoint: said again if it diverges again
            history = old.get("config_changes", [])
            if changes := config_changes(self.saved_cfg, self.cfg):
                history = [*history, {"step": self.step, **{k: list(v) for k, v in changes.items()}}]
            summary = old | summary | ({"config_changes": history} if history else {})
        else:
            self.corpus.tokenizer.save(self.run_dir / TOKENIZER)
        save_config(self.cfg, self.run_dir / CONFIG)
        text = (json.dumps(summary, indent=1) + "\n").encode()
        atomic_write(self.run_dir / SUMMARY, lambda f: f.write(text))  # a kill mid-write leaves the old one

    def _refuse_a_run_folder(self) -> None:
        refuse_a_run_folder(self.run_dir, "; pass --resume (resume=True in Python) to continue it, or --out to "
                                          "train into another folder")

    def _load_resume_point(self) -> None:
        """The checkpoint given, else the newest that reads and is finite (each newer one is named in a
        warning and moved aside), into the model, the optimizer, the batch source and the RNG."""
        # on the CPU: RNG states must stay there; load_state_dict moves the rest to the model's device
        if self.resume_from is not None:
            path = self.resume_from
            if saved_by_run(self.run_dir, path) is None:  # a snapshot is the run's: said below, it holds no state
                raise VSLMError(f"--checkpoint {path} is not one of {self.run_dir}'s checkpoints (in "
                                f"{self.run_dir / CHECKPOINTS}, not set aside as .superseded or .corrupt): a run "
                                "resumes from its own, or it would go on from another's weights, optimizer and data")
            weights, state = load_checkpoint(path, "cpu")
        else:
            paths = [p for _, p in list_checkpoints(self.run_dir / CHECKPOINTS)]
            path, weights, state = newest_good(paths, "cpu", warn=self._warn, move_aside=self.dist.is_main)
        check_fits(path, weights, self.model)
        if "optimizer" not in state:
            raise VSLMError(f"cannot resume from {path}: it holds weights only (a snapshot?), not the training "
                            f"state; pick a file in {self.run_dir / CHECKPOINTS}")
        try:
            self.load_state_dict(weights, state)
        except (KeyError, ValueError, RuntimeError) as e:
            raise VSLMError(f"cannot resume from {path}: its training state does not fit this run "
                            f"({str(e).splitlines()[0]})") from None

    def _set_aside_newer(self) -> None:
        """Checkpoints past the step resumed at (those newer than --checkpoint) belong to the steps the
        run now trains again: renamed .superseded, they can neither be resumed from nor rotated out."""
        newer = [p for s, p in list_checkpoints(self.run_dir / CHECKPOINTS) if s > self.step]
        if newer:
            moved = ", ".join(set_aside(p, "superseded").name for p in newer)
            self._warn(f"warning: the run continues from step {self.step}: moved the newer checkpoints aside ({moved})")

    def _warn(self, line: str) -> None:
        if self.dist.is_main:
            print(line, file=sys.stderr)

    def _clock_due(self) -> bool:
        minutes = self.cfg.train.checkpoint_minutes
        return minutes > 0 and time.monotonic() - self.last_checkpoint_time >= 60 * minutes

    def _loop(self) -> dict:
        tc, log = self.cfg.train, self.cfg.logging
        checkpointer = next((cb for cb in self.callbacks if isinstance(cb, Checkpointer)), None)
        # at a step's end the Checkpointer comes last: its checkpoint holds every other callback's state of the
        # step it saves (a user's callback appended to default_callbacks included)
        step_end = [cb for cb in self.callbacks if cb is not checkpointer] + ([checkpointer] if checkpointer else [])
        # the ranks must agree on the steps that read the loss (a collective): rank 0's schedule
        every = self.dist.broadcast(None if checkpointer is None else checkpointer.every)
        self.checkpointing = every is not None  # rank 0 checkpoints: every rank's stop line says so
        checkpoint_due = Checkpointer(every, keep_last=1).due if every is not None else None
        tokens_per_step = tc.batch_size * tc.grad_accum * self.cfg.model.context
        params = [p for p in self.model.parameters() if p.requires_grad]
        window_tokens, window_time = 0, 0.0
        metrics: dict = {"step": self.step}
        self.model.train()
        while self.step < tc.steps:
            started = time.perf_counter()
            lr = lr_at(self.step, tc)
            self.optimizer.set_lr(lr)
            loss_sum = torch.zeros((), device=self.device)
            terms_sum: dict[str, torch.Tensor] = {}
            for micro in range(tc.grad_accum):
                batch = self.next_batch()
                # DDP all-reduces the gradients on the last micro-step only
                last = micro == tc.grad_accum - 1
                with self.ddp.no_sync() if self.ddp is not None and not last else contextlib.nullcontext():
                    with self._autocast():
                        loss, terms = self.objective(self.forward, batch)
                    (loss / tc.grad_accum).backward()
                loss_sum += loss.detach()
                for k, v in terms.items():
                    terms_sum[k] = terms_sum.get(k, 0.0) + v.detach().float()
            if tc.grad_clip > 0:
                grad_norm = torch.nn.utils.clip_grad_norm_(params, tc.grad_clip)
            else:
                grad_norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params if p.grad is not None]))
            for cb in self.callbacks:
                cb.on_before_update(self)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
            eval_due = self.step == tc.steps or (tc.eval_every > 0 and self.step % tc.eval_every == 0)
            ckpt_due = checkpoint_due is not None and checkpoint_due(self.step, tc.steps)
            if not self.dist.enabled or self.step % log.log_every == 0:
                # a signal stops the run and the clock adds a checkpoint; under DDP the ranks agree on logged steps
                stopping, clock = self.dist.any_of([self.stop_signal is not None,
                                                    checkpoint_due is not None and self._clock_due()], self.device)
                if stopping:
                    if self.stop_signal is None:  # another rank was signalled (its copy may reach this one yet)
                        self.stop_signal, self.stop_time = signal.SIGTERM, time.monotonic()
                    self.request_stop()
                if checkpoint_due is not None:
                    ckpt_due = ckpt_due or stopping or clock
            self.checkpoint_now = ckpt_due
            # reading the loss syncs with the device: only on logged, eval and checkpoint steps
            read = self.step % log.log_every == 0 or eval_due or ckpt_due
            # weight diagnostics measure this step's update: logged on their step, or measured against a stale copy
            read = read or (log.diagnostics_every > 0 and self.step % log.diagnostics_every == 0)
            read = read or (self.stop_requested and not self.dist.enabled)  # the last step is logged
            if read and self.device.type == "cuda":
                torch.cuda.synchronize()  # the window's time then includes the device's queued work
            elapsed = time.perf_counter() - started
            self.train_time_s += elapsed
            window_time += elapsed
            window_tokens += tokens_per_step
            metrics = {"step": self.step}
            if read:
                loss_value = self.dist.mean(loss_sum).item() / tc.grad_accum
                if not math.isfinite(loss_value):
                    self._diverged(f"loss is {loss_value}")
                metrics.update(
                    loss=round(loss_value, 6), lr=lr, grad_norm=round(float(grad_norm), 6),
                    tokens=self.step * tokens_per_step, tokens_per_s=round(window_tokens / window_time, 1),
                    train_time_s=round(self.train_time_s, 3), **peak_memory_mb(self.device),
                )
                for k, v in terms_sum.items():  # the objective's own terms
                    metrics[k] = round(self.dist.mean(v).item() / tc.grad_accum, 6)
                window_tokens, window_time = 0, 0.0
            if eval_due:
                metrics.update(self.evaluate())
            poisoned = False
            if ckpt_due and self.dist.enabled:
                self.rank_rng = self.dist.gather(self._rng_of_this_rank())
                # rank 0's checkpointer stops a run whose state is not finite (check_finite), after the step is
                # logged: the others see it here and stop with it, rather than wait at the barrier below for
                # torchrun to kill them
                poisoned = self.dist.any(bool(nonfinite(self.weights(), {"optimizer": self.optimizer.state_dict()})),
                                         self.device)
                if poisoned and not self.dist.is_main:
                    self._diverged("weights or optimizer state are not finite (rank 0 names them)")
            for cb in step_end:
                cb.on_step_end(self, metrics)
            if poisoned:  # (rank 0's checkpointer has stopped it if its own state was the one not finite)
                self._diverged("another process's weights or optimizer state are not finite")
            if ckpt_due:
                self.last_checkpoint_time = time.monotonic()
                self.dist.barrier()  # the checkpoint is complete before any rank moves on
            if (read or not self.dist.enabled) and self.dist.any(self.stop_requested, self.device):
                break
        return metrics

    def _diverged(self, what: str) -> None:
        """Stop the run: `what` (a loss, a weight) is not finite. Names the newest checkpoint that is."""
        paths = [p for _, p in list_checkpoints(self.run_dir / CHECKPOINTS)]
        try:
            kept = f"the last good checkpoint is {newest_good(paths, warn=lambda _: None)[0]}"
        except VSLMError:
            kept = "no good checkpoint was written yet"
        if self.dist.is_main:  # said in the folder too: its report, an export and a resume read it there
            update_summary(self.run_dir, diverged={"step": self.step, "what": what})
        raise TrainingDiverged(f"{what} at step {self.step}: training stopped; {kept}")

    def check_finite(self, weights: dict[str, torch.Tensor], state: dict) -> None:
        """Called before a checkpoint is written: a non-finite weight or optimizer state stops the run
        instead (the loss is read before the update, the checkpoint after it)."""
        bad = nonfinite(weights, state)
        if bad:
            self._diverged(f"{len(bad)} tensors are not finite ({bad[0]} first)")

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Loss per token and bits per byte on the fixed validation windows. Bits per byte count the
        targets that stand for text (not end-of-text), as nanochat's evaluate_bpb does. With
        train.eval_lengths, also val_loss_xm / val_bpb_xm: windows of m x context tokens, each position
        attending over all of its past (GPT.forward's `extend`), for m = 1 and each multiple, on the same
        long windows (attention is causal: a window's first m x context positions compute what a window of
        that length computes, so the longest windows give every shorter one)."""
        self.model.eval()
        B = self.cfg.train.batch_size // self.dist.world
        C = self.cfg.model.context
        totals = self._scored(self.val_x, self.val_y, B, self.forward, [C])[0].tolist()
        out = {"val_loss": totals[0] / totals[2], "val_bpb": totals[1] / math.log(2) / max(1, totals[3])}
        if self.cfg.train.eval_lengths:
            multiples = [1, *self.cfg.train.eval_lengths]
            rows = max(1, B // long_rows_divisor(self.model, multiples[-1]))
            # the model itself, uncompiled: another shape, and a keyword the compiled module need not take
            bands = self._scored(self.long_x, self.long_y, rows, partial(self.model, extend=True),
                                 [m * C for m in multiples])
            for m, (nll_all, nll_text, n_tokens, n_bytes) in zip(multiples, bands.cumsum(0).tolist(), strict=True):
                out[f"val_loss_x{m}"] = nll_all / n_tokens
                out[f"val_bpb_x{m}"] = nll_text / math.log(2) / max(1, n_bytes)
        self.model.train()
        return {k: round(v, 6) for k, v in out.items()}

    def _scored(self, val_x: torch.Tensor, val_y: torch.Tensor, rows: int, forward, ends: list[int]) -> torch.Tensor:
        """(len(ends), 4) float64: summed loss, summed text loss, tokens and text bytes of the targets at
        positions [ends[i - 1], ends[i]) of these windows (ends ascending, the last at most their length),
        `rows` windows a forward, this rank's share of them, summed over the ranks."""
        sums = torch.zeros(len(ends), 4, dtype=torch.float64)
        shard = slice(self.dist.rank, None, self.dist.world)
        val_x, val_y = val_x[shard].contiguous(), val_y[shard].contiguous()
        for i in range(0, len(val_x), rows):
            x, y = self._to_device(val_x[i : i + rows]), val_y[i : i + rows]
            with self._autocast():
                logits = forward(x)
            nll = F.cross_entropy(logits.float().flatten(0, 1), self._to_device(y).flatten(),
                                  reduction="none").cpu().view(y.shape)
            for band, (lo, hi) in enumerate(zip([0, *ends[:-1]], ends, strict=True)):
                part, targets = nll[:, lo:hi].flatten(), y[:, lo:hi].flatten()
                text_nats, text_bytes = text_nll_and_bytes(part, targets, self.token_bytes)
                sums[band] += torch.tensor([part.sum().item(), text_nats, part.numel(), text_bytes],
                                           dtype=torch.float64)
        if self.dist.enabled:  # each rank scored its share of the windows
            sums = self.dist.sum(sums.to(self.device)).cpu()
        return sums


def long_rows_divisor(model: GPT, length: int) -> int:
    """How many fewer windows a forward takes at `length` times the context: `length` (the same tokens, in
    longer windows) where attention runs fused; length^2 where a block computes its weights explicitly (their
    (rows, heads, T, T) tensor then stays the size it has at the context)."""
    if length == 1:
        return 1
    return length ** 2 if any(spec.attention != "softmax" for spec in model.specs) else length


def text_nll_and_bytes(nll: torch.Tensor, targets: torch.Tensor, token_bytes: torch.Tensor) -> tuple[float, int]:
    """Summed loss (nats) and UTF-8 bytes of the targets that stand for text; bits per byte is
    nats / ln 2 / bytes. Special tokens (end-of-text: 0 bytes) are left out of both."""
    sizes = token_bytes[targets]
    return nll[sizes > 0].sum().item(), int(sizes.sum())
