"""Reports: the sections a run's files call for, embedded images that decode, the comparison page, the
CLI, and the page as a real browser (headless Chromium) renders it."""

import base64
import json
import math
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import numpy as np
import pytest

from conftest import tiny_overrides
from vslm.cli import main
from vslm.config import load_config
from vslm.report import compare_runs, write_report
from vslm.report.compare import run_labels
from vslm.report.runs import diagnostics_series, dynamics_summary, read_run
from vslm.train.trainer import Trainer

CHROMIUM = Path("/usr/bin/chromium")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PROBE_SECTIONS = ["position", "icl", "distribution", "induction", "attention"]


@pytest.fixture(scope="module")
def probed_run(tmp_path_factory) -> Path:
    """A 20-step tiny run with probes at 0, 1, 2, 4, 8, 16, 20, and samples as `vslm train` writes them."""
    folder = tmp_path_factory.mktemp("report") / "probed"
    Trainer(load_config("tiny", tiny_overrides(train__steps=20, logging__probe_every=8)), folder).fit()
    (folder / "samples.txt").write_text("Once upon a time <b>Tom</b> & Sue\n\n----\n\nthe end\n", encoding="utf-8")
    return folder


@pytest.fixture
def plain_run(probed_run, tmp_path) -> Path:
    """The same run as one trained without probes: only its config and metrics."""
    folder = tmp_path / "plain"
    folder.mkdir()
    for name in ("config.toml", "metrics.jsonl"):
        shutil.copy(probed_run / name, folder / name)
    return folder


def images(html: str) -> list[bytes]:
    """Every embedded image, decoded; fails on anything that is not strict base64."""
    return [base64.b64decode(data, validate=True) for data in re.findall(r'src="data:image/png;base64,([^"]+)"', html)]


def section_ids(html: str) -> list[str]:
    return re.findall(r'<section id="([^"]+)"', html)


def assert_self_contained(html: str) -> None:
    assert "<script" not in html and "<link" not in html
    assert not re.search(r'(src|href)="(?!data:|#)', html), "a resource outside the page"
    assert "http://" not in html and "https://" not in html


def test_report_of_a_run_with_probes_has_every_section_and_decodable_images(probed_run):
    path = write_report(probed_run)
    assert path == probed_run / "report.html"
    html = path.read_text(encoding="utf-8")
    assert section_ids(html) == ["config", "loss", *PROBE_SECTIONS, "samples"]
    pngs = images(html)
    # loss, the position heat map and its d loss / d log t, position curves, ICL and the loss's fall rate,
    # distribution, induction, attention
    assert len(pngs) == 9
    assert "d loss / d log t" in html and "fitted to the last probe" in html and "per e-fold of steps" in html
    assert all(png.startswith(PNG_SIGNATURE) and len(png) > 5000 for png in pngs)
    assert "short context" in html and "ln V" in html and "H(bigram)" in html
    assert 'vocab_size = 58' in html  # the resolved config, shown as text
    assert "&lt;b&gt;Tom&lt;/b&gt; &amp; Sue" in html  # samples are text, never markup
    assert html.count("Shaded: value ± 1.96 standard errors") == 3  # position curves, ICL, distribution
    assert_self_contained(html)


def drop_errors(value):
    """A probe line as files written before the standard errors: every "..._se" key and "windows" removed."""
    if isinstance(value, dict):
        return {k: drop_errors(v) for k, v in value.items() if not k.endswith("_se") and k != "windows"}
    return [drop_errors(v) for v in value] if isinstance(value, list) else value


