"""A run folder's layout, its lock, and loading a trained model back from it.

    runs/<name>/
      config.toml        the resolved config
      summary.json       parameters, FLOPs per token, device, tokenizer and corpus sizes; probe time;
                         config_changes: what each resume changed ({"step", "train.steps": [old, new]})
      tokenizer.json     the tokenizer
      metrics.jsonl      one JSON object per logged step ({"step", "loss", ...}; eval adds "val_loss")
      checkpoints/       step_NNNNNNNN.safetensors, the last `keep_last`, full training state (a resume
                         renames one it passes over .corrupt, and those past the step it resumes at .superseded)
      snapshots/         step_NNNNNNNN.safetensors at steps 0, 1, 2, 4, 8, ... (weights only)
      .lock              held by the process training in this folder
"""

from __future__ import annotations

import json
import math
import re
import shutil
import socket
import tomllib
from collections.abc import Sequence
from pathlib import Path

import torch
from filelock import FileLock, Timeout

from vslm.config import DEVICE, DataConfig, ModelConfig, RunConfig, validate
from vslm.data.registry import GENERATED, split_name
from vslm.data.sources import open_source
from vslm.data.tokenizer import Tokenizer, load_tokenizer
from vslm.errors import ConfigError, UsageError, VSLMError
from vslm.files import LOCK, LOCK_HOST, read_json_object, read_jsonl, write_text
from vslm.model import GPT, parameter_count, training_flops_per_token
from vslm.train.checkpoint import (
    atomic_write,
    check_fits,
    list_checkpoints,
    load_checkpoint,
    newest_good,
    nonfinite,
)

CONFIG = "config.toml"
TOKENIZER = "tokenizer.json"
SUMMARY = "summary.json"
METRICS = "metrics.jsonl"
CHECKPOINTS = "checkpoints"
SNAPSHOTS = "snapshots"


def nan_for_null(row: dict) -> dict:
    """A logged row as numbers: null (how metrics.jsonl and the result files write a value that was not finite,
    strict JSON) read back as NaN, as the run had it."""
    return {k: math.nan if v is None else v for k, v in row.items()}


def read_metrics(run_dir: Path) -> list[dict]:
    """The run's metrics.jsonl (files.read_jsonl: a line cut short by a kill is skipped), nulls as NaN."""
    return [nan_for_null(row) for row in read_jsonl(Path(run_dir) / METRICS, warn=lambda line: None)]


def read_summary(run_dir: Path) -> dict:
    """The run's summary.json; {} where it is missing or does not read (what it holds is derived, and those
    reading it fall back without it)."""
    return read_json_object(Path(run_dir) / SUMMARY)


def same_text_elsewhere(folder: Path, data: DataConfig) -> bool:
    """Whether `data.source`, a path, holds the very text the run in `folder` began with, wherever it lies: the
    run folder moved with the data a reader or capacity run keeps in it, an experiment's folder with its worlds,
    or the data file moved. The run's data_identity says (the files' names, sizes, modification times and
    contents, which `mv`, `cp -a` and `rsync -a` keep); a corpus name or a generated source is never another
    path to the same text."""
    identity = read_summary(folder).get("data_identity")
    source = data.source
    if identity is None or source in GENERATED or split_name(source)[0] is not None or \
            not Path(source).expanduser().exists():
        return False
    try:
        return open_source(data).identity == identity
    except VSLMError:  # a folder of no text, say: not the run's text (what reads it says why)
        return False


def schedule_moved(folder: Path, model: ModelConfig, params: int, flops_per_token: float) -> str | None:
    """Why the model `model` builds now is not the one the run in `folder` began with, for a schedule whose layout
    changed (ModelConfig.peaked_schedule): its parameters or FLOPs per token then (summary.json) and now
    differ. None where they agree, the schedule is another, or the run folder does not say."""
    if not model.peaked_schedule():
        return None
    began = read_summary(folder)
    if not isinstance(began.get("flops_per_token"), int | float):
        return None
    if began.get("params") == params and began["flops_per_token"] == flops_per_token:
        return None
    return (f"its small-large-small or large-small-large model.schedule was laid out otherwise when it began "
            f"(before 2026-12-07 an even count of blocks never reached the range's far end): "
            f"{began.get('params'):,} parameters and {began['flops_per_token']:,} FLOPs per token then, {params:,} "
            f"and {flops_per_token:,} now")


def layout_moved(folder: Path, model: ModelConfig) -> str | None:
    """schedule_moved for the model `model` builds, measured on the meta device (shapes only: no memory, no
    weights read); None at once for a config no layout change touched."""
    if not model.peaked_schedule():
        return None
    with torch.device("meta"):
        shapes = GPT(model)
    return schedule_moved(folder, model, parameter_count(shapes), training_flops_per_token(shapes))


