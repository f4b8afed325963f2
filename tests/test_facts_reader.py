"""The reader recipe (`vslm facts reader`, issue 23): its word tokenizer, its examples and curriculum,
the answer-only mask, and a reduced recipe that learns to read a card above chance."""

from __future__ import annotations

import json
import random
import re
import shutil

import pytest
import torch

from conftest import tiny_gpt
from test_facts import parse_phrase
from test_facts_preloaded import answer_from_context, read_context
from vslm.cli import main
from vslm.data.answers import IGNORE
from vslm.errors import VSLMError
from vslm.knowledge import metrics, names, render
from vslm.knowledge.contexts import Contexts
from vslm.knowledge.folder import build, load_world_folder, write_world_folder
from vslm.knowledge.reader import (
    EXAMPLES,
    Curriculum,
    ReaderBatches,
    ReaderSettings,
    draw_example,
    open_book_by_hops,
    reader_config,
    reader_tokenizer,
    train_reader,
)
from vslm.knowledge.scoring import LMScorer, StepsScorer, run_scorer
from vslm.knowledge.world import NamePool, WorldConfig, name_pools
from vslm.train.run_folder import load_run, read_run_config

WORLD = WorldConfig(seed=3, people=40, novel_people=12, hops=3, questions_per_hop=10)
ALL = NamePool(list(names.FIRST_NAMES), list(names.SURNAMES), list(names.COMPANY_WORDS))


@pytest.fixture(scope="module")
def tokenizer():
    return reader_tokenizer()


def test_the_world_text_round_trips_and_every_name_is_a_word_token(tokenizer):
    files = build(WORLD)
    text = files["train.txt"].replace("<|endoftext|>", "") + files["cards.jsonl"] + files["questions.jsonl"]
    assert tokenizer.decode(tokenizer.encode(text)) == text  # (end-of-text is a special token: decoded to "")
    odd = "Zürich naïve 🙂 Xq7"  # not the world's words: bytes, still exact
    assert tokenizer.decode(tokenizer.encode(odd)) == odd
    cards = [json.loads(line) for line in files["cards.jsonl"].splitlines()]
    novel = {name for c in cards if c["pool"] == "novel" for name in c["entities"]}
    assert novel  # the novel pool's names, never in train.txt, are words of the vocabulary all the same
    for name in novel | {"Estoria", "1950"}:
        assert len(tokenizer.encode(" " + name)) == len(name.split())
    assert len(tokenizer.encode(render.answer_text("Alma Brandt"))) == 3  # " Alma", " Brandt", "\n"
    assert tokenizer.vocab_size < 1500
    assert reader_tokenizer.__wrapped__().to_dict() == tokenizer.to_dict()  # deterministic, built again


def test_examples_are_answered_by_their_context_at_the_hops_and_distractors_asked():
    rng = random.Random(0)
    for hops, distractors in ((1, 0), (1, 3), (2, 2), (3, 6)):
        for _ in range(20):
            prompt, answer = draw_example(ALL, rng, hops, distractors)
            cards = prompt.split("\nQ: ")[0].split("\n")
            implied, given = answer_from_context(f"{prompt} {answer}")
            assert implied == given == answer
            assert 1 <= len(cards) <= hops + distractors
    seen = name_pools(WORLD.seed)["seen"]
    novel = name_pools(WORLD.seed)["novel"]
    text = " ".join(p for p, _ in (draw_example(seen, rng, 2, 4) for _ in range(50)))
    assert not set(novel.first + novel.last) & set(text.replace(".", " ").replace("\n", " ").split())


def test_a_steps_answer_is_the_cards_that_answer_it_copied_from_the_context_then_the_answer(tokenizer):
    rng, plain = random.Random(5), random.Random(5)
    chains = 0
    for hops in (1, 2, 3):
        for _ in range(20):
            prompt, answer = draw_example(ALL, rng, hops, 3, steps=True)
            assert (prompt, answer.split(render.STEPS_END + " ")[1]) == draw_example(ALL, plain, hops, 3)  # same draws
            context, question = prompt.split("\nQ: ")
            written, final = answer.removeprefix("\n").split(render.STEPS_END + " ")
            steps = written.split("\n")
            assert set(steps) <= set(context.split("\n")) and len(steps) >= 1
            implied, given = answer_from_context("\n".join(steps) + f"\nQ: {question} {final}")
            assert implied == given == final  # the steps alone answer it
            if m := re.fullmatch(r"(?:Who|What) is (.+)\?\nA:|In what year was (.+) born\?\nA:", question):
                name, relations = parse_phrase(m.group(1) or m.group(2))
                relations += [] if m.group(1) else ["birth_year"]
                assert len(steps) == len(relations)
                for step, relation in zip(steps, relations, strict=True):  # one step a hop, in the chain's order
                    name = read_context([step])[(name, relation)]
                assert name == final
                chains += 1
            ids = tokenizer.encode(render.answer_text(answer))
            assert [tokenizer.decode([i]) for i in ids[:2]] == [" ", "\n"]  # then each card as in the context:
            assert ids[2 : 2 + len(tokenizer.encode(steps[0]))] == tokenizer.encode(steps[0])
            last = tokenizer.encode(render.answer_text(final))
            assert ids[-len(last) :] == last
    assert chains >= 40  # of 60: the rest ask who was born first


