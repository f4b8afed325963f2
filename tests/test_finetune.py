"""Fine-tuning through the one training loop: a LoRA fact adapter, a distillation student and an
answer-only relearning copy each train as a run folder whose interrupted run resumes bit for bit."""

from __future__ import annotations

import copy
import json
import os
import signal

import pytest
import torch

from conftest import files_in, tiny_overrides
from vslm.cli import main
from vslm.config import load_config
from vslm.data.answers import AnswerSampler
from vslm.data.shards import prepare_corpus
from vslm.knowledge import adapters
from vslm.knowledge.distill import DistillBatches
from vslm.knowledge.folder import load_world_folder, write_world_folder
from vslm.knowledge.world import WorldConfig
from vslm.model import GPT
from vslm.train.checkpoint import list_checkpoints
from vslm.train.finetune import fine_tune, finetune_config
from vslm.train.objectives import Distillation

BASE = load_config("tiny", tiny_overrides(data__tokenizer="byte", model__context=96, model__width=16))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("finetune")
    write_world_folder(WorldConfig(seed=3, people=16, novel_people=4, hops=2, questions_per_hop=6, renderings=2,
                                   choices=4), tmp / "world")
    folder = load_world_folder(tmp / "world")
    corpus = prepare_corpus(BASE.data)
    torch.manual_seed(0)
    base = GPT(BASE.with_vocab_size(corpus.tokenizer.vocab_size).model)
    docs = adapters.group_documents(folder.world, [e.id for e in folder.world.of_kind("person", "seen")][:4])
    return tmp, folder, corpus, base, docs


def lines(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def task(kind, setup):
    """(model, objective, batches) of one kind of fine-tune, built afresh (as a resumed process would)."""
    tmp, folder, corpus, base, docs = setup
    model = copy.deepcopy(base)
    if kind == "adapter":
        torch.manual_seed(2)  # LoRA's A is drawn at random
        adapters.add_adapter(model, "g0", rank=4)
        for n, p in model.named_parameters():
            p.requires_grad_(".lora_" in n)
        return model, None, AnswerSampler(docs, corpus.tokenizer, 96, 4, seed=5)
    if kind == "relearn":
        return model, None, AnswerSampler(docs, corpus.tokenizer, 96, 4, seed=5)
    torch.manual_seed(3)  # the naive model's random init: the same in every call, whatever ran before in the process
    teacher, naive = copy.deepcopy(base).requires_grad_(False), GPT(base.cfg).requires_grad_(False)
    objective = Distillation(teacher, naive, {"open_book": 1.0, "counterfactual": 1.0, "forget": 1.0, "retain": 1.0})
    return model, objective, DistillBatches(folder, corpus.tokenizer, 96, 4, seed=5)


@pytest.mark.parametrize("kind", ["adapter", "distill", "relearn"])
def test_an_interrupted_fine_tune_resumes_bit_for_bit(setup, kind, capsys):
    tmp, _, corpus, _, _ = setup
    whole = tmp / f"{kind}-whole"
    model, objective, batches = task(kind, setup)
    final = fine_tune(finetune_config(BASE, 6, 3e-3, 4, seed=1, device="cpu"), whole, model, corpus,
                      objective, batches)
    assert final["step"] == 6 and "val_loss" in final
    if kind == "distill":
        assert {"open_book", "counterfactual", "forget", "retain"} <= set(final)
    # the same fine-tune stopped after 3 steps (its last checkpoint), then run to 6 by a fresh process
    cut = tmp / f"{kind}-cut"
    model1, objective1, batches1 = task(kind, setup)
    fine_tune(finetune_config(BASE, 3, 3e-3, 4, seed=1, device="cpu"), cut, model1, corpus, objective1, batches1)
    model2, objective2, batches2 = task(kind, setup)
    again = fine_tune(finetune_config(BASE, 6, 3e-3, 4, seed=1, device="cpu"), cut, model2, corpus,
                      objective2, batches2)
    drop = ("tokens_per_s", "train_time_s", "peak_rss_mb")
    same = (*drop, "val_loss", "val_bpb")  # the cut run was also evaluated at its end, step 3
    assert [{k: v for k, v in r.items() if k not in same} for r in lines(cut)] == \
           [{k: v for k, v in r.items() if k not in same} for r in lines(whole)]
    assert {k: v for k, v in again.items() if k not in drop} == {k: v for k, v in final.items() if k not in drop}
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), model2.state_dict().values(),
                                                 strict=True))
    if kind == "adapter":  # only the adapter moved
        base = setup[3].state_dict()
        for name, value in model2.state_dict().items():
            if ".lora_" not in name:
                assert torch.equal(value, base[name.replace(".base_layer", "")]), name
    # finished: a further call only loads the weights, and trains nothing
    model3, objective3, batches3 = task(kind, setup)
    done = fine_tune(finetune_config(BASE, 6, 3e-3, 4, seed=1, device="cpu"), whole, model3, corpus,
                     objective3, batches3)
    assert done["loss"] == final["loss"] and len(lines(whole)) == 6
    err = capsys.readouterr().err  # no train.steps to raise: the command that started it sets its steps
    assert "is already at its last step (6 = train.steps): nothing to train" in err and "extends it" not in err
    # `vslm train --resume` would go on with the config's text and the next-token loss: refused, nothing touched
    own = {"adapter": "AnswerSampler", "relearn": "AnswerSampler", "distill": "DistillBatches, Distillation"}[kind]
    before = files_in(cut)
    assert main(["train", "--resume", "--out", str(cut), "train.steps=9"]) == 2
    err = capsys.readouterr().err
    assert f"it trains with batches or an objective of its own ({own})" in err and err.count("\n") == 1, err
    assert files_in(cut) == before
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), model3.state_dict().values(),
                                                 strict=True))


