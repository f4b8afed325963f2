"""A trained model scored on a corpus's evaluation text, every token counted once.

    vslm eval runs/x --on wikitext-2 tinystories --json

The text is encoded with the run's own tokenizer and cut into consecutive windows of the model's
context (non-overlapping, as nanoGPT and GPT-2's paper evaluate; a token early in a window sees
less context than one late in it). `--lengths 1 2 4` scores the same tokens again in windows of 2 and
4 times the context, every position attending over all of its past (RoPE models: length
generalisation, RESEARCH.md section 3). The first token is predicted from end-of-text when the
tokenizer has one (a document start), else it is only context. Three numbers:

* loss: mean negative log-likelihood per token (nats), end-of-text targets included;
* bits per byte: the negative log-likelihood of the tokens that stand for text, in bits, over the
  text's UTF-8 bytes; comparable across tokenizers;
* word perplexity (word-level benchmarks: WikiText): exp(total NLL of the text tokens / number of
  words), the words being the whitespace-separated words of the original text (`str.split()`;
  lm-evaluation-harness's `re.split(r"\\s+", doc)` counts the same words, plus an empty string at
  an end that is whitespace). On the tokenized WikiText release, `<unk>` and `@-@` count as words.

Which text `--on NAME` reads: a registry name with an evaluation split (WikiText, TinyStories,
SQuAD, books: `validation`), all of that split; NAME:validation or NAME:test, all of it; a corpus
without one (dolma, openwebtext, tinyshakespeare, stories) or NAME:train, the documents a training
run on it holds out (the same ones, given the run's data settings); a path, all of the file.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vslm.config import DEFAULT_MAX_BYTES, DataConfig
from vslm.data.registry import GENERATED, split_name
from vslm.data.shards import prepare_corpus
from vslm.data.sources import TEXT_FIELD_HINT, check_source, local_files, open_source
from vslm.data.tokenizer import Tokenizer
from vslm.errors import UsageError, VSLMError
from vslm.model import GPT
from vslm.plain import listed
from vslm.progress import quiet
from vslm.train.run_folder import load_run, read_summary
from vslm.train.trainer import long_rows_divisor, text_nll_and_bytes

EVAL_SPLITS = ("validation", "test")


@dataclass
class Score:
    """Sums over a token stream; the rates are derived from them."""

    nll: float = 0.0  # nats, every target
    nll_text: float = 0.0  # nats, targets that stand for text (not end-of-text)
    tokens: int = 0  # targets
    bytes: int = 0  # UTF-8 bytes of the text targets

    @property
    def loss(self) -> float:
        return self.nll / max(1, self.tokens)

    @property
    def bpb(self) -> float:
        return self.nll_text / math.log(2) / max(1, self.bytes)


@dataclass
class CorpusResult:
    corpus: str
    split: str
    tokens: int
    bytes: int
    words: int
    loss: float
    bpb: float
    word_perplexity: float | None = None
    length: int = 1  # windows of this many times the model's context

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


@torch.no_grad()
def score_tokens(model: GPT, tokens: np.ndarray, token_bytes: np.ndarray, prefix: int | None = None,
                 batch_size: int = 32, track: Callable = quiet, label: str = "scoring", length: int = 1) -> Score:
    """Negative log-likelihood of every token of `tokens` (after `prefix`, which predicts the first),
    in consecutive windows of `length` times the model's context (past the context every position attends
    over all of its past: GPT.forward's `extend`); batch_size windows of the context a forward, the same
    tokens in fewer, longer windows (fewer still where attention weights are computed explicitly)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if length < 1:
        raise ValueError(f"length must be at least 1, got {length}")
    T = model.cfg.context * length
    batch_size = max(1, batch_size // long_rows_divisor(model, length))
    device = next(model.parameters()).device
    stream = np.asarray(tokens, dtype=np.int64)
    if prefix is not None:
        stream = np.concatenate([[prefix], stream])
    sizes = torch.from_numpy(np.asarray(token_bytes, dtype=np.int64))
    starts = list(range(0, len(stream) - 1, T))  # window s: inputs stream[s : s+T], targets shifted by one
    full = [s for s in starts if s + T + 1 <= len(stream)]
    score = Score()
    was_training = model.training
    model.eval()
    for i in track(range(0, len(full), batch_size), label):
        index = np.asarray(full[i : i + batch_size])[:, None] + np.arange(T + 1)[None, :]
        _add(score, model, torch.from_numpy(stream[index]), sizes, device, length > 1)  # (B, T + 1)
    if len(full) < len(starts):  # the last, shorter window
        _add(score, model, torch.from_numpy(stream[starts[-1] :][None, :]), sizes, device, length > 1)
    model.train(was_training)
    return score


def _add(score: Score, model: GPT, window: torch.Tensor, sizes: torch.Tensor, device: torch.device,
         extend: bool) -> None:
    x, y = window[:, :-1].to(device), window[:, 1:]
    logits = (model(x, extend=True) if extend else model(x)).float()
    nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1).to(device), reduction="none").cpu()
    text_nats, text_bytes = text_nll_and_bytes(nll, y.reshape(-1), sizes)
    score.nll += nll.sum().item()
    score.nll_text += text_nats
    score.tokens += y.numel()
    score.bytes += text_bytes


