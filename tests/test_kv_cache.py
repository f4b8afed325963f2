"""Sampling with a key/value cache gives the uncached path's tokens and logits, for every variant,
across the context crop (where the cache restarts from the cropped window)."""

from pathlib import Path

import pytest
import torch

from conftest import tiny_gpt as tiny_model
from vslm.config import load_config
from vslm.model import GPT
from vslm.model.hooks import capture

VARIANTS = {
    "nanogpt-defaults": [],
    "rope-rmsnorm-swiglu-gqa": ["model.position=rope", "model.norm=rmsnorm", "model.mlp=swiglu",
                                "model.heads=4", "model.kv_heads=2"],
    "sliding-window": ["model.window=6"],
    "sliding-window-rope": ["model.window=5", "model.position=rope", "model.attention=ssmax"],
    "per-layer-windows": ["model.depth=4", "model.schedule.windows=increasing", "model.schedule.window_range=[2,32]"],
    "shared-order-lora": ["model.depth=4", "model.order=[0,1,0,1]", "model.recursion_lora_rank=2"],
    "learned-root-inject": ["model.root=learned", "model.inject=true", "model.root_per_position=true"],
    "learned-root-shared": ["model.root=learned", "model.position=rope", "model.sharing=all"],
    "power": ["model.attention=power", "model.attention_gamma=0.5"],
    "softmax1": ["model.attention=softmax1"],
    "ssmax": ["model.attention=ssmax"],
    "sigmoid": ["model.attention=sigmoid", "model.window=7"],
    "per-layer-widths": ["model.blocks=[{width=16, heads=1}, {width=48, heads=3, window=9}]",
                         "model.tie_embeddings=false", "model.position=rope"],
    "attention-only": ["model.mlp=none", "model.tie_embeddings=false"],
    "ngpt-gqa-swiglu": ["model.ngpt=true", "model.position=rope", "model.mlp=swiglu", "model.heads=4",
                        "model.kv_heads=2"],
    "ngpt-window-sigmoid": ["model.ngpt=true", "model.position=rope", "model.attention=sigmoid", "model.window=7"],
}


@pytest.mark.parametrize("name", VARIANTS)
def test_greedy_tokens_and_logits_match_the_uncached_path(name):
    model = tiny_model(VARIANTS[name])
    C = model.cfg.context
    prompt = torch.randint(0, 50, (2, 3), generator=torch.Generator().manual_seed(1))
    new = C + 10  # crosses the crop: the window slides for the last 13 steps
    cached = model.generate(prompt, new, temperature=0, cache=True)
    plain = model.generate(prompt, new, temperature=0, cache=False)
    assert cached.tolist() == plain.tolist()
    # the logits of every step within float32 rounding, the last one (past the crop) within 1e-5
    for t, logits, expected in step_logits(model, cached, prompt.shape[1]):
        torch.testing.assert_close(logits, expected, atol=1e-5 if t == cached.shape[1] else 5e-5, rtol=1e-5)
    # in float64 the two paths agree to the final cast to float32: the same computation, reordered
    for _, logits, expected in step_logits(model.double(), cached, prompt.shape[1]):
        torch.testing.assert_close(logits, expected.float(), atol=1e-6, rtol=0)


def step_logits(model: GPT, idx: torch.Tensor, start: int):
    """(t, cached logits, uncached logits) after idx[:, :t] for each t from start to the end."""
    kv, C = None, model.cfg.context
    for t in range(start, idx.shape[1] + 1):
        logits, kv = model.next_logits(idx[:, :t], kv)
        with torch.no_grad():
            yield t, logits, model(idx[:, :t][:, -C:])[:, -1, :]


@pytest.mark.parametrize("name", ["nanogpt-defaults", "per-layer-windows", "shared-order-lora", "ssmax"])
def test_sampled_tokens_match_with_the_same_generator(name):
    # the probabilities agree within float rounding, so the same draws pick the same tokens here (a draw
    # falling within ~1e-7 of a boundary could differ: this checks these seeds, not a guarantee)
    model = tiny_model(VARIANTS[name], seed=2)
    prompt = torch.zeros(3, 1, dtype=torch.long)
    runs = [model.generate(prompt, 45, temperature=0.9, top_k=20, generator=torch.Generator().manual_seed(5),
                           cache=c) for c in (True, False)]
    assert runs[0].tolist() == runs[1].tolist()


