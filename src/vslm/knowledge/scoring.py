"""How a language model answers a FactWorld question: the log-likelihood of each candidate answer.

score(prompt, answer) = sum over the answer's tokens of log p(token | prompt, earlier answer tokens),
where the answer is written as it is in training text: " <answer>\\n" (render.answer_text), so the
newline ends it and a short name is no free prefix of a longer one. The prompt starts a document
(after end-of-text, where the tokenizer has it), as every training document does. A prompt too long
for the model's context loses its oldest tokens; `truncated` counts the prompts that did.

A reader trained to write its steps first (vslm.knowledge.reader, `steps`) is asked by `StepsScorer`:
it continues each prompt greedily until it writes render.STEPS_END, and the choices are scored after
what it wrote. `run_scorer` picks the scorer a run folder's reader settings ask for.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from vslm.data.tokenizer import Tokenizer
from vslm.errors import VSLMError
from vslm.knowledge import render
from vslm.model import GPT
from vslm.report.facts import SCORING, STEPS_SCORING

READER_SETTINGS = "reader-settings.json"  # a reader's run folder: the settings it trained with (vslm.knowledge.reader)


class LMScorer:
    """A `vslm.knowledge.metrics.Scorer` backed by a GPT."""

    scoring = SCORING

    def __init__(self, model: GPT, tokenizer: Tokenizer, batch_size: int = 32):
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self.context = model.cfg.context
        self.truncated = 0

    def encode(self, text: str) -> list[int]:
        try:
            return self.tokenizer.encode(text)
        except VSLMError as e:
            raise VSLMError(f"{e}: train on the world with data.tokenizer=byte (or bpe) to read any name") from None

    def prompt_ids(self, prompt: str) -> list[int]:
        start = [self.tokenizer.eos_id] if self.tokenizer.eos_id is not None else []
        return start + self.encode(prompt)

    @torch.no_grad()
    def __call__(self, items: Sequence[tuple[str, Sequence[str]]]) -> list[list[float]]:
        rows: list[tuple[int, int, list[int], int]] = []  # (item, choice, token ids, answer tokens)
        for i, (prompt, choices) in enumerate(items):
            head, cut = self.prompt_ids(prompt), False
            for j, choice in enumerate(choices):
                answer = self.encode(render.answer_text(choice))
                ids = head + answer
                if len(ids) - 1 > self.context:
                    ids, cut = ids[-(self.context + 1) :], True
                rows.append((i, j, ids, len(answer)))
            self.truncated += cut
        scores = [[0.0] * len(choices) for _, choices in items]
        device = next(self.model.parameters()).device
        was_training = self.model.training
        self.model.eval()
        rows.sort(key=lambda r: len(r[2]), reverse=True)  # similar lengths share a batch: less padding
        for start in range(0, len(rows), self.batch_size):
            batch = rows[start : start + self.batch_size]
            T = len(batch[0][2]) - 1
            x = torch.zeros(len(batch), T, dtype=torch.long)  # (B, T), right-padded
            which, where, target = [], [], []  # one entry per answer token
            for b, (_, _, ids, n) in enumerate(batch):
                x[b, : len(ids) - 1] = torch.tensor(ids[:-1])
                for t in range(len(ids) - 1 - n, len(ids) - 1):  # predictions of the answer's tokens
                    which.append(b)
                    where.append(t)
                    target.append(ids[t + 1])
            logits = self.model(x.to(device)).float()  # (B, T, V)
            picked = F.log_softmax(logits[torch.tensor(which), torch.tensor(where)], dim=-1)  # (N, V)
            logp = picked.gather(1, torch.tensor(target, device=device)[:, None])[:, 0].cpu()  # (N,)
            sums = torch.zeros(len(batch)).index_add_(0, torch.tensor(which), logp)
            for b, (i, j, _, _) in enumerate(batch):
                scores[i][j] = float(sums[b])
        self.model.train(was_training)
        return scores


class StepsScorer(LMScorer):
    """An LMScorer for a reader that writes its steps before its answer (render.with_steps): each prompt is
    continued greedily until the text written ends with render.STEPS_END, or stops at end-of-text or after
    `most_tokens` (the model's context by default; the end is then completed), and the choices are scored
    after the prompt and the steps. Prompts of one length in tokens are continued together, a batch at a
    time, through the KV cache (what each row writes is what it writes alone). `written` keeps the last
    call's steps, one string a prompt."""

    scoring = STEPS_SCORING

    def __init__(self, model: GPT, tokenizer: Tokenizer, batch_size: int = 32, most_tokens: int | None = None):
        super().__init__(model, tokenizer, batch_size)
        self.most_tokens = most_tokens or self.context
        self.end = self.encode(render.STEPS_END)
        self.written: list[str] = []

    @torch.no_grad()
    def write(self, prompts: Sequence[str]) -> list[str]:
        """What the model writes after each prompt, up to and with STEPS_END."""
        ids = [self.prompt_ids(p)[-self.context :] for p in prompts]  # as the scoring crops them
        by_length: dict[int, list[int]] = {}
        for i, row in enumerate(ids):
            by_length.setdefault(len(row), []).append(i)
        device = next(self.model.parameters()).device
        vocab = min(self.tokenizer.vocab_size, self.model.cfg.vocab_size)  # ids above stand for no text
        written = [""] * len(prompts)
        for members in by_length.values():
            for start in range(0, len(members), self.batch_size):
                rows = members[start : start + self.batch_size]
                idx, kv = torch.tensor([ids[i] for i in rows], device=device), None
                new: list[list[int]] = [[] for _ in rows]
                writing = set(range(len(rows)))
                for _ in range(self.most_tokens):
                    logits, kv = self.model.next_logits(idx, kv)
                    tokens = logits[:, :vocab].argmax(dim=-1)  # (B,)
                    for r in sorted(writing):
                        token = int(tokens[r])
                        if token == self.tokenizer.eos_id:  # a document ended: no steps to come
                            writing.discard(r)
                            continue
                        new[r].append(token)
                        if new[r][-len(self.end) :] == self.end:
                            writing.discard(r)
                    if not writing:
                        break
                    idx = torch.cat([idx, tokens[:, None]], dim=1)  # a finished row's tokens are never read
                for r, i in enumerate(rows):
                    written[i] = self._ended(self.tokenizer.decode(new[r]))
        return written

    @staticmethod
    def _ended(text: str) -> str:
        """`text` ending with STEPS_END: completed where the model stopped inside it; an empty text is the
        layout of an answer with no steps (render.with_steps([], a) after answer_text's space)."""
        if text.endswith(render.STEPS_END):
            return text
        if not text:
            return " " + render.STEPS_END
        for k in range(len(render.STEPS_END) - 1, 0, -1):  # "\nA" or "\n" written, the rest not
            if text.endswith(render.STEPS_END[:k]):
                return text + render.STEPS_END[k:]
        return text + render.STEPS_END

    def __call__(self, items: Sequence[tuple[str, Sequence[str]]]) -> list[list[float]]:
        was_training = self.model.training
        self.model.eval()
        self.written = self.write([prompt for prompt, _ in items])
        self.model.train(was_training)
        return super().__call__([(prompt + steps, choices)
                                 for (prompt, choices), steps in zip(items, self.written, strict=True)])


def scoring_of(run: Path) -> str:
    """How `vslm facts eval` asks the run (run_scorer): a saved result of another scoring is not its own."""
    return _scorer_for(run).scoring


def writes_steps(run: Path) -> bool:
    """Whether the run is a reader trained to write its steps before its answer (its READER_SETTINGS)."""
    settings = Path(run) / READER_SETTINGS
    return settings.is_file() and bool(json.loads(settings.read_text(encoding="utf-8")).get("steps", False))


def run_scorer(run: Path, model: GPT, tokenizer: Tokenizer) -> LMScorer:
    """The scorer that asks the run's model as it was trained to answer: a StepsScorer for a reader trained
    with steps, an LMScorer for any other run."""
    return _scorer_for(run)(model, tokenizer)


def _scorer_for(run: Path) -> type[LMScorer]:
    return StepsScorer if writes_steps(run) else LMScorer
