"""`vslm scaling`: the L(N, D) fitter on losses drawn from a known law, one token stream for every run,
a reduced study end to end, the plan from a fit, and bad input as one-line errors."""

import io
import json
import math

import numpy as np
import pytest
from rich.console import Console

from vslm.cli import main
from vslm.commands.plan import CostFit, Shape
from vslm.commands.scaling import law_chooser, plan_from_fit
from vslm.config import load_config
from vslm.errors import ConfigError, VSLMError
from vslm.lab import runner
from vslm.lab.scaling import load_scaling_spec, plan_scaling, run_scaling
from vslm.lab.scaling_fit import Law, envelope, fit_law
from vslm.train.trainer import Trainer, TrainingDiverged

TRUE = Law(E=1.5, A=60.0, alpha=0.4, B=300.0, beta=0.35)


def _grid(noise: float, seed: int = 0):
    n = np.repeat(np.geomspace(1e4, 1e6, 5), 5)
    d = np.tile(np.geomspace(1e5, 1e7, 5), 5)
    rng = np.random.default_rng(seed)
    return n, d, TRUE.loss(n, d) * np.exp(rng.normal(0, noise, len(n)))


def test_fitter_recovers_a_known_law_from_noisy_losses():
    # 25 runs, N and D over two decades each, 0.2% lognormal noise on the loss: the exponents within 0.05,
    # E within 5%, A and B within 25% (they trade off against alpha and beta)
    n, d, loss = _grid(0.002)
    fit = fit_law(n, d, loss, starts=300, bootstrap=30)
    law = fit.law
    assert law.alpha == pytest.approx(TRUE.alpha, abs=0.05) and law.beta == pytest.approx(TRUE.beta, abs=0.05)
    assert law.E == pytest.approx(TRUE.E, rel=0.05)
    assert law.A == pytest.approx(TRUE.A, rel=0.25) and law.B == pytest.approx(TRUE.B, rel=0.25)
    assert law.a == pytest.approx(TRUE.a, abs=0.05) and law.b == pytest.approx(TRUE.b, abs=0.05)
    lo, hi = fit.intervals()["alpha"]  # a 95% interval of one draw: it holds the estimate, and the truth nearly
    assert lo <= law.alpha <= hi and lo - 0.02 <= TRUE.alpha <= hi + 0.02 and hi - lo < 0.2
    assert np.sqrt(np.mean(fit.residuals**2)) < 0.005  # the noise's size, in log L
    exact = fit_law(*_grid(0.0), starts=300)  # no noise: the law itself
    assert exact.law.alpha == pytest.approx(TRUE.alpha, abs=0.01) and exact.law.E == pytest.approx(TRUE.E, rel=0.01)


def test_compute_optimal_allocation_is_the_minimum_on_the_iso_flop_line():
    assert TRUE.a == pytest.approx(0.35 / 0.75) and TRUE.a + TRUE.b == pytest.approx(1)
    for flops in (1e12, 1e15):
        n_opt, d_opt = TRUE.optimal(flops)
        assert 6 * n_opt * d_opt == pytest.approx(flops)
        n = np.geomspace(n_opt / 10, n_opt * 10, 2001)  # brute force along C = 6 N D
        assert n[np.argmin(TRUE.loss(n, flops / (6 * n)))] == pytest.approx(n_opt, rel=0.01)


def test_fitter_refuses_too_few_points_and_reports_no_convergence():
    n, d, loss = _grid(0.0)
    with pytest.raises(VSLMError, match="5 parameters .* only 4 usable runs"):
        fit_law(n[:4], d[:4], loss[:4])
    with pytest.raises(VSLMError, match="2 model sizes"):
        fit_law(n[:5], d[:5], loss[:5])  # one size, five budgets
    with pytest.raises(VSLMError, match="did not converge"):
        fit_law(n, d, loss, starts=5, max_iter=1)