def test_cache_falls_back_with_a_reason():
    model = tiny_model(["model.dropout=0.1"])
    assert model.cache_fallback() is None  # eval mode: dropout is off
    model.train()
    assert "dropout" in model.cache_fallback()
    model.eval()
    with capture(model, "attn.0"):
        assert "hooks" in model.cache_fallback()
        out = model.generate(torch.zeros(1, 2, dtype=torch.long), 5, temperature=0)
    assert out.tolist() == model.generate(torch.zeros(1, 2, dtype=torch.long), 5, temperature=0, cache=False).tolist()


SLIDING = {  # every variant whose positions extend past the context (RoPE, no learned root per position)
    "rope-rmsnorm-swiglu-gqa": VARIANTS["rope-rmsnorm-swiglu-gqa"],
    "sliding-window-rope-ssmax": VARIANTS["sliding-window-rope"],
    "per-layer-windows": [*VARIANTS["per-layer-windows"], "model.position=rope"],
    "shared-order-lora": [*VARIANTS["shared-order-lora"], "model.position=rope"],
    "learned-root-shared": VARIANTS["learned-root-shared"],
    "power": [*VARIANTS["power"], "model.position=rope"],
    "sigmoid": [*VARIANTS["sigmoid"], "model.position=rope"],
    "per-layer-widths": VARIANTS["per-layer-widths"],
    "attention-only": [*VARIANTS["attention-only"], "model.position=rope"],
}


@pytest.mark.parametrize("name", SLIDING)
def test_sliding_past_the_context_gives_the_uncached_sliding_tokens(name):
    """slide=True: the cache keeps going past the context; the uncached path runs the whole sequence with
    every layer's window at most the context. Same greedy tokens, logits within float rounding."""
    model = tiny_model(SLIDING[name])
    C = model.cfg.context
    prompt = torch.randint(0, 50, (2, C + 4), generator=torch.Generator().manual_seed(1))  # already past it
    cached = model.generate(prompt, C, temperature=0, slide=True)
    plain = model.generate(prompt, C, temperature=0, cache=False, slide=True)
    assert cached.tolist() == plain.tolist()
    kv = None
    for t in range(prompt.shape[1], cached.shape[1] + 1, 7):
        logits, kv = model.next_logits(cached[:, :t], kv, slide=True)
        with torch.no_grad():
            torch.testing.assert_close(logits, model(cached[:, :t], slide=True)[:, -1, :], atol=5e-5, rtol=1e-5)
    # within the context sliding and cropping are the same computation
    short = torch.randint(0, 50, (1, 3), generator=torch.Generator().manual_seed(2))
    assert (model.generate(short, C - 3, temperature=0, slide=True).tolist()
            == model.generate(short, C - 3, temperature=0).tolist())


def test_sliding_each_position_sees_the_last_context_tokens_only():
    """Two layers with windows of C: the last position (2C - 1) reads layer 1 at C .. 2C - 1, which read
    tokens 1 .. 2C - 1. Token 0 is out of its reach; token 1 is not."""
    model = tiny_model(SLIDING["rope-rmsnorm-swiglu-gqa"])
    C = model.cfg.context
    assert model.cfg.depth == 2
    idx = torch.randint(0, 50, (1, 2 * C), generator=torch.Generator().manual_seed(3))

    def last_logits_with(position: int) -> torch.Tensor:
        changed = idx.clone()
        changed[0, position] = (idx[0, position] + 1) % 50
        with torch.no_grad():
            return model(changed, slide=True)[0, -1]

    with torch.no_grad():
        last = model(idx, slide=True)[0, -1]
    torch.testing.assert_close(last_logits_with(0), last)
    assert not torch.allclose(last_logits_with(1), last)