def test_a_restated_answer_shortens_the_question_by_one_relation_at_each_card():
    rng, cards = random.Random(6), random.Random(6)
    shapes = set()
    for hops in (1, 2, 3):
        for _ in range(20):
            prompt, answer = draw_example(ALL, rng, hops, 3, steps=True, restate=True)
            assert (prompt, answer.split(render.STEPS_END + " ")[1]) == draw_example(ALL, cards, hops, 3)  # same draws
            question = prompt.split("\nQ: ")[1].removesuffix("\nA:")
            written, final = answer.removeprefix("\n").split(render.STEPS_END + " ")
            lines = written.split("\n")
            context = prompt.split("\nQ: ")[0].split("\n")
            asked = [question] + [line.removeprefix("Q: ") for line in lines if line.startswith("Q: ")]
            read = [line for line in lines if not line.startswith("Q: ")]
            assert set(read) <= set(context) and not lines[-1].startswith("Q: ")
            chain = re.fullmatch(r"(?:Who|What) is (.+)\?|In what year was (.+) born\?", question)
            for i, q in enumerate(asked):  # each question left is answered by the cards read (a chain's: after it)
                after = [line for line in lines[lines.index(f"Q: {q}") + 1 :] if not line.startswith("Q: ")] \
                    if i and chain else read
                implied, _ = answer_from_context("\n".join(after) + f"\nQ: {q}\nA: {final}")
                assert implied == final, (q, after)
            if chain:  # one relation fewer a card
                relations = [len(parse_phrase(m.group(1) or m.group(2))[1]) + bool(m.group(2)) for m in
                             (re.fullmatch(r"(?:Who|What) is (.+)\?|In what year was (.+) born\?", q) for q in asked)]
                assert relations == list(range(relations[0], 0, -1)) and len(read) == relations[0]
                shapes.add(len(relations))
    assert shapes == {1, 2, 3}


def test_the_curriculum_grows_from_one_card_to_the_most_hops_and_distractors():
    c = Curriculum(max_hops=3, max_distractors=6, ramp=0.5, steps=100)
    limits = [c.limits(step) for step in range(101)]
    assert limits[0] == (1, 0) and limits[50] == limits[100] == (3, 6)
    assert all(a[0] <= b[0] and a[1] <= b[1] for a, b in zip(limits, limits[1:], strict=False))
    assert Curriculum(3, 6, 0.0, 100).limits(0) == (3, 6)  # no ramp: the last stage from the start
    batches = ReaderBatches(reader_tokenizer(), ALL, c, context=160, batch_size=8, seed=0)
    first = batches.examples(30)  # step 0: one card, no distractor
    assert all(p.count("\n") == 2 for p, _ in first)  # "<card>\nQ: ...\nA:"


def test_targets_are_the_answer_tokens_as_scoring_reads_them_and_resume_is_exact(tokenizer):
    c = Curriculum(3, 6, 0.0, 10)
    batches = ReaderBatches(tokenizer, ALL, c, context=160, batch_size=4, seed=1)
    state = batches.state_dict()
    pairs = batches.examples(4)
    batches.load_state_dict(state)
    x, y = batches.next_batch()
    assert batches.drawn == 1
    scorer = LMScorer.__new__(LMScorer)
    scorer.tokenizer = tokenizer
    for b, (prompt, answer) in enumerate(pairs):
        head, tail = scorer.prompt_ids(prompt), tokenizer.encode(render.answer_text(answer))
        counted = y[b][y[b] != IGNORE].tolist()
        assert counted == tail  # the answer and its newline, nothing of the prompt
        assert x[b, : len(head)].tolist() == head
    again = ReaderBatches(tokenizer, ALL, c, context=160, batch_size=4, seed=1)
    again.load_state_dict(batches.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(batches.next_batch(), again.next_batch(), strict=True))


