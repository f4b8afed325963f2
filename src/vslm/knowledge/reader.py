"""A small reader that reads facts from its context: `vslm facts reader --world W --out R` (issue 23).

    vslm facts generate --out W --seed 0
    vslm facts reader --world W --out R train.seed=0     # about 11 minutes on one CPU thread
    vslm facts eval R --world W --json novel             # {"open_book": {"1": ..}, "counterfactual", ...}

With configs/reader.toml (3 blocks of width 128, 0.75M parameters, 7000 steps of 16 examples) it
reads novel entities' facts at 0.92 / 0.84 / 0.83 (1 / 2 / 3 hops, chance 0.13 / 0.17 / 0.21),
follows counterfactual contexts at 0.98 (1 hop), and is at chance closed-book: mean of 3 seeds
(docs/EXPERIMENTS-LOG.md, 2026-12-02).

The preloaded-context runs of 5b never learned to read at byte level: a card puts the answer tens to
hundreds of bytes before the question, and a 2-layer model learns to copy from about 10 tokens back
(docs/EXPERIMENTS.md, training dynamics). This recipe makes the copy short and the signal dense:

* tokens: one per word of the world's language (`reader_tokenizer`): every name part of names.py
  (the seen and the novel pool's alike), city, country, year and template word is a single token,
  with the 256 bytes as fallback, so any text still encodes and decodes exactly. A person or a
  company is two tokens, a card about nine, and the answer sits a few dozen tokens before the question;
* data: preloaded examples (vslm.knowledge.preloaded), each over a small world of its own drawn
  afresh for every example from the name parts, so no fact recurs and the weights cannot hold one;
  a fresh batch every step (never an epoch), the loss on the answer only (the layout and the
  tokenization of scoring.LMScorer: distill.encode_pairs);
* a curriculum over hops and distractors: the most hops and distractors an example may have grow
  linearly from (1, 0) to the maximum over the first `ramp` share of the steps; each example draws
  its hops and distractors uniformly up to the current maximum.

The world W is only asked, never trained on: its settings give the most hops, and its novel
pool's open-book questions are the reading curve logged every `curve_every` steps (`read_h1`,
`read_h2`, ... in metrics.jsonl, with the evaluation's 4 distractors). The trained run is a run
folder like any other: `vslm facts eval R --world W` measures it.

With `steps` (`--steps`; RESEARCH.md 5b's "[answer] steps + answer") the answer is the cards of the
supporting facts, each on its own line in the order the question uses them, then "A:" and the answer
(render.with_steps): a chain of hops becomes a chain of one-card reads, each a copy from the context.
With `restate` (`--restate`) each hop's card is followed by the question it leaves ("Q: What is the
country of <the city just read>?"): every step shortens the question by one relation. Trained to 2 hops,
both formats read 1-2 hops sooner and at least as well as the reader that answers at once, and 3 hops
worse: one writes as many cards as it was trained to, the other restates a 3-relation question as a
1-relation one (docs/EXPERIMENTS.md, knowledge-steps). The loss falls on the steps and the answer; the
reader's folder records the settings, and `vslm facts eval` (scoring.run_scorer) lets it write its steps
greedily before it scores the choices (scoring.StepsScorer).

With `names = "seen"` the examples use only the seen pool's name parts of W's seed: the novel
pool's names are then tokens the model never saw trained (a harder test of reading: copying a
token by its identity alone).
"""

from __future__ import annotations

import functools
import json
import math
import random
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from vslm.config import RunConfig, load_config
from vslm.data.tokenizer import EOS, HFTokenizer, Tokenizer
from vslm.errors import UsageError, VSLMError, refuse_file_in_the_way
from vslm.files import write_text
from vslm.knowledge import metrics, names, render
from vslm.knowledge.contexts import Contexts
from vslm.knowledge.distill import encode_pairs
from vslm.knowledge.folder import WorldFolder, load_world_folder
from vslm.knowledge.preloaded import _draw, example_text, signatures
from vslm.knowledge.questions import Program, chain_paths, question_text
from vslm.knowledge.scoring import READER_SETTINGS, LMScorer, run_scorer
from vslm.knowledge.world import MAX_HOPS, YEARS, Fact, NamePool, World, name_pools, small_world
from vslm.plain import dumps
from vslm.train.callbacks import Callback
from vslm.train.checkpoint import list_checkpoints
from vslm.train.run_folder import (
    CHECKPOINTS,
    CONFIG,
    clear_run_folder,
    never_checkpointed,
    no_checkpoint_yet,
    read_metrics,
    read_run_config,
)
from vslm.train.trainer import Trainer, default_callbacks

