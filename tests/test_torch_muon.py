"""vslm's Muon against torch.optim.Muon's, through public names only: if a PyTorch release changes its
Muon (the iteration, the learning-rate rule, the state), these tests say so instead of training drifting."""

import pytest
import torch

import vslm.train.optim as optim
from vslm.train.optim import MUON_NS, Float32Muon, muon_lr, newton_schulz


def test_torch_has_the_public_muon_vslm_builds_on():
    assert hasattr(torch.optim, "Muon"), f"torch {torch.__version__} has no torch.optim.Muon (added in 2.9)"
    group = torch.optim.Muon([torch.zeros(2, 3, requires_grad=True)]).param_groups[0]
    for key in ("lr", "weight_decay", "momentum", "nesterov", "ns_coefficients", "ns_steps", "eps", "adjust_lr_fn"):
        assert key in group, f"torch.optim.Muon's parameter groups lost {key!r}"
    assert tuple(group["ns_coefficients"]) == MUON_NS and group["ns_steps"] == 5


@pytest.mark.parametrize("adjust_lr_fn", [None, "original", "match_rms_adamw"])
@pytest.mark.parametrize("nesterov", [True, False])
def test_muon_in_bfloat16_steps_bit_for_bit_as_torchs_muon(monkeypatch, adjust_lr_fn, nesterov):
    """torch.optim.Muon orthogonalises in bfloat16 on every device: run ours in bfloat16 too, on the CPU,
    and the weights and momentum buffers must be equal to the bit (lr rule, momentum, decay, iteration)."""
    monkeypatch.setattr(optim, "newton_schulz", lambda g, *a: newton_schulz(g, *a, dtype=torch.bfloat16))
    torch.manual_seed(0)
    weights = [torch.randn(16, 24, requires_grad=True), torch.randn(24, 8, requires_grad=True),
               torch.randn(5, 5, requires_grad=True)]
    copies = [w.detach().clone().requires_grad_() for w in weights]
    kwargs = dict(lr=0.02, weight_decay=0.1, momentum=0.9, nesterov=nesterov, adjust_lr_fn=adjust_lr_fn)
    ours, theirs = Float32Muon(weights, **kwargs), torch.optim.Muon(copies, **kwargs)
    for _ in range(3):
        for ws, opt in ((weights, ours), (copies, theirs)):
            sum((w**3).sum() for w in ws[:2]).backward()  # the third gets no gradient: skipped by both
            opt.step()
            opt.zero_grad()
    for w, c in zip(weights, copies, strict=True):
        torch.testing.assert_close(w, c, rtol=0, atol=0)
    assert ours.state_dict()["state"].keys() == theirs.state_dict()["state"].keys() == {0, 1}
    for i in (0, 1):
        torch.testing.assert_close(ours.state_dict()["state"][i]["momentum_buffer"],
                                   theirs.state_dict()["state"][i]["momentum_buffer"], rtol=0, atol=0)


def test_muon_lr_rule():
    assert muon_lr(0.1, None, torch.Size([32, 8])) == pytest.approx(0.1 * 2)
    assert muon_lr(0.1, "original", torch.Size([8, 32])) == pytest.approx(0.1)
    assert muon_lr(0.1, "match_rms_adamw", torch.Size([8, 32])) == pytest.approx(0.1 * 0.2 * 32**0.5)


def test_a_torch_muon_checkpoint_resumes_in_float32_muon():
    torch.manual_seed(1)
    w = torch.randn(6, 4, requires_grad=True)
    theirs = torch.optim.Muon([w], lr=0.01)
    (w**2).sum().backward()
    theirs.step()
    v = w.detach().clone().requires_grad_()
    ours = Float32Muon([v], lr=0.01)
    ours.load_state_dict(theirs.state_dict())
    loaded = ours.state[v]["momentum_buffer"].clone()
    torch.testing.assert_close(loaded, theirs.state[w]["momentum_buffer"], rtol=0, atol=0)
    (v**2).sum().backward()
    ours.step()  # continues the loaded momentum, not a fresh one
    torch.testing.assert_close(ours.state[v]["momentum_buffer"], loaded.lerp(v.grad, 1 - 0.95))
