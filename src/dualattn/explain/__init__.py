"""Every explainer behind one interface: ``explain(model, images, method=...) -> (B, 1, *grid)``.

Methods (:func:`list_methods`):

* attention maps of the gated variants -- ``tau_k``, ``tau_l``, ``unconstrained``, ``dual``,
  ``kl``, ``kl_reverse``, ``exact``, ``multilevel`` (each for a model of that variant; the map
  that weights the features: ``mu`` when the model has it for the block, else ``tau``; see
  :mod:`dualattn.explain.attention`), ``attention`` (the same for any variant) and ``cvx``
  (Eq. 4 solved post hoc on an unconstrained model's maps); the ``additive`` model's ``additive`` (its map
  ``mu``) and ``additive_contribution`` (``mu * s``, what each place contributed; :mod:`dualattn.explain.evidence`);
  the ``select_predict`` model's ``select_predict`` (its selector's ``mu`` ranked inside the hard mask) and
  ``select_predict_mask`` (the hard mask; :mod:`dualattn.explain.selection`);
* post-hoc, through Captum (:mod:`dualattn.explain.posthoc`): ``gradcam``, ``gradcam_norelu``,
  ``input_x_gradient``, ``deeplift``, ``lrp`` (a composite rule set, :mod:`dualattn.explain.lrp`:
  :data:`LRP_RULES`, :func:`describe_lrp_rules`), ``integrated_gradients``;
* ViT (:mod:`dualattn.explain.vit`): ``vit_attention``, ``vit_rollout``;
* controls, family ``"control"`` (:mod:`dualattn.explain.controls`, :mod:`dualattn.explain.reference`):
  ``prior`` (a ``dual`` model's image-independent map), ``dual_tau`` (its gate map before the
  reparameterization), ``center`` (a centered Gaussian of the lesions' mean size),
  ``raw_channel_<k>`` and ``random``.

Every method is one entry of a registry (:func:`register_method`, :func:`get_method`,
:class:`MethodSpec`): its family, its options, the runs it explains (:func:`select_sources`,
:func:`method_sources`) and the function computing its maps. :func:`explain_blocks` gives the
maps of several blocks at once (one pixel attribution for all of them).

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
from typing import Any, Sequence

from torch import Tensor, nn

from . import _builtin  # noqa: F401  (registers the built-in methods)
from ._pool import block_grid, minmax_per_channel, normalize_and_pool, resolve_target
from ._registry import (
    FAMILIES,
    METHOD_ALIASES,
    METHOD_FAMILIES,
    VIT_SOURCE,
    MethodSpec,
    get_method,
    list_methods,
    method_family,
    method_sources,
    methods_in_family,
    register_method,
    select_sources,
)
from ._state import eval_mode, isolated_copy
from .attention import VARIANT_METHODS, model_variant
from .controls import DEFAULT_LESION_FRACTION, center_map, center_sigma, dual_tau_map, prior_map
from .evidence import EVIDENCE_METHODS, additive_attention_map, additive_contribution_map
from .lrp import LRP_DESCRIPTION, LRP_RULES, LRPRule, describe_lrp_rules
from .posthoc import PIXEL_METHODS, POSTHOC_METHODS, pixel_attribution
from .selection import SELECTION_METHODS, selection_map, selection_mask_map

__all__ = [
    "explain",
    "explain_blocks",
    "list_methods",
    "method_family",
    "methods_in_family",
    "get_method",
    "register_method",
    "MethodSpec",
    "select_sources",
    "method_sources",
    "FAMILIES",
    "METHOD_FAMILIES",
    "METHOD_ALIASES",
    "VIT_SOURCE",
    "VARIANT_METHODS",
    "EVIDENCE_METHODS",
    "additive_attention_map",
    "additive_contribution_map",
    "SELECTION_METHODS",
    "selection_map",
    "selection_mask_map",
    "POSTHOC_METHODS",
    "PIXEL_METHODS",
    "model_variant",
    "block_grid",
    "minmax_per_channel",
    "normalize_and_pool",
    "resolve_target",
    "pixel_attribution",
    "DEFAULT_LESION_FRACTION",
    "center_map",
    "center_sigma",
    "dual_tau_map",
    "prior_map",
    "LRP_RULES",
    "LRP_DESCRIPTION",
    "LRPRule",
    "describe_lrp_rules",
    "eval_mode",
    "isolated_copy",
]

logger = logging.getLogger(__name__)


def _check_images(images: Tensor) -> None:
    if not isinstance(images, Tensor) or images.dim() not in (4, 5):
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must be a (B, C, H, W) or (B, C, D, H, W) tensor, got {shape}")


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
        **kw: method options (:attr:`MethodSpec.options`): ``solver`` (cvx:
            ``"closed_form"``/``"cvxpy"``), ``n_steps`` and ``internal_batch_size`` (integrated
            gradients), ``seed`` (random), ``grid`` (pixel methods and controls on the baseline:
            override the block's grid), ``population`` (prior: the images an amortized witness's
            factor is averaged over; the evaluation passes the whole test set), ``lesion_fraction``
            (center: mean lesion area as a fraction of the image; the evaluation passes the train
            split's).

    Returns:
        ``(B, 1, *grid)`` float tensor (detached, on the images' device).

    Raises:
        ValueError: unknown method, a block the model lacks, a method that does not apply to
            the model, or bad options.
    """
    _check_images(images)
    method = METHOD_ALIASES.get(method, method)
    spec = get_method(method)
    spec.check_options(method, kw)
    return spec.compute(model, images, method=method, block=block, target=target, **kw)


