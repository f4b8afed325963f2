"""The Python API as a notebook uses it: several runs in one process, the session's state left as it was,
the CLI's settings honoured, and a one-line error for what a notebook user gets wrong."""

import json
from pathlib import Path

import pytest
import torch

from conftest import tiny_overrides
from vslm.config import load_config
from vslm.errors import ConfigError, UsageError, VSLMError
from vslm.train.callbacks import StopAfter, samples_of
from vslm.train.run_folder import load_run
from vslm.train.trainer import Trainer, default_callbacks


def losses(folder: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (folder / "metrics.jsonl").read_text().splitlines()]


def test_a_run_draws_on_its_own_random_stream_and_leaves_the_sessions_as_it_was(tmp_path):
    cfg = load_config("tiny", tiny_overrides(train__steps=6, model__dropout=0.1))
    Trainer(cfg, tmp_path / "a").fit()
    torch.manual_seed(123)
    session = torch.get_rng_state()
    trainer = Trainer(cfg, tmp_path / "b")
    assert torch.equal(torch.get_rng_state(), session)  # the model's init drew on the run's stream
    torch.rand(1000)  # a notebook's own draw between Trainer() and fit(): dropout's masks stay the run's
    drawn = torch.get_rng_state()
    trainer.fit()
    assert torch.equal(torch.get_rng_state(), drawn)
    assert losses(tmp_path / "b") == losses(tmp_path / "a") and len(losses(tmp_path / "a")) == 6


def test_a_runs_threads_are_its_own_and_the_sessions_come_back(tmp_path):
    """train.threads while the corpus is prepared and while it trains; the session's count in between (a
    Trainer built only to look at its model changes nothing) and after."""
    from vslm.train.callbacks import Callback

    class Threads(Callback):
        seen: list[int] = []

        def on_step_end(self, trainer, metrics) -> None:
            self.seen.append(torch.get_num_threads())

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        cfg = load_config("tiny", tiny_overrides(train__steps=2, train__threads=1))
        trainer = Trainer(cfg, tmp_path / "r", callbacks=[*default_callbacks(cfg), Threads()])
        assert torch.get_num_threads() == 2
        torch.set_num_threads(3)  # the session's own, changed between Trainer() and fit(): put back after
        trainer.fit()
        assert Threads.seen == [1, 1] and torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


def test_what_a_notebook_hands_over_is_checked_before_anything_is_written(tmp_path):
    """A model for another tokenizer or a shorter context (Trainer(model=...)): one ConfigError in Trainer(), no
    folder (it was an IndexError deep in torch mid-fit, and a folder a retry refused). A field assigned by hand:
    GPT() and save_config() name it (a 30-wide attention on width 32 was built; a config.toml no load read was
    written). GPT(cfg) for GPT(cfg.model) says so."""
    from vslm.config import save_config
    from vslm.model import GPT

    cfg = load_config("tiny", tiny_overrides(train__steps=3))
    for words, message in ((["model.vocab_size=30"], "has vocab_size 30, fewer than the tokenizer's 58 ids"),
                           (["model.vocab_size=58", "model.context=16", "logging.probe_every=0"],
                            "has context 16, shorter than the config's model.context 32")):
        model = GPT(load_config("tiny", words).model)
        with pytest.raises(ConfigError, match=message):
            Trainer(cfg, tmp_path / "x", model=model)
        assert not (tmp_path / "x").exists()
    assert Trainer(cfg, tmp_path / "x", model=GPT(load_config("tiny", ["model.vocab_size=58"]).model)).fit()
    hand = load_config("tiny", ["model.vocab_size=100"])
    hand.model.heads = 5
    with pytest.raises(ConfigError, match=r"^config error: model: width 32 is not divisible by heads 5$"):
        GPT(hand.model)
    hand.model.heads, hand.model.width = 4, "big"
    with pytest.raises(ConfigError, match=r"^config error: model.width: Input should be a valid integer"):
        GPT(hand.model)
    with pytest.raises(ConfigError, match=r"GPT\(cfg.model\)"):
        GPT(load_config("tiny", ["model.vocab_size=100"]))
    cfg.train.steps = "300"
    with pytest.raises(ConfigError, match="train.steps"):
        save_config(cfg, tmp_path / "saved.toml")
    assert not (tmp_path / "saved.toml").exists()
    # a None where the field takes none: a dump leaves it out and validation filled in the default (steps 2000)
    cfg.train.steps = None
    for call in (lambda: save_config(cfg, tmp_path / "saved.toml"), lambda: Trainer(cfg, tmp_path / "none")):
        with pytest.raises(ConfigError, match=r"^config error: train.steps: None is not one of its values"):
            call()
    hand.model.width, hand.model.context = 32, None
    with pytest.raises(ConfigError, match=r"^config error: model.context: None is not one of its values"):
        GPT(hand.model)
    assert not (tmp_path / "saved.toml").exists() and not (tmp_path / "none").exists()


