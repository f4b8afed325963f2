"""Knowledge capacity (vslm.knowledge.capacity): the biographies, the bits measure against oracles and
brute force, exact exposures, and a run that stores facts."""

from __future__ import annotations

import json
import math
import pickle
import shutil

import pytest
import torch

from conftest import tiny_gpt
from vslm.cli import main
from vslm.errors import VSLMError
from vslm.knowledge.capacity import (
    ATTRIBUTES,
    TOKENS,
    BioBatches,
    CapacitySettings,
    against_paper,
    bio_pieces,
    bio_text,
    bio_tokenizer,
    bio_world,
    capacity_config,
    encode_bios,
    knowledge_bits,
    run_sweep,
    summarize,
    train_capacity,
)


@pytest.fixture(scope="module")
def small():
    world = bio_world(40, seed=3)
    tokenizer = bio_tokenizer(world)
    return world, tokenizer, encode_bios(world, tokenizer)


def test_the_biographies_are_seeded_unique_and_one_token_per_value(small):
    world, tokenizer, bios = small
    assert bio_world(40, seed=3) == world and bio_world(40, seed=4).people != world.people
    assert len(set(world.names)) == 40
    sizes = {a: len(world.values[a]) for a in ATTRIBUTES}
    assert sizes == {"gender": 2, "birth_month": 12, "birth_day": 28, "birth_year": 200, "birth_city": 200,
                     "university": 300, "major": 100, "employer": 263}  # the paper's value sets
    assert world.data_bits == pytest.approx(40 * 47.5916, abs=0.01)
    assert bios.ids.shape == (40, 1 + TOKENS) and (bios.ids[:, 0] == tokenizer.eos_id).all()
    for i in (0, 17, 39):
        text = bio_text(world, i)
        assert bios.ids[i, 1:].tolist() == tokenizer.encode(text)  # pieces encode as the whole text does
        assert tokenizer.decode(bios.ids[i, 1:].tolist()) == text
        for a in ATTRIBUTES:  # the token at value_at is the person's value, and its candidate
            value = world.values[a][world.people[i][a]]
            assert tokenizer.decode([int(bios.ids[i, bios.value_at[a]])]) == " " + value
            assert int(bios.candidates[a][bios.truth[a][i]]) == int(bios.ids[i, bios.value_at[a]])
    # the work city follows the employer: the same employer, the same city
    by_employer = {}
    for i in range(40):
        lived = bio_pieces(world, i)[-1][0]
        by_employer.setdefault(world.people[i]["employer"], set()).add(lived.split(" lived in ")[1])
    assert all(len(c) == 1 for c in by_employer.values())


class Oracle(torch.nn.Module):
    """Logits that put `sure` nats on each person's value at its position (0 elsewhere): sure = 0 is a
    model that knows nothing, a large one a model that knows everything."""

    def __init__(self, bios, vocab: int, sure: float):
        super().__init__()
        self.bios, self.vocab, self.sure = bios, vocab, sure
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.rows = {tuple(r[:-1].tolist()): i for i, r in enumerate(bios.ids)}

    def forward(self, x):
        logits = torch.zeros(*x.shape, self.vocab)
        for b, row in enumerate(x):
            i = self.rows[tuple(row.tolist())]
            for a in ATTRIBUTES:
                logits[b, self.bios.value_at[a] - 1, self.bios.ids[i, self.bios.value_at[a]]] = self.sure
            for k in range(3):  # the name's words
                logits[b, k, self.bios.ids[i, 1 + k]] = self.sure
        return logits


