"""The gate's two forms (``form="single"`` | ``"cascaded"``) with and without bias: against a naive
per-position loop, parameter counts by hand, gradcheck in float64, half precision, zero start, hooks; the
classifier's ``gate_form`` / ``gate_bias``: every two-gate variant trains, exact maps stay consistent, and
the config (and a saved weights file) rebuilds the same model."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from dualattn.attention import GATE_FORMS, AttentionGate
from dualattn.models import count_parameters, create_model
from dualattn.weights import load_model, save_model

FORMS = [(form, bias) for form in GATE_FORMS for bias in (False, True)]


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: thread-pool overhead dominates on the shared 2-core machine (conftest restores it)."""
    torch.set_num_threads(1)


def _randomize(gate: AttentionGate, seed: int = 0, u_std: float = 3.0) -> AttentionGate:
    """Non-trivial weights and biases (PyTorch's init gives near-uniform maps)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in gate.named_parameters():
            if name != "log_scale":
                p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * (u_std if name.startswith("u.") else 1.0))
    return gate


def naive_gate(gate: AttentionGate, v: torch.Tensor) -> torch.Tensor:
    """Per-position loop in float64: z = relu(x / max(||x||, eps)) for x = U v_i + b (then U2 z + b2 for
    the cascaded form), phi_i = s (<u, z> + c), softmax over all positions."""

    def mat(conv):
        w = conv.weight.detach().double()
        b = conv.bias.detach().double() if conv.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64)
        return w.reshape(w.shape[0], w.shape[1]), b

    layers = [mat(gate.U)] + ([mat(gate.U2)] if gate.U2 is not None else [])
    u, c = mat(gate.u)
    grid = v.shape[2:]
    out = torch.empty((v.shape[0], *grid), dtype=torch.float64)
    for b in range(v.shape[0]):
        phis = {}
        for idx in itertools.product(*[range(g) for g in grid]):
            z = v[(b, slice(None), *idx)].double()
            for W, bias in layers:
                x = W @ z + bias
                z = torch.relu(x / max(float(x.norm()), gate.eps))
            phis[idx] = gate.scale * float(u[0] @ z + c[0])
        m = max(phis.values())
        denom = sum(math.exp(p - m) for p in phis.values())
        for idx, p in phis.items():
            out[(b, *idx)] = math.exp(p - m) / denom
    return out


# ---------------------------------------------------------------------------------------------- the gate


@pytest.mark.parametrize("form,bias", FORMS)
@pytest.mark.parametrize("dims,grid", [(2, (5, 4)), (3, (3, 2, 4))])
def test_gate_matches_naive_reference_and_sums_to_one(form, bias, dims, grid):
    torch.manual_seed(0)
    gate = _randomize(AttentionGate(6, 5, spatial_dims=dims, form=form, bias=bias, scale=2.0).double())
    v = torch.randn(2, 6, *grid, dtype=torch.float64)
    v_hat, tau = gate(v)
    assert v_hat.shape == v.shape and tau.shape == (2, *grid)
    ref = naive_gate(gate, v)
    torch.testing.assert_close(tau, ref, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(v_hat, v * ref.unsqueeze(1), rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(gate.log_attention(v), ref.log(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(tau.flatten(1).sum(1), torch.ones(2, dtype=torch.float64))


def _hand_count(form: str, bias: bool, c: int, e: int) -> int:
    if form == "single":  # U: C x E (+ b: E); u: E (+ c: 1)
        return c * e + e + (e + 1 if bias else 0)
    # U1: C x E (+ b1: E); U2: E x E (+ b2: E); u: E (+ c: 1)
    return c * e + e * e + e + (e + e + 1 if bias else 0)


@pytest.mark.parametrize("form,bias", FORMS)
def test_parameter_counts_by_hand(form, bias):
    gate = AttentionGate(7, 3, form=form, bias=bias)
    assert count_parameters(gate) == _hand_count(form, bias, 7, 3)
    expected = {"single": 7 * 3 + 3, "cascaded": 7 * 3 + 9 + 3}[form] + {"single": 4, "cascaded": 7}[form] * bias
    assert count_parameters(gate) == expected
    keys = set(gate.state_dict())
    assert {"U.weight", "u.weight"} <= keys
    assert ("U2.weight" in keys) == (form == "cascaded")
    assert ("u.bias" in keys) == bias and ("U.bias" in keys) == bias
    assert f"form={form}" in repr(gate) and f"bias={bias}" in repr(gate)


def test_default_is_the_single_bias_free_gate_with_unchanged_keys():
    """Weights saved before the option existed (keys U.weight, u.weight) still load into the default."""
    gate = AttentionGate(4, 3)
    assert gate.form == "single" and gate.use_bias is False and gate.U2 is None
    assert set(gate.state_dict()) == {"U.weight", "u.weight"}


def test_cascaded_gate_gradcheck_float64():
    torch.manual_seed(3)
    gate = _randomize(AttentionGate(3, 4, form="cascaded", bias=True).double(), seed=3, u_std=1.0)
    v = torch.randn(2, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: gate.log_attention(x), (v,))
    assert torch.autograd.gradcheck(lambda x: gate(x)[0], (v,))
    own = dict(gate.named_parameters())
    params = {k: own[k].detach().clone().requires_grad_() for k in ("U2.weight", "U2.bias")}
    names = list(params)

    def of_params(*ps):
        return torch.func.functional_call(gate, dict(zip(names, ps)), (v.detach(),))[1]

    assert torch.autograd.gradcheck(of_params, tuple(params.values()))


@pytest.mark.parametrize("dims", [2, 3])
def test_zero_init_cascaded_with_bias_is_exactly_uniform(dims):
    torch.manual_seed(0)
    gate = AttentionGate(4, 3, spatial_dims=dims, form="cascaded", bias=True, scale=32.0, zero_init=True)
    assert not gate.u.weight.detach().any() and not gate.u.bias.detach().any()
    grid = (5, 5) if dims == 2 else (3, 3, 3)
    v = torch.randn(2, 4, *grid)
    _, tau = gate(v)
    n = math.prod(grid)
    assert torch.equal(tau, torch.full_like(tau, 1 / n))
    opt = torch.optim.Adam(gate.parameters(), lr=1e-2)
    target = torch.zeros(2, *grid)
    target[(slice(None),) + (0,) * dims] = 1
    (-(gate.log_attention(v) * target).sum()).backward()
    opt.step()
    assert gate.u.weight.abs().sum() > 0
    assert gate(v)[1][(slice(None),) + (0,) * dims].min() > 1 / n


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("form", GATE_FORMS)
def test_half_precision_follows_float32_and_keeps_c(dtype, form):
    """The half path (float32 normalizations, ``u`` as a float32 contraction) gives the float32
    potentials, with the bias ``c`` of ``u`` included (set large so that leaving it out would show)."""
    torch.manual_seed(2)
    gate32 = _randomize(AttentionGate(4, 8, form=form, bias=True), seed=2)
    with torch.no_grad():
        gate32.u.bias.fill_(5.0)
    v = torch.randn(2, 4, 8, 8)
    half = AttentionGate(4, 8, form=form, bias=True).to(dtype)
    half.load_state_dict({k: p.to(dtype) for k, p in gate32.state_dict().items()})
    ref = AttentionGate(4, 8, form=form, bias=True)
    ref.load_state_dict({k: p.float() for k, p in half.state_dict().items()})  # the rounded weights in float32
    phi = half.potentials(v.to(dtype))
    assert phi.dtype == torch.float32
    torch.testing.assert_close(phi, ref.potentials(v.to(dtype).float()), rtol=0, atol=0.25)
    v_hat, tau = half(v.to(dtype))
    assert tau.dtype == dtype and v_hat.dtype == dtype and bool(torch.isfinite(tau.float()).all())
    torch.testing.assert_close(tau.float().flatten(1).sum(1), torch.ones(2), rtol=0, atol=2e-2)


def test_hooks_on_the_gate_submodules_see_them():
    gate = AttentionGate(3, 4, form="cascaded", bias=True)
    seen = []
    handles = [m.register_forward_hook(lambda mod, i, o, name=name: seen.append(name))
               for name, m in (("U", gate.U), ("U2", gate.U2), ("u", gate.u))]  # fmt: skip
    try:
        gate(torch.randn(1, 3, 4, 4))
    finally:
        for h in handles:
            h.remove()
    assert seen == ["U", "U2", "u"]


@pytest.mark.parametrize("bad", ["double", "Cascaded", None, 2])
def test_unknown_form_is_rejected_with_the_valid_ones(bad):
    with pytest.raises(ValueError, match="single, cascaded"):
        AttentionGate(4, 3, form=bad)


def test_non_bool_bias_is_rejected():
    with pytest.raises(ValueError, match="bias"):
        AttentionGate(4, 3, bias="yes")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------ the models

PAPER_GATE = {"gate_form": "cascaded", "gate_bias": True}


def _unet(variant: str, **kw):
    return create_model("unet_encoder", variant=variant, features=4, img_size=32, **kw)


def _marginal(fine: torch.Tensor, coarse_shape) -> torch.Tensor:
    """Sum of the fine map over each coarse cell's block (average pool times the block size)."""
    factors = [f // c for f, c in zip(fine.shape[1:], coarse_shape)]
    pool = F.avg_pool2d if fine.dim() == 3 else F.avg_pool3d
    return pool(fine.unsqueeze(1).double(), factors).squeeze(1) * math.prod(factors)


def _forward_backward(model, x):
    out = model.forward_with_attention(x)
    assert out.logits.shape == (x.shape[0], 2) and bool(torch.isfinite(out.logits).all())
    for tau in out.tau.values():
        torch.testing.assert_close(tau.flatten(1).sum(1), torch.ones(x.shape[0]), rtol=0, atol=1e-5)
    (F.cross_entropy(out.logits, torch.arange(x.shape[0]) % 2) + out.penalty).backward()
    for name, p in model.gates.named_parameters():
        assert p.grad is not None and bool(torch.isfinite(p.grad).all()), name
    return out


@pytest.mark.parametrize("variant", ["unconstrained", "dual", "exact", "multilevel"])
def test_every_two_gate_variant_trains_with_the_paper_gate_2d(variant):
    torch.manual_seed(0)
    model = _unet(variant, **PAPER_GATE).train()
    assert all(g.form == "cascaded" and g.use_bias and g.U2 is not None for g in model.gates.values())
    x = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    _forward_backward(model, x)
    for gate in model.gates.values():  # the second potential layer learns too
        assert float(gate.U2.weight.grad.abs().sum()) > 0 and float(gate.U2.bias.grad.abs().sum()) > 0


def test_the_paper_gate_trains_in_3d():
    torch.manual_seed(0)
    model = create_model("unet_encoder", variant="exact", features=2, in_channels=4, spatial_dims=3, img_size=16,
                         **PAPER_GATE)  # fmt: skip
    x = torch.randn(2, 4, 16, 16, 16, generator=torch.Generator().manual_seed(1))
    out = _forward_backward(model.train(), x)
    assert out.tau["block3"].shape == (2, 4, 4, 4) and out.tau["block4"].shape == (2, 2, 2, 2)


@pytest.mark.parametrize("variant,spatial_dims", [("exact", 2), ("multilevel", 2), ("exact", 3)])
def test_exact_maps_stay_consistent_with_the_paper_gate(variant, spatial_dims):
    torch.manual_seed(0)
    if spatial_dims == 2:
        model, x = _unet(variant, **PAPER_GATE), torch.randn(2, 1, 32, 32)
    else:
        model = create_model("unet_encoder", variant=variant, features=2, spatial_dims=3, img_size=16, **PAPER_GATE)
        x = torch.randn(2, 1, 16, 16, 16)
    model.eval()
    with torch.no_grad():
        for gate in model.gates.values():  # sharpen so the check is not trivially uniform
            gate.u.weight.mul_(30.0)
        out = model.forward_with_attention(x)
    blocks = model.attention_blocks
    assert max(float(t.flatten(1).max(1).values.max() * t[0].numel()) for t in out.tau.values()) > 1.5
    for fine, coarse in zip(blocks[:-1], blocks[1:]):
        torch.testing.assert_close(
            _marginal(out.mu[fine], out.mu[coarse].shape[1:]), out.mu[coarse].double(), atol=1e-6, rtol=0
        )


def test_model_parameter_count_by_hand():
    with torch.device("meta"):
        base = _unet("baseline")
        gated = _unet("unconstrained", **PAPER_GATE)
    # features=4: block3 has C = 16 channels, block4 C = 32; E = min(C, 64) = C
    assert count_parameters(gated) - count_parameters(base) == sum(
        _hand_count("cascaded", True, c, c) for c in (16, 32)
    ) == (16 * 16 + 16 * 16 + 3 * 16 + 1) + (32 * 32 + 32 * 32 + 3 * 32 + 1)


def _same_model(a, b, x):
    assert list(a.state_dict()) == list(b.state_dict())
    a.eval()
    b.eval()
    with torch.no_grad():
        out_a, out_b = a.forward_with_attention(x), b.forward_with_attention(x)
    assert torch.equal(out_a.logits, out_b.logits)
    for block in out_a.tau:
        assert torch.equal(out_a.tau[block], out_b.tau[block])


def test_config_round_trip_rebuilds_the_paper_gate(tmp_path):
    torch.manual_seed(0)
    model = _unet("exact", **PAPER_GATE)
    assert model.config["gate_form"] == "cascaded" and model.config["gate_bias"] is True
    with torch.no_grad():
        for gate in model.gates.values():
            _randomize(gate, seed=4)
    x = torch.randn(2, 1, 32, 32)
    rebuilt = create_model(**model.config)
    rebuilt.load_state_dict(model.state_dict())
    _same_model(model, rebuilt, x)
    loaded = load_model(save_model(model, tmp_path / "m.safetensors"))
    assert loaded.config == model.config
    _same_model(model, loaded, x)
    # the default gate cannot silently take the cascaded weights
    with pytest.raises(RuntimeError, match="U2"):
        _unet("exact").load_state_dict(model.state_dict())


def test_default_config_records_no_gate_form():
    """Configs saved before the option (and models built without it) rebuild the single bias-free gate."""
    model = _unet("exact")
    assert "gate_form" not in model.config and "gate_bias" not in model.config
    assert all(g.form == "single" and not g.use_bias for g in model.gates.values())


@pytest.mark.parametrize("bad", ["double", "paper"])
def test_invalid_gate_form_is_rejected_by_the_model(bad):
    with pytest.raises(ValueError, match=r"gate_form.*single, cascaded"):
        _unet("exact", gate_form=bad)
    with pytest.raises(ValueError, match="gate_form"):
        _unet("baseline", gate_form=bad)  # checked even when there is no gate to build


def test_invalid_gate_bias_is_rejected_by_the_model():
    with pytest.raises(ValueError, match="gate_bias"):
        _unet("exact", gate_bias="true")
