"""Classifiers with attention gates: a registry of backbones x variants, 2D and 3D.

Backbones: ``unet_encoder`` (the paper's BraTS classifier), ``resnet18``, ``resnet50`` (Captum-safe:
one activation module per use, no ``nn.Identity``), and MONAI ViTs ``vit_b16``, ``vit_small``,
``vit_tiny`` (attention-only baselines). Variants of the CNN backbones: see :data:`GATED_BLOCKS` and
:mod:`dualattn.models.base`.

Models hold architecture only: ``create_model`` alone builds the paper's gate with the paper's
``alpha`` (:data:`PAPER_ALPHA`); the training recipes (gate options, alpha per variant) live in
:mod:`dualattn.train.recipes`.

Example:
    >>> import torch
    >>> from dualattn.models import create_model
    >>> model = create_model("unet_encoder", variant="exact", in_channels=4, features=8)
    >>> out = model.forward_with_attention(torch.randn(2, 4, 64, 64))
    >>> sorted(out.mu), out.mu["block3"].shape
    (['block3', 'block4'], torch.Size([2, 16, 16]))
"""

from __future__ import annotations

import json
import logging
from typing import Any

from torch import nn

from . import resnet, unet, vit  # noqa: F401  (their @register_model decorators fill the registry)
from . import local  # noqa: F401  (after unet: registers unet_encoder's "additive" variant)
from . import select_predict  # noqa: F401  (after the backbones: registers their "select_predict" variant)
from ._layers import NORMS
from ._registry import (
    CNN_VARIANTS,
    CONSISTENT_VARIANTS,
    get_entry,
    get_factory,
    list_models,
    list_variants,
    register_model,
    register_variant,
)
from .base import (
    GATED_BLOCKS,
    PAPER_ALPHA,
    PENALTY_VARIANTS,
    AttentionOutput,
    CNNBackbone,
    FeatureWeighting,
    GatedClassifier,
    pool_features,
    weight_features,
)

logger = logging.getLogger(__name__)

__all__ = [
    "AttentionOutput",
    "CNNBackbone",
    "CNN_VARIANTS",
    "CONSISTENT_VARIANTS",
    "FeatureWeighting",
    "GATED_BLOCKS",
    "NORMS",
    "PAPER_ALPHA",
    "PENALTY_VARIANTS",
    "GatedClassifier",
    "count_parameters",
    "create_model",
    "get_entry",
    "list_models",
    "list_variants",
    "pool_features",
    "register_model",
    "register_variant",
    "weight_features",
]


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


def create_model(
    name: str,
    *,
    variant: str = "baseline",
    in_channels: int = 1,
    num_classes: int = 2,
    spatial_dims: int = 2,
    **kw: Any,
) -> nn.Module:
    """Build a registered model.

    Args:
        name: backbone, one of :func:`list_models`.
        variant: one of ``list_variants(name)``.
        in_channels: input channels.
        num_classes: number of logits.
        spatial_dims: 2 or 3 (where the backbone supports it).
        **kw: backbone options (``features``, ``stem``, ``patch_size``, ``img_size``) and variant options
            (``alpha``, ``witness``, ``exact_mode``, ``gate_embed``, ``gate_form``, ``gate_bias``, ...: see
            :class:`GatedClassifier`). Only the options passed are recorded in ``model.config``; an option
            left out rebuilds with its default.

    Returns:
        The model; ``model.config`` holds these arguments and ``create_model(**model.config)`` rebuilds it.

    Raises:
        ValueError: unknown name / variant / spatial_dims (the message lists the valid ones), or a bad
            option value.

    Example:
        >>> m = create_model("resnet18", variant="dual", witness="amortized", features=8)
        >>> m.config["variant"], m.attention_blocks
        ('dual', ('block3', 'block4'))
    """
    entry = get_entry(name)
    if variant not in entry.variants:
        raise ValueError(f"unknown variant {variant!r} for {name}; valid variants: {', '.join(entry.variants)}")
    if spatial_dims not in entry.spatial_dims:
        raise ValueError(
            f"{name} does not support spatial_dims={spatial_dims!r}; valid: {', '.join(map(str, entry.spatial_dims))}"
        )
    config: dict[str, Any] = {
        "name": name,
        "variant": variant,
        "in_channels": in_channels,
        "num_classes": num_classes,
        "spatial_dims": spatial_dims,
        **_jsonable({**entry.defaults, **kw}),
    }
    try:
        json.dumps(config)
    except TypeError as exc:
        raise ValueError(f"model options must be JSON-serializable, got {kw!r}: {exc}") from exc
    model = get_factory(name, variant)(
        variant=variant, in_channels=in_channels, num_classes=num_classes, spatial_dims=spatial_dims, config=config,
        **{**entry.defaults, **kw},
    )
    size = getattr(model, "img_size", None)
    if size is not None:
        config["img_size"] = list(size)
    model._config = config
    logger.debug("created %s/%s (%d parameters)", name, variant, count_parameters(model))
    return model


def count_parameters(model: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of parameters (the paper's Table 3 "# Param."); ``trainable_only`` counts requires_grad ones."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
