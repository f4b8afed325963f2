"""Optimizers and learning-rate schedules.

`train.optimizer` picks how the hidden matrices (the 2-D weights inside the blocks, width
projections, injections and LoRA) are updated; embeddings, the head, norms and biases always take
AdamW (RESEARCH.md section 6):
  adamw    AdamW everywhere (matrices and embeddings decay, gains and biases do not);
  muon     PyTorch's Muon (Newton-Schulz orthogonalised momentum) on hidden matrices;
  tangent  hyperspherical tangent descent on hidden matrices, per output row: the update u (the raw
           gradient, Adam's or Muon's) is projected onto the tangent space of the row's sphere,
           u_perp = u - (<w, u> / <w, w>) w, applied, and the row retracted to its norm before the
           step (without retraction this is OrthoGrad). No weight decay on projected matrices. With
           retraction, LoRA and the width projections (OFF_SPHERE: rows that start at zero) take AdamW.
           With tangent_when = "scale-invariant" it is AdamP (Heo et al. 2021): the projection only
           where every row's |cos(w, g)| < delta / sqrt(columns) (per row), else where the whole
           matrix's is below delta / sqrt(elements) (one sphere), and weight decay everywhere, at
           wd_ratio of it where the step was projected (delta 0.1, wd_ratio 0.1, AdamP's defaults).
An nGPT model (`model.ngpt`) takes any of them with no weight decay on its sphere matrices, which are
renormalised after every step (`GPT.normalize_`): nGPT's own recipe is AdamW without weight decay. Tangent
descent there projects onto each matrix's own spheres: rows, or columns for the matrices that write to the
stream.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
import torch.nn as nn

from vslm.config import TrainConfig
from vslm.model import GPT

MUON_NS = (3.4445, -4.7750, 2.0315)


# the adapters and width projections: LoRA (its B starts at zero, so its A gets no gradient until B moves) and the
# resize, inject and unembed projections (partial identities, whose extra rows start at zero). Retracted tangent
# descent keeps each row at its starting norm, so a zero row would stay zero: these take AdamW there.
OFF_SPHERE = ("lora.", "resize.", "inject.", "unembed.")


def is_hidden_matrix(name: str, p: torch.Tensor, retracted: bool = False) -> bool:
    """A matrix `train.optimizer` updates (the rest take AdamW); `retracted`: under tangent descent that keeps
    each row's norm, which leaves out OFF_SPHERE."""
    return p.dim() == 2 and not name.startswith(("embed.", "pos.", "head.", "root")) and not (
        retracted and name.startswith(OFF_SPHERE))


def build_optimizer(model: nn.Module, cfg: TrainConfig, fused: bool) -> Optimizers:
    """The optimizers of `cfg.optimizer`, stepped as one (then an nGPT model renormalised)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    along = {id(w): dim for w, dim in model.sphere_matrices()} if isinstance(model, GPT) else {}
    after = [model.normalize_] if along else []

    def decays(p: torch.Tensor) -> bool:  # matrices, but not nGPT's unit ones (the renormalisation would undo it)
        return p.dim() >= 2 and id(p) not in along

    if cfg.optimizer == "adamw":
        groups = [{"params": [p for _, p in named if decays(p)], "weight_decay": cfg.weight_decay},
                  {"params": [p for _, p in named if not decays(p)], "weight_decay": 0.0}]
        return Optimizers([torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, fused=fused)], after)
    retracted = cfg.optimizer == "tangent" and cfg.tangent_retract
    hidden = [p for n, p in named if is_hidden_matrix(n, p, retracted)]
    rest = [p for n, p in named if not is_hidden_matrix(n, p, retracted)]  # embeddings, head, gains, biases, scales
    adamw = torch.optim.AdamW([{"params": [p for p in rest if decays(p)], "weight_decay": cfg.weight_decay},
                               {"params": [p for p in rest if not decays(p)], "weight_decay": 0.0}],
                              lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, fused=fused)
    adamp = cfg.optimizer == "tangent" and cfg.tangent_when == "scale-invariant"
    # the hidden matrices off any sphere (decayed by Muon and AdamP), then nGPT's unit ones by the dimension of
    # their vectors (tangent descent projects and retracts on those spheres); a plain model has one group
    groups = [{"params": [p for p in hidden if decays(p)],
               "weight_decay": cfg.weight_decay if cfg.optimizer == "muon" or adamp else 0.0}]
    groups += [{"params": [p for p in hidden if along.get(id(p)) == dim], "weight_decay": 0.0, "along": dim}
               for dim in (1, 0)]
    groups = [g for g in groups if g["params"]]
    if cfg.optimizer == "muon":
        # match_rms_adamw scales each update to AdamW's RMS, so lr and weight decay carry over
        muon = torch.optim.Muon if hidden and hidden[0].is_cuda else Float32Muon
        main = muon(groups, lr=cfg.lr, momentum=cfg.momentum, adjust_lr_fn="match_rms_adamw")
    else:
        main = TangentDescent(groups, lr=cfg.lr, update=cfg.tangent_update, retract=cfg.tangent_retract,
                              betas=cfg.betas, eps=cfg.eps, momentum=cfg.momentum, when=cfg.tangent_when)
    for group in main.param_groups:
        group["lr_scale"] = cfg.hidden_lr_scale
    return Optimizers([main, adamw], after)


def newton_schulz(g: torch.Tensor, coefficients: tuple[float, float, float] = MUON_NS, steps: int = 5,
                  eps: float = 1e-7, *, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Muon's orthogonalisation of a matrix: torch.optim.Muon's Newton-Schulz iteration, in bfloat16 on
    CUDA as PyTorch runs it (bit for bit: tests/test_torch_muon.py), in float32 elsewhere: CPUs without
    bfloat16 matrix units run it about 40x slower in bfloat16 than in float32 (0.4 s against 0.01 s per
    step for the speed-run model, docs/BENCHMARKS.md). `dtype` overrides that choice."""
    a, b, c = coefficients
    x = g.to(dtype or (torch.bfloat16 if g.is_cuda else torch.float32))
    wide = x.T if x.size(0) > x.size(1) else x
    wide = wide / wide.norm().clamp(min=eps)  # spectral norm at most 1
    for _ in range(steps):
        gram = wide @ wide.T
        wide = torch.addmm(wide, torch.addmm(gram, gram, gram, beta=b, alpha=c), wide, beta=a)
    return wide.T if x.size(0) > x.size(1) else wide


