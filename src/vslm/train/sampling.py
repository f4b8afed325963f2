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
                cache: bool = True, warn: Callable[[str], None] | None = None, slide: bool = False,
                end_of_text: str = "") -> list[str]:
    """`num` continuations of `prompt` (the prompt included); temperature 0 is greedy. Where the model ends a
    document, `end_of_text` is written (EOS, "<|endoftext|>", as text files mark it: the texts a reader sees;
    "" drops it, for texts encoded again). `cache` keeps keys and values between steps (the same tokens,
    faster); where the model cannot, `warn` gets the reason once. `slide`: past the context, a sliding window
    instead of the crop. Out-of-range arguments are a ValueError naming the argument (GPT.generate)."""
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
    return [prompt + _decode_documents(tokenizer, row[len(ids) :].tolist(), end_of_text) for row in out]


def _decode_documents(tokenizer: Tokenizer, ids: list[int], end_of_text: str) -> str:
    """The text of `ids`, `end_of_text` where end-of-text tokens are (decode drops them)."""
    if not end_of_text or tokenizer.eos_id is None:
        return tokenizer.decode(ids)
    documents, start = [], 0
    for i, token in enumerate([*ids, tokenizer.eos_id]):
        if token == tokenizer.eos_id:
            documents.append(tokenizer.decode(ids[start:i]))
            start = i + 1
    return end_of_text.join(documents)
