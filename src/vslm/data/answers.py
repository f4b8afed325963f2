"""Batches of whole documents with the loss on their answers only (`data.answer_only = true`).

A document's answers are the text after each line-initial "A:" (FactWorld's questions) or "Answer:" (the
registry's SQuAD, vslm.data.registry.squad_text) up to the end of its line, newline
included (added where the document ends): how an answer ends in running text, and how it is scored
at evaluation. Targets elsewhere are -100, which `F.cross_entropy` ignores, so the training step needs
no change. A document with no answer at all keeps the loss on every token (plain training text in
the same file). The prompt and each answer are tokenized apart, as an evaluation scores them.

Each row of a batch is one document from its start (after end-of-text, where the tokenizer has one),
right-padded; a document longer than the context loses its oldest tokens. Documents are drawn by a
seeded `torch.Generator` whose state is the data position in a checkpoint, as for `WindowSampler`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch

from vslm.config import DataConfig
from vslm.data.shards import Corpus
from vslm.data.tokenizer import Tokenizer
from vslm.errors import VSLMError

ANSWER = re.compile(r"(?m)^(?:A|Answer):([^\n]*)(?:\n|$)")
IGNORE = -100  # F.cross_entropy's ignore_index


def segments(document: str) -> list[tuple[str, bool]]:
    """The document as (text, is_answer) pieces, in order; all of it an answer when it has none."""
    out, pos = [], 0
    for m in ANSWER.finditer(document):
        out.append((document[pos : m.start(1)], False))  # up to and with "A:" or "Answer:"
        out.append((m.group(1) + "\n", True))
        pos = m.end()
    if not out:
        return [(document, True)]
    if pos < len(document):
        out.append((document[pos:], False))
    return out


def training_documents(cfg: DataConfig, corpus: Corpus) -> list[str]:
    """The documents the shards' training split holds, decoded from its tokens: the same ones, to the same
    budget (data.max_tokens, data.max_bytes), that a run without answer_only trains on; never a held-out one."""
    tokens, starts = corpus.train.tokens, corpus.train.doc_starts.tolist()
    ends = [*starts[1:], len(tokens)]
    train = [corpus.tokenizer.decode(tokens[a:b].tolist()) for a, b in zip(starts, ends, strict=True)]  # eos dropped
    if not any(ANSWER.search(d) for d in train):  # else the loss would stay on every token, without a word
        raise VSLMError(f"data.answer_only: no training document of {cfg.source} has an answer (a line starting "
                        "with 'A:' or 'Answer:'); drop data.answer_only, or give a source of questions and answers")
    return train


class AnswerSampler:
    def __init__(self, documents: Sequence[str], tokenizer: Tokenizer, context: int, batch_size: int, seed: int):
        if not documents:
            raise VSLMError("data.answer_only: no training documents")
        start = [tokenizer.eos_id] if tokenizer.eos_id is not None else []
        # per document, once: inputs ids[:-1] and targets ids[1:], a target -100 unless part of an answer
        self.rows: list[tuple[torch.Tensor, torch.Tensor]] = []
        for doc in documents:
            ids, counted = list(start), [False] * len(start)
            for text, is_answer in segments(doc):
                piece = tokenizer.encode(text)
                ids += piece
                counted += [is_answer] * len(piece)
            ids, counted = ids[-(context + 1) :], counted[-(context + 1) :]
            targets = [t if c else IGNORE for t, c in zip(ids[1:], counted[1:], strict=True)]
            self.rows.append((torch.tensor(ids[:-1], dtype=torch.long), torch.tensor(targets, dtype=torch.long)))
        self.context, self.batch_size = context, batch_size
        self.generator = torch.Generator().manual_seed(seed)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets, each (B, T) int64 with T the longest row's length (at most the context);
        targets are -100 off the answers and on the padding."""
        pick = torch.randint(len(self.rows), (self.batch_size,), generator=self.generator).tolist()
        T = max(len(self.rows[i][0]) for i in pick)
        x = torch.zeros(self.batch_size, T, dtype=torch.long)
        y = torch.full((self.batch_size, T), IGNORE, dtype=torch.long)
        for b, i in enumerate(pick):
            inputs, targets = self.rows[i]
            x[b, : len(inputs)] = inputs
            y[b, : len(targets)] = targets
        return x, y

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
