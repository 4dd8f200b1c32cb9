"""Numerics: gradients and finite values for extreme inputs, across the consistency layer, the gates,
the models and a training step.

Consistency layer: ``gradcheck`` in float64 of every differentiable function, per-sample independence,
inputs not mutated, logits of ±1e4, half precision, zero-mass blocks. Across the package: gates,
consistency and losses stay finite for logits up to ±1e4, all-equal maps, one-hot maps (exact zeros)
and under bf16 autocast on the CPU; a training step on an extreme batch never leaves NaN in the weights.

References: the closed form is compared to its float64 evaluation on the same (clamped) inputs and
to hand-computed cases (all-equal maps are already consistent; one-hot maps project to one-hot);
gradients to finite differences.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dualattn.attention import AttentionGate
from dualattn.consistency import (
    dual_penalty,
    kl_consistency,
    kl_divergence,
    log_marginalize,
    marginalize,
    project_exact,
    project_exact_chain,
    project_exact_chain_log,
    project_exact_log,
    reparameterize,
    reparameterize_log,
)

SCALES = [0.0, 1.0, 1e2, 1e3, 1e4]


@pytest.fixture(autouse=True)
def _few_threads():
    """Tiny tensors: thread-pool overhead dominates on the shared 2-core machine (conftest restores it)."""
    torch.set_num_threads(1)


def _maps(kind: str, b: int, grid: tuple[int, ...], *, seed: int, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if kind == "logits":
        z = torch.randn(b, *grid, generator=g, dtype=torch.float64) * scale
        return torch.softmax(z.flatten(1), 1).reshape(b, *grid)
    if kind == "equal":
        return torch.full((b, *grid), 1.0 / math.prod(grid), dtype=torch.float64)
    if kind == "onehot":
        t = torch.zeros(b, math.prod(grid), dtype=torch.float64)
        t[torch.arange(b), torch.randint(0, math.prod(grid), (b,), generator=g)] = 1.0
        return t.reshape(b, *grid)
    raise ValueError(kind)


def _finite(*ts: torch.Tensor) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in ts)


# --------------------------------------------------------------------------- consistency


def softmax_map(logits: torch.Tensor) -> torch.Tensor:
    return torch.softmax(logits.flatten(1), 1).reshape(logits.shape)


def leaf(*shape: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, dtype=torch.float64, generator=gen) * scale).requires_grad_(True)


# ------------------------------------------------------------------ consistency: gradcheck


@pytest.mark.parametrize(
    "batch,fine,coarse", [(2, (4, 4), (2, 2)), (1, (2, 6), (1, 3)), (1, (2, 2, 4), (1, 1, 2))]
)
def test_gradcheck_project_exact(batch, fine, coarse):
    a, b = leaf(batch, *fine, seed=0), leaf(batch, *coarse, seed=1)
    # through softmax so that the inputs move on the simplex, and directly on positive maps
    assert torch.autograd.gradcheck(lambda x, y: project_exact(softmax_map(x), softmax_map(y)), (a, b))
    pa = torch.rand(batch, *fine, dtype=torch.float64) + 0.1  # positive maps, normalized per sample
    pa = (pa / pa.flatten(1).sum(1).reshape(-1, *([1] * len(fine)))).requires_grad_(True)
    pb = torch.rand(batch, *coarse, dtype=torch.float64) + 0.1
    pb = (pb / pb.flatten(1).sum(1).reshape(-1, *([1] * len(coarse)))).requires_grad_(True)
    assert torch.autograd.gradcheck(project_exact, (pa, pb))
    assert torch.autograd.gradcheck(project_exact_log, (a, b))
    if batch == 1:
        assert torch.autograd.gradgradcheck(project_exact_log, (a, b))
        assert torch.autograd.gradgradcheck(project_exact, (pa, pb))


@pytest.mark.parametrize("weights", [None, [2.0, 0.5, 1.5]])
def test_gradcheck_chain(weights):
    xs = (leaf(1, 8, 4, seed=2), leaf(1, 4, 2, seed=3), leaf(1, 2, 1, seed=4))
    assert torch.autograd.gradcheck(lambda *x: project_exact_chain_log(list(x), weights), xs)
    assert torch.autograd.gradcheck(
        lambda *x: project_exact_chain([softmax_map(t) for t in x], weights), xs
    )


def test_gradcheck_reparameterize_and_penalties():
    a, b, lam = leaf(2, 2, 4, seed=5), leaf(2, 1, 2, seed=6), leaf(2, 1, 2, seed=7)
    shared = leaf(1, 2, seed=8)
    assert torch.autograd.gradcheck(lambda x, y, l: reparameterize(softmax_map(x), softmax_map(y), l), (a, b, lam))
    assert torch.autograd.gradcheck(lambda x, y, l: reparameterize(softmax_map(x), softmax_map(y), l), (a, b, shared))
    for red in ("none", "mean", "sum"):
        assert torch.autograd.gradcheck(
            lambda x, y, l: dual_penalty(softmax_map(x), softmax_map(y), l, reduction=red), (a, b, lam)
        )
    for reverse in (False, True):
        assert torch.autograd.gradcheck(
            lambda x, y: kl_consistency(softmax_map(x), softmax_map(y), reverse=reverse, reduction="none"), (a, b)
        )
    q = leaf(2, 2, 4, seed=9)
    assert torch.autograd.gradcheck(lambda x, y: kl_divergence(softmax_map(x), softmax_map(y)), (a, q))
    assert torch.autograd.gradcheck(lambda x: marginalize(x, (1, 2)), (a,))
    assert torch.autograd.gradcheck(lambda x: log_marginalize(x, (1, 2)), (a,))


def test_backward_matches_finite_difference_of_objective_value():
    """d/dtau of the optimal value equals the envelope-theorem gradient -mu/tau (up to a constant)."""
    lf, lc = leaf(1, 4, 4, seed=10), leaf(1, 2, 2, seed=11)
    log_k, log_l = project_exact_log(lf, lc)
    tk, tl = torch.log_softmax(lf.flatten(1), 1), torch.log_softmax(lc.flatten(1), 1)
    value = (log_k.exp().flatten(1) * (log_k.flatten(1) - tk)).sum()
    value = value + (log_l.exp().flatten(1) * (log_l.flatten(1) - tl)).sum()
    g_k, g_l = torch.autograd.grad(value, (lf, lc))
    # envelope theorem: dV/dlogtau_k = -mu_k + tau_k * sum(mu_k) (softmax chain rule)
    with torch.no_grad():
        mk, ml = log_k.exp(), log_l.exp()
        torch.testing.assert_close(g_k, -mk + tk.exp().reshape(mk.shape))
        torch.testing.assert_close(g_l, -ml + tl.exp().reshape(ml.shape))


# ------------------------------------------------------------------ consistency: per-sample independence


def test_changing_one_sample_leaves_the_others_bit_identical():
    gen = torch.Generator().manual_seed(12)
    tk = softmax_map(torch.randn(4, 8, 8, generator=gen))
    tl = softmax_map(torch.randn(4, 4, 4, generator=gen))
    t2 = softmax_map(torch.randn(4, 2, 2, generator=gen))
    lam = torch.randn(4, 4, 4, generator=gen)
    tk2, tl2, t22, lam2 = tk.clone(), tl.clone(), t2.clone(), lam.clone()
    tk2[0] = softmax_map(50 * torch.randn(1, 8, 8, generator=gen))[0]
    tl2[0] = softmax_map(50 * torch.randn(1, 4, 4, generator=gen))[0]
    t22[0] = softmax_map(torch.randn(1, 2, 2, generator=gen))[0]
    lam2[0] = 100.0
    outs = [
        lambda a, b, c, l: project_exact(a, b),
        lambda a, b, c, l: project_exact_chain([a, b, c]),
        lambda a, b, c, l: reparameterize(a, b, l),
        lambda a, b, c, l: (dual_penalty(a, b, l, reduction="none"),),
        lambda a, b, c, l: (
            kl_consistency(a, b, reduction="none"),
            kl_consistency(a, b, reverse=True, reduction="none"),
        ),
    ]
    for fn in outs:
        ref = fn(tk, tl, t2, lam)
        new = fn(tk2, tl2, t22, lam2)
        for r, n in zip(ref, new):
            assert torch.equal(r[1:], n[1:])
            assert not torch.equal(r[0], n[0])
        # batched equals one by one
        for b in range(4):
            single = fn(tk[b : b + 1], tl[b : b + 1], t2[b : b + 1], lam[b : b + 1])
            for r, s in zip(ref, single):
                torch.testing.assert_close(r[b : b + 1], s, rtol=1e-6, atol=1e-7)


def test_inputs_are_not_mutated():
    tk = softmax_map(torch.randn(2, 4, 4))
    tl = softmax_map(torch.randn(2, 2, 2))
    ck, cl = tk.clone(), tl.clone()
    project_exact(tk, tl)
    project_exact_chain([tk, tl])
    dual_penalty(tk, tl, torch.ones(2, 2))
    assert torch.equal(tk, ck) and torch.equal(tl, cl)


# ------------------------------------------------------------------ consistency: extreme values and precision


def _is_distribution(x: torch.Tensor, atol: float) -> bool:
    xf = x.float()
    return bool(torch.isfinite(xf).all()) and bool((xf >= 0).all()) and bool(
        torch.allclose(xf.flatten(1).sum(1), torch.ones(x.shape[0]), atol=atol, rtol=0)
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_logits_of_1e4_give_finite_distributions(dtype):
    gen = torch.Generator().manual_seed(13)
    lf = (torch.randint(0, 2, (3, 8, 8), generator=gen) * 2 - 1).to(dtype) * 1e4
    lc = (torch.randint(0, 2, (3, 4, 4), generator=gen) * 2 - 1).to(dtype) * 1e4
    lf[:, 0, 0] = 1e4  # at least one finite-mass cell
    lf.requires_grad_(True)
    lc.requires_grad_(True)
    log_k, log_l = project_exact_log(lf, lc)
    assert bool(torch.isfinite(log_k).all()) and bool(torch.isfinite(log_l).all())
    assert _is_distribution(log_k.exp(), 1e-5) and _is_distribution(log_l.exp(), 1e-5)
    torch.testing.assert_close(log_marginalize(log_k, (4, 4)).exp(), log_l.exp(), atol=1e-6, rtol=0)
    (log_k.exp().sum() + log_l.exp().pow(2).sum()).backward()
    assert bool(torch.isfinite(lf.grad).all()) and bool(torch.isfinite(lc.grad).all())
    # probability space: softmax of such logits has exact zeros
    tk, tl = softmax_map(lf.detach()).requires_grad_(True), softmax_map(lc.detach()).requires_grad_(True)
    mu_k, mu_l = project_exact(tk, tl)
    assert _is_distribution(mu_k, 1e-5) and _is_distribution(mu_l, 1e-5)
    loss = mu_k.pow(2).sum() + mu_l.pow(2).sum() + dual_penalty(tk, tl, torch.ones(4, 4, dtype=dtype))
    loss = loss + kl_consistency(tk, tl) + kl_consistency(tk, tl, reverse=True)
    assert bool(torch.isfinite(loss))
    loss.backward()
    assert bool(torch.isfinite(tk.grad).all()) and bool(torch.isfinite(tl.grad).all())
    mus = project_exact_chain([tk.detach(), tl.detach(), marginalize(tl.detach(), (2, 2))])
    assert all(_is_distribution(m, 1e-5) for m in mus)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs(dtype):
    gen = torch.Generator().manual_seed(14)
    lf32 = torch.randn(3, 8, 8, generator=gen) * 30
    lc32 = torch.randn(3, 4, 4, generator=gen) * 30
    tk, tl = softmax_map(lf32).to(dtype), softmax_map(lc32).to(dtype)
    mu_k, mu_l = project_exact(tk, tl)
    assert mu_k.dtype == dtype and mu_l.dtype == dtype
    assert _is_distribution(mu_k, 2e-2) and _is_distribution(mu_l, 2e-2)
    ref_k, ref_l = project_exact(tk.float(), tl.float())
    torch.testing.assert_close(mu_k.float(), ref_k, atol=1e-2, rtol=1e-2)
    torch.testing.assert_close(mu_l.float(), ref_l, atol=1e-2, rtol=1e-2)
    log_k, log_l = project_exact_log((lf32 * 300).to(dtype), (lc32 * 300).to(dtype))
    assert log_k.dtype == dtype and bool(torch.isfinite(log_k.float()).all())
    assert _is_distribution(log_k.float().exp(), 2e-2) and _is_distribution(log_l.float().exp(), 2e-2)
    mus3 = project_exact_chain([tk, tl, marginalize(tl, (2, 2))])
    assert all(m.dtype == dtype and _is_distribution(m, 2e-2) for m in mus3)
    mus = project_exact_chain([tk, tl])
    logs = project_exact_chain_log([tk.float().log().to(dtype), tl.float().log().to(dtype)])
    # exact zeros of the half-precision maps (log = -inf) are floored like in probability space
    assert all(_is_distribution(x.float().exp(), 2e-2) for x in logs)
    for x, y in zip(logs, mus):
        torch.testing.assert_close(x.float().exp(), y.float(), atol=2e-2, rtol=0)
    mk, ml = reparameterize(tk, tl, torch.zeros(4, 4, dtype=dtype))
    assert mk.dtype == dtype and _is_distribution(mk, 2e-2)
    for value in (
        dual_penalty(tk, tl, torch.randn(3, 4, 4, generator=gen).to(dtype)),
        kl_consistency(tk, tl),
        kl_consistency(tk, tl, reverse=True),
        kl_divergence(tk, tk, reduction="sum"),
    ):
        assert bool(torch.isfinite(value))
    marg = marginalize(tk, (4, 4))
    assert marg.dtype == dtype
    torch.testing.assert_close(marg.float(), marginalize(tk.float(), (4, 4)), atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_backward(dtype):
    gen = torch.Generator().manual_seed(15)
    lf = (torch.randn(2, 8, 8, generator=gen) * 10).to(dtype).requires_grad_(True)
    lc = (torch.randn(2, 4, 4, generator=gen) * 10).to(dtype).requires_grad_(True)
    log_k, log_l = project_exact_log(lf, lc)
    (log_k.float().exp().pow(2).sum() + log_l.float().exp().pow(2).sum()).backward()
    assert lf.grad.dtype == dtype and bool(torch.isfinite(lf.grad.float()).all())
    assert bool(torch.isfinite(lc.grad.float()).all())


def test_zero_mass_blocks_are_handled():
    """A block of the fine map with no mass at all gets mu = 0 there and everywhere above it."""
    tk = torch.zeros(1, 4, 4, dtype=torch.float64)
    tk[0, :2, :2] = 0.25
    tl = torch.full((1, 2, 2), 0.25, dtype=torch.float64)
    mu_k, mu_l = project_exact(tk, tl)
    assert mu_l[0, 0, 0].item() == pytest.approx(1.0, abs=1e-12)
    assert mu_k[0, :2, :2].sum().item() == pytest.approx(1.0, abs=1e-12)
    log_k, log_l = project_exact_log(torch.where(tk > 0, tk.log(), -math.inf), tl.log())
    assert bool(torch.isfinite(log_l[0, 0, 0])) and log_l.exp()[0, 0, 0].item() == pytest.approx(1.0)
    assert not bool(torch.isnan(log_k).any())
    torch.testing.assert_close(log_k.exp(), mu_k, atol=1e-12, rtol=0)
    # disjoint supports (infinite KL for every feasible pair): the floored problem still has a finite answer
    tl2 = torch.zeros(1, 2, 2, dtype=torch.float64)
    tl2[0, 1, 1] = 1.0
    for f in (torch.float32, torch.float64):
        mk, ml = project_exact(tk.to(f), tl2.to(f))
        lk, ll = project_exact_log(torch.where(tk > 0, tk.log(), -math.inf).to(f), tl2.log().to(f))
        # all the mass sits on floored cells (log ~ -87 in float32): precision is ulp(87) ~ 1e-5 there
        tol = 2e-5 if f == torch.float32 else 1e-12
        assert _is_distribution(mk, tol) and _is_distribution(ml, tol)
        torch.testing.assert_close(lk.exp(), mk, atol=tol, rtol=0)
        torch.testing.assert_close(marginalize(mk, (2, 2)), ml, atol=tol, rtol=0)
        torch.testing.assert_close(ml[0, 1, 1], torch.tensor(2 / 3, dtype=f), atol=tol, rtol=0)


@pytest.mark.parametrize("lam_scale", [0.1, 5.0, 50.0])
def test_dual_penalty_coarse_formula_equals_fine_reparameterization(lam_scale):
    """The coarse-grid shortcut equals KL(mu_l || marginalize(mu_k)) computed from the full fine map."""
    gen = torch.Generator().manual_seed(16)
    tk = softmax_map(3 * torch.randn(3, 8, 6, dtype=torch.float64, generator=gen))
    tl = softmax_map(3 * torch.randn(3, 4, 3, dtype=torch.float64, generator=gen))
    lam = lam_scale * torch.randn(3, 4, 3, dtype=torch.float64, generator=gen)
    log_k, log_l = reparameterize_log(tk.log(), tl.log(), lam)
    log_m = log_marginalize(log_k, (4, 3))
    expected = (log_l.exp() * (log_l - log_m)).flatten(1).sum(1)
    torch.testing.assert_close(dual_penalty(tk, tl, lam, reduction="none"), expected, rtol=1e-9, atol=1e-12)
    got32 = dual_penalty(tk.float(), tl.float(), lam.float(), reduction="none")
    torch.testing.assert_close(got32.double(), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("lam_scale", [0.1, 5.0, 60.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_reparameterize_matches_log_space_for_large_lambda(lam_scale, dtype):
    gen = torch.Generator().manual_seed(17)
    tk = softmax_map(8 * torch.randn(3, 8, 6, dtype=torch.float64, generator=gen))
    tl = softmax_map(8 * torch.randn(3, 4, 3, dtype=torch.float64, generator=gen))
    lam = lam_scale * torch.randn(3, 4, 3, dtype=torch.float64, generator=gen)
    ref_k, ref_l = (x.exp() for x in reparameterize_log(tk.log(), tl.log(), lam))
    mu_k, mu_l = reparameterize(tk.to(dtype), tl.to(dtype), lam.to(dtype))
    assert _is_distribution(mu_k, 1e-5) and _is_distribution(mu_l, 1e-5)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(mu_k.double(), ref_k, rtol=0, atol=tol)
    torch.testing.assert_close(mu_l.double(), ref_l, rtol=0, atol=tol)


# --------------------------------------------------------------------------- attention gate


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("scale", SCALES)
def test_gate_finite_for_huge_potentials(spatial_dims, scale):
    """Potentials phi up to ±1e4 (weights of u scaled): tau is a distribution, gradients finite."""
    torch.manual_seed(0)
    gate = AttentionGate(6, 8, spatial_dims=spatial_dims)
    with torch.no_grad():
        for p in gate.parameters():
            if p.dim() > 1 and p.shape[0] == 1:  # u: E -> 1
                p.mul_(scale / max(float(p.abs().max()), 1e-12))
    grid = (5, 6) if spatial_dims == 2 else (3, 4, 5)
    v = (torch.randn(2, 6, *grid) * 100).requires_grad_(True)
    out, tau = gate(v)
    phi = gate.potentials(v)
    if scale >= 1e3:
        assert float(phi.abs().max()) > scale / 100  # really extreme potentials
    assert _finite(out, tau)
    torch.testing.assert_close(tau.flatten(1).sum(1), torch.ones(2), atol=1e-5, rtol=0)
    # reference: float64 softmax of the same potentials
    ref = torch.softmax(phi.detach().double().flatten(1), 1).reshape(tau.shape)
    torch.testing.assert_close(tau.detach().double(), ref, atol=1e-6, rtol=1e-5)
    (out.square().mean() + tau.square().sum()).backward()
    assert _finite(v.grad, *[p.grad for p in gate.parameters()])


def test_gate_all_equal_and_zero_features():
    """Constant (or all-zero) features: every position gets the same weight 1/N exactly."""
    gate = AttentionGate(4, 8)
    for value in (0.0, 3.0, -1e4):
        v = torch.full((1, 4, 4, 4), value, requires_grad=True)
        out, tau = gate(v)
        torch.testing.assert_close(tau, torch.full_like(tau, 1 / 16))
        out.sum().backward()
        assert _finite(out, v.grad)


def test_gate_bf16_autocast_cpu():
    torch.manual_seed(0)
    gate = AttentionGate(6, 8)
    v = torch.randn(2, 6, 8, 8) * 1e3
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, tau = gate(v)
    assert _finite(out, tau)
    torch.testing.assert_close(tau.float().flatten(1).sum(1), torch.ones(2), atol=1e-2, rtol=0)


# --------------------------------------------------------------------------- consistency and losses from model-like logits


CASES = [("logits", s) for s in SCALES] + [("equal", 1.0), ("onehot", 1.0)]


def _logits(kind: str, b: int, n: int, *, seed: int, scale: float) -> torch.Tensor:
    """Logits whose softmax is the map of that kind (one-hot: +-1e4 around one cell)."""
    g = torch.Generator().manual_seed(seed)
    if kind == "logits":
        return torch.randn(b, n, generator=g) * scale
    if kind == "equal":
        return torch.zeros(b, n)
    z = torch.full((b, n), -1e4)
    z[torch.arange(b), torch.randint(0, n, (b,), generator=g)] = 1e4
    return z


@pytest.mark.parametrize("kind,scale", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_consistency_and_losses_finite(kind, scale, dtype):
    """Maps made from logits the way the models make them: the closed form (probability and log
    space) and every loss are finite, distributions and consistent; the gradients with respect to
    the logits (what training differentiates) are finite."""
    zf = _logits(kind, 3, 64, seed=1, scale=scale).requires_grad_(True)
    zc = _logits(kind, 3, 16, seed=2, scale=scale).requires_grad_(True)
    fine = torch.softmax(zf, 1).reshape(3, 8, 8).to(dtype)
    coarse = torch.softmax(zc, 1).reshape(3, 4, 4).to(dtype)
    log_f = torch.log_softmax(zf, 1).reshape(3, 8, 8).to(dtype)
    log_c = torch.log_softmax(zc, 1).reshape(3, 4, 4).to(dtype)
    with torch.no_grad():
        mu_f, mu_c = project_exact(fine, coarse)
    log_mu_f, log_mu_c = project_exact_log(log_f, log_c)
    lam = torch.zeros(3, 4, 4, dtype=dtype, requires_grad=True)
    terms = {
        "dual": dual_penalty(fine, coarse, lam),
        "kl": kl_consistency(fine, coarse),
        "kl_reverse": kl_consistency(fine, coarse, reverse=True),
        "kl_mu": kl_divergence(log_mu_f.exp(), fine, reduction="mean") + kl_divergence(log_mu_c.exp(), coarse, reduction="mean"),
    }
    for name, t in terms.items():
        assert _finite(t), (name, kind, scale, dtype, t)
    assert _finite(mu_f, mu_c, log_mu_f.exp(), log_mu_c.exp())
    tol = {torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2}[dtype]
    for a, b in ((mu_f, mu_c), (log_mu_f.exp(), log_mu_c.exp())):
        torch.testing.assert_close(a.double().flatten(1).sum(1), torch.ones(3, dtype=torch.float64), atol=tol, rtol=0)
        torch.testing.assert_close(marginalize(a.double(), (4, 4)), b.double(), atol=tol, rtol=0)
    # probability and log space agree
    torch.testing.assert_close(mu_f.double(), log_mu_f.exp().double(), atol=max(tol, 1e-6), rtol=0)
    weight = torch.arange(64.0).reshape(8, 8)
    (sum(terms.values()) + (log_mu_f.exp().float() * weight).sum()).backward()
    bad = [n for n, g in [("fine logits", zf.grad), ("coarse logits", zc.grad), ("lam", lam.grad)] if not _finite(g)]
    assert not bad, f"non-finite gradients w.r.t. {bad} for {kind} maps, scale {scale}, {dtype}"
    if dtype == torch.float32 and (kind == "equal" or scale <= 1.0):
        # (for near-one-hot maps with disjoint supports the optimum hinges on values below 1e-38, so
        # only the well-conditioned cases are compared) the float64 evaluation of the same inputs
        r_f, r_c = project_exact(fine.detach().double(), coarse.detach().double())
        torch.testing.assert_close(mu_f.double(), r_f, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(mu_c.double(), r_c, atol=1e-5, rtol=1e-4)


_KNOWN_NAN = pytest.mark.xfail(reason="project_exact (probability space) backward: NaN for near-one-hot softmax maps",
                               strict=False)


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("scale", [1.0, pytest.param(30.0, marks=_KNOWN_NAN), pytest.param(100.0, marks=_KNOWN_NAN)])
def test_probability_space_projection_gradients_through_softmax(scale, fused):
    """``project_exact`` on softmax maps, differentiated w.r.t. the logits. Known problem (reported):
    at logit scale 30-100 the gradient is NaN (0 * inf where a probability underflows); models use
    ``project_exact_log`` and are not affected. Marked xfail there, so a fix shows up as XPASS."""
    g = torch.Generator().manual_seed(1)
    zf = (torch.randn(3, 64, generator=g) * scale).requires_grad_(True)
    zc = (torch.randn(3, 16, generator=g) * scale).requires_grad_(True)
    a, b = project_exact(torch.softmax(zf, 1).reshape(3, 8, 8), torch.softmax(zc, 1).reshape(3, 4, 4), fused=fused)
    (a.square().sum() + b.square().sum() + (a * torch.arange(64.0).reshape(8, 8)).sum()).backward()
    assert _finite(zf.grad, zc.grad)


def test_hand_computed_extremes():
    # all-equal maps are already consistent: the projection leaves them unchanged, every loss is 0
    f = torch.full((1, 4, 4), 1 / 16)
    c = torch.full((1, 2, 2), 1 / 4)
    mu_f, mu_c = project_exact(f, c)
    torch.testing.assert_close(mu_f, f)
    torch.testing.assert_close(mu_c, c)
    assert float(kl_consistency(f, c)) == pytest.approx(0.0, abs=1e-7)
    assert float(dual_penalty(f, c, torch.zeros(1, 2, 2))) == pytest.approx(0.0, abs=1e-7)
    # one-hot fine and coarse on the same cell: mu = tau (sqrt(1 * 1) = 1 on that cell, 0 elsewhere)
    f = torch.zeros(1, 4, 4)
    f[0, 1, 2] = 1.0
    c = torch.zeros(1, 2, 2)
    c[0, 0, 1] = 1.0
    mu_f, mu_c = project_exact(f, c)
    torch.testing.assert_close(mu_f, f)
    torch.testing.assert_close(mu_c, c)
    # one-hot on different cells: no common support; the result must still be finite distributions
    c2 = torch.zeros(1, 2, 2)
    c2[0, 1, 0] = 1.0
    mu_f, mu_c = project_exact(f, c2)
    assert _finite(mu_f, mu_c)
    torch.testing.assert_close(mu_f.sum(), torch.tensor(1.0))
    torch.testing.assert_close(marginalize(mu_f, (2, 2)), mu_c, atol=1e-5, rtol=0)
    # log space, logits ±1e4 and a one-cell coarse grid: mu_coarse = 1, mu_fine = tau_fine (float64 softmax)
    lf = torch.tensor([[[1e4, -1e4], [0.0, 9999.0]]])
    log_mu_f, log_mu_c = project_exact_log(torch.log_softmax(lf.flatten(1), 1).reshape(1, 2, 2), torch.zeros(1, 1, 1))
    assert _finite(log_mu_f, log_mu_c) and float(log_mu_c) == pytest.approx(0.0, abs=1e-6)
    ref = torch.softmax(lf.flatten(1).double(), 1).reshape(1, 2, 2)
    torch.testing.assert_close(log_mu_f.exp().double(), ref, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("kind,scale", [("logits", 1e4), ("onehot", 1.0), ("equal", 1.0)])
def test_chain_finite(kind, scale):
    taus = [_maps(kind, 2, g, seed=i, scale=scale).float() for i, g in enumerate([(8, 8), (4, 4), (2, 2)])]
    for t in taus:
        t.requires_grad_(True)
    mus = project_exact_chain(taus)
    assert _finite(*mus)
    for fine, coarse in zip(mus[:-1], mus[1:]):
        torch.testing.assert_close(marginalize(fine, coarse.shape[1:]), coarse, atol=1e-5, rtol=0)
    sum(m.square().sum() for m in mus).backward()
    assert _finite(*[t.grad for t in taus])


# --------------------------------------------------------------------------- models and a training step


VARIANTS = ["baseline", "tau_k", "unconstrained", "dual", "kl", "kl_reverse", "exact", "multilevel"]


def _extreme_batches() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "±1e4": (torch.rand(4, 1, 32, 32, generator=g) * 2 - 1) * 1e4,
        "constant": torch.full((4, 1, 32, 32), 7.0),
        "zeros": torch.zeros(4, 1, 32, 32),
        "one hot pixel": torch.zeros(4, 1, 32, 32).index_put_((torch.arange(4), torch.zeros(4, dtype=torch.long),
                                                                torch.tensor([0, 5, 17, 31]), torch.tensor([31, 0, 9, 4])),
                                                               torch.tensor(1e4)),
    }  # fmt: skip


@pytest.mark.parametrize("variant", VARIANTS)
def test_training_step_on_extreme_batches_keeps_weights_finite(variant):
    """forward_with_attention + CE + penalty + Adam on each extreme batch (fp32 and bf16 autocast)."""
    from dualattn.models import create_model

    for autocast in (False, True):
        torch.manual_seed(0)
        model = create_model("unet_encoder", variant=variant, in_channels=1, features=4, img_size=[32, 32])
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        y = torch.tensor([0, 1, 0, 1])
        for name, x in _extreme_batches().items():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                out = model.forward_with_attention(x)
                loss = F.cross_entropy(out.logits.float(), y) + out.penalty.float()
            assert _finite(loss), (variant, name, autocast, float(loss))
            for block, tau in out.tau.items():
                assert _finite(tau), (variant, name, block)
                torch.testing.assert_close(tau.float().flatten(1).sum(1), torch.ones(4), atol=5e-2 if autocast else 1e-5, rtol=0)
            opt.zero_grad()
            loss.backward()
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            assert grads and _finite(*grads), (variant, name, autocast)
            opt.step()
            assert _finite(*model.state_dict().values()), (variant, name, autocast)


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_lightning_module_skips_a_non_finite_step(precision):
    """A batch whose loss is NaN (a NaN pixel that got past the readers, an overflow) must not be
    applied: the weights after the step equal those before it, and the next finite step trains."""
    import lightning.pytorch as pl

    from dualattn.models import create_model
    from dualattn.train import load_config
    from dualattn.train.module import ClassifierModule

    torch.manual_seed(0)
    model = create_model("unet_encoder", variant="dual", in_channels=1, features=4, img_size=[16, 16])
    cfg = load_config(overrides=["accelerator=cpu", "devices=1", "lr=0.01", "scheduler=none"])
    module = ClassifierModule(model, config=cfg)
    good = torch.randn(8, 1, 16, 16)
    bad = good.clone()
    bad[0, 0, 3, 3] = float("nan")
    y = torch.tensor([0, 1] * 4)

    class Loader(torch.utils.data.IterableDataset):
        def __iter__(self):
            yield {"image": bad, "label": y}
            yield {"image": good, "label": y}

    snapshots = []

    class Snap(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            snapshots.append({k: v.detach().clone() for k, v in pl_module.model.state_dict().items()})

    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[Snap()],
                         limit_val_batches=0, precision=precision)
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(Loader(), batch_size=None))
    assert len(snapshots) == 2
    assert _finite(*snapshots[0].values()) and _finite(*snapshots[1].values())
    params = [k for k, _ in model.named_parameters()]
    assert all(torch.equal(snapshots[0][k], before[k]) for k in params)  # the NaN step was skipped
    assert any(not torch.equal(snapshots[1][k], before[k]) for k in params)  # the finite one applied


# --------------------------------------------------------------------------- property-based


from hypothesis import example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    coarse=st.lists(st.integers(1, 4), min_size=2, max_size=3),
    factors=st.lists(st.integers(1, 3), min_size=3, max_size=3),
    scale=st.sampled_from([0.0, 1e-3, 1.0, 50.0, 1e4]),
    seed=st.integers(0, 2**16),
    dtype=st.sampled_from([torch.float32, torch.bfloat16]),
)
def test_log_space_closed_form_and_losses_on_random_grids(coarse, factors, scale, seed, dtype):
    """Random 2-D/3-D grids, integer block factors, logits up to ±1e4: the log-space closed form and
    the penalties are finite, consistent, distributions, with finite gradients w.r.t. the logits."""
    dims = len(coarse)
    fine = tuple(c * f for c, f in zip(coarse, factors[:dims]))
    g = torch.Generator().manual_seed(seed)
    zf = (torch.randn(2, *fine, generator=g) * scale).requires_grad_(True)
    zc = (torch.randn(2, *coarse, generator=g) * scale).requires_grad_(True)
    log_f = torch.log_softmax(zf.flatten(1), 1).reshape(zf.shape).to(dtype)
    log_c = torch.log_softmax(zc.flatten(1), 1).reshape(zc.shape).to(dtype)
    lmf, lmc = project_exact_log(log_f, log_c)
    mf, mc = lmf.float().exp(), lmc.float().exp()
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(mf.flatten(1).sum(1), torch.ones(2), atol=tol, rtol=0)
    torch.testing.assert_close(marginalize(mf, tuple(coarse)), mc, atol=tol, rtol=0)
    tf, tc = log_f.float().exp(), log_c.float().exp()
    lam = torch.zeros(2, *coarse, requires_grad=True)
    loss = (dual_penalty(tf, tc, lam) + kl_consistency(tf, tc) + kl_consistency(tf, tc, reverse=True)
            + (mf * torch.linspace(0, 1, mf[0].numel()).reshape(mf.shape[1:])).sum())
    assert _finite(loss, mf, mc)
    loss.backward()
    assert _finite(zf.grad, zc.grad, lam.grad)


@settings(max_examples=50, deadline=None, derandomize=True)
@given(
    values=st.lists(st.floats(allow_nan=False, allow_infinity=False, width=32), min_size=1, max_size=64),
    method=st.sampled_from(["zscore", "minmax"]),
)
@example(values=[3e38, -3e38, 0.0], method="minmax")  # a range wider than float32's max (NaN before the fix)
@example(values=[3.4e38] * 4 + [-3.4e38], method="zscore")
@example(values=[7.0] * 16, method="zscore")
def test_per_sample_normalization_is_finite_for_any_finite_image(values, method):
    """Any finite float32 image (constant, tiny, or spanning the whole float32 range) normalizes to
    finite values; minmax lands in [0, 1] and matches a float64 reference."""
    from dualattn.data.transforms import normalize

    x = torch.tensor(values, dtype=torch.float32).reshape(1, 1, -1)
    y = normalize(x, method=method)
    assert _finite(y), (values, method)
    if method == "minmax":
        assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
        xd = x.double()
        rng = float(xd.max() - xd.min())
        ref = (xd - xd.min()) / rng if rng > 1e-6 else torch.zeros_like(xd)
        torch.testing.assert_close(y.double(), ref, atol=1e-6, rtol=1e-5)
