"""Attention maps of the ViT baseline (:class:`dualattn.models.vit.ViTClassifier`).

* ``vit_attention``: the class token's attention to the patches in the last layer, mean over heads;
* ``vit_rollout``: attention rollout (Abnar & Zuidema, 2020) from the first layer to the last.

Both are per-sample distributions over the patch grid (``img_size // patch_size`` per dim); the
``block`` argument of :func:`dualattn.explain.explain` does not apply (a ViT has one grid).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ._state import eval_mode

__all__ = ["VIT_METHODS", "vit_map"]

VIT_METHODS: dict[str, str] = {"vit_attention": "last", "vit_rollout": "rollout"}


def vit_map(model: nn.Module, images: Tensor, *, method: str) -> Tensor:
    """``(B, 1, *patch_grid)`` map of ``method`` (``vit_attention`` or ``vit_rollout``).

    Raises:
        ValueError: if the model is not a ViT exposing ``vit_attention_maps`` or the method is unknown.
    """
    if method not in VIT_METHODS:
        raise ValueError(f"unknown ViT method {method!r}; valid: {', '.join(VIT_METHODS)}")
    if not hasattr(model, "vit_attention_maps"):
        raise ValueError(f"{method} needs a ViT model (vit_attention_maps()); got {type(model).__name__}")
    with torch.no_grad(), eval_mode(model):
        maps = model.vit_attention_maps(images.detach())
    return maps[VIT_METHODS[method]].detach().float().unsqueeze(1)
