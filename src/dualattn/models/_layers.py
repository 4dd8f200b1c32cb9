"""Dimension-generic layer constructors (2D / 3D) shared by the CNN backbones.

Every activation and pooling module is created once per use (never reused inside a forward), and
no ``nn.Identity`` placeholders are created, so Captum's DeepLIFT and LRP hook every layer correctly.
Argument checks live in :mod:`dualattn._checks`.
"""

from __future__ import annotations

from torch import nn


def conv(spatial_dims: int, cin: int, cout: int, kernel: int, *, stride: int = 1, padding: int = 0) -> nn.Module:
    """Bias-free convolution (a BatchNorm follows every one)."""
    cls = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
    return cls(cin, cout, kernel, stride=stride, padding=padding, bias=False)


def batch_norm(spatial_dims: int, channels: int) -> nn.Module:
    """BatchNorm with weight 1 and bias 0."""
    return nn.BatchNorm2d(channels) if spatial_dims == 2 else nn.BatchNorm3d(channels)


def max_pool(spatial_dims: int, kernel: int, *, stride: int, padding: int = 0) -> nn.Module:
    """Max pooling."""
    cls = nn.MaxPool2d if spatial_dims == 2 else nn.MaxPool3d
    return cls(kernel, stride=stride, padding=padding)


def relu() -> nn.Module:
    """A fresh non-inplace ReLU (one module per use)."""
    return nn.ReLU(inplace=False)


def init_weights(module: nn.Module) -> None:
    """Kaiming-normal convolutions (fan_out, ReLU), unit BatchNorm, default Linear."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv3d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
