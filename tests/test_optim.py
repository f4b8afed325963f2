"""Optimizers: tangent descent's geometry, Muon's orthogonalisation, each lowers the loss, exact resume."""

import json
import re

import pytest
import torch
from torch.optim._muon import _zeropower_via_newtonschulz

from conftest import tiny_overrides
from vslm.config import load_config
from vslm.errors import ConfigError
from vslm.train.callbacks import Callback
from vslm.train.checkpoint import list_checkpoints
from vslm.train.optim import MUON_NS, Float32Muon, TangentDescent, newton_schulz, tangent_project
from vslm.train.trainer import Trainer, default_callbacks


def test_tangent_projection_is_orthogonal_per_row():
    w, u = torch.randn(6, 10), torch.randn(6, 10)
    u_perp = tangent_project(w, u)
    torch.testing.assert_close((w * u_perp).sum(1), torch.zeros(6), atol=1e-5, rtol=0)
    brute = torch.stack([u[i] - (w[i] @ u[i]) / (w[i] @ w[i]) * w[i] for i in range(6)])
    torch.testing.assert_close(u_perp, brute)


@pytest.mark.parametrize("update", ["raw", "adam", "muon"])
def test_tangent_descent_keeps_row_norms(update):
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(8, 16))
    norms = w.detach().norm(dim=1).clone()
    opt = TangentDescent([w], lr=0.05, update=update)
    target = torch.randn(8, 16)
    for _ in range(20):
        loss = ((w - target) ** 2).sum()
        loss.backward()
        opt.step()
        opt.zero_grad()
    torch.testing.assert_close(w.detach().norm(dim=1), norms, atol=1e-5, rtol=0)
    free = torch.nn.Parameter(torch.randn(8, 16))
    orthograd = TangentDescent([free], lr=0.05, update=update, retract=False)  # OrthoGrad: norms drift up
    before = free.detach().norm(dim=1).clone()
    ((free - target) ** 2).sum().backward()
    orthograd.step()
    assert (free.detach().norm(dim=1) >= before - 1e-6).all()