def test_sliding_refuses_models_whose_positions_end_at_the_context():
    for overrides, word in (([], "learned positions"), (["model.position=rope", "model.root=learned",
                                                          "model.root_per_position=true"], "root per position")):
        model = tiny_model(overrides)
        with pytest.raises(ValueError, match=word):
            model.generate(torch.zeros(1, 2, dtype=torch.long), 3, slide=True)
        with pytest.raises(ValueError, match="longer than the context"):
            with torch.no_grad():
                model(torch.zeros(1, model.cfg.context + 1, dtype=torch.long), slide=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rotary_is_the_rotate_half_formula_bit_for_bit_and_keeps_relative_scores(dtype):
    from vslm.model.attention import Rotary

    hd, n = 16, 12
    rotary = Rotary(head_dim=hd, context=n, base=10000.0)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, n, hd, generator=gen).to(dtype)
    angles = torch.outer(torch.arange(n, dtype=torch.float32),
                         1.0 / 10000.0 ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
    cos, sin = angles.cos().to(dtype), angles.sin().to(dtype)
    x1, x2 = x.chunk(2, dim=-1)
    assert torch.equal(rotary.rotate(x), torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1))
    q, k = torch.randn(hd, generator=gen), torch.randn(hd, generator=gen)  # scores see distance: (3, 1) as (9, 7)
    at = lambda v, pos: rotary.rotate(v.view(1, 1, 1, hd), pos).flatten()  # noqa: E731
    assert torch.allclose(at(q, 3) @ at(k, 1), at(q, 9) @ at(k, 7), atol=1e-5)


def test_rotary_tables_extended_in_half_precision_equal_those_built_at_init():
    from vslm.model.attention import Rotary

    rotary = Rotary(head_dim=16, context=8, base=10000.0).to(torch.bfloat16)
    first = rotary.cos.clone()  # init's float32 table, cast
    x = torch.ones(1, 1, 4, 16, dtype=torch.bfloat16)
    rotary.rotate(x, offset=30)  # past the context: the tables are rebuilt longer
    assert rotary.cos.shape[0] >= 34
    assert torch.equal(rotary.cos[:8].to(torch.bfloat16), first)  # from float32 numbers, not the cast ones
    fresh = Rotary(head_dim=16, context=rotary.cos.shape[0], base=10000.0)
    assert torch.equal(rotary.cos, fresh.cos) and torch.equal(rotary.sin, fresh.sin)


def test_hooks_read_plain_tensors_during_generation():
    model = GPT(load_config("tiny", []).model.model_copy(update={"vocab_size": 256}))
    with capture(model, "resid_post.0") as seen:
        model.generate(torch.zeros(1, 2, dtype=torch.long), 2, temperature=0)
    captured = seen["resid_post.0"]
    assert not captured.is_inference()
    torch.zeros_like(captured).requires_grad_(True).mul(captured).sum().backward()  # usable with autograd


def test_forward_with_a_cache_refuses_past_the_context():
    model = tiny_model([])
    kv = model.new_cache()
    with torch.no_grad():
        model(torch.zeros(1, model.cfg.context, dtype=torch.long), kv)
        with pytest.raises(ValueError, match="longer than the context"):
            model(torch.zeros(1, 1, dtype=torch.long), kv)


def test_vslm_sample_uses_the_cache_and_no_cache_gives_the_same_text(tmp_path, capsys):
    from conftest import tiny_overrides
    from vslm.cli import main
    from vslm.train.trainer import Trainer

    run = tmp_path / "run"
    Trainer(load_config("tiny", tiny_overrides(train__steps=2, logging__probe_every=0)), run).fit()
    capsys.readouterr()
    texts = []
    for extra in ([], ["--no-cache"]):
        assert main(["sample", str(run), "--tokens", "40", "--num", "2", "--seed", "3", *extra]) == 0
        out = capsys.readouterr()
        assert "cache" not in out.err  # no fallback to explain
        texts.append(out.out)
    assert texts[0] == texts[1] and texts[0].strip()
    # --slide on a model with learned positions (the tiny config's): one line naming why, exit 2
    assert main(["sample", str(run), "--tokens", "40", "--slide"]) == 2
    assert "--slide: learned positions end at the context" in capsys.readouterr().err


