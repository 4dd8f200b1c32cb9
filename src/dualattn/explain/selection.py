"""The maps of the select-then-predict model (``variant="select_predict"``, :mod:`dualattn.models.select_predict`).

=========================  ==================================================================================
method                     map at ``block`` (``(B, 1, *grid)``, a distribution per sample)
=========================  ==================================================================================
``select_predict``         where the model looks: the selector's consistent map ``mu[block]`` ranked inside the
                           hard mask -- ``mu * exp(S * mask) / Z`` with ``S`` the least factor (plus ``log 2``)
                           that puts every visible cell above every hidden one: ``mu``'s order and ratios within
                           each set, so average precision sees no ties where ``mu`` has none (a common factor
                           keeps float precision; a common offset would round small values together)
``select_predict_mask``    what the predictor is shown: the hard consistent mask of ``block``, uniform on its
                           visible cells (ties inside)
=========================  ==================================================================================

Both are the same for every class (the mask does not depend on the target). Each costs one selector pass (no
predictor), without gradients, in eval mode; the caller's model is not changed.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from ..models.select_predict import VARIANT
from ._state import eval_mode
from .attention import model_variant

__all__ = ["SELECTION_METHODS", "selection_map", "selection_mask_map"]

#: The select-then-predict model's methods: its ranked map, its hard mask.
SELECTION_METHODS: tuple[str, ...] = (VARIANT, f"{VARIANT}_mask")


def _selection(model: nn.Module, images: Tensor, method: str, block: str) -> Any:  # -> Selection
    variant = model_variant(model)
    if variant != VARIANT or not hasattr(model, "select"):
        raise ValueError(
            f"method {method!r} explains a model of variant {VARIANT!r}, but this model is {variant!r}; "
            "use 'attention' for its attention map or a post-hoc method"
        )
    with torch.no_grad(), eval_mode(model):
        sel = model.select(images.detach())
    if block not in sel.mask:
        raise ValueError(f"block {block!r} has no map in this model; blocks with maps: {list(sel.mask)}")
    return sel


def selection_map(model: nn.Module, images: Tensor, *, block: str = "block3") -> Tensor:
    """``mu * exp(S * mask) / Z`` of ``block`` (module docstring): ``(B, 1, *grid)``, a distribution per sample."""
    sel = _selection(model, images, VARIANT, block)
    log_mu = sel.log_mu[block].double().flatten(1)
    mask = sel.mask[block].flatten(1)
    inf = torch.tensor(math.inf, dtype=log_mu.dtype, device=log_mu.device)
    top_hidden = torch.where(mask, -inf, log_mu).amax(1, keepdim=True)
    low_visible = torch.where(mask, log_mu, inf).amin(1, keepdim=True)
    shift = (top_hidden - low_visible).clamp_min(0.0).nan_to_num(0.0, posinf=0.0, neginf=0.0) + math.log(2.0)
    value = torch.softmax(log_mu + mask * shift, dim=1)
    return value.reshape(sel.mask[block].shape).float().unsqueeze(1)


def selection_mask_map(model: nn.Module, images: Tensor, *, block: str = "block3") -> Tensor:
    """The hard consistent mask of ``block``, uniform on its visible cells: ``(B, 1, *grid)``."""
    sel = _selection(model, images, f"{VARIANT}_mask", block)
    mask = sel.mask[block].double()
    mask = mask / mask.flatten(1).sum(1).clamp_min(1.0).reshape(-1, *([1] * (mask.dim() - 1)))
    return mask.float().unsqueeze(1)
