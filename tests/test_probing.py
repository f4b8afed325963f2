"""Probes during training: cadence, storage, and `vslm probe` over snapshots equal to the live values."""

import json
import math
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import SHARED, tiny_overrides
from vslm.cli import main
from vslm.config import load_config
from vslm.data.shards import prepare_corpus
from vslm.errors import ConfigError
from vslm.model import GPT
from vslm.train.probing import PROBE_WINDOWS, PROBES, build_probe_set, probe_due, run_probes, snapshots_table
from vslm.train.trainer import Trainer


def lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_cadence_is_log_spaced_then_every_k():
    assert [s for s in range(21) if probe_due(s, 8, 20)] == [0, 1, 2, 4, 8, 16, 20]


def test_probes_in_training_equal_probes_over_snapshots(tmp_path, capsys):
    cfg = load_config("tiny", tiny_overrides(train__steps=20, logging__probe_every=8))
    Trainer(cfg, tmp_path / "r").fit()
    live = lines(tmp_path / "r" / PROBES)
    assert [p["step"] for p in live] == [0, 1, 2, 4, 8, 16, 20]
    first = live[0]
    assert len(first["position_loss"]) == cfg.model.context - 1 and first["icl_label"] == "short-context"
    vocab = json.loads((tmp_path / "r" / "tokenizer.json").read_text())
    log_v = math.log(len(vocab["chars"]) + 1)
    assert first["distribution"]["log_vocab"] == pytest.approx(log_v, abs=1e-6)
    assert max(abs(x - log_v) for x in first["position_loss"]) < 0.25  # flat at about ln V at init
    assert live[-1]["position_loss"][5] < first["position_loss"][5] - 0.5
    assert len(first["attention"]) == cfg.model.depth and len(first["induction"]["prefix_matching"]) == 2
    for key in ("repeat_reliability", "repeat_reliability_3"):  # of the training text: one value per run
        repeats = {p["induction"][key] for p in live}
        assert len(repeats) == 1 and 0 < repeats.pop() < 1
    assert 0 < first["induction"]["repeat_frequency_3"] < first["induction"]["repeat_frequency"] <= 1
    for p in live:  # a standard error over windows beside each value, from windows that differ: above 0
        assert p["windows"] == PROBE_WINDOWS
        assert len(p["position_loss_se"]) == len(p["position_loss"]) and min(p["position_loss_se"]) > 0
        assert p["icl_score_se"] > 0
        assert all(p["distribution"][f"{key}_se"] > 0 for key in ("M1", "M2", "M3", "entropy"))
        assert p["induction"]["loss_first_se"] > 0 and p["induction"]["loss_second_se"] > 0  # over 8 sequences
    assert 0.005 < live[-1]["icl_score_se"] < 0.2

    assert main(["probe", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert lines(tmp_path / "r" / "probes-snapshots.jsonl") == live
    assert out[-1].endswith("probes-snapshots.jsonl")
    # a row per snapshot before the path: step, ICL score, KL, the two copies, the best prefix-matching head
    assert out[0].split() == ["step", "ICL", "score", "KL(u||p)", "1st", "copy", "2nd", "copy", "prefix", "matching"]
    last = live[-1]
    best = max(h for layer in last["induction"]["prefix_matching"] for h in layer)
    assert out[-2].split() == [f"{last['step']:,}", f"{last['icl_score']:+.3f}", f"{last['distribution']['M1']:.3f}",
                               f"{last['induction']['loss_first']:.3f}", f"{last['induction']['loss_second']:.3f}",
                               f"{best:.3f}"]
    assert len(out) == len(live) + 2
    # NaN is written as null (no ICL score under 11 tokens of context, a diverged run): shown as nan
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())  # the corpus as the run began: another
    (tmp_path / "r" / "summary.json").write_text(json.dumps({**summary, "train_tokens": 5}))  # count now: refused
    assert main(["probe", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"its corpus reads as other tokens (train 5 then, {summary['train_tokens']:,} " \
        "now), so the probe set would not be the one it trained with" in err
    (tmp_path / "r" / "summary.json").write_text(json.dumps(summary))
    nulls = tmp_path / "nulls.jsonl"
    nulls.write_text(json.dumps({"step": 3, "icl_score": None, "distribution": {"M1": None},
                                 "induction": {"loss_first": 2.0, "prefix_matching": [[None, 0.25]]}}) + "\n")
    assert snapshots_table(nulls).splitlines()[1].split() == ["3", "nan", "nan", "2.000", "nan", "0.250"]
    shutil.rmtree(tmp_path / "r" / "snapshots")  # none to probe: said, not an empty table and exit 0
    assert main(["probe", str(tmp_path / "r")]) == 1
    assert capsys.readouterr().err.strip() == (f"vslm: error: {tmp_path / 'r'} has no snapshots to probe (it has not "
                                               "saved one yet); --copying and --induction probe its latest checkpoint")


def text(tokens) -> SimpleNamespace:
    return SimpleNamespace(tokens=np.asarray(tokens, dtype=np.uint16))


def test_probe_set_has_256_windows_or_all_there_are():
    rng = np.random.default_rng(0)
    train = text(rng.integers(10, size=5000))
    for val_tokens, expected in ((5000, PROBE_WINDOWS), (100, 100 - 16)):  # 84 starts of a 16-token window
        corpus = SimpleNamespace(train=train, val=text(rng.integers(10, size=val_tokens)))
        probes = build_probe_set(corpus, context=16, vocab_size=10)
        assert probes.windows.shape == (expected, 16)
        if expected < PROBE_WINDOWS:  # every start once (where there are more, starts are drawn with replacement)
            assert len({tuple(w) for w in probes.windows.tolist()}) == expected
        assert torch.equal(probes.windows, build_probe_set(corpus, context=16, vocab_size=10).windows)
    # logging.probe_windows and logging.induction_length reach the probe set; a copy distance that does not
    # fit twice in the context is a config error
    corpus = SimpleNamespace(train=train, val=text(rng.integers(10, size=5000)))
    probes = build_probe_set(corpus, context=16, vocab_size=10, windows=32, induction_length=4)
    assert probes.windows.shape == (32, 16) and probes.induction_length == 4
    assert build_probe_set(corpus, context=16, vocab_size=10).induction_length == 8
    cfg = load_config("tiny", ["logging.probe_windows=64", "logging.induction_length=8"])
    assert (cfg.logging.probe_windows, cfg.logging.induction_length) == (64, 8)
    with pytest.raises(ConfigError, match="induction_length 9 must be 2 to half the context"):
        load_config("tiny", ["model.context=16", "logging.induction_length=9"])
    # logging.induction_support: the probe draws from those characters' tokens only
    from vslm.data.tokenizer import CharTokenizer

    tokenizer = CharTokenizer("abcdefghij", eos=False)
    corpus = SimpleNamespace(train=train, val=text(rng.integers(10, size=5000)), tokenizer=tokenizer)
    drawn = build_probe_set(corpus, context=16, vocab_size=10, induction_support="cab").induction_tokens
    assert drawn.tolist() == sorted(tokenizer.encode("abc"))
    assert build_probe_set(corpus, context=16, vocab_size=10).induction_tokens.tolist() == list(range(10))
    assert load_config("tiny", ["logging.induction_support=xyz"]).logging.induction_support == "xyz"


def test_the_se_of_a_probe_on_identical_windows_is_zero():
    cfg = load_config("tiny", tiny_overrides())
    corpus = prepare_corpus(cfg.data)
    cfg = cfg.with_vocab_size(corpus.tokenizer.vocab_size)
    probes = build_probe_set(corpus, cfg.model.context, cfg.model.vocab_size)
    probes.windows = probes.windows[:1].repeat(40, 1)  # 40 copies of one window
    torch.manual_seed(0)
    result = run_probes(GPT(cfg.model), probes)
    assert result["windows"] == 40
    assert set(result["position_loss_se"]) == {0.0} and result["icl_score_se"] == 0.0
    assert [result["distribution"][f"{key}_se"] for key in ("M1", "M2", "M3", "entropy")] == [0.0] * 4
    assert result["icl_score"] is not None and result["distribution"]["M2"] > 0


def test_probe_induction_at_a_chosen_distance_and_support(tmp_path, capsys):
    from vslm.probes import induction_probe
    from vslm.train.probing import PROBE_SEED
    from vslm.train.run_folder import load_run

    cfg = load_config("tiny", tiny_overrides(train__steps=4, logging__probe_every=0))
    Trainer(cfg, tmp_path / "r").fit()
    assert main(["probe", str(tmp_path / "r"), "--induction", "6", "--support", "abc", "--sequences", "5",
                 "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    _, model, tok = load_run(tmp_path / "r")
    support = torch.tensor(sorted({i for c in "abc" for i in tok.encode(c)}))
    want = induction_probe(model, cfg.model.vocab_size, 6, 5, torch.Generator().manual_seed(PROBE_SEED), support)
    assert got["length"] == 6 and got["loss_second"] == pytest.approx(want["loss_second"], rel=1e-6)
    assert len(got["prefix_matching"]) == cfg.model.depth
    assert main(["probe", str(tmp_path / "r"), "--induction", str(cfg.model.context)]) == 2
    assert "must be 2 to half the run's context" in capsys.readouterr().err


def test_probe_time_is_the_whole_runs_across_a_resume(tmp_path):
    from vslm.train.checkpoint import list_checkpoints, load_checkpoint

    words = tiny_overrides(train__steps=4, train__checkpoint_every=4, logging__probe_every=2)
    run = tmp_path / "r"
    Trainer(load_config("tiny", words), run).fit()
    _, state = load_checkpoint(list_checkpoints(run / "checkpoints")[-1][1])
    saved = next(v for k, v in state["callbacks"].items() if k.startswith("ProbeCallback"))["probe_time_s"]
    assert saved > 0  # the checkpoint carries the probe time so far
    Trainer(load_config("tiny", [*words, "train.steps=6"]), run, resume=True).fit()
    summary = json.loads((run / "summary.json").read_text())
    # the resumed session's probe time adds to the checkpoint's, and the fraction is over the whole run's training
    assert summary["probe_time_s"] > saved
    total_train = [m for m in lines(run / "metrics.jsonl") if "train_time_s" in m][-1]["train_time_s"]
    # train_time_s is logged to 3 decimals: on a run of a few hundredths of a second that alone moves the
    # ratio by percents (8.21 against 8.00 seen on a busy machine), so the check is on the times
    fraction = summary["probe_fraction"]
    assert fraction * total_train == pytest.approx(summary["probe_time_s"], abs=0.0005 * fraction + 0.0015)


@pytest.mark.skipif(not (SHARED / "data/tokenizers/gpt2/vocab.json").is_file(), reason="shared/data not present")
def test_gpt2s_vocabulary_trains_with_the_probes_on(tmp_path):
    """50,257 tokens: the bigram statistics are sparse (a dense table would take 19 GiB), every probe runs."""
    cfg = load_config("tiny", tiny_overrides(data__tokenizer="gpt2", train__steps=2, logging__probe_windows=8,
                                             data__max_bytes=100000))
    Trainer(cfg, tmp_path / "r").fit()
    last = lines(tmp_path / "r" / PROBES)[-1]
    assert last["step"] == 2 and 0 < last["distribution"]["bigram_entropy"] < last["distribution"]["log_vocab"]
    assert math.isfinite(last["distribution"]["M3"])


def test_icl_short_tokens_is_the_single_token_definition_in_training_and_over_snapshots(tmp_path, capsys):
    cfg = load_config("tiny", tiny_overrides(train__steps=4, logging__probe_every=2, logging__icl_short="tokens"))
    Trainer(cfg, tmp_path / "r").fit()
    T = cfg.model.context
    for p in lines(tmp_path / "r" / PROBES):
        curve = p["position_loss"]
        assert p["icl_label"] == "short-context-tokens"
        assert p["icl_score"] == pytest.approx(curve[T - 2] - curve[T // 10 - 1], abs=2e-6)
    assert main(["probe", str(tmp_path / "r")]) == 0
    again = lines(tmp_path / "r" / "probes-snapshots.jsonl")
    assert {p["icl_label"] for p in again} == {"short-context-tokens"}


def test_the_train_command_says_when_the_probes_took_a_notable_share_of_the_time(tmp_path, capsys):
    """A short run probed at every step spends more on its probes than on training: its last line says so, with
    summary.json's times and how to turn them off; a run without probes says nothing of them."""
    assert main(["train", "tiny", *tiny_overrides(train__steps=6, logging__probe_every=1),
                 "--out", str(tmp_path / "r")]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-2]  # then the run's path
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["probe_fraction"] > 0.1
    probes, training = summary["probe_time_s"], summary["probe_time_s"] / summary["probe_fraction"]
    assert last.startswith("trained 6 steps: ") and last.endswith(
        f"; the probes took {probes:.0f} s beside {training:.0f} s of training steps (logging.probe_every=0 turns "
        "them off; fewer logging.probe_windows make them cheaper)")
    assert main(["train", "tiny", *tiny_overrides(train__steps=6, logging__probe_every=0),
                 "--out", str(tmp_path / "quiet")]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-2]
    assert last.startswith("trained 6 steps: ") and "probes" not in last
