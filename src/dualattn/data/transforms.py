"""Resizing, per-sample normalization and train-time augmentation (2D and 3D), in torch."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

__all__ = ["resize", "normalize", "augment", "NORMALIZATIONS"]

NORMALIZATIONS: tuple[str, ...] = ("zscore", "minmax", "none")


def _as_size(size: int | Sequence[int], spatial_dims: int) -> tuple[int, ...]:
    if isinstance(size, (int, np.integer)):
        out = (int(size),) * spatial_dims
    else:
        out = tuple(int(s) for s in size)
    if len(out) != spatial_dims or any(s < 1 for s in out):
        raise ValueError(f"size must be a positive int or {spatial_dims} positive ints; got {size!r}")
    return out


def resize(x, size: int | Sequence[int], *, is_mask: bool = False):
    """Resize a channels-first tensor ``(C, *S)`` to ``size``.

    Images use bilinear (2D) / trilinear (3D) interpolation with antialiasing when shrinking 2D
    images; masks use nearest neighbour so they stay binary.

    Args:
        x: ``(C, H, W)`` or ``(C, D, H, W)`` float tensor.
        size: int (same for every axis) or one int per spatial axis.
        is_mask: nearest-neighbour interpolation.

    Returns:
        ``(C, *size)`` float tensor (``x`` itself when already that size).
    """
    import torch.nn.functional as F

    spatial = x.dim() - 1
    if spatial not in (2, 3):
        raise ValueError(f"resize expects (C, H, W) or (C, D, H, W); got shape {tuple(x.shape)}")
    target = _as_size(size, spatial)
    if tuple(x.shape[1:]) == target:
        return x
    if is_mask:
        return F.interpolate(x[None].float(), size=target, mode="nearest-exact")[0]
    mode = "bilinear" if spatial == 2 else "trilinear"
    shrink = any(t < s for t, s in zip(target, x.shape[1:]))
    kw = {"antialias": True} if (spatial == 2 and shrink) else {}
    return F.interpolate(x[None].float(), size=target, mode=mode, align_corners=False, **kw)[0]


def normalize(x, *, method: str = "zscore", eps: float = 1e-6):
    """Per-sample, per-channel intensity normalization of ``(C, *S)``.

    ``zscore``: ``(x - mean) / std`` per channel; ``minmax``: to ``[0, 1]`` per channel;
    ``none``: unchanged. Constant channels become zeros (never NaN).
    """
    if method not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}; got {method!r}")
    if method == "none":
        return x
    import torch

    flat = x.reshape(x.shape[0], -1)
    shape = (x.shape[0],) + (1,) * (x.dim() - 1)
    if method == "zscore":
        # divide by a power of two per channel first: exact, so the result is bit-for-bit the plain formula's
        # wherever that one does not overflow (images with values near the dtype's max: NaN otherwise)
        amax = flat.abs().amax(dim=1).clamp_min(torch.finfo(x.dtype).tiny)
        scale = torch.exp2(torch.floor(torch.log2(amax))).reshape(shape)
        xs = x / scale
        flat = xs.reshape(x.shape[0], -1)
        mean = flat.mean(dim=1).reshape(shape)
        std = flat.std(dim=1, unbiased=False).reshape(shape)
        return (xs - mean) / std.clamp_min(eps / scale) * (std > eps / scale)
    lo = flat.min(dim=1).values.reshape(shape)
    hi = flat.max(dim=1).values.reshape(shape)
    # halved (exact in binary floating point) so that a range wider than the dtype's max cannot overflow
    half = (hi / 2 - lo / 2)
    return (x / 2 - lo / 2) / half.clamp_min(eps / 2) * (half > eps / 2)


def augment(
    image,
    mask,
    *,
    rng: np.random.Generator,
    flip_axes: Sequence[int] | None = None,
    max_rotate_deg: float = 10.0,
    max_scale: float = 0.1,
    max_shift: float = 0.05,
):
    """Random flips and a small random affine, applied identically to image and mask.

    Axis convention (the package's, see :mod:`dualattn.data.readers`): volumes are ``(C, X, Y, Z)`` in
    canonical RAS order (X: patient's left -> right, Y: posterior -> anterior, Z: inferior -> superior);
    2D images are ``(C, rows, columns)`` in the radiological display orientation (axial or coronal
    slices with the patient's right on the image's left, as ``radiological_view`` and the BraTS, PET
    and synthetic 2D data give them), so their columns run right -> left. The default flip is
    therefore left-right in both cases: the first spatial axis (X) of a volume, the last (columns) of
    a 2D image. A brain is roughly left-right symmetric; flipping it upside down (Z) or back to front
    (Y) makes images no scanner produces. 2D images of another orientation (e.g. sagittal slices,
    whose columns run anterior -> posterior) need an explicit ``flip_axes``.

    Args:
        image: ``(C, H, W)`` or ``(C, X, Y, Z)`` float tensor.
        mask: ``(1, *S)`` float tensor (kept binary: nearest-neighbour resampling).
        rng: numpy generator (the only source of randomness: reproducible).
        flip_axes: spatial axes (0-based, excluding channels) that may flip, each with probability 0.5;
            default: left-right only (``(1,)`` for 2D, ``(0,)`` for 3D; see above).
        max_rotate_deg: rotation up to this many degrees (in-plane for 2D; for 3D about the first
            axis, X, i.e. a tilt in the sagittal Y-Z plane).
        max_scale: isotropic zoom within ``1 +- max_scale``.
        max_shift: translation up to this fraction of the field of view per axis.

    Returns:
        ``(image, mask)`` new tensors of the same shapes.

    Raises:
        ValueError: ``image`` is not 2D/3D channels-first, ``mask`` does not match it, or a flip axis is
            out of range.

    Example:
        >>> import numpy as np, torch
        >>> vol = torch.zeros(1, 4, 3, 2); vol[0, 0, 0, 0] = 1  # a marker at the patient's far left
        >>> out, _ = augment(vol, vol[:1], rng=np.random.default_rng(2),
        ...                  max_rotate_deg=0, max_scale=0, max_shift=0)
        >>> torch.nonzero(out[0] > 0.5).tolist()  # this draw flips X: the marker is now far right
        [[3, 0, 0]]
    """
    import torch
    import torch.nn.functional as F

    spatial = image.dim() - 1
    if spatial not in (2, 3):
        raise ValueError(f"augment expects (C, H, W) or (C, D, H, W); got shape {tuple(image.shape)}")
    if tuple(mask.shape[1:]) != tuple(image.shape[1:]):
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match image {tuple(image.shape)}")
    # left-right: the columns of a radiological 2D image, X of a RAS volume (never A-P or S-I)
    axes = ((1,) if spatial == 2 else (0,)) if flip_axes is None else tuple(flip_axes)
    for a in axes:
        if not 0 <= a < spatial:
            raise ValueError(f"flip axis {a} out of range for {spatial} spatial dims")
    flips = [a + 1 for a in axes if rng.random() < 0.5]
    if flips:
        image = torch.flip(image, dims=flips)
        mask = torch.flip(mask, dims=flips)
    angle = math.radians(rng.uniform(-max_rotate_deg, max_rotate_deg))
    scale = 1.0 + rng.uniform(-max_scale, max_scale)
    shift = rng.uniform(-max_shift, max_shift, size=spatial) * 2.0  # grid units span [-1, 1]
    c, s = math.cos(angle), math.sin(angle)
    theta = torch.zeros(spatial, spatial + 1, dtype=torch.float32)
    rot = torch.tensor([[c, -s], [s, c]], dtype=torch.float32) / scale
    if spatial == 2:
        theta[:, :2] = rot
    else:  # rotate within the last two axes (Y, Z: about X); grid coordinates are ordered (x=Z, y=Y, z=X)
        theta[:2, :2] = rot
        theta[2, 2] = 1.0 / scale
    theta[:, -1] = torch.as_tensor(shift, dtype=torch.float32)
    size = (1, 1, *image.shape[1:])
    grid = F.affine_grid(theta[None], list(size), align_corners=False)
    img = F.grid_sample(image[None].float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
    msk = F.grid_sample(mask[None].float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)[0]
    return img, msk
