"""ResNet-18 / ResNet-50 written so that every Captum explainer works on them, 2D and 3D.

MONAI's and torchvision's ResNets reuse one ReLU module inside each block (Captum's DeepLIFT then
fails: it needs one module per nonlinearity call) and use ``nn.Identity`` placeholders (Captum's
LRP has no rule for them). Here every activation is its own non-inplace module, the shortcut
projection is ``None`` (not an Identity) when the shapes already agree, and the residual sum is a
plain ``+``.

Blocks: ``block1 .. block4`` are the outputs of stages 1-4 (conv2_x .. conv5_x); the paper's fine gate
is ``block3`` (stage 3), the coarse one ``block4`` (stage 4), and ``multilevel`` adds ``block2``.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from torch import Tensor, nn

from dualattn._checks import check_positive_int, check_spatial_dims

from ._layers import check_norm, conv, init_weights, max_pool, norm_layer, relu
from ._registry import register_model
from .base import CNNBackbone, GatedClassifier

__all__ = ["BasicBlock", "Bottleneck", "ResNetBackbone", "resnet18", "resnet50"]

_STEMS = ("imagenet", "small")


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (ResNet-18/34).

    Args:
        spatial_dims: 2 or 3.
        cin: input channels.
        width: output channels.
        stride: stride of the first convolution (and of the projection shortcut).
        norm: the normalization after every convolution (:data:`~dualattn.models._layers.NORMS`).
    """

    expansion = 1

    def __init__(self, spatial_dims: int, cin: int, width: int, *, stride: int = 1, norm: str = "batch") -> None:
        super().__init__()
        cout = width * self.expansion
        self.conv1 = conv(spatial_dims, cin, width, 3, stride=stride, padding=1)
        self.bn1 = norm_layer(norm, spatial_dims, width)
        self.relu1 = relu()
        self.conv2 = conv(spatial_dims, width, cout, 3, padding=1)
        self.bn2 = norm_layer(norm, spatial_dims, cout)
        self.downsample: nn.Sequential | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                conv(spatial_dims, cin, cout, 1, stride=stride), norm_layer(norm, spatial_dims, cout)
            )
        self.relu2 = relu()

    def forward(self, x: Tensor) -> Tensor:
        """``(B, cin, *S) -> (B, width, *ceil(S / stride))``."""
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        shortcut = self.downsample(x) if self.downsample is not None else x
        return self.relu2(out + shortcut)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand (x4), with a residual connection (ResNet-50).

    Args:
        spatial_dims: 2 or 3.
        cin: input channels.
        width: bottleneck channels (output is ``4 * width``).
        stride: stride of the 3x3 convolution (and of the projection shortcut).
        norm: the normalization after every convolution (:data:`~dualattn.models._layers.NORMS`).
    """

    expansion = 4

    def __init__(self, spatial_dims: int, cin: int, width: int, *, stride: int = 1, norm: str = "batch") -> None:
        super().__init__()
        cout = width * self.expansion
        self.conv1 = conv(spatial_dims, cin, width, 1)
        self.bn1 = norm_layer(norm, spatial_dims, width)
        self.relu1 = relu()
        self.conv2 = conv(spatial_dims, width, width, 3, stride=stride, padding=1)
        self.bn2 = norm_layer(norm, spatial_dims, width)
        self.relu2 = relu()
        self.conv3 = conv(spatial_dims, width, cout, 1)
        self.bn3 = norm_layer(norm, spatial_dims, cout)
        self.downsample: nn.Sequential | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                conv(spatial_dims, cin, cout, 1, stride=stride), norm_layer(norm, spatial_dims, cout)
            )
        self.relu3 = relu()

    def forward(self, x: Tensor) -> Tensor:
        """``(B, cin, *S) -> (B, 4 * width, *ceil(S / stride))``."""
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = self.downsample(x) if self.downsample is not None else x
        return self.relu3(out + shortcut)


class ResNetBackbone(CNNBackbone):
    """Stem + four residual stages ``block1 .. block4``.

    Args:
        block: :class:`BasicBlock` or :class:`Bottleneck`.
        layers: blocks per stage, e.g. ``(2, 2, 2, 2)``.
        in_channels: input channels.
        features: width of stage 1 (64 in the standard ResNets).
        spatial_dims: 2 or 3.
        stem: ``"imagenet"`` (7x7 stride-2 conv + 3x3 stride-2 max-pool: /4, then stages /1,/2,/2,/2,
            so 224 -> block3 14, block4 7) or ``"small"`` (3x3 stride-1 conv, no pool: 64 -> block3 16,
            block4 8; for small images).
        norm: ``"batch"`` (default), ``"group"`` or ``"instance"`` after every convolution
            (:mod:`dualattn.models._layers`).
    """

    def __init__(
        self,
        *,
        block: type[BasicBlock] | type[Bottleneck],
        layers: Sequence[int],
        in_channels: int,
        features: int = 64,
        spatial_dims: int = 2,
        stem: str = "imagenet",
        norm: str = "batch",
    ) -> None:
        super().__init__()
        check_positive_int("in_channels", in_channels)
        check_positive_int("features", features)
        self.spatial_dims = check_spatial_dims(spatial_dims)
        self.norm = check_norm(norm)
        if stem not in _STEMS:
            raise ValueError(f"unknown stem {stem!r}; valid: {', '.join(_STEMS)}")
        self.stem_kind = stem
        if stem == "imagenet":
            self.stem = nn.Sequential(
                conv(spatial_dims, in_channels, features, 7, stride=2, padding=3),
                norm_layer(norm, spatial_dims, features),
                relu(),
                max_pool(spatial_dims, 3, stride=2, padding=1),
            )
        else:
            self.stem = nn.Sequential(
                conv(spatial_dims, in_channels, features, 3, padding=1),
                norm_layer(norm, spatial_dims, features),
                relu(),
            )
        stages: dict[str, nn.Module] = {}
        self.channels = {}
        cin = features
        for i, n_blocks in enumerate(layers):
            width = features * 2**i
            blocks = []
            for j in range(n_blocks):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(block(spatial_dims, cin, width, stride=stride, norm=norm))
                cin = width * block.expansion
            stages[f"block{i + 1}"] = nn.Sequential(*blocks)
            self.channels[f"block{i + 1}"] = cin
        self.stages = nn.ModuleDict(stages)
        init_weights(self)

    def grid_shapes(self, spatial: Sequence[int]) -> dict[str, tuple[int, ...]]:
        """Grid of every stage (each stride-2 layer maps ``S`` to ``ceil(S / 2)``)."""
        size = [int(s) for s in spatial]
        if self.stem_kind == "imagenet":
            size = [math.ceil(math.ceil(s / 2) / 2) for s in size]
        out = {}
        for i, name in enumerate(self.stages):
            if i > 0:
                size = [math.ceil(s / 2) for s in size]
            out[name] = tuple(size)
        return out


def _build(
    block: type[BasicBlock] | type[Bottleneck],
    layers: Sequence[int],
    *,
    variant: str,
    in_channels: int,
    num_classes: int,
    spatial_dims: int,
    features: int,
    stem: str,
    norm: str,
    config: dict[str, Any] | None,
    **kw: Any,
) -> GatedClassifier:
    backbone = ResNetBackbone(
        block=block, layers=layers, in_channels=in_channels, features=features, spatial_dims=spatial_dims, stem=stem,
        norm=norm,
    )
    return GatedClassifier(backbone=backbone, variant=variant, num_classes=num_classes, config=config, **kw)


@register_model(
    "resnet18",
    description="ResNet-18 (basic blocks 2-2-2-2), Captum-safe, 2D/3D",
    defaults={"features": 64, "stem": "imagenet"},
)
def resnet18(
    *,
    variant: str = "baseline",
    in_channels: int = 1,
    num_classes: int = 2,
    spatial_dims: int = 2,
    features: int = 64,
    stem: str = "imagenet",
    norm: str = "batch",
    config: dict[str, Any] | None = None,
    **kw: Any,
) -> GatedClassifier:
    """ResNet-18 classifier with the variant's gates after stages 3/4 (11.2M parameters, 2D, 1 input).

    ``norm``: ``"batch"``, ``"group"`` or ``"instance"`` after every convolution (same parameter count).
    """
    return _build(
        BasicBlock, (2, 2, 2, 2), variant=variant, in_channels=in_channels, num_classes=num_classes,
        spatial_dims=spatial_dims, features=features, stem=stem, norm=norm, config=config, **kw,
    )


@register_model(
    "resnet50",
    description="ResNet-50 (bottlenecks 3-4-6-3), Captum-safe, 2D/3D",
    defaults={"features": 64, "stem": "imagenet"},
)
def resnet50(
    *,
    variant: str = "baseline",
    in_channels: int = 1,
    num_classes: int = 2,
    spatial_dims: int = 2,
    features: int = 64,
    stem: str = "imagenet",
    norm: str = "batch",
    config: dict[str, Any] | None = None,
    **kw: Any,
) -> GatedClassifier:
    """ResNet-50 classifier with the variant's gates after stages 3/4 (23.5M parameters, 2D, 1 input).

    ``norm``: ``"batch"``, ``"group"`` or ``"instance"`` after every convolution (same parameter count).
    """
    return _build(
        Bottleneck, (3, 4, 6, 3), variant=variant, in_channels=in_channels, num_classes=num_classes,
        spatial_dims=spatial_dims, features=features, stem=stem, norm=norm, config=config, **kw,
    )
