"""Knowledge capacity: how many bits of facts a model stores per parameter (RESEARCH.md section 5).

    vslm facts capacity --out R --people 2000 --exposures 100 --sizes 1x16 1x32 2x32 --seeds 0 1 2

After Allen-Zhu & Li 2024 (Physics of Language Models 3.3, arXiv:2404.05405): a model trained on
biographies whose facts are drawn uniformly at random can only lower its loss on a fact's value
below that of a uniform guess by storing the fact, so the bits it stores are bounded below by

    bits = sum over people and attributes of  log2 T_a - (-log2 q(value | the biography before it))

where T_a is the number of values attribute a takes and q the model's prediction renormalised over
those values: the value sets are public, so a model that knows them and nothing of the people scores
0, however it spreads the rest of its mass (`bits_vocab` scores the full softmax, as the paper does,
and so also charges a small model for mass outside the value set). The names' bits (which names
exist), the paper's other term, are counted apart (`name_bits`). The paper finds about 2 bits per
parameter after 1000 exposures of each biography and at least 1 bit after 100 (their peak over model
sizes).

The data is their bioS "single" (one template): N people, each with a unique three-word name (first,
middle, last: names.py's first names twice, never the same one twice, and its surnames: 990,000
names) and eight attributes drawn uniformly and independently: gender (the pronoun, 2), birth month
(12), day (28) and year (200), birth city (200), university (300), major (100) and employer (263), as
the paper's value sets are sized; the work city follows from the employer (a rule, 0 bits: not
counted). Cities, universities, majors and employers are invented words. Every word is one token
(reader.word_tokenizer), so a biography is 38 tokens and each attribute's value is one token, scored
where it is predicted.

Training packs whole biographies, each after an end-of-text token, `context // 39` to a row; every
epoch visits each biography once in a fresh order, so an exposure is exactly one visit (the steps are
rounded up to whole batches: the exposures trained are in the result). The bits are counted on the
training biographies themselves (that is what is stored), each read alone after an end-of-text
token. Parameters are reported whole, without the embedding rows of tokens that are neither in a
biography nor a value (the byte fallback: "used"), and without the embedding (tied to the head),
which with word tokens is most of a small model and holds facts too.
"""

from __future__ import annotations

import json
import math
import random
import re
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from vslm.config import RunConfig, fields_set_by, load_config, validate
from vslm.data.tokenizer import EOS, HFTokenizer, Tokenizer
from vslm.errors import UsageError, VSLMError, refuse_file_in_the_way
from vslm.files import write_text
from vslm.knowledge import names
from vslm.knowledge.reader import check_same_run, word_tokenizer
from vslm.plain import dumps
from vslm.train.callbacks import Callback
from vslm.train.checkpoint import list_checkpoints
from vslm.train.run_folder import (
    CHECKPOINTS,
    CONFIG,
    check_not_in_use,
    clear_run_folder,
    nan_for_null,
    never_checkpointed,
    no_checkpoint_yet,
    read_run_config,
    refuse_a_run_as_collection,
)
from vslm.train.trainer import Trainer, default_callbacks

RESULT = "capacity.json"
STARTED = "capacity-settings.json"  # the settings a resumed run must have (written when it starts)
BIOS = "bios.txt"  # the biographies, end-of-text between them: the trainer's corpus (its validation loss)
TABLE = "capacity.md"
PAPER_RATIO = {100: 1.0, 1000: 2.0}  # Allen-Zhu & Li's peak bits per parameter at these exposures (GPT-2, bioS)
RATIOS = {"bits_per_param": "bits / param", "bits_per_live_param": "bits / used param",
          "with_names_per_param": "with names / param", "with_names_per_live_param": "with names / used param"}
RESULT_KEYS = ("bits", "bits_vocab", "name_bits", "params", "live_params", "embedding_params",
               "bits_per_nonembedding_param", *RATIOS, "attributes")  # what the sweep's table reads

MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December")
PRONOUNS = ("He", "She")
# the paper's value-set sizes (bioS): birth city 200, university 300, major 100, employer 263
INVENTED = {"birth_city": 200, "university": 300, "major": 100, "employer": 263}
WORK_CITIES = 200  # the employers' cities (the work city: a function of the employer)
ATTRIBUTES = ("gender", "birth_month", "birth_day", "birth_year", "birth_city", "university", "major", "employer")
TOKENS = 38  # tokens of one biography (test_capacity checks it)