def eval_data(name: str, run_data: DataConfig, max_bytes: int | None = None,
              trained: dict | None = None) -> tuple[DataConfig, bool, str, bool, int | None]:
    """(the data config, whether all of the text is evaluation text, the split, word-level benchmark, the bytes of
    held-out text to score at most) of `--on NAME`.

    An evaluation split or a file is read whole (or up to max_bytes). Otherwise, and for the very file or corpus
    the run trained on, the run's data settings (seed, size, token budget, held-out fraction) are kept, so that
    `--on` the run's own corpus reads the documents it held out, never its training text: there `max_bytes`
    caps the held-out text scored, not the text read (which would move a single text's held-out tail).

    `trained`: what the run recorded of the text it trained on (its summary's data_path, the file's absolute path,
    and data_identity, the text's hash), which tells its own file wherever the command runs; without them (a run
    from before they were kept) a run's relative path is read from the current folder."""
    entry, split = split_name(name)
    trained_entry, trained_split = split_name(run_data.source)
    here, trained_path = Path(name).expanduser(), Path(run_data.source).expanduser()
    if entry is not None and entry.name not in GENERATED:
        split = split or entry.eval_split or "train"
        source, all_val, word_level = f"{entry.name}:{split}", split in EVAL_SPLITS, entry.word_perplexity
    elif entry is not None:  # generated: the run's seed and size, its held-out part
        check_source(run_data.model_copy(update={"source": name}))  # a split a generated corpus lacks: refused
        source, all_val, split, word_level = entry.name, False, "train", False
    else:
        source, all_val, split, word_level = name, here.exists(), "all", False
    if entry is not None:  # a corpus name: the same corpus, the split it trained on
        own = entry == trained_entry and split == (trained_split or "train")
    elif trained_entry is not None:  # a path to the file a corpus name read: its own text, read as it was
        own = here.exists() and here.resolve() in {f.resolve() for f in local_files(trained_entry, trained_split
                                                                                     or "train") or ()}
        source = run_data.source if own else source
    else:  # paths: the same text (wherever the run trained and the command runs), or the same file or folder (a
        # run's relative path, from the current folder: the only test for a run from before its identity was kept)
        recorded = trained or {}
        path = Path(recorded["data_path"]) if "data_path" in recorded else trained_path.resolve()
        same_path = here.exists() and here.resolve() == path
        identity = recorded.get("data_identity")
        same_text = (identity is not None and here.exists() and
                     open_source(run_data.model_copy(update={"source": name})).identity == identity)
        own = same_path or same_text
        if same_path and identity is not None and not same_text:  # edited, or only touched (a checkout)
            print(f"note: {name} changed since the run trained on it (its size, modification time or content): "
                  "the held-out part is taken from it as it is now", file=sys.stderr)
    all_val = all_val and not own  # a run's own text, an evaluation split too: the part it held out
    fields = run_data.model_dump(exclude={"source", "max_bytes"} if own else {"source", "max_tokens", "max_bytes"})
    if source != "stories":  # data.copying changes the built-in stories only
        fields.pop("copying")
    budget = run_data.max_bytes if own else max_bytes or (None if all_val else run_data.max_bytes)  # a benchmark's
    if budget is None and not own and source in GENERATED:  # split: all of it; a generated corpus needs an end
        budget = DEFAULT_MAX_BYTES
    return (DataConfig(**fields, source=source, max_bytes=budget), all_val, split, word_level,
            max_bytes if own else None)


def _tokens_within(tokens: np.ndarray, token_bytes: np.ndarray, cap: int, chunk: int = 1 << 20) -> int:
    """How many of the first tokens stand for at most `cap` bytes, read a chunk at a time (a held-out split of
    a large corpus is never summed whole)."""
    done = total = 0
    while done < len(tokens):
        sizes = np.cumsum(token_bytes[tokens[done : done + chunk]]) + total
        fit = int(np.searchsorted(sizes, cap, side="right"))
        if fit < len(sizes):
            return done + fit
        done, total = done + len(sizes), int(sizes[-1])
    return done


def _words(tokens: np.ndarray, tokenizer: Tokenizer) -> int:
    """The words of a token stream, counted a document at a time as the shards count them (decoding drops
    end-of-text, which would join the words on either side of a document boundary into one)."""
    if tokenizer.eos_id is None:
        return len(tokenizer.decode(tokens.tolist()).split())
    pieces = np.split(tokens, np.flatnonzero(tokens == tokenizer.eos_id))
    return sum(len(tokenizer.decode(piece.tolist()).split()) for piece in pieces)


