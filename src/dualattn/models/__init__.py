"""Classifiers with attention gates: a registry of backbones x variants, 2D and 3D.

Backbones: ``unet_encoder`` (the paper's BraTS classifier), ``resnet18``, ``resnet50`` (Captum-safe:
one activation module per use, no ``nn.Identity``), and MONAI ViTs ``vit_b16``, ``vit_small``,
``vit_tiny`` (attention-only baselines). Variants of the CNN backbones: see :data:`GATED_BLOCKS` and
:mod:`dualattn.models.base`.

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

from ._registry import CNN_VARIANTS, get_entry, list_models, list_variants, register_model
from .base import GATED_BLOCKS, AttentionOutput, CNNBackbone, GatedClassifier, weight_features

logger = logging.getLogger(__name__)

__all__ = [
    "AttentionOutput",
    "CNNBackbone",
    "CNN_VARIANTS",
    "DEFAULT_RECIPES",
    "SHARP_GATE",
    "GATED_BLOCKS",
    "GatedClassifier",
    "count_parameters",
    "create_model",
    "list_models",
    "list_variants",
    "register_model",
    "weight_features",
]

#: Gate options of every gated variant's recipe: gain 16 on the potentials, ``u`` started at zero
#: (uniform maps at step 0), and the sharpness term (weight 1) until a map's effective area
#: ``exp(H)/N`` is at most a quarter of the image. Chosen from ``benchmarks/recipe_study.py --study
#: sharpness`` / ``--study confirm`` (docs/models.md, "Sharp attention"): with the paper's gate every
#: map stayed uniform (``exp(H)/N`` 0.95-1.0); with these options ``exact`` reaches AP 61.6 / 58.7
#: (paper gate 44.9 / 51.4) at the same balanced accuracy, with maps on 14-23 % of the image.
SHARP_GATE: dict[str, Any] = {
    "gate_scale": 16.0,
    "gate_zero_init": True,
    "entropy_weight": 1.0,
    "attention_area": 0.25,
}

#: Default training recipe per variant, chosen from ``benchmarks/recipe_study.py`` (docs/models.md):
#: ``init`` = ``"scratch"`` (train end to end) or ``"baseline"`` (start from a trained baseline's
#: weights via ``load_backbone_state``); ``freeze_backbone`` = train only the gates (and witness);
#: ``alpha`` = weight of the consistency penalty (ignored by variants without one); ``model_kwargs`` =
#: ``create_model`` options the recipe sets unless the training config sets them (:data:`SHARP_GATE`).
#: Measured (unet_encoder, synthetic-brain, 5 seeds): frozen-baseline fine-tuning leaves the maps
#: near chance AP, so every variant trains end to end; alpha = 1 beats the paper's 10 on accuracy and
#: AP for ``dual`` and ``kl`` (10 flattens the maps); see docs/models.md.
DEFAULT_RECIPES: dict[str, dict[str, Any]] = {
    "baseline": {"init": "scratch", "freeze_backbone": False, "alpha": 0.0},
    **{
        variant: {
            "init": "scratch",
            "freeze_backbone": False,
            "alpha": 1.0 if variant in ("dual", "kl", "kl_reverse") else 0.0,
            "model_kwargs": dict(SHARP_GATE),
        }
        for variant in ("tau_k", "tau_l", "unconstrained", "dual", "kl", "kl_reverse", "exact", "multilevel")
    },
}


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
            (``alpha``, ``witness``, ``exact_mode``, ``gate_embed``).

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
    model = entry.factory(
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