@pytest.mark.parametrize("update", ["raw", "adam", "muon"])
def test_tangent_descent_along_columns_keeps_column_norms_and_steps_as_on_the_transpose(update):
    """along = 0 (nGPT's matrices writing to the stream): each column on its sphere, every step the same as
    the row-wise optimizer takes on the transposed matrix."""
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(8, 16))
    wt = torch.nn.Parameter(w.detach().T.clone())
    cols = TangentDescent([{"params": [w], "along": 0}], lr=0.05, update=update)
    rows = TangentDescent([wt], lr=0.05, update=update)
    norms = w.detach().norm(dim=0).clone()
    target = torch.randn(8, 16)
    for _ in range(5):
        ((w - target) ** 2).sum().backward()
        ((wt - target.T) ** 2).sum().backward()
        cols.step(), rows.step()
        cols.zero_grad(), rows.zero_grad()
    torch.testing.assert_close(w.detach().norm(dim=0), norms, atol=1e-5, rtol=0)
    torch.testing.assert_close(w.detach(), wt.detach().T, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shape", [(32, 64), (64, 32)])
def test_muon_orthogonalisation_is_near_orthogonal_and_float32_matches_pytorchs(shape):
    g = torch.randn(*shape)
    o = newton_schulz(g)
    assert o.dtype == torch.float32 and o.shape == g.shape
    s = torch.linalg.svdvals(o)
    assert s.min() > 0.5 and s.max() < 1.5  # Newton-Schulz gives singular values in about (0.7, 1.2)
    assert torch.linalg.svdvals(g).max() / torch.linalg.svdvals(g).min() > 3  # the input was far from it
    reference = _zeropower_via_newtonschulz(g, MUON_NS, 5, 1e-7).float()  # PyTorch's, in bfloat16
    assert (o - reference).norm() / reference.norm() < 0.03  # equal up to bfloat16's rounding


def test_float32_muon_steps_as_pytorchs_muon_with_the_float32_orthogonalisation(monkeypatch):
    torch.manual_seed(0)
    weights = [torch.randn(16, 24, requires_grad=True), torch.randn(24, 8, requires_grad=True)]
    copies = [w.detach().clone().requires_grad_() for w in weights]
    ours = Float32Muon(weights, lr=0.02, weight_decay=0.1, adjust_lr_fn="match_rms_adamw")
    theirs = torch.optim.Muon(copies, lr=0.02, weight_decay=0.1, adjust_lr_fn="match_rms_adamw")
    import torch.optim._muon as muon_module

    monkeypatch.setattr(muon_module, "_zeropower_via_newtonschulz", lambda g, *args: newton_schulz(g, *args))
    for _ in range(3):
        for ws, opt in ((weights, ours), (copies, theirs)):
            sum((w**3).sum() for w in ws).backward()
            opt.step()
            opt.zero_grad()
    for w, c in zip(weights, copies, strict=True):
        torch.testing.assert_close(w, c, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("words", [["train.optimizer=adamw"], ["train.optimizer=muon"],
                                   ["train.optimizer=tangent", "train.tangent_update=adam"],
                                   ["train.optimizer=tangent", "train.tangent_update=muon"]])
def test_each_optimizer_lowers_the_loss_and_tangent_holds_norms(tmp_path, words):
    cfg = load_config("tiny", tiny_overrides(train__steps=40, train__eval_every=0, logging__diagnostics_every=20)
                      + words)
    Trainer(cfg, tmp_path / "r").fit()
    lines = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["val_loss"] < lines[0]["loss"] - 0.5
    diag = [ln for ln in lines if any(k.startswith("diag/") for k in ln)]
    assert [ln["step"] for ln in diag] == [20, 40]
    norms = [ln["diag/blocks.0.mlp.fc/row_norm"] for ln in diag]
    if "train.optimizer=tangent" in words:
        assert norms[0] == pytest.approx(norms[1], rel=1e-5)
        assert abs(diag[1]["diag/blocks.0.mlp.fc/cos_w_grad"]) < 0.5


def test_weight_diagnostics_are_of_their_own_step_whatever_the_logging_interval(tmp_path):
    """diagnostics_every=5 with log_every=3 logged at steps 6, 10, 15, 20: step 6's update ratio spanned two
    updates (0.148 against step 5's 0.073). Diagnostics are logged on their own steps now, and equal those of
    a run that logs every step."""
    def diag(log_every: int) -> dict:
        cfg = load_config("tiny", tiny_overrides(train__steps=20, train__eval_every=0, logging__diagnostics_every=5,
                                                 logging__log_every=log_every, logging__probe_every=0))
        Trainer(cfg, tmp_path / f"every-{log_every}").fit()
        lines = [json.loads(x) for x in (tmp_path / f"every-{log_every}" / "metrics.jsonl").read_text().splitlines()]
        return {ln["step"]: {k: v for k, v in ln.items() if k.startswith("diag/")} for ln in lines
                if any(k.startswith("diag/") for k in ln)}

    sparse, every = diag(3), diag(1)
    assert list(sparse) == [5, 10, 15, 20] and sparse == every


def test_weight_diagnostics_equal_their_definitions_on_the_step_s_own_weights_and_gradient(tmp_path):
    """row norm (mean, spread), cos(row, its gradient) and ||dW|| / ||W||, computed here from the weights and
    gradient of step 4's update and the weights after it, for every hidden matrix."""
    from vslm.train.optim import is_hidden_matrix

    class Capture(Callback):
        def on_before_update(self, trainer) -> None:
            if trainer.step + 1 == 4:
                self.before = {n: (p.detach().clone(), p.grad.clone()) for n, p in trainer.model.named_parameters()
                               if is_hidden_matrix(n, p) and p.grad is not None}

        def on_step_end(self, trainer, metrics) -> None:
            if trainer.step == 4:
                self.after = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if n in self.before}

    capture = Capture()
    cfg = load_config("tiny", tiny_overrides(train__steps=4, train__eval_every=0, logging__diagnostics_every=4,
                                             logging__probe_every=0))
    Trainer(cfg, tmp_path / "r", callbacks=[*default_callbacks(cfg), capture]).fit()
    line = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()][-1]
    assert line["step"] == 4 and len(capture.before) >= 4
    for name, (w, g) in capture.before.items():
        key, after = f"diag/{name.removesuffix('.weight')}", capture.after[name]
        norms = after.norm(dim=1)
        assert line[f"{key}/row_norm"] == pytest.approx(norms.mean().item(), abs=2e-6)
        assert line[f"{key}/row_norm_spread"] == pytest.approx((norms.std() / norms.mean()).item(), abs=2e-6)
        assert line[f"{key}/cos_w_grad"] == pytest.approx(
            torch.nn.functional.cosine_similarity(w, g, dim=1).mean().item(), abs=2e-6)
        assert line[f"{key}/update_ratio"] == pytest.approx(((after - w).norm() / w.norm()).item(), rel=1e-5)


class Interrupted(Exception):
    pass


class StopAt(Callback):
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, trainer, metrics):
        if trainer.step == self.step:
            raise Interrupted


@pytest.mark.parametrize("extra", [["train.optimizer=muon"], ["train.optimizer=tangent"],
                                   ["model.ngpt=true", "model.position=rope"],  # nGPT's renormalised matrices
                                   ["model.ngpt=true", "model.position=rope", "train.optimizer=tangent"]])
