"""Per-layer architecture variants: each is data in the config, combinable with the others."""

import math

import pytest
import torch
import torch.nn.functional as F

from vslm.config import ModelConfig, load_config
from vslm.errors import ConfigError
from vslm.model import GPT, parameter_count, training_flops_per_token
from vslm.model.accounting import step_kernels
from vslm.model.attention import normalise, window_mask
from vslm.model.hooks import capture


def tiny(**kw) -> ModelConfig:
    base = {"vocab_size": 40, "context": 16, "depth": 4, "width": 32, "heads": 4}
    return ModelConfig(**{**base, **kw})


def loss_of(model: GPT, idx: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(idx)[:, :-1].reshape(-1, model.cfg.vocab_size), idx[:, 1:].reshape(-1))


VARIANTS = {
    "immediate": {"sharing": "immediate"},
    "cyclic+lora": {"sharing": "cyclic", "recursion_lora_rank": 2},
    "all-shared": {"sharing": "all"},
    "order": {"order": [0, 1, 1, 0]},
    "learned-root": {"root": "learned"},
    "learned-root-per-position": {"root": "learned", "root_per_position": True, "position": "rope"},
    "learned-root-no-inject": {"root": "learned", "inject": False},
    "token-root-inject": {"inject": True},
    "power": {"attention": "power", "attention_gamma": 0.5},
    "softmax1": {"attention": "softmax1"},
    "ssmax": {"attention": "ssmax"},
    "sigmoid": {"attention": "sigmoid", "window": 4},
    "hourglass": {"schedule": {"widths": "large-small-large", "width_range": [16, 48]}},
    "diamond-untied": {"schedule": {"widths": "increasing", "width_range": [16, 48]}, "tie_embeddings": False},
    "increasing-embed": {"schedule": {"widths": "increasing", "width_range": [16, 48]}, "embed_width": 32},
    "wide-embed": {"embed_width": 48},
    "learned-root-embed": {"root": "learned", "embed_width": 16},
    "openelm": {"schedule": {"layer_scaling": "openelm"}, "kv_heads": 1},
    "attention-only-shared": {"mlp": "none", "depth": 2, "recursion_lora_rank": 2, "order": [0, 0]},
    "windows": {"schedule": {"windows": "small-large-small", "window_range": [2, 16]}},
    "interleave": {"schedule": {"windows": "interleave", "window_range": [4, 16], "global_every": 2}},
    "everything": {"sharing": "cyclic", "recursion_lora_rank": 2, "root": "learned", "width": 48, "head_dim": 8,
                   "tie_embeddings": False, "attention": "ssmax", "position": "rope", "mlp": "swiglu",
                   "schedule": {"windows": "increasing", "window_range": [4, 16]},
                   "blocks": [{"width": 32, "attention": "power", "attention_gamma": 0.75}, {"heads": 2}]},
}


@pytest.mark.parametrize("name", VARIANTS)
def test_every_variant_does_forward_and_backward(name):
    torch.manual_seed(0)
    model = GPT(tiny(**VARIANTS[name]))
    idx = torch.randint(40, (2, 16))
    loss = loss_of(model, idx)
    assert math.isfinite(loss.item())
    loss.backward()
    unused = ("pos.",) if name == "learned-root-no-inject" else ()  # the token never enters: positions neither
    grads = [p.grad for n, p in model.named_parameters() if not n.startswith(("lora.b", *unused))]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_uniform_records_reproduce_the_core_model_exactly():
    idx = torch.randint(40, (2, 16))
    torch.manual_seed(1)
    core = GPT(tiny())
    torch.manual_seed(1)
    explicit = GPT(tiny(order=[0, 1, 2, 3], blocks=[{"width": 32, "heads": 4, "ffn": 128}] * 4, window=16,
                        schedule={"windows": "full"}))
    assert core.state_dict().keys() == explicit.state_dict().keys()
    assert torch.equal(core(idx), explicit(idx))


def test_embed_width_equal_to_the_blocks_is_the_core_model():
    idx = torch.randint(40, (2, 16))
    torch.manual_seed(1)
    core = GPT(tiny())
    torch.manual_seed(1)
    same = GPT(tiny(embed_width=32))
    assert core.state_dict().keys() == same.state_dict().keys() and same.unembed is None
    assert torch.equal(core(idx), same(idx))