def test_bits_are_zero_for_a_model_that_knows_nothing_and_the_data_for_one_that_knows_all(small):
    world, tokenizer, bios = small
    V = tokenizer.vocab_size
    nothing = knowledge_bits(Oracle(bios, V, 0.0), bios, batch=7)
    assert nothing["bits"] == pytest.approx(0, abs=0.05)  # uniform over each value set
    assert nothing["name_bits"] == pytest.approx(0, abs=0.05)  # uniform over 100 first, 99 middle, 100 last
    # the full softmax also charges the mass on the V - T_a tokens outside the value set
    expect_vocab = sum(40 * (math.log2(len(world.values[a])) - math.log2(V)) for a in ATTRIBUTES)
    assert nothing["bits_vocab"] == pytest.approx(expect_vocab, abs=0.5)
    everything = knowledge_bits(Oracle(bios, V, 60.0), bios)
    assert everything["bits"] == pytest.approx(world.data_bits, abs=0.5)
    assert everything["data_bits"] == pytest.approx(world.data_bits, abs=0.5)
    assert all(v["recall"] == 1.0 for v in everything["attributes"].values())
    assert everything["name_bits"] == pytest.approx(40 * math.log2(100 * 99 * 100), abs=0.5)
    # sure = s nats on the truth among T values: log2 T + log2 (e^s / (e^s + T - 1)) per person
    part = knowledge_bits(Oracle(bios, V, 2.0), bios)
    for a in ATTRIBUTES:
        T = len(world.values[a])
        assert part["attributes"][a]["bits"] == pytest.approx(
            40 * (math.log2(T) + math.log2(math.exp(2) / (math.exp(2) + T - 1))), abs=0.1)


def test_bits_of_a_real_model_match_scoring_each_biography_token_by_token(small):
    world, tokenizer, bios = small
    model = tiny_gpt(["model.context=64"], seed=2, vocab=tokenizer.vocab_size)
    got = knowledge_bits(model, bios, batch=16)
    for a in ("birth_year", "employer"):
        total = 0.0
        for i in range(40):  # each prefix alone, one forward per person: the value's log q among its values
            prefix = bios.ids[i : i + 1, : bios.value_at[a]]
            with torch.no_grad():
                lp = torch.log_softmax(model(prefix)[0, -1], dim=-1)[bios.candidates[a]]
            total += math.log2(len(world.values[a])) + float(torch.log_softmax(lp, -1)[bios.truth[a][i]]) / math.log(2)
        assert got["attributes"][a]["bits"] == pytest.approx(total, abs=0.051)  # rounded to 0.1 bit
    # the names: each word's log q over its list, the middle over the first names but the person's own first
    from vslm.knowledge import names

    lists = [[tokenizer.encode(w)[0] for w in names.FIRST_NAMES],
             [tokenizer.encode(" " + w)[0] for w in names.FIRST_NAMES],
             [tokenizer.encode(" " + w)[0] for w in names.SURNAMES]]
    total = 0.0
    for i in range(40):
        with torch.no_grad():
            logits = model(bios.ids[i : i + 1, :3])[0]
        for k in range(3):
            allowed = [t for t in lists[k] if not (k == 1 and t == lists[1][lists[0].index(int(bios.ids[i, 1]))])]
            lp = torch.log_softmax(logits[k, allowed], dim=-1)
            total += math.log2(len(allowed)) + float(lp[allowed.index(int(bios.ids[i, 1 + k]))]) / math.log(2)
    assert got["name_bits"] == pytest.approx(total, abs=0.051)


def test_an_epoch_shows_every_biography_once_in_whole_rows_and_resumes_exactly(small):
    _, _, bios = small
    batches = BioBatches(bios, context=2 * 39 + 5, batch_size=4, seed=0)  # 2 biographies a row
    assert batches.per_row == 2
    seen = []
    for _ in range(5):  # 40 biographies = 5 batches of 4 rows of 2
        x, y = batches.next_batch()
        assert x.shape == (4, 78) and torch.equal(x[:, 1:], y[:, :-1])
        for row in torch.cat([x, y[:, -1:]], dim=1):
            for k in range(2):
                piece = row[k * 39 : (k + 1) * 39]
                seen.append(next(i for i in range(40) if torch.equal(bios.ids[i], piece)))
    assert sorted(seen) == list(range(40))  # each exactly once
    batches.next_batch()  # into the second epoch: a state mid-epoch, resumed across the next boundary
    state = batches.state_dict()
    again = BioBatches(bios, context=83, batch_size=4, seed=0)
    again.load_state_dict(pickle.loads(pickle.dumps(state)))  # as a checkpoint (torch.save) keeps it
    for _ in range(6):
        assert all(torch.equal(a, b) for a, b in zip(batches.next_batch(), again.next_batch(), strict=True))
    with pytest.raises(VSLMError, match="shorter than one biography"):
        BioBatches(bios, context=30, batch_size=4, seed=0)