def test_loading_a_run_leaves_the_sessions_random_stream_as_it_was(tmp_path):
    """load_run (and what reads a run through it: eval, facts eval, export) and shape's snapshots build the
    model before loading its weights: that init draws nothing from the session's stream."""
    from vslm.commands.shape import shape_course, shape_run
    from vslm.report.runs import read_run

    cfg = load_config("tiny", tiny_overrides(train__steps=2, train__snapshots="true"))
    Trainer(cfg, tmp_path / "r").fit()
    for call in (lambda: load_run(tmp_path / "r"),
                 lambda: shape_course(tmp_path / "r", "Tom had", " Tom said")):
        torch.manual_seed(0)
        expected = torch.rand(3)
        torch.manual_seed(0)
        call()
        assert torch.equal(torch.rand(3), expected)
    # one prompt given alone is one prompt, not its characters
    shaped = shape_run(tmp_path / "r", "Tom had", " Tom said", samples=1, sample_tokens=4)
    assert shaped["labels"] == ["(empty)", "Tom had"]
    assert shape_course(tmp_path / "r", "Tom had", " Tom said")["prompts"] == ["Tom had"]
    # what a notebook cell ending in read_run shows: one line
    assert repr(read_run(tmp_path / "r")) == (f"RunFiles('{tmp_path / 'r'}': config 'tiny', 2 metrics rows to "
                                              "step 2, 3 probe rows)")


def test_logging_samples_writes_them_from_python_and_a_run_stopped_early_samples_nothing(tmp_path):
    cfg = load_config("tiny", tiny_overrides(train__steps=3, logging__samples=2, logging__sample_tokens=12))
    trainer = Trainer(cfg, tmp_path / "r")
    trainer.fit()
    texts = samples_of(trainer)
    assert len(texts) == 2 and all(texts)
    assert (tmp_path / "r" / "samples.txt").read_text(encoding="utf-8") == "\n\n----\n\n".join(texts) + "\n"
    stopped = Trainer(cfg, tmp_path / "s", callbacks=[*default_callbacks(cfg), StopAfter(0.0)])
    stopped.fit()
    assert stopped.step == 1 and samples_of(stopped) == [] and not (tmp_path / "s" / "samples.txt").exists()