def test_the_fits_warnings_name_an_irreducible_loss_at_zero_and_a_run_the_law_does_not_fit():
    """scaling-tiny under load fitted E = 1.6e-24 and left a run 3.8 x the rms residual off the law: fit.json's
    warnings were empty, and `vslm plan --from` built on that law without a word."""
    from vslm.lab.scaling import _warnings

    law = Law(E=1.6e-24, A=5.0, alpha=0.3, B=20.0, beta=0.3)
    runs = [{"label": f"w{i}", "params": 1000 * 2 ** i, "tokens": 100_000} for i in range(8)]
    for i, r in enumerate(runs):
        r["fitted_loss"] = float(law.loss(r["params"], r["tokens"]))
        r["residual"] = 0.267 if i == 3 else (-1) ** i * 0.02  # log L_fit - log L
        r["val_loss"] = r["fitted_loss"] / math.exp(r["residual"])
    notes = _warnings(law, runs)
    assert any(n.startswith("E = 1.6e-24, about 0: this grid does not pin down the irreducible loss") for n in notes)
    odd = [n for n in notes if "a point the law does not fit" in n]
    assert len(odd) == 1 and odd[0].startswith("w3: its loss") and "by a log residual of +0.267, 13.4 x" in odd[0]
    runs[3]["residual"] = 0.02
    assert not any("does not fit" in n for n in _warnings(Law(E=1.0, A=5.0, alpha=0.3, B=20.0, beta=0.3), runs))


def test_envelope_finds_the_size_that_is_lowest_at_each_compute():
    curves = []
    for n in (1e4, 1e5):
        tokens = np.geomspace(1e4, 1e8, 200)
        curves.append({"params": n, "tokens": tokens, "loss": TRUE.loss(n, tokens)})
    result = envelope(curves, skip=0, smooth=0)
    assert result["winners"] == [10_000, 100_000]  # the small model wins at low compute, the large one at high
    big = [c for c, n in zip(result["flops"], result["params"], strict=True) if n == 1e5]
    small = [c for c, n in zip(result["flops"], result["params"], strict=True) if n == 1e4]
    assert min(big) > max(small)


SPEC = """
base = "tiny"
overrides = ["model.context=16", "train.batch_size=4", "train.warmup=2", "train.eval_every=0",
             "train.eval_windows=16", "train.checkpoint_every=0", "logging.tensorboard=false",
             "data.max_bytes=60000", "train.threads=1"]
widths = [16, 32]
aspect = 16
head_dim = 16
steps = [6, 12, 24]
bootstrap = 10
"""


class Recorder:
    """A batch source that records the token ids of every batch the trainer draws from the real sampler."""

    def __init__(self, inner):
        self.inner, self.shard, self.seen = inner, inner.shard, []

    def next_batch(self):
        x, y = self.inner.next_batch()
        self.seen.append(x.numpy().copy())
        return x, y

    def state_dict(self):
        return self.inner.state_dict()

    def load_state_dict(self, state):
        # the trainer peeks one batch before step 0 and puts the sampler back: the stream starts again here
        self.seen.clear()
        self.inner.load_state_dict(state)


def test_every_budget_trains_on_a_prefix_of_one_token_stream(tmp_path):
    """Through the trainer's own sampler: sizes and budgets differ, the token ids of the shorter run are the
    first D ids of the longer run's stream (the sampler's order depends on neither the steps nor the model)."""
    spec_path = tmp_path / "spec.toml"
    spec_path.write_text(SPEC)
    _, spec = load_scaling_spec(str(spec_path))
    runs = plan_scaling(spec, tmp_path / "out")
    picked = [r for r in runs if (r.size.width, r.steps) in ((16, 24), (32, 6), (32, 12))]
    streams = {}
    for run in picked:
        cfg = run.cfg.model_copy(update={"logging": run.cfg.logging.model_copy(update={"probe_every": 0})})
        trainer = Trainer(cfg, tmp_path / run.label.replace(" ", "_"), callbacks=[])
        trainer.batches = Recorder(trainer.batches)
        trainer.fit()
        ids = np.concatenate([b.ravel() for b in trainer.batches.seen])
        assert len(ids) == run.tokens  # D = steps x batch x accumulation x context
        streams[run.label] = ids
    longest = streams["w16-d1 24 steps"]
    for label in ("w32-d2 6 steps", "w32-d2 12 steps"):
        assert np.array_equal(streams[label], longest[: len(streams[label])])


