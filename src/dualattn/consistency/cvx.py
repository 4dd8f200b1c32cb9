"""The conic-solver reference for the consistency problems: :func:`solve_cvx`, :func:`solve_cvx_chain`.

cvxpy is an optional dependency (extra ``cvx``), imported on first use only.

One exponential-cone program per shape is built once (DPP: the log-maps are parameters) and re-solved
for every sample. Variables: the finest map ``x`` (its coarser levels are ``A_m x`` with ``A_m`` the
sparse block-sum matrices), objective ``sum_m w_m (sum(-entr(A_m x)) - <log tau_m, A_m x>)``
``= sum_m w_m KL(A_m x || tau_m)`` for ``sum x = 1``.
"""

from __future__ import annotations

import functools
import logging
import warnings
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from dualattn._optional import optional_import

from ._maps import _check_chain, _check_distributions, _check_pair, _check_weights

__all__ = ["solve_cvx", "solve_cvx_chain"]

logger = logging.getLogger(__name__)

_TIGHT = {"tol_gap_abs": 1e-10, "tol_gap_rel": 1e-10, "tol_feas": 1e-10, "max_iter": 500}
# Clarabel settings tried in order until one reports OPTIMAL (not OPTIMAL_INACCURATE): on some
# random maps the default iterative refinement stalls at ~1e-5; tighter refinement or a smaller
# static regularization recovers ~1e-9 accuracy.
_ATTEMPTS: tuple[dict[str, Any], ...] = (
    {"solver": "CLARABEL", **_TIGHT, "static_regularization_constant": 1e-10},
    {
        "solver": "CLARABEL",
        **_TIGHT,
        "iterative_refinement_reltol": 1e-16,
        "iterative_refinement_abstol": 1e-16,
        "iterative_refinement_max_iter": 50,
    },
    {"solver": "CLARABEL", **_TIGHT},
    {"solver": "CLARABEL"},
)


def _cvxpy() -> Any:
    return optional_import("cvxpy", extra="cvx", purpose="The conic-solver reference (solve_cvx)")


