"""Property tests (hypothesis): random nested grids, factors, levels and weights; optimality via KKT.

The optimality certificate is independent of any solver: moving mass between two finest cells ``j, j'``
changes ``sum_m w_m KL(mu_m || tau_m)`` at rate ``S(j) - S(j')`` with
``S(j) = sum_m w_m log(mu_m[a_m(j)] / tau_m[a_m(j)])`` (``a_m(j)`` the level-``m`` ancestor of ``j``).
A feasible point with every ``mu_0 > 0`` is optimal for the convex problem iff ``S`` is constant over ``j``.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dualattn.consistency import (
    marginalize,
    project_exact,
    project_exact_chain,
    project_exact_chain_log,
)
from dualattn.grids import upsample_blocks


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: thread-pool overhead dominates on the shared 2-core machine (conftest restores it)."""
    torch.set_num_threads(1)


@st.composite
def pyramids(draw):
    dims = draw(st.sampled_from([2, 3]))
    levels = draw(st.integers(2, 4 if dims == 2 else 3))
    coarsest = [draw(st.integers(1, 3)) for _ in range(dims)]
    factors = [[draw(st.integers(1, 3)) for _ in range(dims)] for _ in range(levels - 1)]
    grids = [tuple(coarsest)]
    for fac in reversed(factors):
        grids.append(tuple(g * f for g, f in zip(grids[-1], fac)))
    grids.reverse()  # finest first
    batch = draw(st.integers(1, 3))
    scale = draw(st.sampled_from([0.5, 3.0, 12.0]))
    weighted = draw(st.booleans())
    weights = [draw(st.floats(0.2, 5.0)) for _ in range(levels)] if weighted else None
    seed = draw(st.integers(0, 2**16))
    return grids, batch, scale, weights, seed


def make_taus(grids, batch, scale, seed):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for g in grids:
        logits = scale * torch.randn(batch, math.prod(g), dtype=torch.float64, generator=gen)
        out.append(torch.softmax(logits, -1).reshape(batch, *g))
    return out


def stationarity(mus, taus, weights):
    """``S(j)`` on the finest grid, ``(B, *g_0)``."""
    w = weights or [1.0] * len(mus)
    total = torch.zeros_like(mus[0])
    for m, (mu, tau) in enumerate(zip(mus, taus)):
        term = w[m] * (mu.log() - tau.log())
        for k in range(m - 1, -1, -1):  # bring level m down to the finest grid
            fac = tuple(a // b for a, b in zip(mus[k].shape[1:], mus[k + 1].shape[1:]))
            term = upsample_blocks(term, fac, use_matmul=True)
        total = total + term
    return total


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(pyramids())
def test_chain_is_feasible_and_satisfies_kkt(case):
    grids, batch, scale, weights, seed = case
    taus = make_taus(grids, batch, scale, seed)
    mus = project_exact_chain(taus, weights)
    for m, mu in enumerate(mus):
        assert mu.shape == taus[m].shape
        torch.testing.assert_close(mu.flatten(1).sum(1), torch.ones(batch, dtype=torch.float64))
        if m + 1 < len(mus):
            torch.testing.assert_close(marginalize(mu, grids[m + 1]), mus[m + 1], rtol=1e-12, atol=1e-15)
    s = stationarity(mus, taus, weights).flatten(1)
    spread = (s.max(1).values - s.min(1).values).max().item()
    assert spread < 1e-8 * (1 + scale * sum(weights or [1.0] * len(grids)))
    logs = project_exact_chain_log([t.log() for t in taus], weights)
    for lg, mu in zip(logs, mus):
        torch.testing.assert_close(lg.exp(), mu, rtol=1e-9, atol=1e-15)


@settings(max_examples=40, deadline=None, derandomize=True, database=None)
@given(pyramids())
def test_two_levels_all_paths_agree(case):
    grids, batch, scale, _, seed = case
    taus = make_taus(grids[:2], batch, scale, seed)
    chain = project_exact_chain(taus)
    auto = project_exact(*taus)
    fused = project_exact(*taus, fused=True)
    for a, b, c in zip(chain, auto, fused):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-15)
        torch.testing.assert_close(b, c, rtol=1e-12, atol=1e-15)