# ------------------------------------------------------------------------------------ the world


def invented_words(n: int, label: str, avoid: set[str]) -> list[str]:
    """n distinct capitalised two- or three-syllable words, none in `avoid`, drawn from random.Random(label)."""
    onsets = ("b", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "gr", "kr",
              "pl", "st", "tr", "sh", "th")
    vowels = ("a", "e", "i", "o", "u", "ai", "ou")
    codas = ("", "", "n", "r", "l", "s", "m")
    rng, found = random.Random(label), []
    while len(found) < n:
        word = "".join(rng.choice(onsets) + rng.choice(vowels) + rng.choice(codas)
                       for _ in range(rng.choice((2, 2, 3)))).capitalize()
        if word not in avoid:
            avoid.add(word)
            found.append(word)
    return found


@dataclass(frozen=True)
class BioWorld:
    """N people, each a name (first, middle, last) and one value index per attribute; the value sets;
    each employer's city."""

    seed: int
    names: list[tuple[str, str, str]]
    values: dict[str, list[str]]  # attribute -> its values, in a fixed order
    people: list[dict[str, int]]  # attribute -> value index
    employer_city: list[str]

    @property
    def data_bits(self) -> float:
        """The bits of the attributes: people times the sum of log2 T_a."""
        return len(self.people) * sum(math.log2(len(self.values[a])) for a in ATTRIBUTES)


def bio_world(people: int, seed: int = 0) -> BioWorld:
    """`people` people with unique names and uniformly drawn attributes, from random.Random(f"bios:{seed}")."""
    if not 1 <= people <= 100_000:
        raise UsageError(f"--people must be from 1 to 100000, got {people}")
    taken = {*names.FIRST_NAMES, *names.SURNAMES, *MONTHS, *PRONOUNS}
    invented = {a: invented_words(n, f"bios-{a}", taken) for a, n in INVENTED.items()}  # the same for every seed
    work_cities = invented_words(WORK_CITIES, "bios-work_city", taken)
    values = {"gender": list(PRONOUNS), "birth_month": list(MONTHS),
              "birth_day": [str(d) for d in range(1, 29)], "birth_year": [str(y) for y in range(1900, 2100)],
              **invented}
    rng = random.Random(f"bios:{seed}")
    employer_city = [rng.choice(work_cities) for _ in values["employer"]]
    full, seen = [], set()
    while len(full) < people:
        name = (rng.choice(names.FIRST_NAMES), rng.choice(names.FIRST_NAMES), rng.choice(names.SURNAMES))
        if name not in seen and name[0] != name[1]:
            seen.add(name)
            full.append(name)
    drawn = [{a: rng.randrange(len(values[a])) for a in ATTRIBUTES} for _ in range(people)]
    return BioWorld(seed, full, values, drawn, employer_city)


def bio_pieces(world: BioWorld, i: int) -> list[tuple[str, str | None]]:
    """Person i's biography as (text, attribute or None) pieces, each value a piece of its own (with its
    leading space); joined they are the biography."""
    p, v = world.people[i], world.values
    first, middle, last = world.names[i]
    pronoun = " " + v["gender"][p["gender"]]
    employer = p["employer"]

    def value(a: str) -> tuple[str, str]:
        return " " + v[a][p[a]], a

    return [(f"{first} {middle} {last} was born on", None), value("birth_month"), value("birth_day"), (",", None),
            value("birth_year"), (".", None), (pronoun, "gender"), (" spent early years in", None),
            value("birth_city"), (". " + pronoun.strip() + " attended", None), value("university"),
            (" University. " + pronoun.strip() + " majored in", None), value("major"),
            (". " + pronoun.strip() + " worked at", None), value("employer"),
            (". " + pronoun.strip() + " lived in " + world.employer_city[employer] + ".", None)]


def bio_text(world: BioWorld, i: int) -> str:
    return "".join(text for text, _ in bio_pieces(world, i))


