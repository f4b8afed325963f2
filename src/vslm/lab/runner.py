"""One run of an experiment: trained, resumed, or read back from its folder when it is finished.

A finished run is reused only if its saved config has the same model, data and train settings as the
one asked for; anything else in the folder is an error (never mix runs of different settings).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from vslm.config import LoggingConfig, RunConfig, as_text
from vslm.data.shards import Corpus, tokenizer_hash
from vslm.data.tokenizer import load_tokenizer
from vslm.errors import ConfigError, VSLMError
from vslm.model import GPT, parameter_count, training_flops_per_token
from vslm.train.checkpoint import list_checkpoints
from vslm.train.run_folder import (
    CHECKPOINTS,
    CONFIG,
    OLD_NO_LIMIT,
    TOKENIZER,
    data_limit_left_out,
    read_metrics,
    read_run_config,
    schedule_moved,
)
from vslm.train.trainer import Trainer, config_changes

# vocabulary sizes known without reading data
_FIXED_VOCAB = {"byte": 257, "gpt2": 50257}


def vocab_size_of(cfg: RunConfig) -> int:
    if cfg.model.vocab_size:
        return cfg.model.vocab_size
    if cfg.data.tokenizer in _FIXED_VOCAB:
        return _FIXED_VOCAB[cfg.data.tokenizer]
    if cfg.data.tokenizer == "bpe":
        return cfg.data.vocab_size
    from vslm.data.shards import prepare_corpus  # char: the vocabulary is the corpus's characters

    return prepare_corpus(cfg.data).tokenizer.vocab_size


def build_for_accounting(cfg: RunConfig) -> GPT:
    """The model a config builds, on the meta device: shapes for counting parameters and FLOPs, no memory,
    whatever the size (the config refuses a depth past MAX_DEPTH). A ConfigError for what cannot be built
    even so: a tensor with more elements than torch can address."""
    model_cfg = cfg.model.model_copy(update={"vocab_size": vocab_size_of(cfg)})
    try:
        with torch.device("meta"):  # shapes only: no memory, no init cost
            return GPT(model_cfg)
    except (RuntimeError, TypeError, OverflowError) as e:  # torch's words for a size past 2**63, by the call
        if "overflow" not in str(e).lower():
            raise
        first = str(e).strip().splitlines()[0].replace('"', "")  # not torch's C++ frames
        raise ConfigError(f"a tensor of this model has more elements than torch can address ({first})") from None


def tokens_per_run(cfg: RunConfig) -> int:
    t = cfg.train
    return t.steps * t.batch_size * t.grad_accum * cfg.model.context


# how a run is executed or shown, not what it computes or records: a run trained with other values is the same
# run. The rest of logging decides what a run records (its probes, diagnostics, logged losses), which the
# experiments' tables read: a run probed otherwise is another run.
EXECUTION_ONLY = {"threads": 0, "checkpoint_minutes": 0.0, "keep_last": 1}
SHOWN_ONLY = {"tensorboard": False, "trackers": [], "progress": False, "samples": 0, "sample_tokens": 1}


def _compared(c: RunConfig, records: Sequence[str] | None) -> RunConfig:
    logging = c.logging.model_copy(update=SHOWN_ONLY) if records is None else \
        LoggingConfig(**{f: getattr(c.logging, f) for f in records})
    return c.model_copy(update={"train": c.train.model_copy(update=EXECUTION_ONLY), "logging": logging})


def same_settings(cfg: RunConfig, saved: RunConfig, records: Sequence[str] | None = None,
                  folder: Path | None = None) -> bool:
    """Whether cfg asks for the run saved holds: the same model, data, train and logging sections, up to the
    vocabulary (the saved config has it from the tokenizer), the EXECUTION_ONLY fields and the SHOWN_ONLY
    ones. records: the logging fields that count, where the caller reads none of the probes (a capacity
    run, a reader: their own result files; log_every, say); None: every one but SHOWN_ONLY. folder: the run's
    folder, where a data.source at another path holding the same text is the same data (same_text_elsewhere:
    the folder, or the data, moved)."""
    return not settings_differ(saved, cfg, records, folder)


def settings_differ(saved: RunConfig, cfg: RunConfig, records: Sequence[str] | None = None,
                    folder: Path | None = None) -> list[str]:
    """What same_settings compares and finds different, in words: "field: old there, new here"."""
    changes = config_changes(_compared(saved, records), _compared(cfg.with_vocab_size(saved.model.vocab_size),
                                                                  records), folder)
    return [f"{k}: {as_text(old)} there, {as_text(new)} here" for k, (old, new) in changes.items()
            if k.startswith(("model.", "data.", "train.", "logging."))]


def train_or_reuse(cfg: RunConfig, folder: Path, corpus: Corpus | None = None,
                   records: Sequence[str] | None = None) -> dict:
    """One run's final numbers: read back if the folder holds it finished, else trained (or resumed) to the end.
    corpus: the run's text already encoded (by a tokenizer the config cannot name), else the config's;
    given, a folder holding a run of another tokenizer is refused too (the config names the tokenizer's
    kind only). records: same_settings'."""
    if (folder / CONFIG).exists():
        saved = read_run_config(folder)
        if differ := settings_differ(saved, cfg, records, folder):
            hint = f" ({OLD_NO_LIMIT})" if cfg.data.max_bytes is None and data_limit_left_out(folder) else ""
            raise VSLMError(f"{folder} holds a run with other settings than this experiment's ({'; '.join(differ)}); "
                            f"move it away{hint}")
        if corpus is not None and (folder / TOKENIZER).is_file() and \
                tokenizer_hash(load_tokenizer(folder / TOKENIZER)) != tokenizer_hash(corpus.tokenizer):
            raise VSLMError(f"{folder} holds a run of another tokenizer than this experiment's; move it away")
        found = list_checkpoints(folder / CHECKPOINTS)
        if found and found[-1][0] == cfg.train.steps:
            final = read_metrics(folder)[-1]
            model = build_for_accounting(saved)
            params, flops = parameter_count(model), training_flops_per_token(model)
            if why := schedule_moved(folder, saved.model, params, flops):  # reused, it would stand for another model
                raise VSLMError(f"{folder}: {why}; move it away to train it anew")
            return {**final, "params": params, "flops_per_token": flops,
                    "reused": True}
        # stopped half-way: resumed; stopped before its first checkpoint: trained again (the trainer clears the
        # folder only if the run provably never checkpointed, and refuses it otherwise)
        trainer = Trainer(cfg, folder, resume=True, corpus=corpus)
    else:
        trainer = Trainer(cfg, folder, corpus=corpus)
    final = trainer.fit()
    return {**final, "params": trainer.params, "flops_per_token": trainer.flops_per_token, "reused": False}
