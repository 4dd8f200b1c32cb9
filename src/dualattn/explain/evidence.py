"""The maps of the additive local-evidence model (``variant="additive"``, :mod:`dualattn.models.local`).

=========================  ==================================================================================
method                     map at ``block`` (``(B, 1, *grid)``)
=========================  ==================================================================================
``additive``               where the model looks: ``mu[block]``, the exact consistent map that pools the
                           block's evidence (a distribution per sample; the same for every class)
``additive_contribution``  what each place contributed: ``mu * e`` with ``e = s[:, t] - mean of s[:, c != t]``
                           (two classes: the logit difference, target minus other), signed; with
                           ``scales="all"`` (default) every gated scale's terms on this block's grid
                           (:func:`dualattn.models.local.contribution_map`), so the map sums to the target's
                           logit minus the mean of the others' logits, less the same combination of the
                           biases; ``scales="own"``: this block's terms only; ``contrast=False``: ``mu * s[:, t]``
                           (sums to the target's logit minus its bias, all scales)
=========================  ==================================================================================

Why the contrast by default: a softmax classifier's decision does not change when every logit moves by the
same amount, so one logit alone is not the decision; for two classes the contrast is the log-odds of the
target. The target is the predicted class unless given (as for the post-hoc methods). Each map costs one
forward pass (``forward_with_evidence``), without gradients, in eval mode; the caller's model is not changed.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from ..models.local import ADDITIVE_VARIANT, class_weights
from ..models.local import contribution_map as _contribution_map
from ._pool import resolve_target
from ._state import eval_mode
from .attention import model_variant

__all__ = ["EVIDENCE_METHODS", "additive_attention_map", "additive_contribution_map"]

logger = logging.getLogger(__name__)

#: The additive model's methods: where it looks, what each place contributed.
EVIDENCE_METHODS: tuple[str, ...] = (ADDITIVE_VARIANT, f"{ADDITIVE_VARIANT}_contribution")


def _evidence(model: nn.Module, images: Tensor, method: str) -> Any:  # -> EvidenceOutput
    variant = model_variant(model)
    if variant != ADDITIVE_VARIANT or not hasattr(model, "forward_with_evidence"):
        raise ValueError(
            f"method {method!r} explains a model of variant {ADDITIVE_VARIANT!r}, but this model is {variant!r}; "
            "use 'attention' for its attention map or a post-hoc method"
        )
    with torch.no_grad(), eval_mode(model):
        return model.forward_with_evidence(images.detach())


def _check_block(block: str, out: Any) -> None:
    if block not in out.mu:
        raise ValueError(f"block {block!r} has no map in this model; blocks with maps: {list(out.mu)}")


def additive_attention_map(model: nn.Module, images: Tensor, *, block: str = "block3") -> Tensor:
    """``mu[block]`` of an ``additive`` model: ``(B, 1, *grid)``, a distribution per sample."""
    out = _evidence(model, images, ADDITIVE_VARIANT)
    _check_block(block, out)
    return out.mu[block].detach().float().unsqueeze(1)


def additive_contribution_map(
    model: nn.Module,
    images: Tensor,
    *,
    block: str = "block3",
    target: int | Sequence[int] | Tensor | None = None,
    contrast: bool = True,
    scales: str = "all",
) -> Tensor:
    """What each cell contributed to the decision (module docstring): ``(B, 1, *grid)``, signed.

    Args:
        model: an ``additive`` model.
        images: ``(B, C, *S)``.
        block: the grid of the map.
        target: class per image (int or ``(B,)``); default the predicted class.
        contrast: explain the target's logit minus the mean of the others' (default) or the logit itself.
        scales: ``"all"`` (every gated scale on this grid) or ``"own"`` (this block's terms).

    Raises:
        ValueError: not an ``additive`` model, a block without a map, a bad target or option.
    """
    if not isinstance(contrast, bool):
        raise ValueError(f"contrast must be true or false, got {contrast!r}")
    out = _evidence(model, images, f"{ADDITIVE_VARIANT}_contribution")
    _check_block(block, out)
    t = out.logits.argmax(dim=1) if target is None else resolve_target(model, images, target)
    weights = class_weights(out.logits.shape[1], t, contrast=contrast)
    return _contribution_map(out, weights, block, scales=scales).detach().float().unsqueeze(1)
