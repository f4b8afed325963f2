"""The knowledge metrics: their arithmetic on hand-built cases, the evaluation with scorers whose
answers are known, the language-model scorer and the probe against direct computations, and
`vslm facts eval` end to end on a tiny trained run."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_overrides
from vslm.cli import main
from vslm.config import ModelConfig
from vslm.data.tokenizer import ByteTokenizer
from vslm.errors import VSLMError
from vslm.knowledge import metrics, probe
from vslm.knowledge.contexts import Contexts
from vslm.knowledge.evaluate import evaluate_world, retriever_for, select
from vslm.knowledge.folder import load_world_folder, write_world_folder
from vslm.knowledge.questions import Question
from vslm.knowledge.retrieval import support_recall
from vslm.knowledge.scoring import LMScorer
from vslm.knowledge.world import WorldConfig
from vslm.model import GPT
from vslm.model.hooks import capture


def question(answer: str, choices: tuple[str, ...], hops: int = 1, original: str | None = None) -> Question:
    return Question("q", "Q?", answer, choices, hops, "chain", ("p",), (("employer",),), ("f",), "seen", "test",
                    original is not None, original)


# ------------------------------------------------------------------------------ arithmetic


def test_accuracy_by_hops_and_chance_on_a_hand_built_case():
    qs = [question("A", ("A", "B")), question("B", ("A", "B", "C", "D"), hops=2), question("C", ("C", "D"), hops=2)]
    answers = ["A", "C", "C"]
    assert metrics.accuracy(qs, answers) == {"accuracy": 2 / 3, "se": math.sqrt(2 / 3 * 1 / 3 / 3), "n": 3,
                                             "chance": (1 / 2 + 1 / 4 + 1 / 2) / 3}
    # the standard error over questions is what a bootstrap over them estimates
    rng = np.random.default_rng(0)
    hits = np.array([1.0, 0.0, 1.0])
    boot = [hits[rng.integers(0, 3, 3)].mean() for _ in range(20000)]
    assert np.std(boot) == pytest.approx(metrics.accuracy(qs, answers)["se"], rel=0.03)
    by = metrics.by_hops(qs, answers)
    assert list(by) == [1, 2] and by[1]["accuracy"] == 1.0 and by[2]["accuracy"] == 0.5 and by[2]["n"] == 2
    assert math.isnan(metrics.accuracy([], [])["accuracy"])


def test_counterfactual_accuracy_and_memorisation_ratio_on_a_hand_built_case():
    qs = [question("A", ("A", "B", "C"), original="B") for _ in range(4)]
    cf = metrics.counterfactual(qs, ["A", "B", "B", "C"])  # context, weights, weights, neither
    assert (cf["accuracy"], cf["original"], cf["other"]) == (0.25, 0.5, 0.25)
    assert cf["memorisation_ratio"] == pytest.approx(2 / 3)  # n_orig / (n_orig + n_ctx)
    assert metrics.counterfactual(qs, ["A"] * 4)["memorisation_ratio"] == 0.0
    assert math.isnan(metrics.counterfactual(qs, ["C"] * 4)["memorisation_ratio"])


def test_pick_takes_the_highest_score_and_the_first_choice_on_ties():
    qs = [question("B", ("A", "B", "C")), question("A", ("A", "B"))]
    scorer = lambda items: [[0.0, 2.0, 1.0], [0.5, 0.5]]  # noqa: E731
    assert metrics.pick(scorer, ["p1", "p2"], qs) == ["B", "A"]


# ------------------------------------------------------------------ scorers whose answers are known

SMALL = WorldConfig(seed=5, people=40, novel_people=16, hops=2, questions_per_hop=12)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    write_world_folder(SMALL, out)
    return load_world_folder(out)


def asked(prompt: str) -> str:
    return prompt.rsplit("Q: ", 1)[1].removesuffix("\nA:")


def memoriser(folder):
    """Knows every seen answer by heart and reads nothing; knows nothing of the novel pool."""
    known = {q.question: q.answer for q in folder.questions if q.pool == "seen" and not q.counterfactual}
    return lambda items: [[float(c == known.get(asked(p))) for c in choices] for p, choices in items]


def reader(folder):
    """Knows nothing, but answers right whenever all the facts a question needs are in its context."""
    by_question: dict[str, list[Question]] = {}
    for q in folder.questions:
        by_question.setdefault(q.question, []).append(q)

    def score(items):
        out = []
        for prompt, choices in items:
            lines = set(prompt.split("\n"))
            ready = [q.answer for q in by_question[asked(prompt)]
                     if all(folder.cards[i].text in lines for i in q.support)]
            out.append([float(c in ready) for c in choices])
        return out

    return score


def first_choice_rate(questions: list[Question]) -> float:
    return sum(q.answer == q.choices[0] for q in questions) / len(questions)


def test_a_memoriser_is_right_closed_book_and_wrong_under_counterfactual_context(folder):
    r = evaluate_world(memoriser(folder), folder, per_group=None)
    seen = select(folder.questions, "seen", "test", False, None)
    assert r["closed_book"]["seen"]["accuracy"] == 1.0 and r["closed_book"]["seen"]["n"] == len(seen)
    assert r["closed_book"]["seen_train"]["accuracy"] == 1.0
    assert r["open_book"]["seen"]["accuracy"] == 1.0
    novel = select(folder.questions, "novel", "test", False, None)
    assert r["closed_book"]["novel"]["accuracy"] == first_choice_rate(novel)
    cf = r["counterfactual"]
    assert cf["accuracy"] == 0.0 and cf["original"] == 1.0 and cf["memorisation_ratio"] == 1.0
    assert all(v["accuracy"] == 1.0 for v in r["by_hops"]["closed_book"]["seen"].values())


def test_a_reader_is_right_open_book_on_both_pools_and_follows_the_context(folder):
    r = evaluate_world(reader(folder), folder, per_group=None, k=6, rounds=2)
    assert r["open_book"]["seen"]["accuracy"] == 1.0 and r["open_book"]["novel"]["accuracy"] == 1.0
    for pool in ("seen", "novel"):
        test = select(folder.questions, pool, "test", False, None)
        assert r["closed_book"][pool]["accuracy"] == first_choice_rate(test)
        # with retrieval it is right exactly where the retriever found every supporting fact
        retriever = retriever_for(folder)
        found = [support_recall(retriever.retrieve(q.question, 6, 2), q.support)[1] for q in test]
        expected = sum(f or q.answer == q.choices[0] for f, q in zip(found, test, strict=True)) / len(test)
        assert r["retrieved"][pool]["accuracy"] == pytest.approx(expected)
        assert r["retrieval_recall"][pool]["all"] == pytest.approx(sum(found) / len(found))
    cf = r["counterfactual"]
    assert cf["accuracy"] == 1.0 and cf["original"] == 0.0 and cf["memorisation_ratio"] == 0.0
    assert set(r["by_hops"]["open_book"]["novel"]) == {1, 2}


def test_open_book_contexts_hold_the_gold_facts_and_never_contradict_them(folder):
    ctx = Contexts(folder, distractors=4)
    facts = ctx.facts
    for q in folder.questions:
        cards = ctx.open_book_cards(q)
        assert {c.id for c in cards} >= set(q.support) and len(cards) == len(q.support) + 4
        keys = [(facts[c.id].subject, facts[c.id].relation) for c in cards]
        assert len(keys) == len(set(keys)), q  # one value per (subject, relation)
        assert ctx.open_book(q) == ctx.open_book(q)  # seeded by the question
        if q.pool == "novel":
            assert all(c.pool in ("novel", "shared") for c in cards)


# ----------------------------------------------------------------- the scorer and the probe


def tiny_model(context: int = 64) -> GPT:
    torch.manual_seed(0)
    return GPT(ModelConfig(vocab_size=257, context=context, depth=2, width=16, heads=2)).eval()


@torch.no_grad()
def direct_log_likelihood(model: GPT, ids: list[int], n_answer: int) -> float:
    x = torch.tensor([ids[:-1]])
    logp = F.log_softmax(model(x)[0], dim=-1)
    return sum(float(logp[t, ids[t + 1]]) for t in range(len(ids) - 1 - n_answer, len(ids) - 1))


def test_the_scorer_sums_the_answer_tokens_log_probabilities():
    tok, model = ByteTokenizer(), tiny_model()
    scorer = LMScorer(model, tok, batch_size=3)
    items = [("Q: Who?\nA:", ["Ann", "Bob Smith"]), ("ctx\nQ: What?\nA:", ["Oslo", "Rome", "Lima"])]
    scores = scorer(items)
    for (prompt, choices), row in zip(items, scores, strict=True):
        for choice, s in zip(choices, row, strict=True):
            ids = [tok.eos_id, *tok.encode(prompt), *tok.encode(f" {choice}\n")]
            assert s == pytest.approx(direct_log_likelihood(model, ids, len(choice) + 2), abs=1e-4)
    assert scorer.truncated == 0


def test_a_prompt_longer_than_the_context_loses_its_oldest_tokens():
    tok, model = ByteTokenizer(), tiny_model(context=16)
    scorer = LMScorer(model, tok)
    prompt = "a long context line\nQ: Who?\nA:"
    [[s]] = scorer([(prompt, ["Ann"])])
    ids = [tok.eos_id, *tok.encode(prompt), *tok.encode(" Ann\n")][-17:]
    assert s == pytest.approx(direct_log_likelihood(model, ids, 5), abs=1e-4) and scorer.truncated == 1


def test_name_states_are_the_stream_at_the_names_last_token():
    tok, model = ByteTokenizer(), tiny_model()
    scorer = LMScorer(model, tok)
    states = probe.name_states(scorer, ["Ann Berg", "Bo"])
    assert [s.shape for s in states] == [(2, 16), (2, 16)]
    with capture(model, "resid_post.1") as seen:
        model(torch.tensor([[tok.eos_id, *tok.encode("Bo")]]))
    assert torch.allclose(states[1][1], seen["resid_post.1"][0, -1], atol=1e-5)  # padding changed nothing


def test_probe_fits_a_linear_code_and_not_noise():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (200,), generator=g)
    coded = F.one_hot(labels, 4).float() @ torch.randn(4, 12, generator=g) + 0.1 * torch.randn(200, 12, generator=g)
    assert probe.fit_probe(coded[:150], labels[:150], coded[150:], labels[150:]) == 1.0
    noise = torch.randn(200, 12, generator=g)
    assert probe.fit_probe(noise[:150], labels[:150], noise[150:], labels[150:]) < 0.5
    assert probe.majority_baseline([0, 0, 1], [0, 1, 1, 1]) == 0.25


def test_probe_attribute_reads_the_attribute_when_the_states_hold_it(folder, monkeypatch):
    people = {e.name: e.id for e in folder.world.of_kind("person")}
    cities = sorted({f.object for f in folder.world.facts if f.relation == "birth_city"})

    def fake_states(scorer, names):  # depth 0 writes the birth city in one-hot, depth 1 is noise
        code = torch.stack([F.one_hot(torch.tensor(cities.index(folder.world.lookup(people[n], "birth_city").object)),
                                      len(cities)).float() for n in names])
        return [code, torch.randn(len(names), 8, generator=torch.Generator().manual_seed(1))]

    monkeypatch.setattr(probe, "name_states", fake_states)
    result = probe.probe_attribute(None, folder.world, "birth_city", "seen")
    assert result["by_depth"][0] == 1.0 and result["best"] == 1.0 and result["by_depth"][1] < 0.6
    assert result["n_train"] + result["n_test"] == SMALL.people and 0 <= result["baseline"] < 0.5


def test_probe_of_a_symmetric_relation_labels_each_person_with_the_other_end(folder):
    """A spouse fact is stored once and read from both ends: the person on its object side was labelled with
    themself (15 of 30 married people in one world), so the probe's accuracy and baseline were of wrong labels."""
    ids = {e.name: e.id for e in folder.world.of_kind("person", "seen")}
    labels = probe.attribute_labels(folder.world, "spouse", "seen")
    married = [(n, f) for n, i in ids.items() if (f := folder.world.lookup(i, "spouse")) is not None]
    assert len(labels) == len(married) >= 4
    assert all(label != ids[name] for name, label in labels)  # never oneself
    assert {(n, f.subject if f.object == ids[n] else f.object) for n, f in married} == set(labels)
    on_object_side = [n for n, f in married if f.object == ids[n]]
    assert on_object_side  # the people the old labels got wrong
    assert probe.attribute_labels(folder.world, "birth_city", "seen") == [
        (e.name, folder.world.lookup(e.id, "birth_city").object) for e in folder.world.of_kind("person", "seen")]


