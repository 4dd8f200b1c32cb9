"""Every explainer behind one interface: ``explain(model, images, method=...) -> (B, 1, *grid)``.

Methods (:func:`list_methods`):

* attention maps of the gated variants -- ``tau_k``, ``tau_l``, ``unconstrained``, ``dual``,
  ``kl``, ``kl_reverse``, ``exact``, ``multilevel`` (each for a model of that variant; the map
  that weights the features: ``mu`` when the model has it for the block, else ``tau``; see
  :mod:`dualattn.explain.attention`), ``attention`` (the same for any variant) and ``cvx``
  (Eq. 4 solved post hoc on an unconstrained model's maps);
* post-hoc, through Captum (:mod:`dualattn.explain.posthoc`): ``gradcam``, ``gradcam_norelu``,
  ``input_x_gradient``, ``deeplift``, ``lrp``, ``integrated_gradients``;
* ViT (:mod:`dualattn.explain.vit`): ``vit_attention``, ``vit_rollout``;
* references (:mod:`dualattn.explain.reference`): ``raw_channel_<k>`` and ``random``.

Maps are on the block's grid (``block3`` by default; a ViT's patch grid). Explainers never
change the caller's model: mode, ``requires_grad``, hooks and ``.grad`` are as before; Captum
methods run on a private copy.

Example:
    >>> import torch
    >>> from dualattn.models import create_model
    >>> from dualattn.explain import explain
    >>> model = create_model("unet_encoder", variant="exact", features=4)
    >>> explain(model, torch.randn(2, 1, 32, 32), method="exact", block="block3").shape
    torch.Size([2, 1, 8, 8])
"""

from __future__ import annotations

import logging
import re
from typing import Any, Sequence

from torch import Tensor, nn

__all__ = ["explain", "list_methods", "method_family", "METHOD_FAMILIES", "METHOD_ALIASES"]

logger = logging.getLogger(__name__)

_ATTENTION = ("tau_k", "tau_l", "unconstrained", "dual", "kl", "kl_reverse", "exact", "multilevel", "attention")
_POSTHOC = ("gradcam", "gradcam_norelu", "input_x_gradient", "deeplift", "lrp", "integrated_gradients")
_VIT = ("vit_attention", "vit_rollout")
_RAW = re.compile(r"^raw_channel_(\d+)$")

#: Short names accepted by :func:`explain` (and :func:`method_family`) for the long ones.
METHOD_ALIASES: dict[str, str] = {
    "ig": "integrated_gradients",
    "ixg": "input_x_gradient",
    "grad_cam": "gradcam",
    "vit_last": "vit_attention",
    "rollout": "vit_rollout",
}

#: family -> method names (``raw_channel_<k>`` stands for every input channel k).
METHOD_FAMILIES: dict[str, tuple[str, ...]] = {
    "attention": _ATTENTION,
    "cvx": ("cvx",),
    "posthoc": _POSTHOC,
    "vit": _VIT,
    "reference": ("raw_channel_<k>", "random"),
}


def method_family(method: str) -> str:
    """``"attention"``, ``"cvx"``, ``"posthoc"``, ``"vit"`` or ``"reference"``.

    Raises:
        ValueError: for an unknown method.
    """
    method = METHOD_ALIASES.get(method, method)
    if _RAW.match(method) or method == "random":
        return "reference"
    for family, names in METHOD_FAMILIES.items():
        if method in names:
            return family
    raise ValueError(f"unknown method {method!r}; valid: {', '.join(list_methods())}")


