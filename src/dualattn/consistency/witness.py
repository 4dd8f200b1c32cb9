"""Dual witnesses: learned multipliers ``lam`` for :func:`~dualattn.consistency.reparameterize`."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from dualattn._checks import check_feature_map, check_positive_int, check_spatial_dims

__all__ = ["AmortizedWitness", "GlobalWitness"]


class GlobalWitness(nn.Module):
    """One learned multiplier per coarse cell, shared by all samples (what the paper's public code does).

    Args:
        coarse_shape: the coarse grid ``(h, w)`` or ``(d, h, w)``.

    The parameter ``lam`` starts at 0 (``reparameterize`` then returns the maps unchanged).

    Example:
        >>> w = GlobalWitness((4, 4))
        >>> tuple(w(torch.zeros(3, 8, 4, 4)).shape)
        (3, 4, 4)
    """

    def __init__(self, coarse_shape: Sequence[int]) -> None:
        super().__init__()
        try:
            shape = tuple(int(s) for s in coarse_shape)
        except TypeError as exc:
            raise ValueError(f"coarse_shape must be a sequence of ints, got {coarse_shape!r}") from exc
        if len(shape) not in (2, 3) or any(s <= 0 for s in shape):
            raise ValueError(f"coarse_shape must be 2 or 3 positive ints, got {coarse_shape!r}")
        self.coarse_shape = shape
        self.lam = nn.Parameter(torch.zeros(shape))

    def forward(self, features: Tensor) -> Tensor:
        """Broadcast the shared multipliers over the batch of ``features`` (any tensor, batch first).

        Returns:
            ``(B, *coarse)`` (an expanded view of the parameter).
        """
        if not isinstance(features, Tensor) or features.ndim < 1:
            raise ValueError("features must be a tensor with the batch size first")
        return self.lam.unsqueeze(0).expand((features.shape[0],) + self.coarse_shape)

    def extra_repr(self) -> str:
        return f"coarse_shape={self.coarse_shape}"


class AmortizedWitness(nn.Module):
    """A shallow conv head predicting one multiplier per coarse cell and sample (what the paper's text describes).

    ``conv kxk (C -> hidden) -> ReLU -> conv 1x1 (hidden -> 1)``; the last conv starts at zero so that
    the initial witness is ``lam = 0`` like :class:`GlobalWitness`.

    Args:
        in_channels: channels ``C`` of the coarse feature map.
        spatial_dims: 2 or 3.
        hidden: channels of the hidden layer.
        kernel_size: odd size of the first conv (``padding = kernel_size // 2`` keeps the grid).

    Example:
        >>> w = AmortizedWitness(8)
        >>> tuple(w(torch.randn(2, 8, 4, 4)).shape)
        (2, 4, 4)
    """

    def __init__(self, in_channels: int, *, spatial_dims: int = 2, hidden: int = 32, kernel_size: int = 3) -> None:
        super().__init__()
        check_positive_int("in_channels", in_channels)
        check_positive_int("hidden", hidden)
        check_spatial_dims(spatial_dims)
        if not isinstance(kernel_size, int) or kernel_size <= 0 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd int, got {kernel_size!r}")
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        self.in_channels = in_channels
        self.spatial_dims = spatial_dims
        self.hidden = hidden
        self.conv1 = conv(in_channels, hidden, kernel_size, padding=kernel_size // 2)
        self.act = nn.ReLU()
        self.conv2 = conv(hidden, 1, 1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, features: Tensor) -> Tensor:
        """``(B, C, *coarse) -> lam (B, *coarse)``."""
        check_feature_map("features", features, spatial_dims=self.spatial_dims, channels=self.in_channels)
        return self.conv2(self.act(self.conv1(features))).squeeze(1)
