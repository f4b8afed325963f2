"""`vslm demo`: a tour of the lab in about two minutes on a laptop CPU.

Trains the `demo` config (a ~1M-parameter character-level GPT) on the embedded children's stories,
then shows what was trained, how fast, and what it learned: the loss against the levels a model
reaches by guessing uniformly and by knowing only letter frequencies, and samples.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from vslm.config import RunConfig, load_config
from vslm.data.shards import max_bytes_note, split_note
from vslm.report import write_report
from vslm.train.callbacks import samples_of
from vslm.train.checkpoint import list_checkpoints
from vslm.train.probing import PROBES
from vslm.train.run_folder import CHECKPOINTS, check_not_in_use, read_metrics, refuse_a_run_folder
from vslm.train.trainer import Trainer


def free_path(base: Path) -> Path:
    """base, or base-2, base-3, ... (plan-2.toml for plan.toml): the first that does not exist (a demo never
    overwrites a run, a plan never an earlier plan)."""
    path, n = base, 2
    while path.exists():
        path = base.with_name(f"{base.stem}-{n}{base.suffix}")
        n += 1
    return path


def unigram_entropy(tokens: np.ndarray, vocab: int) -> float:
    counts = np.bincount(np.asarray(tokens[:2_000_000], dtype=np.int64), minlength=vocab).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


OPTIMIZERS = {"adamw": "AdamW", "muon": "Muon", "tangent": "tangent descent"}


def _blocks(m) -> str:
    """The blocks as built (ModelConfig.block_specs): '4 blocks of width 32, 2 heads', or their ranges where they
    differ, and how many are unique where blocks are shared (model.width and heads are defaults a block record
    or a schedule may override everywhere)."""
    specs, order = m.block_specs(), m.depth_order()

    def span(values: list[int]) -> str:
        return f"{min(values)}" if min(values) == max(values) else f"{min(values)}-{max(values)}"

    shared = f" ({len(specs)} unique)" if len(specs) < len(order) else ""
    return (f"{len(order)} blocks{shared} of width {span([s.width for s in specs])}, "
            f"{span([s.heads for s in specs])} heads")


def start_training(cfg: RunConfig, out: Path, console: Console, what: str = "", **trainer_args) -> Trainer:
    """The Trainer of `cfg` in `out`, with the header `vslm demo` and `vslm train` print before the first
    step: the corpus (what it is, sizes, tokenizer, how long it took), the model (parameters, shape, FLOPs
    per token) and the training (steps, tokens, optimizer, schedule). Under torchrun only rank 0 speaks."""
    started = time.perf_counter()

    def preparing() -> None:  # called by the trainer on rank 0, once the run folder is judged usable
        nonlocal started
        console.print(f"Preparing the corpus {what or cfg.data.source} ...", highlight=False, markup=False,
                      soft_wrap=True)
        started = time.perf_counter()

    trainer = Trainer(cfg, out, on_prepare=preparing, **trainer_args)
    if not trainer.dist.is_main:
        return trainer
    corpus, m, tc = trainer.corpus, trainer.cfg.model, trainer.cfg.train
    console.print(
        f"  {corpus.meta['documents']:,} document{'s' * (corpus.meta['documents'] != 1)}, "
        f"{corpus.meta['train_tokens']:,} training and "
        f"{corpus.meta['val_tokens']:,} validation tokens, a {corpus.tokenizer.kind} tokenizer of "
        f"{corpus.tokenizer.vocab_size:,} symbols ({'cached' if corpus.cache_hit else 'built'} in "
        f"{time.perf_counter() - started:.1f} s)", highlight=False, soft_wrap=True)
    for note in (max_bytes_note(corpus.meta, trainer.cfg.data.max_bytes),  # a source cut short, or a validation
                 split_note(corpus.meta, trainer.cfg.data.val_fraction)):  # split far above its share: said
        if note:
            console.print(note, highlight=False, markup=False, soft_wrap=True)
    console.print(
        f"Model: a GPT of {trainer.params:,} parameters: {_blocks(m)}, "
        f"{m.position} positions, {m.normalisation()}, {m.mlp} MLP, context {m.context}; "
        f"{trainer.flops_per_token / 1e6:.1f} MFLOPs per training token", highlight=False, soft_wrap=True)
    if trainer.origin and "hf_folder" in trainer.origin:  # --init-from-hf: not the config's model, nor from scratch
        console.print(f"  its architecture and weights from the transformers checkpoint {trainer.origin['hf_folder']}",
                      highlight=False, markup=False, soft_wrap=True)
    if why := m.blind():
        console.print(f"note: {why}", highlight=False, soft_wrap=True)
    tokens = tc.steps * tc.batch_size * tc.grad_accum * m.context
    # a short trial run of a config made for longer ones: say so, the curve it draws is all warmup
    short = (f" (its warmup of {tc.warmup:,} steps outlasts the run: the learning rate never reaches "
             f"train.lr={tc.lr:g})") if tc.warmup >= tc.steps else ""
    found = list_checkpoints(out / CHECKPOINTS) if trainer.resume else []
    if trainer.resume_from is not None:  # the checkpoint asked for, if it is one of the run's
        found = [(step, path) for step, path in found if Path(path).resolve() == Path(trainer.resume_from).resolve()]
    # the newest checkpoint (or the one asked for); where it does not read, the trainer warns and takes an older one
    again = (f" (resumed from its checkpoint at step {found[-1][0]:,}, {Path(found[-1][1]).name})" if found
             else " (resumed)" if trainer.resume else "")
    if found and found[-1][0] == tc.steps:  # nothing to train from it (an unreadable one: the trainer says so)
        console.print(f"Resuming {out} from its checkpoint at step {tc.steps:,} = train.steps\n",
                      highlight=False, soft_wrap=True)
        return trainer
    console.print(f"Training{again}: {tc.steps:,} steps of {tc.batch_size * tc.grad_accum} x {m.context} tokens "
                  f"({tokens:,} tokens), {OPTIMIZERS[tc.optimizer]}, {tc.schedule} schedule{short}, "
                  f"{trainer.device}, into {out}\n", highlight=False, soft_wrap=True)
    return trainer


def run_demo(out: Path | None, overrides: list[str], console: Console) -> Path:
    cfg = load_config("demo", overrides)
    if out is not None:  # the trainer's refusal says "pass --resume", which `vslm train` has and `vslm demo` has not
        check_not_in_use(out)
        refuse_a_run_folder(out, f": `vslm train --resume --out {out}` continues it; give vslm demo another --out, "
                                 "or none (runs/demo, or runs/demo-N if taken)")
    out = out or free_path(Path("runs") / "demo")
    console.rule("[bold]VSLM demo")
    trainer = start_training(cfg, out, console, "(the embedded generator: children's stories with recurring "
                                                "names, dialogue and simple cause and effect)")
    corpus = trainer.corpus
    final = trainer.fit()

    lines = read_metrics(out)
    evals = [ln for ln in lines if "val_loss" in ln]
    vocab = corpus.tokenizer.vocab_size
    table = Table(title="What it learned (validation loss, nats per character)")
    table.add_column("reference level")
    table.add_column("loss", justify="right")
    table.add_row("guessing uniformly over the vocabulary (ln V)", f"{math.log(vocab):.3f}")
    table.add_row("knowing only character frequencies (unigram entropy)",
                  f"{unigram_entropy(corpus.train.tokens, vocab):.3f}")
    for e in evals:
        table.add_row(f"model after {e['step']} steps", f"{e['val_loss']:.3f}")
    console.print(table)
    console.print(
        f"Final: validation loss {final['val_loss']:.3f} nats/char = {final['val_bpb']:.3f} bits per byte; "
        f"trained in {trainer.train_time_s:.0f} s at {final['tokens'] / trainer.train_time_s:,.0f} tokens/s",
        highlight=False)
    probes = [json.loads(ln) for ln in (out / PROBES).read_text().splitlines()] if (out / PROBES).exists() else []
    if probes:
        first, last = probes[0], probes[-1]
        console.print(
            f"In-context learning ({last['icl_label']} score, loss late in the window minus early; negative = "
            f"the model uses context): {first['icl_score']:+.3f} at step 0 -> {last['icl_score']:+.3f} at step "
            f"{last['step']}. Induction probe (a random sequence repeated): loss on the repeat "
            f"{last['induction']['loss_second']:.2f} vs {last['induction']['loss_first']:.2f} on the first copy.",
            highlight=False)
    for i, text in enumerate(samples_of(trainer)):  # logging.samples, written to samples.txt as the run ended
        console.rule(f"sample {i + 1} (temperature 0.8)")
        console.print(text, markup=False, highlight=False)
    console.rule()
    report = write_report(out)
    console.print(f"Next: vslm sample {out} --prompt \"Once upon a time\"   |   run folder {out}", highlight=False,
                  markup=False)
    console.print("Report (loss curves, loss by position over training, probes, samples):", highlight=False)
    print(report)
    return report