def test_embed_width_apart_projects_in_and_out_and_starts_as_the_shared_dimensions():
    # embedding 48 -> blocks of 32 -> tied head at 48: the in projection keeps the embedding's first 32
    # dimensions, the out projection writes the stream into them, so the head reads 32 of its 48 columns
    torch.manual_seed(0)
    model = GPT(tiny(embed_width=48))
    assert model.embed.weight.shape == (40, 48) and model.pos.weight.shape == (16, 48)
    assert model.resize["0"].weight.shape == (32, 48) and model.unembed.weight.shape == (48, 32)
    assert torch.equal(model.unembed.weight[:32], torch.eye(32)) and not model.unembed.weight[32:].any()
    idx = torch.randint(40, (2, 16))
    with capture(model, "resid_post.3") as seen:
        logits = model(idx)
    expected = model.norm(seen["resid_post.3"]) @ model.embed.weight[:, :32].T
    torch.testing.assert_close(logits, expected)
    # the brainstorm's confound taken apart: large-small-large blocks with a uniform model's embedding
    hourglass = tiny(blocks=[{"width": 48}, {"width": 16}, {"width": 16}, {"width": 48}], head_dim=8, embed_width=32)
    model = GPT(hourglass)
    assert model.embed.weight.shape == (40, 32) and sorted(model.resize) == ["0", "1", "3"]
    assert model.unembed.weight.shape == (32, 48)


def test_shared_blocks_are_one_tensor_with_summed_gradients():
    torch.manual_seed(0)
    shared = GPT(tiny(order=[0, 0], depth=2))
    unshared = GPT(tiny(order=[0, 1], depth=2))
    state = shared.state_dict()
    state.update({k.replace("blocks.0.", "blocks.1."): v for k, v in state.items() if k.startswith("blocks.0.")})
    unshared.load_state_dict(state)
    assert len(shared.blocks) == 1 and parameter_count(shared) < parameter_count(unshared)
    idx = torch.randint(40, (2, 16))
    torch.testing.assert_close(shared(idx), unshared(idx))
    loss_of(shared, idx).backward()
    loss_of(unshared, idx).backward()
    for name, p in shared.blocks[0].named_parameters():
        summed = unshared.blocks[0].get_parameter(name).grad + unshared.blocks[1].get_parameter(name).grad
        torch.testing.assert_close(p.grad, summed)


def test_recursion_lora_starts_as_the_shared_block_and_then_differs():
    torch.manual_seed(0)
    plain = GPT(tiny(sharing="all"))
    torch.manual_seed(0)
    relaxed = GPT(tiny(sharing="all", recursion_lora_rank=3))
    relaxed.load_state_dict(plain.state_dict(), strict=False)
    idx = torch.randint(40, (2, 16))
    torch.testing.assert_close(plain(idx), relaxed(idx))  # B = 0 at init
    assert sorted(relaxed.lora.keys()) == ["0", "1", "2", "3"]
    with torch.no_grad():
        relaxed.lora["2"].b["mlp_fc"].normal_()
    assert not torch.allclose(plain(idx), relaxed(idx))


def attention_weights(model: GPT, idx: torch.Tensor, depth: int = 0) -> torch.Tensor:
    with capture(model, f"attn.{depth}") as seen:
        model(idx)
    return seen[f"attn.{depth}"]


def test_power_with_gamma_one_is_softmax_and_other_sums():
    idx = torch.randint(40, (2, 16))
    torch.manual_seed(0)
    softmax = GPT(tiny())
    for kind, gamma in [("power", 1.0), ("softmax", 1.0)]:
        other = GPT(tiny(attention=kind, attention_gamma=gamma))
        other.load_state_dict(softmax.state_dict())
        torch.testing.assert_close(other(idx), softmax(idx), atol=1e-5, rtol=0)  # explicit path when captured too
        torch.testing.assert_close(attention_weights(other, idx).sum(-1), torch.ones(2, 4, 16))
    scores = torch.randn(1, 2, 5, 5)
    visible = window_mask(5, None, torch.device("cpu"))
    z = scores.masked_fill(~visible, float("-inf")).exp().sum(-1)
    torch.testing.assert_close(normalise(scores, visible, "power", 0.5, None).sum(-1), z.sqrt())
    torch.testing.assert_close(normalise(scores, visible, "power", 0.0, None).sum(-1), z)
    softmax1 = normalise(scores, visible, "softmax1", 1.0, None)
    torch.testing.assert_close(softmax1.sum(-1), z / (1 + z))
    assert (softmax1.sum(-1) < 1).all()
    n = visible.sum(-1).float()
    torch.testing.assert_close(normalise(scores, visible, "sigmoid", 1.0, None),
                               torch.sigmoid(scores - n.log()[:, None]) * visible)
    scale = torch.tensor([0.5, 2.0])
    ss = normalise(scores, visible, "ssmax", 1.0, scale)
    brute = torch.zeros_like(ss)
    for h in range(2):
        for i in range(5):
            logits = scores[0, h, i, : i + 1] * scale[h] * math.log(i + 1)
            brute[0, h, i, : i + 1] = logits.softmax(-1)
    torch.testing.assert_close(ss, brute)