def test_vslm_sample_slides_past_the_context_on_a_rope_model(tmp_path, capsys, monkeypatch):
    from conftest import tiny_overrides
    from vslm.cli import main
    from vslm.train.trainer import Trainer

    run = tmp_path / "run"
    Trainer(load_config("tiny", tiny_overrides(train__steps=2, logging__probe_every=0, model__position="rope")),
            run).fit()
    capsys.readouterr()
    calls, generate = [], GPT.generate

    def recording(self, *args, **kwargs):  # what the CLI asked for, then the real generation
        calls.append((kwargs.get("slide"), kwargs.get("cache")))
        return generate(self, *args, **kwargs)

    monkeypatch.setattr(GPT, "generate", recording)
    texts = []
    for extra in ([], ["--no-cache"]):  # 80 tokens past a context of 32
        assert main(["sample", str(run), "--tokens", "80", "--seed", "3", "--slide", *extra]) == 0
        texts.append(capsys.readouterr().out)
    assert calls == [(True, True), (True, False)]
    assert texts[0] == texts[1] and len(texts[0].strip()) > 0


def test_sampling_warns_once_with_the_reason_when_the_cache_is_not_used():
    from vslm.data.tokenizer import ByteTokenizer
    from vslm.train.sampling import sample_text

    model = GPT(load_config("tiny", []).model.model_copy(update={"vocab_size": 256}))
    warned = []
    with capture(model, "resid_post.0"):
        sample_text(model, ByteTokenizer(), "ab", num=1, tokens=3, warn=warned.append)
    assert len(warned) == 1 and "hooks" in warned[0]


def test_samples_show_where_the_model_ends_a_document():
    """`vslm sample` and samples.txt write <|endoftext|> where the model drew end-of-text (decode drops it: two
    stories ran together); texts encoded again (vslm shape) keep it dropped."""
    from vslm.data.tokenizer import EOS, ByteTokenizer
    from vslm.train.sampling import sample_text

    tok = ByteTokenizer()  # 256 bytes and end-of-text (id 256)
    model = GPT(load_config("tiny", ["model.tie_embeddings=false"]).model.model_copy(update={"vocab_size": 257}))
    with torch.no_grad():
        model.head.weight.zero_()  # every token equally likely: end-of-text about once in 257
    args = {"num": 2, "tokens": 1500, "temperature": 1.0, "top_k": None, "seed": 5}
    shown, dropped = sample_text(model, tok, "ab", end_of_text=EOS, **args), sample_text(model, tok, "ab", **args)
    drawn = model.eval().generate(torch.tensor([[97, 98]] * 2), 1500, temperature=1.0, top_k=None, vocab=257,
                                  generator=torch.Generator().manual_seed(5))[:, 2:]
    ends = (drawn == tok.eos_id).sum(dim=1).tolist()
    assert min(ends) >= 1 and [t.count(EOS) for t in shown] == ends and EOS not in "".join(dropped)
    for text, row in zip(shown, drawn.tolist(), strict=True):  # each document decoded on its own, then joined
        parts, start = [], 0
        for i, token in enumerate([*row, tok.eos_id]):
            if token == tok.eos_id:
                parts.append(tok.decode(row[start:i]))
                start = i + 1
        assert text == "ab" + EOS.join(parts)


