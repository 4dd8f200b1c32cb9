"""Gate gain, zero initialisation, the entropy (sharpness) term and the detached exact proposal.

References: the gate's naive per-position loop (tests/test_attention.py) scaled by hand, entropies of
hand-built maps, and the two exact proposals compared in eval mode, where they compute the same thing.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from dualattn.attention import AttentionGate
from dualattn.models import create_model
from dualattn.models.base import normalized_entropy


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _unet(variant: str, **kw):
    return create_model("unet_encoder", variant=variant, features=4, img_size=32, **kw)


def test_gain_multiplies_the_potentials():
    torch.manual_seed(0)
    plain = AttentionGate(6, 5).double()
    gained = AttentionGate(6, 5, scale=7.5).double()
    gained.load_state_dict(plain.state_dict())
    v = torch.randn(2, 6, 4, 3, dtype=torch.float64)
    torch.testing.assert_close(gained.potentials(v), 7.5 * plain.potentials(v), rtol=1e-12, atol=0)
    # the softmax over all positions of the scaled potentials, written out
    ref = torch.softmax(7.5 * plain.potentials(v).flatten(1), dim=1).reshape(2, 4, 3)
    torch.testing.assert_close(gained(v)[1], ref, rtol=1e-12, atol=1e-15)
    assert gained.scale == 7.5 and "scale=7.5" in repr(gained)


def test_learned_gain_is_a_parameter_in_log_space_with_a_gradient():
    torch.manual_seed(0)
    gate = AttentionGate(4, 3, scale=4.0, learn_scale=True).double()
    assert "log_scale" in dict(gate.named_parameters())
    assert gate.scale == pytest.approx(4.0)
    v = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    def tau_of(log_s):
        return torch.func.functional_call(gate, {"log_scale": log_s}, (v,))[1]

    assert torch.autograd.gradcheck(tau_of, (gate.log_scale.detach().clone().requires_grad_(),))
    gate.potentials(v).sum().backward()
    assert gate.log_scale.grad is not None and torch.isfinite(gate.log_scale.grad)
    fixed = AttentionGate(4, 3, scale=4.0)
    assert "log_scale" not in dict(fixed.named_parameters()) and "log_scale" not in fixed.state_dict()


def test_zero_init_starts_uniform_and_leaves_zero_after_one_step():
    torch.manual_seed(0)
    gate = AttentionGate(4, 3, scale=32.0, zero_init=True)
    v = torch.randn(2, 4, 5, 5)
    _, tau = gate(v)
    torch.testing.assert_close(tau, torch.full_like(tau, 1 / 25))
    opt = torch.optim.Adam(gate.parameters(), lr=1e-2)
    target = torch.zeros(2, 5, 5)
    target[:, 0, 0] = 1
    (-(gate.log_attention(v) * target).sum()).backward()
    opt.step()
    assert gate.u.weight.abs().sum() > 0
    assert gate(v)[1][:, 0, 0].min() > 1 / 25


@pytest.mark.parametrize("scale", [0, -1.0, float("nan"), float("inf"), True, "2"])
def test_bad_gain_is_rejected(scale):
    with pytest.raises(ValueError, match="scale"):
        AttentionGate(4, 3, scale=scale)


def test_normalized_entropy_hand_computed():
    uniform = torch.full((3, 4, 4), -math.log(16))
    assert float(normalized_entropy([uniform])) == pytest.approx(1.0, abs=1e-6)
    one_hot = torch.full((2, 4, 4), -torch.inf)
    one_hot[:, 1, 2] = 0.0
    assert float(normalized_entropy([one_hot])) == pytest.approx(0.0, abs=1e-7)
    # half the mass on one cell, half spread evenly on 2 more: H = 0.5 log 2 + 2 * 0.25 log 4 = 1.5 log 2
    mixed = torch.full((1, 2, 4), -torch.inf)
    mixed[0, 0, 0], mixed[0, 0, 1], mixed[0, 1, 3] = math.log(0.5), math.log(0.25), math.log(0.25)
    assert float(normalized_entropy([mixed])) == pytest.approx(1.5 * math.log(2) / math.log(8), rel=1e-6)
    # the mean over maps: (1 + 0) / 2
    assert float(normalized_entropy([uniform[:2], one_hot])) == pytest.approx(0.5, abs=1e-6)


@pytest.mark.parametrize("variant", ["tau_k", "unconstrained", "kl", "dual", "exact", "multilevel"])
def test_entropy_weight_adds_beta_times_the_entropy_of_the_weighting_maps(variant):
    torch.manual_seed(0)
    kw = {"alpha": 0.0} if variant in ("kl", "dual") else {}
    model = _unet(variant, gate_scale=8.0, entropy_weight=0.7, **kw).train()
    x = torch.randn(3, 1, 32, 32)
    out = model.forward_with_attention(x)
    maps = out.mu if out.mu else out.tau
    expected = 0.7 * normalized_entropy([m.clamp_min(1e-38).log() for m in maps.values()])
    torch.testing.assert_close(out.penalty, expected, rtol=1e-5, atol=1e-6)
    plain = _unet(variant, gate_scale=8.0, **kw)
    plain.load_state_dict(model.state_dict())
    assert float(plain.train().forward_with_attention(x).penalty.detach()) == 0.0
    with pytest.raises(ValueError, match="entropy_weight"):
        _unet(variant, entropy_weight=-1.0)


def test_entropy_term_sharpens_the_maps_when_trained():
    torch.manual_seed(0)
    model = _unet("exact", gate_scale=16.0, gate_zero_init=True, entropy_weight=1.0).train()
    x, y = torch.randn(4, 1, 32, 32), torch.tensor([0, 1, 1, 0])
    opt = torch.optim.Adam(model.parameters(), lr=2e-2)
    first = None
    for _ in range(15):
        out = model.forward_with_attention(x)
        first = float(out.penalty) if first is None else first
        opt.zero_grad()
        # a uniform map is a stationary point of the entropy: the cross-entropy moves u off zero first
        (F.cross_entropy(out.logits, y) + out.penalty).backward()
        opt.step()
    assert first == pytest.approx(1.0, abs=1e-5)  # zero-initialised gates: uniform maps
    with torch.no_grad():
        assert float(model.forward_with_attention(x).penalty) < 0.8


@pytest.mark.parametrize("variant", ["exact", "multilevel"])
def test_detached_proposal_equals_the_graded_one_in_eval_and_saves_the_backward(variant):
    torch.manual_seed(0)
    det = _unet(variant, gate_scale=4.0)
    grad = _unet(variant, gate_scale=4.0, exact_proposal="grad")
    grad.load_state_dict(det.state_dict())
    x = torch.randn(3, 1, 32, 32)
    det.eval(), grad.eval()
    with torch.no_grad():
        a, b = det.forward_with_attention(x), grad.forward_with_attention(x)
    torch.testing.assert_close(a.logits, b.logits)
    for blk in a.mu:
        torch.testing.assert_close(a.mu[blk], b.mu[blk])
    # training: the proposal stages' BatchNorm statistics move once per step (the second pass only)
    det.train()
    bn = [m for m in det.backbone.stages["block4"].modules() if isinstance(m, torch.nn.BatchNorm2d)][0]
    before = int(bn.num_batches_tracked)
    out = det.forward_with_attention(x)
    assert int(bn.num_batches_tracked) == before + 1 and bn.training
    F.cross_entropy(out.logits, torch.tensor([0, 1, 0])).backward()
    # the coarse gate still learns (its input is a detached proposal), the stages learn from pass 2
    assert det.gates["block4"].U.weight.grad.abs().sum() > 0
    assert det.backbone.stages["block4"][1].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="exact_proposal"):
        _unet(variant, exact_proposal="nope")
