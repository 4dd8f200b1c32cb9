"""Run configuration: a typed dataclass read from YAML, with ``key=value`` overrides.

The resolved configuration is written beside the weights (``config.yaml`` in the run folder), so a
run can be re-created or resumed from its folder alone.

Example:
    >>> from dualattn.train import TrainConfig, load_config
    >>> cfg = load_config(overrides=["variant=dual", "lr=5e-4", "model_kwargs.width=8"])
    >>> cfg.variant, cfg.lr, cfg.model_kwargs
    ('dual', 0.0005, {'width': 8})
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from pathlib import Path
from typing import Any, Iterable, Mapping, Union

from dualattn._checks import is_count
from dualattn.data.transforms import AUGMENT_POLICIES, NORMALIZATIONS

__all__ = ["TrainConfig", "load_config", "save_config", "parse_override", "config_keys", "SELECT_BY"]

_OPTIMIZERS = ("adam", "adamw", "sgd")
_SCHEDULERS = ("plateau", "none")
_DETERMINISTIC = ("auto", "true", "false", "warn")
#: The metrics ``select_by`` may name, each with its direction: ``max`` (higher is better) or ``min``.
SELECT_BY: dict[str, str] = {"val_balanced_accuracy": "max", "val_objective": "min"}


@dataclasses.dataclass
class TrainConfig:
    """Everything that defines one training run (defaults follow the paper where it says).

    Attributes:
        dataset: an embedded dataset name (see ``dualattn.data.list_datasets()``) or a folder in the
            dataset folder format.
        data_n: number of images when an embedded dataset is generated (None: its default).
        image_size: side length images are resized to (None: native / the dataset's default).
        in_channels: force the channel count (None: the dataset's).
        split_fractions: train/val/test fractions of the patient-level split.
        split_seed: seed of the split (kept fixed across training seeds, as in the paper).
        cache_dir: where embedded datasets are generated (None: the library default).
        check_data: before the first epoch, read every file of the dataset once and stop with the
            list of every problem (:func:`dualattn.data.check_dataset`); false skips it.
        augment: train-time augmentation on the training split only (validation/test never augmented).
        augment_policy: which augmentation ``augment`` turns on (:data:`AUGMENT_POLICIES`): ``lr-flip-affine``
            (default: a left-right flip, a small rotation about the left-right axis, zoom and shift),
            ``anatomy`` (left-right flip, rotations in every anatomical plane, per-axis zoom, shift, per-channel
            gamma / scale / shift and Gaussian noise), ``anatomy-spatial``, ``intensity`` or ``none``; the
            left-right axis comes from the data's orientation (:mod:`dualattn.data.transforms`).
        batch_size: training batch size per process.
        eval_batch_size: validation/test batch size (None: 2 x batch_size).
        num_workers: data-loader worker processes (0: load in the main process).
        model: registered model name (``dualattn.models.list_models()``).
        variant: attention variant (``baseline``, ``dual``, ``exact``, ...).
        model_kwargs: extra keyword arguments for ``create_model`` (set one with
            ``--set model_kwargs.NAME=VALUE``); keys left unset come from the variant's recipe
            (:data:`dualattn.train.recipes.DEFAULT_RECIPES`).
        alpha: weight of the consistency penalty. None: the variant's recipe
            (:mod:`dualattn.train.recipes`), else the paper's :data:`dualattn.models.PAPER_ALPHA`.
        normalize: the data's per-sample intensity normalization (``zscore``, ``minmax``, ``none``; None: the
            variant's recipe, else ``zscore``). ``select_predict`` takes raw intensities (``none``) and normalizes
            inside, on the visible pixels only (docs/models.md, "Select, then predict").
        select_predict: the ``select_predict`` variant's training options (``--set select_predict.NAME=VALUE``;
            :class:`dualattn.train.select_predict.SelectPredictOptions`: the predictor's epochs on random masks,
            their budgets, the selector's learning rate and relaxation temperatures); ignored by other variants.
        init_from: a trained run folder (or ``.safetensors`` file) whose backbone initialises this
            model (None: the variant's recipe; ``""`` or ``"scratch"``: from scratch).
        freeze_backbone: train only the gates/witness (None: the variant's recipe, else False).
        optimizer: ``adam`` (paper), ``adamw`` or ``sgd``.
        lr: learning rate (paper: 1e-3).
        weight_decay: L2 / decoupled weight decay.
        momentum: SGD momentum (ignored by Adam).
        scheduler: ``plateau`` (reduce the LR when validation balanced accuracy stalls) or ``none``.
        plateau_factor: LR multiplier on a plateau.
        plateau_patience: epochs without improvement before reducing the LR.
        max_epochs: number of training epochs.
        early_stopping_patience: stop after this many epochs without improvement of the
            ``select_by`` metric (None: never).
        gradient_clip_val: clip the gradient norm to this value (None: no clipping).
        precise_bn: before every validation, recompute the BatchNorm layers' statistics with the weights fixed
            (a cumulative average, "precise BN": Wu & Johnson 2021) over this many training images read without
            augmentation (evenly spaced over the split; all of them when it is larger); 0: off, BatchNorm keeps
            its running averages (momentum 0.1), which lag the weights when an epoch has few optimizer steps.
            No effect on models without BatchNorm.
        penalty_warmup_epochs: the model's penalty (consistency, sharpness) enters the training loss with weight
            ``epoch / N`` for the first N epochs (0 in the first: cross-entropy alone), then 1; 0: off. The
            validation objective keeps the full penalty. ``select_predict``'s selector objective is not scaled.
        select_by: the validation metric that picks ``best.safetensors`` (and that early stopping
            watches): ``val_balanced_accuracy`` (highest) or ``val_objective`` (lowest: the mean
            training objective, cross-entropy + the model's penalty, on the validation split). Ties
            keep the earlier epoch; an epoch whose value is NaN is never selected.
        seed: training seed (weights init, data order, augmentation, dropout).
        deterministic: ``auto`` (deterministic algorithms on CPU, warn-only on GPU), ``true``,
            ``false`` or ``warn``.
        accelerator: Lightning accelerator (``auto``, ``cpu``, ``gpu``, ...).
        devices: Lightning devices (``auto``, a count, or a list as a string such as ``"0,1"``).
        strategy: Lightning strategy (``auto``, ``ddp``, ``ddp_spawn``, ...).
        num_nodes: number of nodes for multi-node DDP.
        precision: Lightning precision (``32-true``, ``bf16-mixed``, ``16-mixed``).
        progress: show a progress bar.
    """

    # data
    dataset: str = "synthetic-brain"
    data_n: int | None = None
    image_size: int | None = None
    in_channels: int | None = None
    split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    split_seed: int = 0
    cache_dir: str | None = None
    check_data: bool = True
    augment: bool = True
    augment_policy: str = "lr-flip-affine"
    batch_size: int = 16
    eval_batch_size: int | None = None
    num_workers: int = 0
    # model
    model: str = "unet_encoder"
    variant: str = "baseline"
    model_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    alpha: float | None = None
    normalize: str | None = None
    select_predict: dict[str, Any] = dataclasses.field(default_factory=dict)
    init_from: str | None = None
    freeze_backbone: bool | None = None
    # optimisation
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9
    scheduler: str = "plateau"
    plateau_factor: float = 0.5
    plateau_patience: int = 3
    max_epochs: int = 30
    early_stopping_patience: int | None = None
    gradient_clip_val: float | None = None
    precise_bn: int = 0
    penalty_warmup_epochs: int = 0
    select_by: str = "val_balanced_accuracy"
    # runtime
    seed: int = 0
    deterministic: str = "auto"
    accelerator: str = "auto"
    devices: Union[int, str] = "auto"
    strategy: str = "auto"
    num_nodes: int = 1
    precision: str = "32-true"
    progress: bool = False

    def __post_init__(self) -> None:
        self.split_fractions = tuple(float(f) for f in self.split_fractions)  # type: ignore[assignment]
        self.model_kwargs = dict(self.model_kwargs)
        self.select_predict = dict(self.select_predict)
        self.validate()

    def validate(self) -> None:
        """Check value ranges; raise ``ValueError`` naming the first bad value."""

        def bad(key: str, why: str) -> ValueError:
            return ValueError(f"config: {key}={getattr(self, key)!r} {why}")

        if not isinstance(self.dataset, str) or not self.dataset:
            raise bad("dataset", "must be a non-empty name or folder")
        for key in ("batch_size", "max_epochs", "num_nodes"):
            if getattr(self, key) < 1:
                raise bad(key, "must be >= 1")
        for key in ("data_n", "image_size", "in_channels", "eval_batch_size"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise bad(key, "must be >= 1 or null")
        if self.num_workers < 0:
            raise bad("num_workers", "must be >= 0")
        if len(self.split_fractions) != 3 or any(f < 0 for f in self.split_fractions):
            raise bad("split_fractions", "must be three non-negative fractions (train, val, test)")
        if abs(sum(self.split_fractions) - 1.0) > 1e-6 or self.split_fractions[0] <= 0:
            raise bad("split_fractions", "must sum to 1 with a positive training fraction")
        if not self.lr > 0:
            raise bad("lr", "must be > 0")
        if self.weight_decay < 0:
            raise bad("weight_decay", "must be >= 0")
        if self.alpha is not None and self.alpha < 0:
            raise bad("alpha", "must be >= 0 or null")
        if self.normalize is not None and self.normalize not in NORMALIZATIONS:
            raise bad("normalize", f"must be one of {NORMALIZATIONS} or null")
        if self.augment_policy not in AUGMENT_POLICIES:
            raise bad("augment_policy", f"must be one of {AUGMENT_POLICIES}")
        if self.optimizer not in _OPTIMIZERS:
            raise bad("optimizer", f"must be one of {_OPTIMIZERS}")
        if self.scheduler not in _SCHEDULERS:
            raise bad("scheduler", f"must be one of {_SCHEDULERS}")
        if not 0 < self.plateau_factor < 1:
            raise bad("plateau_factor", "must be in (0, 1)")
        if self.plateau_patience < 0:
            raise bad("plateau_patience", "must be >= 0")
        if self.early_stopping_patience is not None and self.early_stopping_patience < 1:
            raise bad("early_stopping_patience", "must be >= 1 or null")
        if not is_count(self.precise_bn):
            raise bad("precise_bn", "must be an int >= 0 (training images; 0: off)")
        if not is_count(self.penalty_warmup_epochs):
            raise bad("penalty_warmup_epochs", "must be an int >= 0 (epochs; 0: off)")
        if self.gradient_clip_val is not None and not self.gradient_clip_val > 0:
            raise bad("gradient_clip_val", "must be > 0 or null")
        if self.select_by not in SELECT_BY:
            raise bad("select_by", f"must be one of {tuple(SELECT_BY)}")
        if str(self.deterministic).lower() not in _DETERMINISTIC:
            raise bad("deterministic", f"must be one of {_DETERMINISTIC}")
        if isinstance(self.devices, int) and self.devices < 1:
            raise bad("devices", "must be >= 1, 'auto' or a list such as '0,1'")

    # -- conversions -----------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain, YAML/JSON-serializable dict (tuples become lists)."""
        out = dataclasses.asdict(self)
        out["split_fractions"] = list(self.split_fractions)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TrainConfig":
        """Build from a mapping; unknown keys raise ``ValueError`` listing the valid ones."""
        if not isinstance(data, Mapping):
            raise ValueError(f"config must be a mapping of key: value, got {type(data).__name__}")
        hints = _field_types()
        unknown = sorted(set(data) - set(hints))
        if unknown:
            raise ValueError(_unknown_key_message(unknown[0]))
        values = {key: _coerce(value, hints[key], key) for key, value in data.items()}
        return cls(**values)

    def replace(self, **changes: Any) -> "TrainConfig":
        """A copy with some fields changed (validated and type-checked like overrides)."""
        data = self.to_dict()
        data.update(changes)
        return TrainConfig.from_dict(data)

    def to_yaml(self) -> str:
        """The config as YAML text (the exact format of the run folder's ``config.yaml``)."""
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)


def config_keys() -> list[str]:
    """The valid configuration keys, in declaration order."""
    return [f.name for f in dataclasses.fields(TrainConfig)]


def _unknown_key_message(key: str) -> str:
    return f"unknown config key {key!r}; valid keys: {', '.join(config_keys())}"


def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(TrainConfig)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check/convert a parsed YAML value against a field's annotation; ``ValueError`` if it fits not."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        # try the non-None members in order (int before str for devices=2)
        for member in args:
            if member is type(None):
                continue
            try:
                return _coerce(value, member, key)
            except ValueError as exc:
                errors.append(str(exc))
        raise ValueError(f"config: {key}={value!r} is not a valid {_type_name(tp)}")
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"config: {key}={value!r} must be true or false")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"config: {key}={value!r} must be an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"config: {key}={value!r} must be a number")
        return float(value)
    if tp is str:
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise ValueError(f"config: {key}={value!r} must be a string")
        return str(value)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"config: {key}={value!r} must be a list")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], key) for v in value)
        if len(value) != len(args):
            raise ValueError(f"config: {key}={value!r} must have {len(args)} entries")
        return tuple(_coerce(v, a, key) for v, a in zip(value, args))
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ValueError(f"config: {key}={value!r} must be a mapping")
        return {str(k): v for k, v in value.items()}
    raise ValueError(f"config: {key} has an unsupported type {_type_name(tp)}")  # pragma: no cover


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``"key=value"`` and parse the value as YAML (``1e-3`` -> float, ``null`` -> None).

    Args:
        text: an override such as ``"lr=5e-4"``, ``"devices=2"``, ``"model_kwargs.width=16"``.

    Returns:
        (key, value) with the value parsed but not yet checked against the field type.
    """
    import yaml

    if "=" not in text:
        raise ValueError(f"override {text!r} must look like key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ValueError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ValueError(f"override {text!r}: value is not valid YAML ({exc})") from None
    # YAML 1.1 reads 1e-3 as a string; numbers with exponents should be numbers
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value for c in ".eE") and value.strip() else value
        except ValueError:
            pass
    return key, value


def _apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    hints = _field_types()
    for text in overrides:
        key, value = parse_override(text)
        head, _, sub = key.partition(".")
        if head not in hints:
            raise ValueError(_unknown_key_message(head))
        if sub:
            if typing.get_origin(hints[head]) is not dict:
                raise ValueError(f"override {text!r}: only mapping keys such as model_kwargs take a '.'")
            nested = dict(data.get(head) or {})
            nested[sub] = value
            data[head] = nested
        else:
            data[head] = value
    return data


def load_config(
    path: str | os.PathLike[str] | None = None, overrides: Iterable[str] = ()
) -> TrainConfig:
    """Read a YAML config (or start from the defaults) and apply ``key=value`` overrides.

    Args:
        path: a YAML file with a top-level mapping of config keys; None uses the defaults.
            A ``.yaml`` name without a folder that does not exist is looked up among the shipped
            configs (``dualattn/configs/``).
        overrides: ``"key=value"`` strings, applied in order; values are YAML-parsed and checked
            against the field types.

    Returns:
        The validated :class:`TrainConfig`.

    Raises:
        ValueError: unknown key (the message lists the valid keys), bad type or out-of-range value.
        FileNotFoundError: the file does not exist.
    """
    import yaml

    data: dict[str, Any] = {}
    if path is not None:
        file = _locate(path)
        loaded = yaml.safe_load(file.read_text(encoding="utf-8"))
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ValueError(f"config file {file} must hold a mapping of key: value")
        data.update(loaded)
    data = _apply_overrides(data, overrides)
    try:
        return TrainConfig.from_dict(data)
    except ValueError as exc:
        where = f" (in {path})" if path is not None else ""
        raise ValueError(f"{exc}{where}") from None


def _locate(path: str | os.PathLike[str]) -> Path:
    file = Path(path)
    if file.is_file():
        return file
    if file.parent == Path(".") and not file.exists():
        from importlib import resources

        name = file.name if file.suffix else f"{file.name}.yaml"
        shipped = resources.files("dualattn") / "configs" / name
        if shipped.is_file():
            return Path(str(shipped))
    raise FileNotFoundError(f"config file {str(path)!r} does not exist")


def save_config(config: TrainConfig, path: str | os.PathLike[str]) -> None:
    """Write the resolved config as YAML, atomically."""
    from dualattn._io import atomic_write_text

    atomic_write_text(path, config.to_yaml())
