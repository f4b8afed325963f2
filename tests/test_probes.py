"""Probes against brute-force computations: explicit loops over positions, hand-built inputs."""

import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from vslm.config import BlockConfig, ModelConfig
from vslm.model import GPT
from vslm.model.hooks import capture
from vslm.probes import (
    attention_stats,
    bootstrap_se,
    corpus_stats,
    distribution_by_window,
    distribution_probe,
    entropy,
    icl_score,
    induction_probe,
    js,
    kl,
    position_loss,
    prefix_matching,
    repeat_statistics,
    shape_metrics,
    unigram_kl,
)

V = 20


def tiny_model(seed: int = 0, **kw) -> GPT:
    # init_std 0.3: far from uniform attention and predictions, so the comparisons are not vacuous
    base = {"vocab_size": V, "context": 16, "depth": 2, "width": 32, "heads": 4, "init_std": 0.3}
    torch.manual_seed(seed)
    return GPT(ModelConfig(**{**base, **kw})).eval()


def random_ids(shape: tuple[int, ...], seed: int, high: int = V) -> torch.Tensor:
    return torch.randint(high, shape, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------ position


@torch.no_grad()
def test_position_loss_matches_prefix_by_prefix_loop():
    model, idx = tiny_model(), random_ids((3, 16), seed=1)
    curve = position_loss(model, idx)
    expected = []
    for t in range(15):
        total = 0.0
        for b in range(3):
            logits = model(idx[b : b + 1, : t + 1])[0, -1]  # only the tokens the prediction may read
            total -= torch.log_softmax(logits, -1)[idx[b, t + 1]].item()
        expected.append(total / 3)
    assert curve.shape == (15,)
    np.testing.assert_allclose(curve, expected, rtol=1e-5, atol=1e-6)


def test_icl_score_olsson_uses_tokens_500_and_50():
    curve = np.linspace(5.0, 2.0, 600)  # T = 601
    curve[499], curve[49] = 1.5, 3.25
    score, label = icl_score(curve)
    assert (score, label) == (pytest.approx(-1.75), "olsson")
    assert icl_score(np.arange(511.0)) == (pytest.approx(499.0 - 49.0), "olsson")  # T = 512 exactly


def test_icl_score_short_context_compares_bands_at_the_end_and_a_tenth_in():
    curve = 4.0 - 0.1 * np.arange(15)  # T = 16, w = 1: loss at token 15 minus loss at token 1
    score, label = icl_score(curve)
    assert (score, label) == (pytest.approx(curve[14] - curve[0]), "short-context")
    curve = np.arange(99.0) ** 2  # T = 100, w = 10: tokens 90..99 (curve[89:99]) minus tokens 5..14 (curve[4:14])
    late = sum(k**2 for k in range(89, 99)) / 10
    early = sum(k**2 for k in range(4, 14)) / 10
    assert icl_score(curve) == (pytest.approx(late - early), "short-context")
    # T = 511, w = 51: tokens 460..510 minus tokens 26..76, each band's mean of curve[k - 1] = k - 1
    assert icl_score(np.arange(510.0)) == (pytest.approx((460 + 510) / 2 - (26 + 76) / 2), "short-context")
    with pytest.raises(ValueError, match="too short"):
        icl_score(np.zeros(8))
    # RESEARCH.md's single tokens: loss at token T - 1 minus loss at token T / 10 (T = 100: tokens 99 and 10)
    assert icl_score(curve, "tokens") == (pytest.approx(98.0**2 - 9.0**2), "short-context-tokens")
    assert icl_score(np.arange(510.0), "tokens") == (pytest.approx(509.0 - 50.0), "short-context-tokens")
    assert icl_score(np.arange(511.0), "tokens")[1] == "olsson"  # from 512 tokens on, Olsson's either way


def test_prefix_matching_on_hand_built_pattern():
    L, T = 3, 6
    weights = torch.zeros(1, 4, T, T)
    for i in range(T):
        weights[0, 0, i, i - L + 1 if i >= L else 0] = 1.0  # a perfect induction head: score 1
        weights[0, 1, i, i] = 1.0  # attends to itself: score 0
        weights[0, 2, i, : i + 1] = 1.0 / (i + 1)  # uniform over the past
        weights[0, 3, i, 0] = 0.5  # half on the induction target, half on token 0 (rows sum to 1)
        weights[0, 3, i, i - L + 1 if i >= L else 0] += 0.5
    score = prefix_matching(weights, L)
    np.testing.assert_allclose(score, [1.0, 0.0, (1 / 4 + 1 / 5 + 1 / 6) / 3, 0.5])


@torch.no_grad()
def test_induction_probe_matches_loops_with_ragged_heads():
    model = tiny_model(blocks=[BlockConfig(heads=2), BlockConfig(heads=4)])
    L, B = 6, 3
    result = induction_probe(model, V, L, B, torch.Generator().manual_seed(5))

    first = random_ids((B, L), seed=5)  # the same draw as the probe's
    idx = torch.cat((first, first), dim=1)
    with capture(model, "attn.0", "attn.1") as seen:
        log_probs = torch.log_softmax(model(idx), -1)  # (B, 2L, V)
    assert [len(s) for s in result["prefix_matching"]] == [2, 4]
    for d in range(2):
        w = seen[f"attn.{d}"]
        for h in range(w.shape[1]):
            total = sum(w[b, h, i, i - L + 1].item() for b in range(B) for i in range(L, 2 * L))
            assert result["prefix_matching"][d][h] == pytest.approx(total / (B * L), rel=1e-5)

    def loss(tokens: range) -> float:
        nll = [-log_probs[b, t - 1, idx[b, t]].item() for b in range(B) for t in tokens]
        return sum(nll) / len(nll)

    assert result["loss_first"] == pytest.approx(loss(range(1, L)), rel=1e-5)
    assert result["loss_second"] == pytest.approx(loss(range(L + 1, 2 * L)), rel=1e-5)
    with pytest.raises(ValueError, match="half the context"):
        induction_probe(model, V, 9, B, torch.Generator())


@torch.no_grad()
def test_induction_probe_draws_only_from_its_support():
    model = tiny_model()
    support = torch.tensor([3, 7, 11])
    seen = []
    model.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    result = induction_probe(model, V, 6, 4, torch.Generator().manual_seed(1), support)
    idx = seen[-1]
    assert set(idx.unique().tolist()) <= {3, 7, 11} and len(idx.unique()) == 3
    assert torch.equal(idx[:, :6], idx[:, 6:])
    assert result["loss_first"] > 0


def test_repeat_statistics_on_hand_built_windows():
    # row 0: t=2 (token 1) follows its occurrence at 0, where 2 came next, not 3: wrong; t=4 (token 1)
    # follows its latest occurrence at 2, where 3 came next, as now: right. Row 1: t=1..4 all right.
    windows = np.array([[1, 2, 1, 3, 1, 3], [5, 5, 5, 5, 5, 5]])
    assert repeat_statistics(windows) == pytest.approx({"repeat_frequency": 6 / 10, "repeat_reliability": 5 / 6})
    assert math.isnan(repeat_statistics(np.array([[1, 2, 3]]))["repeat_reliability"])
    # after 2 tokens, row 0 never repeats a pair (1 2, 2 1, 1 3, 3 1); row 1 repeats (5 5) at t=2..4, right
    assert repeat_statistics(windows, n=2) == pytest.approx({"repeat_frequency": 3 / 8, "repeat_reliability": 1.0})
    with pytest.raises(ValueError, match="windows"):
        repeat_statistics(np.array([1, 2, 3]))
    with pytest.raises(ValueError, match="T > n"):
        repeat_statistics(windows, n=6)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_repeat_statistics_match_a_backward_search(n):
    windows = np.random.default_rng(0).integers(0, 3, (5, 40))
    repeated = copied = 0
    for row in windows.tolist():
        for t in range(n - 1, len(row) - 1):
            earlier = [s for s in range(n - 1, t) if row[s - n + 1 : s + 1] == row[t - n + 1 : t + 1]]
            if earlier:
                repeated += 1
                copied += row[max(earlier) + 1] == row[t + 1]
    assert repeated > 0
    assert repeat_statistics(windows, n) == pytest.approx(
        {"repeat_frequency": repeated / (5 * (40 - n)), "repeat_reliability": copied / repeated})


# -------------------------------------------------------------------------------- distribution


def test_corpus_stats_on_hand_built_tokens():
    stats = corpus_stats(np.array([0, 1, 0, 1, 2, 0], dtype=np.uint16), vocab_size=4)
    u = [1 / 2, 1 / 3, 1 / 6, 0.0]
    np.testing.assert_allclose(stats.unigram, u)
    # pairs: 0->1 twice; 1->0, 1->2; 2->0; token 3 never occurs and falls back to u
    np.testing.assert_allclose(stats.bigram, [[0, 1, 0, 0], [0.5, 0, 0.5, 0], [1, 0, 0, 0], u])
    assert stats.log_vocab == pytest.approx(math.log(4))
    assert stats.unigram_entropy == pytest.approx(0.5 * math.log(2) + math.log(3) / 3 + math.log(6) / 6)
    assert stats.bigram_entropy == pytest.approx(2 / 5 * math.log(2))  # only prev = 1 (2 of 5 pairs) is uncertain


def test_corpus_stats_refuses_bad_ids_and_keeps_a_large_vocabulary_sparse():
    stats = corpus_stats(np.arange(10, dtype=np.int64), vocab_size=50257)  # GPT-2's: no 20 GB dense table
    assert stats.bigram is None and len(stats.values) == 9 and stats.bigram_entropy == 0.0
    with pytest.raises(ValueError, match="0..3"):
        corpus_stats(np.array([0, 4, 1]), vocab_size=4)


@torch.no_grad()
def test_distribution_probe_matches_loops_over_positions():
    model = tiny_model()
    corpus = random_ids((500,), seed=2, high=V - 2).numpy()  # tokens V-2 and V-1 never occur: u = 0 there
    stats = corpus_stats(corpus, V)
    idx = random_ids((2, 16), seed=3)
    idx[0, 4] = V - 1  # an unseen previous token: its bigram row is u
    result = distribution_probe(model, idx, stats)

    def kl_loop(p: list[float], q: list[float]) -> float:
        return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True) if a > 0)

    logits = model(idx)
    u = stats.unigram.tolist()
    p_sum, m2, m3, ent, n = [0.0] * V, 0.0, 0.0, 0.0, 0
    for b in range(2):
        for t in range(16):
            p = torch.softmax(logits[b, t].double(), -1).tolist()
            p_sum = [s + a for s, a in zip(p_sum, p, strict=True)]
            m2 += kl_loop(u, p)
            m3 += kl_loop(stats.bigram[idx[b, t]].tolist(), p)
            ent -= sum(a * math.log(a) for a in p)
            n += 1
    assert result["M1"] == pytest.approx(kl_loop(u, [s / n for s in p_sum]), rel=1e-6)
    assert result["M2"] == pytest.approx(m2 / n, rel=1e-6)
    assert result["M3"] == pytest.approx(m3 / n, rel=1e-6)
    assert result["entropy"] == pytest.approx(ent / n, rel=1e-6)
    assert result["M1"] < result["M2"]  # KL is convex: KL(u || mean p) <= mean KL(u || p)
    assert result["log_vocab"] == pytest.approx(math.log(V))
    assert result["unigram_entropy"] == stats.unigram_entropy
    assert result["bigram_entropy"] == stats.bigram_entropy