RESULT = "reader.json"
# the logging settings a reader's, a capacity run's or a knowledge arm's results depend on (they read their own
# result files, not the probes): the steps whose losses are logged; a rerun that only probes otherwise reuses it
RECORDS = ("log_every",)
STARTED = READER_SETTINGS  # the settings a resumed reader must have (written when it starts)
LATER = {"steps": False, "restate": False}  # settings added after the first readers, with the defaults they had
EXAMPLES = "reader-examples.txt"  # the corpus the trainer's validation loss reads: examples of the last stage
N_EXAMPLES_FILE = 2000
SAMPLE_EXAMPLES = 400  # examples whose words, beside names.py's lists, make the vocabulary


@dataclass(frozen=True)
class ReaderSettings:
    """What the recipe varies beside the run config (model and schedule: configs/reader.toml)."""

    max_hops: int = 0  # 0 = the world's hops
    max_distractors: int = 6
    ramp: float = 0.5  # share of the steps over which hops and distractors grow to their maximum; 0 = none
    names: str = "all"  # "all": every name part of names.py; "seen": the seen pool's of W's seed
    curve_every: int = 1000  # steps between reading-curve points; 0 = none
    curve_questions: int = 50  # novel open-book questions of W per hop count on the curve
    steps: bool = False  # answer with the supporting cards first (render.with_steps), scored by scoring.StepsScorer
    restate: bool = False  # with steps: after each card, the question it leaves (`restated`)


# ------------------------------------------------------------------------------------ tokenizer


def _text_words() -> list[str]:
    """Text in which every word of the world's language occurs, at a line start and after a space."""
    parts = [*names.FIRST_NAMES, *names.SURNAMES, *names.COMPANY_WORDS, *names.COMPANY_KINDS, *names.CITIES,
             *names.COUNTRIES, *(str(y) for y in range(YEARS[0] - 60, YEARS[1] + 1))]
    lines = [f"{w} {w}" for w in parts]
    rng = random.Random("reader-vocabulary")
    pool = NamePool(list(names.FIRST_NAMES), list(names.SURNAMES), list(names.COMPANY_WORDS))
    for _ in range(SAMPLE_EXAMPLES):
        prompt, answer = draw_example(pool, rng, rng.randint(1, 4), rng.randint(0, 6))
        lines.append(prompt + render.answer_text(answer))
    for template in (t for ts in render.TEMPLATES.values() for t in ts):
        lines.append(template.format(s="x", o="y"))
    lines += [render.chain_question("x", p) for p in chain_paths(4)] + [render.older_question("x", "y")]
    return lines


@functools.cache
def reader_tokenizer() -> HFTokenizer:
    """The reader's words (every name part of names.py, city, country, year and template word) as
    single tokens, the 256 bytes under them (word_tokenizer). Deterministic: it depends on names.py
    and render.py only."""
    return word_tokenizer(_text_words())


def word_tokenizer(lines: Iterable[str]) -> HFTokenizer:
    """A word-level vocabulary with the 256 bytes under it: every byte-level pre-token (GPT-2's split:
    " Alma", "Alma", " 1950", ".", "\\n") of `lines` is one token, found without merges; anything
    else falls back to its bytes, so any text still encodes and decodes exactly."""
    from tokenizers import Tokenizer as HF
    from tokenizers import decoders, models, pre_tokenizers

    split = pre_tokenizers.ByteLevel(add_prefix_space=False)
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    words = sorted({piece for line in lines for piece, _ in split.pre_tokenize_str(line)} - set(alphabet))
    vocab = {token: i for i, token in enumerate([*alphabet, *words])}
    hf = HF(models.BPE(vocab=vocab, merges=[], ignore_merges=True))  # a word in the vocabulary is one token
    hf.pre_tokenizer = split
    hf.decoder = decoders.ByteLevel()
    hf.add_special_tokens([EOS])
    return HFTokenizer(hf, "bpe")


# ------------------------------------------------------------------------------------ examples