def test_a_fine_tune_runs_at_the_sessions_threads_not_the_base_runs():
    """A teacher trained with train.threads=4 made its distillation warn "set train.threads=1", which `vslm facts
    distill` takes no override for: a fine-tune now runs at the session's count, which --threads sets."""
    base = load_config("tiny", tiny_overrides(train__threads=4))
    assert finetune_config(base, 6, 3e-3, 4, seed=1, device="cpu").train.threads == 0
    before = torch.get_num_threads()
    try:
        assert main(["facts", "distill", "t", "--naive", "n", "--world", "w", "--out", "o", "--threads", "-1"]) == 2
        torch.set_num_threads(2)
        from vslm.cli import _threads

        _threads(1, "distillation")
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_a_fine_tune_has_a_constant_rate_and_no_decay_snapshots_or_probes():
    cfg = finetune_config(BASE, 40, 2e-3, 8, seed=4, grad_clip=0.5)
    t = cfg.train
    assert (t.steps, t.lr, t.warmup, t.schedule, t.weight_decay, t.batch_size, t.seed, t.grad_clip) == \
           (40, 2e-3, 0, "constant", 0.0, 8, 4, 0.5)
    assert not t.snapshots and cfg.logging.probe_every == 0 and not cfg.logging.progress
    assert cfg.model == BASE.model and cfg.data == BASE.data
    # a run saved with what a newer check refuses (a vocab_size beside the char tokenizer): its fine-tunes still run
    from vslm.config import validate

    old = validate({**BASE.model_dump(mode="json"), "data": {**BASE.data.model_dump(mode="json"), "vocab_size": 500}},
                   saved=True)
    assert finetune_config(old, 4, 1e-3, 2, seed=0).data.vocab_size == 500


class CtrlC:
    """A batch source that sends this process SIGINT `times` times (a terminal's Ctrl-C and, in an experiment's
    worker, its parent's copy) as the fourth batch is drawn (the first is the trainer's peek)."""

    def __init__(self, inner, times: int):
        self.inner, self.times, self.drawn = inner, times, 0

    def next_batch(self):
        self.drawn += 1
        if self.drawn == 4:
            for _ in range(self.times):
                os.kill(os.getpid(), signal.SIGINT)
        return self.inner.next_batch()

    def state_dict(self):
        return self.inner.state_dict()

    def load_state_dict(self, state):
        self.inner.load_state_dict(state)


def test_a_fine_tune_stopped_by_a_signal_keeps_its_callers_files_and_says_the_same_command_continues_it(setup):
    """Ctrl-C during a fine-tune: `vslm train --resume` could not rebuild its objective or batches, so the words
    name the command that started it. A first start clears a folder with no checkpoint but the caller's files."""
    from vslm.train.trainer import TrainingStopped

    tmp, _, corpus, _, _ = setup
    model, _, batches = task("relearn", setup)

    run = tmp / "stopped"
    run.mkdir()
    (run / "mine.json").write_text("{}")
    (run / "metrics.jsonl").write_text('{"step": 1}\n')  # a start killed before its first checkpoint
    with pytest.raises(TrainingStopped, match=r"^SIGINT: stopped at step \d with a checkpoint; the same command "
                                              r"again continues it$"):
        fine_tune(finetune_config(BASE, 6, 3e-3, 4, seed=1, device="cpu"), run, model, corpus, None,
                  CtrlC(batches, times=1), keep=("mine.json",))
    assert (run / "mine.json").read_text() == "{}" and len(lines(run)) < 6


@pytest.mark.parametrize("apart", [False, True])
def test_a_stop_signal_and_its_copy_checkpoint_where_a_second_stop_later_stops_at_once(setup, monkeypatch, apart):
    """A terminal's Ctrl-C reaches a whole process group and an experiment's parent passes its own on to its
    workers: a worker gets two SIGINTs at once, one request, and still writes its checkpoint (it stopped at once,
    losing the steps since its last checkpoint, or all of a run's last one). A second one later stops at once."""
    from vslm.train.trainer import Trainer, TrainingStopped

    tmp, _, corpus, _, _ = setup
    model, _, batches = task("relearn", setup)
    if apart:  # the second one "later": the window closed
        monkeypatch.setattr(Trainer, "SAME_STOP_S", -1.0)

    run = tmp / f"twice-{apart}"
    with pytest.raises(KeyboardInterrupt if apart else TrainingStopped):
        fine_tune(finetune_config(BASE, 6, 3e-3, 4, seed=1, device="cpu"), run, model, corpus, None,
                  CtrlC(batches, times=2))
    steps = [s for s, _ in list_checkpoints(run / "checkpoints")]
    assert steps == ([] if apart else [3])  # stopped at once: no checkpoint; one request: at the step it was on