def test_a_config_changed_by_assignment_is_checked_and_a_name_is_a_config(tmp_path):
    cfg = load_config("tiny", tiny_overrides(train__steps=2))
    cfg.train.steps = "3"
    with pytest.raises(ConfigError, match=r"^config error: train\.steps: Input should be a valid integer, got '3'$"):
        Trainer(cfg, tmp_path / "r")
    cfg.train.steps = 0
    with pytest.raises(ConfigError, match=r"train\.steps: Input should be greater than 0"):
        Trainer(cfg, tmp_path / "r")
    cfg.train.steps = 2
    cfg.train.lr = object()  # not data at all: the field is named all the same
    with pytest.raises(ConfigError, match=r"^config error: train\.lr: Unable to serialize unknown type: <class 'obj"):
        Trainer(cfg, tmp_path / "r")
    cfg = load_config("tiny", ["model.blocks=[{width=64}, {width=64}]"])
    cfg.model.blocks[1].heads = object()
    with pytest.raises(ConfigError, match=r"^config error: model\.blocks\.1\.heads: Unable to serialize"):
        Trainer(cfg, tmp_path / "r")
    assert not (tmp_path / "r").exists()
    with pytest.raises(UsageError, match="a Trainer trains a RunConfig .* not a dict"):
        Trainer({"train": {}}, tmp_path / "r")
    trainer = Trainer("tiny", tmp_path / "named")
    assert trainer.cfg == load_config("tiny").with_vocab_size(trainer.cfg.model.vocab_size)


def test_a_checkpoint_without_resume_is_refused(tmp_path):
    cfg = load_config("tiny", tiny_overrides(train__steps=2))
    Trainer(cfg, tmp_path / "r").fit()
    checkpoint = next((tmp_path / "r" / "checkpoints").iterdir())
    with pytest.raises(UsageError, match=r"picks where a resumed run continues from: .*resume=True in Python"):
        Trainer(cfg, tmp_path / "new", checkpoint=checkpoint)
    assert not (tmp_path / "new").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="names a device this machine lacks")
def test_a_device_the_machine_lacks_is_named_not_blamed_on_the_checkpoints(tmp_path, capsys):
    from vslm.eval.corpus import evaluate_run

    Trainer(load_config("tiny", tiny_overrides(train__steps=2)), tmp_path / "r").fit()
    capsys.readouterr()
    for call in (lambda: load_run(tmp_path / "r", device="cuda"),
                 lambda: evaluate_run(tmp_path / "r", ["tinyshakespeare"], device="cuda:0")):
        with pytest.raises(ConfigError, match=r"^device=cuda(:0)? but CUDA is not available here"):
            call()
    assert "cannot read checkpoint" not in capsys.readouterr().err
    assert next(load_run(tmp_path / "r", device="auto")[1].parameters()).device.type == "cpu"


def test_what_a_notebook_passes_otherwise_reads_as_meant_or_is_one_line(tmp_path):
    from vslm.report import compare_runs
    from vslm.train.probing import probe_induction, probe_snapshots

    with pytest.raises(ConfigError, match=r"^no config '/no/such\.toml': not a file"):
        load_config(Path("/no/such.toml"))
    with pytest.raises(ConfigError, match=r"^overrides: a list of 'section\.key=value' strings, got \{'train"):
        load_config("tiny", {"train.steps": 5})
    assert load_config("tiny", ("train.steps=5",)).train.steps == 5
    run = tmp_path / "r"
    Trainer(load_config("tiny", tiny_overrides(train__steps=2)), run).fit()
    page = compare_runs(str(run), out=tmp_path)  # one run, alone; a folder to write into
    assert page == tmp_path / "compare.html" and page.is_file()
    with pytest.raises(UsageError, match=r"^--induction 8: must be"):
        probe_induction(run, "8")
    with pytest.raises(VSLMError, match=r"cannot write /no/dir/x\.jsonl: no folder /no/dir"):
        probe_snapshots(run, Path("/no/dir/x.jsonl"))


def test_no_limit_on_the_text_stays_no_limit_through_the_trainer_and_the_run_folder(tmp_path):
    from vslm.train.run_folder import read_run_config

    text = tmp_path / "text.txt"
    text.write_text("a small text, read whole. " * 400, encoding="utf-8")
    cfg = load_config("tiny", tiny_overrides(train__steps=2, data__source=str(text), data__max_bytes="none"))
    assert cfg.data.max_bytes is None
    trainer = Trainer(cfg, tmp_path / "r")  # left out, None would read as the 8 MB default
    assert trainer.cfg.data.max_bytes is None
    trainer.fit()
    assert 'max_bytes = "none"' in (tmp_path / "r" / "config.toml").read_text()
    assert read_run_config(tmp_path / "r").data.max_bytes is None


