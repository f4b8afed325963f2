"""How a language model answers a FactWorld question: the log-likelihood of each candidate answer.

score(prompt, answer) = sum over the answer's tokens of log p(token | prompt, earlier answer tokens),
where the answer is written as it is in training text: " <answer>\\n" (render.answer_text), so the
newline ends it and a short name is no free prefix of a longer one. The prompt starts a document
(after end-of-text, where the tokenizer has it), as every training document does. A prompt too long
for the model's context loses its oldest tokens; `truncated` counts the prompts that did.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from vslm.data.tokenizer import Tokenizer
from vslm.errors import VSLMError
from vslm.knowledge import render
from vslm.model import GPT


class LMScorer:
    """A `vslm.knowledge.metrics.Scorer` backed by a GPT."""

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
