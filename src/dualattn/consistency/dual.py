"""The paper's dual reparameterization (Theorem 3.1): consistent-map candidates from multipliers ``lam``."""

from __future__ import annotations

import torch
from torch import Tensor

from dualattn.grids import block_sum, upsample_blocks

from ._maps import _check_distributions, _check_lam, _check_pair, _flat_lse, _log_of, _shifted, _up

__all__ = ["reparameterize", "reparameterize_log"]


def reparameterize_log(log_tau_fine: Tensor, log_tau_coarse: Tensor, lam: Tensor) -> tuple[Tensor, Tensor]:
    """Log-space :func:`reparameterize`: ``(log mu_fine, log mu_coarse)`` from log maps and ``lam``.

    Args:
        log_tau_fine: ``(B, *fine)`` log-probabilities (or unnormalized log-potentials).
        log_tau_coarse: ``(B, *coarse)`` likewise.
        lam: ``(B, *coarse)`` or ``(*coarse)`` dual multipliers, one per coarse cell.

    Returns:
        ``log_mu_fine (B, *fine)`` and ``log_mu_coarse (B, *coarse)``, each log-normalized per sample.
    """
    factors = _check_pair(log_tau_fine, log_tau_coarse, "log_tau_fine", "log_tau_coarse")
    lam = _check_lam(lam, log_tau_coarse)
    dtype = log_tau_fine.dtype
    lf, lc, lm = _shifted(log_tau_fine), _shifted(log_tau_coarse), _up(lam)
    zc = lc + lm
    zf = lf - upsample_blocks(lm, factors)
    return (zf - _flat_lse(zf)).to(dtype), (zc - _flat_lse(zc)).to(log_tau_coarse.dtype)


def reparameterize(tau_fine: Tensor, tau_coarse: Tensor, lam: Tensor) -> tuple[Tensor, Tensor]:
    r"""The paper's dual reparameterization (Theorem 3.1) given multipliers ``lam``.

    .. math::

        \mu_l[i] \propto \tau_l[i]\, e^{\lambda_i}, \qquad
        \mu_k[j] \propto \tau_k[j]\, e^{-\lambda_i} \quad (j \in N(i)),

    each normalized over its grid per sample. The pair is the optimum of Eq. 4 iff
    ``marginalize(mu_k) == mu_l``; :func:`dual_penalty` measures how far from that it is.
    Stationarity of the Lagrangian ``KL(mu_k||tau_k) + KL(mu_l||tau_l) + <lam, M mu_k - mu_l>`` gives
    ``log mu_k = log tau_k - M^T lam + c_k`` and ``log mu_l = log tau_l + lam + c_l``, which is this map.

    Args:
        tau_fine: ``(B, *fine)`` fine attention map (distribution per sample).
        tau_coarse: ``(B, *coarse)`` coarse attention map.
        lam: ``(B, *coarse)`` (per sample) or ``(*coarse)`` (shared) multipliers.

    Returns:
        ``mu_fine (B, *fine)`` and ``mu_coarse (B, *coarse)``, distributions per sample, input dtypes.

    Raises:
        ValueError: shapes as :func:`dualattn.consistency.project_exact`; maps that are not probabilities
            per sample (logits belong in :func:`reparameterize_log`).

    Example:
        >>> tau_k = torch.full((1, 4, 4), 1 / 16); tau_l = torch.full((1, 2, 2), 0.25)
        >>> mu_k, mu_l = reparameterize(tau_k, tau_l, torch.zeros(1, 2, 2))
        >>> bool(torch.allclose(mu_k, tau_k)) and bool(torch.allclose(mu_l, tau_l))
        True
    """
    factors = _check_pair(tau_fine, tau_coarse, "tau_fine", "tau_coarse")
    lam = _check_lam(lam, tau_coarse)
    _check_distributions((tau_fine, "tau_fine"), (tau_coarse, "tau_coarse"), log_twin="reparameterize_log")
    # Fine map without a transcendental function on the fine grid: every cell of block i gets the same
    # factor exp(c_i), c = -lam - logsumexp(log T - lam) with T = marginalize(t_k), so that
    # sum_{j in N(i)} mu_k[j] = T_i exp(c_i) = softmax(log T - lam)_i <= 1, hence exp(c_i) <= 1 / T_i
    # <= 1 / tiny never overflows; it underflows only for blocks whose mass is below float precision.
    tk = _up(tau_fine)
    tk = tk.clamp_min(torch.finfo(tk.dtype).tiny)
    lm = _up(lam)
    z = torch.log(block_sum(tk, factors)) - lm
    c = -lm - torch.logsumexp(z.flatten(1), dim=1).reshape((z.shape[0],) + (1,) * (z.ndim - 1))
    mu_k = tk * upsample_blocks(torch.exp(c), factors, use_matmul=True)
    zc = _log_of(tau_coarse) + lm
    mu_l = torch.softmax(zc.flatten(1), dim=1).reshape(zc.shape)
    return mu_k.to(tau_fine.dtype), mu_l.to(tau_coarse.dtype)