def test_probes_without_standard_errors_still_read_and_draw(probed_run, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(probed_run, old)
    lines = [json.loads(x) for x in (old / "probes.jsonl").read_text().splitlines()]
    (old / "probes.jsonl").write_text("".join(json.dumps(drop_errors(p)) + "\n" for p in lines))
    new, before = dynamics_summary(read_run(probed_run)), dynamics_summary(read_run(old))
    assert new["icl_score_se"] > 0 and math.isnan(before["icl_score_se"])
    assert {k: v for k, v in before.items() if k != "icl_score_se"} == {
        k: v for k, v in new.items() if k != "icl_score_se"}
    assert np.isnan(read_run(old).probe_errors("distribution", "M1")).all()
    html = write_report(old).read_text(encoding="utf-8")
    assert section_ids(html) == ["config", "loss", *PROBE_SECTIONS, "samples"]
    assert len(images(html)) == 9 and "standard errors" not in html


def test_dynamics_summary_phase_and_attention_landmarks_from_the_files(probed_run):
    probes = [json.loads(x) for x in (probed_run / "probes.jsonl").read_text().splitlines()]
    metrics = [json.loads(x) for x in (probed_run / "metrics.jsonl").read_text().splitlines()]
    got = dynamics_summary(read_run(probed_run))
    for key, name in (("m2_min_step", "M2"), ("m3_min_step", "M3")):
        best = min(probes, key=lambda p: p["distribution"][name])
        assert got[key] == best["step"]
    h_bigram = probes[0]["distribution"]["bigram_entropy"]
    passed = [m["step"] for m in metrics if "loss" in m and m["loss"] <= h_bigram]
    assert got["bigram_loss_step"] == (passed[0] if passed else pytest.approx(math.nan, nan_ok=True))
    keys = ("row_sum", "entropy_ratio", "entropy_slope", "sink_fraction")
    heads = [h for depth in probes[-1]["attention"] for h in zip(*(depth[k] for k in keys), strict=True)]
    assert got["attn_row_sum"] == pytest.approx(np.mean([h[0] for h in heads]))
    assert got["attn_entropy_ratio"] == pytest.approx(np.mean([h[1] for h in heads]))
    assert got["attn_entropy_slope"] == pytest.approx(np.mean([h[2] for h in heads]))
    assert got["attn_sink_max"] == max(h[3] for h in heads)
    assert 0 < got["attn_entropy_slope"] < 1.5 and got["attn_row_sum"] == pytest.approx(1.0)
    from vslm.report.runs import loss_bump, steepest_drop

    steps, loss = zip(*((m["step"], m["loss"]) for m in metrics if "loss" in m), strict=True)
    warmup = tomllib.loads((probed_run / "config.toml").read_text())["train"]["warmup"]
    bump = loss_bump(np.array(steps, dtype=float), np.array(loss), after=warmup)
    assert (got["loss_bump"], got["loss_bump_step"]) == pytest.approx((bump["size"], bump["step"]), nan_ok=True)
    drop = steepest_drop(np.array([p["step"] for p in probes], dtype=float), np.array([p["icl_score"] for p in probes]))
    assert (got["icl_drop"], got["icl_drop_step"]) == pytest.approx(drop) and got["icl_drop_step"] > 0


def test_report_without_probes_has_the_loss_section_only(plain_run):
    (plain_run / "summary.json").write_text(json.dumps({"params": 30_624, "flops_per_token": 183_744}))
    html = write_report(plain_run).read_text(encoding="utf-8")
    assert section_ids(html) == ["config", "loss"]
    assert len(images(html)) == 1
    assert "30,624" in html and "183,744" in html  # parameters and FLOPs from summary.json
    # titled by the run's folder, with the config it started from (a run of tiny with other settings is not tiny)
    assert "<title>VSLM report: plain</title>" in html and f"{plain_run}, from the config tiny (" in html
    # and what its overrides set, against the built-in tiny (the vocabulary, set by the tokenizer, is not one)
    tiny = load_config("tiny")
    assert (f"), with data.max_bytes {tiny.data.max_bytes} -&gt; 200000, logging.probe_every "
            f"{tiny.logging.probe_every} -&gt; 8, logging.progress true -&gt; false, train.steps {tiny.train.steps} "
            "-&gt; 20</") in html
    from vslm.report.run_report import changed_from_builtin

    many = tomllib.loads((plain_run / "config.toml").read_text()) | {"name": "tiny"}
    many["train"] |= {"lr": 0.5, "seed": 9, "warmup": 1}
    assert changed_from_builtin("tiny", many).endswith(  # seven changes: the first six (by name), then a count
        f", train.lr {tiny.train.lr:g} -> 0.5, train.seed {tiny.train.seed} -> 9, train.steps {tiny.train.steps} -> 20 "
        "and 1 more (config.toml)")
    assert changed_from_builtin("my-own", many) == "" and changed_from_builtin(
        "tiny", tomllib.loads(load_config("tiny").to_toml())) == ""


def test_a_facts_evaluation_gets_its_section_and_one_that_does_not_read_is_said_and_left_out(plain_run, capsys):
    (plain_run / "facts-eval.json").write_text('{"closed_book": {"seen": ')  # cut short
    html = write_report(plain_run).read_text(encoding="utf-8")
    assert section_ids(html) == ["config", "loss"]
    err = capsys.readouterr().err
    assert "facts-eval.json is not valid JSON" in err and "the report leaves it out" in err
    acc = {"accuracy": 0.625, "se": 0.121, "chance": 0.25, "n": 16, "cut": 4}
    (plain_run / "facts-eval.json").write_text(json.dumps({
        "run": str(plain_run), "world": "w", "settings": {"world": "k", "distractors": 4, "checkpoint": None},
        "closed_book": {"seen": acc}, "by_hops": {"closed_book": {"seen": {"1": acc, "2": acc | {"accuracy": 0.5}}}},
        "truncated": 4, "probe": {"attribute": "birth_city", "seen": {"best": 0.3, "by_depth": [0.2, 0.3],
                                                                     "baseline": 0.1}}}))
    html = write_report(plain_run).read_text(encoding="utf-8")
    assert section_ids(html) == ["config", "loss", "facts"]
    assert "0.625 ± 0.121" in html and "16 (4 cut)" in html and "<td>0.500</td>" in html  # hops read from JSON
    assert "closed-book seen 4 of 16" in html and "distractors 4" in html and "probe name -&gt; birth_city" in html


def test_a_run_with_weight_diagnostics_has_their_section_with_their_numbers(tmp_path):
    """logging.diagnostics_every logs row norms, cosines to the gradient and update ratios per matrix; the run
    report drew none of them (only experiment tables summarised them). Its figure's lines are the logged values:
    one a matrix, row norms over their first, and their mean."""
    from vslm.report import figures

    cfg = load_config("tiny", tiny_overrides(train__steps=12, logging__diagnostics_every=4, logging__probe_every=0,
                                             train__optimizer="tangent"))
    Trainer(cfg, tmp_path / "r").fit()
    run = read_run(tmp_path / "r")
    series = diagnostics_series(run)
    matrices = {k.removeprefix("diag/").rpartition("/")[0] for k in run.metrics[-1] if k.startswith("diag/")}
    assert {"row_norm", "cos_w_grad", "update_ratio"} <= set(series) and set(series["row_norm"]) == matrices
    fig = figures.diagnostics_figure(run)
    norms = fig.axes[0].lines  # one a matrix, then the mean
    assert len(norms) == len(matrices) + 1
    first = next(iter(series["row_norm"].values()))[1]
    np.testing.assert_allclose(norms[0].get_ydata(), first / first[0])
    np.testing.assert_allclose(norms[-1].get_ydata(), np.mean([v / v[0] for _, v in series["row_norm"].values()], 0))
    np.testing.assert_allclose(norms[-1].get_ydata(), 1.0, atol=1e-5)  # tangent descent holds the norms
    # a matrix without a step (an update ratio of inf, dropped): the mean is of the matrices at each step
    lines = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    first_diag = next(m for m in lines if any(k.startswith("diag/") for k in m))
    key = next(k for k in first_diag if k.endswith("/update_ratio"))
    first_diag[key] = None
    (tmp_path / "r" / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in lines))
    run = read_run(tmp_path / "r")
    mean = figures.diagnostics_figure(run).axes[2].lines[-1]
    at_first = [v[1][0] for v in diagnostics_series(run)["update_ratio"].values() if v[0][0] == first_diag["step"]]
    assert mean.get_xdata()[0] == first_diag["step"] and mean.get_ydata()[0] == pytest.approx(np.mean(at_first))
    assert len(at_first) == len(matrices) - 1
    html = write_report(tmp_path / "r").read_text(encoding="utf-8")
    assert section_ids(html) == ["config", "loss", "diagnostics"] and len(images(html)) == 2


