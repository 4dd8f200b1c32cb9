"""Argument checks shared by every layer (lowest layer: imports nothing from dualattn).

Each check returns the value it accepts and raises :class:`ValueError` naming the argument and the
offending value otherwise (never ``assert``, which ``python -O`` strips).

Example:
    >>> check_positive_int("features", 8)
    8
    >>> check_number("alpha", 1, low=0.0)
    1.0
"""

from __future__ import annotations

import math
from typing import Sequence

__all__ = ["check_feature_map", "check_number", "check_positive_int", "check_spatial_dims"]


def check_spatial_dims(spatial_dims: int) -> int:
    """Return ``spatial_dims`` if it is 2 or 3, else raise ValueError naming it."""
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
    return spatial_dims


def check_positive_int(name: str, value: object) -> int:
    """Return ``value`` if it is a positive int (not a bool), else raise ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def is_count(value: object) -> bool:
    """True for an int >= 0 that is not a bool (a count of images, epochs, ...)."""
    return not isinstance(value, bool) and isinstance(value, int) and value >= 0


def check_choice(name: str, value: object, choices: Sequence[str]) -> str:
    """Return ``value`` if it is one of ``choices``, else raise ValueError naming ``name`` and listing them."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return str(value)


def check_number(name: str, value: object, *, low: float, high: float = math.inf, low_inclusive: bool = True) -> float:
    """Return ``value`` as a float if it is a finite number in ``[low, high]`` (``(low, high]`` when
    ``low_inclusive`` is False), else raise ValueError naming ``name``."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value >= low if low_inclusive else value > low) and value <= high
    if not ok:
        lo = "[" if low_inclusive else "("
        raise ValueError(f"{name} must be a finite number in {lo}{low}, {high}], got {value!r}")
    return float(value)


def check_feature_map(name: str, value: object, *, spatial_dims: int, channels: int) -> None:
    """Raise ValueError naming ``name`` unless ``value`` is a ``(B, channels, *grid)`` tensor with
    ``spatial_dims`` spatial axes."""
    shape = tuple(getattr(value, "shape", ()))
    if getattr(value, "ndim", None) != spatial_dims + 2 or not hasattr(value, "dtype"):
        raise ValueError(f"{name} must be (B, C, *grid) with {spatial_dims} spatial dims, got shape {shape}")
    if shape[1] != channels:
        raise ValueError(f"{name} has {shape[1]} channels (shape {shape}), expected {channels}")