def test_a_reduced_study_runs_end_to_end_leaves_out_a_diverged_run_and_reuses(tmp_path, monkeypatch):
    spec_path = tmp_path / "spec.toml"
    spec_path.write_text(SPEC)
    out = tmp_path / "study"
    real = runner.train_or_reuse

    def diverge_one(cfg, folder):
        if cfg.model.width == 32 and cfg.train.steps == 12:
            raise TrainingDiverged("loss is nan at step 7: training stopped")
        return real(cfg, folder)

    monkeypatch.setattr(runner, "train_or_reuse", diverge_one)
    report = run_scaling(str(spec_path), out, starts=40)
    assert [x["label"] for x in report["left_out"]] == ["w32-d2 12 steps"]
    assert "diverged" in report["left_out"][0]["reason"]
    saved = json.loads((out / "fit.json").read_text())
    fit = saved["fit"]
    for key in ("E", "A", "alpha", "B", "beta", "a", "b"):
        assert math.isfinite(fit[key]) and len(fit["intervals"][key]) == 2
    assert saved["chinchilla"]["alpha"] == 0.34 and saved["chinchilla"]["beta"] == 0.28
    assert all(r["flops_exact"] > 0 and r["flops_6nd"] == 6 * r["params"] * r["tokens"] for r in saved["runs"])
    assert len(saved["bootstrap"]) == 10
    assert saved["warnings"][0].startswith("5 runs for the law's 5 parameters")  # the one left out not counted
    html = (out / "report.html").read_text()
    assert "Runs left out of the fit" in html and "diverged" in html and "Iso-FLOP" in html
    assert (out / "w16-d1" / "steps-24" / "seed-0" / "snapshots").is_dir()  # log-spaced snapshots, probes
    assert (out / "w16-d1" / "steps-24" / "seed-0" / "probes.jsonl").is_file()

    monkeypatch.setattr(runner, "train_or_reuse", real)
    printed = io.StringIO()
    again = run_scaling(str(spec_path), out, starts=40, console=Console(file=printed, width=300))
    assert not again["left_out"]  # the left-out one trained, the finished runs reused
    assert sum(r["reused"] for r in again["runs"]) == 5
    assert "warning: 6 runs for the law's 5 parameters" in printed.getvalue()  # the fit's doubts, said

    def worse_when_larger(cfg, folder):  # the same runs read back, their losses rising with size: alpha < 0
        result = real(cfg, folder)
        return result | {"val_loss": 2.0 + 0.05 * math.log(result["params"]) + 2.0 / cfg.train.steps}

    monkeypatch.setattr(runner, "train_or_reuse", worse_when_larger)
    flat = run_scaling(str(spec_path), out, starts=40)  # its fit.json and report, not a traceback
    saved = json.loads((out / "fit.json").read_text())
    assert saved["fit"]["alpha"] < 0 and saved["fit"]["a"] is None and saved["fit"]["at_largest_run"]["n_opt"] is None
    assert any("is not positive" in w for w in flat["warnings"])
    assert "The law has no compute-optimal point" in (out / "report.html").read_text()


