"""Dimension-generic layer constructors (2D / 3D) shared by the CNN backbones.

Every activation and pooling module is created once per use (never reused inside a forward), and
no ``nn.Identity`` placeholders are created, so Captum's DeepLIFT and LRP hook every layer correctly.
Argument checks live in :mod:`dualattn._checks`.

Normalization (``norm``, :data:`NORMS`): every CNN backbone normalizes after each convolution with

* ``"batch"`` (default): BatchNorm, statistics over the batch and the positions; running averages in
  eval mode. Folded into the convolution for LRP.
* ``"group"``: GroupNorm with :func:`group_count` groups, statistics per sample (train = eval): for the
  batches of a few volumes 3-D training has, where batch statistics are noisy.
* ``"instance"``: InstanceNorm with a learned affine (GroupNorm with one channel per group), statistics
  per sample and channel over the positions; needs more than one position at every stage in training.

All three have one weight and one bias per channel, so parameter counts do not depend on ``norm``;
only BatchNorm has buffers (running statistics).
"""

from __future__ import annotations

from torch import nn

#: The normalizations every CNN backbone offers (``create_model(..., norm=...)``).
NORMS: tuple[str, ...] = ("batch", "group", "instance")
#: :func:`group_count`'s bounds: at most this many groups (Wu & He's default) ...
MAX_GROUPS = 32
#: ... and at least this many channels per group (fewer normalizes single channels, i.e. instance norm).
MIN_GROUP_CHANNELS = 4


def check_norm(norm: object) -> str:
    """Return ``norm`` if it is one of :data:`NORMS`, else raise ValueError naming it."""
    if not isinstance(norm, str) or norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; valid: {', '.join(NORMS)}")
    return norm


def group_count(channels: int) -> int:
    """GroupNorm's number of groups for ``channels``: the largest divisor of ``channels`` that is at most
    :data:`MAX_GROUPS` and leaves at least :data:`MIN_GROUP_CHANNELS` channels per group (1 when
    ``channels < 2 * MIN_GROUP_CHANNELS``, which is layer normalization over that stage).

    Wu & He ("Group Normalization", 2018) use 32 groups; the small widths of CPU work (4 or 8 channels in
    the first stage) cannot have 32, and groups of one or two channels normalize each channel over the
    positions alone, which a 2x2x2 late stage does badly.

    Example:
        >>> [group_count(c) for c in (4, 8, 12, 16, 32, 64, 128, 256, 2048)]
        [1, 2, 3, 4, 8, 16, 32, 32, 32]
    """
    if channels < 1:
        raise ValueError(f"channels must be >= 1, got {channels!r}")
    best = 1
    for g in range(1, min(MAX_GROUPS, channels // MIN_GROUP_CHANNELS) + 1):
        if channels % g == 0:
            best = g
    return best


def conv(spatial_dims: int, cin: int, cout: int, kernel: int, *, stride: int = 1, padding: int = 0) -> nn.Module:
    """Bias-free convolution (a normalization layer follows every one)."""
    cls = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
    return cls(cin, cout, kernel, stride=stride, padding=padding, bias=False)


def batch_norm(spatial_dims: int, channels: int) -> nn.Module:
    """BatchNorm with weight 1 and bias 0."""
    return nn.BatchNorm2d(channels) if spatial_dims == 2 else nn.BatchNorm3d(channels)


def norm_layer(norm: str, spatial_dims: int, channels: int) -> nn.Module:
    """The normalization ``norm`` (:data:`NORMS`) of ``channels`` channels, weight 1 and bias 0.

    Example:
        >>> gn = norm_layer("group", 3, 16)
        >>> type(gn).__name__, gn.num_groups, gn.num_channels
        ('GroupNorm', 4, 16)
    """
    check_norm(norm)
    if norm == "batch":
        return batch_norm(spatial_dims, channels)
    if norm == "group":
        return nn.GroupNorm(group_count(channels), channels)
    cls = nn.InstanceNorm2d if spatial_dims == 2 else nn.InstanceNorm3d
    return cls(channels, affine=True)


def max_pool(spatial_dims: int, kernel: int, *, stride: int, padding: int = 0) -> nn.Module:
    """Max pooling."""
    cls = nn.MaxPool2d if spatial_dims == 2 else nn.MaxPool3d
    return cls(kernel, stride=stride, padding=padding)


def relu() -> nn.Module:
    """A fresh non-inplace ReLU (one module per use)."""
    return nn.ReLU(inplace=False)


def init_weights(module: nn.Module) -> None:
    """Kaiming-normal convolutions (fan_out, ReLU), unit normalization layers, default Linear."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv3d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm, nn.InstanceNorm2d, nn.InstanceNorm3d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
