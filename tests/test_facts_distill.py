"""Distilling knowledge out: each loss term against an explicit computation, NPO against gradient
ascent, the distillation objective, a tiny end-to-end run and the relearning test."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import tiny_overrides
from vslm.config import load_config
from vslm.data.answers import IGNORE
from vslm.data.tokenizer import ByteTokenizer
from vslm.errors import VSLMError
from vslm.knowledge import distill as D
from vslm.knowledge.folder import load_world_folder, write_world_folder
from vslm.knowledge.world import WorldConfig
from vslm.train import objectives as O
from vslm.train.run_folder import load_run
from vslm.train.trainer import Trainer

# two rows of three positions over a vocabulary of 3; -100 marks positions not counted
LOGITS = torch.tensor([[[1.0, 2.0, 0.5], [0.0, 0.0, 3.0], [2.0, -1.0, 0.0]],
                       [[0.3, 0.1, -0.2], [1.5, 0.5, 0.5], [-1.0, 2.0, 1.0]]])
OTHER = torch.tensor([[[0.0, 1.0, 0.0], [1.0, 1.0, 1.0], [0.5, 0.0, -0.5]],
                      [[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])
TARGETS = torch.tensor([[IGNORE, 2, 0], [1, IGNORE, IGNORE]])
COUNTED = [(0, 1, 2), (0, 2, 0), (1, 0, 1)]  # (row, position, target)


def softmax(row):
    z = [math.exp(v) for v in row]
    return [v / sum(z) for v in z]


def logp(logits, b, t, y):
    return math.log(softmax(logits[b][t].tolist())[y])


def test_answer_ce_is_the_mean_negative_log_likelihood_of_the_counted_tokens():
    expected = -sum(logp(LOGITS, b, t, y) for b, t, y in COUNTED) / 3
    assert O.next_token_loss(LOGITS, TARGETS).item() == pytest.approx(expected, rel=1e-6)
    assert O.gradient_ascent(LOGITS, TARGETS).item() == pytest.approx(-expected, rel=1e-6)


def test_kl_is_the_target_models_distribution_against_the_students_on_counted_positions():
    expected = 0.0
    for b, t, _ in COUNTED:
        p, q = softmax(OTHER[b][t].tolist()), softmax(LOGITS[b][t].tolist())
        expected += sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q, strict=True))
    assert O.kl_to(OTHER, LOGITS, TARGETS).item() == pytest.approx(expected / 3, rel=1e-6)
    assert O.kl_to(LOGITS, LOGITS, TARGETS).item() == pytest.approx(0.0, abs=1e-7)
    # the direction: KL(p_target || p_student), not the reverse
    assert O.kl_to(LOGITS, OTHER, TARGETS).item() != pytest.approx(expected / 3, rel=1e-3)


def test_npo_equals_its_formula_and_pushes_the_answers_down_like_gradient_ascent():
    beta = 0.5
    seq = [logp(LOGITS, 0, 1, 2) + logp(LOGITS, 0, 2, 0), logp(LOGITS, 1, 0, 1)]
    ref = [logp(OTHER, 0, 1, 2) + logp(OTHER, 0, 2, 0), logp(OTHER, 1, 0, 1)]
    expected = sum((2 / beta) * math.log(1 + math.exp(beta * (s - r))) for s, r in zip(seq, ref, strict=True)) / 2
    assert O.sequence_logp(LOGITS, TARGETS).tolist() == pytest.approx(seq, rel=1e-6)
    assert O.npo(LOGITS, OTHER, TARGETS, beta).item() == pytest.approx(expected, rel=1e-6)
    a = LOGITS.clone().requires_grad_(True)
    O.npo(a, OTHER, TARGETS, beta).backward()
    g = LOGITS.clone().requires_grad_(True)
    O.gradient_ascent(g, TARGETS).backward()
    counted = TARGETS != IGNORE
    # the same sign everywhere it matters: both lower the answer tokens' logits
    assert torch.equal(torch.sign(a.grad[counted]), torch.sign(g.grad[counted]))
    for b, t, y in COUNTED:
        assert a.grad[b, t, y] > 0 and g.grad[b, t, y] > 0  # a step against the gradient lowers the answer
    # per row NPO's gradient is gradient ascent's summed over the row, scaled by 2 sigmoid(beta * ratio)
    n = counted.sum().item()
    for b in range(2):
        w = 2 / (1 + math.exp(-beta * (seq[b] - ref[b])))
        assert torch.allclose(a.grad[b], g.grad[b] * n * w / 2, atol=1e-6)


def test_loss_weights_name_known_terms_and_not_all_zero():
    assert O.check_weights({"forget": 1.0, "retain": 0.0}) == {"forget": 1.0}
    with pytest.raises(VSLMError, match="unknown loss term 'bogus'"):
        O.check_weights({"bogus": 1.0})
    with pytest.raises(VSLMError, match="every loss weight is 0"):
        O.check_weights({"forget": 0.0})


def test_the_distillation_objective_is_the_weighted_sum_of_the_pure_terms_on_the_models():
    from vslm.config import ModelConfig
    from vslm.model import GPT

    torch.manual_seed(0)
    student, teacher, naive = (GPT(ModelConfig(vocab_size=257, context=64, depth=1, width=16, heads=2)).eval()
                               for _ in range(3))
    tok = ByteTokenizer()
    x, y = D.encode_pairs(tok, [("Q: Who?\nA:", "Ann"), ("Q: Where is it?\nA:", "Oslo")], 64)
    assert tok.decode(t for t in y[1].tolist() if t != IGNORE) == " Oslo\n"
    batch = {"closed_book": (x, y)}
    with torch.no_grad():
        loss, got = O.Distillation(teacher, naive, {"forget": 3.0})(student, batch)
        assert set(got) == {"forget"}
        assert got["forget"].item() == pytest.approx(O.kl_to(naive(x), student(x), y).item(), rel=1e-6)
        assert loss.item() == pytest.approx(3 * got["forget"].item(), rel=1e-6)
        _, got = O.Distillation(teacher, naive, {"npo": 1.0}, beta=0.2)(student, batch)
        assert got["npo"].item() == pytest.approx(O.npo(student(x), teacher(x), y, 0.2).item(), rel=1e-6)
    general = D.general_windows(tok, 64, n_stories=5)
    assert general.shape[1] == 65 and tok.decode(general[0].tolist()[1:20]).isprintable()
    batch["general"] = (general[:2, :-1], general[:2, 1:])
    batch["open_book"] = batch["counterfactual"] = (x, y)
    weights = {k: 1.0 + i for i, k in enumerate(O.TERMS)}
    loss, got = O.Distillation(teacher, naive, weights)(student, batch)
    assert set(got) == set(O.TERMS)
    assert loss.item() == pytest.approx(sum(w * got[k].item() for k, w in weights.items()), rel=1e-6)
    for k, v in got.items():  # every term reaches the student's weights, none the frozen models'
        student.zero_grad()
        v.backward(retain_graph=True)
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters()), k
    assert all(p.grad is None for m in (teacher, naive) for p in m.parameters())
    # the parts share one right-padded forward pass: each term as on its own rows alone
    with torch.no_grad():
        assert got["open_book"].item() == pytest.approx(O.next_token_loss(student(x), y).item(), rel=1e-5)
        g = batch["general"]
        assert got["retain"].item() == pytest.approx(O.kl_to(teacher(g[0]), student(g[0]), g[1]).item(), rel=1e-5)
    _, got = O.Distillation(teacher, naive, {"counterfactual": 1.0, "open_book": 1.0})(
        student, {**batch, "counterfactual": None})
    assert got["counterfactual"].item() == 0.0  # no counterfactual question in this draw


TINY_WORLD = WorldConfig(seed=3, people=16, novel_people=4, hops=2, questions_per_hop=6, renderings=2, choices=4)


def train_tiny(tmp_path, name, source, steps):
    words = tiny_overrides(train__steps=steps, train__checkpoint_every=steps, train__eval_every=0,
                           model__context=96, model__width=16)
    cfg = load_config("tiny", [*words, f"data.source={source}", "data.tokenizer=byte"])
    Trainer(cfg, tmp_path / name).fit()
    return tmp_path / name


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("distill")
    write_world_folder(TINY_WORLD, tmp / "world")
    teacher = train_tiny(tmp, "teacher", tmp / "world" / "train.txt", 6)
    naive = train_tiny(tmp, "naive", "stories", 6)
    return tmp, teacher, naive


@pytest.mark.parametrize("method", ["combined", "npo"])
def test_distill_runs_and_writes_a_loadable_run_folder(runs, method):
    tmp, teacher, naive = runs
    out = tmp / f"student-{method}"
    result = D.distill(teacher, naive, tmp / "world", out, method=method, steps=3, batch_size=4, seed=1)
    assert result["steps"] == 3 and result["method"] == method
    _, student, _ = load_run(out)
    _, before, _ = load_run(teacher)
    assert any(not torch.equal(a, b) for a, b in zip(student.state_dict().values(), before.state_dict().values(),
                                                     strict=True))
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3 and all(math.isfinite(v) for v in result["last"].values())
    assert set(result["last"]) == {"step", "loss", *D.METHODS[method]}
    again = D.distill(teacher, naive, tmp / "world", tmp / f"again-{method}", method=method, steps=3, batch_size=4,
                      seed=1)
    assert again["last"] == result["last"]  # deterministic given the seed
    assert math.isfinite(result["val"]["val_loss"])  # the student on the teacher's validation text
    with pytest.raises(VSLMError, match="already holds a distillation of other settings"):
        D.distill(teacher, naive, tmp / "world", out, steps=1)


def test_an_interrupted_distillation_continues_and_a_finished_one_is_read_back(runs, monkeypatch):
    """The settings file outlives the fine-tune's first start (which clears a folder with no checkpoint), so the
    same call continues a distillation killed after a checkpoint, and reads a finished one back."""
    tmp, teacher, naive = runs
    out, kw = tmp / "resumed", {"method": "combined", "steps": 4, "batch_size": 4, "seed": 1}
    first = D.distill(teacher, naive, tmp / "world", out, **kw)
    assert (out / D.STARTED).is_file()
    assert D.distill(teacher, naive, tmp / "world", out, **kw) == first  # finished: read back
    # the same folders spelled from another folder (an experiment rerun with its --out relative): read back too
    monkeypatch.chdir(tmp)
    assert D.distill(teacher.relative_to(tmp), naive.relative_to(tmp), "world", "resumed", **kw) == first
    # a settings file of before 2026-12-07, its folders as typed: read from the current folder
    import json as json_module

    old = json_module.loads((out / D.STARTED).read_text())
    old |= {"teacher": str(teacher), "naive": str(naive), "world": str(tmp / "world")}
    del old["paths"]
    (out / D.STARTED).write_text(json_module.dumps(old))
    assert D.distill(teacher, naive, tmp / "world", out, **kw)["last"] == first["last"]
    (out / D.RESULT).unlink()  # as if killed after its last checkpoint, before the result was written
    assert D.distill(teacher, naive, tmp / "world", out, **kw)["last"] == first["last"]
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 4  # nothing trained twice
    (out / D.STARTED).unlink()  # a folder finished before the settings file outlived its start: its result says
    assert D.distill(teacher, naive, tmp / "world", out, **kw)["last"] == first["last"]
    import json

    older = json.loads((out / D.RESULT).read_text())
    del older["distractors"]  # a result written before it recorded them (the default, 4, then)
    (out / D.RESULT).write_text(json.dumps(older))
    assert D.distill(teacher, naive, tmp / "world", out, **kw)["last"] == first["last"]
    with pytest.raises(VSLMError, match="already holds a distillation of other settings"):
        D.distill(teacher, naive, tmp / "world", out, **{**kw, "steps": 5})
    with pytest.raises(VSLMError, match="holds files that are not a distillation's"):
        D.distill(teacher, naive, tmp / "world", teacher, **kw)  # --out the teacher's own folder
    for bad, match in (({"method": "npo", "beta": 0.0}, "NPO's beta must be above 0"),
                       ({"distractors": -2}, "--distractors -2: a count"),
                       ({"weights": {"forget": -1.0}}, "loss weight forget=-1.0: a finite number, 0 or more"),
                       ({"weights": {"forget": float("nan")}}, "loss weight forget=nan"),
                       ({"steps": 0}, "steps")):  # checked once the teacher is read: before the folder is made
        with pytest.raises(VSLMError, match=match):
            D.distill(teacher, naive, tmp / "world", tmp / "bad", **{**kw, **bad})
        assert not (tmp / "bad").exists(), bad  # nothing that would refuse the corrected command
    assert D.distill(teacher, naive, tmp / "world", tmp / "bad", **kw)["last"] == first["last"]


def test_a_naive_model_with_another_tokenizer_of_the_same_size_is_refused(tmp_path, runs):
    """Two char vocabularies of 20 symbols each: the same size, other symbols. The forget term compares the
    two models' predictions token by token, so their tokenizers must be one."""
    world = runs[0] / "world"
    for name, letters in (("a", "abcdefghijklmnopqrs "), ("b", "hijklmnopqrstuvwxyz ")):
        text = "".join(letters[(i * 7 + i // 19) % len(letters)] for i in range(60000))
        (tmp_path / f"{name}.txt").write_text(text)
        words = tiny_overrides(train__steps=2, train__eval_every=0, model__context=32, model__width=16)
        Trainer(load_config("tiny", [*words, f"data.source={tmp_path / f'{name}.txt'}"]), tmp_path / name).fit()
    assert load_run(tmp_path / "a")[0].model.vocab_size == load_run(tmp_path / "b")[0].model.vocab_size
    with pytest.raises(VSLMError, match="the naive model's tokenizer .* is not the teacher's"):
        D.distill(tmp_path / "a", tmp_path / "b", world, tmp_path / "student", steps=2)


def test_a_reader_that_writes_its_steps_is_refused_as_teacher_or_naive_model(tmp_path, runs):
    """Distillation's terms compare answers given at once, after "A:"; a steps reader answers after its steps."""
    from vslm.knowledge.reader import ReaderSettings, reader_config, train_reader

    world = runs[0] / "world"
    cfg = reader_config("reader", ["train.steps=2", "model.depth=1", "model.width=32", "train.eval_windows=2"])
    train_reader(world, tmp_path / "stepper", cfg, ReaderSettings(max_hops=1, curve_every=0, steps=True))
    for teacher, naive, role in ((runs[1], tmp_path / "stepper", "naive model"),
                                 (tmp_path / "stepper", runs[2], "teacher")):
        with pytest.raises(VSLMError, match=f"the {role} .*stepper is a reader trained to write its steps"):
            D.distill(teacher, naive, world, tmp_path / "student", steps=2)
    assert not (tmp_path / "student").exists()


def test_relearning_reports_accuracies_before_and_after(runs):
    tmp, teacher, _ = runs
    _, model, _ = load_run(teacher)
    folder = load_world_folder(tmp / "world")
    result = D.relearn(teacher, folder, tmp / "relearn", fraction=0.1, steps=3, batch_size=4, per_group=5)
    assert len((tmp / "relearn" / "metrics.jsonl").read_text().splitlines()) == 3
    assert math.isfinite(result["fit"]["loss"]) and math.isfinite(result["fit"]["val_loss"])
    assert result["people"] == 2 and result["facts"] > 0
    for when in ("before", "after"):
        for group in ("rest", "relearned"):
            acc = result[when][group]
            assert 0.0 <= acc["accuracy"] <= 1.0 and acc["n"] > 0 and 0.25 <= acc["chance"] <= 0.5
    assert result["before"]["rest"]["n"] == result["after"]["rest"]["n"]
    # the numbers themselves: the groups by their definition (the questions that use a fact of the people
    # relearned, and the others), scored closed book by the teacher before and by the relearned run's own
    # checkpoint after (groups swapped, or "after" measured on a copy the fine-tune never moved, cannot pass)
    import random

    from vslm.knowledge import metrics, render
    from vslm.knowledge.scoring import LMScorer

    people = [e.id for e in folder.world.of_kind("person", "seen")]
    random.Random("relearn:0").shuffle(people)
    facts = {f.id for e in people[:2] for f in folder.world.facts_about(e)}
    asked = [q for q in folder.questions if q.pool == "seen" and not q.counterfactual]
    groups = {"rest": [q for q in asked if not facts & set(q.support)],
              "relearned": [q for q in asked if facts & set(q.support)]}
    groups = {k: metrics.per_hops(v, 5) for k, v in groups.items()}
    assert result["facts"] == len(facts) and all(groups.values())
    for when, folder_of_model in (("before", teacher), ("after", tmp / "relearn")):
        _, scored, tokenizer = load_run(folder_of_model)
        scorer = LMScorer(scored, tokenizer)
        for group, qs in groups.items():
            picked = metrics.pick(scorer, [render.closed_book_prompt(q.question) for q in qs], qs)
            assert result[when][group] == metrics.accuracy(qs, picked), (when, group)
    moved = load_run(tmp / "relearn")[1].state_dict()
    assert any(not torch.equal(moved[k], v) for k, v in model.state_dict().items())  # the fine-tune moved it
    _, fresh, _ = load_run(teacher)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values(),
                                                 strict=True))  # the run relearned from is not changed


def test_the_cli_distills_relearns_and_the_student_is_evaluated(runs, capsys):
    import json

    from vslm.cli import main

    tmp, teacher, naive = runs
    out = tmp / "cli-student"
    assert main(["facts", "distill", str(teacher), "--naive", str(naive), "--world", str(tmp / "world"),
                 "--out", str(out), "--method", "gradient-ascent", "--steps", "2", "--batch-size", "4",
                 "--weight", "retain=0", "--relearn-steps", "2"]) == 0
    result = json.loads((out / "distill.json").read_text())
    assert result["weights"]["retain"] == 0.0 and result["weights"]["gradient_ascent"] == 1.0
    assert "retain" not in result["last"]
    for label in ("student", "naive"):
        assert 0.0 <= result["relearning"][label]["after"]["rest"]["accuracy"] <= 1.0
    # the same distillation with other relearning settings: read back, and relearned in folders of their own
    assert main(["facts", "distill", str(teacher), "--naive", str(naive), "--world", str(tmp / "world"),
                 "--out", str(out), "--method", "gradient-ascent", "--steps", "2", "--batch-size", "4",
                 "--weight", "retain=0", "--relearn-steps", "3", "--relearn-fraction", "0.5"]) == 0
    assert sorted(p.name for p in (out / "relearn").iterdir()) == [
        "naive-fraction-0.1-steps-2-seed-0", "naive-fraction-0.5-steps-3-seed-0",
        "student-fraction-0.1-steps-2-seed-0", "student-fraction-0.5-steps-3-seed-0"]
    relearned = out / "relearn" / "student-fraction-0.5-steps-3-seed-0" / "metrics.jsonl"
    assert len(relearned.read_text().splitlines()) == 3
    assert main(["facts", "eval", str(out), "--world", str(tmp / "world"), "--per-group", "2", "--json"]) == 0
    assert 0.0 <= json.loads(capsys.readouterr().out.splitlines()[-1])["closed_book"]["seen"]["accuracy"] <= 1.0
    assert main(["facts", "distill", str(teacher), "--naive", str(naive), "--world", str(tmp / "world"),
                 "--out", str(tmp / "x"), "--weight", "retain"]) != 0
    assert "NAME=NUMBER" in capsys.readouterr().err
    assert main(["facts", "distill", str(teacher), "--naive", str(naive), "--world", str(tmp / "world"),
                 "--out", str(tmp / "x"), "--relearn-steps", "2", "--relearn-fraction", "1.5"]) == 2
    assert "--relearn-fraction 1.5: the share of the people relearned" in capsys.readouterr().err
    assert not (tmp / "x").exists()


def test_a_counterfactual_context_states_another_choice_where_the_answer_was(runs):
    from vslm.knowledge.contexts import Contexts

    tmp, _, _ = runs
    folder = load_world_folder(tmp / "world")
    ctx = Contexts(folder)
    rng = __import__("random").Random(0)
    made = 0
    for q in D.forget_questions(folder):
        got = D.counterfactual_prompt(q, ctx, rng)
        if q.kind == "older":
            assert got is None
            continue
        assert got is not None
        prompt, target = got
        assert target in q.choices and target != q.answer
        last = folder.cards[q.support[-1]].text
        assert last.replace(q.answer, target) in prompt.splitlines()
        assert prompt.endswith(f"Q: {q.question}\nA:")
        made += 1
    assert made > 0