def test_plan_from_a_fit_chooses_by_the_law(tmp_path):
    fit = CostFit(overhead=1e-6, per_flop=1e-10)
    sizes = {Shape(32): (10_000, 1e5), Shape(64): (100_000, 1e6), Shape(128): (1_000_000, 1e7)}
    pick = law_chooser(TRUE)
    expected = {s: TRUE.loss(n, 60 * fit.tokens_per_s(f)) for s, (n, f) in sizes.items()}
    assert pick(sizes, fit, 60.0) == min(expected, key=expected.get)
    # a law where data is worth nothing chooses the largest model; one where size is worth nothing, the smallest
    assert pick(sizes, fit, 60.0) in sizes
    assert law_chooser(Law(1, 1e6, 1.0, 1e-9, 1.0))(sizes, fit, 60.0) == Shape(128)
    assert law_chooser(Law(1, 1e-9, 1.0, 1e6, 1.0))(sizes, fit, 60.0) == Shape(32)

    base = load_config("tiny", ["data.max_bytes=200000", "model.context=32", "train.batch_size=4",
                                "train.device=cpu", "train.optimizer=muon", "train.lr=0.01", "train.min_lr=0.002",
                                "train.warmup=1", "train.weight_decay=0.0"])
    law = TRUE
    boot = [[law.E * k, law.A, law.alpha, law.B, law.beta] for k in (0.95, 1.0, 1.05)]
    (tmp_path / "fit.json").write_text(json.dumps({
        "fit": {**law.as_dict(), "a": law.a, "b": law.b}, "bootstrap": boot,
        "base_config": base.model_dump(mode="json", exclude_none=True),
        "runs": [{"params": n, "tokens": d, "left_out": None, "fitted_loss": float(law.loss(n, d))}  # as written
                 for n, d in ((1e4, 1e5), (1e5, 1e6))]}))
    plan = plan_from_fit(0.002, tmp_path / "fit.json", ["train.threads=1"], seconds=0.3, max_measure=2)
    lo, hi = plan["loss_interval"]
    assert lo < plan["predicted_loss"] < hi
    assert plan["predicted_loss"] == pytest.approx(float(law.loss(plan["params"], plan["tokens"])))
    assert plan["config"].model.context == 32 and "predicted val_loss" in plan["config"].description
    train = plan["config"].train  # the recipe the law was fitted on, not the plan's AdamW at an lr by width
    assert (train.optimizer, train.lr, train.min_lr, train.warmup, train.weight_decay) == ("muon", 0.01, 0.002, 1, 0.0)
    with pytest.raises(VSLMError, match=r"^override 'data.tokenizer=byte': --from plans the study's data, model, batch "
                                        "and optimizer"):
        plan_from_fit(0.002, tmp_path / "fit.json", ["data.tokenizer=byte"])
    broken = json.loads((tmp_path / "fit.json").read_text())
    del broken["fit"]["beta"]
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "fit.json").write_text(json.dumps(broken))
    with pytest.raises(VSLMError, match=r"is not the fit.json of `vslm scaling SPEC --out DIR`: fit.beta is missing"):
        plan_from_fit(0.002, tmp_path / "broken")
    for name, edit, message in (  # what no plan can be made by: refused before the minutes of measuring
            ("nan", lambda f: f["fit"].update(E=float("nan")), "fit.E is missing or not a finite number"),
            ("flat", lambda f: f["fit"].update(alpha=-0.02), "alpha -0.02 or beta 0.35 is not positive"),
            ("gone", lambda f: [r.update(left_out="diverged") for r in f["runs"]], "every one of its runs is left out"),
            ("words", lambda f: f["bootstrap"][0].__setitem__(1, "x"), "bootstrap is not a list of"),
            ("edited", lambda f: f["fit"].update(A=1e308),  # finite, absurd: it planned an 85M model for one step
             r"its law gives run \? a loss of .*, not the .* fitted beside it: the law or the runs were edited")):
        damaged = json.loads((tmp_path / "fit.json").read_text())
        edit(damaged)
        (tmp_path / name).mkdir()
        (tmp_path / name / "fit.json").write_text(json.dumps(damaged))
        with pytest.raises(VSLMError, match=message):
            plan_from_fit(0.002, tmp_path / name)
    gqa = json.loads((tmp_path / "fit.json").read_text())
    gqa["base_config"]["model"]["kv_heads"] = 1  # a study the ladder's uniform shapes cannot carry: named
    (tmp_path / "gqa").mkdir()
    (tmp_path / "gqa" / "fit.json").write_text(json.dumps(gqa))
    with pytest.raises(VSLMError, match=r"the study's model.kv_heads is not carried by plan --from"):
        plan_from_fit(0.002, tmp_path / "gqa")
    wsd = json.loads((tmp_path / "fit.json").read_text())  # a warm-up longer than the plan's steps leave it
    wsd["base_config"]["train"].update(schedule="wsd", warmup=10_000_000, decay_fraction=0.3)
    (tmp_path / "wsd").mkdir()
    (tmp_path / "wsd" / "fit.json").write_text(json.dumps(wsd))
    plan = plan_from_fit(0.002, tmp_path / "wsd", ["train.threads=1"], seconds=0.3, max_measure=2)
    train = plan["config"].train
    assert train.schedule == "wsd" and train.warmup == train.steps - round(0.3 * train.steps)


