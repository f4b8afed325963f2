"""Do trained models copy the story characters' names from earlier in the context? (docs/EXPERIMENTS.md,
training dynamics: induction.)

    python scripts/name_copying.py corpus OUT.txt --bytes 10000000 [--seed 0]
        the embedded stories with each story's names replaced by invented ones (2-3 consonant-vowel
        syllables, the same throughout the story), which can only be copied, not learned by heart;
    python scripts/name_copying.py measure RUN [RUN ...] [--invented]
        on held-out stories (a seed no run trained on; --invented: with invented names), the loss on a
        name's letters after its first, at the name's first occurrence in the window against a repeat,
        and per depth and head the attention from each letter of a repeat to the letter after it in the
        name's previous occurrence (the copy source; uniform attention gives about 1 / position).
"""

from __future__ import annotations

import argparse
import random
import re
from pathlib import Path

import torch

from vslm.data.stories import ALL_NAMES, iter_stories
from vslm.model.hooks import capture
from vslm.probes import token_nll
from vslm.train.run_folder import load_run

CONSONANTS, VOWELS = "bdfghjklmnprstvwz", "aeiou"
COMMON = re.compile(r"\b(" + "|".join(ALL_NAMES) + r")\b")
HELD_OUT_SEED = 4242  # stories no training run draws (data.seed is 0 unless changed)


def invent(rng: random.Random) -> str:
    name = "".join(rng.choice(CONSONANTS) + rng.choice(VOWELS) for _ in range(rng.randint(2, 3)))
    return (name + rng.choice("nlrsk") if rng.random() < 0.4 else name).capitalize()


def stories(seed: int, invented: bool, **limit: int) -> tuple[list[str], set[str]]:
    """Stories from the embedded generator, with invented names if asked, and the names they use."""
    rng, out, names = random.Random(seed + 7), [], set()
    for story in iter_stories(seed, **limit):
        if invented:
            chosen: dict[str, str] = {}  # each occurrence draws a name; the first one drawn for a name stays
            story = COMMON.sub(lambda m, chosen=chosen: chosen.setdefault(m.group(1), invent(rng)), story)
            names |= set(chosen.values())
        out.append(story)
    return out, names or set(ALL_NAMES)


@torch.no_grad()
def measure(run: Path, text: str, names: set[str], windows: int = 300) -> str:
    cfg, model, tok = load_run(run)
    model.eval()
    T, hooks = cfg.model.context, [f"attn.{d}" for d in range(len(model.order))]
    pattern = re.compile(r"\b(" + "|".join(sorted(names, key=len, reverse=True)) + r")\b")
    loss = {"first": [0.0, 0], "repeat": [0.0, 0]}
    source, count = None, 0
    for start in range(0, len(text) - T, T)[:windows]:
        window = text[start : start + T]
        idx = torch.tensor([tok.encode(window)])
        if idx.shape[1] != T:
            raise SystemExit(f"{run}: measure needs a character tokenizer (one token per character)")
        with capture(model, *hooks) as weights:
            nll = token_nll(model(idx), idx)[0]  # nll[p - 1] scores the character at p
        previous: dict[str, int] = {}
        for m in pattern.finditer(window):
            s, e, name = m.start(), m.end(), m.group(1)
            kind = "repeat" if name in previous else "first"
            loss[kind][0] += float(nll[s : e - 1].sum())  # letters s+1 .. e-1
            loss[kind][1] += e - 1 - s
            if kind == "repeat":
                for k in range(e - s - 1):  # the query reads letter k, its source is letter k + 1 before
                    w = torch.stack([weights[h][0, :, s + k, previous[name] + k + 1] for h in hooks])
                    source = w if source is None else source + w
                    count += 1
            previous[name] = s
    first, repeat = (loss[k][0] / max(loss[k][1], 1) for k in ("first", "repeat"))
    heads = (source / max(count, 1)).numpy().round(3).tolist() if source is not None else []
    return (f"{run}: letters after the first, first occurrence {first:.3f} ({loss['first'][1]}), repeat "
            f"{repeat:.3f} ({loss['repeat'][1]}); attention to the copy source per depth and head: {heads}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    corpus = sub.add_parser("corpus")
    corpus.add_argument("out", type=Path)
    corpus.add_argument("--bytes", type=int, default=10_000_000)
    corpus.add_argument("--seed", type=int, default=0)
    probe = sub.add_parser("measure")
    probe.add_argument("runs", type=Path, nargs="+")
    probe.add_argument("--invented", action="store_true")
    args = ap.parse_args()
    if args.command == "corpus":
        text, _ = stories(args.seed, True, n_bytes=args.bytes)
        args.out.write_text("\n\n".join(text))
        print(args.out)
        return
    text, names = stories(HELD_OUT_SEED, args.invented, n_stories=300)
    for run in args.runs:
        print(measure(run, "\n\n".join(text), names))


if __name__ == "__main__":
    main()