def update_summary(run_dir: Path, **fields) -> None:
    """Adds fields to the run's summary.json (written by the trainer when the run starts)."""
    summary = read_summary(run_dir)  # a damaged one: its derived numbers are written anew at the next start
    atomic_write(Path(run_dir) / SUMMARY, lambda f: f.write((json.dumps(summary | fields, indent=1) + "\n").encode()))


class RunLock:
    """An exclusive lock on a run folder for as long as a process trains in it, taken at once or refused.

    `filelock`'s OS lock (flock on POSIX, msvcrt.locking on Windows) is released by the OS when the
    process dies, even by SIGKILL: no stale locks."""

    def __init__(self, folder: Path):
        self.path = Path(folder) / LOCK
        self._lock = FileLock(str(self.path), timeout=0.5)  # a moment's wait: `vslm watch` may be looking at it

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire()
        except Timeout:
            raise VSLMError(f"run folder {self.path.parent} is in use by another process") from None
        write_text(self.path.with_name(LOCK_HOST), socket.gethostname() + "\n")  # for in_use on another machine
        return self

    def __exit__(self, *exc) -> None:
        self._lock.release()


def check_not_in_use(folder: Path) -> None:
    """Refuses, in one line, a folder that another process trains in now (before any other judgement of
    it: a live run's folder is never called deletable)."""
    if (Path(folder) / LOCK).exists():
        with RunLock(folder):
            pass


def before_first_checkpoint(saved: RunConfig, folder: Path) -> str:
    """Why a new run into a folder without a checkpoint is refused, and what to do instead."""
    tc, due = saved.train, []
    if tc.checkpoint_every:
        due.append(f"every {tc.checkpoint_every:,} steps")
    if tc.checkpoint_minutes:
        due.append(f"every {tc.checkpoint_minutes:g} minutes")
    return (f"it stopped before its first checkpoint (train.checkpoint_every/checkpoint_minutes: "
            f"{' or '.join(due) or 'at the end'}); `vslm train --resume --out {folder}` (resume=True in Python) "
            "trains it again from step 0, or train into another --out")


def never_checkpointed(folder: Path, saved: RunConfig) -> bool:
    """Whether the run in `folder` provably never wrote a checkpoint: nothing at all in its checkpoints folder
    (no file set aside as corrupt or superseded), and its last logged step and training time short of the first
    checkpoint train.checkpoint_every and train.checkpoint_minutes would have written. A run whose
    checkpoints were removed, or one that finished, is not such a run."""
    found = Path(folder) / CHECKPOINTS
    if found.is_dir() and any(found.iterdir()):
        return False
    rows = read_jsonl(Path(folder) / METRICS, warn=lambda line: None)  # a line cut by a kill: skipped
    step = max((row["step"] for row in rows), default=0)
    seconds = max((t for row in rows if isinstance(t := row.get("train_time_s"), int | float)), default=0.0)
    tc = saved.train
    return (step < tc.steps and (not tc.checkpoint_every or step < tc.checkpoint_every)
            and (not tc.checkpoint_minutes or seconds < tc.checkpoint_minutes * 60))


def clear_run_folder(folder: Path, keep: Sequence[str] = ()) -> None:
    """Everything in a run folder but its lock (held by the caller) and the names in `keep` removed; the folder
    itself stays (it may be a link to other storage)."""
    for path in Path(folder).iterdir():
        if path.name in (LOCK, LOCK_HOST, *keep):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def no_checkpoint_yet(folder: Path) -> str | None:
    """before_first_checkpoint's words for a run folder with a readable config and no checkpoint, else None."""
    if list_checkpoints(Path(folder) / CHECKPOINTS):
        return None
    try:
        saved = read_run_config(folder)
    except VSLMError:  # no config, or one that does not read: not a run that a resume would take
        return None
    if never_checkpointed(folder, saved):
        return before_first_checkpoint(saved, folder)
    return (f"it has no checkpoint to continue from, though it trained past its first one (set aside as *.corrupt, "
            f"or removed, in {Path(folder) / CHECKPOINTS}); train into another --out")


def holds_run(folder: Path) -> bool:
    """Whether a run has started in folder (its config, metrics or checkpoints are there)."""
    return any((Path(folder) / name).exists() for name in (CONFIG, METRICS, CHECKPOINTS))