def test_a_run_that_diverges_at_its_last_step_says_so_and_samples_nothing(tmp_path):
    from vslm.train.trainer import TrainingDiverged

    cfg = load_config("tiny", tiny_overrides(train__steps=2, logging__samples=2, train__warmup=0, train__lr=1e30,
                                             train__grad_clip=0))
    trainer = Trainer(cfg, tmp_path / "r")
    with pytest.raises(TrainingDiverged):
        trainer.fit()
    assert samples_of(trainer) == [] and not (tmp_path / "r" / "samples.txt").exists()


def test_metrics_jsonl_is_strict_json_where_a_value_is_not_finite(tmp_path):
    """A diverging run's grad_norm or val_loss was written as Infinity or NaN, which no JSON reader but Python's
    reads (jq, a browser, most dataframe libraries): null now, as in probes.jsonl."""
    from types import SimpleNamespace

    from vslm.train.callbacks import MetricsLog

    log = MetricsLog()
    log.on_train_start(SimpleNamespace(run_dir=tmp_path, step=0))
    log.on_step_end(None, {"step": 1, "loss": 3.5, "grad_norm": float("inf"), "val_loss": float("nan")})
    log.on_train_end(None, {})
    line = (tmp_path / "metrics.jsonl").read_text()
    parsed = json.loads(line, parse_constant=lambda word: pytest.fail(f"{word} in metrics.jsonl"))
    assert parsed == {"step": 1, "loss": 3.5, "grad_norm": None, "val_loss": None}
    from vslm.train.run_folder import read_metrics

    row = read_metrics(tmp_path)[0]  # what the lab reads back (a finished run's last line, a resume's summary)
    assert row["loss"] == 3.5 and row["grad_norm"] != row["grad_norm"] and row["val_loss"] != row["val_loss"]


def test_a_trainer_that_fails_puts_the_sessions_threads_back(tmp_path):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        cfg = load_config("tiny", tiny_overrides(train__threads=1, model__vocab_size=10))
        with pytest.raises(VSLMError, match="model.vocab_size 10 is smaller than the tokenizer's"):
            Trainer(cfg, tmp_path / "r")  # after train.threads was set and the corpus prepared
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_an_adapters_init_is_its_name_and_seeds_whatever_ran_before():
    from vslm.knowledge.adapters import adapter_state, add_adapter
    from vslm.model import GPT

    cfg = load_config("tiny", ["model.vocab_size=64"]).model
    states = []
    for draws in (0, 1000):
        torch.manual_seed(7)
        model = GPT(cfg)
        torch.rand(draws)  # whatever the session drew before
        session = torch.get_rng_state()
        add_adapter(model, "g0", rank=4, seed=3)
        assert torch.equal(torch.get_rng_state(), session)
        states.append(adapter_state(model, "g0"))
    assert states[0].keys() == states[1].keys() and len(states[0]) > 0
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    other = add_adapter(GPT(cfg), "g1", rank=4, seed=3)
    a = next(v for k, v in states[0].items() if "lora_A" in k)
    assert not torch.equal(a, next(v for k, v in adapter_state(other, "g1").items() if "lora_A" in k))


def test_vslm_train_prints_the_samples_the_run_wrote(tmp_path, capsys):
    from vslm.cli import main

    words = tiny_overrides(train__steps=2, logging__samples=2, logging__sample_tokens=8)
    assert main(["train", "tiny", *words, "--out", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    texts = (tmp_path / "r" / "samples.txt").read_text(encoding="utf-8").removesuffix("\n").split("\n\n----\n\n")
    assert len(texts) == 2 and "sample 2" in out and "sample 3" not in out
    assert all(text.strip() in out for text in texts)
