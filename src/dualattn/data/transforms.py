"""Resizing, per-sample normalization and train-time augmentation (2D and 3D), in torch.

Augmentation is declared by an :class:`AugmentPolicy`: which spatial axes may flip, in which planes and how far
the image may rotate, zoom and shift, and which intensity changes (per-channel gamma, scale and shift, Gaussian
noise) it gets. The axes come from the data's orientation (:data:`ORIENTATIONS`; a folder's ``dataset.json``
may name it, else ``RAS`` for volumes and ``radiological`` for 2-D images), so a named policy
(:data:`AUGMENT_POLICIES`, :func:`augment_policy`) flips a brain left-right only, whatever the array layout.

Every random number comes from the caller's ``numpy.random.Generator`` (one per item and epoch in
:class:`~dualattn.data.FolderDataset`), so an augmentation is reproducible from its seed. The intensity
changes are MONAI's dictionary transforms' formulas (``RandAdjustContrastd`` with ``retain_stats``,
``RandScaleIntensityd`` / ``RandShiftIntensityd`` with ``channel_wise``, ``RandGaussianNoised``) applied per
channel with parameters drawn from that generator: MONAI's own random transforms draw from a legacy
``RandomState`` and adjust the contrast of all channels at once (the tests compare every formula with
MONAI's deterministic transform).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import numpy as np

__all__ = [
    "AUGMENT_POLICIES",
    "AugmentPolicy",
    "DEFAULT_AUGMENT_POLICY",
    "NORMALIZATIONS",
    "ORIENTATIONS",
    "augment",
    "augment_policy",
    "default_orientation",
    "left_right_axis",
    "normalize",
    "resize",
    "resolve_augment",
]

NORMALIZATIONS: tuple[str, ...] = ("zscore", "minmax", "none")

#: What the array axes mean anatomically (``dataset.json``'s ``"orientation"``):
#: ``RAS``: volumes ``(C, X, Y, Z)`` with X left -> right, Y posterior -> anterior, Z inferior -> superior
#: (what :func:`~dualattn.data.read_volume` returns); ``radiological``: 2-D axial or coronal slices in the
#: display orientation (rows anterior -> posterior or superior -> inferior, columns the patient's right ->
#: left, as :func:`~dualattn.data.readers.radiological_view` gives them); ``radiological-sagittal``: 2-D
#: sagittal slices (rows superior -> inferior, columns anterior -> posterior: no left-right axis);
#: ``unoriented``: no anatomy (every axis may flip, every plane may rotate).
ORIENTATIONS: tuple[str, ...] = ("RAS", "radiological", "radiological-sagittal", "unoriented")
_ORIENTATION_DIMS = {"RAS": 3, "radiological": 2, "radiological-sagittal": 2}

#: The named policies (:func:`augment_policy` says what each does).
AUGMENT_POLICIES: tuple[str, ...] = ("none", "lr-flip-affine", "anatomy", "anatomy-spatial", "intensity")
#: What ``augment=True`` means (the augmentation before policies existed, bit for bit).
DEFAULT_AUGMENT_POLICY = "lr-flip-affine"


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


# ----------------------------------------------------------------------------------- orientation


def default_orientation(spatial_dims: int) -> str:
    """The orientation assumed when the data names none: ``RAS`` for volumes, ``radiological`` for 2-D."""
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3; got {spatial_dims!r}")
    return "RAS" if spatial_dims == 3 else "radiological"


def _check_orientation(orientation: str | None, spatial_dims: int) -> str:
    orientation = default_orientation(spatial_dims) if orientation is None else orientation
    if orientation not in ORIENTATIONS:
        raise ValueError(f"orientation must be one of {ORIENTATIONS}; got {orientation!r}")
    want = _ORIENTATION_DIMS.get(orientation)
    if want is not None and want != spatial_dims:
        raise ValueError(f"orientation {orientation!r} is for {want}-D images, the data is {spatial_dims}-D")
    return orientation


def left_right_axis(spatial_dims: int, orientation: str | None = None) -> int | None:
    """The spatial axis (0-based, channels excluded) that runs left-right, or ``None`` when none does.

    Example:
        >>> left_right_axis(3), left_right_axis(2), left_right_axis(2, "radiological-sagittal")
        (0, 1, None)
    """
    orientation = _check_orientation(orientation, spatial_dims)
    return {"RAS": 0, "radiological": 1}.get(orientation)


# ----------------------------------------------------------------------------------- the policy


@dataclasses.dataclass(frozen=True)
class AugmentPolicy:
    """A train-time augmentation, declared per axis (see the module docstring).

    The spatial part runs on the raw image before intensity normalization (the affine's zero padding is
    then the scanner's background); the intensity part runs on the normalized image and never sees the mask.

    Attributes:
        name: the policy's name (``"custom"`` for one built by hand).
        spatial_dims: 2 or 3.
        flip_axes: spatial axes (0-based, channels excluded) that may flip, each with probability 0.5.
        rotations: ``(axis_a, axis_b, max_degrees)`` per rotation plane: a rotation by an angle drawn
            uniformly in ``+-max_degrees`` within the plane of the two axes, composed in this order.
        voxel_rotation: rotate in voxel units (a rigid rotation of a non-cubic array, as MONAI's
            ``Affine`` does); False rotates the ``[-1, 1]`` square or cube the array spans (a rotation plus
            a shear when the sides differ: the ``lr-flip-affine`` policy, as before policies existed).
        scale: zoom within ``1 +- scale``.
        isotropic_scale: one zoom for every axis (else one per axis).
        shift: translation up to this fraction of the field of view along every axis.
        affine_prob: probability of the affine (rotation, zoom, shift) for one item; without it the
            image is not resampled.
        gamma: ``(low, high)``: each channel ``x -> ((x - min) / range) ** g * range + min``, ``g`` drawn
            uniformly in it, then rescaled to the channel's mean and std (MONAI's ``AdjustContrast`` with
            ``retain_stats=True``, nnU-Net's gamma); ``None``: off.
        gamma_prob: probability of the gamma change for one item.
        intensity_scale: each channel ``x -> x * (1 + f)``, ``f`` uniform in ``+-intensity_scale``.
        intensity_shift: each channel ``x -> x + o``, ``o`` uniform in ``+-intensity_shift`` (in units of
            the normalized image: a channel's std after z-scoring).
        scale_shift_prob: probability of the scale and shift for one item.
        noise_std: Gaussian noise of std drawn uniformly in ``[0, noise_std]`` (one per item).
        noise_prob: probability of the noise for one item.

    Example:
        >>> p = augment_policy("anatomy", spatial_dims=3)
        >>> p.flip_axes, [plane[:2] for plane in p.rotations]  # left-right flip only; three rotation planes
        ((0,), [(1, 2), (0, 1), (0, 2)])
    """

    name: str = "custom"
    spatial_dims: int = 2
    flip_axes: tuple[int, ...] = ()
    rotations: tuple[tuple[int, int, float], ...] = ()
    voxel_rotation: bool = True
    scale: float = 0.0
    isotropic_scale: bool = True
    shift: float = 0.0
    affine_prob: float = 1.0
    gamma: tuple[float, float] | None = None
    gamma_prob: float = 0.0
    intensity_scale: float = 0.0
    intensity_shift: float = 0.0
    scale_shift_prob: float = 0.0
    noise_std: float = 0.0
    noise_prob: float = 0.0

    def __post_init__(self) -> None:
        n = self.spatial_dims
        if n not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3; got {n!r}")
        for a in self.flip_axes:
            if not 0 <= a < n:
                raise ValueError(f"flip axis {a} out of range for {n} spatial dims")
        if len(set(self.flip_axes)) != len(self.flip_axes):
            raise ValueError(f"flip_axes repeat an axis: {self.flip_axes}")
        for plane in self.rotations:
            if len(plane) != 3 or not (0 <= plane[0] < plane[1] < n) or not 0 <= plane[2] <= 180:
                raise ValueError(f"rotation plane {plane!r} must be (axis_a, axis_b, max_degrees) with "
                                 f"0 <= axis_a < axis_b < {n} and 0 <= max_degrees <= 180")
        if not 0 <= self.scale < 1:
            raise ValueError(f"scale must be in [0, 1); got {self.scale!r}")
        if not 0 <= self.shift <= 0.5:
            raise ValueError(f"shift must be in [0, 0.5]; got {self.shift!r}")
        for key in ("affine_prob", "gamma_prob", "scale_shift_prob", "noise_prob"):
            if not 0 <= getattr(self, key) <= 1:
                raise ValueError(f"{key} must be in [0, 1]; got {getattr(self, key)!r}")
        if self.gamma is not None and not (len(self.gamma) == 2 and 0 < self.gamma[0] <= self.gamma[1]):
            raise ValueError(f"gamma must be None or (low, high) with 0 < low <= high; got {self.gamma!r}")
        for key in ("intensity_scale", "intensity_shift", "noise_std"):
            if not getattr(self, key) >= 0:
                raise ValueError(f"{key} must be >= 0; got {getattr(self, key)!r}")
        if self.intensity_scale >= 1:
            raise ValueError(f"intensity_scale must be < 1; got {self.intensity_scale!r}")

    # ------------------------------------------------------------------ what it does
    @property
    def has_spatial(self) -> bool:
        """Whether the policy flips or resamples."""
        return bool(self.flip_axes) or self.has_affine

    @property
    def has_affine(self) -> bool:
        """Whether the policy ever resamples: a rotation plane, a zoom or a shift, with a non-zero probability
        (a declared plane counts even with a range of 0 degrees: it resamples at the voxel centres)."""
        return self.affine_prob > 0 and (bool(self.rotations) or self.scale > 0 or self.shift > 0)

    @property
    def has_intensity(self) -> bool:
        """Whether the policy changes intensities."""
        return ((self.gamma is not None and self.gamma_prob > 0)
                or (self.scale_shift_prob > 0 and (self.intensity_scale > 0 or self.intensity_shift > 0))
                or (self.noise_prob > 0 and self.noise_std > 0))

    @property
    def is_identity(self) -> bool:
        """Whether the policy leaves every image as it is."""
        return not (self.has_spatial or self.has_intensity)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable description (tuples become lists)."""
        out = dataclasses.asdict(self)
        out["flip_axes"] = list(self.flip_axes)
        out["rotations"] = [list(r) for r in self.rotations]
        out["gamma"] = None if self.gamma is None else list(self.gamma)
        return out

    # ------------------------------------------------------------------ applying it
    def spatial(self, image, mask, *, rng: np.random.Generator):
        """Flip and resample ``image`` ``(C, *S)`` and ``mask`` ``(1, *S)`` alike (mask: nearest neighbour).

        Draws, in order: one number per flip axis; when ``affine_prob < 1`` one for the affine's coin; then
        one angle per rotation plane, the zoom (one, or one per axis), one shift per axis.

        Returns:
            ``(image, mask)``: new tensors of the same shapes (the inputs themselves when nothing applies).
        """
        import torch
        import torch.nn.functional as F

        n = image.dim() - 1
        if n != self.spatial_dims:
            raise ValueError(f"this policy is for {self.spatial_dims}-D images; got shape {tuple(image.shape)}")
        if tuple(mask.shape[1:]) != tuple(image.shape[1:]):
            raise ValueError(f"mask shape {tuple(mask.shape)} does not match image {tuple(image.shape)}")
        flips = [a + 1 for a in self.flip_axes if rng.random() < 0.5]
        if flips:
            image = torch.flip(image, dims=flips)
            mask = torch.flip(mask, dims=flips)
        if not self.has_affine or (self.affine_prob < 1 and rng.random() >= self.affine_prob):
            return image, mask
        angles = [math.radians(rng.uniform(-deg, deg)) for _, _, deg in self.rotations]
        if self.isotropic_scale:
            zoom: float | np.ndarray = 1.0 + rng.uniform(-self.scale, self.scale)
        else:
            zoom = 1.0 + rng.uniform(-self.scale, self.scale, size=n)
        shift = rng.uniform(-self.shift, self.shift, size=n) * 2.0  # grid units span [-1, 1]; grid order
        theta = self._theta(angles, zoom, shift, tuple(image.shape[1:]))
        size = (1, 1, *image.shape[1:])
        grid = F.affine_grid(theta[None], list(size), align_corners=False)
        img = F.grid_sample(image[None].float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
        msk = F.grid_sample(mask[None].float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)[0]
        return img, msk

    def _theta(self, angles: list[float], zoom: float | np.ndarray, shift: np.ndarray, shape: tuple[int, ...]):
        """The ``(n, n + 1)`` float32 matrix ``affine_grid`` takes: output grid coordinates -> input ones.

        In array-axis order the linear part is ``R_1 R_2 ... diag(1 / zoom)``; a rotation by ``t`` in the
        plane ``(a, b)`` maps ``(out_a, out_b)`` to ``(c out_a + s out_b, c out_b - s out_a)``, in voxel units
        (``voxel_rotation``: ``D^-1 R D`` in the grid's ``[-1, 1]`` units, ``D = diag(shape / 2)``) or in
        grid units. Grid coordinates list the axes in reverse (x is the last array axis). An isotropic zoom
        of a grid-unit rotation divides in float32 and writes ``1 / zoom`` on the axes no plane rotates, as
        the augmentation before policies did (bit for bit).
        """
        import torch

        n = self.spatial_dims
        lin = np.eye(n)
        rotated: set[int] = set()
        for (a, b, _), t in zip(self.rotations, angles):
            c, s = math.cos(t), math.sin(t)
            r = np.eye(n)
            r[a, a], r[a, b], r[b, a], r[b, b] = c, s, -s, c
            lin = lin @ r
            rotated.update((a, b))
        if self.voxel_rotation and len(set(shape)) > 1:
            half = np.asarray(shape, dtype=np.float64) / 2.0
            lin = lin * half[None, :] / half[:, None]
        rev = lin[::-1, ::-1]  # grid order
        if isinstance(zoom, float) and not self.voxel_rotation:
            mat = torch.tensor(rev.copy(), dtype=torch.float32) / zoom
            for axis in set(range(n)) - rotated:
                mat[n - 1 - axis, n - 1 - axis] = 1.0 / zoom
        else:
            mat = torch.tensor((lin / np.broadcast_to(zoom, (n,))[None, :])[::-1, ::-1].copy(), dtype=torch.float32)
        theta = torch.zeros(n, n + 1, dtype=torch.float32)
        theta[:, :n] = mat
        theta[:, -1] = torch.as_tensor(shift, dtype=torch.float32)
        return theta

    def intensity(self, image, *, rng: np.random.Generator):
        """Per-channel gamma, scale and shift, then Gaussian noise, on ``image`` ``(C, *S)`` (normalized).

        Draws, in order: the gamma coin, then one gamma per channel when it comes up; the scale-shift coin,
        then one factor and one offset per channel; the noise coin, then the std and one value per voxel.
        Each coin is drawn only when that change is on.

        Returns:
            A new ``(C, *S)`` float tensor (``image`` itself when nothing applies).
        """
        import torch

        c = image.shape[0]
        shape = (c,) + (1,) * (image.dim() - 1)
        out = image
        if self.gamma is not None and self.gamma_prob > 0 and rng.random() < self.gamma_prob:
            gammas = rng.uniform(self.gamma[0], self.gamma[1], size=c)
            out = _gamma_retain_stats(out, torch.as_tensor(gammas, dtype=out.dtype).reshape(shape))
        if self.scale_shift_prob > 0 and (self.intensity_scale > 0 or self.intensity_shift > 0) \
                and rng.random() < self.scale_shift_prob:
            factors = rng.uniform(-self.intensity_scale, self.intensity_scale, size=c)
            offsets = rng.uniform(-self.intensity_shift, self.intensity_shift, size=c)
            out = out * torch.as_tensor(1.0 + factors, dtype=out.dtype).reshape(shape) \
                + torch.as_tensor(offsets, dtype=out.dtype).reshape(shape)
        if self.noise_prob > 0 and self.noise_std > 0 and rng.random() < self.noise_prob:
            std = rng.uniform(0.0, self.noise_std)
            noise = rng.normal(0.0, std, size=tuple(out.shape))
            out = out + torch.as_tensor(noise, dtype=out.dtype)
        return out


def _gamma_retain_stats(x, gamma):
    """Per channel: ``((x - min) / (range + 1e-7)) ** gamma * range + min``, then the channel's mean and std
    restored (MONAI's ``AdjustContrast(gamma, retain_stats=True)`` applied to each channel)."""
    c = x.shape[0]
    flat = x.reshape(c, -1)
    shape = gamma.shape
    mean = flat.mean(1).reshape(shape)
    std = flat.std(1).reshape(shape)  # torch's default (unbiased), as MONAI's
    lo = flat.min(1).values.reshape(shape)
    rng_ = flat.max(1).values.reshape(shape) - lo
    out = ((x - lo) / (rng_ + 1e-7)) ** gamma * rng_ + lo
    oflat = out.reshape(c, -1)
    out = out - oflat.mean(1).reshape(shape)
    out = out / (out.reshape(c, -1).std(1).reshape(shape) + 1e-8)
    return std * out + mean


def augment_policy(name: str, *, spatial_dims: int, orientation: str | None = None) -> AugmentPolicy:
    """The named policy for data of ``spatial_dims`` in ``orientation`` (default: :func:`default_orientation`).

    ``none``
        nothing (no resampling either).
    ``lr-flip-affine`` (``augment=True``; the augmentation before policies, bit for bit)
        left-right flip; rotation within +-10 degrees in the image plane (2-D) or in the sagittal plane,
        about the left-right axis (3-D); isotropic zoom within +-10 %; shift within +-5 % per axis; on
        every item.
    ``anatomy``
        left-right flip; on 80 % of the items a rotation within +-15 degrees in the sagittal plane (a head's
        nod, the largest positioning variation) and +-10 degrees in the axial and coronal planes (3-D; +-15
        degrees in the image plane in 2-D), a zoom within +-10 % per axis, a shift within +-5 %; then, on the
        normalized image, a per-channel gamma in [0.7, 1.5] (30 % of the items), per-channel scale +-10 % and
        shift +-0.1 (50 %), Gaussian noise of std up to 0.1 (15 %) -- nnU-Net's ranges, its probabilities
        raised for the small sets of this package.
    ``anatomy-spatial``
        ``anatomy``'s flips and affine, no intensity change.
    ``intensity``
        ``anatomy``'s intensity changes, no flip or affine.

    The left-right axis is the orientation's (:func:`left_right_axis`); without one
    (``radiological-sagittal``) nothing flips, and ``unoriented`` data flips along every axis and rotates
    in every plane.

    Raises:
        ValueError: an unknown name (the message lists them) or orientation.

    Example:
        >>> augment_policy("lr-flip-affine", spatial_dims=2).flip_axes  # the columns of a radiological slice
        (1,)
        >>> augment_policy("anatomy", spatial_dims=2, orientation="radiological-sagittal").flip_axes
        ()
    """
    if name not in AUGMENT_POLICIES:
        raise ValueError(f"unknown augmentation policy {name!r}; valid: {', '.join(AUGMENT_POLICIES)}")
    orientation = _check_orientation(orientation, spatial_dims)
    n = spatial_dims
    if name == "none":
        return AugmentPolicy(name=name, spatial_dims=n)
    lr = left_right_axis(n, orientation)
    free = orientation == "unoriented"
    flips = tuple(range(n)) if free else (() if lr is None else (lr,))
    if name == "lr-flip-affine":
        plane = (0, 1, 10.0) if n == 2 else (1, 2, 10.0)  # 3-D: about X (RAS: the sagittal plane Y-Z)
        return AugmentPolicy(name=name, spatial_dims=n, flip_axes=flips, rotations=(plane,), voxel_rotation=False,
                             scale=0.1, shift=0.05)
    if n == 2:
        planes: tuple[tuple[int, int, float], ...] = ((0, 1, 15.0),)
    elif free:
        planes = ((1, 2, 15.0), (0, 1, 15.0), (0, 2, 15.0))
    else:  # RAS: sagittal (Y-Z), axial (X-Y), coronal (X-Z)
        planes = ((1, 2, 15.0), (0, 1, 10.0), (0, 2, 10.0))
    spatial = dict(flip_axes=flips, rotations=planes, scale=0.1, isotropic_scale=False, shift=0.05, affine_prob=0.8)
    intensity = dict(gamma=(0.7, 1.5), gamma_prob=0.3, intensity_scale=0.1, intensity_shift=0.1,
                     scale_shift_prob=0.5, noise_std=0.1, noise_prob=0.15)
    if name == "anatomy":
        return AugmentPolicy(name=name, spatial_dims=n, **spatial, **intensity)  # type: ignore[arg-type]
    if name == "anatomy-spatial":
        return AugmentPolicy(name=name, spatial_dims=n, **spatial)  # type: ignore[arg-type]
    return AugmentPolicy(name=name, spatial_dims=n, **intensity)  # type: ignore[arg-type]


def resolve_augment(augment: bool | str | AugmentPolicy | None, *, spatial_dims: int,
                    orientation: str | None = None) -> AugmentPolicy:
    """The policy an ``augment`` argument names: ``True`` -> :data:`DEFAULT_AUGMENT_POLICY`, ``False`` /
    ``None`` -> ``none``, a name -> :func:`augment_policy`, a policy -> itself (checked against the data)."""
    if isinstance(augment, AugmentPolicy):
        if augment.spatial_dims != spatial_dims:
            raise ValueError(f"augmentation policy {augment.name!r} is for {augment.spatial_dims}-D images, "
                             f"the data is {spatial_dims}-D")
        return augment
    if augment is None or augment is False:
        return augment_policy("none", spatial_dims=spatial_dims, orientation=orientation)
    if augment is True:
        return augment_policy(DEFAULT_AUGMENT_POLICY, spatial_dims=spatial_dims, orientation=orientation)
    if isinstance(augment, str):
        return augment_policy(augment, spatial_dims=spatial_dims, orientation=orientation)
    raise ValueError(f"augment must be a bool, a policy name ({', '.join(AUGMENT_POLICIES)}) or an "
                     f"AugmentPolicy; got {augment!r}")


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
    """Random flips and a small random affine, applied identically to image and mask (the ``lr-flip-affine``
    policy's spatial part; :class:`AugmentPolicy` declares others).

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
    spatial = image.dim() - 1
    if spatial not in (2, 3):
        raise ValueError(f"augment expects (C, H, W) or (C, D, H, W); got shape {tuple(image.shape)}")
    if tuple(mask.shape[1:]) != tuple(image.shape[1:]):
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match image {tuple(image.shape)}")
    # left-right: the columns of a radiological 2D image, X of a RAS volume (never A-P or S-I)
    axes = ((1,) if spatial == 2 else (0,)) if flip_axes is None else tuple(flip_axes)
    plane = (0, 1, float(max_rotate_deg)) if spatial == 2 else (1, 2, float(max_rotate_deg))
    policy = AugmentPolicy(name="lr-flip-affine", spatial_dims=spatial, flip_axes=axes, rotations=(plane,),
                           voxel_rotation=False, scale=float(max_scale), shift=float(max_shift))
    return policy.spatial(image, mask, rng=rng)