def refuse_a_run_as_collection(folder: Path, what: str, flag: str = "--out") -> None:
    """Refuses (VSLMError) a folder of runs (an experiment's, a sweep's: `what`) where `folder` holds a training
    run: its runs and results would go in beside the run's files, and its report.html replace the run's."""
    if holds_run(folder):
        raise VSLMError(f"{flag} {folder} holds a training run (its {CONFIG}, {METRICS} or {CHECKPOINTS}/): {what} "
                        f"writes a folder of runs of its own; pass another {flag}")


def refuse_a_run_folder(folder: Path, how_to_continue: str) -> None:
    """Refuses (VSLMError) a new run into a folder that holds one: with `how_to_continue` (the words after
    the folder, which differ between `vslm train` and `vslm demo`), or, where no checkpoint was written,
    with why a resume cannot continue it. The lock is the caller's to judge first (check_not_in_use)."""
    if not holds_run(folder):
        return
    if (why := no_checkpoint_yet(folder)) is not None:
        raise VSLMError(f"{folder} already holds a run that {why.removeprefix('it ')}")
    raise VSLMError(f"{folder} already holds a run{how_to_continue}")


def read_run_config(folder: Path) -> RunConfig:
    """The run's config.toml, validated; a missing, unreadable or invalid one is a one-line error naming it."""
    path = Path(folder) / CONFIG
    if not path.is_file():
        raise VSLMError(f"{folder} is not a run folder (no {CONFIG})")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise VSLMError(f"{path} is not valid TOML: {e}") from None
    try:
        return validate(raw, saved=True)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def corpus_changes(folder: Path, train_tokens: int, val_tokens: int, tokenizer: Tokenizer | None = None) -> list[str]:
    """How the run's corpus, prepared now, differs from the one it began with (summary.json's token counts, and
    the run's tokenizer.json against `tokenizer`, the one the corpus is prepared with now): ["train 1,000 then,
    1,200 now", ...]; [] when they agree or the run folder does not say."""
    began = read_summary(folder)
    now = {"train_tokens": train_tokens, "val_tokens": val_tokens}
    differ = [f"{key.split('_')[0]} {began[key]:,} then, {now[key]:,} now" for key in now
              if isinstance(began.get(key), int) and began[key] != now[key]]
    if tokenizer is not None and (Path(folder) / TOKENIZER).is_file():  # same counts, other ids: a char renamed
        try:
            then = load_tokenizer(Path(folder) / TOKENIZER)
        except VSLMError:
            return differ
        if (change := tokenizer_change(then, tokenizer)) is not None:
            differ.append(change)
    return differ


def tokenizer_change(then: Tokenizer, now: Tokenizer) -> str | None:
    """How two tokenizers differ, in corpus_changes' words (characters '’' then, "'" now: those of one
    vocabulary only); None if they are the same (their to_dict() agree)."""
    a, b = then.to_dict(), now.to_dict()
    if a == b:
        return None
    if a["kind"] != b["kind"]:
        return f"tokenizer {a['kind']} then, {b['kind']} now"
    if a["kind"] == "char" and a["chars"] != b["chars"]:
        lost, gained = ([c for c in x if c not in y] for x, y in ((a["chars"], b["chars"]), (b["chars"], a["chars"])))
        return f"characters {_listed(lost)} then, {_listed(gained)} now (a char vocabulary's ids shift)"
    if a["kind"] == "char":
        return f"end-of-text token {'then, none now' if a['eos'] else 'none then, one now'}"
    return f"{a['kind']} vocabulary ({then.vocab_size:,} tokens) then, another ({now.vocab_size:,} tokens) now"


def _listed(chars: list[str], most: int = 5) -> str:
    if not chars:
        return "none"
    return " ".join(map(repr, chars[:most])) + (f" (+{len(chars) - most} more)" if len(chars) > most else "")


# what mends a run folder that data_limit_left_out finds, trained with data.max_bytes = none before 2026-12-06
OLD_NO_LIMIT = ("its config.toml gives no data.max_bytes, which reads as 8 MB; a run folder written before "
                '2026-12-06 with data.max_bytes = none lost it: add max_bytes = "none" under [data] there')


def data_limit_left_out(folder: Path) -> bool:
    """Whether the run's config.toml gives neither data.max_bytes nor data.max_tokens, so that it reads the
    8 MB default. Run folders written before 2026-12-06 with data.max_bytes = none read this way: the
    config dump left "no limit" out."""
    try:
        data = tomllib.loads((Path(folder) / CONFIG).read_text(encoding="utf-8")).get("data", {})
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
        return False
    return isinstance(data, dict) and "max_bytes" not in data and "max_tokens" not in data


