"""The closed forms against an independent conic solver (cvxpy, exponential cone), 2-4 levels, 2D and 3D."""

from __future__ import annotations

import math
import zlib

import pytest
import torch

from dualattn.consistency import (
    consistency_objective,
    marginalize,
    project_exact,
    project_exact_chain,
    solve_cvx,
    solve_cvx_chain,
)

pytest.importorskip("cvxpy")
pytestmark = pytest.mark.cvx

# The closed forms are exact; this is the conic solver's own accuracy (about 1e-9 on random maps, up to
# ~8e-6 on maps with 1e-12 entries, where the closed form's objective is the lower of the two).
SOLVER_ATOL = 1e-5


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: thread-pool overhead dominates on the shared 2-core machine (conftest restores it)."""
    torch.set_num_threads(1)



def make_map(kind: str, batch: int, grid: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    n = math.prod(grid)
    if kind == "random":
        logits = torch.randn(batch, n, dtype=torch.float64, generator=gen)
    elif kind == "peaked":  # one cell holds almost everything, others down to ~1e-40
        logits = 15.0 * torch.randn(batch, n, dtype=torch.float64, generator=gen)
    elif kind == "near_zero":  # half the cells at ~1e-12 relative mass
        logits = torch.randn(batch, n, dtype=torch.float64, generator=gen)
        mask = torch.rand(batch, n, generator=gen, dtype=torch.float64) < 0.5
        logits = torch.where(mask, logits - 27.6, logits)
    else:  # pragma: no cover
        raise ValueError(kind)
    return torch.softmax(logits, -1).reshape(batch, *grid)


CASES_2 = [
    ((8, 8), (4, 4)),  # 2x2 blocks
    ((8, 8), (2, 2)),  # 4x4 blocks
    ((8, 6), (2, 3)),  # non-square grid, 4x2 blocks
    ((4, 4, 4), (2, 2, 2)),  # 3D
]


@pytest.mark.parametrize("kind", ["random", "peaked", "near_zero"])
@pytest.mark.parametrize("fine,coarse", CASES_2)
def test_project_exact_matches_solver(kind, fine, coarse):
    gen = torch.Generator().manual_seed(zlib.crc32(repr((kind, fine)).encode()))
    tau_k, tau_l = make_map(kind, 2, fine, gen), make_map(kind, 2, coarse, gen)
    mu_k, mu_l = project_exact(tau_k, tau_l)
    ref_k, ref_l = solve_cvx(tau_k, tau_l)
    assert (mu_k - ref_k).abs().max() <= SOLVER_ATOL
    assert (mu_l - ref_l).abs().max() <= SOLVER_ATOL
    ours = consistency_objective([mu_k, mu_l], [tau_k, tau_l])
    theirs = consistency_objective([ref_k, ref_l], [tau_k, tau_l])
    assert bool((ours <= theirs + 1e-9).all()), (ours, theirs)
    # the closed form is exactly feasible; the solver only to its tolerance
    torch.testing.assert_close(marginalize(mu_k, coarse), mu_l, rtol=1e-14, atol=1e-15)


CHAINS = [
    [(8, 8), (4, 4), (2, 2)],  # 3 levels
    [(16, 8), (8, 4), (4, 2), (1, 1)],  # 4 levels, non-square, last block 4x2
    [(4, 4, 4), (2, 2, 2), (1, 1, 1)],  # 3D, 3 levels
    [(8, 8), (2, 4), (1, 2)],  # mixed 4x2 then 2x2 blocks
]


@pytest.mark.parametrize("kind", ["random", "peaked", "near_zero"])
@pytest.mark.parametrize("weights", [None, "w"])
@pytest.mark.parametrize("grids", CHAINS, ids=lambda g: "-".join("x".join(map(str, s)) for s in g))
def test_chain_matches_solver(kind, weights, grids):
    gen = torch.Generator().manual_seed(len(grids) * 7 + len(kind))
    taus = [make_map(kind, 2, g, gen) for g in grids]
    w = None if weights is None else [0.5 + 0.75 * m for m in range(len(grids))][::-1]
    mus = project_exact_chain(taus, w)
    refs = solve_cvx_chain(taus, w)
    for mu, ref in zip(mus, refs):
        assert (mu - ref).abs().max() <= SOLVER_ATOL
    ours = consistency_objective(mus, taus, w)
    theirs = consistency_objective(refs, taus, w)
    assert bool((ours <= theirs + 1e-9).all()), (ours, theirs)


def test_solve_cvx_returns_input_dtype_and_is_a_distribution():
    gen = torch.Generator().manual_seed(0)
    tau_k = make_map("random", 1, (4, 4), gen).float()
    tau_l = make_map("random", 1, (2, 2), gen).float()
    mu_k, mu_l = solve_cvx(tau_k, tau_l)
    assert mu_k.dtype == torch.float32 and mu_l.shape == (1, 2, 2)
    torch.testing.assert_close(mu_k.sum(), torch.tensor(1.0), atol=1e-6, rtol=0)


def test_solve_cvx_missing_dependency_message(monkeypatch):
    import dualattn.consistency.cvx as mod
    from dualattn._optional import MissingDependencyError

    def boom(*args, **kwargs):
        raise MissingDependencyError("needs the optional package 'cvxpy' ... pip install 'dualattn[cvx]'")

    monkeypatch.setattr(mod, "_cvxpy", boom)
    with pytest.raises(ImportError, match=r"dualattn\[cvx\]"):
        solve_cvx(torch.full((1, 2, 2), 0.25), torch.ones(1, 1, 1))
