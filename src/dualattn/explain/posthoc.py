"""Post-hoc explainers through Captum, on a private copy of the model.

* ``gradcam``: :class:`captum.attr.LayerGradCam` on ``model.feature_layers()[block]`` with the
  usual ReLU; ``gradcam_norelu`` without it (the sign matters: where the class evidence of a
  layer is negative, the ReLU version sits at chance). Returned on the layer's own grid.
* ``input_x_gradient``, ``deeplift`` (baseline 0), ``lrp`` (the composite rule set of
  :mod:`dualattn.explain.lrp`: gamma / epsilon / LRP-0 by depth thirds, BatchNorm folded),
  ``integrated_gradients`` (baseline 0, ``n_steps``): pixel attributions ``(B, C, *S)``, then
  per-channel min-max per sample, sum over channels, sum-pool to the block's grid (DESIGN.md §2).

Every method works on :func:`~dualattn.explain._state.isolated_copy` of the model, so nothing
Captum does (hooks, ``.rule`` attributes, temporary weights, ``requires_grad``) can reach the
caller's model. On that copy:

* in-place activations are made out-of-place (backward hooks on in-place ops fail);
* DeepLIFT needs one activation module per use: an activation module called more than once per
  forward is replaced by a dispatcher holding one copy per call (:func:`split_reused_modules`);
  LRP likewise refuses reused layers, so every reused leaf module is split for LRP;
* LRP: see :mod:`dualattn.explain.lrp` (canonization and the rule of every layer).
"""

from __future__ import annotations

import logging
import warnings
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from .._optional import optional_import
from ._modules import make_out_of_place, split_reused_modules
from ._pool import block_grid, normalize_and_pool, resolve_target
from ._state import isolated_copy
from .lrp import lrp_attribution

__all__ = [
    "POSTHOC_METHODS",
    "gradcam_map",
    "pixel_attribution",
    "posthoc_map",
    "split_reused_modules",
]

logger = logging.getLogger(__name__)

PIXEL_METHODS: tuple[str, ...] = ("input_x_gradient", "deeplift", "lrp", "integrated_gradients")
POSTHOC_METHODS: tuple[str, ...] = ("gradcam", "gradcam_norelu", *PIXEL_METHODS)


def _captum_attr() -> Any:
    return optional_import("captum.attr", extra="dev", purpose="post-hoc explainers (GradCAM, IG, LRP, DeepLIFT)")


def _feature_layer(model: nn.Module, block: str) -> nn.Module:
    if not hasattr(model, "feature_layers"):
        raise ValueError(f"{type(model).__name__} has no feature_layers(); GradCAM needs one")
    layers = model.feature_layers()
    if block not in layers:
        raise ValueError(f"unknown block {block!r}; feature layers: {sorted(layers)}")
    return layers[block]


def gradcam_map(model: nn.Module, images: Tensor, *, block: str, target: Tensor, relu: bool = True) -> Tensor:
    """LayerGradCam on ``feature_layers()[block]`` (on a private copy of ``model``).

    Args:
        model: any model with ``feature_layers()``.
        images: ``(B, C, *S)``.
        block: the block whose layer is explained.
        target: ``(B,)`` class per sample.
        relu: the usual ReLU on the weighted sum (``False``: ``gradcam_norelu``).

    Returns:
        ``(B, 1, *grid)`` on the layer's grid.
    """
    attr_mod = _captum_attr()
    with isolated_copy(model) as clone:
        layer = _feature_layer(clone, block)
        cam = attr_mod.LayerGradCam(clone, layer)
        x = images.detach().clone().requires_grad_(True)
        out = cam.attribute(x, target=target, relu_attributions=relu)
    return out.detach().float()


def pixel_attribution(
    model: nn.Module, images: Tensor, *, method: str, target: Tensor, n_steps: int = 32,
    internal_batch_size: int | None = None,
) -> Tensor:
    """Raw pixel attributions ``(B, C, *S)`` of one of :data:`PIXEL_METHODS` (baseline 0).

    Runs on a private copy of ``model`` prepared as the module docstring says.
    """
    if method not in PIXEL_METHODS:
        raise ValueError(f"unknown pixel method {method!r}; valid: {', '.join(PIXEL_METHODS)}")
    if n_steps < 2:
        raise ValueError(f"n_steps must be >= 2, got {n_steps}")
    if method == "lrp":
        return lrp_attribution(model, images, target=target)
    attr_mod = _captum_attr()
    x = images.detach().clone().requires_grad_(True)
    with isolated_copy(model) as clone, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*hooks and attributes on non-linear", category=UserWarning)
        make_out_of_place(clone)
        if method == "input_x_gradient":
            out = attr_mod.InputXGradient(clone).attribute(x, target=target)
        elif method == "integrated_gradients":
            out = attr_mod.IntegratedGradients(clone).attribute(
                x, baselines=torch.zeros_like(x), target=target, n_steps=n_steps,
                internal_batch_size=internal_batch_size,
            )
        else:  # deeplift
            from captum.attr._core.deep_lift import SUPPORTED_NON_LINEAR

            split_reused_modules(clone, x[:1], only=tuple(SUPPORTED_NON_LINEAR))
            out = attr_mod.DeepLift(clone).attribute(x, baselines=torch.zeros_like(x), target=target)
    return out.detach().float()


def posthoc_map(
    model: nn.Module,
    images: Tensor,
    *,
    method: str,
    block: str = "block3",
    target: int | Sequence[int] | Tensor | None = None,
    grid: Sequence[int] | None = None,
    **kw: Any,
) -> Tensor:
    """One of :data:`POSTHOC_METHODS` as a ``(B, 1, *grid)`` map on ``block``'s grid.

    Args:
        model: the classifier (the paper: the baseline).
        images: ``(B, C, *S)``.
        method: ``gradcam``, ``gradcam_norelu``, ``input_x_gradient``, ``deeplift``, ``lrp`` or
            ``integrated_gradients``.
        block: block whose grid (and, for GradCAM, layer) is used.
        target: class to explain (int or ``(B,)``); the predicted class when ``None``.
        grid: override the block's grid (pixel methods only).
        **kw: ``n_steps``/``internal_batch_size`` for integrated gradients.
    """
    if method not in POSTHOC_METHODS:
        raise ValueError(f"unknown post-hoc method {method!r}; valid: {', '.join(POSTHOC_METHODS)}")
    t = resolve_target(model, images, target)
    if method in ("gradcam", "gradcam_norelu"):
        return gradcam_map(model, images, block=block, target=t, relu=(method == "gradcam"))
    g = tuple(grid) if grid is not None else block_grid(model, images, block)
    attr = pixel_attribution(model, images, method=method, target=t, **kw)
    return normalize_and_pool(attr, g)