# ----------------------------------------------------------------------------------- attention


@pytest.mark.parametrize("variant", [{}, {"attention": "softmax1", "window": 5}, {"sharing": "all"}])
@torch.no_grad()
def test_attention_stats_match_loops(variant):
    model, idx = tiny_model(**variant), random_ids((2, 16), seed=4)
    window = variant.get("window", 16)
    stats = attention_stats(model, idx)
    with capture(model, "attn.0", "attn.1") as seen:
        model(idx)
    assert [s["block"] for s in stats] == model.order
    for d, per_depth in enumerate(stats):
        w = seen[f"attn.{d}"].double()
        for h in range(4):
            sums, ents, ratios, sinks, by_query = [], [], [], [], {}
            for b in range(2):
                for i in range(16):
                    row = w[b, h, i, max(0, i - window + 1) : i + 1].tolist()  # the visible keys
                    total = sum(row)
                    e = -sum(a / total * math.log(a / total) for a in row if a > 0)
                    sums.append(total)
                    ents.append(e)
                    if len(row) >= 2:
                        ratios.append(e / math.log(len(row)))
                        by_query.setdefault(i, []).append((math.log(len(row)), e))
                    if i >= 1:
                        sinks.append(w[b, h, i, 0].item() > 0.3)
            assert per_depth["row_sum"][h] == pytest.approx(np.mean(sums), rel=1e-9)
            assert per_depth["entropy"][h] == pytest.approx(np.mean(ents), rel=1e-9)
            assert per_depth["entropy_ratio"][h] == pytest.approx(np.mean(ratios), rel=1e-9)
            assert per_depth["sink_fraction"][h] == pytest.approx(np.mean(sinks), rel=1e-9)
            # entropy against log n: a straight-line fit over the queries, each query's entropy its mean over b
            x = [pairs[0][0] for pairs in by_query.values()]
            y = [np.mean([e for _, e in pairs]) for pairs in by_query.values()]
            assert per_depth["entropy_slope"][h] == pytest.approx(np.polyfit(x, y, 1)[0], rel=1e-9, abs=1e-12)
        if variant.get("attention") == "softmax1":
            assert (per_depth["row_sum"] < 1).all()  # a softmax1 head may attend to nothing
        else:
            np.testing.assert_allclose(per_depth["row_sum"], 1.0, rtol=1e-6)
        assert (per_depth["entropy_ratio"] > 0).all() and (per_depth["entropy_ratio"] <= 1 + 1e-9).all()
    assert any(s["sink_fraction"].sum() > 0 for s in stats)  # the sink comparison is not vacuous


