"""AttentionGate (paper Eq. 1-3) against a naive per-position reference, 2D and 3D, dtypes and errors;
its gain (``scale``, ``learn_scale``) and zero initialisation."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from dualattn.attention import AttentionGate, log_softmax_grid


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: thread-pool overhead dominates on the shared 2-core machine (conftest restores it)."""
    torch.set_num_threads(1)



def naive_gate(gate: AttentionGate, v: torch.Tensor) -> torch.Tensor:
    """Per-position loop: phi_i = <u, relu(U v_i / max(||U v_i||, eps))>, softmax over all positions."""
    U = gate.U.weight.detach().reshape(gate.embed_channels, gate.in_channels).double()
    u = gate.u.weight.detach().reshape(gate.embed_channels).double()
    vd = v.double()
    grid = v.shape[2:]
    out = torch.empty((v.shape[0], *grid), dtype=torch.float64)
    for b in range(v.shape[0]):
        phis = {}
        for idx in itertools.product(*[range(g) for g in grid]):
            z = U @ vd[(b, slice(None), *idx)]
            z = z / max(float(z.norm()), gate.eps)
            phis[idx] = float(u @ torch.relu(z))
        m = max(phis.values())
        denom = sum(math.exp(p - m) for p in phis.values())
        for idx, p in phis.items():
            out[(b, *idx)] = math.exp(p - m) / denom
    return out


@pytest.mark.parametrize("dims,grid", [(2, (5, 4)), (3, (3, 2, 4))])
def test_gate_matches_naive_reference(dims, grid):
    torch.manual_seed(0)
    gate = AttentionGate(6, 5, spatial_dims=dims).double()
    torch.nn.init.normal_(gate.u.weight, std=3.0)
    v = torch.randn(2, 6, *grid, dtype=torch.float64)
    v_hat, tau = gate(v)
    ref = naive_gate(gate, v)
    torch.testing.assert_close(tau, ref, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(v_hat, v * ref.unsqueeze(1), rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(gate.log_attention(v), ref.log(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(tau.flatten(1).sum(1), torch.ones(2, dtype=torch.float64))


def test_gate_is_per_sample_independent():
    torch.manual_seed(1)
    gate = AttentionGate(4, 3)
    v = torch.randn(3, 4, 6, 6)
    _, tau = gate(v)
    v2 = v.clone()
    v2[0] = 100 * torch.randn(4, 6, 6)
    _, tau2 = gate(v2)
    assert torch.equal(tau2[1:], tau[1:])
    # batched equals one by one
    for b in range(3):
        torch.testing.assert_close(gate(v[b : b + 1])[1][0], tau[b])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gate_half_precision(dtype):
    torch.manual_seed(2)
    gate = AttentionGate(4, 8)
    torch.nn.init.normal_(gate.u.weight, std=50.0)  # very peaked potentials
    v = (torch.randn(2, 4, 8, 8) * 100).to(dtype)
    v_hat, tau = gate.to(dtype)(v)
    assert tau.dtype == dtype and v_hat.dtype == dtype
    assert bool(torch.isfinite(tau.float()).all()) and bool(torch.isfinite(v_hat.float()).all())
    torch.testing.assert_close(tau.float().flatten(1).sum(1), torch.ones(2), rtol=0, atol=2e-2)
    log_tau = gate.log_attention(v)
    assert log_tau.dtype == dtype and bool(torch.isfinite(log_tau.float()).all())


def test_gate_gradcheck_float64():
    torch.manual_seed(3)
    gate = AttentionGate(3, 4).double()
    v = torch.randn(2, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: gate(x)[0], (v,))
    assert torch.autograd.gradcheck(lambda x: gate.log_attention(x), (v,))


def test_gate_errors_name_values():
    with pytest.raises(ValueError, match="in_channels"):
        AttentionGate(0, 4)
    with pytest.raises(ValueError, match="embed_channels"):
        AttentionGate(3, 2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="spatial_dims"):
        AttentionGate(3, 4, spatial_dims=1)
    gate = AttentionGate(3, 4)
    with pytest.raises(ValueError, match="channels"):
        gate(torch.randn(1, 2, 4, 4))
    with pytest.raises(ValueError, match="spatial dims"):
        gate(torch.randn(1, 3, 4, 4, 4))


def test_log_softmax_grid_hand_computed():
    x = torch.tensor([[[0.0, math.log(3.0)]]])
    torch.testing.assert_close(log_softmax_grid(x).exp(), torch.tensor([[[0.25, 0.75]]]))
    half = log_softmax_grid(torch.tensor([[[1e4, -1e4]]], dtype=torch.bfloat16))
    assert half.dtype == torch.bfloat16 and bool(torch.isfinite(half.float()).all())


def test_gate_runs_its_submodules_so_hooks_see_them():
    gate = AttentionGate(3, 4)
    seen = []
    def hook(mod, inp, out):
        seen.append(type(mod).__name__)

    with_handles = [m.register_forward_hook(hook) for m in (gate.U, gate.u)]
    try:
        gate(torch.randn(1, 3, 4, 4))
    finally:
        for h in with_handles:
            h.remove()
    assert seen == ["Conv2d", "Conv2d"]


# ------------------------------------------------------------------ gain and zero initialisation
# References: the gate's naive per-position loop above scaled by hand, and a gradcheck of the learned gain.


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