def test_report_of_probes_with_nulls_and_unequal_heads(tmp_path):
    """A short context leaves the ICL score null (no section); depths with different head counts and
    weights that do not sum to 1 (power attention) still draw, with a row_sum panel."""
    (tmp_path / "config.toml").write_text('name = "made"\n[model]\ncontext = 8\n')
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 4 - s / 10}) + "\n"
                                                    for s in range(1, 5)) + '{"step": 5, "lo')  # cut by a kill
    attention = [{"block": 0, "row_sum": [0.5, 0.7], "entropy": [1, 1], "entropy_ratio": [0.9, None],
                  "sink_fraction": [0.1, 0.2]},
                 {"block": 0, "row_sum": [0.6, 0.8, 0.9, 1.0], "entropy": [1, 1, 1, 1],
                  "entropy_ratio": [0.4, 0.5, 0.6, 0.7], "sink_fraction": [0.0, 0.5, 0.9, 1.0]}]
    probes = [{"step": s, "position_loss": [4.1, 4.0, None, 3.9, 3.8, 3.7, 3.6], "icl_score": None,
               "icl_label": "too-short", "attention": attention} for s in (0, 1, 2, 4)]
    (tmp_path / "probes.jsonl").write_text("".join(json.dumps(p) + "\n" for p in probes))
    html = write_report(tmp_path).read_text(encoding="utf-8")
    assert section_ids(html) == ["config", "loss", "position", "attention"]
    assert "row_sum = total weight" in html and "steps trained</td><td>4<" in html
    assert len(images(html)) == 5