def restated(world: World, program: Program, support: Sequence[Fact]) -> list[str]:
    """The supporting cards in the order the question uses them, each hop's card followed by the question it
    leaves ("Q: What is the country of <the city just read>?"), none after a side's last hop: every step
    reads one card and shortens the question by one relation, the same operation at any number of hops."""
    starts, paths = list(program.starts), [list(p) for p in program.paths]
    lines, facts = [], iter(support)
    for side in range(len(starts)):
        for _ in range(len(program.paths[side]) - (program.kind == "chain")):
            fact = next(facts)
            lines.append(render.card_text(world, fact))
            starts[side], paths[side] = fact.other(starts[side]), paths[side][1:]
            asked = Program(program.kind, tuple(starts), tuple(tuple(p) for p in paths))
            lines.append(render.closed_book_prompt(question_text(world, asked)).removesuffix("\nA:"))
        lines.append(render.card_text(world, next(facts)))  # a chain's last hop, or a side's birth year
    return lines


def draw_example(pool: NamePool, rng: random.Random, hops: int, distractors: int,
                 steps: bool = False, restate: bool = False) -> tuple[str, str]:
    """(open-book prompt, answer) of one preloaded example of exactly `hops` facts (fewer where its
    small world has no such question) among `distractors` others, over a world of its own. With `steps`
    the answer is the supporting cards, in the order the question uses them, then the answer
    (render.with_steps); with `restate` too, each hop's card is followed by the question it leaves
    (`restated`)."""
    while True:
        countries = rng.randint(2, 4)  # a world's size varies as much as W's pools do: 2-4 countries, 2-12 cities
        world = small_world(pool, rng, people=rng.randint(6, 12), countries=countries,
                            cities=countries * rng.randint(1, 3), people_per_company=rng.randint(2, 5))
        for h in range(hops, 0, -1):
            drawn = _draw(world, rng.choice(signatures(h)), rng)
            if drawn is not None:
                program, answer, support = drawn
                if steps:
                    lines = restated(world, program, support) if restate else \
                        [render.card_text(world, f) for f in support]
                    answer = render.with_steps(lines, answer)
                text = example_text(world, program, answer, support, rng, distractors)
                return text[: len(text) - len(answer) - 1], answer  # the text ends with " <answer>"


@dataclass(frozen=True)
class Curriculum:
    max_hops: int
    max_distractors: int
    ramp: float
    steps: int

    def limits(self, step: int) -> tuple[int, int]:
        """(most hops, most distractors) of the examples of `step`."""
        ramp_steps = self.ramp * self.steps
        p = 1.0 if ramp_steps <= 0 else min(1.0, step / ramp_steps)
        return 1 + round(p * (self.max_hops - 1)), round(p * self.max_distractors)


class ReaderBatches:
    """A batch source of fresh preloaded examples: (inputs, targets) (B, T), targets -100 but on the
    answer. The random state and the number of batches drawn (the curriculum's step) are the data
    position saved in checkpoints."""

    def __init__(self, tokenizer: Tokenizer, pool: NamePool, curriculum: Curriculum, context: int, batch_size: int,
                 seed: int, steps: bool = False, restate: bool = False):
        self.tokenizer, self.pool, self.curriculum = tokenizer, pool, curriculum
        self.steps, self.restate = steps, restate
        self.context, self.batch_size = context, batch_size
        self.rng = random.Random(f"reader:{seed}")
        self.drawn = 0

    def examples(self, n: int) -> list[tuple[str, str]]:
        most_hops, most_distractors = self.curriculum.limits(self.drawn)
        return [draw_example(self.pool, self.rng, self.rng.randint(1, most_hops), self.rng.randint(0, most_distractors),
                             self.steps, self.restate) for _ in range(n)]

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        batch = encode_pairs(self.tokenizer, self.examples(self.batch_size), self.context)
        self.drawn += 1
        return batch

    def state_dict(self) -> dict:
        return {"rng": self.rng.getstate(), "drawn": self.drawn}

    def load_state_dict(self, state: dict) -> None:
        self.rng.setstate(state["rng"])
        self.drawn = state["drawn"]


# ------------------------------------------------------------------------------------ the reading curve


def open_book_by_hops(scorer: LMScorer, folder: WorldFolder, per_hops: int | None, pool: str = "novel",
                      distractors: int = 4, seed: int = 0) -> dict[int, dict]:
    """Open-book accuracy on W's test questions of `pool` (the evaluation's contexts), by hops, asked by `scorer`
    (scoring.run_scorer: a reader trained with steps writes them)."""
    ctx = Contexts(folder, distractors, seed)
    qs = metrics.per_hops([q for q in folder.questions if q.pool == pool and q.split == "test"
                           and not q.counterfactual], per_hops)
    answers = metrics.pick(scorer, [ctx.open_book(q) for q in qs], qs)
    return metrics.by_hops(qs, answers)