def test_optimizer_state_survives_exact_resume(tmp_path, extra):
    words = tiny_overrides(train__steps=12, train__checkpoint_every=6, train__eval_every=0, train__keep_last=3)
    cfg = load_config("tiny", words + extra)
    Trainer(cfg, tmp_path / "a").fit()
    with pytest.raises(Interrupted):
        Trainer(cfg, tmp_path / "b", callbacks=[*default_callbacks(cfg), StopAt(8)]).fit()
    Trainer(cfg, tmp_path / "b", resume=True).fit()  # from the checkpoint at step 6
    losses = [[json.loads(x)["loss"] for x in (tmp_path / r / "metrics.jsonl").read_text().splitlines()]
              for r in ("a", "b")]
    assert losses[0] == losses[1]
    assert [s for s, _ in list_checkpoints(tmp_path / "b" / "checkpoints")][-1] == 12


def adamp_reference(w: torch.Tensor, grads: list[torch.Tensor], lr: float, wd: float, betas=(0.9, 0.99),
                    eps: float = 1e-8, delta: float = 0.1, wd_ratio: float = 0.1) -> torch.Tensor:
    """AdamP's steps written out from the paper (Heo et al. 2021, Algorithm 2), loop by loop, in float64."""
    w, m, v = w.double().clone(), torch.zeros_like(w, dtype=torch.float64), torch.zeros_like(w, dtype=torch.float64)
    for t, g in enumerate(grads, start=1):
        g = g.double()
        m = betas[0] * m + (1 - betas[0]) * g
        v = betas[1] * v + (1 - betas[1]) * g * g
        p = (m / (1 - betas[0] ** t)) / ((v / (1 - betas[1] ** t)).sqrt() + eps)
        decay = wd
        rows_cos = [abs(torch.dot(w[i], g[i]) / (w[i].norm() * g[i].norm())).item() for i in range(w.shape[0])]
        whole = abs(torch.dot(w.flatten(), g.flatten()) / (w.norm() * g.norm())).item()
        if max(rows_cos) < delta / w.shape[1] ** 0.5:
            for i in range(w.shape[0]):
                unit = w[i] / w[i].norm()
                p[i] = p[i] - unit * torch.dot(unit, p[i])
            decay = wd * wd_ratio
        elif whole < delta / w.numel() ** 0.5:
            unit = w.flatten() / w.norm()
            p = (p.flatten() - unit * torch.dot(unit, p.flatten())).view_as(p)
            decay = wd * wd_ratio
        w = w * (1 - lr * decay) - lr * p
    return w


@pytest.mark.parametrize("kind", ["rows", "matrix", "not-invariant"])
def test_adamp_steps_as_the_paper_and_as_adamw_where_nothing_is_scale_invariant(kind):
    torch.manual_seed(0)
    w0, x = torch.randn(6, 8, dtype=torch.float64), torch.randn(8, 16, dtype=torch.float64)

    def loss(w):
        if kind == "rows":  # invariant to each row's scale: the gradient is orthogonal to each row
            return ((w / w.norm(dim=1, keepdim=True)) @ x).tanh().sum()
        if kind == "matrix":  # invariant to the matrix's scale only
            return ((w / w.norm()) @ x).tanh().pow(2).sum()
        return (w @ x).pow(2).sum() / 100  # g = 2 w x x^T / 100: <w, g> = 2 |w x|^2 / 100 > 0, far from orthogonal

    w = w0.clone().requires_grad_(True)
    opt = TangentDescent([w], lr=0.05, update="adam", retract=False, when="scale-invariant", weight_decay=0.1)
    grads = []
    for _ in range(5):
        opt.zero_grad()
        loss(w).backward()
        grads.append(w.grad.clone())
        opt.step()
    # within 1e-8: AdamP adds eps = 1e-8 to the norm it divides by, the paper's algorithm does not
    torch.testing.assert_close(w.detach(), adamp_reference(w0, grads, lr=0.05, wd=0.1), rtol=1e-8, atol=1e-10)
    if kind == "not-invariant":  # no projection anywhere: AdamW, decoupled decay and all
        v = w0.clone().requires_grad_(True)
        adamw = torch.optim.AdamW([v], lr=0.05, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1)
        for _ in range(5):
            adamw.zero_grad()
            loss(v).backward()
            adamw.step()
        torch.testing.assert_close(w.detach(), v.detach(), rtol=1e-10, atol=1e-12)
    else:  # projected: the row norms (or the matrix's) move only by the decay and the second-order step
        assert not torch.allclose(w.detach(), w0)


def test_adamp_settings_are_checked():
    load_config("tiny", ["train.optimizer=tangent", "train.tangent_retract=false",
                         "train.tangent_when=scale-invariant"])
    for words in (["train.tangent_when=scale-invariant"],
                  ["train.optimizer=tangent", "train.tangent_when=scale-invariant"]):
        with pytest.raises(ConfigError, match="tangent_when = scale-invariant \\(AdamP\\) needs optimizer = tangent"):
            load_config("tiny", words)