def test_compare_overlays_runs_with_a_table_of_final_numbers(probed_run, plain_run, tmp_path, capsys):
    out = tmp_path / "cmp" / "compare.html"
    assert main(["compare", str(probed_run), str(plain_run), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    html = out.read_text(encoding="utf-8")
    assert section_ids(html) == ["runs", "loss", "icl", "m1"]  # ICL and M1 from the run that has probes
    assert len(images(html)) == 3
    final = json.loads((probed_run / "metrics.jsonl").read_text().splitlines()[-1])
    row = re.search(r"<tr><td>probed</td>(.*?)</tr>", html).group(1)
    assert f"{final['val_loss']:.4f}" in row and f"{final['val_bpb']:.4f}" in row and f"{final['loss']:.4f}" in row
    assert "<td>plain</td>" in html
    assert_self_contained(html)


def test_compare_says_where_icl_scores_are_defined_differently(probed_run, tmp_path, capsys):
    tokens = tmp_path / "tokens"  # the short context's single-token score, not the default bands
    Trainer(load_config("tiny", tiny_overrides(train__steps=20, logging__probe_every=8, logging__icl_short="tokens")),
            tokens).fit()
    out = tmp_path / "compare.html"
    assert main(["compare", str(probed_run), str(tokens), "--out", str(out)]) == 0
    html = out.read_text(encoding="utf-8")
    assert "loss[T-1] - loss[T/10]" in html and "mean loss of the last T/10 tokens" in html  # both definitions
    assert "scores are defined differently (the definition or the context T" in html
    assert main(["compare", str(probed_run), str(probed_run), "--out", str(out)]) == 0  # one definition
    html = out.read_text(encoding="utf-8")
    assert "defined differently" not in html and "loss[T-1] - loss[T/10]" not in html


def test_compare_puts_runs_of_other_batches_on_tokens_other_tokenizers_in_bits_and_names_as_typed(probed_run,
                                                                                                  tmp_path, capsys):
    """A run of batch 16 was drawn on the step axis of one of batch 8 (twice the tokens a step) under 'compare
    at equal steps'; runs of other tokenizers in nats per token, which do not compare; a folder named 'p$x^2$'
    drew x² in the legend, '_hidden' none at all, and an unbalanced '$' raised a 117-line traceback."""
    from vslm.report import figures

    def train(name: str, **words) -> Path:
        Trainer(load_config("tiny", tiny_overrides(train__steps=8, logging__probe_every=0, **words)),
                tmp_path / name).fit()
        return tmp_path / name

    batch = load_config("tiny").train.batch_size
    wide, byte = train("_wide$x^2$", train__batch_size=2 * batch), train("m$\\foo{$", data__tokenizer="byte")
    same = [read_run(probed_run), read_run(probed_run)]
    assert figures.comparison_axes(same) == ("step", "loss")
    assert figures.comparison_axes([read_run(probed_run), read_run(wide)]) == ("tokens", "loss")
    assert figures.comparison_axes([read_run(probed_run), read_run(byte)]) == ("step", "val_bpb")
    out = tmp_path / "c.html"
    assert main(["compare", str(probed_run), str(wide), str(byte), "--out", str(out)]) == 0
    html = out.read_text(encoding="utf-8")
    assert "Validation bits per byte (the runs" in html and "tokenizers differ" in html
    assert "against the tokens seen" in html
    fig = figures.compare_loss([read_run(probed_run), read_run(wide)], ["probed", wide.name], "tokens", "loss")
    figures.png_base64(fig)  # drawn: no math parsed
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend == ["probed train", "probed val", " _wide\\$x^2\\$ train", " _wide\\$x^2\\$ val"]
    line = fig.axes[0].get_lines()[2]  # the wide run's training loss, against its tokens
    tokens = [json.loads(x) for x in (wide / "metrics.jsonl").read_text().splitlines()]
    assert list(line.get_xdata()) == [m["tokens"] for m in tokens if "loss" in m]
    row = re.search(r"<tr><td>_wide.*?</tr>", html).group(0)
    assert f"<td>{tokens[-1]['tokens']:,}</td>" in row


def test_compare_refuses_a_folder_as_its_out(plain_run, tmp_path, capsys):
    assert main(["compare", str(plain_run), "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"vslm: error: --out {tmp_path}: a folder; give a file\n"


def test_compare_default_out_and_labels_of_seed_folders(plain_run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert compare_runs([plain_run]) == Path("runs") / "compare.html"
    assert (tmp_path / "runs" / "compare.html").is_file()
    assert run_labels([Path("x/a/seed-0"), Path("x/b/seed-0")]) == ["a/seed-0", "b/seed-0"]


def test_report_cli_prints_the_path_and_refuses_a_folder_that_is_not_a_run(plain_run, tmp_path, capsys):
    assert main(["report", str(plain_run)]) == 0
    assert capsys.readouterr().out.strip() == str(plain_run / "report.html")
    for argv in (["report", str(tmp_path / "nothing")], ["compare", str(plain_run), str(tmp_path)]):
        assert main(argv) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("vslm: error: ") and "is not a run folder" in err and "\n" not in err


# Installed before the page's own content: counts script errors and resources that fail to load (an
# image that does not decode fires `error`), then after `load` writes what rendered into <body data-*>,
# which --dump-dom prints.
PAGE_CHECK = """<script>
window.__errors = 0;
window.addEventListener("error", () => { window.__errors += 1; }, true);
window.addEventListener("load", () => {
  const imgs = Array.from(document.images);
  document.body.dataset.images = imgs.length;
  document.body.dataset.rendered = imgs.filter(i => i.complete && i.naturalWidth > 0).length;
  document.body.dataset.errors = window.__errors;
});
</script>"""


def chromium(*args: str, profile: Path) -> subprocess.CompletedProcess:
    """Headless Chromium with nothing that reaches the network or outlives the call (fresh profile)."""
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000"]
    return subprocess.run([str(CHROMIUM), *flags, *args], capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium "
                                                    "(scripts/ci-setup.sh installs it)")
def test_report_renders_in_headless_chromium(probed_run, tmp_path):
    html = write_report(probed_run).read_text(encoding="utf-8")
    checked = tmp_path / "checked.html"
    checked.write_text(html.replace("<head>", "<head>" + PAGE_CHECK, 1), encoding="utf-8")
    run = chromium("--dump-dom", checked.as_uri(), profile=tmp_path / "profile-dom")
    assert run.returncode == 0, run.stderr[-2000:]
    body = re.search(r"<body([^>]*)>", run.stdout).group(1)
    found = dict(re.findall(r'data-(\w+)="(\d+)"', body))
    assert found == {"images": "9", "rendered": "9", "errors": "0"}, body
    console = [line for line in run.stderr.splitlines() if ":CONSOLE" in line]
    assert not console, console  # the page has no script: any console message is an error of its own

    screenshot = tmp_path / "report.png"
    run = chromium(f"--screenshot={screenshot}", "--window-size=1200,3000", (probed_run / "report.html").as_uri(),
                   profile=tmp_path / "profile-shot")
    assert run.returncode == 0, run.stderr[-2000:]
    assert screenshot.read_bytes().startswith(PNG_SIGNATURE) and screenshot.stat().st_size > 50_000


def test_power_law_fit_and_log_slope_recover_a_known_curve():
    from vslm.report.runs import log_slope, power_law_fit

    t = np.arange(1, 128, dtype=float)
    curve = 1.2 + 0.9 * t ** -0.6
    fit = power_law_fit(curve)
    assert (fit["L_inf"], fit["b"], fit["c"]) == pytest.approx((1.2, 0.9, 0.6), rel=1e-6) and fit["rmse"] < 1e-8
    noisy = curve + np.random.default_rng(0).normal(0, 0.01, len(t))
    assert power_law_fit(noisy)["c"] == pytest.approx(0.6, abs=0.1)
    assert math.isnan(power_law_fit(np.array([1.0, math.nan, 2.0]))["c"])  # too few points: no fit
    flat = power_law_fit(np.full(127, 4.06))
    assert flat["L_inf"] == pytest.approx(4.06) and flat["b"] < 1e-4
    # a curve that falls as log t is no power law: the fit runs c to 0 and L_inf to thousands of nats below
    # the curve (-6004 on a 2-layer dynamics-repeats run); it is NaN, its rmse kept
    logarithmic = power_law_fit(3.0 - 0.2 * np.log(t))
    assert math.isnan(logarithmic["L_inf"]) and math.isnan(logarithmic["c"]) and logarithmic["rmse"] < 1e-3
    # a curve that falls at its first position and is flat after: c runs to its bound (5.00 was shown as a
    # finding); no exponent, its level kept
    step = power_law_fit(2.6 + 0.06 * (t == 1))
    assert math.isnan(step["c"]) and math.isnan(step["b"]) and step["L_inf"] == pytest.approx(2.6, abs=1e-3)
    # d loss / d log t on bands: for L = a - k log t exactly -k in every band
    where, slope = log_slope(3.0 - 0.25 * np.log(t))
    np.testing.assert_allclose(slope, -0.25, rtol=1e-9)
    assert (np.diff(where) > 0).all() and where[0] >= 1 and where[-1] <= 127
    # and the power law's slope, -b c t^-c, at each band's point (within the band's averaging)
    where, slope = log_slope(curve, bands=64)
    np.testing.assert_allclose(slope, -0.9 * 0.6 * where ** -0.6, rtol=0.1)


@pytest.mark.parametrize("axis,columns", [("x", 2), ("x", 1), ("y", 1)])
def test_step_axis_labels_never_touch_and_keep_zero_and_the_last_step(axis, columns):
    """A log(1 + step) axis of a half- or full-width panel, or a heatmap's step axis, to 10 .. 10^6 steps:
    no two tick labels overlap once drawn, 0 and the last step are always labelled, and a short axis keeps
    every 1-2-5 tick (before, a 3,000-step run wrote '2,0003,000' on the half-width panels)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from vslm.report import figures

    for top in (10, 100, 1000, 1500, 3000, 20000, 300000, 1000000):
        fig, axes = figures._figure(columns=columns)
        steps = np.array([0, *np.geomspace(1, top, 12)])
        axes[0].plot(*((steps, np.ones(12 + 1)) if axis == "x" else (np.ones(12 + 1), steps)))
        figures._log_steps(axes[0], top, axis=axis)
        FigureCanvasAgg(fig)
        fig.canvas.draw()
        labels = [t for t in getattr(axes[0], f"get_{axis}ticklabels")() if t.get_text()]
        boxes = [t.get_window_extent(fig.canvas.get_renderer()) for t in labels]
        texts = [t.get_text() for t in labels]
        assert not [texts[i:i + 2] for i in range(len(boxes) - 1) if boxes[i].overlaps(boxes[i + 1])], (top, texts)
        assert texts[0] == "0" and texts[-1] == f"{top:,}" and len(texts) >= 3, (top, texts)
        if top <= 100:
            assert texts == ["0", *(f"{m * 10 ** k:,}" for k in range(3) for m in (1, 2, 5) if m * 10 ** k < top),
                             f"{top:,}"]


def test_loss_bump_finds_a_stall_then_a_drop_and_nothing_in_a_loss_that_only_slows_or_keeps_its_pace():
    """The bump of RESEARCH.md section 1 on curves whose answer is known. A power law only ever falls slower
    per step, a steady decline keeps its pace: no bump, with noise or without. A stall and then a logistic
    drop of D nats at step 1,000: most of D, there. With z = 0 and fine bands it is the integral of
    max(0, r - max(0, the smallest earlier r)) of the analytic fall per step r, on a fine grid."""
    from vslm.report.runs import loss_bump, steepest_drop

    s = np.arange(1, 5001, dtype=float)
    law, steady = 2 + 3 * s**-0.5, 3 - 0.0002 * s
    assert loss_bump(s, law, after=30)["size"] == 0 and math.isnan(loss_bump(s, law, after=30)["step"])
    assert loss_bump(s, steady, after=30)["size"] == 0
    spike = law + np.where((s >= 200) & (s < 260), 0.3, 0.0)  # a loss spike and its recovery: no phase change
    assert loss_bump(s, spike, after=30)["size"] == 0
    for seed in range(3):
        noise = np.random.default_rng(seed).normal(0, 0.05, len(s))  # about a batch's loss noise
        assert loss_bump(s, law + noise, after=30)["size"] == 0 and loss_bump(s, steady + noise, after=30)["size"] == 0
        assert loss_bump(s, spike + noise, after=30)["size"] == 0
        stall = np.where(s < 30, 3 + (30 - s) / 30, 3.0) - 0.8 / (1 + np.exp(-(np.log(s) - np.log(1000)) / 0.2))
        bump = loss_bump(s, stall + noise, after=30)
        assert 0.4 < bump["size"] < 0.8 and bump["step"] == pytest.approx(1000, rel=0.1)
        assert bump["excess"].sum() == pytest.approx(bump["size"]) and (bump["excess"] >= 0).all()
    drop = 0.5 / (1 + np.exp(-(np.log(s) - np.log(1000)) / 0.3))
    fine = np.linspace(30, 5000, 200_001)
    sig = 1 / (1 + np.exp(-(np.log(fine) - np.log(1000)) / 0.3))
    r = 1.5 * fine**-1.5 + 0.5 / 0.3 * sig * (1 - sig) / fine  # -d/ds of law - drop
    faster = np.maximum(r - np.maximum(np.minimum.accumulate(r), 0), 0)
    exact = loss_bump(s, law - drop, after=30, bands=64, z=0)
    assert exact["size"] == pytest.approx(np.trapezoid(faster, fine), rel=0.05)
    assert exact["step"] == pytest.approx(fine[faster.argmax()], rel=0.05)
    assert np.isnan(loss_bump(s, law - drop, after=4999)["size"])  # fewer than 3 pairs of bands past `after`
    # the ICL score's steepest fall between log-spaced probes, exactly where it is
    probes = np.array([0, *2.0 ** np.arange(13)])
    x = np.log1p(probes)
    score = -0.7 * np.clip(x - np.log1p(128), 0, None) - 0.6 * np.clip(x - np.log1p(1024), 0, np.log(2049 / 1025))
    rate, at = steepest_drop(probes, score)
    assert rate == pytest.approx(1.3) and at == pytest.approx(math.sqrt(1025 * 2049) - 1)
    assert np.isnan(steepest_drop(probes, -score)).all()  # a score that never falls has no steepest fall
    twice = np.insert(probes, 6, probes[5])  # a probe logged twice at one step (a resume): no interval there
    assert steepest_drop(twice, np.insert(score, 6, score[5] - 5)) == pytest.approx((rate, at))


def test_dynamics_summary_measures_the_bump_after_the_runs_warm_up():
    """A run whose loss stalls after warm-up and then drops, its ICL score dropping with it: the summary's
    bump is loss_bump's after the config's train.warmup, and TrainConfig's default (100) where the
    config.toml has no warmup (a stall before step 100 then reads as part of warm-up)."""
    from vslm.report.runs import RunFiles, loss_bump

    s = np.arange(1, 3001, dtype=float)
    loss = np.where(s < 50, 4 - s / 25, 2.0) - 0.6 / (1 + np.exp(-(np.log(s) - np.log(1000)) / 0.2))
    loss += np.random.default_rng(0).normal(0, 0.03, len(s))
    metrics = [{"step": int(t), "loss": float(v)} for t, v in zip(s, loss, strict=True)]
    probes = [{"step": t, "icl_score": -0.5 / (1 + math.exp(-(math.log1p(t) - math.log(1000)) / 0.3))}
              for t in (0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 3000)]

    def run(train: dict) -> RunFiles:
        return RunFiles(Path("r"), "", {"train": train}, metrics=metrics, probes=probes)

    got = dynamics_summary(run({"warmup": 50}))
    expected = loss_bump(s, loss, after=50)
    assert got["loss_bump"] == expected["size"] and 0.3 < got["loss_bump"] < 0.6  # most of the 0.6-nat drop
    assert got["loss_bump_step"] == expected["step"] == pytest.approx(1000, rel=0.2)  # bands 1.29x apart
    assert got["icl_drop_step"] == pytest.approx(math.sqrt(513 * 1025) - 1)  # the interval holding the centre,
    # 1000: 512-1024 (its middle 724)
    assert dynamics_summary(run({}))["loss_bump"] == loss_bump(s, loss, after=100)["size"]
    assert loss_bump(s, loss, after=100)["size"] != expected["size"]


def test_a_one_step_run_gets_no_empty_loss_bump_figure(tmp_path):
    """Under 2 logged steps there are no bands of steps: the 'training loss bump' figure was an empty axes with
    a legend, shown as data."""
    one = tmp_path / "one"
    Trainer(load_config("tiny", tiny_overrides(train__steps=1, logging__probe_every=1)), one).fit()
    html = write_report(one).read_text(encoding="utf-8")
    assert '<section id="icl">' in html and 'alt="ICL score"' in html
    assert 'alt="training loss bump"' not in html