def test_window_weights_are_zero_outside_the_window():
    torch.manual_seed(0)
    model = GPT(tiny(window=3, attention="softmax1"))
    w = attention_weights(model, torch.randint(40, (1, 16)))
    assert torch.equal(w[0, 0] > 0, window_mask(16, 3, torch.device("cpu")))


def test_width_projections_start_as_partial_identity():
    model = GPT(tiny(schedule={"widths": "small-large-small", "width_range": [16, 48]}, depth=3))
    assert [s.width for s in model.specs] == [16, 48, 16]
    assert model.resize["1"].weight.shape == (48, 16) and model.resize["2"].weight.shape == (16, 48)
    assert torch.equal(model.resize["1"].weight[:16], torch.eye(16)) and not model.resize["1"].weight[16:].any()
    with capture(model, "resid_pre.1", "resid_post.0") as seen:
        assert model(torch.randint(40, (2, 16))).shape == (2, 16, 40)
    assert seen["resid_pre.1"].shape == (2, 16, 48)
    torch.testing.assert_close(seen["resid_pre.1"][..., :16], seen["resid_post.0"])


def test_learned_root_without_injection_ignores_the_tokens():
    torch.manual_seed(0)
    model = GPT(tiny(root="learned", inject=False))
    a, b = torch.randint(40, (2, 16)), torch.randint(40, (2, 16))
    torch.testing.assert_close(model(a), model(b))
    injected = GPT(tiny(root="learned"))
    assert not torch.allclose(injected(a), injected(b))


def test_learned_root_lets_the_stream_be_wider_than_the_embedding():
    model = GPT(tiny(root="learned", width=16, tie_embeddings=False, blocks=[{"width": 32}] * 4))
    assert model.embed.weight.shape == (40, 16) and model.root.shape == (1, 32)
    assert model.inject[0].weight.shape == (32, 16)
    assert model(torch.randint(40, (2, 16))).shape == (2, 16, 40)