def bio_tokenizer(world: BioWorld) -> HFTokenizer:
    """Every word of the biographies one token (the value sets whole, whoever holds them)."""
    words = [*names.FIRST_NAMES, *names.SURNAMES, *world.employer_city,
             *(w for ws in world.values.values() for w in ws)]
    lines = [bio_text(world, i) for i in range(min(len(world.people), 50))]  # the template's words
    lines += [*names.FIRST_NAMES, *(" " + w for w in words)]  # a first name starts a biography; the rest follow a space
    return word_tokenizer(lines)


@dataclass(frozen=True)
class EncodedBios:
    ids: torch.Tensor  # (N, 1 + TOKENS): end-of-text, then the biography
    value_at: dict[str, int]  # attribute -> index in a row of the value's token
    candidates: dict[str, torch.Tensor]  # attribute -> the token of each of its values, in the value order
    truth: dict[str, torch.Tensor]  # attribute -> (N,) each person's value index
    name_candidates: list[torch.Tensor]  # first, middle, last: the token of each name word (rows 1, 2, 3)
    name_truth: torch.Tensor  # (N, 3): each person's index in those lists


def encode_bios(world: BioWorld, tokenizer: Tokenizer) -> EncodedBios:
    """Every biography as one row of token ids, and where its values are."""
    rows, value_at = [], {}
    for i in range(len(world.people)):
        row, where = [tokenizer.eos_id], {}
        for text, attribute in bio_pieces(world, i):
            ids = tokenizer.encode(text)
            if attribute is not None:
                if len(ids) != 1:
                    raise VSLMError(f"the value {text!r} of {attribute} is {len(ids)} tokens, not one")
                where[attribute] = len(row)
            row += ids
        if len(row) != 1 + TOKENS:
            raise VSLMError(f"biography {i} is {len(row) - 1} tokens, not {TOKENS}: {bio_text(world, i)!r}")
        value_at = value_at or where
        if where != value_at:
            raise VSLMError(f"biography {i} has its values at other positions than the first's")
        rows.append(row)
    candidates = {}
    for a in ATTRIBUTES:
        ids = [tokenizer.encode(" " + w) for w in world.values[a]]
        if any(len(t) != 1 for t in ids):
            raise VSLMError(f"a value of {a} is more than one token")
        candidates[a] = torch.tensor([t[0] for t in ids])
    truth = {a: torch.tensor([p[a] for p in world.people]) for a in ATTRIBUTES}
    parts = (names.FIRST_NAMES, names.FIRST_NAMES, names.SURNAMES)
    name_candidates = [torch.tensor([tokenizer.encode(space + w)[0] for w in words])
                       for space, words in zip(("", " ", " "), parts, strict=True)]
    index = [{w: i for i, w in enumerate(words)} for words in parts]
    name_truth = torch.tensor([[index[k][w] for k, w in enumerate(name)] for name in world.names])
    ids = torch.tensor(rows)
    if not all(torch.equal(ids[:, 1 + k], name_candidates[k][name_truth[:, k]]) for k in range(3)):
        raise VSLMError("a name word is not one token")
    return EncodedBios(ids, value_at, candidates, truth, name_candidates, name_truth)


# ------------------------------------------------------------------------------------ the measure