# ------------------------------------------------------------------------------ end to end


def test_facts_generate_train_and_eval_end_to_end(tmp_path, capsys, monkeypatch):
    from vslm.train.run_folder import load_run

    world, run = tmp_path / "world", tmp_path / "run"
    assert main(["facts", "generate", "--out", str(world), "--people", "24", "--novel-people", "8", "--hops", "2",
                 "--questions-per-hop", "6", "--seed", "1"]) == 0
    assert capsys.readouterr().out.strip().endswith(str(world))
    overrides = tiny_overrides(train__steps=4, train__eval_every=0, train__checkpoint_every=0, model__context=64)
    assert main(["train", "tiny", f"data.source={world / 'train.txt'}", "data.tokenizer=byte", "--out", str(run),
                 *overrides]) == 0
    capsys.readouterr()
    assert main(["facts", "eval", str(run), "--world", str(world), "--per-group", "4"]) == 0
    printed = capsys.readouterr()
    out = printed.out
    assert "closed-book" in out and "open-book" in out and "counterfactual" in out and "probe" in out
    assert out.strip().splitlines()[-2:] == [str(run / "facts-eval.json"), str(run / "report.html")]
    result = json.loads((run / "facts-eval.json").read_text())
    # a 64-token context cuts the long prompts: each setting counts its own, and the note names them
    cuts = {(key, pool): acc["cut"] for key in ("closed_book", "open_book", "retrieved")
            for pool, acc in result[key].items()}
    assert sum(cuts.values()) + result["counterfactual"]["cut"] == result["truncated"] > 0
    assert all(cuts["open_book", pool] > cuts["closed_book", pool] for pool in ("seen", "novel"))  # facts: longer
    note = next(line for line in printed.err.splitlines() if "longer than the model's context" in line)
    assert f"open-book seen {cuts['open_book', 'seen']} of 8" in note
    assert ("closed-book seen" in note) == (cuts["closed_book", "seen"] > 0)
    # the run's report holds the evaluation: the same accuracies, and accuracy by hops read back from JSON
    from vslm.report.facts import hops_rows

    html = (run / "report.html").read_text()
    assert "Knowledge (facts eval)" in html and f"{result['open_book']['seen']['accuracy']:.3f}" in html
    assert f"{cuts['open_book', 'seen']} cut)" in html
    fresh = evaluate_world(LMScorer(load_run(run)[1], load_run(run)[2]), load_world_folder(world), per_group=4)
    assert hops_rows(result) == hops_rows(fresh) and "-" not in hops_rows(result)[1][0]
    for setting in ("closed_book", "open_book", "retrieved"):
        for pool in ("seen", "novel"):
            assert 0 <= result[setting][pool]["accuracy"] <= 1 and result[setting][pool]["n"] == 8
    assert 0 <= result["counterfactual"]["accuracy"] <= 1 and "memorisation_ratio" in result["counterfactual"]
    assert set(result["by_hops"]["closed_book"]["seen"]) == {"1", "2"}
    assert len(result["probe"]["seen"]["by_depth"]) == 2 and result["truncated"] > 0
    # the numbers are the run's own model's: every setting recomputed from its checkpoint, as a notebook would
    again = fresh
    for setting in ("closed_book", "open_book", "retrieved", "retrieval_recall", "by_hops", "counterfactual"):
        assert result[setting] == json.loads(json.dumps(again[setting])), setting  # (JSON: hop counts as keys)
    assert main(["facts", "eval", str(run), "--world", str(world), "--per-group", "2", "--json", "--adapters", "2",
                 "--group-size", "3"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["closed_book"]["seen"]["n"] == 4
    adapters = result["adapters"]
    assert adapters["groups"] == 3 and 0 <= adapters["routing"] <= 1 and adapters["novel"]["n"] == 4
    assert 0 <= adapters["oracle"]["accuracy"] <= 1
    # each adapter a run of the training loop: RUN/adapters/<base checkpoint>/<world, grouping>/<group>
    fitted = sorted((run / "adapters").glob("step_*/world-*-groups-3-steps-2-seed-0-both/novel-*"))
    assert len(fitted) == 3 and all(len((f / "metrics.jsonl").read_text().splitlines()) == 2 for f in fitted)
    assert all(list((f / "checkpoints").glob("step_*.safetensors")) for f in fitted)
    assert adapters["fit"]["loss"] > 0 and adapters["fit"]["val_loss"] > 0
    # another world, or other groups of this one: adapters of their own, never the ones fitted above
    other = tmp_path / "other"
    assert main(["facts", "generate", "--out", str(other), "--people", "24", "--novel-people", "8", "--hops", "2",
                 "--questions-per-hop", "6", "--seed", "2"]) == 0
    for world_, size in ((other, 3), (world, 4)):
        assert main(["facts", "eval", str(run), "--world", str(world_), "--per-group", "2", "--json", "--adapters",
                     "2", "--group-size", str(size)]) == 0
        err = capsys.readouterr().err  # the run trained on `world`'s text: said when scored on another world
        assert (f"note: the run trained on the text of another world ({world})" in err) == (world_ == other), err
    assert len(list((run / "adapters").glob("step_*/*/novel-*"))) == 3 + 3 + 2  # 8 novel people: 3 groups, then 2
    saved = json.loads((run / "facts-eval.json").read_text())["settings"]
    assert saved["world"] == load_world_folder(world).key != load_world_folder(other).key
    assert saved["adapter_parts"] == "both" and saved["seed"] == 0
    # the adapters' LoRA alone, at another seed: fits of their own; "tokens" alone, where the byte model has
    # none it never trained on (the text's bytes are all in train.txt), refused in one line
    assert main(["facts", "eval", str(run), "--world", str(world), "--per-group", "2", "--json", "--adapters", "2",
                 "--group-size", "4", "--adapter-parts", "lora", "--seed", "1"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["settings"]["adapter_parts"] == "lora" and result["settings"]["seed"] == 1
    assert result["adapters"]["parts"] == "lora" and result["adapters"]["tokens"] == 0
    assert len(list((run / "adapters").glob("step_*/*-groups-4-steps-2-seed-1-lora/novel-*"))) == 2
    saved = (run / "facts-eval.json").read_bytes()
    import vslm.knowledge.evaluate as evaluate

    def not_reached(*args, **kwargs):
        raise AssertionError("evaluated before the adapter parts were checked")

    monkeypatch.setattr(evaluate, "evaluate_world", not_reached)  # refused before the evaluation's minutes
    assert main(["facts", "eval", str(run), "--world", str(world), "--per-group", "2", "--adapters", "2",
                 "--adapter-parts", "tokens"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "leaves nothing to train" in err
    assert (run / "facts-eval.json").read_bytes() == saved


def test_facts_commands_refuse_bad_input_in_one_line(tmp_path, capsys):
    assert main(["facts", "generate", "--out", str(tmp_path / "w"), "--people", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "people" in err
    assert main(["facts", "eval", str(tmp_path), "--world", str(tmp_path)]) == 1
    assert "not a world folder" in capsys.readouterr().err
    assert main(["facts", "eval", str(tmp_path), "--world", str(tmp_path), "--probe", "shoe_size"]) == 1
    assert "cannot probe 'shoe_size'" in capsys.readouterr().err
    for flag, value, words in (("--group-size", "0", "--group-size must be at least 1"),
                               ("--adapters", "-5", "--adapters must be at least 0"),
                               ("--threads", "-1", "--threads must be at least 0"),
                               ("--adapter-parts", "lora", "--adapter-parts lora needs --adapters STEPS")):
        assert main(["facts", "eval", str(tmp_path), "--world", str(tmp_path), flag, value]) == 2
        assert words in capsys.readouterr().err
    world = tmp_path / "world"
    assert main(["facts", "generate", "--out", str(world), "--people", "8", "--novel-people", "4"]) == 0
    capsys.readouterr()
    for name, text, words in (("world.json", "[]", "world.json has format list"),
                              ("world.json", '{"format": 1, "sett', "world.json does not read as a world folder's"),
                              ("cards.jsonl", '{"id": "f1", "te\n', "cards.jsonl does not read as a world folder's"),
                              ("questions.jsonl", '{"id": 3}\n', "questions.jsonl does not read as a world folder's"),
                              ("questions.jsonl", "", "questions.jsonl holds no questions")):
        damaged = tmp_path / f"damaged-{name}-{len(text)}"
        shutil.copytree(world, damaged)
        (damaged / name).write_text(text)
        assert main(["facts", "eval", str(tmp_path), "--world", str(damaged)]) == 1
        err = capsys.readouterr().err
        assert words in err and err.count("\n") == 1 and "Traceback" not in err, err
    # files that read alone but not together (a traceback after the closed-book scoring, before): said at once
    other = tmp_path / "other"
    assert main(["facts", "generate", "--out", str(other), "--people", "8", "--novel-people", "4", "--seed", "5"]) == 0
    capsys.readouterr()
    cut = (world / "cards.jsonl").read_text().splitlines(keepends=True)
    for name, text, words in (("cards.jsonl", "".join(cut[: len(cut) // 2]), "cards.jsonl has no card for "),
                              ("questions.jsonl", (other / "questions.jsonl").read_text(),
                               "questions.jsonl asks about facts world.json does not hold")):
        damaged = tmp_path / f"mismatched-{name}"
        shutil.copytree(world, damaged)
        (damaged / name).write_text(text)
        with pytest.raises(VSLMError, match=words):
            load_world_folder(damaged)


def test_a_char_tokenizer_that_cannot_write_a_name_says_what_to_do(folder):
    from vslm.data.tokenizer import CharTokenizer
    from vslm.errors import VSLMError

    scorer = LMScorer(tiny_model(), CharTokenizer(list("QA: ?\n"), eos=False))
    with pytest.raises(VSLMError, match="data.tokenizer=byte"):
        scorer([("Q: Who?\nA:", ["Zed"])])



def test_the_printed_table_gives_each_accuracy_its_standard_error_and_its_cut_prompts():
    from vslm.report.facts import cut_line, summary_rows

    result = {"closed_book": {"seen": {"accuracy": 0.5, "se": 0.05, "chance": 0.25, "n": 100, "cut": 0}},
              "open_book": {"novel": {"accuracy": 0.9, "chance": 0.25, "n": 10}},  # written before the errors
              "retrieved": {"seen": {"accuracy": 0.7, "se": 0.1, "chance": 0.25, "n": 20, "cut": 3}},
              "counterfactual": {"accuracy": 0.4, "se": 0.1, "chance": 0.25, "n": 10, "cut": 2}, "truncated": 5}
    assert summary_rows(result) == [("closed-book", "seen", "0.500 ± 0.050", "0.250", "100"),
                                    ("open-book", "novel", "0.900", "0.250", "10"),
                                    ("retrieved", "seen", "0.700 ± 0.100", "0.250", "20 (3 cut)"),
                                    ("counterfactual", "seen", "0.400 ± 0.100", "0.250", "10 (2 cut)")]
    assert cut_line(result).endswith(": retrieved seen 3 of 20, counterfactual seen 2 of 10")
    assert cut_line(result | {"truncated": 0}) == ""


def test_an_evaluation_from_before_adapters_had_token_rows_is_not_reused():
    """What a saved facts-eval.json is compared with: with adapters, their parts (an evaluation from before adapters
    owned their tokens' rows lacks the key, so its adapters are fitted again); without, nothing new (every
    evaluation without adapters saved before stays reused)."""
    from vslm.knowledge.evaluate import eval_settings

    before = {"world": "w", "distractors": 4, "per_group": 100, "k": 8, "rounds": None, "probe": "birth_city",
              "checkpoint": None, "seed": 2, "adapter_steps": 0, "group_size": None}
    assert eval_settings("w", seed=2) == before
    with_adapters = eval_settings("w", seed=2, adapter_steps=100, group_size=8)
    assert with_adapters == {**before, "adapter_steps": 100, "group_size": 8, "adapter_parts": "both"}
    assert eval_settings("w", seed=2, adapter_steps=100, group_size=8, adapter_parts="lora") != with_adapters


def test_the_adapter_line_says_what_the_adapters_fitted():
    from vslm.report.facts import adapter_line

    new = {"groups": 2, "steps": 100, "parts": "both", "tokens": 36.5, "routing": 0.944}
    assert adapter_line(new) == ("adapters: 2 groups, 100 steps each, each a LoRA and the rows of its text's tokens "
                                 "the model never trained on, 36.5 such tokens a group; the retriever picked the "
                                 "subject's adapter for 0.944 of the questions")
    old = {"groups": 2, "steps": 100, "routing": 0.5}  # saved before adapters owned rows: a LoRA alone
    assert adapter_line(old).startswith("adapters: 2 groups, 100 steps each, each a LoRA alone; the retriever")