def test_bad_input_is_one_line(tmp_path, capsys):
    small = tmp_path / "small.toml"
    small.write_text(SPEC.replace("steps = [6, 12, 24]", "steps = [6, 12]"))
    assert main(["scaling", str(small), "--out", str(tmp_path / "x"), "--dry-run"]) == 2
    assert "4 runs (2 sizes x 2 budgets), fewer than the 5 parameters" in capsys.readouterr().err
    typo = tmp_path / "typo.toml"
    typo.write_text(SPEC.replace("aspect =", "aspekt ="))
    with pytest.raises(ConfigError, match="did you mean aspect"):
        load_scaling_spec(str(typo))
    typo.write_text(SPEC.replace("steps =", "step ="))  # a required key misspelled: named, not "steps: missing"
    with pytest.raises(ConfigError, match=r"typo.toml: unknown field 'step' \(did you mean steps\?\)$"):
        load_scaling_spec(str(typo))
    with pytest.raises(ConfigError, match="did you mean scaling-tiny"):
        load_scaling_spec("scaling-tinny")
    ok = tmp_path / "ok.toml"
    ok.write_text(SPEC)
    _, spec = load_scaling_spec(str(ok))
    with pytest.raises(ConfigError, match="model.width is set by the scaling grid"):
        plan_scaling(spec, tmp_path / "y", ["model.width=64"])
    unordered = tmp_path / "unordered.toml"
    unordered.write_text(SPEC.replace("steps = [6, 12, 24]", "steps = [12, 6, 24]"))
    with pytest.raises(ConfigError, match="steps: must be strictly ascending"):
        load_scaling_spec(str(unordered))
    quoted = tmp_path / "quoted.toml"  # a string where a number goes: refused, as in a run config
    quoted.write_text(SPEC.replace("widths = [16, 32]", 'widths = ["16", 32]'))
    with pytest.raises(ConfigError, match=r"widths.0: Input should be a valid integer, got '16'"):
        load_scaling_spec(str(quoted))
    with pytest.raises(VSLMError, match="no fit at"):
        plan_from_fit(1.0, tmp_path / "nothing.json")


def test_what_a_researchers_own_spec_gets_wrong_is_one_line_and_the_dry_run_says_it(tmp_path, capsys, monkeypatch):
    """A whole `model` or `train` table would set the grid's fields past the check; a file not UTF-8; a fault in
    the shared part blamed on a size; a relative base read from the working directory; an --out that is a
    file, or holds runs of other settings, passed by the dry run."""
    def refused(*argv):
        code = main(["scaling", *map(str, argv)])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
        return err

    ok, out = tmp_path / "ok.toml", tmp_path / "out"
    ok.write_text(SPEC)
    assert "model.width, model.depth, model.heads, model.head_dim are set by the scaling grid" in refused(
        ok, "model={position='rope'}", "--dry-run", "--out", out)
    assert "train.steps, train.seed are set by the scaling grid" in refused(ok, "train={lr=0.01}", "--dry-run")
    assert "the spec's base and overrides (and the command line's): config error: unknown field 'train.stpes'" in \
        refused(ok, "train.stpes=3", "--dry-run")
    latin = tmp_path / "latin1.toml"
    latin.write_bytes('description = "café"\n'.encode("latin-1") + SPEC.encode())
    assert f"scaling spec {latin}: cannot read it ('utf-8' codec" in refused(latin, "--dry-run")
    (tmp_path / "sub").mkdir()
    (tmp_path / "mine.toml").write_text('base = "tiny"\n')  # in the working directory only: never read
    (tmp_path / "sub" / "spec.toml").write_text(SPEC.replace('base = "tiny"', 'base = "mine.toml"'))
    monkeypatch.chdir(tmp_path)
    assert "the scaling spec's base 'mine.toml': no config 'mine.toml': not a file beside" in refused(
        tmp_path / "sub" / "spec.toml", "--dry-run")
    afile = tmp_path / "afile"
    afile.write_text("notes\n")
    for dry in (["--dry-run"], []):
        assert f"--out {afile} is a file, not a folder" in refused(ok, "--out", afile, *dry)
    assert afile.read_text() == "notes\n"
    other = out / "w16-d1" / "steps-6" / "seed-0"  # a run of another lr where the study's first run goes
    other.mkdir(parents=True)
    cfg = plan_scaling(load_scaling_spec(str(ok))[1], out)[0].cfg
    (other / "config.toml").write_text(cfg.model_copy(update={"train": cfg.train.model_copy(
        update={"lr": 0.5})}).to_toml())
    assert main(["scaling", str(ok), "--dry-run", "--out", str(out)]) == 0
    printed = capsys.readouterr().out.replace("\n", "")
    assert f"1 run folder holds a run of other settings, which the study refuses: {other}" in printed
    assert "note: 6 runs for the law's 5 parameters: the fit passes near every point" in printed  # before training
    big = tmp_path / "big.toml"
    big.write_text(SPEC.replace("widths = [16, 32]", "widths = [16, 32, 48, 64]"))
    assert main(["scaling", str(big), "--dry-run", "--out", str(tmp_path / "big")]) == 0
    assert "note:" not in capsys.readouterr().out  # 12 runs: no note
    wsd = tmp_path / "wsd.toml"  # the base's own 50 steps would not hold this warm-up; every run of the grid does
    wsd.write_text(SPEC.replace('"train.warmup=2"', '"train.schedule=\\"wsd\\"", "train.warmup=4"'))
    assert [r.steps for r in plan_scaling(load_scaling_spec(str(wsd))[1], out)] == [6, 12, 24] * 2


