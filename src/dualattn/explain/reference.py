"""Two of the controls every table shows beside the explainers (family ``"control"``; the others are in
:mod:`dualattn.explain.controls`).

* ``raw_channel_<k>``: input channel ``k`` used as the heatmap (per-sample min-max, sum-pooled
  to the block's grid like the pixel-level explainers). If it scores well, the data (a bright
  lesion) does the work, not the explainer.
* ``random``: uniform random values on the block's grid (chance level). Seeded per image from
  the ``seed`` and the image's bytes, so a batch gives the same maps as one image at a time.
"""

from __future__ import annotations

import zlib

import torch
from torch import Tensor

from ._pool import normalize_and_pool

__all__ = ["raw_channel_map", "random_map"]


def raw_channel_map(images: Tensor, *, channel: int, grid: tuple[int, ...]) -> Tensor:
    """Input channel ``channel`` as a map on ``grid``.

    Args:
        images: ``(B, C, *S)``.
        channel: channel index in ``[0, C)``.
        grid: the block's grid.

    Returns:
        ``(B, 1, *grid)``.
    """
    if not 0 <= channel < images.shape[1]:
        raise ValueError(f"channel {channel} out of range for images with {images.shape[1]} channels")
    return normalize_and_pool(images[:, channel : channel + 1], grid)


def random_map(images: Tensor, *, grid: tuple[int, ...], seed: int = 0) -> Tensor:
    """Uniform random maps on ``grid``, one generator per image (seed + CRC32 of its bytes).

    Args:
        images: ``(B, C, *S)`` (only used to seed each sample).
        grid: the block's grid.
        seed: base seed.

    Returns:
        ``(B, 1, *grid)`` with values in ``[0, 1)``.
    """
    out = torch.empty(images.shape[0], 1, *grid)
    for i in range(images.shape[0]):
        digest = zlib.crc32(images[i].detach().cpu().contiguous().numpy().tobytes())
        g = torch.Generator().manual_seed((int(seed) * 1_000_003 + digest) % (2**63 - 1))
        out[i] = torch.rand(1, *grid, generator=g)
    return out.to(images.device)