@dataclass
class HeldText:
    """What `--on NAME` scores, tokenized: the tokens, their sizes in bytes, and how to label them."""
    name: str
    split: str
    tokens: np.ndarray
    token_bytes: np.ndarray
    words: int
    word_level: bool


def held_text(tokenizer: Tokenizer, name: str, run_data: DataConfig, max_bytes: int | None = None,
              trained: dict | None = None) -> HeldText:
    """The text `--on NAME` scores (eval_data says which), prepared into shards with the run's tokenizer."""
    data, all_val, split, word_level, cap = eval_data(name, run_data, max_bytes, trained)
    try:
        corpus = prepare_corpus(data, tokenizer=tokenizer, all_val=all_val)
    except VSLMError as e:  # the field holding the text: --text-field here (text_field= in Python)
        err = VSLMError(f"cannot evaluate on {name}: " + str(e).replace(
            TEXT_FIELD_HINT, "give --text-field (text_field= in Python), the field holding the text"))
        err.exit_code = e.exit_code  # a name typed wrong stays a config error
        raise err from None
    words = int(corpus.meta["val_words"])
    # not an evaluation split: what is scored is the held-out part of it (the run's own one when it trained there)
    split = split if all_val else f"{split}, held out"
    tokens = corpus.val.tokens
    if cap is not None:  # the run's own held-out text, its first `cap` bytes (a chunk's bytes summed at a time)
        tokens = tokens[: _tokens_within(tokens, corpus.token_bytes, cap)]
        if len(tokens) < 2:
            raise UsageError(f"--max-bytes {cap:,} (max_bytes= in Python) holds fewer than 2 tokens of {name}'s "
                             "held-out text: nothing to score; give more bytes")
        words = _words(tokens, tokenizer)  # of the text scored, for word perplexity
    return HeldText(name, split, tokens, corpus.token_bytes, words, word_level)


def score_text(model: GPT, text: HeldText, eos_id: int | None, batch_size: int = 32, track: Callable = quiet,
               lengths: tuple[int, ...] = (1,)) -> list[CorpusResult]:
    """One result per length (windows of that many times the context), in the order given."""
    results = []
    for length in lengths:
        score = score_tokens(model, text.tokens, text.token_bytes, eos_id, batch_size, track,
                             f"evaluating on {text.name}" + (f" at {length} x the context" if length > 1 else ""),
                             length)
        results.append(CorpusResult(corpus=text.name, split=text.split, tokens=score.tokens, bytes=score.bytes,
                                    words=text.words, loss=score.loss, bpb=score.bpb, length=length,
                                    word_perplexity=(math.exp(score.nll_text / max(1, text.words))
                                                     if text.word_level else None)))
    return results


def evaluate_corpus(model: GPT, tokenizer: Tokenizer, name: str, run_data: DataConfig,
                    max_bytes: int | None = None, batch_size: int = 32, track: Callable = quiet,
                    lengths: tuple[int, ...] = (1,), trained: dict | None = None) -> list[CorpusResult]:
    """One result per length (windows of that many times the context), in the order given. `trained`:
    see eval_data."""
    text = held_text(tokenizer, name, run_data, max_bytes, trained)
    return score_text(model, text, tokenizer.eos_id, batch_size, track, lengths)


def evaluate_run(run: Path, names: list[str], checkpoint: Path | None = None, max_bytes: int | None = None,
                 batch_size: int = 32, device: str = "cpu", track: Callable = quiet,
                 lengths: tuple[int, ...] = (1,), text_field: str | None = None) -> list[CorpusResult]:
    """Each corpus of `names` (one may be given alone) at each length (`--lengths`: windows of that many times
    the context; past 1, RoPE models only, refused first with the reason). `text_field`: the field holding the
    text in JSON lines and parquet files given by path (default: the run's data.text_field)."""
    names = listed(names, "names")  # one name or path alone, or a list; paths as str
    cfg, model, tokenizer = load_run(Path(run), checkpoint, device)
    trained = read_summary(Path(run))
    if max(lengths) > 1 and (why := model.slide_refusal()) is not None:
        raise UsageError(f"--lengths {' '.join(map(str, lengths))} (lengths= in Python): {why}")
    data = cfg.data if text_field is None else cfg.data.model_copy(update={"text_field": text_field})
    # every corpus read and tokenized before any is scored: a name typed wrong, or text the run's tokenizer
    # cannot encode, is said before minutes of scoring are spent (and their results lost)
    texts = [held_text(tokenizer, name, data, max_bytes, trained) for name in names]
    return [r for text in texts for r in score_text(model, text, tokenizer.eos_id, batch_size, track, lengths)]
