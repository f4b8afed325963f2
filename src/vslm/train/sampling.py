"""Text from a trained model: prompt in, sampled continuations out."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from vslm.data.tokenizer import Tokenizer
from vslm.model import GPT
from vslm.progress import quiet


def prompt_ids(tokenizer: Tokenizer, prompt: str) -> list[int]:
    """The prompt's ids; an empty prompt starts from end-of-text (a document start) when there is one."""
    ids = tokenizer.encode(prompt) if prompt else []
    if not ids:
        ids = [tokenizer.eos_id if tokenizer.eos_id is not None else 0]
    return ids


SAMPLES = "samples.txt"


def save_samples(run_dir: Path, texts: list[str]) -> None:
    """The samples into the run folder (samples.txt, separated by ----), where the report finds them."""
    (Path(run_dir) / SAMPLES).write_text("\n\n----\n\n".join(texts) + "\n", encoding="utf-8")


def sample_text(model: GPT, tokenizer: Tokenizer, prompt: str = "", num: int = 1, tokens: int = 200,
                temperature: float = 0.8, top_k: int | None = 40, seed: int = 0, track: Callable = quiet,
                cache: bool = True, warn: Callable[[str], None] | None = None, slide: bool = False) -> list[str]:
    """`num` continuations of `prompt` (the prompt included, end-of-text tokens dropped); temperature 0 is
    greedy. `cache` keeps keys and values between steps (the same tokens, faster); where the model cannot,
    `warn` gets the reason once. `slide`: past the context, a sliding window instead of the crop.
    Out-of-range arguments are a ValueError naming the argument (GPT.generate)."""
    if num < 1:
        raise ValueError(f"num must be at least 1, got {num}")
    device = next(model.parameters()).device
    ids = prompt_ids(tokenizer, prompt)
    idx = torch.tensor([ids] * num, dtype=torch.long, device=device)
    generator = torch.Generator(device=device).manual_seed(seed)
    was_training = model.training
    model.eval()
    try:  # a refusal from generate leaves a notebook's model in the mode it was in (else training goes on without
        reason = model.cache_fallback() if cache else None  # dropout, and says nothing)
        if reason and warn:
            warn(reason)
        out = model.generate(idx, tokens, temperature=temperature, top_k=top_k, generator=generator, track=track,
                             cache=cache, slide=slide, vocab=min(tokenizer.vocab_size, model.cfg.vocab_size))
    finally:
        model.train(was_training)
    return [prompt + tokenizer.decode(row[len(ids) :].tolist()) for row in out]