@torch.no_grad()
def knowledge_bits(model, bios: EncodedBios, batch: int = 256) -> dict:
    """Per attribute: the bits stored, sum over people of log2 T_a + log2 q(value), where q is the model's
    next-token distribution renormalised over the attribute's T_a values (the value sets are public: a
    model that knows them and nothing of the people scores 0); the same with q = the full softmax
    (`bits_vocab`, the paper's measure, which also charges mass put outside the value set); the data's
    bits (N log2 T_a); and the recall (the most probable value is the person's). Each biography is read
    alone, after an end-of-text token.

    Also `name_bits`, the paper's other term: which names exist, sum over people of log2 N0 + log2 q(name),
    q the product of the model's predictions of the first, middle and last name word after the
    end-of-text token, each renormalised over its list (the middle over the first names but the
    person's first), N0 = 990,000 names; 0 for a model that knows nothing of who exists. At most
    log2 C(N0, N) in expectation (which N of the N0 names were drawn)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    logp = {a: [] for a in ATTRIBUTES}
    name_logp = [[], [], []]
    for start in range(0, len(bios.ids), batch):
        x = bios.ids[start : start + batch].to(device)
        logits = model(x[:, :-1])  # (B, T, V): position t predicts token t + 1
        for a in ATTRIBUTES:
            full = torch.log_softmax(logits[:, bios.value_at[a] - 1].float(), dim=-1)
            logp[a].append(full[:, bios.candidates[a].to(device)].cpu())  # (B, T_a): log p of each value
        for k in range(3):
            name_logp[k].append(logits[:, k].float()[:, bios.name_candidates[k].to(device)].cpu())
    model.train(was_training)
    out = {}
    for a in ATTRIBUTES:
        lp = torch.cat(logp[a])  # (N, T_a)
        truth, values = bios.truth[a], len(bios.candidates[a])
        people = torch.arange(len(truth))
        within = torch.log_softmax(lp, dim=-1)[people, truth]
        out[a] = {"bits": round(float((math.log2(values) + within / math.log(2)).sum()), 1),
                  "bits_vocab": round(float((math.log2(values) + lp[people, truth] / math.log(2)).sum()), 1),
                  "data_bits": round(len(truth) * math.log2(values), 1),
                  "recall": round(float((lp.argmax(dim=1) == truth).float().mean()), 4),
                  "chance": round(1 / values, 4)}
    total = {k: round(sum(v[k] for v in out.values()), 1) for k in ("bits", "bits_vocab", "data_bits")}
    people = torch.arange(len(bios.ids))
    name_bits = 0.0
    for k in range(3):
        scores = torch.cat(name_logp[k])  # (N, list size): logits of each name word
        if k == 1:  # the middle name is never the first
            scores[people, bios.name_truth[:, 0]] = -math.inf
        within = torch.log_softmax(scores, dim=-1)[people, bios.name_truth[:, k]]
        name_bits += float((math.log2(scores.shape[1] - (k == 1)) + within / math.log(2)).sum())
    return {**total, "name_bits": round(name_bits, 1), "attributes": out}


def embedding_params(model) -> int:
    """The parameters of the token embedding (the head tied to it) and of learned positions, if any."""
    count = model.embed.weight.numel()
    pos = getattr(model, "pos", None)
    return count + (pos.weight.numel() if isinstance(pos, torch.nn.Embedding) else 0)


def unused_vocab_params(model, bios: EncodedBios) -> int:
    """The embedding rows (and head rows, if untied) of tokens that are neither in a biography nor a value,
    the word tokenizer's byte fallback: they never enter a biography's input, and the measure
    renormalises the prediction over the values, so they cannot change it."""
    held = torch.cat([bios.ids.flatten(), *bios.candidates.values()])  # a value nobody holds still enters q
    unused = model.embed.weight.shape[0] - len(torch.unique(held))
    head = model.head.weight.shape[1] if model.head is not None else 0
    return unused * (model.embed.weight.shape[1] + head)


# ------------------------------------------------------------------------------------ training


class BioBatches:
    """Rows of whole biographies (end-of-text before each, one more at the row's end), `per_row` to a
    row; each epoch visits every biography once, in an order of its own. The random state and the place
    in the epoch are the data position saved in checkpoints."""

    def __init__(self, bios: EncodedBios, context: int, batch_size: int, seed: int):
        self.per_row = context // bios.ids.shape[1]
        if self.per_row < 1:
            raise VSLMError(f"model.context {context} is shorter than one biography ({bios.ids.shape[1]} tokens)")
        self.bios, self.batch_size = bios, batch_size
        self.rng = random.Random(f"bio-batches:{seed}")
        self.order, self.at, self.epoch = [], 0, 0

    def _next(self) -> int:
        if self.at == len(self.order):
            self.order = list(range(len(self.bios.ids)))
            self.rng.shuffle(self.order)
            self.at, self.epoch = 0, self.epoch + 1
        self.at += 1
        return self.order[self.at - 1]

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        eos = self.bios.ids[0, :1]
        rows = [torch.cat([*(self.bios.ids[self._next()] for _ in range(self.per_row)), eos])
                for _ in range(self.batch_size)]
        rows = torch.stack(rows)
        return rows[:, :-1], rows[:, 1:]

    def state_dict(self) -> dict:
        return {"rng": self.rng.getstate(), "order": self.order, "at": self.at, "epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        self.rng.setstate(state["rng"])
        self.order, self.at, self.epoch = list(state["order"]), state["at"], state["epoch"]


class BitsCurve(Callback):
    """Every `every` steps (and at the end) the bits stored, added to the step's metrics as `bits` and
    `bits_per_param` (a logged step: `every` a multiple of logging.log_every)."""

    def __init__(self, bios: EncodedBios, every: int):
        self.bios, self.every = bios, every

    def on_step_end(self, trainer: Trainer, metrics: dict) -> None:
        if "loss" in metrics and (trainer.step % self.every == 0 or trainer.step == trainer.cfg.train.steps):
            bits = knowledge_bits(trainer.model, self.bios)["bits"]
            metrics.update({"bits": bits, "bits_per_param": round(bits / trainer.params, 4)})


@dataclass(frozen=True)
class CapacitySettings:
    people: int = 2000
    exposures: int = 100
    world_seed: int = 0  # the biographies (every size and training seed reads the same ones)


def capacity_config(config: str = "capacity", overrides: list[str] | None = None) -> RunConfig:
    return load_config(config, overrides or [])


def biographies_per_step(cfg: RunConfig) -> int:
    return cfg.model.context // (TOKENS + 1) * cfg.train.batch_size * cfg.train.grad_accum


def steps_for(settings: CapacitySettings, cfg: RunConfig) -> int:
    """Training steps that show each biography `exposures` times (rounded up to whole batches)."""
    per_row = cfg.model.context // (TOKENS + 1)
    if per_row < 1:
        raise VSLMError(f"model.context {cfg.model.context} is shorter than one biography ({TOKENS + 1} tokens)")
    if settings.people * (TOKENS + 1) <= cfg.model.context + 1:  # the validation windows read the biographies
        raise UsageError(f"--people {settings.people}: give at least {(cfg.model.context + 1) // (TOKENS + 1) + 1} "
                         f"people, a window of model.context {cfg.model.context} tokens longer than them all")
    return math.ceil(settings.exposures * settings.people / biographies_per_step(cfg))


def train_capacity(out: Path, cfg: RunConfig, settings: CapacitySettings, reuse: bool = True) -> dict:
    """Train one model on the biographies into the run folder `out` and write out/capacity.json; returns it.
    A finished run of the same settings and config is read back; one stopped after a checkpoint is resumed;
    one stopped before any is trained again; a folder holding anything else is an error."""
    out = Path(out)
    steps = steps_for(settings, cfg)
    raw = cfg.model_dump(mode="json")
    raw["train"]["steps"] = steps
    raw["data"]["source"] = str((out / BIOS).resolve())
    cfg = validate(raw)
    recorded = asdict(settings)
    refuse_file_in_the_way(out)
    if (out / RESULT).is_file():
        done = json.loads((out / RESULT).read_text(encoding="utf-8"))
        if not reuse:
            raise VSLMError(f"{out} already holds a capacity run; --out another folder")
        check_same_run(out, cfg, recorded, done.get("settings"), "a capacity run")
        if missing := [k for k in RESULT_KEYS if k not in done]:
            raise VSLMError(f"{out / RESULT} lacks {', '.join(missing)} (an older vslm's): move the run away")
        return nan_for_null(done)  # strict JSON wrote NaN as null
    begun, resume = out.exists() and any(out.iterdir()), bool(list_checkpoints(out / CHECKPOINTS))
    if begun:
        if not (out / STARTED).is_file():
            raise VSLMError(f"{out} holds something other than a capacity run: --out another folder")
        check_not_in_use(out)  # a live run's folder is never judged, let alone cleared
        if (out / CONFIG).is_file() or resume:  # the trainer began: the same run, or an error
            started = json.loads((out / STARTED).read_text(encoding="utf-8"))
            check_same_run(out, cfg, recorded, started, "a capacity run")
    if begun and not resume:  # stopped before its first checkpoint, or before the trainer began (a config the
        if (out / CONFIG).is_file() and not never_checkpointed(out, read_run_config(out)):  # trainer refused)
            raise VSLMError(f"cannot continue the capacity run in {out}: {no_checkpoint_yet(out)}")
        clear_run_folder(out)
    world = bio_world(settings.people, settings.world_seed)
    tokenizer = bio_tokenizer(world)
    bios = encode_bios(world, tokenizer)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / STARTED, json.dumps(recorded) + "\n")
    bios_text = EOS.join(bio_text(world, i) for i in range(len(world.people)))
    write_text(out / BIOS, bios_text, keep_same=True)  # kept when the same: a moved folder resumes (data_identity)
    from vslm.data.shards import prepare_corpus

    corpus = prepare_corpus(cfg.data, tokenizer=tokenizer, all_val=True)  # validation: the training biographies
    every = cfg.logging.log_every * max(1, steps // (10 * cfg.logging.log_every))
    callbacks = [BitsCurve(bios, every), *default_callbacks(cfg)]
    began = time.perf_counter()
    trainer = Trainer(cfg, out, callbacks=callbacks, corpus=corpus,
                      batches=BioBatches(bios, cfg.model.context, cfg.train.batch_size, cfg.train.seed), resume=resume)
    trainer.fit()  # stopped by a signal: its words say the same command continues it (batches of its own)
    measured = knowledge_bits(trainer.model, bios)
    embedding = embedding_params(trainer.model)
    live = trainer.params - unused_vocab_params(trainer.model, bios)
    result = {"settings": recorded, "depth": cfg.model.depth, "width": cfg.model.width, "heads": cfg.model.heads,
              "seed": cfg.train.seed, "steps": steps,
              "exposures": round(steps * biographies_per_step(cfg) / settings.people, 2),
              "params": trainer.params, "embedding_params": embedding, "live_params": live,
              "vocab_size": tokenizer.vocab_size,
              **measured,
              **ratios(measured["bits"], measured["name_bits"], trainer.params, live),
              "bits_per_nonembedding_param": round(measured["bits"] / (trainer.params - embedding), 4),
              "wall_s": round(time.perf_counter() - began, 1), "train_time_s": round(trainer.train_time_s, 1)}
    write_text(out / RESULT, dumps(result, indent=1) + "\n")
    return result


def ratios(bits: float, name_bits: float, params: int, live: int) -> dict[str, float]:
    """The bits of the attributes, and with the names' bits, per parameter and per used parameter (RATIOS)."""
    return {"bits_per_param": round(bits / params, 4), "bits_per_live_param": round(bits / live, 4),
            "with_names_per_param": round((bits + name_bits) / params, 4),
            "with_names_per_live_param": round((bits + name_bits) / live, 4)}


# ------------------------------------------------------------------------------------ a sweep


def parse_size(spec: str) -> tuple[int, int]:
    """'DxW' -> (depth, width)."""
    try:
        depth, width = (int(s) for s in spec.lower().split("x"))
    except ValueError:
        raise UsageError(f"a size is DEPTHxWIDTH, like 2x64; got {spec!r} (dotted overrides go before --sizes "
                         "and --seeds)") from None
    if depth < 1 or width < 16 or width % 16:
        raise UsageError(f"a size needs depth >= 1 and a width that is a multiple of 16 (heads of 16); got {spec!r}")
    return depth, width


# what the sweep sets in every run's config: an override of these would be replaced, silently
SWEPT = ("model.depth", "model.width", "model.heads", "train.seed", "train.steps", "data.source")


def run_sweep(out: Path, sizes: list[str], seeds: list[int], settings: CapacitySettings, config: str = "capacity",
              overrides: list[str] | None = None, on_run=None) -> dict:
    """Every size (depth x width, heads of width 16) and seed into out/<size>-s<seed>; the table of the
    bits stored over seeds in out/capacity.md and out/capacity.json; returns the latter."""
    parsed = [(spec, *parse_size(spec)) for spec in sizes]
    if len({(d, w) for _, d, w in parsed}) < len(parsed):
        raise UsageError(f"--sizes repeats a size: {' '.join(sizes)}")
    if len(set(seeds)) < len(seeds):
        raise UsageError(f"--seeds repeats a seed: {' '.join(map(str, seeds))}")
    for word in overrides or []:
        if swept := fields_set_by(word, SWEPT):
            raise UsageError(f"override '{word}': {', '.join(swept)} {'is' if len(swept) == 1 else 'are'} set by the "
                             "sweep (--sizes, --seeds, --exposures and the biographies), not by an override")
    out = Path(out)
    refuse_file_in_the_way(out)
    refuse_a_run_as_collection(out, "a capacity sweep")
    bio_world(settings.people, settings.world_seed)  # bad settings: one line before anything is trained
    plan = []
    for spec, depth, width in parsed:  # every config checked before the first run
        for seed in seeds:
            cfg = capacity_config(config, [*(overrides or []), f"model.depth={depth}", f"model.width={width}",
                                           f"model.heads={width // 16}", f"train.seed={seed}"])
            steps_for(settings, cfg)
            plan.append((spec, seed, cfg))
    runs = {}
    for spec, seed, cfg in plan:
        result = train_capacity(out / f"{spec}-s{seed}", cfg, settings)
        runs.setdefault(spec, []).append(result)
        if on_run:
            on_run(spec, seed, result)
    rows = [summarize(spec, rs) for spec, rs in runs.items()]
    summary = {"settings": asdict(settings), "data_bits": runs[parsed[0][0]][0]["data_bits"], "rows": rows,
               "paper": against_paper(rows, settings.exposures)}
    asked = {f"{spec}-s{seed}" for spec, seed, _ in plan}
    others = sorted((p.name for p in out.iterdir() if re.fullmatch(r"\d+x\d+-s\d+", p.name)
                     and p.name not in asked and _settings_of(p) == asdict(settings)),
                    key=lambda name: [int(n) for n in re.findall(r"\d+", name)])
    if others:
        summary["left_out"] = others  # a table of this command's sizes and seeds: said, so no run seems lost
        print(f"note: {out / TABLE} tables this command's sizes and seeds; {len(others)} other run"
              f"{'s' * (len(others) > 1)} in {out} ({', '.join(others[:4])}{', ...' if len(others) > 4 else ''}) "
              "are left out: give every size and seed to table them together (finished runs are read back)",
              file=sys.stderr)
    write_text(out / RESULT, dumps(summary, indent=1) + "\n")
    write_text(out / TABLE, capacity_table(summary))
    return summary


def _settings_of(run: Path) -> dict | None:
    """The capacity settings a finished run in `run` recorded (None: not a finished capacity run)."""
    try:
        return json.loads((run / RESULT).read_text(encoding="utf-8")).get("settings")
    except (OSError, ValueError, AttributeError):
        return None


def _mean_std(xs: list[float]) -> list[float]:
    """[mean, sample std] (a list, as JSON reads it back)."""
    from vslm.lab.stats import mean, sample_std

    return [mean(xs), sample_std(xs)]


def summarize(spec: str, runs: list[dict]) -> dict:
    """One size over its seeds: mean and std of the bits and the ratios, the 95% t-interval of each ratio of
    RATIOS (NaN under 2 seeds), and the recall of each attribute."""
    from vslm.lab.stats import paired_difference

    row = {"size": spec, "seeds": len(runs), "params": runs[0]["params"], "live_params": runs[0]["live_params"],
           "nonembedding_params": runs[0]["params"] - runs[0]["embedding_params"],
           "exposures": runs[0].get("exposures")}
    for key in ("bits", "bits_vocab", "name_bits", "bits_per_nonembedding_param", *RATIOS):
        row[key] = _mean_std([r[key] for r in runs])
    for key in RATIOS:
        ratio = [r[key] for r in runs]
        interval = paired_difference([0.0] * len(ratio), ratio)  # against 0: the one-sample interval
        row[f"{key}_ci"] = [interval["ci_low"], interval["ci_high"]]
    row["runs"] = {key: [r[key] for r in runs] for key in RATIOS}
    row["recall"] = {a: statistics.fmean(r["attributes"][a]["recall"] for r in runs) for a in ATTRIBUTES}
    return row


def _pm(ms: list[float], fmt: str) -> str:
    """'mean ± std', or the mean alone where one seed gives no spread (NaN)."""
    return f"{ms[0]:{fmt}}" if math.isnan(ms[1]) else f"{ms[0]:{fmt}} ± {ms[1]:{fmt}}"


def against_paper(rows: list[dict], exposures: int) -> dict | None:
    """Where the paper gives a peak capacity ratio for these exposures (PAPER_RATIO): each size's ratios
    (RATIOS) minus it, a one-sample t-test over seeds (two-sided), Holm across the sizes within each
    ratio; None for other exposures."""
    from vslm.lab.stats import MIN_SEEDS, holm, paired_difference

    if exposures not in PAPER_RATIO:
        return None
    ratio, out = PAPER_RATIO[exposures], {"ratio": PAPER_RATIO[exposures]}
    for key in RATIOS:
        tests = [paired_difference([ratio] * len(r["runs"][key]), r["runs"][key]) for r in rows]
        tested = [i for i, t in enumerate(tests) if t["n"] >= MIN_SEEDS]
        adjusted = dict(zip(tested, holm([tests[i]["p"] for i in tested]), strict=True))
        out[key] = {r["size"]: {"diff": t["diff"], "ci": [t["ci_low"], t["ci_high"]], "p": t["p"],
                                "p_holm": adjusted.get(i, math.nan)}
                    for i, (r, t) in enumerate(zip(rows, tests, strict=True))}
    return out


def _interval(ci: list[float]) -> str:
    return "-" if math.isnan(ci[0]) else f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def capacity_table(summary: dict) -> str:
    s = summary["settings"]
    head = "".join(f" | {label} | 95% CI" for label in RATIOS.values())
    # whole batches: a run shows each biography at least the exposures asked, more where they do not divide
    trained = sorted({r.get("exposures") for r in summary["rows"]} - {None, float(s["exposures"])})
    more = f" asked, {' and '.join(f'{t:g}' for t in trained)} trained (whole batches)" if trained else ""
    lines = [f"# Knowledge capacity: {s['people']} people, {s['exposures']} exposures{more} "
             f"(world seed {s['world_seed']}; data {summary['data_bits']:,.0f} bits)", "",
             f"| size | seeds | params | used (no byte rows) | non-embedding | bits stored | name bits{head} "
             "| bits / non-embedding param | share of the data's bits | bits, full softmax "
             "| recall (mean of 8 attributes) |",
             "|" + "---|" * (11 + 2 * len(RATIOS))]
    for r in summary["rows"]:
        cells = "".join(f" | {_pm(r[key], '.3f')} | {_interval(r[f'{key}_ci'])}" for key in RATIOS)
        lines.append(f"| {r['size']} | {r['seeds']} | {r['params']:,} | {r['live_params']:,} "
                     f"| {r['nonembedding_params']:,} | {_pm(r['bits'], ',.0f')} "
                     f"| {_pm(r['name_bits'], ',.0f')}{cells} "
                     f"| {_pm(r['bits_per_nonembedding_param'], '.3f')} | {r['bits'][0] / summary['data_bits']:.3f} "
                     f"| {_pm(r['bits_vocab'], ',.0f')} | {statistics.fmean(r['recall'].values()):.3f} |")
    lines += ["", "Bits: sum over people and attributes of log2 T_a + log2 q(value), q the model's prediction over "
              "the attribute's values, each biography read alone (a lower bound of what the weights hold, in "
              "expectation). Name bits: the same for the three name words after the end-of-text token, each over "
              "its word list (which names exist; the paper counts them). Full softmax: q over the whole "
              "vocabulary, as the paper scores it. Mean ± sample std over seeds; the interval is Student's t over "
              "seeds. Used: the parameters less the embedding rows of tokens that are neither in a biography nor "
              "a value (the word tokenizer's byte fallback).", ""]
    if paper := summary.get("paper"):
        lines += [f"Against the paper's peak capacity ratio at {s['exposures']} exposures (bits per parameter: "
                  f"{paper['ratio']:g}; one-sample t over seeds, two-sided, Holm across the sizes):", "",
                  "| size" + "".join(f" | {label} - paper [95% CI] | p (Holm)" for label in RATIOS.values()) + " |",
                  "|" + "---|" * (1 + 2 * len(RATIOS))]
        for r in summary["rows"]:
            cells = []
            for key in RATIOS:
                t = paper[key][r["size"]]
                cells += [f"{t['diff']:+.3f} {_interval(t['ci'])}",
                          "n < 3: no test" if math.isnan(t["p_holm"]) else f"{t['p']:.3g} ({t['p_holm']:.3g})"]
            lines.append(f"| {r['size']} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)