def test_the_readmes_scaling_spec_is_one_that_plans(tmp_path):
    """The annotated spec in the README is a valid study: every key it lists, and a grid that plans."""
    import re

    from conftest import REPO

    text = (REPO / "README.md").read_text()
    block = re.search(r"A spec of\s+your own, run by its path.*?```toml\n(.*?)```", text, re.S).group(1)
    (tmp_path / "mine.toml").write_text(block)
    _, spec = load_scaling_spec(str(tmp_path / "mine.toml"))
    assert set(type(spec).model_fields) - {"description"} <= set(block.replace("=", " ").split())
    runs = plan_scaling(spec, tmp_path / "out")
    assert len(runs) == 16 and [r.size.depth for r in runs[::4]] == [1, 2, 3, 4]


@pytest.mark.parametrize("name", ["scaling-tiny", "scaling-hour"])
def test_built_in_specs_plan_without_training(name, tmp_path):
    _, spec = load_scaling_spec(name)
    runs = plan_scaling(spec, tmp_path, ["train.threads=1"])
    assert len(runs) == len(spec.widths) * len(spec.steps) >= 5
    assert len({r.params for r in runs}) == len(spec.widths)  # the sizes grow
    tokens = sorted({r.tokens for r in runs})
    assert tokens[-1] / tokens[0] >= 8  # budgets over about a decade


def test_a_study_whose_runs_all_diverge_writes_its_report_and_says_why(tmp_path, monkeypatch, capsys):
    spec_path = tmp_path / "spec.toml"
    spec_path.write_text(SPEC)

    def diverge(cfg, folder):
        raise TrainingDiverged(f"loss is nan at step 3 (width {cfg.model.width})")

    monkeypatch.setattr(runner, "train_or_reuse", diverge)
    out = tmp_path / "study"
    assert main(["scaling", str(spec_path), "--out", str(out), "--jobs", "1"]) == 1  # in this process: patched
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "only 0 usable runs" in err and "6 runs left out" in err
    html = (out / "report.html").read_text()
    assert "No fit" in html and "Runs left out of the fit" in html and html.count("diverged: loss is nan") >= 6


@pytest.mark.slow
def test_scaling_tiny_fits_a_law_with_positive_exponents(tmp_path):
    """The built-in study itself (about 4 minutes on 2 cores; docs/BENCHMARKS.md, "Scaling law, scaling-tiny")."""
    report = run_scaling("scaling-tiny", tmp_path / "study", ["train.threads=1"])
    fit = report["fit"]
    assert not report["left_out"] and fit["alpha"] > 0 and fit["beta"] > 0 and 0 < fit["a"] < 1
    assert fit["rms_residual"] < 0.1
