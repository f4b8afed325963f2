"""Loss past the training context (RESEARCH.md section 3, "loss at 2-4x the training context"): the
model's `extend`, train.eval_lengths in the trainer's evaluation, and the experiments' tables of it."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_gpt, tiny_overrides
from vslm.cli import main
from vslm.config import load_config
from vslm.errors import ConfigError, VSLMError
from vslm.lab.experiments import summarize_lengths
from vslm.model import GPT
from vslm.train.trainer import Trainer

ROPE = ["model.position=rope"]
VARIANTS = {  # every attention normalisation, windows, sharing, a learned root without positions
    "softmax": [],
    "softmax-window": ["model.window=5"],
    "per-layer-windows": ["model.depth=4", "model.schedule.windows=increasing", "model.schedule.window_range=[2,32]"],
    "power": ["model.attention=power", "model.attention_gamma=0.75"],
    "softmax1": ["model.attention=softmax1"],
    "ssmax": ["model.attention=ssmax"],
    "sigmoid": ["model.attention=sigmoid"],
    "shared-gqa": ["model.depth=4", "model.order=[0,1,0,1]", "model.heads=4", "model.kv_heads=2"],
    "learned-root": ["model.root=learned", "model.inject=true"],
}


def tiny_model(overrides: list[str]) -> GPT:
    return tiny_gpt([*ROPE, *overrides])


@pytest.mark.parametrize("name", VARIANTS)
def test_extend_is_causal_and_equals_the_plain_forward_within_the_context(name):
    model = tiny_model(VARIANTS[name])
    C = model.cfg.context
    x = torch.randint(0, 50, (2, 4 * C), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        long = model(x, extend=True)
        # a window's first m x C positions compute what a window of m x C computes: the evaluation's premise
        for m in (1, 2, 3):
            torch.testing.assert_close(model(x[:, : m * C], extend=True), long[:, : m * C], atol=2e-5, rtol=1e-5)
        torch.testing.assert_close(model(x[:, :C]), long[:, :C], atol=2e-5, rtol=1e-5)
        # past the context, extend attends to more keys than a sliding generation's last C
        if model.specs[0].window is None:
            slid = model(x, slide=True)
            assert (slid[:, C:] - long[:, C:]).abs().max() > 1e-3
            torch.testing.assert_close(slid[:, :C], long[:, :C])


def test_extend_brute_force_one_head():
    """One RoPE softmax head past the context against the attention written out by hand."""
    model = tiny_model(["model.depth=1", "model.heads=1", "model.mlp=none", "model.tie_embeddings=false"])
    C, T = model.cfg.context, 3 * model.cfg.context
    x = torch.randint(0, 50, (1, T), generator=torch.Generator().manual_seed(2))
    block = model.blocks[0]
    with torch.no_grad():
        h = block.attn_norm(model.embed(x))
        q, k, v = block.attn.qkv(h).split(model.cfg.width, dim=-1)
        q, k = block.attn.rotary.rotate(q[:, None]), block.attn.rotary.rotate(k[:, None])
        scores = (q @ k.transpose(-2, -1))[:, 0] / math.sqrt(model.cfg.width)
        scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
        stream = model.embed(x) + block.attn.proj(scores.softmax(-1) @ v)
        expected = model.head(model.norm(stream))
        torch.testing.assert_close(model(x, extend=True), expected, atol=2e-5, rtol=1e-5)
    assert T > C


def test_extend_refusals():
    model = tiny_model([])
    x = torch.zeros(1, 2 * model.cfg.context, dtype=torch.long)
    with pytest.raises(ValueError, match="without slide and without a cache"):
        model(x, slide=True, extend=True)
    with pytest.raises(ValueError, match="without slide and without a cache"):
        model(x[:, :2], model.new_cache(), extend=True)
    learned = GPT(load_config("tiny", []).model.model_copy(update={"vocab_size": 50}))
    with pytest.raises(ValueError, match="learned positions end at the context; going past it needs "
                                         "model.position=rope"):
        learned(x, extend=True)


def test_eval_lengths_are_the_brute_force_loss_on_the_long_windows_and_leave_val_loss_alone(tmp_path):
    base = tiny_overrides(train__steps=6, logging__probe_every=0, model__position="rope", train__eval_windows=24)
    plain = Trainer(load_config("tiny", base), tmp_path / "plain").fit()
    trainer = Trainer(load_config("tiny", [*base, "train.eval_lengths=[2, 3]"]), tmp_path / "long")
    C = trainer.cfg.model.context
    # the tables of every position the evaluation reaches, before a compiled forward could see them grow
    assert all(block.attn.rotary.cos.shape[0] >= 3 * C for block in trainer.model.blocks)
    final = trainer.fit()
    assert final["val_loss"] == plain["val_loss"] and final["val_bpb"] == plain["val_bpb"]  # the same, bit for bit
    assert trainer.long_x.shape == (24 // 3, 3 * C)  # the tokens of the usual windows, in windows of 3 x C
    model = trainer.model.eval()
    with torch.no_grad():
        nll = F.cross_entropy(model(trainer.long_x, extend=True).flatten(0, 1), trainer.long_y.flatten(),
                              reduction="none").view(trainer.long_y.shape)
        sizes = trainer.token_bytes[trainer.long_y]  # bytes of each target; end-of-text has none
        for m in (1, 2, 3):
            assert final[f"val_loss_x{m}"] == pytest.approx(nll[:, : m * C].mean().item(), abs=2e-6)
            text = sizes[:, : m * C] > 0
            bpb = nll[:, : m * C][text].sum().item() / math.log(2) / sizes[:, : m * C].sum().item()
            assert final[f"val_bpb_x{m}"] == pytest.approx(bpb, abs=2e-6)
        # x2 from windows of 2 x C of their own: the same number (the evaluation's causal premise)
        short = model(trainer.long_x[:, : 2 * C], extend=True)
        loss2 = F.cross_entropy(short.flatten(0, 1), trainer.long_y[:, : 2 * C].flatten()).item()
    assert final["val_loss_x2"] == pytest.approx(loss2, abs=2e-6)
    logged = [json.loads(line) for line in (tmp_path / "long" / "metrics.jsonl").read_text().splitlines()]
    assert {"val_loss_x1", "val_loss_x2", "val_loss_x3", "val_bpb_x3"} <= set(logged[-1])


@pytest.mark.parametrize("overrides, message", [
    (["train.eval_lengths=[2]"], "train.eval_lengths runs past the context, where learned positions end: it needs "
                                  "model.position=rope"),
    ([*ROPE, "model.root=learned", "model.inject=true", "model.root_per_position=true", "train.eval_lengths=[2]"],
     "a learned root per position ends: it needs model.root_per_position=false"),
    (["model.root=learned", "model.inject=true", "model.root_per_position=true", "train.eval_lengths=[2]"],
     "learned positions end: it needs model.position=rope and model.root_per_position=false"),
    ([*ROPE, "train.eval_lengths=[4, 2]"], "eval_lengths [4, 2] must be ascending, without repeats"),
    ([*ROPE, "train.eval_lengths=[1]"], "greater than or equal to 2"),
])
def test_eval_lengths_refusals(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_config("tiny", overrides)


def test_eval_lengths_longer_than_the_validation_split_is_refused_before_training(tmp_path):
    text = tmp_path / "short.txt"
    text.write_text("abcdefgh " * 400)  # 3,600 characters: 360 of validation
    cfg = load_config("tiny", tiny_overrides(model__position="rope", data__source=str(text), train__steps=2,
                                             logging__probe_every=0) + ["train.eval_lengths=[16]"])
    with pytest.raises(VSLMError, match=r"train.eval_lengths: the validation split has 360 tokens, fewer than 16 x "
                                        r"model.context \+ 1 = 513"):
        Trainer(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()


def _row(seed: int, x1: float, x2: float) -> dict:
    return {"seed": seed, "val_loss": x1, "val_bpb": x1, "params": 1, "flops_per_token": 1,
            "val_loss_x1": x1, "val_bpb_x1": x1 * 1.5, "val_loss_x2": x2, "val_bpb_x2": x2 * 1.5}


def test_summarize_lengths_compares_what_each_variant_loses_past_its_context():
    runs = {"softmax": [_row(0, 1.0, 1.5), _row(1, 1.1, 1.7), _row(2, 0.9, 1.3)],
            "ssmax": [_row(0, 1.05, 1.10), _row(1, 1.15, 1.22), _row(2, 0.95, 1.02), {"seed": 3, "failed": "x"}]}
    out = summarize_lengths(runs, tokens=10, paired={"softmax": True, "ssmax": True})
    assert out["multiples"] == [1, 2]
    assert out["loss"]["ssmax"]["x2"]["mean"] == pytest.approx((1.10 + 1.22 + 1.02) / 3)
    compared = out["compared"]["x2"]["summary"]
    assert compared["softmax"]["val_loss_mean"] == pytest.approx(0.5)  # x2 - x1, per seed, then the mean
    # ssmax loses 0.05, 0.07, 0.07 against softmax's 0.5, 0.6, 0.4: paired differences -0.45, -0.53, -0.33
    assert compared["ssmax"]["diff_vs_baseline"] == pytest.approx(-(0.45 + 0.53 + 0.33) / 3)
    assert compared["ssmax"]["test"] == "paired" and compared["ssmax"]["failed"] == 1
    # runs without the lengths, or with other multiples, give no table
    assert summarize_lengths({"a": [{"seed": 0, "val_loss": 1.0}]}, 10, {"a": True}) == {}
    assert summarize_lengths({"a": [_row(0, 1.0, 1.2)], "b": [{"seed": 0, "val_loss": 1.0}]}, 10,
                             {"a": True, "b": True}) == {}


def test_an_experiment_with_eval_lengths_reports_them(tmp_path, capsys):
    out = tmp_path / "exp"
    assert main(["experiment", "smoke", "model.position=rope", "train.eval_lengths=[2]", "train.steps=4", "--seeds",
                 "2", "--jobs", "1", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["lengths"]["multiples"] == [1, 2]
    for run in results["runs"]:
        assert run["val_loss_x2"] > 0 and run["val_loss_x1"] > 0
    markdown = (out / "results.md").read_text()
    assert "| variant (loss at m x the context) | x1 | x2 |" in markdown and "| loss x2 - x1 |" in markdown
    html = (out / "report.html").read_text()
    assert "Past the context" in html and "Length generalisation x2" in html
    assert "length generalisation: loss at 2 x the context minus loss within it" in capsys.readouterr().out


def test_vslm_eval_lengths_score_the_same_tokens_in_longer_windows(tmp_path, capsys):
    import numpy as np

    from vslm.data.shards import prepare_corpus
    from vslm.eval.corpus import eval_data
    from vslm.train.run_folder import load_run

    run = tmp_path / "run"
    Trainer(load_config("tiny", tiny_overrides(train__steps=4, logging__probe_every=0, model__position="rope")),
            run).fit()
    capsys.readouterr()
    assert main(["eval", str(run), "--on", "stories", "--lengths", "1", "3", "--max-bytes", "20000", "--json"]) == 0
    one, three = json.loads(capsys.readouterr().out)["corpora"]
    assert (one["length"], three["length"]) == (1, 3) and one["tokens"] == three["tokens"]
    assert main(["eval", str(run), "--on", "stories", "--max-bytes", "20000", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["corpora"] == [one]  # length 1 is the usual evaluation
    # brute force: consecutive windows of 3 x the context after end-of-text, every target once
    cfg, model, tok = load_run(run)
    data, all_val, _, _, cap = eval_data("stories", cfg.data, 20000)  # the run's own corpus: its held-out text,
    corpus = prepare_corpus(data, tokenizer=tok, all_val=all_val)  # as it read it, scored to its first 20,000 bytes
    held = corpus.val.tokens
    held = held[: int(np.searchsorted(np.cumsum(corpus.token_bytes[held]), cap, side="right"))]
    stream = np.concatenate([[tok.eos_id], held])
    T, nll = 3 * cfg.model.context, []
    with torch.no_grad():
        for s in range(0, len(stream) - 1, T):
            window = torch.from_numpy(stream[s : s + T + 1].astype(np.int64))[None]
            logits = model(window[:, :-1], extend=True)
            nll.append(F.cross_entropy(logits[0], window[0, 1:], reduction="none"))
    assert three["loss"] == pytest.approx(torch.cat(nll).mean().item(), rel=1e-6)
    assert three["loss"] != pytest.approx(one["loss"], rel=1e-6)


def test_long_windows_take_fewer_rows_where_attention_weights_are_explicit():
    from vslm.train.trainer import long_rows_divisor

    assert long_rows_divisor(tiny_model([]), 4) == 4  # fused: the same tokens a forward
    assert long_rows_divisor(tiny_model(["model.attention=ssmax"]), 4) == 16  # (rows, H, 4C, 4C) kept at its size
    assert long_rows_divisor(tiny_model(["model.blocks=[{attention=\"sigmoid\"}, {}]"]), 3) == 9
    assert long_rows_divisor(tiny_model(["model.attention=ssmax"]), 1) == 1


def test_vslm_eval_lengths_refusals(tmp_path, capsys):
    run = tmp_path / "run"
    Trainer(load_config("tiny", tiny_overrides(train__steps=2, logging__probe_every=0)), run).fit()
    capsys.readouterr()
    assert main(["eval", str(run), "--on", "stories", "--lengths", "1", "2"]) == 2
    assert ("--lengths 1 2 (lengths= in Python): learned positions end at the context; going past it needs "
            "model.position=rope") in capsys.readouterr().err
    for words, message in ((["--on", "stories", "--lengths", "0"], "--lengths takes multiples of the context"),
                           (["--on", "stories", "--lengths", "2", "2"], "none twice; got 2 2"),
                           (["--on", "stories", "--lengths", "65"], "each 1 to 64 (as train.eval_lengths)"),
                           (["--tasks", "x", "--lengths", "2"], "--lengths applies to --on")):
        assert main(["eval", str(run), *words]) == 2
        assert message in capsys.readouterr().err


def test_a_resume_may_add_eval_lengths(tmp_path):
    base = tiny_overrides(train__steps=4, logging__probe_every=0, model__position="rope", train__eval_windows=16)
    Trainer(load_config("tiny", base), tmp_path / "r").fit()
    resumed = Trainer(load_config("tiny", [*base, "train.steps=6", "train.eval_lengths=[2]"]), tmp_path / "r",
                      resume=True).fit()
    assert resumed["step"] == 6 and resumed["val_loss_x2"] > 0
