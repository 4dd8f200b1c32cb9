"""Attention maps of the gated variants, and the post-hoc ``cvx`` projection.

What each method returns for ``block`` (a ``(B, 1, *grid)`` distribution per sample):

=================  ==========================================================================
method             map
=================  ==========================================================================
``tau_k``          ``tau[block]`` of a ``tau_k`` model (one fine gate, block3)
``tau_l``          ``tau[block]`` of a ``tau_l`` model (one coarse gate, block4)
``unconstrained``  ``tau[block]``: two independent gates, no consistency term
``kl``             ``tau[block]`` of a model trained with KL(tau_l || marg(tau_k))
``kl_reverse``     ``tau[block]`` of a model trained with KL(marg(tau_k) || tau_l)
``dual``           ``mu[block]``: the gate's map reparameterized by the learned witness lambda
                   (Theorem 3.1) -- the map that weights the features; ``tau[block]`` if the
                   model does not return ``mu``
``exact``          ``mu[block]``: the exact solution of Eq. 4 computed in the forward pass
``multilevel``     ``mu[block]``: exact consistency over the 3+ level chain
``attention``      whatever the model weights its features by: ``mu[block]`` if present, else
                   ``tau[block]`` (any variant; used by the scan command)
``cvx``            Eq. 4 solved post hoc on the model's own ``tau`` maps of all its gated
                   blocks (closed form :func:`dualattn.consistency.project_exact`, or the
                   chain version for 3+ gates; ``solver="cvxpy"`` uses the conic solver as a
                   check); meant for ``unconstrained`` models
=================  ==========================================================================

Variant-named methods check that the model is of that variant (``ValueError`` otherwise):
asking an ``unconstrained`` model for ``exact`` would silently return its ``tau``.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor, nn

from .. import consistency
from ..models import CNN_VARIANTS
from ._state import eval_mode

__all__ = ["VARIANT_METHODS", "attention_map", "cvx_map", "model_variant"]

logger = logging.getLogger(__name__)

#: Methods named after a model variant (every gated CNN variant); each explains a model of that variant.
VARIANT_METHODS: tuple[str, ...] = tuple(v for v in CNN_VARIANTS if v != "baseline")


def model_variant(model: nn.Module) -> str | None:
    """The model's variant name (``model.config["variant"]`` or ``model.variant``), if any."""
    cfg = getattr(model, "config", None)
    if isinstance(cfg, dict) and isinstance(cfg.get("variant"), str):
        return cfg["variant"]
    v = getattr(model, "variant", None)
    return v if isinstance(v, str) else None


def _attention_output(model: nn.Module, images: Tensor):  # -> AttentionOutput
    if not hasattr(model, "forward_with_attention"):
        raise ValueError(f"{type(model).__name__} has no forward_with_attention(); it has no attention maps")
    with torch.no_grad(), eval_mode(model):
        return model.forward_with_attention(images.detach())


def _missing_block(block: str, out) -> ValueError:  # noqa: ANN001
    have = sorted(set(out.tau) | set(out.mu))
    return ValueError(f"block {block!r} has no attention map in this model; blocks with maps: {have}")


def attention_map(model: nn.Module, images: Tensor, *, method: str, block: str = "block3") -> Tensor:
    """The model's own attention map of ``block`` (see the module table for each ``method``).

    Args:
        model: a gated model (``forward_with_attention``).
        images: ``(B, C, *S)``.
        method: one of :data:`VARIANT_METHODS` or ``"attention"``.
        block: ``"block3"``, ``"block4"``, ...

    Returns:
        ``(B, 1, *grid)`` float tensor, a distribution per sample.
    """
    if method != "attention" and method not in VARIANT_METHODS:
        raise ValueError(f"unknown attention method {method!r}; valid: attention, {', '.join(VARIANT_METHODS)}")
    variant = model_variant(model)
    if method != "attention" and variant is not None and variant != method:
        hint = " (use method='cvx' for the post-hoc projection)" if method in ("exact", "multilevel") else ""
        raise ValueError(
            f"method {method!r} explains a model of variant {method!r}, but this model is {variant!r}; "
            f"use method={variant!r} or 'attention'{hint}"
        )
    out = _attention_output(model, images)
    maps = out.mu if block in out.mu else out.tau
    if block not in maps:
        raise _missing_block(block, out)
    return maps[block].detach().float().unsqueeze(1)


def cvx_map(
    model: nn.Module, images: Tensor, *, block: str = "block3", solver: str = "closed_form"
) -> Tensor:
    """Eq. 4 solved post hoc on the model's raw gate maps ``tau`` (the paper's CVX baseline).

    Args:
        model: a model with >= 2 gated blocks (the paper: ``unconstrained``).
        images: ``(B, C, *S)``.
        block: which projected map to return.
        solver: ``"closed_form"`` (:func:`dualattn.consistency.project_exact` /
            ``project_exact_chain``) or ``"cvxpy"`` (``solve_cvx`` / ``solve_cvx_chain``; slow,
            a conic solve per image, needs the ``cvx`` extra).

    Returns:
        ``(B, 1, *grid)``: the consistent map ``mu`` of ``block``.
    """
    if solver not in ("closed_form", "cvxpy"):
        raise ValueError(f"solver must be 'closed_form' or 'cvxpy', got {solver!r}")
    out = _attention_output(model, images)
    blocks = [b for b in getattr(model, "attention_blocks", tuple(out.tau)) if b in out.tau]
    if len(blocks) < 2:
        raise ValueError(f"cvx needs a model with >= 2 gated blocks (e.g. variant 'unconstrained'); this one gates {blocks}")
    if block not in blocks:
        raise _missing_block(block, out)
    taus = [out.tau[b].detach().double() for b in blocks]
    if len(taus) == 2:
        fn = consistency.project_exact if solver == "closed_form" else consistency.solve_cvx
        mus = list(fn(taus[0], taus[1]))
    else:
        fn = consistency.project_exact_chain if solver == "closed_form" else consistency.solve_cvx_chain
        mus = list(fn(taus))
    return mus[blocks.index(block)].float().unsqueeze(1)