def list_methods(model: nn.Module | None = None, *, in_channels: int | None = None) -> list[str]:
    """Names accepted by :func:`explain`.

    Args:
        model: when given, only the methods that apply to it (its variant's attention map,
            ``attention`` and -- with 2+ gates -- ``cvx``; post-hoc methods when it has feature
            layers; ViT maps and the pixel-level post-hoc methods for a ViT; one ``raw_channel_<k>`` per input channel; ``random``).
        in_channels: number of ``raw_channel_<k>`` entries (default: the model's ``in_channels``, else 1).

    Returns:
        Method names.
    """
    if model is None:
        n = in_channels or 1
        return [*_ATTENTION, "cvx", *_POSTHOC, *_VIT, *[f"raw_channel_{k}" for k in range(n)], "random"]
    from .attention import model_variant

    cfg = getattr(model, "config", {}) or {}
    n = in_channels or int(cfg.get("in_channels", 1) or 1)
    out: list[str] = []
    if hasattr(model, "vit_attention_maps"):
        # a ViT's feature layers emit tokens: no GradCAM; pixel methods pool to the patch grid
        out += [*_VIT, *(m for m in _POSTHOC if not m.startswith("gradcam"))]
    else:
        variant = model_variant(model)
        gates = tuple(getattr(model, "attention_blocks", ()) or ())
        if gates:
            if variant in _ATTENTION:
                out.append(variant)
            out.append("attention")
            if len(gates) >= 2:
                out.append("cvx")
        if hasattr(model, "feature_layers"):
            out += list(_POSTHOC)
    return out + [f"raw_channel_{k}" for k in range(n)] + ["random"]


def explain(
    model: nn.Module,
    images: Tensor,
    *,
    method: str,
    block: str = "block3",
    target: int | Sequence[int] | Tensor | None = None,
    **kw: Any,
) -> Tensor:
    """Explain ``model``'s decision on ``images`` with ``method``.

    Args:
        model: a :mod:`dualattn.models` classifier (``forward(x) -> logits``).
        images: ``(B, C, *S)`` (2D or 3D), on the model's device.
        method: see :func:`list_methods`; the aliases of :data:`METHOD_ALIASES` (``ig``, ``ixg``
            ...) are accepted too.
        block: ``"block3"`` (the paper's fine gate), ``"block4"`` (coarse), ...; ignored by ViT maps.
        target: class to explain for the post-hoc methods (int or one per image); default the
            predicted class. The evaluation passes the true label (DESIGN.md §2). Attention maps
            do not depend on the class.
        **kw: method options: ``solver`` (cvx: ``"closed_form"``/``"cvxpy"``), ``n_steps`` and
            ``internal_batch_size`` (integrated gradients), ``seed`` (random), ``grid`` (pixel
            and reference methods: override the block's grid).

    Returns:
        ``(B, 1, *grid)`` float tensor (detached, on the images' device).

    Raises:
        ValueError: unknown method, a block the model lacks, a method that does not apply to
            the model, or bad options.
    """
    if not isinstance(images, Tensor) or images.dim() not in (4, 5):
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must be a (B, C, H, W) or (B, C, D, H, W) tensor, got {shape}")
    method = METHOD_ALIASES.get(method, method)
    family = method_family(method)
    if family == "attention":
        _no_options(method, kw)
        from .attention import attention_map

        return attention_map(model, images, method=method, block=block)
    if family == "cvx":
        _no_options(method, kw, allowed=("solver",))
        from .attention import cvx_map

        return cvx_map(model, images, block=block, **kw)
    if family == "vit":
        _no_options(method, kw)
        from .vit import vit_map

        return vit_map(model, images, method=method)
    if family == "posthoc":
        if method.startswith("gradcam"):
            allowed: tuple[str, ...] = ()
        elif method == "integrated_gradients":
            allowed = ("n_steps", "internal_batch_size", "grid")
        else:
            allowed = ("grid",)
        _no_options(method, kw, allowed=allowed)
        from .posthoc import posthoc_map

        return posthoc_map(model, images, method=method, block=block, target=target, **kw)
    # reference maps
    _no_options(method, kw, allowed=("seed", "grid"))
    from ._pool import block_grid
    from .reference import random_map, raw_channel_map

    grid = tuple(kw["grid"]) if kw.get("grid") is not None else block_grid(model, images, block)
    if method == "random":
        return random_map(images, grid=grid, seed=int(kw.get("seed", 0)))
    match = _RAW.match(method)
    if match is None:  # pragma: no cover - method_family only returns "reference" for these names
        raise ValueError(f"unknown reference method {method!r}")
    return raw_channel_map(images, channel=int(match.group(1)), grid=grid)


def _no_options(method: str, kw: dict[str, Any], *, allowed: tuple[str, ...] = ()) -> None:
    bad = sorted(set(kw) - set(allowed))
    if bad:
        raise ValueError(f"method {method!r} takes no option(s) {bad}; it accepts {list(allowed) or 'none'}")