def test_a_small_model_stores_most_of_a_few_biographies_and_the_sweep_reads_runs_back(tmp_path):
    # 12 people shown 150 times each: a 1x32 model holds most of their 571 bits
    settings = CapacitySettings(people=12, exposures=150, world_seed=1)
    cfg = capacity_config("capacity", ["model.depth=1", "model.width=32", "model.heads=2", "train.batch_size=4",
                                       "train.lr=1e-2", "train.warmup=10", "train.eval_windows=2"])
    r = train_capacity(tmp_path / "one", cfg, settings)
    assert r["steps"] == 150 and r["exposures"] == 150.0  # 12 x 150 / (4 rows x 3 biographies)
    assert r["data_bits"] == pytest.approx(12 * 47.5916, abs=0.1)
    assert r["bits"] > 0.7 * r["data_bits"], r  # learned, not guessed
    assert r["bits_per_param"] == pytest.approx(r["bits"] / r["params"], abs=1e-4)
    assert r["with_names_per_live_param"] == pytest.approx((r["bits"] + r["name_bits"]) / r["live_params"], abs=1e-4)
    assert 0 < r["name_bits"] <= 12 * math.log2(990_000)
    assert r["params"] - r["embedding_params"] > 0 and r["embedding_params"] == r["vocab_size"] * 32
    world = bio_world(12, seed=1)  # "used": less the rows of the tokens no biography holds (bytes, mostly)
    encoded = encode_bios(world, bio_tokenizer(world))
    used = len(torch.unique(torch.cat([encoded.ids.flatten(), *encoded.candidates.values()])))
    assert r["vocab_size"] - used >= 250 and r["live_params"] == r["params"] - (r["vocab_size"] - used) * 32
    metrics = [json.loads(line) for line in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    curve = [m["bits"] for m in metrics if "bits" in m]
    assert len(curve) >= 5 and curve[-1] == pytest.approx(r["bits"], abs=0.2) and curve[-1] > curve[0]
    assert train_capacity(tmp_path / "one", cfg, settings) == r  # finished: read back
    probed = cfg.model_copy(update={"logging": cfg.logging.model_copy(update={"diagnostics_every": 5})})
    assert train_capacity(tmp_path / "one", probed, settings) == r  # probes it does not read: the same run
    with pytest.raises(VSLMError, match=r"other settings than this one's \(exposures: 150 there, 100 here"):
        train_capacity(tmp_path / "one", cfg, CapacitySettings(people=12, exposures=100, world_seed=1))
    logged = cfg.model_copy(update={"logging": cfg.logging.model_copy(update={"log_every": 3})})
    with pytest.raises(VSLMError, match=r"\(logging.log_every: 20 there, 3 here\)"):  # its curve's steps: another run
        train_capacity(tmp_path / "one", logged, settings)


def test_a_run_stopped_before_its_checkpoint_is_trained_again_and_a_foreign_folder_is_kept(tmp_path):
    settings = CapacitySettings(people=8, exposures=6, world_seed=0)
    cfg = capacity_config("capacity", ["model.depth=1", "model.width=16", "model.heads=1", "train.batch_size=2",
                                       "train.eval_windows=2", "logging.log_every=2"])
    out = tmp_path / "run"
    first = train_capacity(out, cfg, settings)
    assert first["steps"] == 8  # 8 x 6 / (2 rows x 3)
    # killed before its only checkpoint (the last step): no checkpoint, metrics up to step 4
    shutil.rmtree(out / "checkpoints")
    (out / "capacity.json").unlink()
    lines = (out / "metrics.jsonl").read_text().splitlines()
    (out / "metrics.jsonl").write_text("\n".join(lines[:2]) + "\n")
    again = train_capacity(out, cfg, settings)
    assert again["bits"] == first["bits"] and again["attributes"] == first["attributes"]  # the same run, anew
    # stopped after its checkpoint at step 3 (mid-epoch: 18 biographies of 8 a epoch): resumed, the same run
    every3 = capacity_config("capacity", ["model.depth=1", "model.width=16", "model.heads=1", "train.batch_size=2",
                                          "train.eval_windows=2", "logging.log_every=1", "train.checkpoint_every=3",
                                          "train.keep_last=3"])
    resumed = tmp_path / "resumed"
    whole = train_capacity(resumed, every3, settings)
    assert whole["bits"] == first["bits"]
    for step in (6, 8):
        (resumed / "checkpoints" / f"step_{step:08d}.safetensors").unlink()
    (resumed / "capacity.json").unlink()
    resumed.rename(tmp_path / "moved")  # and moved (mv): resumed there, the same run
    assert train_capacity(tmp_path / "moved", every3, settings)["attributes"] == whole["attributes"]
    # gradient accumulation draws more biographies a step: fewer steps for the same exposures
    twice = capacity_config("capacity", ["model.depth=1", "model.width=16", "model.heads=1", "train.batch_size=2",
                                         "train.grad_accum=2", "train.eval_windows=2"])
    r = train_capacity(tmp_path / "accum", twice, settings)
    assert r["steps"] == 4 and r["exposures"] == 6.0
    # a config the trainer refuses (validation windows longer than all the biographies) leaves a folder the
    # same command, fixed, trains in
    refused = tmp_path / "refused"
    too_long = capacity_config("capacity", ["model.depth=1", "model.width=16", "model.heads=1", "train.batch_size=2",
                                            "train.eval_windows=2", "logging.log_every=2", "train.eval_lengths=[4]"])
    with pytest.raises(VSLMError, match="train.eval_lengths: the validation split has 312 tokens"):
        train_capacity(refused, too_long, settings)
    assert train_capacity(refused, cfg, settings)["attributes"] == first["attributes"]
    # a folder of something else is refused, its files kept
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(VSLMError, match="holds something other than a capacity run"):
        train_capacity(other, cfg, settings)
    assert (other / "notes.txt").read_text() == "mine" and len(list(other.iterdir())) == 1


def test_the_command_tables_each_size_over_seeds_and_refuses_bad_sizes(tmp_path, capsys):
    out = tmp_path / "sweep"
    assert main(["facts", "capacity", "train.batch_size=2", "train.eval_windows=2", "--out", str(out), "--people", "6",
                 "--exposures", "2", "--sizes", "1x16", "1x32", "--seeds", "0", "1"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(out / "capacity.md")
    summary = json.loads((out / "capacity.json").read_text())
    assert [r["size"] for r in summary["rows"]] == ["1x16", "1x32"] and all(r["seeds"] == 2 for r in summary["rows"])
    one = [json.loads((out / f"1x32-s{s}" / "capacity.json").read_text()) for s in (0, 1)]
    assert summary["rows"][1]["bits"][0] == pytest.approx((one[0]["bits"] + one[1]["bits"]) / 2, abs=0.1)
    ratios = [r["bits_per_param"] for r in one]  # the 95% t-interval over the 2 seeds
    half = 12.706205 * abs(ratios[0] - ratios[1]) / math.sqrt(2) / math.sqrt(2)
    assert summary["rows"][1]["bits_per_param_ci"] == pytest.approx([sum(ratios) / 2 - half, sum(ratios) / 2 + half])
    assert one[0]["heads"] == 2 and one[0]["seed"] == 0 and one[1]["seed"] == 1
    table = (out / "capacity.md").read_text()
    assert "| 1x16 | 2 |" in table and "| 1x32 | 2 |" in table
    assert table.startswith("# Knowledge capacity: 6 people, 2 exposures (world seed 0;")
    # 7 people: 14 biographies in whole steps of 6 (2 rows of 3) are 3 steps, 18 biographies, 2.57 exposures
    odd = run_sweep(tmp_path / "odd", ["1x16"], [0], CapacitySettings(7, 2, 0),
                    overrides=["train.batch_size=2", "train.eval_windows=2"])
    assert odd["rows"][0]["exposures"] == 2.57
    assert (tmp_path / "odd" / "capacity.md").read_text().startswith(
        "# Knowledge capacity: 7 people, 2 exposures asked, 2.57 trained (whole batches) (world seed 0;")
    again = run_sweep(out, ["1x32"], [0, 1], CapacitySettings(6, 2, 0), overrides=["train.batch_size=2",
                                                                                   "train.eval_windows=2"])
    assert again["rows"][0] == summary["rows"][1]  # reused, not retrained
    assert again["left_out"] == ["1x16-s0", "1x16-s1"]  # the other size's runs: not in this table, and said so
    assert f"2 other runs in {out} (1x16-s0, 1x16-s1) are left out" in capsys.readouterr().err
    for bad, message in ((["--sizes", "2x"], "a size is DEPTHxWIDTH"), (["--sizes", "1x20"], "multiple of 16"),
                         (["--seeds", "0", "0"], "repeats a seed"), (["--people", "0"], "--people must be at least 1"),
                         (["--sizes", "1x16", "train.lr=1"], "overrides go before --sizes"),
                         (["--people", "2"], "give at least 4 people"), (["--sizes", "1x16", "1x16"], "repeats a size"),
                         (["model.kv_heads=3", "--sizes", "1x32", "1x16"], "kv_heads"),
                         (["model.width=64"], "override 'model.width=64': model.width is set by the sweep"),
                         (["train={steps=10}"], "train.seed, train.steps are set by the sweep")):
        assert main(["facts", "capacity", "--out", str(tmp_path / "bad"), *bad]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "bad").exists()  # every size's config checked before the first run
    (tmp_path / "file").write_text("x")
    assert main(["facts", "capacity", "--out", str(tmp_path / "file" / "sub")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err


def test_the_sizes_are_tested_against_the_papers_ratio_as_scipy_and_holm_do():
    from scipy import stats

    def run(ratio: float, live: float) -> dict:
        return {"params": 100, "embedding_params": 60, "live_params": 90, "bits": 100 * ratio, "bits_vocab": 0.0,
                "name_bits": 10.0, "bits_per_param": ratio, "bits_per_live_param": live,
                "with_names_per_param": ratio + 0.1, "with_names_per_live_param": live + 0.11,
                "bits_per_nonembedding_param": 2.5 * ratio, "attributes": {a: {"recall": 0.5} for a in ATTRIBUTES}}

    per_size = {"1x16": [0.80, 0.84, 0.83], "1x32": [0.90, 1.02, 0.95], "2x32": [0.70, 0.74]}
    rows = [summarize(size, [run(x, x + 0.1) for x in xs]) for size, xs in per_size.items()]
    assert rows[0]["bits_per_param"] == pytest.approx([0.8233333, 0.0208167], abs=1e-6)
    paper = against_paper(rows, exposures=100)
    assert paper["ratio"] == 1.0 and against_paper(rows, exposures=50) is None
    p = {size: stats.ttest_1samp(xs, 1.0).pvalue for size, xs in per_size.items() if len(xs) >= 3}
    low, high = sorted(p, key=p.get)
    got = paper["bits_per_param"]
    assert got["1x16"]["diff"] == pytest.approx(0.8233333 - 1) and got["1x16"]["p"] == pytest.approx(p["1x16"])
    assert got[low]["p_holm"] == pytest.approx(2 * p[low])  # Holm over the two sizes with 3 seeds
    assert got[high]["p_holm"] == pytest.approx(max(2 * p[low], p[high]))
    assert math.isnan(got["2x32"]["p_holm"])  # 2 seeds: an interval, no test
    from vslm.plain import dumps

    strict = json.loads(dumps(paper | {"one seed": summarize("1x16", [run(0.8, 0.9)])}),
                        parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))
    assert strict["bits_per_param"]["2x32"]["p_holm"] is None and strict["one seed"]["bits_per_param"][1] is None
    assert paper["bits_per_live_param"]["1x32"]["p"] == pytest.approx(stats.ttest_1samp([1.0, 1.12, 1.05], 1.0).pvalue)
    assert paper["with_names_per_param"]["1x16"]["diff"] == pytest.approx(0.8233333 + 0.1 - 1)