def test_parameter_and_flop_counts_by_hand():
    # cyclic sharing of 2 blocks over 4 depths with rank-2 LoRA at every depth, d=32, ffn 128, V=40, T=16
    d, V, T, r = 32, 40, 16, 2
    model = GPT(tiny(sharing="cyclic", recursion_lora_rank=r))
    block_matmul = 3 * d * d + d * d + d * 128 + 128 * d
    block_params = block_matmul + 2 * d  # two LayerNorms without bias
    lora = r * (d + 3 * d) + r * (d + d) + r * (d + 128) + r * (128 + d)  # A and B of qkv, proj, fc, proj
    assert parameter_count(model) == V * d + T * d + 2 * block_params + 4 * lora + d
    assert training_flops_per_token(model) == 6 * (4 * (block_matmul + lora) + V * d) + 4 * 12 * d * T
    # the kernels the count comes from (bench gpu times them): per depth the block's 4 products, then each
    # LoRA pair as x A^T (fan_in -> r) and B (r -> fan_out); the tied head last; 4 attention calls
    kernels = step_kernels(model)
    block = [(d, 3 * d), (d, d), (d, 128), (128, d)]
    pairs = [s for fan_in, fan_out in block for s in ((fan_in, r), (r, fan_out))]
    assert sorted(kernels.matmuls) == sorted(4 * (block + pairs) + [(d, V)]) and kernels.matmuls[-1] == (d, V)
    assert kernels.attention == [(4, 4, d // 4, T)] * 4  # 4 heads of 8
    # widths 16 -> 48 -> 16 (heads 1, 3, 1 of size 8), windows 4, 8, 16 (= full); projections in between
    model = GPT(tiny(depth=3, schedule={"widths": "small-large-small", "width_range": [16, 48],
                                        "windows": "increasing", "window_range": [4, 16]}))
    widths, keys = [16, 48, 16], [4, 8, 16]
    matmul = sum(12 * w * w for w in widths) + 2 * 16 * 48
    params = sum(12 * w * w + 2 * w for w in widths) + 2 * 16 * 48 + V * 16 + T * 16 + 16
    assert parameter_count(model) == params
    attention = sum(12 * w * k for w, k in zip(widths, keys, strict=True))
    assert training_flops_per_token(model) == 6 * (matmul + V * 16) + attention
    # an embedding of 48 around blocks of 32: projections 48 -> 32 in and 32 -> 48 out to the tied head
    e = 48
    model = GPT(tiny(embed_width=e))
    block = 12 * d * d
    assert parameter_count(model) == V * e + T * e + e * d + 4 * (block + 2 * d) + d + d * e
    assert training_flops_per_token(model) == 6 * (e * d + 4 * block + d * e + V * e) + 4 * 12 * d * T
    assert step_kernels(model).matmuls[-2:] == [(d, e), (e, V)]


def test_attention_only_counts_by_hand():
    d, V, T = 32, 40, 16
    model = GPT(tiny(mlp="none", depth=1))
    assert model.blocks[0].mlp is None
    assert parameter_count(model) == V * d + T * d + (4 * d * d + d) + d
    assert training_flops_per_token(model) == 6 * (4 * d * d + V * d) + 12 * d * T


def test_hooks_do_not_change_outputs_and_cost_nothing_unused():
    torch.manual_seed(0)
    model = GPT(tiny())
    idx = torch.randint(40, (2, 16))
    plain = model(idx)
    with capture(model, "attn.1", "resid_post.3") as seen:
        torch.testing.assert_close(model(idx), plain)
    assert seen["attn.1"].shape == (2, 4, 16, 16) and seen["resid_post.3"].shape == (2, 16, 32)
    assert not any(h.active for points in model.hooks.values() for h in points)
    with pytest.raises(ValueError, match="no hook point 'attn.9'"):
        with capture(model, "attn.9"):
            pass


def test_shorthands_and_config_errors():
    assert tiny(sharing="immediate").depth_order() == [0, 0, 1, 1]
    assert tiny(sharing="cyclic", depth=6, unique_blocks=3).depth_order() == [0, 1, 2, 0, 1, 2]
    assert tiny(sharing="all").depth_order() == [0, 0, 0, 0]
    assert ModelConfig(vocab_size=40, order=[0, 1, 0, 1, 0, 1]).depth == 6
    assert [s.window for s in tiny(schedule={"windows": "interleave", "window_range": [4, 16],
                                             "global_every": 2}).block_specs()] == [4, None, 4, None]
    for words, message in [
        (["model.order=[0,2]"], "must use every block"),
        (["model.depth=3", "model.order=[0,1]"], "order has 2 entries but depth is 3"),
        (["model.depth=3", "model.sharing=immediate", "model.unique_blocks=2"], "divisible by unique_blocks 2"),
        (["model.schedule.widths=increasing", "model.schedule.width_range=[16,64]"], "tied head needs"),
        # a width schedule without its range would leave every block at model.width, unsaid
        (["model.schedule.widths=decreasing"], r"widths = decreasing needs width_range = \[low, high\]"),
        (["model.blocks=[{width=24}, {}]"], "not a multiple of the head size 16"),
        (["model.attention=cosine"], "model.attention"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load_config("tiny", words)


def test_a_peaked_schedule_reaches_both_ends_of_its_range_at_any_block_count(tmp_path, capsys):
    """small-large-small on 4 blocks gave windows 16-64-64-16 for a range [16, 128] (the peak fell between the
    two middle blocks): no block reached the range's far end, which the config calls the widest block. A run
    begun under the old layout is refused on resume, not continued as another model."""
    import json

    from vslm import schedules
    from vslm.cli import main

    for n in range(3, 10):  # (2 blocks are both ends: the range's low end for small-large-small)
        for shape in ("small-large-small", "large-small-large"):
            f = schedules.shape_fractions(shape, n)
            assert f == f[::-1] and min(f) == 0.0 and max(f) == 1.0, (shape, n, f)
    assert schedules.windows("small-large-small", 16, 128, 4, 2) == [16, 128, 128, 16]
    assert schedules.widths("large-small-large", 72, 120, 6, 8) == [120, 96, 72, 72, 96, 120]
    words = ["model.depth=4", "model.schedule.windows=small-large-small", "model.schedule.window_range=[4, 32]",
             "train.steps=2", "train.checkpoint_every=2", "logging.progress=false", "data.max_bytes=200000",
             "logging.probe_every=0"]
    run = tmp_path / "run"
    assert main(["train", "tiny", *words, "--out", str(run)]) == 0
    summary = json.loads((run / "summary.json").read_text())
    summary["flops_per_token"] -= 1000  # as the old layout's smaller windows counted it
    (run / "summary.json").write_text(json.dumps(summary))
    capsys.readouterr()
    assert main(["train", "--resume", "--out", str(run), "train.steps=4"]) == 2
    out = capsys.readouterr()
    assert "before 2026-12-07 an even count of blocks never reached" in out.err
    assert "Preparing the corpus" not in out.out + out.err  # refused from the run's files alone, before the data
    assert main(["sample", str(run), "--tokens", "3"]) == 1  # its weights, loaded into the new windows: refused
    assert "its weights are of another model than its config builds now" in capsys.readouterr().err
    # stopped before its first checkpoint: no weights of the old layout to continue, so it trains again from 0
    for f in (run / "checkpoints").iterdir():
        f.unlink()
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text(lines[0] + "\n")
    summary = {k: v for k, v in summary.items() if k not in ("val_loss", "val_bpb", "final_step", "finished")}
    (run / "summary.json").write_text(json.dumps(summary))
    assert main(["train", "--resume", "--out", str(run)]) == 0
    assert "stopped before its first checkpoint" in capsys.readouterr().err
    assert json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 2


def test_key_counts_are_exact_under_bf16_scores():
    """SSMax's log n and sigmoid's -log n count the keys each query sees; with bf16 scores (CUDA autocast) the
    count was cast to bf16, whose integers past 256 are 2 apart (301 read as 300). Scores of 0, and 1 on the
    first key, make each weight known in closed form: sigmoid's 1 / (1 + n) (e / (e + n) on the first key),
    SSMax's n / (2n - 1) on the first key (its score scaled by log n) and 1 / (2n - 1) on each other."""
    T = 320
    visible = torch.ones(T, T, dtype=torch.bool).tril()
    scores = torch.zeros(1, 1, T, T, dtype=torch.bfloat16)
    scores[..., 0] = 1.0
    n = torch.arange(1, T + 1, dtype=torch.float64).view(T, 1)
    first = torch.zeros(T, T, dtype=torch.bool)
    first[:, 0] = True
    sigmoid = normalise(scores, visible, "sigmoid", 1.0, None)[0, 0].double()
    expected = torch.where(first, math.e / (math.e + n), 1 / (1 + n))
    torch.testing.assert_close(sigmoid, torch.where(visible, expected, 0.0), rtol=1e-6, atol=0)
    ssmax = normalise(scores, visible, "ssmax", 1.0, torch.ones(1))[0, 0].double()
    expected = torch.where(first, n / (2 * n - 1), 1 / (2 * n - 1))
    torch.testing.assert_close(ssmax, torch.where(visible, expected, 0.0), rtol=1e-5, atol=0)


@pytest.mark.parametrize("kind", ["ssmax", "sigmoid"])
def test_a_bf16_model_runs_the_attentions_that_count_keys(kind):
    """Their key counts are float32 (the test above), so their weights are too: a model cast to bf16, outside
    autocast, multiplied float32 weights into bf16 values (a dtype error in forward and in generate)."""
    cfg = load_config("tiny", [f"model.attention={kind}", "model.vocab_size=64"])
    torch.manual_seed(0)
    model = GPT(cfg.model).to(torch.bfloat16).eval()
    x = torch.randint(0, 64, (1, 8))
    with torch.no_grad():
        logits = model(x)
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits.float()).all()
    assert model.generate(x, 3).shape == (1, 11)
