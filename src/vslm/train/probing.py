"""Probes during training and over a finished run's snapshots, written to `probes.jsonl`.

Each line is one probe step on the run's fixed probe set (the same windows and random sequences at
every step and for every run with the same data and context):

    {"step": 64,
     "position_loss": [T - 1 floats],          loss by token position (vslm.probes.position_loss)
     "position_loss_se": [T - 1 floats],       its bootstrap standard error over windows, per position
     "icl_score": float, "icl_score_se": float, "icl_label": "olsson" | "short-context" | "short-context-tokens",
     "induction": {"loss_first", "loss_second", "loss_first_se", "loss_second_se",  (se over its sequences)
                   "loss_multiset",                     the best order-blind loss on the second copy
                   "prefix_matching": [[per head] per depth],
                   "repeat_frequency", "repeat_reliability",       of the training text after a 1-token
                   "repeat_frequency_3", "repeat_reliability_3"},  and a 3-token match (repeat_statistics)
     "distribution": {"M1", "M2", "M3", "entropy", "M1_se", "M2_se", "M3_se", "entropy_se",
                      "log_vocab", "unigram_entropy", "bigram_entropy"},
     "windows": N,                             the probe windows the values above were measured on
     "attention": [{"block", "row_sum", "entropy", "entropy_ratio", "sink_fraction"} per depth]}

The probe set: PROBE_WINDOWS (256) validation windows, or every window where the split has fewer, drawn with
a fixed seed (vslm.data.batches.fixed_windows). The loss by position, the ICL score and the distribution
probe read all of them, PROBE_TOKENS tokens per forward pass (one pass serves both); the attention
statistics read the first ATTENTION_WINDOWS (8) of them, as their explicit path costs T^2 per head and
their values are per head, without an se; the induction probe reads its own 8 random repeated sequences
(its losses' se is over those). Where the split has more windows than asked for, their starts are drawn
with replacement, so a window may occur twice (an i.i.d. sample: what the bootstrap assumes).

Standard errors (`_se`): how much each value owes to the choice of windows. Per window w the probe keeps
its loss at every position, nll[w, t], and the distribution probe's per-window quantities (its mean
prediction and its mean KLs and entropy, vslm.probes.distribution_by_window). The bootstrap
(vslm.probes.bootstrap) draws R = 200 sets of N windows with replacement, from a fixed seed (the same
draws at every step and in every run with N windows), recomputes each value from the drawn windows' mean
quantities (the loss curve and the ICL score of that curve; M1 = KL(u || the drawn windows' mean
prediction); M2, M3, entropy as means) and writes the sample std (ddof = 1) over the R draws. For a mean
over windows this is, for large N, the analytic std / sqrt(N). Files written before the se fields existed
have none; readers treat a missing se as unknown.

Cadence: steps 0, 1, 2, 4, 8, ... below `logging.probe_every` (K), then every K steps, and the last.
`probe_every = "auto"` (the default) keeps the log spacing through the whole run: log2(steps) + 2 probe
steps, dense early where the dynamics are fast (docs/BENCHMARKS.md gives what it costs).
NaN is written as null. The time the probes took (building the probe set included) goes into
summary.json as `probe_time_s`, with `probe_fraction` = that time over the training steps' time, both the
whole run's: a resumed run carries them on from its checkpoint.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from vslm.config import RunConfig
from vslm.data.batches import fixed_windows
from vslm.data.shards import Corpus
from vslm.files import write_text
from vslm.model import GPT
from vslm.plain import plain
from vslm.probes import (
    CorpusStats,
    attention_stats,
    bootstrap_se,
    corpus_stats,
    distribution_by_window,
    distribution_summary,
    icl_score,
    induction_probe,
    repeat_statistics,
    resample_counts,
    token_nll,
    unigram_kl,
)
from vslm.progress import quiet
from vslm.train.callbacks import Callback, is_log_spaced, step_of_line
from vslm.train.checkpoint import list_checkpoints, load_checkpoint
from vslm.train.run_folder import SNAPSHOTS, TOKENIZER, corpus_changes, read_run_config, update_summary

if TYPE_CHECKING:
    from vslm.train.trainer import Trainer

PROBES = "probes.jsonl"
PROBE_SEED = 0
STATS_TOKENS = 2_000_000  # corpus statistics from the first tokens of the training split
PROBE_WINDOWS = 256  # validation windows of the probe set (all of them where the split has fewer)
PROBE_TOKENS = 2048  # tokens per forward pass of the probe windows (16 windows of 128): on one CPU thread
# 8-16 demo windows a pass ran 10-20% faster than 64 (activations stay in cache; docs/BENCHMARKS.md) ...
PROBE_LOGITS = 2**24  # ... and fewer where their float32 logits would pass this many (64 MiB): large V
ATTENTION_WINDOWS = 8  # attention statistics on the first probe windows: the explicit path costs T^2 per head
REPEAT_WINDOWS = 256  # training windows the repeat statistics are counted on
REPEAT_MATCHES = {1: "", 3: "_3"}  # tokens matched -> key suffix: 3 for characters, where one says little


@dataclass
class ProbeSet:
    windows: torch.Tensor  # (N, T) validation windows
    stats: CorpusStats
    vocab_size: int
    induction_length: int
    induction_batch: int = 8
    induction_tokens: torch.Tensor | None = None  # ids the induction sequences are drawn from: those in the text
    repeats: dict[str, float] = field(default_factory=dict)  # repeat_statistics of training windows
    icl_short: str = "bands"  # the ICL score under 512 tokens of context (probes.position.icl_score)


def support_ids(tokenizer, characters: str) -> list[int]:
    """The token ids of each of `characters` alone, sorted."""
    return sorted({i for c in characters for i in tokenizer.encode(c)})


def build_probe_set(corpus: Corpus, context: int, vocab_size: int, windows: int = PROBE_WINDOWS,
                    induction_length: int | None = None, induction_support: str | None = None,
                    icl_short: str = "bands") -> ProbeSet:
    """The run's fixed probe set: `windows` validation windows (every one where the split has fewer), the
    corpus statistics and the training text's repeat statistics; the induction probe's copy distance
    (default half the context) and the tokens it draws from (those of the characters `induction_support`,
    else every token the training text has)."""
    x, _ = fixed_windows(corpus.val.tokens, context, windows, PROBE_SEED + 1)
    stats = corpus_stats(np.asarray(corpus.train.tokens[:STATS_TOKENS]), vocab_size)
    if induction_support:
        seen = torch.tensor(support_ids(corpus.tokenizer, induction_support))
    else:
        seen = torch.from_numpy(np.flatnonzero(stats.unigram > 0))
    train, _ = fixed_windows(corpus.train.tokens[:STATS_TOKENS], context, REPEAT_WINDOWS, PROBE_SEED + 2)
    repeats = {f"{key}{suffix}": value for n, suffix in REPEAT_MATCHES.items() if n < context
               for key, value in repeat_statistics(train.numpy(), n).items()}
    return ProbeSet(x, stats, vocab_size, induction_length=induction_length or max(2, context // 2),
                    induction_tokens=seen,
                    repeats=repeats, icl_short=icl_short)


@torch.inference_mode()
def run_probes(model: GPT, probes: ProbeSet) -> dict:
    """Every probe on the probe set, as plain JSON-ready values. Leaves the model's mode as it was."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    nll, by_window = window_measures(model, probes)
    counts = resample_counts(len(nll))  # the same draws for every value: one bootstrap of the windows
    curve = nll.mean(0)  # = position_loss(model, windows)
    if len(curve) >= 10:
        score, label = icl_score(curve, probes.icl_short)
        score_se = float(bootstrap_se(nll, lambda curves: np.array([icl_score(c, probes.icl_short)[0]
                                                                    for c in curves]), counts))
    else:
        score, label, score_se = math.nan, "too-short", math.nan
    distribution = distribution_summary(by_window, probes.stats)
    distribution["M1_se"] = float(bootstrap_se(by_window["probs"], lambda p: unigram_kl(p, probes.stats), counts))
    for key in ("M2", "M3", "entropy"):
        distribution[f"{key}_se"] = float(bootstrap_se(by_window[key], counts=counts))
    generator = torch.Generator().manual_seed(PROBE_SEED)
    out = {
        "position_loss": curve,
        "position_loss_se": bootstrap_se(nll, counts=counts),
        "icl_score": score,
        "icl_score_se": score_se,
        "icl_label": label,
        "induction": {**induction_probe(model, probes.vocab_size, probes.induction_length, probes.induction_batch,
                                        generator, probes.induction_tokens), **probes.repeats},
        "distribution": distribution,
        "windows": len(nll),
        "attention": attention_stats(model, probes.windows[:ATTENTION_WINDOWS].to(device)),
    }
    model.train(was_training)
    return plain(out, digits=6)


