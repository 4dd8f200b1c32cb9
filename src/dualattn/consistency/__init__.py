r"""Consistency between fine and coarse attention maps: marginals, dual reparameterization, exact projection.

This package is the mathematical core of dualattn (Ron, Weiler-Sagie, Hazan, ICML 2022, and our
extensions). Attention maps are tensors ``(B, *grid)`` -- ``(B, H, W)`` in 2D, ``(B, D, H, W)`` in 3D --
and every sample is a probability distribution over its grid. A coarse grid cell ``i`` covers the block
``N(i)`` of fine cells; block factors are integers per axis derived from the two shapes (a fine axis that
is not an integer multiple of the coarse axis raises :class:`ValueError` naming both shapes -- there is no
edge-block rule).

Problem (paper Eq. 4). Given a fine map ``tau_k`` and a coarse map ``tau_l``, the consistent pair is

.. math::

    \min_{\mu_k, \mu_l \in \Delta}\; KL(\mu_k \| \tau_k) + KL(\mu_l \| \tau_l)
    \quad\text{s.t.}\quad \mu_l = M \mu_k ,

where ``M`` sums each block (:func:`marginalize`). The paper solves it through a learned dual witness
(:func:`reparameterize`, :class:`GlobalWitness`, :class:`AmortizedWitness`, :func:`dual_penalty`); we
also give its closed-form optimum (:func:`project_exact`) and that of an M-level chain of nested grids
(:func:`project_exact_chain`), derived in :func:`project_exact_chain_log`. :func:`solve_cvx` is the
conic-solver reference used by the tests and by the paper's "CVX" baseline.

Everything is computed per sample (no normalization couples two images of a batch), on maps floored at
the dtype's smallest normal number, either in log space (log-softmax / block logsumexp) or in probability
space with every intermediate provably a normal float, so that very peaked maps, exact zeros, logits of
+-1e4 and half precision never give NaN; in float32 internally when the input is float16/bfloat16
(outputs keep the input dtype).

Example:
    >>> import torch
    >>> from dualattn.consistency import project_exact, marginalize
    >>> tau_k = torch.softmax(torch.randn(2, 8 * 8), -1).reshape(2, 8, 8)
    >>> tau_l = torch.softmax(torch.randn(2, 4 * 4), -1).reshape(2, 4, 4)
    >>> mu_k, mu_l = project_exact(tau_k, tau_l)
    >>> bool(torch.allclose(marginalize(mu_k, (4, 4)), mu_l, atol=1e-6))
    True

Layout (one concept per module; import the public names from this package):

==================  ===============================================================================
``marginals``       :func:`marginalize`, :func:`log_marginalize` (block sums of :mod:`dualattn.grids`)
``dual``            :func:`reparameterize`, :func:`reparameterize_log` (Theorem 3.1)
``witness``         :class:`GlobalWitness`, :class:`AmortizedWitness` (learned multipliers)
``losses``          :func:`kl_divergence`, :func:`kl_divergence_log`, :func:`dual_penalty`,
                    :func:`kl_consistency`, :func:`consistency_objective`
``projection``      :func:`project_exact`, :func:`project_exact_log`, :func:`project_exact_chain`,
                    :func:`project_exact_chain_log` (closed forms)
``fused``           the analytic backward of ``project_exact(..., fused=True)``
``cvx``             :func:`solve_cvx`, :func:`solve_cvx_chain` (cvxpy, imported on first use)
``_maps``           private validation, compute dtype and floors shared by the modules above
==================  ===============================================================================
"""

from __future__ import annotations

from dualattn.grids import block_factors, upsample_blocks

from .cvx import solve_cvx, solve_cvx_chain
from .dual import reparameterize, reparameterize_log
from .losses import consistency_objective, dual_penalty, kl_consistency, kl_divergence, kl_divergence_log
from .marginals import log_marginalize, marginalize
from .projection import project_exact, project_exact_chain, project_exact_chain_log, project_exact_log
from .witness import AmortizedWitness, GlobalWitness

__all__ = [
    "AmortizedWitness",
    "GlobalWitness",
    "block_factors",
    "consistency_objective",
    "dual_penalty",
    "kl_consistency",
    "kl_divergence",
    "kl_divergence_log",
    "log_marginalize",
    "marginalize",
    "project_exact",
    "project_exact_chain",
    "project_exact_chain_log",
    "project_exact_log",
    "reparameterize",
    "reparameterize_log",
    "solve_cvx",
    "solve_cvx_chain",
    "upsample_blocks",
]