def muon_lr(lr: float, adjust_lr_fn: str | None, shape: torch.Size) -> float:
    """torch.optim.Muon's learning rate for a matrix of `shape` (A rows, B columns): "original" (the
    default) scales it by sqrt(max(1, A / B)), "match_rms_adamw" by 0.2 sqrt(max(A, B)) so that the
    update's RMS is AdamW's."""
    rows, cols = shape[:2]
    if adjust_lr_fn is None or adjust_lr_fn == "original":
        return lr * math.sqrt(max(1, rows / cols))
    if adjust_lr_fn == "match_rms_adamw":
        return lr * 0.2 * math.sqrt(max(rows, cols))
    return lr


class Float32Muon(torch.optim.Muon):
    """PyTorch's Muon (its constructor, defaults, state and learning-rate rule) with the orthogonalisation
    of `newton_schulz` (float32 off CUDA). Only `step` is rewritten, as torch.optim.Muon's single-tensor
    step, with public calls only; tests/test_torch_muon.py checks it against torch.optim.Muon."""

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, momentum = group["lr"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if torch.is_complex(p) or p.grad.is_sparse:
                    raise RuntimeError("Muon supports neither complex parameters nor sparse gradients")
                g, state = p.grad, self.state[p]
                if "momentum_buffer" not in state:  # torch.optim.Muon's name: its checkpoints load here
                    state["momentum_buffer"] = torch.zeros_like(g, memory_format=torch.preserve_format)
                buf = state["momentum_buffer"]
                buf.lerp_(g, 1 - momentum)
                update = g.lerp(buf, momentum) if group["nesterov"] else buf
                update = newton_schulz(update, group["ns_coefficients"], group["ns_steps"], group["eps"])
                p.mul_(1 - lr * group["weight_decay"])
                p.add_(update.to(p.dtype), alpha=-muon_lr(lr, group["adjust_lr_fn"], p.shape))
        return loss


class Optimizers:
    """Several torch optimizers behind the one interface the loop uses. Each param group may carry
    `lr_scale`: its learning rate is the schedule's times that. `after` runs after every step (nGPT's
    renormalisation)."""

    def __init__(self, optimizers: list[torch.optim.Optimizer], after: list[Callable[[], None]] = ()):
        self.optimizers, self.after = optimizers, list(after)

    @property
    def param_groups(self) -> list[dict]:
        return [g for opt in self.optimizers for g in opt.param_groups]

    def set_lr(self, lr: float) -> None:
        for group in self.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)

    def step(self) -> None:
        for opt in self.optimizers:
            opt.step()
        for fn in self.after:
            fn()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"optimizers": [opt.state_dict() for opt in self.optimizers]}

    def load_state_dict(self, state: dict) -> None:
        for opt, s in zip(self.optimizers, state["optimizers"], strict=True):
            opt.load_state_dict(s)