def test_a_tangent_state_saved_before_adamps_settings_loads_and_steps():
    w = torch.nn.Parameter(torch.randn(4, 6))
    opt = TangentDescent([w], lr=0.01)
    w.grad = torch.randn(4, 6)
    opt.step()
    saved = opt.state_dict()
    for group in saved["param_groups"]:  # as written before tangent_when existed
        for key in ("when", "weight_decay", "delta", "wd_ratio"):
            del group[key]
    again = TangentDescent([w], lr=0.01)
    again.load_state_dict(saved)
    assert again.param_groups[0]["when"] == "always" and again.param_groups[0]["weight_decay"] == 0.0
    norms = w.norm(dim=1).clone()
    again.step()
    torch.testing.assert_close(w.norm(dim=1), norms)  # still tangent descent with retraction


def test_conditional_project_picks_rows_then_the_matrix_then_nothing():
    from vslm.train.optim import conditional_project

    torch.manual_seed(1)
    w, u = torch.randn(5, 7, dtype=torch.float64), torch.randn(5, 7, dtype=torch.float64)
    rows_g = tangent_project(w, torch.randn(5, 7, dtype=torch.float64))  # orthogonal to every row
    p = conditional_project(w, rows_g, u, delta=0.1)
    torch.testing.assert_close((p * w).sum(dim=1), torch.zeros(5, dtype=torch.float64), atol=1e-7, rtol=0)
    flat = torch.randn(35, dtype=torch.float64)
    whole_g = (flat - w.flatten() * (w.flatten() @ flat) / (w.flatten() @ w.flatten())).view(5, 7)
    p = conditional_project(w, whole_g, u, delta=0.1)  # orthogonal to the matrix, not to each row
    assert abs((p * w).sum().item()) < 1e-7 and (p * w).sum(dim=1).abs().max() > 1e-3
    assert conditional_project(w, w + 0.1 * u, u, delta=0.1) is None  # along w: not scale-invariant


def test_retracted_tangent_descent_leaves_loras_and_width_projections_to_adamw():
    """A row that starts at zero (LoRA's B, the extra rows of a projection to a wider block) stays at zero
    when every step retracts it to its norm: those matrices take AdamW, and learn."""
    import torch.nn.functional as F

    from vslm.model import GPT
    from vslm.train.optim import build_optimizer

    cfg = load_config("tiny", ["train.optimizer=tangent", "model.depth=3", "model.order=[0,0,1]",
                               "model.recursion_lora_rank=2", "model.blocks=[{width=32},{width=48,heads=3}]",
                               "model.tie_embeddings=false"]).with_vocab_size(40)
    torch.manual_seed(0)
    model = GPT(cfg.model)
    named = dict(model.named_parameters())
    before = {n: p.detach().clone() for n, p in named.items()}
    optimizers = build_optimizer(model, cfg.train, fused=False)
    tangent = {id(p) for group in optimizers.optimizers[0].param_groups for p in group["params"]}
    assert not any(id(named[n]) in tangent for n in named if n.startswith(("lora.", "resize.")))
    assert id(named["blocks.0.attn.qkv.weight"]) in tangent  # the blocks' matrices stay on their spheres
    for _ in range(3):
        x = torch.randint(0, 40, (4, 16), generator=torch.Generator().manual_seed(1))
        loss = F.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())
        optimizers.zero_grad()
        loss.backward()
        optimizers.step()
    lora_b = [n for n in named if n.startswith("lora.") and ".b." in n]
    assert lora_b and all(named[n].abs().max() > 0 for n in lora_b)  # zero at the start
    grown = named["resize.2.weight"][32:]  # the rows a 32-wide stream does not fill
    assert before["resize.2.weight"][32:].abs().max() == 0 and grown.abs().max() > 0


@pytest.mark.parametrize("overrides, message", [
    (["train.hidden_lr_scale=0.5"], "hidden_lr_scale scales the hidden matrices' lr under optimizer = muon or tangent"),
    (["train.momentum=0.9"], "momentum is Muon's"),
    (["train.optimizer=muon", "train.tangent_retract=false"], "tangent_update and tangent_retract apply to"),
    (["model.window=64"], "window 64 is longer than the context 32"),
    (["model.blocks=[{window=40}, {}]"], "blocks[0].window 40 is longer than the context 32")])
def test_a_setting_the_run_would_not_use_is_refused(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config("tiny", overrides)
    assert load_config("tiny", ["train.optimizer=muon", "train.hidden_lr_scale=0.5", "train.momentum=0.9"])
    assert load_config("tiny", ["model.window=32"]).model.block_specs()[0].window is None  # the context: full
