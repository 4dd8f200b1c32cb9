"""Gradients (gradcheck in float64), per-sample independence, extreme logits and half precision."""

from __future__ import annotations

import math

import pytest
import torch

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


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: thread-pool overhead dominates on the shared 2-core machine (conftest restores it)."""
    torch.set_num_threads(1)



def softmax_map(logits: torch.Tensor) -> torch.Tensor:
    return torch.softmax(logits.flatten(1), 1).reshape(logits.shape)


def leaf(*shape: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, dtype=torch.float64, generator=gen) * scale).requires_grad_(True)


# ------------------------------------------------------------------ gradcheck


@pytest.mark.parametrize(
    "batch,fine,coarse", [(2, (4, 4), (2, 2)), (1, (2, 6), (1, 3)), (1, (2, 2, 4), (1, 1, 2))]
)
def test_gradcheck_project_exact(batch, fine, coarse):
    a, b = leaf(batch, *fine, seed=0), leaf(batch, *coarse, seed=1)
    # through softmax so that the inputs move on the simplex, and directly on positive maps
    assert torch.autograd.gradcheck(lambda x, y: project_exact(softmax_map(x), softmax_map(y)), (a, b))
    pa = (torch.rand(batch, *fine, dtype=torch.float64) + 0.1).requires_grad_(True)
    pb = (torch.rand(batch, *coarse, dtype=torch.float64) + 0.1).requires_grad_(True)
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


# ------------------------------------------------------------------ per-sample independence


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


# ------------------------------------------------------------------ extreme values and precision


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
