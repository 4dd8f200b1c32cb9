"""The paper's BraTS classifier: a U-Net encoder with a global-average-pool + linear head."""

from __future__ import annotations

from typing import Any, Sequence

from torch import nn

from dualattn._checks import check_positive_int, check_spatial_dims

from ._layers import check_norm, conv, init_weights, max_pool, norm_layer, relu
from ._registry import register_model
from .base import CNNBackbone, GatedClassifier

__all__ = ["UNetEncoder", "unet_encoder"]


def _double_conv(spatial_dims: int, cin: int, cout: int, *, pool: bool, norm: str) -> nn.Sequential:
    layers: list[nn.Module] = [max_pool(spatial_dims, 2, stride=2)] if pool else []
    layers += [
        conv(spatial_dims, cin, cout, 3, padding=1),
        norm_layer(norm, spatial_dims, cout),
        relu(),
        conv(spatial_dims, cout, cout, 3, padding=1),
        norm_layer(norm, spatial_dims, cout),
        relu(),
    ]
    return nn.Sequential(*layers)


class UNetEncoder(CNNBackbone):
    """Five blocks of two 3x3 conv + norm + ReLU (widths f, 2f, 4f, 8f, 16f), 2x max-pool before blocks 2-5.

    Block ``k`` has a grid of ``floor(S / 2**(k-1))`` per spatial dim for an input of size ``S``: a
    64x64 input gives block3 16x16 and block4 8x8 (the paper's fine/coarse pair differ by a factor 2).

    Args:
        in_channels: input channels (4 for BraTS' modalities).
        features: width of block 1 (the paper's 32; 8 or 16 for CPU work).
        spatial_dims: 2 or 3.
        norm: ``"batch"`` (the paper's), ``"group"`` or ``"instance"`` (:mod:`dualattn.models._layers`).
    """

    def __init__(self, *, in_channels: int, features: int = 32, spatial_dims: int = 2, norm: str = "batch") -> None:
        super().__init__()
        check_positive_int("in_channels", in_channels)
        check_positive_int("features", features)
        self.spatial_dims = check_spatial_dims(spatial_dims)
        self.norm = check_norm(norm)
        self.stem = None
        widths = [features * 2**i for i in range(5)]
        self.channels = {f"block{i + 1}": w for i, w in enumerate(widths)}
        cins = [in_channels, *widths[:-1]]
        self.stages = nn.ModuleDict(
            {
                f"block{i + 1}": _double_conv(spatial_dims, cin, cout, pool=i > 0, norm=norm)
                for i, (cin, cout) in enumerate(zip(cins, widths))
            }
        )
        init_weights(self)

    def grid_shapes(self, spatial: Sequence[int]) -> dict[str, tuple[int, ...]]:
        """Grid of every block: ``floor(S / 2**(k-1))`` for block ``k``."""
        return {f"block{k}": tuple(int(s) // 2 ** (k - 1) for s in spatial) for k in range(1, 6)}


@register_model(
    "unet_encoder",
    description="U-Net encoder (paper's BraTS classifier): 5 double-conv blocks f..16f, GAP + linear",
    defaults={"features": 32},
)
def unet_encoder(
    *,
    variant: str = "baseline",
    in_channels: int = 1,
    num_classes: int = 2,
    spatial_dims: int = 2,
    features: int = 32,
    norm: str = "batch",
    config: dict[str, Any] | None = None,
    **kw: Any,
) -> GatedClassifier:
    """Build the U-Net encoder classifier (about 4.7M parameters with 4 inputs and ``features=32``).

    ``norm`` (``"batch"``, ``"group"``, ``"instance"``) normalizes after every convolution; it does not
    change the parameter count. Extra keyword arguments (``alpha``, ``witness``, ``exact_mode``,
    ``gate_embed``, ``gate_form``, ``gate_bias``, ``img_size``, ...) go to
    :class:`~dualattn.models.base.GatedClassifier`.
    """
    backbone = UNetEncoder(in_channels=in_channels, features=features, spatial_dims=spatial_dims, norm=norm)
    return GatedClassifier(backbone=backbone, variant=variant, num_classes=num_classes, config=config, **kw)