class ReadingCurve(Callback):
    """Every `every` steps (and at the end), open-book accuracy on W's novel pool by hops, added to the
    step's metrics as read_h1, read_h2, ... (a logged step: `every` a multiple of logging.log_every)."""

    def __init__(self, folder: WorldFolder, tokenizer: Tokenizer, every: int, per_hops: int):
        self.folder, self.tokenizer, self.every, self.per_hops = folder, tokenizer, every, per_hops

    def on_step_end(self, trainer: Trainer, metrics: dict) -> None:
        if "loss" in metrics and (trainer.step % self.every == 0 or trainer.step == trainer.cfg.train.steps):
            # asked as the run is evaluated: its reader settings, written before it trained, say with steps or not
            by = open_book_by_hops(run_scorer(trainer.run_dir, trainer.model, self.tokenizer), self.folder,
                                   self.per_hops)
            trainer.model.train()
            metrics.update({f"read_h{h}": round(a["accuracy"], 4) for h, a in by.items()})


# ------------------------------------------------------------------------------------ the recipe


def reader_config(config: str = "reader", overrides: list[str] | None = None) -> RunConfig:
    return load_config(config, overrides or [])


def check_curve(settings: ReaderSettings, cfg: RunConfig) -> None:
    """Refuse a reading curve whose points would fall between logged steps, where ReadingCurve never runs."""
    if 0 < settings.curve_every < cfg.train.steps and settings.curve_every % cfg.logging.log_every:
        raise UsageError(f"--curve-every {settings.curve_every}: the reading curve is measured at logged steps, so "
                         f"it must be a multiple of logging.log_every ({cfg.logging.log_every}); give "
                         f"logging.log_every={math.gcd(settings.curve_every, cfg.logging.log_every)} or another "
                         "--curve-every")