def latest_checkpoint(folder: Path) -> Path:
    """The run's newest checkpoint, or its newest snapshot when it has no checkpoint."""
    return _saved(folder)[-1]


def saved_by_run(folder: Path, path: Path) -> str | None:
    """Which of the run's own files `path` is: "checkpoint" (RUN/checkpoints) or "snapshot" (RUN/snapshots);
    None for another run's file, or one set aside (.superseded, .corrupt), which no command takes as the run's."""
    path = Path(path).resolve()
    for kind, sub in (("checkpoint", CHECKPOINTS), ("snapshot", SNAPSHOTS)):
        if any(p.resolve() == path for _, p in list_checkpoints(folder / sub)):
            return kind
    return None


def _in_run(folder: Path, path: Path) -> bool:
    """Whether `path` is one of the run's files: a checkpoint or snapshot (saved_by_run, which follows a
    checkpoints/ folder linked to other storage), or any file under the run folder, set aside ones too."""
    return (saved_by_run(folder, path) is not None or path.absolute().is_relative_to(folder.absolute())
            or path.resolve().is_relative_to(folder.resolve()))


def _saved(folder: Path) -> list[Path]:
    found = list_checkpoints(folder / CHECKPOINTS) or list_checkpoints(folder / SNAPSHOTS)
    if not found:
        raise VSLMError(f"run folder {folder} has no checkpoint yet")
    return [p for _, p in found]


def load_run(folder: Path, checkpoint: Path | None = None, device: str = "cpu") -> tuple[RunConfig, GPT, Tokenizer]:
    """The config, the model and the tokenizer of a run: at the checkpoint given, else at its newest
    checkpoint (or snapshot) that reads and holds finite weights (a newer one passed over is named
    in a one-line warning on stderr). device: cpu, cuda, cuda:N, mps or auto (a ConfigError if absent here)."""
    return load_run_at(folder, checkpoint, device)[:3]


def load_run_at(folder: Path, checkpoint: Path | None = None,
                device: str = "cpu") -> tuple[RunConfig, GPT, Tokenizer, Path]:
    """load_run, and the checkpoint or snapshot file the weights came from (commands say which they used)."""
    folder = Path(folder)
    cfg = read_run_config(folder)
    device = str(device_of(str(device), "device="))  # a device this machine lacks is named, not the checkpoints
    if checkpoint is not None and not Path(checkpoint).is_file():  # an argument naming no file: as for --resume
        raise UsageError(f"checkpoint {checkpoint}: no such file (the run's checkpoints are in "
                         f"{folder / CHECKPOINTS})")
    if checkpoint is not None and not _in_run(folder, Path(checkpoint)):
        raise VSLMError(f"checkpoint {checkpoint} is not in {folder}: that run's tokenizer and config would be "
                        "applied to another run's weights (the same shapes, other token ids); give the run it "
                        "belongs to")
    if checkpoint is not None:
        weights, _ = load_checkpoint(checkpoint, device)
        if bad := nonfinite(weights):  # what newest_good passes over, asked for by name: refused
            raise VSLMError(f"checkpoint {checkpoint} holds non-finite values ({len(bad)} tensors, {bad[0]} first): "
                            "its numbers would be NaN; give another (the run's checkpoints are in "
                            f"{folder / CHECKPOINTS})")
    else:
        checkpoint, weights, _ = newest_good(_saved(folder), device)
    model = GPT.for_weights(cfg.model).to(device)
    if cfg.model.peaked_schedule() and (why := schedule_moved(folder, cfg.model, parameter_count(model),
                                                               training_flops_per_token(model))):
        raise VSLMError(f"{folder}: {why}; its weights are of another model than its config builds now")
    check_fits(checkpoint, weights, model)
    model.load_state_dict(weights)
    model.eval()
    return cfg, model, load_tokenizer(folder / TOKENIZER), Path(checkpoint)


def device_of(name: str, setting: str = "train.device=") -> torch.device:
    """The torch device `name` (auto, cpu, mps, cuda, cuda:N) names, if this machine has it; else a ConfigError
    that names the setting it came from (`setting`: "train.device=", or a command's "--device ")."""
    if re.fullmatch(DEVICE, name) is None:
        raise ConfigError(f"{setting}{name}: not a device (auto, cpu, cuda, cuda:N or mps)")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"{setting}{name} but CUDA is not available here ({setting}auto runs on "
                              "the CPU where there is no GPU)")
        index = int(name.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise ConfigError(f"{setting}{name} but this machine has {torch.cuda.device_count()} CUDA devices")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"{setting}mps but MPS is not available here")
    return torch.device(name)
