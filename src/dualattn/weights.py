"""Model weights as safetensors, with the architecture's config JSON in the file header.

``save_model`` writes ``state_dict()`` tensors plus the header metadata ``dualattn_config`` (the
``create_model`` arguments, ``model.config``), ``dualattn_version`` and, optionally,
``dualattn_metadata`` (any JSON you pass). ``load_model`` rebuilds the model from the config and
loads the tensors. Nothing is ever unpickled: safetensors is a flat tensor format, and a file that is
not one (a pickle, a truncated download) is refused with a ``ValueError`` naming it.

Example:
    >>> from dualattn.models import create_model
    >>> m = create_model("unet_encoder", variant="exact", features=4)
    >>> save_model(m, "m.safetensors", metadata={"epoch": 3})  # doctest: +SKIP
    >>> load_model("m.safetensors").config == m.config  # doctest: +SKIP
    True
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from ._io import atomic_path

logger = logging.getLogger(__name__)

__all__ = ["WeightsError", "load_model", "read_metadata", "save_model"]

_CONFIG_KEY = "dualattn_config"
_META_KEY = "dualattn_metadata"
_VERSION_KEY = "dualattn_version"


class WeightsError(ValueError):
    """A weights file is corrupt, not safetensors, or lacks the dualattn config."""


def save_model(model: Any, path: str | os.PathLike[str], *, metadata: dict[str, Any] | None = None) -> Path:
    """Write ``model``'s weights and config to ``path`` (safetensors, atomic).

    Args:
        model: a model from :func:`dualattn.models.create_model` (has ``.config``).
        path: destination file, conventionally ``*.safetensors``.
        metadata: optional JSON-serializable dict stored in the header (e.g. epoch, metrics).

    Returns:
        The path written.

    Raises:
        ValueError: the model has no ``config`` or the metadata is not JSON-serializable.
    """
    from safetensors.torch import save_file

    from . import __version__

    config = getattr(model, "config", None)
    if not isinstance(config, dict) or "name" not in config:
        raise ValueError(f"{type(model).__name__} has no dualattn config; build it with dualattn.models.create_model")
    try:
        header = {_CONFIG_KEY: json.dumps(config, sort_keys=True), _VERSION_KEY: __version__}
        if metadata is not None:
            header[_META_KEY] = json.dumps(metadata, sort_keys=True)
    except TypeError as exc:
        raise ValueError(f"metadata must be JSON-serializable: {exc}") from exc
    # Clone so that tensors sharing storage (views, tied weights) are written independently.
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    target = Path(path)
    with atomic_path(target) as tmp:
        save_file(tensors, str(tmp), metadata=header)
    logger.debug("saved %s (%d tensors) to %s", config.get("name"), len(tensors), target)
    return target


def _open_header(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as fh:
            return dict(fh.metadata() or {})
    except Exception as exc:  # safetensors raises its own SafetensorError / OSError subclasses
        raise WeightsError(f"{path} is not a valid safetensors file ({type(exc).__name__}: {exc})") from exc


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read the header of a weights file without loading tensors.

    Returns:
        ``{"config": dict, "metadata": dict | None, "version": str | None}``.

    Raises:
        FileNotFoundError: no file at ``path``.
        WeightsError: not safetensors, or no/invalid dualattn config.
    """
    p = Path(path)
    header = _open_header(p)
    if _CONFIG_KEY not in header:
        raise WeightsError(f"{p} has no '{_CONFIG_KEY}' in its header; it was not written by dualattn.weights.save_model")
    try:
        config = json.loads(header[_CONFIG_KEY])
        meta = json.loads(header[_META_KEY]) if _META_KEY in header else None
    except json.JSONDecodeError as exc:
        raise WeightsError(f"{p}: corrupt JSON in the header: {exc}") from exc
    if not isinstance(config, dict) or "name" not in config:
        raise WeightsError(f"{p}: the header config is not a model config: {config!r}")
    return {"config": config, "metadata": meta, "version": header.get(_VERSION_KEY)}


def _check_shapes_before_building(path: Path, name: str, config: dict[str, Any], *, strict: bool) -> None:
    """Build the architecture on the ``meta`` device (no memory) and compare its tensor shapes with the
    file's header, so that a small hostile file whose config asks for a gigantic model (``features``
    in the millions) is refused before anything is allocated.

    Raises:
        WeightsError: the config cannot be built, or the shapes differ from the file's.
    """
    import torch
    from safetensors import safe_open

    from .models import create_model

    try:
        with torch.device("meta"):
            meta_model = create_model(name, **config)
    except (TypeError, ValueError) as exc:
        raise WeightsError(f"{path}: cannot rebuild the model from its config: {exc}") from exc
    except Exception as exc:  # an architecture that cannot be built on meta: the real build checks it
        logger.debug("meta-device pre-check skipped for %s (%s: %s)", path, type(exc).__name__, exc)
        return
    expected = {k: tuple(v.shape) for k, v in meta_model.state_dict().items()}
    try:
        with safe_open(str(path), framework="pt") as fh:
            stored = {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}
    except Exception as exc:
        raise WeightsError(f"{path}: cannot read the tensor index ({type(exc).__name__}: {exc})") from exc
    differ = sorted(k for k in expected.keys() & stored.keys() if expected[k] != stored[k])
    missing = sorted(expected.keys() - stored.keys()) if strict else []
    if differ or missing:
        shown = ", ".join(f"{k}: file {stored[k]} vs config {expected[k]}" for k in differ[:3])
        raise WeightsError(
            f"{path}: the tensors do not match the {name} architecture its config describes "
            f"({len(differ)} of other shape{': ' + shown if shown else ''}; {len(missing)} missing)"
        )


def load_model(path: str | os.PathLike[str], *, map_location: str = "cpu", strict: bool = True) -> Any:
    """Rebuild a model saved by :func:`save_model`.

    Args:
        path: the ``.safetensors`` file.
        map_location: device for the tensors (``"cpu"``, ``"cuda:0"`` ...).
        strict: require the file's tensors to match the rebuilt model's exactly.

    Returns:
        The model (in train mode, like a freshly built one; call ``.eval()`` for inference).

    Raises:
        FileNotFoundError: no file at ``path``.
        WeightsError: not safetensors (e.g. a pickle), corrupt header, or tensors that do not match.
    """
    from safetensors.torch import load_file

    from .models import create_model

    p = Path(path)
    info = read_metadata(p)
    config = dict(info["config"])
    name = config.pop("name")
    _check_shapes_before_building(p, name, config, strict=strict)
    try:
        model = create_model(name, **config)
    except (TypeError, ValueError) as exc:
        raise WeightsError(f"{p}: cannot rebuild the model from its config {info['config']!r}: {exc}") from exc
    try:
        tensors = load_file(str(p), device=str(map_location))
    except Exception as exc:
        raise WeightsError(f"{p}: cannot read tensors ({type(exc).__name__}: {exc})") from exc
    try:
        model.load_state_dict(tensors, strict=strict)
    except RuntimeError as exc:
        raise WeightsError(f"{p}: tensors do not match the {name} architecture: {exc}") from exc
    return model.to(map_location)