def test_bench_sample_reports_both_paths_and_the_ratio(capsys):
    import json

    from vslm.cli import main

    assert main(["bench", "sample", "--tokens", "6", "--repeat", "1", "--json", "model.context=4"]) == 0
    result = json.loads(capsys.readouterr().out)
    # the demo cropping past its context, sliding past it (RoPE), then at a context holding every token
    assert [(r["context"], r["past_context"]) for r in result["rows"]] == [(4, "crop"), (4, "slide"), (7, "within")]
    for r in result["rows"]:  # one repeat: its pair's ratio is the ratio of the two speeds
        assert r["same_tokens"] and r["tokens_per_s_cache"] > 0
        assert r["ratio"] == pytest.approx(r["tokens_per_s_cache"] / r["tokens_per_s_no_cache"], abs=0.011)
    # the same tokens is a check only where they differ: the model at its init gave token 0 at every step
    assert main(["bench", "sample", "--tokens", "30", "--repeat", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["rows"][0]["distinct_tokens"] >= 5
    assert main(["bench", "sample", "--tokens", "3", "--repeat", "1", "--json"]) == 0  # within the context
    assert [r["past_context"] for r in json.loads(capsys.readouterr().out)["rows"]] == ["within"]
    for word in ("model.vocab_size=100", "train.steps=7"):  # settings it would not use: refused, not ignored
        assert main(["bench", "sample", "--tokens", "3", word]) == 2
        assert f"model.* overrides but model.vocab_size (64), got {word}" in capsys.readouterr().err


def test_bench_sample_profile_names_the_ops_of_a_cached_step(capsys):
    import json

    from vslm.cli import main

    args = ["bench", "sample", "--tokens", "6", "--repeat", "1", "--profile", "4", "--json", "model.context=4"]
    assert main(args) == 0
    profile = json.loads(capsys.readouterr().out)["profile"]
    assert profile["past_context"] == "slide"  # the demo uses RoPE, so the sliding row is the one profiled
    shares = [op["share"] for op in profile["ops"]]  # of the step's wall time, ops' self time
    assert len(shares) == 4 and shares == sorted(shares, reverse=True) and 0 < sum(shares) <= profile["ops_share"]
    assert 0 < profile["ops_share"] <= 1 and profile["us_per_token"] > 0
    ops = {op["op"]: op for op in profile["ops"]}
    assert "aten::mm" in ops or "aten::addmm" in ops  # the matrix products are among a step's largest costs
    assert all(op["calls_per_token"] > 0 and op["us_per_call"] > 0 for op in profile["ops"])
    assert main(["bench", "sample", "--profile", "-1"]) == 2
    assert "--profile at least 0" in capsys.readouterr().err


def test_the_compiled_decode_probe_gives_the_models_tokens_past_the_context(capsys):
    """scripts/bench_compiled_decode.py (BENCHMARKS: what a compiled sampling step would buy): its functional
    ring-buffer step gives GPT.generate's sliding tokens, past the context too (eager here; the compiled
    step is the same function under torch.compile)."""
    import json
    import runpy

    script = runpy.run_path(str(Path(__file__).parents[1] / "scripts" / "bench_compiled_decode.py"), run_name="probe")
    assert script["main"](["--no-compile", "--tokens", "140", "--repeat", "1"]) == 0  # the demo's context is 128
    result = json.loads(capsys.readouterr().out)
    assert set(result["us_per_token"]) == {"model", "functional"} and result["x_model"]["model"] == 1.0
    assert script["main"](["--tokens", "0"]) == 2


@pytest.mark.skipif(not (Path(__file__).parents[1] / ".git").exists(), reason="needs the git checkout")
def test_the_sampling_ab_loads_a_commit_beside_the_tree_and_pairs_their_steps(capsys):
    """scripts/ab_sampling.py (BENCHMARKS: the cached step's speed-up, one process): HEAD against the tree."""
    import json
    import runpy
    import sys

    script = runpy.run_path(str(Path(__file__).parents[1] / "scripts" / "ab_sampling.py"), run_name="ab")
    assert script["main"](["HEAD", "--pairs", "2", "--tokens", "5"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["same_tokens"] and result["slide"] and result["pairs"] == 2 and 0 <= result["tree_faster_pairs"] <= 2
    assert result["speedup_range"][0] <= result["speedup_median"] <= result["speedup_range"][1]
    assert "vslm_ref" not in sys.modules and not any("vslm-ab-" in p for p in sys.path)  # nothing left behind
    with pytest.raises(SystemExit, match="git archive no-such-commit"):
        script["main"](["no-such-commit"])


def test_bench_sample_table_title_says_what_its_medians_are():
    import io

    from rich.console import Console

    from vslm.commands.bench import run_sample_bench

    printed = io.StringIO()
    run_sample_bench(["model.context=4"], 6, 2, Console(file=printed, width=400), 0)
    lines = printed.getvalue().splitlines()
    title = " ".join(line.strip() for line in lines[:next(i for i, ln in enumerate(lines) if ln.startswith("┏"))])
    assert title == (f"sampling, demo model (random weights), batch 1, 6 new tokens, greedy, {torch.get_num_threads()} "
                     "threads; tokens/s: median of 2 repeats; x: median of each repeat's cached/uncached speed ratio")


def test_a_tiny_temperature_a_padded_vocabulary_and_a_refusal_mid_sample():
    """A temperature under 1e-38 overflowed the logits (inf - inf: NaN, a traceback in multinomial); a model
    vocabulary padded past the tokenizer's drew ids that decode to nothing (dropped: 200 tokens gave 151
    characters); a refusal inside sample_text left a notebook's model in eval mode (training went on without
    dropout, silently)."""
    from vslm.data.tokenizer import ByteTokenizer
    from vslm.train.sampling import sample_text

    model = tiny_model([], vocab=300)
    idx = torch.tensor([[1, 2, 3]])
    greedy = model.generate(idx, 12, temperature=0)
    gen = torch.Generator().manual_seed(0)
    assert torch.equal(model.generate(idx, 12, temperature=1e-40, generator=gen), greedy)
    drawn = model.generate(idx, 200, temperature=2.0, top_k=None, generator=gen, vocab=257)[:, 3:]
    assert drawn.max() < 257 and len(drawn.unique()) > 50  # every id drawn stands for a byte or end-of-text
    assert (model.generate(idx, 200, temperature=2.0, top_k=None, generator=gen)[:, 3:] >= 257).any()  # else would

    class Seen(ByteTokenizer):  # the ids sample_text decodes
        def decode(self, ids):
            self.ids = ids
            return super().decode(ids)

    seen = Seen()
    sample_text(model, seen, "ab", tokens=200, temperature=2.0, top_k=None)
    assert len(seen.ids) == 200 and max(seen.ids) < seen.vocab_size
    model.train()
    with pytest.raises(ValueError, match="top_k must be at least 1"):
        sample_text(model, ByteTokenizer(), "ab", tokens=3, top_k=0)
    assert model.training
    with pytest.raises(ValueError, match="vocab must be 1 to the model's vocab_size 300, got 301"):
        model.generate(idx, 1, vocab=301)


@pytest.mark.parametrize("temperature, top_k", [(1.0, None), (0.5, 5), (2.0, 3)])
def test_drawn_tokens_follow_the_softmax_of_the_logits_over_the_temperature_within_the_top_k(temperature, top_k):
    """The sampler against its definition: 40,000 one-token draws from one prompt, each token's count within the
    binomial's tails at 1e-7 (exact tails: some tokens are expected about once) of softmax(logits / temperature)
    over the top_k largest logits (0 outside them). Cached and uncached paths share the filtering code, so their
    agreement alone would pass a temperature multiplied instead of divided, or a top-k that keeps the smallest."""
    from scipy import stats

    model = tiny_model([])  # moved off its init: logits over about 3 nats, which a temperature changes visibly
    prompt = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        logits = model(prompt)[0, -1].double()
    keep = torch.ones_like(logits, dtype=torch.bool) if top_k is None else \
        torch.zeros_like(logits, dtype=torch.bool).index_fill(0, logits.topk(top_k).indices, True)
    expected = torch.softmax((logits / temperature).masked_fill(~keep, float("-inf")), dim=0)
    assert 0.05 < expected.max() < 0.95  # neither near-greedy nor near-uniform: the test can tell them apart
    n = 40_000
    drawn = model.generate(prompt.expand(n, -1), 1, temperature=temperature, top_k=top_k,
                           generator=torch.Generator().manual_seed(0))[:, -1]
    counts = torch.bincount(drawn, minlength=len(logits))
    assert (counts[~keep] == 0).all()
    p = expected[keep].numpy()
    k = counts[keep].numpy()
    tails = [min(stats.binom.cdf(c, n, q), stats.binom.sf(c - 1, n, q)) for c, q in zip(k, p, strict=True)]
    assert min(tails) > 1e-7, (min(tails), k, n * p)
    if top_k is None:  # top_k=1 at any temperature is greedy
        assert torch.equal(model.generate(prompt, 6, temperature=temperature, top_k=1,
                                          generator=torch.Generator().manual_seed(1)),
                           model.generate(prompt, 6, temperature=0))
