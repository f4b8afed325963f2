import importlib.util
import math

import pytest
import torch
import torch.nn.functional as F

from conftest import REFERENCE
from vslm.config import ModelConfig, load_config
from vslm.model import GPT, parameter_count, training_flops_per_token
from vslm.model.attention import window_mask


def nanogpt_cfg(**kw) -> ModelConfig:
    base = load_config("nanogpt-shakespeare").model
    return base.model_copy(update={"vocab_size": 65, **kw})


@pytest.mark.skipif(not REFERENCE.is_file(), reason="shared/bench/reference_gpt.py not present")
def test_nanogpt_preset_matches_reference_logits():
    spec = importlib.util.spec_from_file_location("reference_gpt", REFERENCE)
    ref_mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ref_mod)
    torch.manual_seed(0)
    ref = ref_mod.GPT(65, 64, 4, 4, 128)
    ours = GPT(nanogpt_cfg())
    names = {"tok.weight": "embed.weight", "pos.weight": "pos.weight", "ln_f.weight": "norm.weight"}
    for i in range(4):
        for a, b in [("ln1", "attn_norm"), ("qkv", "attn.qkv"), ("proj", "attn.proj"), ("ln2", "mlp_norm"),
                     ("fc", "mlp.fc"), ("out", "mlp.proj")]:
            names[f"blocks.{i}.{a}.weight"] = f"blocks.{i}.{b}.weight"
    ref_state = {k: v for k, v in ref.state_dict().items() if k != "head.weight"}  # tied to tok.weight
    assert set(names) == set(ref_state)
    assert parameter_count(ours) == sum(p.numel() for p in ref.parameters())
    # same init: every tensor has the reference's distribution (std within 5%)
    ours_state = ours.state_dict()
    for a, b in names.items():
        assert ours_state[b].shape == ref_state[a].shape
        if ref_state[a].dim() == 2:
            assert ours_state[b].std().item() == pytest.approx(ref_state[a].std().item(), rel=0.05), a
    ours.load_state_dict({names[k]: v for k, v in ref_state.items()})

    captured = {}
    ref.head.register_forward_hook(lambda m, i, o: captured.setdefault("logits", o))
    idx = torch.randint(65, (3, 64))
    targets = torch.randint(65, (3, 64))
    ref_loss = ref(idx, targets)
    logits = ours(idx)
    torch.testing.assert_close(logits, captured["logits"], atol=1e-5, rtol=0)
    assert F.cross_entropy(logits.view(-1, 65), targets.view(-1)).item() == pytest.approx(ref_loss.item(), abs=1e-6)


@pytest.mark.parametrize(
    "variant",
    [
        {},
        {"position": "rope", "norm": "rmsnorm", "mlp": "swiglu"},
        {"mlp": "relu2", "tie_embeddings": False, "bias": True},
        {"kv_heads": 1, "position": "rope"},
        {"window": 8, "dropout": 0.1},
    ],
)
def test_variants_forward_backward(variant):
    cfg = ModelConfig(vocab_size=50, context=16, depth=2, width=32, heads=4, **variant)
    model = GPT(cfg)
    idx = torch.randint(50, (2, 16))
    logits = model(idx)
    assert logits.shape == (2, 16, 50)
    F.cross_entropy(logits.view(-1, 50), idx.view(-1)).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_dropout_draws_what_nn_dropout_draws_and_skips_only_what_draws_nothing():
    import torch.nn as nn

    from vslm.model.layers import dropout

    x = torch.randn(4, 8)
    torch.manual_seed(1)
    expected = nn.Dropout(0.2).train()(x)
    torch.manual_seed(1)
    assert torch.equal(dropout(x, 0.2, True), expected)
    torch.manual_seed(1)
    fresh = torch.get_rng_state()
    assert dropout(x, 0.2, False) is x and dropout(x, 0.0, True) is x  # no call where it is the identity
    nn.Dropout(0.0).train()(x), nn.Dropout(0.2).eval()(x)
    assert torch.equal(torch.get_rng_state(), fresh)  # nor does nn.Dropout draw there: skipping moves no later draw


def test_initial_loss_is_about_ln_v():
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=100, context=32, depth=2, width=64, heads=4))
    idx, targets = torch.randint(100, (8, 32)), torch.randint(100, (8, 32))
    loss = F.cross_entropy(model(idx).view(-1, 100), targets.view(-1)).item()
    assert loss == pytest.approx(math.log(100), abs=0.1)


def test_window_mask_equals_brute_force():
    T, w = 10, 3
    brute = torch.tensor([[0 <= i - j < w for j in range(T)] for i in range(T)])
    assert torch.equal(window_mask(T, w, torch.device("cpu")), brute)


def test_window_attention_ignores_keys_outside_the_window():
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=20, context=12, depth=1, width=16, heads=2, window=3, position="rope"))
    a = torch.randint(20, (1, 12))
    b = a.clone()
    b[0, :5] = (b[0, :5] + 1) % 20  # change tokens the last position cannot see (window 3, one layer)
    torch.testing.assert_close(model(a)[0, -1], model(b)[0, -1])
    assert not torch.allclose(model(a)[0, 6], model(b)[0, 6])


def test_causality():
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=20, context=12, depth=2, width=16, heads=2))
    a = torch.randint(20, (1, 12))
    b = a.clone()
    b[0, 7:] = (b[0, 7:] + 3) % 20
    torch.testing.assert_close(model(a)[0, :7], model(b)[0, :7])


def test_parameter_and_flop_counts_by_hand():
    # nanogpt preset, V=65, T=64, d=128, L=4: per block 12 d^2 (qkv 3d^2, proj d^2, mlp 8d^2) + 2 norms of d
    d, L, V, T = 128, 4, 65, 64
    model = GPT(nanogpt_cfg())
    assert parameter_count(model) == V * d + T * d + L * (12 * d * d + 2 * d) + d
    assert training_flops_per_token(model) == 6 * (L * 12 * d * d + V * d) + L * 12 * d * T
    # GQA, SwiGLU, window and untied head: qkv (4 + 2*1) heads of 8, proj 32x32, fc 32 -> 2*48, proj 48 -> 32
    cfg = ModelConfig(vocab_size=50, context=16, depth=2, width=32, heads=4, kv_heads=1, ffn=48, mlp="swiglu",
                      norm="rmsnorm", position="rope", tie_embeddings=False, window=4)
    model = GPT(cfg)
    block = 32 * 48 + 32 * 32 + 32 * 96 + 48 * 32
    assert parameter_count(model) == 2 * 50 * 32 + 2 * (block + 2 * 32) + 32
    assert training_flops_per_token(model) == 6 * (2 * block + 50 * 32) + 2 * 12 * 32 * 4


def test_generate_is_seeded():
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=20, context=8, depth=1, width=16, heads=2))
    start = torch.zeros(2, 1, dtype=torch.long)
    a = model.generate(start, 12, generator=torch.Generator().manual_seed(1))
    b = model.generate(start, 12, generator=torch.Generator().manual_seed(1))
    assert a.shape == (2, 13) and torch.equal(a, b)
