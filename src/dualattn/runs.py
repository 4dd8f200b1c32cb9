"""``RunDir``: the one type that reads and writes a training run folder.

A run folder (written by :func:`dualattn.train.fit`)::

    config.yaml         the resolved training config
    metrics.csv         one row per epoch
    best.safetensors    weights with the best validation balanced accuracy (dualattn.weights format)
    last.safetensors    weights after the last epoch
    summary.json        balanced accuracy, parameter counts, epochs, wall time, seed, versions
    checkpoints/        last.ckpt: the resume state

A folder holding ``best.safetensors`` or ``last.safetensors`` is a run; everything else is optional,
so a folder with only a weights file (e.g. copied from elsewhere) can be explained and evaluated.
Nothing here unpickles anything: weights go through :mod:`dualattn.weights` (safetensors).

A run describes itself: ``summary.json`` and every weights file's header record ``class_names`` (the
label strings) and ``data`` (the training data: as typed, absolute path, path relative to the run,
embedded or not, and a fingerprint of its content; see :func:`dualattn.train.run.data_record`).
:attr:`RunDir.class_names` reads the names, :meth:`RunDir.dataset` finds the data again and says when
it moved or changed.

Example:
    >>> from dualattn.runs import RunDir  # doctest: +SKIP
    >>> runs = RunDir.discover("demo-out/runs")  # doctest: +SKIP
    >>> [(r.variant, r.seed) for r in runs]  # doctest: +SKIP
    [('baseline', 0), ('dual', 0), ...]
    >>> logits = runs[0].load_model()(images)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Protocol, Sequence

import yaml

from ._io import atomic_write_json, atomic_write_text
from .data.check import dataset_fingerprint, fingerprint_changes
from .data.folder import LABELS_CSV, read_dataset_meta
from .weights import load_model as _load_weights
from .weights import read_metadata, save_model

__all__ = ["RunDir", "WEIGHTS_FILES", "RUN_FILES"]

#: The weights files of a run, in the order a model is loaded from them.
WEIGHTS_FILES = ("best.safetensors", "last.safetensors")
#: The files that make a folder hold a run (training refuses to overwrite them unasked).
RUN_FILES = ("config.yaml", "metrics.csv", "best.safetensors", "last.safetensors", "summary.json")
_WHICH = ("best", "last")

logger = logging.getLogger(__name__)


class _YamlConfig(Protocol):
    def to_yaml(self) -> str: ...


def _find_key(data: Mapping[str, Any], names: Sequence[str]) -> Any:
    """First non-None value under any of ``names``, searched at the top level then one level down."""
    for name in names:
        if name in data and data[name] is not None:
            return data[name]
    for value in data.values():
        if isinstance(value, Mapping):
            for name in names:
                if name in value and value[name] is not None:
                    return value[name]
    return None


def _is_embedded(name: str) -> bool:
    from .data import list_datasets

    return name in list_datasets()


class RunDir:
    """A training run folder: what its files say, its model, and the writers that fill it.

    The attributes ``path``, ``config``, ``model``, ``variant``, ``model_name``, ``is_vit``, ``seed``
    and ``label`` are those the evaluation reads from a run.

    Args:
        path: the run folder (need not exist yet when the run is about to be written).
        config: the run's config as a dict, when already known (default: read ``config.yaml``).
        model: the run's model, when already loaded (default: loaded on first use of ``model``).
    """

    def __init__(
        self, path: str | os.PathLike[str], *, config: Mapping[str, Any] | None = None, model: Any = None
    ) -> None:
        self.path = Path(path)
        self._config: dict[str, Any] | None = dict(config) if config is not None else None
        self._summary: dict[str, Any] | None = None
        self._header: dict[str, Any] | None = None
        self._models: dict[str | None, Any] = {}
        if model is not None:
            self._models[None] = model

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RunDir) and self.path == other.path

    def __hash__(self) -> int:
        return hash(self.path)

    # ------------------------------------------------------------------ files

    @property
    def config_file(self) -> Path:
        return self.path / "config.yaml"

    @property
    def summary_file(self) -> Path:
        return self.path / "summary.json"

    @property
    def metrics_file(self) -> Path:
        return self.path / "metrics.csv"

    @property
    def checkpoint_file(self) -> Path:
        """The resume state ``checkpoints/last.ckpt``."""
        return self.path / "checkpoints" / "last.ckpt"

    def weights_path(self, which: str) -> Path:
        """``best.safetensors`` or ``last.safetensors`` (whether it exists or not).

        Raises:
            ValueError: ``which`` is neither ``"best"`` nor ``"last"``.
        """
        if which not in _WHICH:
            raise ValueError(f"which={which!r} must be 'best' or 'last'")
        return self.path / f"{which}.safetensors"

    @property
    def weights_file(self) -> Path | None:
        """The weights a model is loaded from: ``best.safetensors``, else ``last.safetensors``, else None."""
        for name in WEIGHTS_FILES:
            if (self.path / name).is_file():
                return self.path / name
        return None

    def existing_run_files(self) -> list[str]:
        """The names in :data:`RUN_FILES` that exist in the folder."""
        return [name for name in RUN_FILES if (self.path / name).exists()]

    # ------------------------------------------------------------------ what the files say

    @property
    def config(self) -> dict[str, Any]:
        """``config.yaml`` as a dict (``{}`` when absent or not a mapping); read once."""
        if self._config is None:
            data = None
            if self.config_file.is_file():
                data = yaml.safe_load(self.config_file.read_text(encoding="utf-8"))
            self._config = data if isinstance(data, dict) else {}
        return self._config

    @property
    def summary(self) -> dict[str, Any]:
        """``summary.json`` as a dict (``{}`` when absent, unreadable or not an object); read once."""
        if self._summary is None:
            data = None
            if self.summary_file.is_file():
                try:
                    data = json.loads(self.summary_file.read_text(encoding="utf-8"))
                except (OSError, ValueError):
                    data = None
            self._summary = data if isinstance(data, dict) else {}
        return self._summary

    @property
    def finished(self) -> bool:
        """Training ended: ``summary.json`` and ``best.safetensors`` exist."""
        return self.summary_file.is_file() and (self.path / "best.safetensors").is_file()

    def _model_config(self) -> dict[str, Any]:
        """The architecture config: the loaded model's, else the weights header's (no tensors read)."""
        model = self._models.get(None)
        if model is None:
            model = next(iter(self._models.values()), None)
        if model is not None:
            return dict(getattr(model, "config", {}) or {})
        weights = self.weights_file
        if weights is None:
            return {}
        return dict(read_metadata(weights)["config"])

    @property
    def variant(self) -> str:
        """The config's ``variant``, else the model's, else ``"baseline"``."""
        v = self.config.get("variant") or self._model_config().get("variant")
        return str(v or "baseline")

    @property
    def input_normalization(self) -> str:
        """How an image is normalized before this run's model: the config's ``normalize`` (training records it when
        it is not the default), else the model's own ``input_normalization`` (``"none"`` for ``select_predict``,
        which normalizes on the visible pixels itself), else ``"zscore"`` (per sample and channel)."""
        value = self.config.get("normalize")
        if value:
            return str(value)
        return str(getattr(self.model, "input_normalization", "zscore"))

    @property
    def model_name(self) -> str:
        """The config's ``model`` (backbone), else the model's name, else ``"model"``."""
        name = self.config.get("model") or self._model_config().get("name")
        return str(name or "model")

    @property
    def seed(self) -> int | None:
        s = self.config.get("seed")
        return int(s) if isinstance(s, (int, float)) else None

    @property
    def label(self) -> str:
        """How results name the run: its path."""
        return str(self.path)

    @property
    def is_vit(self) -> bool:
        """The model is a ViT (it has ``vit_attention_maps``); loads the model."""
        return hasattr(self.model, "vit_attention_maps")

    @property
    def recorded_size(self) -> tuple[int, ...] | None:
        """The training size ``config.yaml`` records (keys ``size``, ``image_size``, ``input_size``,
        ``img_size``, top level or one level down), e.g. ``(64,)``; ``None`` when it records none."""
        size = _find_key(self.config, ("size", "image_size", "input_size", "img_size"))
        if size is None:
            return None
        if isinstance(size, (int, float)):
            return (int(size),)
        try:
            return tuple(int(s) for s in size)
        except (TypeError, ValueError):
            return None

    def model_input(self) -> tuple[int | None, tuple[int, ...] | None]:
        """``(in_channels, spatial size)`` the model takes; loads the model.

        The size is the model's ``img_size`` (attribute or config), else the run's ``image_size``,
        repeated to the model's ``spatial_dims`` when it is one number; either is ``None`` when unknown.
        """
        model = self.model
        cfg = getattr(model, "config", {}) or {}
        in_ch = cfg.get("in_channels")
        size = None
        img = getattr(model, "img_size", None) or cfg.get("img_size") or self.config.get("image_size")
        sd = int(cfg.get("spatial_dims", 2) or 2)
        if isinstance(img, int):
            size = (img,) * sd
        elif isinstance(img, (list, tuple)) and img:
            size = tuple(int(s) for s in img)
        return (int(in_ch) if in_ch else None), size

    @property
    def in_channels(self) -> int | None:
        return self.model_input()[0]

    @property
    def input_size(self) -> tuple[int, ...] | None:
        return self.model_input()[1]

    def _weights_metadata(self) -> dict[str, Any]:
        """The ``metadata`` of the weights file's header (``{}`` without weights or metadata); read once."""
        if self._header is None:
            weights = self.weights_file
            meta = None
            if weights is not None:
                try:
                    meta = read_metadata(weights).get("metadata")
                except (OSError, ValueError):
                    meta = None
            self._header = meta if isinstance(meta, dict) else {}
        return self._header

    @property
    def recorded_data(self) -> dict[str, Any] | None:
        """The run's record of its training data (``summary.json``'s ``data``, else the weights header's):
        ``{"dataset", "embedded", "path", "relative_to_run", "fingerprint"}``; ``None`` for runs written
        before it was recorded."""
        for source in (self.summary, self._weights_metadata()):
            record = source.get("data")
            if isinstance(record, dict) and record.get("dataset"):
                return record
        return None

    @property
    def class_names(self) -> list[str] | None:
        """The class names (label strings in class-index order) the run recorded: ``summary.json``,
        ``config.yaml``, the weights header, else the training folder's ``dataset.json``; ``None``
        when nothing names them."""
        for source in (self.summary, self.config, self._weights_metadata()):
            names = _find_key(source, ("class_names",))
            if names:
                return [str(n) for n in names]
        try:
            folder = self.dataset(check=False)
        except ValueError:
            typed = self.config.get("dataset")
            folder = Path(typed) if isinstance(typed, str) and Path(typed).is_dir() else None
        if isinstance(folder, Path):
            try:
                names = read_dataset_meta(folder).get("class_names")
            except ValueError:
                names = None
            if names:
                return [str(n) for n in names]
        return None

    def _data_candidates(self, record: Mapping[str, Any] | None, typed: str) -> list[Path]:
        """Where the data may be, in order: the recorded absolute path, the path relative to the run
        folder (run and data moved together), the path as typed (relative to the working directory)."""
        places: list[Path] = []
        if record:
            if record.get("path"):
                places.append(Path(record["path"]))
            if record.get("relative_to_run"):
                places.append(self.path / record["relative_to_run"])
        places.append(Path(typed))
        found: list[Path] = []
        for p in places:
            if (p / LABELS_CSV).is_file() and p.resolve() not in {f.resolve() for f in found}:
                found.append(p)
        return found

    def dataset(self, data: str | os.PathLike[str] | None = None, *, check: bool = True) -> Path | str:
        """The data this run was trained on: found where it was, checked against the run's fingerprint.

        Without ``data``: the folder recorded by the run (its absolute path, else the path relative to
        the run folder, else the path as typed relative to the working directory); with ``check``, the
        first whose fingerprint matches the recorded one. An embedded dataset is returned by name
        (``"synthetic-brain"``), to be resolved (generated) as usual. With ``data`` (``--data``): that
        folder or name, as given; with ``check``, a warning is logged when it is not the data the run was
        trained on (another split, other images: the numbers describe other data).

        Args:
            data: the data to use instead of the recorded one (the command's ``--data``).
            check: compare the folder's fingerprint with the recorded one (one ``stat`` per file and a
                bounded sample read; :func:`dualattn.data.dataset_fingerprint`).

        Returns:
            A dataset folder (:class:`~pathlib.Path`) or an embedded dataset name (``str``).

        Raises:
            ValueError: the run records no dataset; the data is at none of the recorded places (it moved
                or was deleted: the message says where it was and to pass ``--data``); or, with
                ``check``, every folder found differs from the recorded fingerprint (the message says
                what changed).

        Example:
            >>> RunDir("runs/baseline").dataset()  # doctest: +SKIP
            PosixPath('/home/me/byo')
        """
        record = self.recorded_data
        fingerprint = (record or {}).get("fingerprint")
        if data is not None:
            given = Path(data)
            if not given.is_dir():
                return str(data)
            if check and fingerprint and (given / LABELS_CSV).is_file():
                changes = fingerprint_changes(fingerprint, dataset_fingerprint(given))
                if changes:
                    logger.warning(
                        "%s is not the data run %s was trained on (%s; trained on %s): its split and numbers "
                        "describe other data", given, self.path, "; ".join(changes), record.get("path"))  # type: ignore[union-attr]
            return given
        typed = (record or {}).get("dataset") or self.config.get("dataset")
        if not typed:
            raise ValueError(f"run {str(self.path)!r} records no dataset (no data in summary.json or the weights, "
                             "no dataset in config.yaml): pass the data (--data PATH)")
        typed = str(typed)
        embedded = record.get("embedded") if record else None
        found = self._data_candidates(record, typed)
        if embedded or (embedded is None and not found and not os.path.isabs(typed) and _is_embedded(typed)):
            return typed
        if not found:
            if record and record.get("path"):
                where = f"{record['path']} (typed {typed!r})"
            else:
                where = f"{typed!r} (as typed, relative to the working directory {os.getcwd()})"
            raise ValueError(
                f"the data run {str(self.path)!r} was trained on is not at {where}: it was moved or deleted. "
                "Point at it with --data PATH"
                + (" (checked against the fingerprint the run recorded)" if fingerprint else "")
            )
        if not check or not fingerprint:
            return found[0]
        mismatches = []
        for folder in found:
            changes = fingerprint_changes(fingerprint, dataset_fingerprint(folder))
            if not changes:
                if record and record.get("path") and folder.resolve() != Path(record["path"]):
                    logger.info("the data of run %s moved: %s (recorded: %s)", self.path, folder, record["path"])
                return folder
            mismatches.append(f"{folder}: {'; '.join(changes)}")
        raise ValueError(
            f"the data run {str(self.path)!r} was trained on has changed since: " + " | ".join(mismatches)
            + ". Its test split is no longer the one the run was trained beside; to evaluate on it anyway, pass "
            "it explicitly (--data PATH)"
        )

    def digest(self) -> dict[str, Any]:
        """What identifies the run's weights (resume fingerprints): resolved path, weights file name,
        its size and mtime (ns); the last three ``None`` without weights."""
        weights = self.weights_file
        st = weights.stat() if weights is not None else None
        return {
            "path": str(self.path.resolve()),
            "weights": weights.name if weights is not None else None,
            "size": st.st_size if st is not None else None,
            "mtime_ns": st.st_mtime_ns if st is not None else None,
        }

    # ------------------------------------------------------------------ the model

    def load_model(self, which: str | None = None) -> Any:
        """The trained model in eval mode on the CPU (loaded once per ``which``; never unpickles).

        Args:
            which: ``"best"``, ``"last"``, or ``None`` for best when it exists, else last.

        Raises:
            ValueError: a bad ``which``, or no weights at all (``which=None``); a corrupt weights
                file (:class:`dualattn.weights.WeightsError`).
            FileNotFoundError: the asked-for weights file does not exist.
        """
        if which in self._models:
            return self._models[which]
        if which is None:
            file = self.weights_file
            if file is None:
                raise ValueError(f"run {str(self.path)!r} has no best.safetensors or last.safetensors")
        else:
            file = self.weights_path(which)
            if not file.is_file():
                raise FileNotFoundError(f"{file} does not exist: is {str(self.path)!r} a finished training run?")
        model = _load_weights(file).eval()
        self._models[which] = model
        return model

    @property
    def model(self) -> Any:
        """:meth:`load_model` with best, else last weights."""
        return self.load_model()

    # ------------------------------------------------------------------ writers

    def write_config(self, config: Mapping[str, Any] | _YamlConfig) -> Path:
        """Write ``config.yaml`` atomically (an object with ``to_yaml()``, e.g. a TrainConfig, or a dict)."""
        text = config.to_yaml() if hasattr(config, "to_yaml") else yaml.safe_dump(dict(config), sort_keys=False)
        atomic_write_text(self.config_file, text)
        self._config = None
        return self.config_file

    def write_summary(self, summary: Mapping[str, Any]) -> Path:
        """Write ``summary.json`` atomically."""
        atomic_write_json(self.summary_file, dict(summary))
        self._summary = None
        return self.summary_file

    def save_weights(self, model: Any, which: str, metadata: Mapping[str, Any] | None = None) -> Path:
        """Write ``best.safetensors`` or ``last.safetensors`` (:func:`dualattn.weights.save_model`)."""
        path = save_model(model, self.weights_path(which), metadata=dict(metadata) if metadata is not None else None)
        self._models.pop(which, None)
        self._models.pop(None, None)
        self._header = None
        return path

    def remove_run_files(self) -> list[str]:
        """Delete the :data:`RUN_FILES` and the resume checkpoint (before a run is overwritten).

        Returns:
            The names removed.
        """
        removed = self.existing_run_files()
        for name in removed:
            (self.path / name).unlink()
        if self.checkpoint_file.exists():
            self.checkpoint_file.unlink()
        self._config = self._summary = self._header = None
        self._models.clear()
        return removed

    # ------------------------------------------------------------------ finding runs

    @staticmethod
    def is_run(path: str | os.PathLike[str]) -> bool:
        """``path`` is a folder holding ``best.safetensors`` or ``last.safetensors``."""
        return any((Path(path) / name).is_file() for name in WEIGHTS_FILES)

    @classmethod
    def discover(
        cls, paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]
    ) -> list["RunDir"]:
        """The runs under ``paths``, in order: a run folder is taken as is, a ``.safetensors`` file stands
        for its folder, any other folder is searched recursively (sorted). Duplicates are dropped.

        Raises:
            ValueError: a path that does not exist or holds no run.
        """
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        found: list[Path] = []
        seen: set[Path] = set()
        for p in paths:
            p = Path(p)
            if not p.exists():
                raise ValueError(f"run path {str(p)!r} does not exist")
            if p.is_file() and p.suffix == ".safetensors":
                runs = [p.parent]
            elif cls.is_run(p):
                runs = [p]
            else:
                runs = sorted({w.parent for w in p.rglob("*.safetensors") if cls.is_run(w.parent)})
            if not runs:
                raise ValueError(f"no run (best.safetensors or last.safetensors) under {str(p)!r}")
            for r in runs:
                if r.resolve() not in seen:
                    seen.add(r.resolve())
                    found.append(r)
        return [cls(r) for r in found]