def tangent_project(w: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """u minus its component along w, row by row: u - (<w_i, u_i> / <w_i, w_i>) w_i."""
    along = (w * u).sum(dim=1, keepdim=True) / (w * w).sum(dim=1, keepdim=True).clamp_min(1e-30)
    return u - along * w


def conditional_project(w: torch.Tensor, g: torch.Tensor, u: torch.Tensor, delta: float,
                        eps: float = 1e-8) -> torch.Tensor | None:
    """AdamP's projection (Heo et al. 2021): u projected row by row when every row's |cos(w, g)| is below
    delta / sqrt(columns), else onto the whole matrix's sphere when the flattened |cos(w, g)| is below
    delta / sqrt(elements); None (no projection) when neither holds: the weight is not scale-invariant."""
    for rows in (w.shape[0], 1):  # per output row, then the matrix as one vector
        wv, gv, uv = w.reshape(rows, -1), g.reshape(rows, -1), u.reshape(rows, -1)
        cos = torch.nn.functional.cosine_similarity(gv, wv, dim=1, eps=eps).abs()
        if cos.max() < delta / math.sqrt(wv.shape[1]):
            unit = wv / wv.norm(dim=1, keepdim=True).add(eps)
            return (uv - unit * (unit * uv).sum(dim=1, keepdim=True)).reshape(u.shape)
    return None


class TangentDescent(torch.optim.Optimizer):
    """Hyperspherical tangent descent on 2-D weights, per output row (see the module docstring)."""

    def __init__(self, params: Iterable[torch.Tensor], lr: float = 1e-3, update: str = "adam",
                 retract: bool = True, betas: tuple[float, float] = (0.9, 0.99), eps: float = 1e-8,
                 momentum: float = 0.95, when: str = "always", weight_decay: float = 0.0,
                 delta: float = 0.1, wd_ratio: float = 0.1, along: int = 1):
        if update not in ("raw", "adam", "muon"):
            raise ValueError(f"unknown tangent update {update!r}")
        if when not in ("always", "scale-invariant"):
            raise ValueError(f"unknown tangent condition {when!r}")
        super().__init__(params, {"lr": lr, "update": update, "retract": retract, "betas": betas, "eps": eps,
                                  "momentum": momentum, "when": when, "weight_decay": weight_decay,
                                  "delta": delta, "wd_ratio": wd_ratio, "along": along})

    def __setstate__(self, state: dict) -> None:
        """load_state_dict's last step: groups saved before AdamP's settings existed get their defaults."""
        super().__setstate__(state)
        for group in self.param_groups:
            for key, value in (("when", "always"), ("weight_decay", 0.0), ("delta", 0.1), ("wd_ratio", 0.1),
                               ("along", 1)):
                group.setdefault(key, value)

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for w in group["params"]:
                if w.grad is None:
                    continue
                u = self._update(w, w.grad, group)
                # the spheres are rows (along = 1, the default), or columns (nGPT's matrices writing to the
                # stream): transposed views, so the in-place steps below land in w
                rows, grad = (w, w.grad) if group["along"] == 1 else (w.T, w.grad.T)
                u = u if group["along"] == 1 else u.T
                norms = rows.norm(dim=1, keepdim=True)
                decay = group["weight_decay"]
                if group["when"] == "always":
                    u = tangent_project(rows, u)
                elif (projected := conditional_project(rows, grad, u, group["delta"])) is not None:
                    u, decay = projected, decay * group["wd_ratio"]
                if decay:
                    rows.mul_(1 - group["lr"] * decay)
                rows.sub_(group["lr"] * u)
                if group["retract"]:
                    rows.mul_(norms / rows.norm(dim=1, keepdim=True).clamp_min(1e-30))

    def _update(self, w: torch.Tensor, g: torch.Tensor, group: dict) -> torch.Tensor:
        state = self.state[w]
        if group["update"] == "raw":
            return g
        if group["update"] == "muon":  # Nesterov momentum, orthogonalised, scaled to AdamW's RMS
            buf = state.setdefault("momentum", torch.zeros_like(g))
            buf.mul_(group["momentum"]).add_(g)
            ortho = newton_schulz(g + group["momentum"] * buf, MUON_NS, 5, 1e-7).to(g.dtype)
            return ortho * 0.2 * math.sqrt(max(w.shape))
        beta1, beta2 = group["betas"]
        if not state:
            state.update(step=0, exp_avg=torch.zeros_like(g), exp_avg_sq=torch.zeros_like(g))
        state["step"] += 1
        state["exp_avg"].lerp_(g, 1 - beta1)
        state["exp_avg_sq"].mul_(beta2).addcmul_(g, g, value=1 - beta2)
        m_hat = state["exp_avg"] / (1 - beta1 ** state["step"])
        v_hat = state["exp_avg_sq"] / (1 - beta2 ** state["step"])
        return m_hat / (v_hat.sqrt() + group["eps"])


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate for the update that follows `step` completed updates (0-based).

    Linear warm-up to `lr` over `warmup` steps, then: cosine to `min_lr` at `steps`; or
    warmup-stable-decay, flat until the last `decay_fraction` of the run, then linear to `min_lr`;
    or constant."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / (cfg.warmup + 1)
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "cosine":
        progress = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
        return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)
    decay_start = cfg.steps - round(cfg.decay_fraction * cfg.steps)
    if step < decay_start:
        return cfg.lr
    progress = min(1.0, (step - decay_start) / max(1, cfg.steps - decay_start))
    return cfg.lr + progress * (cfg.min_lr - cfg.lr)