def test_a_reduced_reader_reads_one_card_above_chance_and_eval_prints_the_novel_json(tmp_path, capsys):
    world = tmp_path / "world"
    write_world_folder(WorldConfig(seed=4, people=30, novel_people=40, hops=2, questions_per_hop=40), world)
    cfg = reader_config("reader", ["train.steps=500", "train.batch_size=16", "model.depth=2", "model.width=128",
                                   "train.seed=0"])
    result = train_reader(world, tmp_path / "r", cfg, ReaderSettings(max_hops=1, max_distractors=1, ramp=0.0,
                                                                     curve_every=0))
    assert result["steps"] == 500 and result["wall_s"] > 0
    assert main(["facts", "eval", str(tmp_path / "r"), "--world", str(world), "--per-group", "40",
                 "--distractors", "1", "--json", "novel"]) == 0
    summary = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert set(summary) == {"open_book", "counterfactual", "closed_book", "chance"}
    assert set(summary["open_book"]) == {"1", "2"}
    assert summary["open_book"]["1"] > summary["chance"]["1"] + 0.25, summary
    # the command: a run folder with the reading curve in metrics.jsonl and reader.json; no second run into it
    out = tmp_path / "cli"
    assert main(["facts", "reader", "--world", str(world), "--out", str(out), "train.steps=2", "model.depth=1",
                 "--curve-every", "2", "--curve-questions", "2", "--max-hops", "1"]) == 0
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["step"] == 2 and {"read_h1", "read_h2"} <= set(last)
    assert json.loads((out / "reader.json").read_text())["settings"]["max_hops"] == 1
    assert main(["facts", "reader", "--world", str(world), "--out", str(out)]) == 1
    assert "already holds a reader" in capsys.readouterr().err
    # curve points between logged steps would be lost; an --out that is a file; a run folder of another kind
    assert main(["facts", "reader", "--world", str(world), "--out", str(tmp_path / "c"), "train.steps=60",
                 "--curve-every", "20"]) == 2
    assert "--curve-every 20: the reading curve is measured at logged steps, so it must be a multiple of " \
           "logging.log_every (50); give logging.log_every=10" in capsys.readouterr().err
    (tmp_path / "afile").write_text("x")
    assert main(["facts", "reader", "--world", str(world), "--out", str(tmp_path / "afile")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    other = tmp_path / "run"
    assert main(["train", "tiny", "train.steps=2", "logging.progress=false", "--out", str(other)]) == 0
    before = sorted(p.name for p in other.iterdir())
    for resume in ([], ["--resume"]):
        assert main(["facts", "reader", "--world", str(world), "--out", str(other), "train.steps=2", *resume]) == 1
        assert f"{other} holds no reader: --out another folder" in capsys.readouterr().err
    assert sorted(p.name for p in other.iterdir()) == before  # nothing left behind


def test_steps_are_what_greedy_generation_writes_alone_up_to_their_end(tokenizer):
    """StepsScorer continues prompts of one length together through the KV cache; each row must write what the
    uncached greedy path writes for it alone (cut at end-of-text or at STEPS_END, else after most_tokens), also
    for prompts longer than the context, with the model's padded ids never drawn."""
    model = tiny_gpt(["model.context=24"], vocab=tokenizer.vocab_size + 8)
    rng = random.Random(2)
    prompts = [draw_example(ALL, rng, 1, d)[0] for d in (0, 0, 2, 3)] + ["Q: Who?\nA:", "Q: Who?\nA:", "A:"]
    scorer = StepsScorer(model, tokenizer, batch_size=2, most_tokens=12)
    written = scorer.write(prompts)
    end = tokenizer.encode(render.STEPS_END)
    for prompt, got in zip(prompts, written, strict=True):
        ids = torch.tensor([scorer.prompt_ids(prompt)])
        out = model.generate(ids, 12, temperature=0, cache=False, vocab=tokenizer.vocab_size)[0, ids.shape[1] :]
        new = []
        for token in out.tolist():
            if token == tokenizer.eos_id:
                break
            new.append(token)
            if new[-len(end) :] == end:
                break
        assert got == StepsScorer._ended(tokenizer.decode(new)) and got.endswith(render.STEPS_END)
    assert written[4] == written[5]  # one prompt twice in one batch
    assert len(scorer.prompt_ids(prompts[3])) > 24  # longer than the context: cropped as the scoring crops it
    assert StepsScorer(model, tokenizer).most_tokens == 24  # the context, by default
    # where the model stopped: the end completed; nothing written is an answer with no steps, as trained
    for text, ended in (("", " \nA:"), (" \nX is Y.\nA", " \nX is Y.\nA:"), (" \nX is Y.\n", " \nX is Y.\nA:"),
                        (" \nX is", " \nX is\nA:"), (" \nX.\nA:", " \nX.\nA:")):
        assert StepsScorer._ended(text) == ended
    assert render.answer_text(render.with_steps([], "Y")) == " " + render.STEPS_END + render.answer_text("Y")


def test_a_steps_reader_writes_the_card_it_reads_and_eval_lets_it(tmp_path, capsys):
    """The reduced reader above with steps: at 500 steps the reader that answers at once read 0.43 of the
    1-hop novel questions here (2026-12-07), this one writes the gold card and reads above 0.9."""
    world = tmp_path / "world"
    write_world_folder(WorldConfig(seed=4, people=30, novel_people=40, hops=2, questions_per_hop=40), world)
    cfg = reader_config("reader", ["train.steps=500", "train.batch_size=16", "model.depth=2", "model.width=128",
                                   "train.seed=0"])
    out = tmp_path / "r"
    result = train_reader(world, out, cfg, ReaderSettings(max_hops=1, max_distractors=1, ramp=0.0, curve_every=0,
                                                          steps=True))
    assert result["settings"]["steps"] is True
    _, model, tokenizer = load_run(out)
    scorer = run_scorer(out, model, tokenizer)
    assert type(scorer) is StepsScorer
    folder = load_world_folder(world)
    ctx = Contexts(folder, 1)
    qs = [q for q in folder.questions if q.pool == "novel" and q.split == "test" and q.hops == 1
          and not q.counterfactual][:40]
    picked = metrics.pick(scorer, [ctx.open_book(q) for q in qs], qs)
    gold = [" \n" + folder.cards[q.support[0]].text + render.STEPS_END for q in qs]
    written = sum(w == g for w, g in zip(scorer.written, gold, strict=True))
    assert written >= 0.75 * len(qs), scorer.written[:3]  # 34 of 40
    assert metrics.accuracy(qs, picked)["accuracy"] >= 0.9
    assert open_book_by_hops(scorer, folder, 40, distractors=1)[1]["accuracy"] >= 0.9
    assert main(["facts", "eval", str(out), "--world", str(world), "--per-group", "40", "--distractors", "1",
                 "--json", "novel"]) == 0
    summary = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert summary["open_book"]["1"] >= 0.9 and summary["counterfactual"]["1"] >= 0.9, summary
    assert json.loads((out / "facts-eval.json").read_text())["scoring"].startswith("greedy steps")
    assert "Scoring: greedy steps until the answer" in (out / "report.html").read_text()  # the Knowledge section
    # the command's flag; a reader without steps records no `steps` (as readers trained before it) and is asked
    # by the plain scorer; a reused folder of the other kind is refused
    assert main(["facts", "reader", "--world", str(world), "--out", str(tmp_path / "cli"), "train.steps=2",
                 "model.depth=1", "--curve-every", "2", "--curve-questions", "2", "--max-hops", "1", "--steps"]) == 0
    assert json.loads((tmp_path / "cli" / "reader.json").read_text())["settings"]["steps"] is True
    assert {"read_h1", "read_h2"} <= set(json.loads((tmp_path / "cli" / "metrics.jsonl").read_text().splitlines()[-1]))
    assert main(["facts", "reader", "--world", str(world), "--out", str(tmp_path / "r2"), "--restate"]) == 2
    assert "--restate restates the question after each step: give --steps too" in capsys.readouterr().err
    with pytest.raises(VSLMError, match="restate: the question left after each step restates the steps; give steps"):
        train_reader(world, tmp_path / "r2", cfg, ReaderSettings(restate=True))
    assert not (tmp_path / "r2").exists()
    tiny = reader_config("reader", ["train.steps=2", "model.depth=1", "model.width=32", "train.eval_windows=2"])
    plain = train_reader(world, tmp_path / "plain", tiny, ReaderSettings(max_hops=1, curve_every=0))
    assert "steps" not in plain["settings"]
    assert type(run_scorer(tmp_path / "plain", *load_run(tmp_path / "plain")[1:])) is LMScorer
    with pytest.raises(VSLMError, match="steps: - there, True here"):
        train_reader(world, tmp_path / "plain", tiny, ReaderSettings(max_hops=1, curve_every=0, steps=True),
                     reuse=True)


def test_a_reused_reader_is_checked_before_it_is_read_back_or_resumed(tmp_path):
    world = tmp_path / "world"
    write_world_folder(WorldConfig(seed=1, people=8, novel_people=4, hops=2, questions_per_hop=3), world)
    cfg = reader_config("reader", ["train.steps=3", "model.depth=1", "model.width=32", "train.eval_windows=2"])
    settings = ReaderSettings(max_hops=1, curve_every=0)
    out = tmp_path / "r"
    first = train_reader(world, out, cfg, settings)
    assert train_reader(world, out, cfg, settings, reuse=True) == first  # finished: read back
    for other_cfg, other in ((cfg, ReaderSettings(max_hops=2, curve_every=0)),
                             (reader_config("reader", ["train.steps=4", "model.depth=1", "model.width=32"]), settings)):
        with pytest.raises(VSLMError, match="holds a reader of other settings"):
            train_reader(world, out, other_cfg, other, reuse=True)
    # stopped after its last checkpoint but before reader.json: checked against the settings it started
    # with, then resumed (no step left) with the last logged metrics
    (out / "reader.json").unlink()
    with pytest.raises(VSLMError, match="holds a reader of other settings"):
        train_reader(world, out, cfg, ReaderSettings(max_hops=2, curve_every=0), reuse=True)
    moved = tmp_path / "moved"  # a folder moved (mv keeps its examples file as it was): the same run, there
    out.rename(moved)
    out = moved
    again = train_reader(world, out, cfg, settings, reuse=True)
    assert again["last"]["loss"] == first["last"]["loss"] and again["settings"] == first["settings"]
    assert train_reader(world, out, cfg, settings, reuse=True) == again  # finished there: read back
    assert read_run_config(out).data.source == str((tmp_path / "r" / EXAMPLES).resolve())  # at its last step: as it was
    # its checkpoints removed after it had trained past the first: refused, every file kept
    shutil.rmtree(out / "checkpoints")
    (out / "reader.json").unlink()
    with pytest.raises(VSLMError, match="it has no checkpoint to continue from, though it trained past its first one"):
        train_reader(world, out, cfg, settings, reuse=True)
    # stopped before any checkpoint (its log cut back to step 1): nothing to keep, trained again
    metrics = out / "metrics.jsonl"
    metrics.write_text("".join(ln + "\n" for ln in metrics.read_text().splitlines() if json.loads(ln)["step"] <= 1))
    assert train_reader(world, out, cfg, settings, reuse=True)["last"]["loss"] == first["last"]["loss"]
    # a folder that holds no reader is never cleared
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    with pytest.raises(VSLMError, match="holds no reader"):
        train_reader(world, tmp_path / "mine", cfg, settings, reuse=True)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "mine"


def test_a_reader_of_too_many_hops_is_refused_and_one_whose_examples_outgrow_its_context_is_warned(tmp_path, capsys):
    """--max-hops 9 was accepted (a world asks at most 6); --max-distractors 20 trained a reader whose examples,
    39% of them at the reader's context, lost their first tokens (often the facts that answer them), unsaid."""
    world = tmp_path / "world"
    write_world_folder(WorldConfig(seed=1, people=8, novel_people=4, hops=2, questions_per_hop=3), world)
    cfg = reader_config("reader", ["train.steps=2", "model.depth=1", "model.width=32", "train.eval_windows=2"])
    with pytest.raises(VSLMError, match="max_hops 9: a world's questions take at most 6 hops"):
        train_reader(world, tmp_path / "r", cfg, ReaderSettings(max_hops=9, curve_every=0))
    assert not (tmp_path / "r").exists()
    train_reader(world, tmp_path / "fits", cfg, ReaderSettings(max_hops=1, max_distractors=1, curve_every=0))
    assert "longer than the context" not in capsys.readouterr().err
    train_reader(world, tmp_path / "long", cfg, ReaderSettings(max_hops=3, max_distractors=20, curve_every=0))
    err = capsys.readouterr().err
    assert "of the last stage's examples (20 distractors, 3 hops) are longer than the context (" in err
    share = int(err.split("warning: ")[1].split("%")[0])
    assert share > 5  # said only above one example in twenty
