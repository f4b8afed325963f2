"""nGPT, the normalised transformer (model.ngpt, RESEARCH.md section 6): its forward is the paper's equations,
its matrices stay on the unit sphere through training under every optimizer, nothing decays them, frozen
matrices are left alone, and what would leave the sphere is refused (exact resume: tests/test_optim.py)."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_gpt, tiny_overrides
from vslm.config import load_config
from vslm.errors import ConfigError, UsageError
from vslm.model import GPT
from vslm.train.callbacks import Callback
from vslm.train.optim import build_optimizer
from vslm.train.trainer import Trainer, default_callbacks

NGPT = ["model.ngpt=true", "model.position=rope"]


def unit(x):
    return x / x.norm(dim=-1, keepdim=True)


def rope(x, base):
    """Rotary embedding of x (B, H, T, hd) at positions 0..T-1, pairs (i, i + hd/2) rotated by t * base^(-2i/hd)."""
    hd, T = x.shape[-1], x.shape[-2]
    freq = base ** (-torch.arange(0, hd, 2, dtype=torch.float64) / hd)
    angle = torch.arange(T, dtype=torch.float64)[:, None] * freq  # (T, hd/2)
    x1, x2 = x[..., : hd // 2], x[..., hd // 2 :]
    return torch.cat((x1 * angle.cos() - x2 * angle.sin(), x2 * angle.cos() + x1 * angle.sin()), dim=-1)


def ngpt_reference(model: GPT, idx: torch.Tensor) -> torch.Tensor:
    """nGPT's forward from the paper (Loshchilov et al. 2024, sections 2.1-2.6 and appendix A), in float64,
    from the model's weights. A learned scale s is stored as the paper stores it and used as
    s * s_init / s_scale: alpha (0.05, 1/sqrt(d)), s_qk (1, 1/sqrt(d)), s_uv (1, 1; used times sqrt(d)), s_z (1,
    1/sqrt(d))."""
    cfg, d = model.cfg, model.cfg.width
    E = model.embed.weight.double()
    h = unit(E[idx])  # (B, T, d)
    B, T = idx.shape
    for b in model.order:
        block, spec = model.blocks[b], model.specs[b]
        H, KV, hd = spec.heads, spec.kv_heads, spec.head_dim
        W = block.attn.qkv.weight.double()
        q = (h @ W[: H * hd].T).view(B, T, H, hd).transpose(1, 2)
        k = (h @ W[H * hd : (H + KV) * hd].T).view(B, T, KV, hd).transpose(1, 2)
        v = (h @ W[(H + KV) * hd :].T).view(B, T, KV, hd).transpose(1, 2)
        s_qk = (block.attn.qk_scale.weight.double() * (1.0 / (1 / math.sqrt(d)))).view(KV, 1, hd)
        q = s_qk.repeat_interleave(H // KV, dim=0) * unit(rope(q, cfg.rope_base))
        k = s_qk * unit(rope(k, cfg.rope_base))
        k, v = k.repeat_interleave(H // KV, dim=1), v.repeat_interleave(H // KV, dim=1)
        scores = math.sqrt(hd) * q @ k.transpose(-2, -1)  # softmax scale sqrt(d_k): q and k are unit vectors
        causal = torch.ones(T, T, dtype=torch.bool).tril()
        y = scores.masked_fill(~causal, float("-inf")).softmax(-1) @ v
        h_a = y.transpose(1, 2).reshape(B, T, H * hd) @ block.attn.proj.weight.double().T
        alpha_a = (block.attn_alpha.weight.double() * (0.05 / (1 / math.sqrt(d)))).abs()
        h = unit(h + alpha_a * (unit(h_a) - h))
        if block.mlp is not None:
            s_uv = block.mlp.hidden_scale.weight.double() * (1.0 / 1.0) * math.sqrt(d)
            uv = s_uv * (h @ block.mlp.fc.weight.double().T)
            gate, value = uv.chunk(2, dim=-1)  # this lab's SwiGLU: the gate is the first half
            h_m = (F.silu(gate) * value) @ block.mlp.proj.weight.double().T
            alpha_m = (block.mlp_alpha.weight.double() * (0.05 / (1 / math.sqrt(d)))).abs()
            h = unit(h + alpha_m * (unit(h_m) - h))
    s_z = model.logit_scale.weight.double() * (1.0 / (1 / math.sqrt(d)))
    head = model.embed.weight if model.head is None else model.head.weight
    return s_z * (h @ head.double().T)


@pytest.mark.parametrize("extra", [["model.mlp=swiglu", "model.heads=4", "model.kv_heads=2"],
                                   ["model.mlp=swiglu", "model.tie_embeddings=false", "model.depth=3",
                                    "model.order=[0,1,0]"]])
def test_the_forward_is_the_papers_equations(extra):
    model = tiny_gpt(NGPT + extra)  # every parameter moved off its init: scales apart, some rates negative
    model.normalize_()
    assert any((b.attn_alpha.weight < 0).any() for b in model.blocks)  # |alpha| is what the paper uses
    idx = torch.randint(0, 50, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model.double()(idx)
    # within the rounding of the model's RoPE tables, float32 by design (a formula wrong anywhere is off by 0.01-1)
    torch.testing.assert_close(logits, ngpt_reference(model, idx), atol=1e-6, rtol=1e-6)


def test_the_model_starts_on_the_sphere_at_the_papers_scales():
    model = GPT(load_config("tiny", NGPT + ["model.vocab_size=50"]).model)
    assert model.norm is None and all(b.attn_norm is None and b.mlp_norm is None for b in model.blocks)
    assert len(model.sphere_matrices()) == 1 + 4 * 2  # the tied embedding, four matrices per block
    assert_on_the_sphere(model)
    block = model.blocks[0]
    torch.testing.assert_close(block.attn_alpha(), torch.full((32,), 0.05))
    torch.testing.assert_close(block.attn.qk_scale(), torch.ones(32))
    torch.testing.assert_close(block.mlp.hidden_scale(), torch.full((128,), math.sqrt(32)))
    torch.testing.assert_close(model.logit_scale(), torch.ones(50))


def assert_on_the_sphere(model: GPT, atol: float = 1e-5) -> None:
    """Unit vectors along the width, named here and not read from the model: the embedding, the head and the
    matrices reading the stream by row, those writing to it (attention's and the MLP's output) by column."""
    by_row = [model.embed.weight] + ([] if model.head is None else [model.head.weight])
    by_column = []
    for block in model.blocks:
        by_row += [block.attn.qkv.weight] + ([block.mlp.fc.weight] if block.mlp is not None else [])
        by_column += [block.attn.proj.weight] + ([block.mlp.proj.weight] if block.mlp is not None else [])
    for w in by_row:
        torch.testing.assert_close(w.norm(dim=1), torch.ones(w.shape[0]), atol=atol, rtol=0)
    for w in by_column:
        torch.testing.assert_close(w.norm(dim=0), torch.ones(w.shape[1]), atol=atol, rtol=0)


class Record(Callback):
    """The model on its sphere after every step."""

    def __init__(self):
        self.steps = 0

    def on_step_end(self, trainer, metrics):
        assert_on_the_sphere(trainer.model)
        self.steps += 1


@pytest.mark.parametrize("optimizer", ["adamw", "muon", "tangent"])
def test_training_keeps_the_matrices_unit_and_lowers_the_loss(tmp_path, optimizer):
    cfg = load_config("tiny", tiny_overrides(train__steps=30, train__eval_every=0, train__checkpoint_every=0,
                                             train__optimizer=optimizer, train__lr="1e-2") + NGPT)
    record = Record()
    trainer = Trainer(cfg, tmp_path / "r", callbacks=[*default_callbacks(cfg), record])
    trainer.fit()
    assert record.steps == 30
    losses = [json.loads(x)["loss"] for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert losses[-1] < losses[0] - 0.5, losses  # 4.08 to 3.47 (AdamW), 3.55 (Muon) in 30 steps
    # no weight decay on a sphere matrix (train.weight_decay is 0.1): the renormalisation after every step
    # would undo it
    sphere = {id(w) for w, _ in trainer.model.sphere_matrices()}
    groups = [g for g in trainer.optimizer.param_groups if any(id(p) in sphere for p in g["params"])]
    assert cfg.train.weight_decay > 0 and groups and all(g["weight_decay"] == 0 for g in groups)


def test_a_step_renormalises_and_frozen_matrices_are_left_as_they_are():
    model = GPT(load_config("tiny", NGPT + ["model.vocab_size=50"]).model)
    model.embed.weight.requires_grad_(False)  # frozen, as under an adapter
    with torch.no_grad():
        model.embed.weight.mul_(2.0)
    frozen = model.embed.weight.clone()
    cfg = load_config("tiny", NGPT + ["train.lr=1.0"]).train  # a step far off the sphere
    optimizer = build_optimizer(model, cfg, fused=False)
    model(torch.randint(0, 50, (2, 16))).square().mean().backward()
    before = model.blocks[0].attn.qkv.weight.clone()
    optimizer.step()
    assert not torch.allclose(model.blocks[0].attn.qkv.weight, before)
    with torch.no_grad():
        model.embed.weight.div_(2.0)
    assert_on_the_sphere(model)
    assert torch.equal(model.embed.weight, frozen / 2.0)  # it was left at twice its unit rows


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_an_adapter_trains_and_leaves_the_base_model_as_it_was(optimizer):
    from vslm.knowledge.adapters import add_adapter

    model = GPT(load_config("tiny", NGPT + ["model.vocab_size=50"]).model)
    for p in model.parameters():
        p.requires_grad_(False)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    model = add_adapter(model, "a", rank=2)
    with torch.no_grad():  # B = 0 at the start: give the step something to move
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    cfg = load_config("tiny", NGPT + [f"train.optimizer={optimizer}", "train.lr=0.1"]).train
    opt = build_optimizer(model, cfg, fused=False)
    loras = {name: p.clone() for name, p in model.named_parameters() if p.requires_grad}
    model(torch.randint(0, 50, (2, 16))).square().mean().backward()
    opt.step()
    state = {k.replace(".base_layer", ""): v for k, v in model.state_dict().items()}  # peft wraps the matrices
    assert all(torch.equal(state[k], v) for k, v in base.items())
    assert all(not torch.equal(p, loras[name]) for name, p in model.named_parameters() if name in loras)
    # the adapter's matrices are on no sphere: they keep train.weight_decay
    lora_ids = {id(p) for name, p in model.named_parameters() if name in loras}
    decays = {g["weight_decay"] for g in opt.param_groups if any(id(p) in lora_ids for p in g["params"])}
    assert decays == {cfg.weight_decay} and cfg.weight_decay > 0


@pytest.mark.parametrize("extra, message", [
    (["model.bias=true"], "ngpt has no biases"),
    (["model.position=learned"], "ngpt needs position = rope"),
    (["model.root=learned", "model.inject=true"], "ngpt needs root = token and inject = false"),
    (["model.inject=true"], "ngpt needs root = token and inject = false"),
    (["model.embed_width=16"], "ngpt needs one width"),
    (["model.blocks=[{width=16, heads=1}, {width=32}]", "model.tie_embeddings=false"], "ngpt needs one width"),
    (["model.sharing=all", "model.recursion_lora_rank=2"], "ngpt refuses recursion_lora_rank"),
    (["model.init_std=0.01"], "init_std sizes the initial weights, and ngpt starts every matrix as random unit"),
    (["model.norm_eps=1e-6"], "norm_eps applies to norm layers, and ngpt has none"),
])
def test_what_would_leave_the_sphere_is_refused_in_one_line(extra, message):
    with pytest.raises(ConfigError, match=message) as err:
        load_config("tiny", ["model.ngpt=true", "model.position=rope"] + extra)
    assert "\n" not in str(err.value)


def test_export_refuses_ngpt():
    from vslm.interop.hf import family

    with pytest.raises(UsageError, match="model.ngpt = True: the normalised transformer"):
        family(load_config("tiny", NGPT + ["model.mlp=swiglu", "model.norm=rmsnorm"]).model)


def test_describe_names_the_normalisation_and_counts_the_scales(capsys):
    from vslm.cli import main
    from vslm.model import parameter_count

    assert main(["describe", "tiny", "model.ngpt=true", "model.position=rope", "model.vocab_size=50"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "rope positions, nGPT (unit stream, no norm layers), gelu" in out
    model = GPT(load_config("tiny", NGPT + ["model.vocab_size=50"]).model)
    # the scales: per block alpha_A, alpha_M (32 each), s_qk (32), s_u (128); s_z per token (50)
    assert parameter_count(model) == 50 * 32 + 2 * (4 * 32 * 32 + 2 * 32 * 128) + 2 * (3 * 32 + 128) + 50
    assert f"parameters {parameter_count(model):,}" in out