def window_measures(model: GPT, probes: ProbeSet) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The per-window quantities the window probes are functions of, PROBE_TOKENS tokens per forward pass:
    nll (N, T - 1) float64, the loss of each window at each position (token_nll), and the distribution
    probe's per-window quantities (distribution_by_window). Call under torch.inference_mode."""
    device = next(model.parameters()).device
    N, T = probes.windows.shape
    batch = max(1, min(PROBE_TOKENS // T, PROBE_LOGITS // (T * probes.vocab_size)))
    nll, parts = [], []
    for i in range(0, N, batch):
        idx = probes.windows[i : i + batch].to(device)  # (b, T)
        logits = model(idx)  # (b, T, V): one forward for the position loss and the distribution probe
        nll.append(token_nll(logits, idx).double().cpu().numpy())
        parts.append(distribution_by_window(logits, idx, probes.stats))
    return np.concatenate(nll), {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}


def probe_interval(cfg: RunConfig) -> int:
    """K of the probe cadence: logging.probe_every; "auto" = past the run's end (log spacing throughout);
    0 = no probes."""
    every = cfg.logging.probe_every
    return cfg.train.steps + 1 if every == "auto" else every


def probe_due(step: int, every: int, last: int) -> bool:
    return (step < every and is_log_spaced(step)) or step % every == 0 or step == last


class ProbeCallback(Callback):
    """Runs the probes at the probe cadence and appends them to probes.jsonl; keeps what it wrote this
    session in `history` (for live views such as TensorBoard)."""

    def __init__(self, every: int):
        self.every = every
        self.history: list[dict] = []
        self.last_step: int | None = None
        self.seconds = 0.0  # the run's time in the probes (earlier sessions' from the checkpoint), set-up included

    def on_train_start(self, trainer: Trainer) -> None:
        started = time.perf_counter()
        log = trainer.cfg.logging
        self.probes = build_probe_set(trainer.corpus, trainer.cfg.model.context, trainer.cfg.model.vocab_size,
                                      log.probe_windows, log.induction_length, log.induction_support, log.icl_short)
        path = trainer.run_dir / PROBES
        lines = path.read_text().splitlines() if path.exists() else []
        kept = [ln for ln in lines if step_of_line(ln) <= trainer.step]  # on resume: up to the checkpoint
        write_text(path, "".join(ln + "\n" for ln in kept))
        self.history = [json.loads(ln) for ln in kept]
        self.file = path.open("a", buffering=1)
        self.seconds += time.perf_counter() - started
        if trainer.step == 0:
            self._write(trainer.step, trainer.model)

    def on_step_end(self, trainer: Trainer, metrics: dict) -> None:
        if probe_due(trainer.step, self.every, trainer.cfg.train.steps):
            self._write(trainer.step, trainer.model)

    def on_train_end(self, trainer: Trainer, metrics: dict) -> None:
        self.file.close()
        trained = trainer.train_time_s  # like the probe time, the whole run's up to here
        update_summary(trainer.run_dir, probe_time_s=round(self.seconds, 3),
                       probe_fraction=round(self.seconds / trained, 4) if trained > 0 else None)

    def state_dict(self) -> dict:  # a resumed run's probe time goes on from its checkpoint's
        return {"probe_time_s": self.seconds}

    def load_state_dict(self, state: dict) -> None:
        self.seconds = float(state.get("probe_time_s", 0.0))  # checkpoints from before 2026-12-04 hold none

    def _write(self, step: int, model: GPT) -> None:
        started = time.perf_counter()
        line = {"step": step, **run_probes(model, self.probes)}
        self.file.write(json.dumps(line) + "\n")
        self.history.append(line)
        self.last_step = step
        self.seconds += time.perf_counter() - started


def probe_snapshots(run_dir: Path, out: Path | None = None, track: Callable = quiet) -> Path:
    """The probes over a finished run's snapshots (steps 0, 1, 2, 4, ...), written to
    `probes-snapshots.jsonl` (or `out`): a study redone without retraining."""
    from vslm.data.shards import prepare_corpus
    from vslm.data.tokenizer import load_tokenizer
    from vslm.errors import VSLMError

    run_dir = Path(run_dir)
    cfg = read_run_config(run_dir)
    out = Path(out) if out else run_dir / "probes-snapshots.jsonl"
    if not out.parent.is_dir():  # said before the probing, not after it
        raise VSLMError(f"cannot write {out}: no folder {out.parent}")
    snapshots = list_checkpoints(run_dir / SNAPSHOTS)
    if not snapshots:  # an empty table would read as "nothing learned"
        why = "train.snapshots is false" if not cfg.train.snapshots else "it has not saved one yet"
        raise VSLMError(f"{run_dir} has no snapshots to probe ({why}); --copying and --induction probe its "
                        "latest checkpoint")
    corpus = prepare_corpus(cfg.data, tokenizer=load_tokenizer(run_dir / TOKENIZER))  # the run's own tokens
    if differ := corpus_changes(run_dir, len(corpus.train.tokens), len(corpus.val.tokens)):  # another probe set
        raise VSLMError(f"cannot probe the snapshots of {run_dir}: its corpus reads as other tokens "
                        f"({'; '.join(differ)}), so the probe set would not be the one it trained with")
    probes = build_probe_set(corpus, cfg.model.context, cfg.model.vocab_size,
                             cfg.logging.probe_windows, cfg.logging.induction_length,
                             cfg.logging.induction_support, cfg.logging.icl_short)
    model = GPT.for_weights(cfg.model)
    lines = []
    for step, path in track(snapshots, f"probing the snapshots of {run_dir}"):
        weights, _ = load_checkpoint(path)
        model.load_state_dict(weights)
        lines.append(json.dumps({"step": step, **run_probes(model, probes)}))
    write_text(out, "".join(ln + "\n" for ln in lines))
    return out


def snapshots_table(path: Path) -> str:
    """probe_snapshots' file as readable lines, a row per snapshot: the ICL score, KL(u || mean prediction),
    the induction probe's two copies and the best prefix-matching head (the full records are the file)."""
    def num(value) -> float:  # the file writes NaN as null (a context under 11 tokens has no ICL score)
        return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else math.nan

    lines = ["   step  ICL score  KL(u||p)  1st copy  2nd copy  prefix matching"]
    for line in Path(path).read_text().splitlines():
        p = json.loads(line)
        ind, dist = p.get("induction") or {}, p.get("distribution") or {}
        heads = [h for layer in ind.get("prefix_matching", []) for h in map(num, layer) if not math.isnan(h)]
        icl = num(p.get("icl_score"))
        lines.append(f"{p['step']:>7,}  {'nan' if math.isnan(icl) else f'{icl:+.3f}':>9}  {num(dist.get('M1')):>8.3f}"
                     f"  {num(ind.get('loss_first')):>8.3f}  {num(ind.get('loss_second')):>8.3f}"
                     f"  {max(heads, default=math.nan):>15.3f}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------- copying

COPYING = ("names", "lists", "tokens", "songs")
HELD_OUT_SEED = 4242  # stories no training run draws (data.seed is 0 unless changed)
TOKEN_BYTES = 400_000  # --copying tokens: held-out stories read
COPYING_KINDS = {  # the kinds of scored token of each measure, the copyable one second, with their labels
    "names": (("first", "first occurrence"), ("repeat", "repeat")),
    "lists": (("new", "the line's new item"), ("repeated", "repeated from the line before, in the window")),
    "tokens": (("first", "first occurrence"), ("seen", "already in the window")),
    "songs": (("first", "first rendition"), ("repeat", "repeat")),
}
COPYING_WHAT = {
    "names": "the letters of a name after its first",
    "lists": "the first letter of a list item",
    "tokens": "rare targets (unigram below 1 / V)",
    "songs": "a song's tokens after its first",
}


def probe_induction(run_dir: Path, length: int, support: str | None = None, sequences: int = 64,
                    checkpoint: Path | None = None) -> dict:
    """The induction probe (vslm.probes.induction_probe) of a run at copy distance `length`: `sequences`
    random sequences of `length` tokens written twice, drawn from the tokens of the text `support` (each
    character's token; None: the run's logging.induction_support, else every token its training text
    has, as during training), generator seed PROBE_SEED. A corpus whose separators end what can be
    copied (the newline of data.source=repeats) is probed with the letters only. Plain values: the
    losses of both copies with their standard errors, the order-blind bound, prefix matching per depth
    and head."""
    from vslm.errors import UsageError
    from vslm.train.run_folder import load_run

    cfg, model, tok = load_run(Path(run_dir), Path(checkpoint) if checkpoint else None)
    if isinstance(length, bool) or not hasattr(length, "__index__") or not 2 <= length <= cfg.model.context // 2:
        raise UsageError(f"--induction {length}: must be 2 to half the run's context ({cfg.model.context // 2})")
    support = support or cfg.logging.induction_support
    if support:
        ids = support_ids(tok, support)
    else:
        from vslm.data.shards import prepare_corpus

        tokens = prepare_corpus(cfg.data, tokenizer=tok).train.tokens  # the run's own tokens, whatever made them
        stats = corpus_stats(np.asarray(tokens[:STATS_TOKENS]), cfg.model.vocab_size)
        ids = np.flatnonzero(stats.unigram > 0).tolist()
    generator = torch.Generator().manual_seed(PROBE_SEED)
    result = induction_probe(model, cfg.model.vocab_size, length, sequences, generator, torch.tensor(ids))
    return plain({"run": str(run_dir), "length": length, "sequences": sequences, "support": support or "the text's",
                  **result})


def probe_copying(run_dir: Path, kind: str, invented: bool = False, far: bool = False, stories: int = 300,
                  windows: int | None = None, batch_size: int = 32, checkpoint: Path | None = None) -> dict:
    """A copying measure (vslm.probes.copying) of a run on held-out text (stories of HELD_OUT_SEED):
    names (character runs): `windows` (300) windows of `stories` stories, with invented names if asked;
    lists (character runs): `stories` stories with a packing list each; songs: `stories` stories with a
    song (sung again far if asked); tokens: `windows` (200) windows of TOKEN_BYTES of plain stories.
    Returns plain values: the run, the measure, the held-out text's settings, and CopyResult's fields
    (loss and count per kind, attention per depth and head, copies, uniform, skipped)."""
    from vslm.config import CopyingConfig
    from vslm.data import copying as corpus
    from vslm.data.stories import iter_stories
    from vslm.errors import VSLMError
    from vslm.probes import copying
    from vslm.train.run_folder import load_run

    if kind not in COPYING:
        raise VSLMError(f"unknown copying measure '{kind}': one of {', '.join(COPYING)}")
    cfg, model, tok = load_run(Path(run_dir), Path(checkpoint) if checkpoint else None)
    if kind == "tokens":
        windows = windows or 200
        ids = tok.encode("\n\n".join(iter_stories(HELD_OUT_SEED, n_bytes=TOKEN_BYTES)))
        result = copying.token_copying(model, ids, cfg.model.vocab_size, windows, batch_size)
        held = {"seed": HELD_OUT_SEED, "bytes": TOKEN_BYTES, "windows": windows}
    else:
        options = CopyingConfig(names="invented" if invented else "common", lists=int(kind == "lists"),
                                songs=("far" if far else "near") if kind == "songs" else "none")
        texts, names = corpus.held_out(HELD_OUT_SEED, options, stories)
        held = {"seed": HELD_OUT_SEED, "stories": stories, "copying": options.model_dump(mode="json")}
        if kind == "songs":
            result = copying.song_copying(model, texts, corpus.SONG, tok.encode, batch_size)
        elif kind == "lists":
            result = copying.list_copying(model, "\n\n".join(texts), corpus.LIST_LINE, tok.encode, batch_size)
        else:
            windows = windows or 300
            result = copying.name_copying(model, "\n\n".join(texts), names, tok.encode, windows, batch_size)
            held["windows"] = windows
    return plain({"run": str(run_dir), "copying": kind, "held_out": held, **result.to_dict()})


def copying_table(result: dict) -> str:
    """A probe_copying result as readable lines: the losses, then the attention to the copy source."""
    kind = result["copying"]
    held = json.dumps(result["held_out"])
    lines = [f"{result['run']}: copying {kind}, {COPYING_WHAT[kind]}, on held-out text {held}"]
    for key, label in COPYING_KINDS[kind]:
        loss = result["loss"][key]
        lines.append(f"  {label:<30} {'-' if loss is None else f'{loss:.3f}':>7} nats  ({result['count'][key]} tokens)")
    if result["skipped"]:
        lines.append(f"  {result['skipped']} windows left out (too long for the context, or tokenized differently)")
    if not result["copies"]:
        lines.append("  no copies to read the attention at")
        return "\n".join(lines)
    lines.append(f"  attention to the copy source per depth and head ({result['copies']} queries; "
                 f"spread evenly: {result['uniform']:.3f}):")
    heads = max(len(row) for row in result["attention"])
    lines.append("    depth " + "".join(f"{f'head {h}':>8}" for h in range(heads)))
    for d, row in enumerate(result["attention"]):
        lines.append(f"    {d:>5} " + "".join(f"{a:>8.3f}" for a in row))
    return "\n".join(lines)
