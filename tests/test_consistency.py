"""Core consistency math: hand-computed cases, invariants, gradients, precision and shape errors.

Solver agreement lives in ``test_consistency_cvx.py``.
"""

from __future__ import annotations

import math

import pytest
import torch

from dualattn.consistency import (
    AmortizedWitness,
    GlobalWitness,
    block_factors,
    consistency_objective,
    dual_penalty,
    kl_consistency,
    kl_divergence,
    kl_divergence_log,
    log_marginalize,
    marginalize,
    project_exact,
    project_exact_chain,
    project_exact_chain_log,
    project_exact_log,
    reparameterize,
    reparameterize_log,
    upsample_blocks,
)
from dualattn.consistency._maps import SUM_TOLERANCE


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: thread-pool overhead dominates on the shared 2-core machine (conftest restores it)."""
    torch.set_num_threads(1)



def rand_map(batch: int, *grid: int, scale: float = 1.0, dtype=torch.float64, gen=None) -> torch.Tensor:
    n = math.prod(grid)
    logits = torch.randn(batch, n, dtype=dtype, generator=gen) * scale
    return torch.softmax(logits, -1).reshape(batch, *grid)


def naive_marginalize(tau: torch.Tensor, coarse: tuple[int, ...]) -> torch.Tensor:
    """Slow loop over fine cells: add each to its parent."""
    out = torch.zeros((tau.shape[0], *coarse), dtype=tau.dtype)
    fine = tau.shape[1:]
    factors = [f // c for f, c in zip(fine, coarse)]
    for idx in torch.cartesian_prod(*[torch.arange(f) for f in fine]).reshape(-1, len(fine)).tolist():
        parent = tuple(i // f for i, f in zip(idx, factors))
        out[(slice(None), *parent)] += tau[(slice(None), *idx)]
    return out


def naive_exact(tau_k: torch.Tensor, tau_l: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Closed form written directly in probability space (no logs) with loops for the block ratios."""
    coarse = tuple(tau_l.shape[1:])
    t = naive_marginalize(tau_k, coarse)
    s = torch.sqrt(tau_l * t)
    mu_l = s / s.flatten(1).sum(1).reshape(-1, *([1] * len(coarse)))
    fine = tau_k.shape[1:]
    factors = [f // c for f, c in zip(fine, coarse)]
    mu_k = torch.empty_like(tau_k)
    for idx in torch.cartesian_prod(*[torch.arange(f) for f in fine]).reshape(-1, len(fine)).tolist():
        parent = tuple(i // f for i, f in zip(idx, factors))
        sl = (slice(None), *idx)
        pl = (slice(None), *parent)
        mu_k[sl] = tau_k[sl] * mu_l[pl] / t[pl]
    return mu_k, mu_l


# ------------------------------------------------------------------ marginals


@pytest.mark.parametrize(
    "fine,coarse",
    [((4, 4), (2, 2)), ((8, 8), (2, 2)), ((6, 4), (3, 1)), ((4, 6, 2), (2, 3, 1)), ((5, 7), (5, 7))],
)
def test_marginalize_matches_naive_loop(fine, coarse):
    gen = torch.Generator().manual_seed(1)
    tau = rand_map(2, *fine, gen=gen)
    got = marginalize(tau, coarse)
    torch.testing.assert_close(got, naive_marginalize(tau, coarse), rtol=0, atol=1e-15)
    torch.testing.assert_close(log_marginalize(tau.log(), coarse).exp(), got, rtol=1e-12, atol=0)
    # full-shape form (B, *coarse) is accepted too
    torch.testing.assert_close(marginalize(tau, (2, *coarse)), got)


def test_marginalize_hand_computed():
    tau = torch.arange(16.0).reshape(1, 4, 4)
    assert marginalize(tau, (2, 2)).tolist() == [[[10.0, 18.0], [42.0, 50.0]]]
    assert marginalize(tau, (1, 2)).tolist() == [[[52.0, 68.0]]]
    assert marginalize(tau, (4, 1)).tolist() == [[[6.0], [22.0], [38.0], [54.0]]]


def test_upsample_is_adjoint_of_marginalize():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(3, 6, 8, dtype=torch.float64, generator=gen)
    y = torch.randn(3, 3, 2, dtype=torch.float64, generator=gen)
    lhs = (marginalize(x, (3, 2)) * y).sum()
    rhs = (x * upsample_blocks(y, (2, 4))).sum()
    torch.testing.assert_close(lhs, rhs)


@pytest.mark.parametrize("fine,coarse", [((5, 4), (2, 2)), ((4, 4), (3, 2)), ((4, 4, 4), (2, 3, 2))])
def test_marginalize_non_dividing_names_both_shapes(fine, coarse):
    tau = torch.rand(1, *fine)
    with pytest.raises(ValueError) as err:
        marginalize(tau, coarse)
    assert str(fine) in str(err.value) and str(coarse) in str(err.value)
    with pytest.raises(ValueError) as err:
        project_exact(tau, torch.rand(1, *coarse))
    assert str(fine) in str(err.value) and str(coarse) in str(err.value)


def test_shape_and_argument_errors():
    with pytest.raises(ValueError, match="spatial dims"):
        marginalize(torch.rand(1, 4, 4), (2, 2, 2, 2))
    with pytest.raises(ValueError, match="batch size"):
        marginalize(torch.rand(2, 4, 4), (3, 2, 2))
    with pytest.raises(ValueError, match="batch sizes differ"):
        project_exact(torch.rand(2, 4, 4), torch.rand(3, 2, 2))
    with pytest.raises(ValueError, match="floating-point"):
        marginalize(torch.ones(1, 4, 4, dtype=torch.int64), (2, 2))
    with pytest.raises(ValueError, match=r"\(2, 4, 1\)"):
        block_factors((4, 4), (2, 4, 1))
    with pytest.raises(ValueError, match="at least 2 levels"):
        project_exact_chain([torch.rand(1, 4, 4)])
    with pytest.raises(ValueError, match="weights"):
        project_exact_chain([torch.rand(1, 4, 4), torch.rand(1, 2, 2)], weights=[1.0, 0.0])
    with pytest.raises(ValueError, match="weights"):
        project_exact_chain([torch.rand(1, 4, 4), torch.rand(1, 2, 2)], weights=[1.0])
    with pytest.raises(ValueError, match="reduction"):
        kl_consistency(torch.rand(1, 4, 4), torch.rand(1, 2, 2), reduction="avg")
    with pytest.raises(ValueError, match="lam shape"):
        reparameterize(torch.rand(1, 4, 4), torch.rand(1, 2, 2), torch.zeros(1, 4, 4))


# ------------------------------------------------------------------ exact projection


@pytest.mark.parametrize("fine,coarse", [((4, 4), (2, 2)), ((8, 4), (2, 1)), ((4, 4, 6), (2, 2, 3)), ((8, 8), (2, 2))])
def test_project_exact_matches_probability_space_formula(fine, coarse):
    gen = torch.Generator().manual_seed(3)
    tau_k, tau_l = rand_map(3, *fine, gen=gen), rand_map(3, *coarse, gen=gen)
    mu_k, mu_l = project_exact(tau_k, tau_l)
    ref_k, ref_l = naive_exact(tau_k, tau_l)
    torch.testing.assert_close(mu_k, ref_k, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(mu_l, ref_l, rtol=1e-12, atol=1e-15)
    # zero marginal violation and distributions
    torch.testing.assert_close(marginalize(mu_k, coarse), mu_l, rtol=1e-14, atol=1e-15)
    torch.testing.assert_close(mu_k.flatten(1).sum(1), torch.ones(3, dtype=torch.float64))


def test_project_exact_hand_computed():
    # coarse 1x2 over fine 2x2 blocks of 2x1: T = [0.25, 0.75], tau_l = [0.75, 0.25]
    # mu_l ∝ sqrt([0.1875, 0.1875]) -> [0.5, 0.5]; mu_k = tau_k * mu_l / T
    tau_k = torch.tensor([[[0.05, 0.3], [0.2, 0.45]]], dtype=torch.float64)
    tau_l = torch.tensor([[[0.75, 0.25]]], dtype=torch.float64)
    mu_k, mu_l = project_exact(tau_k, tau_l)
    torch.testing.assert_close(mu_l, torch.tensor([[[0.5, 0.5]]], dtype=torch.float64))
    torch.testing.assert_close(mu_k, torch.tensor([[[0.1, 0.2], [0.4, 0.3]]], dtype=torch.float64))


def test_project_exact_fixed_point_when_already_consistent():
    gen = torch.Generator().manual_seed(4)
    tau_k = rand_map(2, 8, 8, gen=gen)
    tau_l = marginalize(tau_k, (4, 4))
    mu_k, mu_l = project_exact(tau_k, tau_l)
    torch.testing.assert_close(mu_k, tau_k)
    torch.testing.assert_close(mu_l, tau_l)


def test_project_exact_log_matches_and_is_shift_invariant():
    gen = torch.Generator().manual_seed(5)
    lf = torch.randn(2, 8, 6, dtype=torch.float64, generator=gen) * 3
    lc = torch.randn(2, 4, 3, dtype=torch.float64, generator=gen) * 3
    log_k, log_l = project_exact_log(lf, lc)
    tk = torch.softmax(lf.flatten(1), 1).reshape(lf.shape)
    tl = torch.softmax(lc.flatten(1), 1).reshape(lc.shape)
    mu_k, mu_l = project_exact(tk, tl)
    torch.testing.assert_close(log_k.exp(), mu_k)
    torch.testing.assert_close(log_l.exp(), mu_l)
    shift = torch.tensor([5.0, -7.0], dtype=torch.float64).reshape(2, 1, 1)
    log_k2, log_l2 = project_exact_log(lf + shift, lc - 2 * shift)
    torch.testing.assert_close(log_k2, log_k)
    torch.testing.assert_close(log_l2, log_l)


def test_dual_witness_at_closed_form_lambda_gives_the_exact_pair():
    gen = torch.Generator().manual_seed(6)
    tau_k, tau_l = rand_map(3, 8, 8, gen=gen), rand_map(3, 4, 4, gen=gen)
    lam = 0.5 * (marginalize(tau_k, (4, 4)).log() - tau_l.log())
    mu_k, mu_l = reparameterize(tau_k, tau_l, lam)
    ex_k, ex_l = project_exact(tau_k, tau_l)
    torch.testing.assert_close(mu_k, ex_k)
    torch.testing.assert_close(mu_l, ex_l)
    assert dual_penalty(tau_k, tau_l, lam, reduction="none").abs().max() < 1e-14
    assert dual_penalty(tau_k, tau_l, torch.zeros(4, 4, dtype=torch.float64)) > 1e-3


def test_project_exact_is_no_worse_than_perturbed_feasible_points():
    gen = torch.Generator().manual_seed(7)
    tau_k, tau_l = rand_map(4, 8, 8, gen=gen), rand_map(4, 4, 4, gen=gen)
    mu_k, mu_l = project_exact(tau_k, tau_l)
    best = consistency_objective([mu_k, mu_l], [tau_k, tau_l])
    for _ in range(20):
        cand = torch.softmax(mu_k.log().flatten(1) + 0.05 * torch.randn(4, 64, dtype=torch.float64, generator=gen), 1)
        cand = cand.reshape(4, 8, 8)
        val = consistency_objective([cand, marginalize(cand, (4, 4))], [tau_k, tau_l])
        assert bool((val >= best - 1e-14).all())


# ------------------------------------------------------------------ chains


def test_chain_of_two_equals_project_exact():
    gen = torch.Generator().manual_seed(8)
    tau_k, tau_l = rand_map(2, 8, 8, gen=gen), rand_map(2, 4, 4, gen=gen)
    a = project_exact_chain([tau_k, tau_l])
    b = project_exact(tau_k, tau_l)
    torch.testing.assert_close(a[0], b[0])
    torch.testing.assert_close(a[1], b[1])


@pytest.mark.parametrize("weights", [None, [1.0, 2.0, 0.5, 3.0]])
def test_chain_is_consistent_at_every_level(weights):
    gen = torch.Generator().manual_seed(9)
    taus = [rand_map(2, *g, gen=gen) for g in ((16, 8), (8, 4), (2, 2), (1, 1))]
    mus = project_exact_chain(taus, weights)
    for m in range(3):
        torch.testing.assert_close(marginalize(mus[m], tuple(mus[m + 1].shape[1:])), mus[m + 1], rtol=1e-14, atol=1e-15)
    logs = project_exact_chain_log([t.log() for t in taus], weights)
    for lg, mu in zip(logs, mus):
        torch.testing.assert_close(lg.exp(), mu)


def test_chain_equal_weight_scaling_is_invariant():
    gen = torch.Generator().manual_seed(10)
    taus = [rand_map(2, 8, 8, gen=gen), rand_map(2, 4, 4, gen=gen), rand_map(2, 2, 2, gen=gen)]
    a = project_exact_chain(taus, [1.0, 2.0, 3.0])
    b = project_exact_chain(taus, [10.0, 20.0, 30.0])
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y)


def test_chain_weight_dominance_limits():
    """A huge weight on one level makes that level's mu equal its tau."""
    gen = torch.Generator().manual_seed(11)
    taus = [rand_map(1, 8, 8, gen=gen), rand_map(1, 4, 4, gen=gen), rand_map(1, 2, 2, gen=gen)]
    mus = project_exact_chain(taus, [1.0, 1e9, 1.0])
    torch.testing.assert_close(mus[1], taus[1], rtol=0, atol=1e-7)


# ------------------------------------------------------------------ divergences and penalties


def test_kl_divergence_hand_computed_and_reductions():
    p = torch.tensor([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
    q = torch.tensor([[0.25, 0.25, 0.5], [0.5, 0.25, 0.25]], dtype=torch.float64)
    expected = torch.tensor([math.log(2), math.log(2)], dtype=torch.float64)
    torch.testing.assert_close(kl_divergence(p, q), expected)
    torch.testing.assert_close(kl_divergence(p, q, reduction="mean"), expected.mean())
    torch.testing.assert_close(kl_divergence(p, q, reduction="sum"), expected.sum())
    torch.testing.assert_close(kl_divergence_log(p.log(), q.log()), expected)


def test_kl_consistency_matches_definition():
    gen = torch.Generator().manual_seed(12)
    tau_k, tau_l = rand_map(3, 8, 8, gen=gen), rand_map(3, 4, 4, gen=gen)
    m = naive_marginalize(tau_k, (4, 4))
    fwd = (tau_l * (tau_l / m).log()).flatten(1).sum(1)
    rev = (m * (m / tau_l).log()).flatten(1).sum(1)
    torch.testing.assert_close(kl_consistency(tau_k, tau_l, reduction="none"), fwd)
    torch.testing.assert_close(kl_consistency(tau_k, tau_l, reverse=True, reduction="none"), rev)
    torch.testing.assert_close(kl_consistency(tau_k, tau_l), fwd.mean())


def test_reparameterize_matches_definition_and_shared_lambda():
    gen = torch.Generator().manual_seed(13)
    tau_k, tau_l = rand_map(2, 4, 4, gen=gen), rand_map(2, 2, 2, gen=gen)
    lam = torch.randn(2, 2, dtype=torch.float64, generator=gen)
    mu_k, mu_l = reparameterize(tau_k, tau_l, lam)
    ul = tau_l * lam.exp()
    uk = tau_k * (-lam).exp().repeat_interleave(2, 0).repeat_interleave(2, 1)
    torch.testing.assert_close(mu_l, ul / ul.sum((1, 2), keepdim=True))
    torch.testing.assert_close(mu_k, uk / uk.sum((1, 2), keepdim=True))
    mu_k2, mu_l2 = reparameterize(tau_k, tau_l, lam.expand(2, 2, 2))
    torch.testing.assert_close(mu_k2, mu_k)
    lf, lc = reparameterize_log(tau_k.log(), tau_l.log(), lam)
    torch.testing.assert_close(lf.exp(), mu_k)
    torch.testing.assert_close(lc.exp(), mu_l)
    pen = dual_penalty(tau_k, tau_l, lam, reduction="none")
    m = naive_marginalize(mu_k, (2, 2))
    torch.testing.assert_close(pen, (mu_l * (mu_l / m).log()).flatten(1).sum(1))


# ------------------------------------------------------------------ witnesses


def test_global_witness_shared_and_trainable():
    w = GlobalWitness((4, 4))
    lam = w(torch.zeros(3, 5, 4, 4))
    assert lam.shape == (3, 4, 4) and bool((lam == 0).all())
    with torch.no_grad():
        w.lam.add_(torch.arange(16.0).reshape(4, 4))
    lam = w(torch.zeros(3))
    torch.testing.assert_close(lam[0], lam[2])
    tau_k = torch.softmax(torch.randn(3, 64), 1).reshape(3, 8, 8)
    tau_l = torch.softmax(torch.randn(3, 16), 1).reshape(3, 4, 4)
    dual_penalty(tau_k, tau_l, w(tau_l)).backward()
    assert w.lam.grad is not None and w.lam.grad.shape == (4, 4) and bool(w.lam.grad.abs().sum() > 0)
    with pytest.raises(ValueError, match="coarse_shape"):
        GlobalWitness((4,))


@pytest.mark.parametrize("dims", [2, 3])
def test_amortized_witness_starts_at_zero_and_is_per_sample(dims):
    torch.manual_seed(0)
    w = AmortizedWitness(6, spatial_dims=dims, hidden=8)
    grid = (4, 4) if dims == 2 else (2, 4, 4)
    feats = torch.randn(2, 6, *grid)
    lam = w(feats)
    assert lam.shape == (2, *grid) and bool((lam == 0).all())
    torch.nn.init.normal_(w.conv2.weight)
    lam = w(feats)
    feats2 = feats.clone()
    feats2[0] = torch.randn(6, *grid)
    lam2 = w(feats2)
    assert torch.equal(lam2[1], lam[1]) and not torch.equal(lam2[0], lam[0])
    with pytest.raises(ValueError, match="channels"):
        w(torch.randn(2, 5, *grid))
    with pytest.raises(ValueError, match="spatial_dims"):
        AmortizedWitness(6, spatial_dims=1)


# --------------------------------------------------------------------------- input checks (the API pitfalls)

PROBABILITY_FUNCTIONS = {
    "project_exact": lambda f, c: project_exact(f, c),
    "project_exact_fused": lambda f, c: project_exact(f, c, fused=True),
    "project_exact_chain": lambda f, c: project_exact_chain([f, c]),
    "reparameterize": lambda f, c: reparameterize(f, c, torch.zeros(c.shape)),
    "dual_penalty": lambda f, c: dual_penalty(f, c, torch.zeros(c.shape)),
    "kl_consistency": lambda f, c: kl_consistency(f, c),
}


@pytest.mark.parametrize("name", sorted(PROBABILITY_FUNCTIONS))
def test_probability_functions_refuse_raw_logits_and_say_what_to_do(name):
    fn = PROBABILITY_FUNCTIONS[name]
    gen = torch.Generator().manual_seed(0)
    logits_f = torch.randn(2, 4, 4, generator=gen) * 3
    tau_c = rand_map(2, 2, 2, dtype=torch.float32, gen=gen)
    with pytest.raises(ValueError, match=r"(tau_fine|taus\[0\]) must hold probabilities.*negative values.*raw logits\?") as err:
        fn(logits_f, tau_c)
    if name in ("project_exact", "project_exact_fused"):
        assert "project_exact_log" in str(err.value)
    # positive but unnormalized (e.g. exp of logits, or a map scaled by its cell count)
    with pytest.raises(ValueError, match=r"(tau_fine|taus\[0\]) must hold probabilities.*sum to 16 \.\. 16"):
        fn(torch.ones(2, 4, 4), tau_c)
    with pytest.raises(ValueError, match=r"(tau_coarse|taus\[1\]) must hold probabilities.*sum to"):
        fn(rand_map(2, 4, 4, dtype=torch.float32, gen=gen), tau_c * 2)
    # a probability map passes, and so does one off by rounding (a half-precision softmax cast up)
    ok_f = rand_map(2, 4, 4, dtype=torch.float32, gen=gen)
    fn(ok_f, tau_c)
    fn(ok_f * (1 + 0.5 * SUM_TOLERANCE), tau_c)


def test_one_bad_sample_in_a_batch_is_caught():
    gen = torch.Generator().manual_seed(1)
    tau_f = rand_map(4, 4, 4, gen=gen)
    tau_f[2] *= 3.0
    with pytest.raises(ValueError, match=r"sum to 1 \.\. 3"):
        project_exact(tau_f, rand_map(4, 2, 2, gen=gen))


def test_non_finite_maps_pass_through_for_the_training_loop_to_skip():
    """NaN/Inf are the training step's to detect and skip (test_numerics), not an argument error."""
    gen = torch.Generator().manual_seed(2)
    tau_f = rand_map(2, 4, 4, gen=gen)
    tau_f[0, 0, 0] = float("nan")
    mu_f, _ = project_exact(tau_f, rand_map(2, 2, 2, gen=gen))
    assert torch.isnan(mu_f[0]).any()
    assert torch.isfinite(dual_penalty(tau_f[1:], rand_map(1, 2, 2, gen=gen), torch.zeros(1, 2, 2)))


def test_log_space_functions_accept_any_logits():
    gen = torch.Generator().manual_seed(3)
    lf, lc = torch.randn(2, 4, 4, generator=gen) * 50 + 7, torch.randn(2, 2, 2, generator=gen) - 3
    mu_f, mu_c = project_exact_log(lf, lc)
    torch.testing.assert_close(mu_f.exp().flatten(1).sum(1), torch.ones(2))
    project_exact_chain_log([lf, lc])
    reparameterize_log(lf, lc, torch.zeros(2, 2, 2))
    kl_divergence_log(torch.log_softmax(lf.flatten(1), 1), torch.log_softmax(lf.flatten(1), 1))


def test_kl_divergence_and_objective_check_their_maps():
    p, q = rand_map(2, 4, 4), rand_map(2, 4, 4)
    with pytest.raises(ValueError, match=r"p must hold probabilities.*kl_divergence_log"):
        kl_divergence(p.log(), q)
    with pytest.raises(ValueError, match=r"q must hold probabilities"):
        kl_divergence(p, q * 4)
    with pytest.raises(ValueError, match=r"must hold probabilities"):
        consistency_objective([p], [q.log()])


@pytest.mark.parametrize("name", sorted(PROBABILITY_FUNCTIONS) + ["project_exact_log"])
def test_a_channel_axis_is_refused_with_a_hint_to_squeeze_it(name):
    """An explainer's (B, 1, H, W) next to a gate's (B, h, w): the message says to squeeze it."""
    fn = project_exact_log if name == "project_exact_log" else PROBABILITY_FUNCTIONS[name]
    gen = torch.Generator().manual_seed(4)
    with_channel = rand_map(2, 4, 4, gen=gen)[:, None]
    coarse = rand_map(2, 2, 2, gen=gen)
    with pytest.raises(ValueError, match=r"\(2, 1, 4, 4\) looks like a map with a channel axis.*squeeze it"):
        fn(with_channel.log() if name == "project_exact_log" else with_channel, coarse)
    with pytest.raises(ValueError, match=r"channel axis.*squeeze"):
        project_exact(rand_map(2, 4, 4, 4, gen=gen)[:, None], rand_map(2, 2, 2, 2, gen=gen)[:, None])  # 5-D
    with pytest.raises(ValueError, match=r"channel axis.*squeeze"):
        marginalize(with_channel, (2, 2))
    with pytest.raises(ValueError, match=r"channel axis.*squeeze"):
        kl_divergence(with_channel, rand_map(2, 4, 4, gen=gen))


def test_every_map_with_a_depth_one_axis_is_a_depth_one_grid():
    """(B, 1, H, W) with (B, 1, h, w): a 3-D grid of depth 1, which gives the 2-D answer (no guessing)."""
    gen = torch.Generator().manual_seed(5)
    f, c = rand_map(2, 4, 4, gen=gen), rand_map(2, 2, 2, gen=gen)
    mu3 = project_exact(f[:, None], c[:, None])
    mu2 = project_exact(f, c)
    for a, b in zip(mu3, mu2):
        torch.testing.assert_close(a[:, 0], b)


def test_input_checks_read_back_small_vectors_once(monkeypatch):
    """The check reads back per map a (B,) vector of sums and one minimum (on the CPU, where a read is no
    synchronisation), or everything gathered in one read (an accelerator): never per sample or element."""
    from dualattn.consistency import _maps

    calls = []
    for method in ("tolist", "item", "__bool__", "__float__"):
        real = getattr(torch.Tensor, method)

        def counting(self, *args, _real=real, _name=method):
            calls.append((_name, tuple(self.shape)))
            return _real(self, *args)

        monkeypatch.setattr(torch.Tensor, method, counting)
    gen = torch.Generator().manual_seed(6)
    f, c = rand_map(64, 8, 8, gen=gen), rand_map(64, 4, 4, gen=gen)
    project_exact(f, c)
    assert sorted(calls) == [("item", ()), ("item", ()), ("tolist", (64,)), ("tolist", (64,))]
    calls.clear()
    rows, mins = _maps._read_back([f.sum((1, 2)), c.sum((1, 2))], [f.amin(), c.amin()], gather=True)
    monkeypatch.undo()
    assert calls == [("tolist", (64 * 2 + 2,))]  # the accelerator path: one read for everything
    assert len(rows) == 2 and len(rows[0]) == 64 and rows[0][0] == pytest.approx(1.0) and len(mins) == 2