def _block_sum_matrix(fine: tuple[int, ...], coarse: tuple[int, ...]) -> Any:
    """Sparse ``(prod(coarse), prod(fine))`` matrix summing each block (C-order flattening)."""
    import scipy.sparse as sp

    factors = [f // c for f, c in zip(fine, coarse)]
    idx = np.indices(fine).reshape(len(fine), -1)
    parent_coords = [idx[a] // factors[a] for a in range(len(fine))]
    parent = np.ravel_multi_index(parent_coords, coarse)
    n_f = int(np.prod(fine))
    return sp.csr_matrix((np.ones(n_f), (parent, np.arange(n_f))), shape=(int(np.prod(coarse)), n_f))


@functools.lru_cache(maxsize=16)
def _problem(shapes: tuple[tuple[int, ...], ...], weights: tuple[float, ...]) -> tuple[Any, Any, list[Any]]:
    cp = _cvxpy()
    n0 = int(np.prod(shapes[0]))
    x = cp.Variable(n0, nonneg=True)
    params = []
    objective = 0
    a_total = None
    for m, (shape, w) in enumerate(zip(shapes, weights)):
        param = cp.Parameter(int(np.prod(shape)))
        params.append(param)
        if m == 0:
            y = x
        else:
            a = _block_sum_matrix(shapes[m - 1], shape)
            a_total = a if a_total is None else a @ a_total
            y = a_total @ x
        objective = objective + w * (cp.sum(-cp.entr(y)) - param @ y)
    problem = cp.Problem(cp.Minimize(objective), [cp.sum(x) == 1])
    return problem, x, params


def solve_chain_numpy(
    taus: Sequence[Tensor], weights: Sequence[float] | None, solver_kwargs: dict[str, Any]
) -> list[Tensor]:
    """Solve the chain problem sample by sample; returns maps in the inputs' dtypes and devices."""
    cp = _cvxpy()
    shapes = tuple(tuple(int(s) for s in t.shape[1:]) for t in taus)
    w = tuple(float(v) for v in weights) if weights is not None else (1.0,) * len(taus)
    problem, x, params = _problem(shapes, w)
    attempts = _ATTEMPTS if not solver_kwargs else (dict(solver_kwargs),)
    logs = []
    for t in taus:
        arr = t.detach().to("cpu", torch.float64).numpy().reshape(t.shape[0], -1)
        arr = arr / arr.sum(axis=1, keepdims=True)
        logs.append(np.log(np.maximum(arr, np.finfo(np.float64).tiny)))
    batch = taus[0].shape[0]
    out = np.empty((batch, int(np.prod(shapes[0]))))
    for b in range(batch):
        for param, lg in zip(params, logs):
            param.value = lg[b]
        best = None
        for kwargs in attempts:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Solution may be inaccurate")
                try:
                    problem.solve(**kwargs)
                except cp.error.SolverError as exc:
                    logger.debug("cvxpy attempt %s failed on sample %d: %s", kwargs, b, exc)
                    continue
            if problem.status in (cp.OPTIMAL, cp.OPTIMAL_INACCURATE) and x.value is not None:
                best = (problem.status, np.array(x.value))
                if problem.status == cp.OPTIMAL:
                    break
        if best is None:
            raise RuntimeError(f"cvxpy failed on sample {b}: status {problem.status}")
        if best[0] != cp.OPTIMAL:
            logger.warning("cvxpy solution of sample %d is inaccurate (status %s)", b, best[0])
        out[b] = np.maximum(best[1], 0.0)
    results = []
    level = out.reshape((batch,) + shapes[0])
    results.append(level)
    for m in range(1, len(shapes)):
        prev = results[-1]
        view_shape: list[int] = [batch]
        for c, f in zip(shapes[m], shapes[m - 1]):
            view_shape += [c, f // c]
        level = prev.reshape(view_shape).sum(axis=tuple(2 + 2 * a for a in range(len(shapes[m]))))
        results.append(level)
    return [torch.from_numpy(np.ascontiguousarray(r)).to(device=t.device, dtype=t.dtype) for r, t in zip(results, taus)]


def solve_cvx(tau_fine: Tensor, tau_coarse: Tensor, **solver_kwargs: object) -> tuple[Tensor, Tensor]:
    """Reference solution of Eq. 4 with cvxpy (exponential cone), one problem per sample.

    Slow (a conic solve per image); used by the tests and as the paper's "CVX" post-hoc baseline.
    Needs the optional extra ``cvx`` (``pip install 'dualattn[cvx]'``).

    Args:
        tau_fine: ``(B, *fine)`` fine map.
        tau_coarse: ``(B, *coarse)`` coarse map.
        **solver_kwargs: passed to ``cvxpy.Problem.solve`` (default: Clarabel at tight tolerances).

    Returns:
        ``(mu_fine, mu_coarse)`` detached, in the input dtypes, on the input device.

    Example:
        >>> tau_k = torch.softmax(torch.randn(1, 16, dtype=torch.float64), -1).reshape(1, 4, 4)
        >>> tau_l = torch.softmax(torch.randn(1, 4, dtype=torch.float64), -1).reshape(1, 2, 2)
        >>> from dualattn.consistency import project_exact
        >>> mu_k, _ = solve_cvx(tau_k, tau_l)  # doctest: +SKIP
        >>> bool((mu_k - project_exact(tau_k, tau_l)[0]).abs().max() < 1e-6)  # doctest: +SKIP
        True
    """
    _check_pair(tau_fine, tau_coarse, "tau_fine", "tau_coarse")
    _check_distributions((tau_fine, "tau_fine"), (tau_coarse, "tau_coarse"))
    mus = solve_chain_numpy([tau_fine, tau_coarse], None, solver_kwargs)
    return mus[0], mus[1]


def solve_cvx_chain(
    taus: Sequence[Tensor], weights: Sequence[float] | None = None, **solver_kwargs: object
) -> list[Tensor]:
    """Reference solution of the M-level chain problem (see :func:`project_exact_chain_log`) with cvxpy.

    Args:
        taus: ``[tau_0, ..., tau_{M-1}]`` finest first.
        weights: optional positive weights of the KL terms.
        **solver_kwargs: passed to ``cvxpy.Problem.solve``.

    Returns:
        ``[mu_0, ..., mu_{M-1}]`` detached, in the input dtypes.
    """
    _check_chain(taus, "taus")
    w = _check_weights(weights, len(taus))
    _check_distributions(*((t, f"taus[{m}]") for m, t in enumerate(taus)))
    return solve_chain_numpy(list(taus), w, solver_kwargs)