def explain_blocks(
    model: nn.Module,
    images: Tensor,
    *,
    method: str,
    blocks: Sequence[str],
    target: int | Sequence[int] | Tensor | None = None,
    errors: dict[str, str] | None = None,
    **options: Any,
) -> dict[str, Tensor]:
    """Maps of ``method`` for every block in ``blocks``: ``explain`` once per block, except that a
    pixel-level method (:attr:`MethodSpec.pixel_level`: Input x Gradient, DeepLIFT, LRP, IG)
    computes its attribution once and pools it to every block's grid (the attribution does not
    depend on the block).

    One call, no batching, timing or device moves: the caller splits the images into batches.

    Args:
        model: as for :func:`explain`.
        images: ``(B, C, *S)``.
        method: a method name or alias.
        blocks: the blocks to explain, e.g. ``("block3", "block4")``.
        target: as for :func:`explain`.
        errors: when given, a block that cannot be explained (the model lacks it, the method does
            not apply there) is skipped and ``errors[block]`` set to the reason; when ``None``
            such a block raises.
        **options: method options, as for :func:`explain`.

    Returns:
        ``{block: (B, 1, *grid)}`` for the blocks explained, in the order of ``blocks``.

    Raises:
        ValueError: bad images, an unknown method or bad options; a block that cannot be explained
            when ``errors`` is ``None`` (the message names the block).
    """
    _check_images(images)
    method = METHOD_ALIASES.get(method, method)
    spec = get_method(method)
    spec.check_options(method, options)

    def failed(block: str, exc: ValueError) -> None:
        if errors is None:
            raise ValueError(f"{method} at block {block!r}: {exc}") from exc
        errors[block] = str(exc)

    maps: dict[str, Tensor] = {}
    if not spec.pixel_level:
        for block in blocks:
            try:
                maps[block] = explain(model, images, method=method, block=block, target=target, **options)
            except ValueError as exc:
                failed(block, exc)
        return maps
    grid = options.pop("grid", None)
    grids: dict[str, tuple[int, ...]] = {}
    for block in blocks:
        try:
            grids[block] = tuple(grid) if grid is not None else block_grid(model, images[:1], block)
        except ValueError as exc:
            failed(block, exc)
    if not grids:
        return maps
    attr = pixel_attribution(model, images, method=method, target=resolve_target(model, images, target), **options)
    return {block: normalize_and_pool(attr, g) for block, g in grids.items()}