@torch.no_grad()
def test_attention_entropy_grows_as_log_n_for_uniform_weights_and_not_for_a_focused_head():
    model, idx = tiny_model(), random_ids((2, 16), seed=5)
    width = model.cfg.width
    for block in model.blocks:  # zero queries and keys: every score 0, softmax uniform over the visible keys
        block.attn.qkv.weight[: 2 * width].zero_()
    for per_depth in attention_stats(model, idx):
        np.testing.assert_allclose(per_depth["entropy_slope"], 1.0, rtol=1e-9)
        np.testing.assert_allclose(per_depth["entropy_ratio"], 1.0, rtol=1e-9)
    for block in model.blocks:  # q = k = 20 x the normed input: each query's own key wins by hundreds of nats
        block.attn.qkv.weight[:width] = 20 * torch.eye(width)
        block.attn.qkv.weight[width : 2 * width] = 20 * torch.eye(width)
    for per_depth in attention_stats(model, idx):
        assert abs(per_depth["entropy_slope"]).max() < 0.05 and per_depth["entropy_ratio"].max() < 0.05


def test_the_entropy_slope_is_nan_where_every_query_sees_as_many_keys():
    from vslm.probes.attention import _slope

    y = torch.rand(2, 31, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for n in (31, 63, 127):  # a window of 2: log 2 everywhere, a mean off by a rounding at some lengths
        assert np.isnan(_slope(torch.full((n,), 2.0, dtype=torch.float64).log(), torch.rand(2, n))).all()
    x = torch.arange(2, 33, dtype=torch.float64).log()
    assert _slope(x, y) == pytest.approx([np.polyfit(x, row, 1)[0] for row in y.numpy()], rel=1e-9)


# --------------------------------------------------------------------------------------- shape


def test_kl_js_entropy_on_hand_built_distributions():
    p = torch.tensor([0.5, 0.5, 0.0], dtype=torch.float64)
    q = torch.tensor([0.25, 0.25, 0.5], dtype=torch.float64)
    assert kl(p, q).item() == pytest.approx(math.log(2))
    assert kl(q, p).item() == math.inf  # q puts mass where p has none
    assert kl(p, p).item() == 0.0
    assert js(p, q).item() == pytest.approx(0.75 * math.log(4 / 3))
    assert js(q, p).item() == pytest.approx(js(p, q).item())
    assert entropy(p).item() == pytest.approx(math.log(2))
    both = torch.stack((p, q))  # (2, 3)
    np.testing.assert_allclose(kl(both[:, None], both[None, :]).numpy(), [[0, math.log(2)], [math.inf, 0]])


class BigramModel(nn.Module):
    """A hand-built distribution: the prediction after any context is table[last token]."""

    def __init__(self, table: list[list[float]]):
        super().__init__()
        self.log_table = nn.Parameter(torch.tensor(table).log())

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.log_table[idx]  # (B, T, V)


TABLE = [[0.25, 0.25, 0.25, 0.25], [0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1], [0.7, 0.1, 0.1, 0.1]]


def test_decay_of_a_prompts_effect_on_hand_built_curves():
    from vslm.probes.shape import decay

    t = np.arange(1, 21, dtype=float)
    got = decay(0.4 * t**-1.5)  # a power law: the log-log slope is its exponent, half by t = 2^(1/1.5) -> 2
    assert got["first"] == pytest.approx(0.4) and got["half_at"] == 2 and got["slope"] == pytest.approx(-1.5)
    flat = decay(np.full(10, 0.3))  # no decay: never half, slope 0
    assert math.isnan(flat["half_at"]) and flat["slope"] == pytest.approx(0.0, abs=1e-12)
    none = decay(np.zeros(5))  # the empty prompt against itself
    assert none["first"] == 0 and math.isnan(none["slope"]) and math.isnan(none["half_at"])  # nothing to halve
    assert math.isnan(decay(np.array([]))["first"])


def test_shape_metrics_on_hand_built_distribution():
    # prompts: 0 = empty (token 0), 1 = [1], 2 = [2], 3 = [0], the same as the empty prompt
    m = shape_metrics(BigramModel(TABLE), [[1], [2], [0]], continuation=[3, 0], empty_id=0)
    np.testing.assert_array_equal(m["targets"], [3, 0])
    # y_1 = 3 is read from table[prompt]; y_2 = 0 from table[3] whatever the prompt
    np.testing.assert_allclose(m["log_prob"], np.log([[0.25, 0.7], [0.4, 0.7], [0.1, 0.7], [0.25, 0.7]]), rtol=1e-6)
    h = [-sum(a * math.log(a) for a in row) for row in TABLE]
    np.testing.assert_allclose(m["entropy"], [[h[0], h[3]], [h[1], h[3]], [h[2], h[3]], [h[0], h[3]]], rtol=1e-6)

    kl_12 = sum(a * math.log(a / b) for a, b in zip(TABLE[1], TABLE[2], strict=True))
    assert m["kl"][1, 2, 0] == pytest.approx(kl_12, rel=1e-6)
    np.testing.assert_allclose(m["kl"][:, :, 1], 0.0, atol=1e-12)  # the prompt no longer matters at y_2
    np.testing.assert_allclose(m["kl"][0, 3], 0.0, atol=1e-12)  # identical prompts
    np.testing.assert_allclose(np.diagonal(m["kl"]), 0.0, atol=1e-12)
    mix = [(a + b) / 2 for a, b in zip(TABLE[1], TABLE[2], strict=True)]
    js_12 = sum(a * math.log(a / c) + b * math.log(b / c) for a, b, c in zip(TABLE[1], TABLE[2], mix, strict=True))
    assert m["js"][1, 2, 0] == pytest.approx(js_12 / 2, rel=1e-6)
    np.testing.assert_allclose(m["js"], m["js"].transpose(1, 0, 2), atol=1e-12)

    np.testing.assert_allclose(m["log_prob_shift"][1, 2], [math.log(4), 0.0], atol=1e-6)
    assert m["log_prob_shift_total"][1, 2] == pytest.approx(math.log(4), rel=1e-6)
    assert m["log_prob_shift_total"][2, 1] == pytest.approx(-math.log(4), rel=1e-6)
    np.testing.assert_allclose(m["pmi"][1], [math.log(0.4 / 0.25), 0.0], atol=1e-6)
    np.testing.assert_allclose(m["pmi"][[0, 3]], 0.0, atol=1e-12)  # the prompt equals the empty prompt


def test_shape_metrics_without_empty_id_start_at_the_second_token():
    m = shape_metrics(BigramModel(TABLE), [[1], [2]], continuation=[3, 0, 1])
    np.testing.assert_array_equal(m["targets"], [0, 1])  # y_1 = 3 is the empty prompt and follows every prompt
    np.testing.assert_allclose(m["log_prob"], np.log([[0.7, 0.25]] * 3), rtol=1e-6)
    np.testing.assert_allclose(m["kl"], 0.0, atol=1e-12)
    with pytest.raises(ValueError, match="2 tokens"):
        shape_metrics(BigramModel(TABLE), [[1]], continuation=[3])


@torch.no_grad()
def test_shape_metrics_on_gpt_match_a_loop():
    model, eos, y = tiny_model(), V - 1, [1, 2, 3, 4]
    prompts = [[5, 6, 7], [5, 6, 7], [eos], [8]]
    m = shape_metrics(model, prompts, y, empty_id=eos)
    contexts = [[eos], *prompts]
    dists = [[torch.softmax(model(torch.tensor([c + y[:t]]))[0, -1].double(), -1) for t in range(4)]
             for c in contexts]
    for k in range(5):
        for t in range(4):
            assert m["log_prob"][k, t] == pytest.approx(math.log(dists[k][t][y[t]].item()), rel=1e-5)
            expected_kl = sum(a * math.log(a / b) for a, b in zip(dists[k][t].tolist(), dists[4][t].tolist(),
                                                                  strict=True))
            assert m["kl"][k, 4, t] == pytest.approx(expected_kl, rel=1e-4, abs=1e-9)
    np.testing.assert_allclose(m["kl"][1, 2], 0.0, atol=1e-9)  # identical prompts
    np.testing.assert_allclose(m["pmi"][3], 0.0, atol=1e-9)  # the prompt is the empty prompt
    assert (m["kl"][1, 4] > 0).all()
    np.testing.assert_allclose(m["js"], m["js"].transpose(1, 0, 2), atol=1e-12)
    np.testing.assert_allclose(m["log_prob_shift_total"], m["log_prob"].sum(1)[:, None] - m["log_prob"].sum(1)[None],
                               atol=1e-9)


@torch.no_grad()
def test_distribution_by_window_is_the_probe_of_each_window_alone():
    model = tiny_model()
    stats = corpus_stats(random_ids((500,), seed=2).numpy(), V)
    idx = random_ids((5, 16), seed=3)
    by_window = distribution_by_window(model(idx), idx, stats, rows=2)  # rows=2: windows split across chunks
    for b in range(5):
        alone = distribution_probe(model, idx[b : b + 1], stats)
        for key in ("M2", "M3", "entropy"):
            assert by_window[key][b] == pytest.approx(alone[key], rel=1e-9)
        assert unigram_kl(by_window["probs"][b], stats) == pytest.approx(alone["M1"], rel=1e-9)
    assert distribution_probe(model, idx, stats)["M2"] == pytest.approx(by_window["M2"].mean(), rel=1e-12)


# ----------------------------------------------------------------------------------- bootstrap


def test_bootstrap_se_of_a_mean_agrees_with_the_analytic_se():
    rng = np.random.default_rng(7)
    n = 256
    values = np.column_stack([rng.normal(2.0, 0.5, n), rng.exponential(1.0, n)])  # (n, 2): one se per column
    analytic = values.std(0, ddof=1) / math.sqrt(n)
    se = bootstrap_se(values)
    assert se.shape == (2,)
    assert se == pytest.approx(analytic, rel=0.15)
    # a statistic of the resampled mean: the delta method gives |f'(mean)| * se for f = exp
    se_exp = bootstrap_se(values[:, 0], np.exp)
    assert se_exp == pytest.approx(math.exp(values[:, 0].mean()) * analytic[0], rel=0.15)


def test_bootstrap_se_of_identical_windows_is_zero_and_draws_are_fixed():
    same = np.tile(np.array([3.7, 0.1, -2.3]), (256, 1))  # 256 windows with the same values
    assert bootstrap_se(same).tolist() == [0.0, 0.0, 0.0]
    assert bootstrap_se(same, lambda m: np.log(m[:, 0])) == 0.0
    values = np.random.default_rng(0).normal(size=64)
    assert bootstrap_se(values) == bootstrap_se(values)  # a fixed seed: the same draws every call


def test_multiset_loss_is_the_best_order_blind_prediction():
    import itertools

    from vslm.probes.position import multiset_loss

    # a row's second copy after its first token, predicted from what is left of the multiset: brute
    # force over every order of that multiset, each equally likely, gives the same probabilities
    row = np.array([2, 5, 2, 7, 5, 2])
    orders = set(itertools.permutations(row[1:].tolist()))  # the second copy's tokens 1.. once token 0 is used
    nll = 0.0
    for t in range(1, len(row)):
        prefix = tuple(row[1:t].tolist())
        matching = [o for o in orders if o[: t - 1] == prefix]
        nll -= math.log(sum(o[t - 1] == row[t] for o in matching) / len(matching))
    assert multiset_loss(row[None]) == pytest.approx(nll / (len(row) - 1))
    # all tokens distinct: 1/(L-1) ... 1/1, the last token certain
    assert multiset_loss(np.array([[0, 1, 2, 3]])) == pytest.approx((math.log(3) + math.log(2) + 0) / 3)
    # rows average token by token
    assert multiset_loss(np.stack([row, row])) == pytest.approx(multiset_loss(row[None]))


def test_sparse_bigram_rows_above_the_dense_limit_equal_the_dense_table(monkeypatch):
    """A vocabulary above MAX_VOCAB (GPT-2's) keeps only the pairs the text has: the same rows, the same
    bigram entropy and the same M3 as the dense table (a row never followed by a token is the unigram)."""
    from vslm.probes import distribution

    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 40, size=3000)
    tokens[tokens == 7] = 8  # token 7 never appears; 39 is followed once at most
    dense = distribution.corpus_stats(tokens, 50)
    monkeypatch.setattr(distribution, "MAX_VOCAB", 10)
    sparse = distribution.corpus_stats(tokens, 50)
    assert sparse.bigram is None and dense.bigram is not None
    prev = np.arange(50).reshape(5, 10)
    assert np.allclose(sparse.bigram_rows(prev), dense.bigram[prev])
    assert sparse.bigram_entropy == pytest.approx(dense.bigram_entropy, rel=1e-12)
    logits = torch.randn(3, 16, 50, generator=torch.Generator().manual_seed(1))
    idx = torch.from_numpy(rng.integers(0, 50, size=(3, 16)))
    a = distribution.distribution_of_logits(logits, idx, dense)
    b = distribution.distribution_of_logits(logits, idx, sparse)
    assert a == pytest.approx(b, rel=1e-12)