def train_reader(world: Path, out: Path, cfg: RunConfig | None = None,
                 settings: ReaderSettings | None = None, reuse: bool = False) -> dict:
    """Train the reader into the run folder `out` and write out/reader.json (settings, wall time, the
    last metrics); returns it. A folder that already holds a reader is an error, unless `reuse`: then a
    finished reader of the same config and settings is read back (any other is an error), a run
    stopped after a checkpoint is resumed, and one stopped before any is trained again (how a
    knowledge experiment's `data = "reader"` arm is run)."""
    cfg = cfg or reader_config()
    settings = settings or ReaderSettings()
    if settings.names not in ("all", "seen"):
        raise VSLMError(f"names must be 'all' or 'seen', not {settings.names!r}")
    if settings.restate and not settings.steps:
        raise VSLMError("restate: the question left after each step restates the steps; give steps too")
    out = Path(out)
    refuse_file_in_the_way(out)
    check_curve(settings, cfg)
    if settings.max_hops > MAX_HOPS:
        raise VSLMError(f"max_hops {settings.max_hops}: a world's questions take at most {MAX_HOPS} hops "
                        "(0 = the world's own)")
    folder = load_world_folder(world)
    max_hops = settings.max_hops or folder.settings.hops
    # a setting added since readers were first trained is recorded only where it is not its default, so that
    # an older reader's settings still read as the same run's
    recorded = {k: v for k, v in asdict(settings).items() if k not in LATER or v != LATER[k]} | {"max_hops": max_hops}
    if (out / RESULT).is_file():
        if not reuse:
            raise VSLMError(f"{out} already holds a reader; --out another folder")
        check_same_run(out, cfg, recorded, json.loads((out / RESULT).read_text(encoding="utf-8")).get("settings"),
                       "a reader")
        return json.loads((out / RESULT).read_text(encoding="utf-8"))
    if out.is_dir() and any(out.iterdir()) and not (out / STARTED).is_file():
        raise VSLMError(f"{out} holds no reader: --out another folder")
    if out.is_dir() and any(out.iterdir()) and not reuse:
        raise VSLMError(f"{out} holds a reader that did not finish; the same command with --resume continues it")
    resume = reuse and bool(list_checkpoints(out / CHECKPOINTS))
    if resume:
        started = out / STARTED
        check_same_run(out, cfg, recorded,
                       json.loads(started.read_text(encoding="utf-8")) if started.is_file() else None, "a reader")
    elif reuse and out.exists() and any(out.iterdir()):  # stopped before its first checkpoint: nothing to keep
        if (out / CONFIG).is_file() and not never_checkpointed(out, read_run_config(out)):
            raise VSLMError(f"cannot continue the reader in {out}: {no_checkpoint_yet(out)}")
        clear_run_folder(out)
    if settings.names == "seen":
        pool = name_pools(folder.settings.seed)["seen"]
    else:
        pool = NamePool(list(names.FIRST_NAMES), list(names.SURNAMES), list(names.COMPANY_WORDS))
    tokenizer = reader_tokenizer()
    curriculum = Curriculum(max_hops, settings.max_distractors, settings.ramp, cfg.train.steps)
    batches = ReaderBatches(tokenizer, pool, curriculum, cfg.model.context, cfg.train.batch_size, cfg.train.seed,
                            settings.steps, settings.restate)

    # the trainer's corpus (validation loss, bytes per token): examples of the last stage, in a file
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / STARTED, json.dumps(recorded) + "\n")
    final = ReaderBatches(tokenizer, pool, Curriculum(max_hops, settings.max_distractors, 0, 1), cfg.model.context,
                          1, cfg.train.seed + 1, settings.steps, settings.restate)
    pairs = final.examples(N_EXAMPLES_FILE)
    texts = [p + render.answer_text(a).rstrip("\n") for p, a in pairs]
    # kept as it is when it holds the same text: a moved folder resumes where its data_identity agrees
    write_text(out / EXAMPLES, f"\n{EOS}\n".join(texts) + "\n", keep_same=True)
    long = sum(1 + len(tokenizer.encode(p)) + len(tokenizer.encode(render.answer_text(a))) > cfg.model.context + 1
               for p, a in pairs)  # as encode_pairs lays a row out: end-of-text, the prompt, the answer
    if long > 0.05 * len(pairs):  # their oldest tokens dropped: often the very facts the answer needs
        print(f"warning: {long / len(pairs):.0%} of the last stage's examples ({settings.max_distractors} distractors, "
              f"{max_hops} hops) are longer than the context ({cfg.model.context} tokens) and lose their first "
              "tokens, often the facts that answer them; lower max_distractors or raise model.context",
              file=sys.stderr)
    raw = cfg.model_dump(mode="json")
    raw["data"]["source"] = str((out / EXAMPLES).resolve())
    from vslm.config import validate
    from vslm.data.shards import prepare_corpus

    cfg = validate(raw)
    corpus = prepare_corpus(cfg.data, tokenizer=tokenizer)
    callbacks = default_callbacks(cfg)
    if settings.curve_every:
        callbacks.insert(0, ReadingCurve(folder, tokenizer, settings.curve_every, settings.curve_questions))
    started = time.perf_counter()
    trainer = Trainer(cfg, out, callbacks=callbacks, corpus=corpus, batches=batches, resume=resume)
    last = trainer.fit()
    if "loss" not in last:  # resumed at its last step (stopped before reader.json): its last logged metrics
        last = read_metrics(out)[-1]
    result = {"world": str(world), "settings": recorded,
              "params": trainer.params, "vocab_size": tokenizer.vocab_size, "steps": cfg.train.steps,
              "wall_s": round(time.perf_counter() - started, 1), "train_time_s": round(trainer.train_time_s, 1),
              "last": last}
    write_text(out / RESULT, dumps(result, indent=1) + "\n")
    return result


def check_same_run(out: Path, cfg: RunConfig, settings: dict, saved_settings: dict | None, kind: str) -> None:
    """Refuse a folder whose run of its own data (a reader, a capacity run: finished, or to be resumed) has
    other settings or another config than these, up to data.source, the data file the folder holds (a
    moved folder is still the same run); `kind` names the run in the one-line error."""
    from vslm.lab.runner import settings_differ

    run_cfg = read_run_config(out)
    asked = cfg.model_copy(update={"data": cfg.data.model_copy(update={"source": run_cfg.data.source})})
    differ = [f"{k}: {old} there, {new} here" for k in sorted(settings.keys() | (saved_settings or {}).keys())
              if (old := (saved_settings or {}).get(k, "-")) != (new := settings.get(k, "-"))]
    differ += settings_differ(run_cfg, asked, RECORDS, out)
    if differ or saved_settings != settings:
        raise VSLMError(f"{out} holds {kind} of other settings than this one's "
                        f"({'; '.join(differ) or 'its settings file'}); move it away")
