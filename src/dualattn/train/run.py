"""``fit``: one config -> one run folder; ``fit_seeds``: one run per seed plus mean ± std.

Run folder::

    config.yaml         the resolved TrainConfig
    metrics.csv         one row per epoch (see callbacks.METRIC_COLUMNS)
    best.safetensors    weights of the best epoch by ``select_by`` (default: the highest validation
                        balanced accuracy; dualattn.weights format)
    last.safetensors    weights after the last epoch
    summary.json        balanced accuracy (val, test), the selection (select_by, best_epoch,
                        selected_value), parameter counts, epochs, wall time, seed, device,
                        versions; the class names and the data record (below)
    checkpoints/        last.ckpt: the resume state (Lightning checkpoint, loaded weights_only)

The run describes itself: ``summary.json`` and the header of every weights file hold ``class_names``
(the label strings, in class-index order) and ``data``, the record of the training data
(:func:`data_record`: the dataset as typed, its absolute path, its path relative to the run folder,
whether it is embedded, and :func:`dualattn.data.dataset_fingerprint`), which
:meth:`dualattn.runs.RunDir.dataset` uses to find the data again and to say when it moved or changed.
Before the first epoch every file of the dataset is read once (``check_data``): a broken file fails the
run at once, with every problem listed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import pickle
import platform
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import torch
from torch import nn

from dualattn._env import versions
from dualattn._io import atomic_write_json
from dualattn.evaluate.statistics import mean_std
from dualattn.cards import write_model_card
from dualattn.runs import RunDir
from dualattn.weights import load_model

from .config import SELECT_BY, TrainConfig, load_config, save_config
from .quiet import quiet_lightning
from .recipes import PENALTY_VARIANTS, data_normalization, resolve_recipe

__all__ = ["fit", "fit_seeds", "load_run", "resolve_recipe", "build_model", "data_record"]

logger = logging.getLogger(__name__)


def build_model(
    config: TrainConfig,
    *,
    in_channels: int,
    num_classes: int,
    spatial_dims: int,
    img_size: Sequence[int] | None = None,
) -> nn.Module:
    """``create_model`` with the config's backbone, variant, alpha and ``model_kwargs``.

    ``img_size`` (the training images' spatial shape) sizes the global dual witness and ViT
    position embeddings; ``model_kwargs`` may override it.
    """
    from dualattn.models import create_model

    kw = dict(config.model_kwargs)
    if img_size is not None:
        kw.setdefault("img_size", [int(s) for s in img_size])
    recipe = resolve_recipe(config)
    for key, value in recipe["model_kwargs"].items():  # only gated variants' recipes have any
        kw.setdefault(key, value)
    if config.variant in PENALTY_VARIANTS:
        kw.setdefault("alpha", recipe["alpha"])
    elif config.alpha is not None:
        logger.info("alpha=%s is ignored: variant %r has no consistency penalty", config.alpha, config.variant)
    return create_model(
        config.model,
        variant=config.variant,
        in_channels=in_channels,
        num_classes=num_classes,
        spatial_dims=spatial_dims,
        **kw,
    )


def load_run(run_dir: str | os.PathLike[str], which: str = "best") -> nn.Module:
    """Rebuild the trained model of a run folder (never unpickles anything).

    Args:
        run_dir: a run folder written by :func:`fit` (or a ``.safetensors`` file).
        which: ``"best"`` (the epoch selected by the run's ``select_by``) or ``"last"``.

    Returns:
        The model, in eval mode, on the CPU.

    Example:
        >>> model = load_run("runs/baseline")  # doctest: +SKIP
        >>> logits = model(images)              # doctest: +SKIP
    """
    if Path(run_dir).is_file():  # a weights file: ``which`` does not apply
        return load_model(run_dir).eval()
    return RunDir(run_dir).load_model(which)


def _init_from(model: nn.Module, source: str, *, freeze: bool) -> None:
    """Load a trained run's weights into ``model``'s backbone; optionally freeze the backbone."""
    base = load_run(source, "best")
    loader = getattr(model, "load_backbone_state", None)
    if callable(loader):
        loader(base.state_dict())
    else:
        model.load_state_dict(base.state_dict())
    logger.info("initialised the backbone from %s", source)
    if freeze:
        freezer = getattr(model, "freeze_backbone", None)
        if not callable(freezer):
            raise ValueError(f"freeze_backbone=True but {type(model).__name__} has no freeze_backbone()")
        freezer(True)


def _count(model: nn.Module) -> tuple[int, int]:
    params = list(model.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


def _devices(value: int | str) -> int | str | list[int]:
    if isinstance(value, str):
        text = value.strip()
        if text.lstrip("-").isdigit():
            return int(text)
        if "," in text:
            return [int(v) for v in text.split(",") if v.strip()]
    return value


@contextlib.contextmanager
def _restore_global_torch_state() -> Iterator[None]:
    """Lightning's deterministic mode flips process-wide flags: put them back afterwards."""
    det = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    cudnn = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(det, warn_only=warn_only)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn


def _deterministic(config: TrainConfig, accelerator: str) -> bool | str:
    mode = str(config.deterministic).lower()
    if mode == "auto":
        return True if accelerator == "cpu" else "warn"
    return {"true": True, "false": False, "warn": "warn"}[mode]


def _is_launch_primary() -> bool:
    """False in the extra processes a DDP launcher starts (they re-run the script: rank 1, 2, ...).

    Read from the launcher's environment before any Trainer exists, so only the first process checks
    and prepares the run folder.
    """
    for var in ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID"):
        value = os.environ.get(var, "").strip()
        if value not in ("", "0"):
            return False
    return True


def _check_resume_checkpoint(path: Path) -> None:
    """Refuse a resume checkpoint that is corrupt or holds anything but tensors and plain containers.

    ``torch.load(weights_only=True)`` never runs code from the file; its own error message suggests
    retrying with ``weights_only=False``, which would run it, so it is replaced by one naming the file.

    Raises:
        ValueError: the checkpoint cannot be read safely.
    """
    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as exc:
        lines = str(exc).strip().splitlines()
        first = "" if isinstance(exc, pickle.UnpicklingError) or not lines else f": {lines[0]}"
        raise ValueError(
            f"{path}: refusing to resume from this checkpoint: it is corrupt or holds objects other than "
            f"tensors and plain containers, which are never unpickled ({type(exc).__name__}{first[:200]}). "
            "Delete it to start the run again."
        ) from None


def _prepare_out(run: RunDir, *, resume: bool, overwrite: bool) -> None:
    if not _is_launch_primary():
        run.path.mkdir(parents=True, exist_ok=True)
        return
    existing = run.existing_run_files()
    if existing and not resume:
        if not overwrite:
            raise FileExistsError(
                f"{run.path} already holds a run ({', '.join(existing)}); resume it (--resume), "
                "choose another --out, or replace it (--overwrite on the command line, the overwrite argument in Python)"
            )
        run.remove_run_files()
    run.path.mkdir(parents=True, exist_ok=True)


#: Keys that may change when a run is resumed (they do not change what is computed).
RESUME_MAY_CHANGE = (
    "max_epochs",
    "early_stopping_patience",
    "progress",
    "num_workers",
    "eval_batch_size",
    "cache_dir",
    "dataset",
    "init_from",
    "check_data",
)

#: Keys that may change on resume (another machine) at the price of bit-identical results.
RESUME_MOVES = ("accelerator", "devices", "strategy", "num_nodes", "precision", "deterministic")


def _check_resumable(config: TrainConfig, saved_file: Path) -> None:
    """A resumed run must compute what the interrupted one computed: only some keys may differ."""
    if not saved_file.is_file():
        return
    saved = load_config(saved_file).to_dict()
    new = config.to_dict()
    moved = [k for k in RESUME_MOVES if new[k] != saved.get(k)]
    if moved:
        logger.warning(
            "resuming with other hardware settings (%s): the result will not be bit-identical to an "
            "uninterrupted run",
            ", ".join(f"{k}: {saved.get(k)!r} -> {new[k]!r}" for k in moved),
        )
    changed = [
        k for k in new if k not in RESUME_MAY_CHANGE and k not in RESUME_MOVES and new[k] != saved.get(k)
    ]
    if changed:
        diffs = ", ".join(f"{k}: {saved.get(k)!r} -> {new[k]!r}" for k in changed)
        raise ValueError(
            f"cannot resume {saved_file.parent}: the config changed ({diffs}); only "
            f"{', '.join(RESUME_MAY_CHANGE)} may change on resume"
        )


def data_record(dataset: str, root: str | os.PathLike[str] | None, run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """What a run records of its training data (``summary.json`` and the weights' header: ``data``).

    Args:
        dataset: the dataset as the config names it (a folder as typed, or an embedded name).
        root: the resolved dataset folder (None when the datasets were passed in without one).
        run_dir: the run folder (for the relative path, which survives moving run and data together).

    Returns:
        ``{"dataset", "embedded", "path", "relative_to_run", "fingerprint"}``; the last three ``None``
        without a folder.
    """
    from dualattn.data import list_datasets
    from dualattn.data.check import dataset_fingerprint

    embedded = dataset in list_datasets() and not Path(dataset).is_dir()
    record: dict[str, Any] = {"dataset": str(dataset), "embedded": embedded, "path": None,
                              "relative_to_run": None, "fingerprint": None}
    if root is None or not (Path(root) / "labels.csv").is_file():
        return record
    absolute = Path(root).resolve()
    record["path"] = str(absolute)
    try:
        record["relative_to_run"] = Path(os.path.relpath(absolute, Path(run_dir).resolve())).as_posix()
    except ValueError:  # another drive (Windows)
        pass
    record["fingerprint"] = dataset_fingerprint(absolute)
    return record


def _check_same_data(run: RunDir, record: Mapping[str, Any]) -> None:
    """A resumed run must train on the data it started with (it may have moved: ``dataset`` may change)."""
    from dualattn.data.check import fingerprint_changes

    before = run.recorded_data
    changes = fingerprint_changes((before or {}).get("fingerprint"), record.get("fingerprint"))
    if changes:
        raise ValueError(
            f"cannot resume {run.path}: the training data at {record.get('path')} is not the data the run started "
            f"on ({before.get('path') if before else '?'}): {'; '.join(changes)}. Point dataset at the original "
            "data, or start a new run (--overwrite)"
        )


def fit(
    config: TrainConfig,
    *,
    out: str | os.PathLike[str],
    resume: bool = False,
    init_from: str | os.PathLike[str] | None = None,
    progress: bool | None = None,
    overwrite: bool = False,
    datasets: Mapping[str, Any] | None = None,
    model: nn.Module | None = None,
) -> Path:
    """Train one model as ``config`` says and write its run folder.

    Args:
        config: the run configuration.
        out: the run folder (created).
        resume: continue from ``out/checkpoints/last.ckpt`` when it exists (the epoch count may be
            raised with ``config.max_epochs``); a finished run with nothing left to do is returned
            as is. The resumed run ends with the same metrics and weights as an uninterrupted one.
        init_from: a trained run folder (or weights file) whose backbone initialises the model
            (overrides ``config.init_from``).
        progress: show a progress bar (None: ``config.progress``).
        overwrite: replace an existing run in ``out`` (otherwise ``FileExistsError``).
        datasets: prepared ``{"train", "val", "test"}`` datasets (items ``{"image", "label"}``)
            instead of ``config.dataset``; the test split may be absent.
        model: a prepared model instead of ``create_model`` (it must survive ``dualattn.weights``).

    Returns:
        The run folder.

    Raises:
        ValueError: bad config values, empty splits, or no trainable parameters.
        FileExistsError: ``out`` holds a run and neither ``resume`` nor ``overwrite`` is set.

    Example:
        >>> from dualattn.train import fit, load_config
        >>> cfg = load_config(overrides=["dataset=phantoms", "max_epochs=2", "accelerator=cpu"])  # doctest: +SKIP
        >>> run = fit(cfg, out="runs/baseline")  # doctest: +SKIP
    """
    import lightning.pytorch as pl

    from .callbacks import RunRecorder, read_metrics, select_best_row
    from .datamodule import TrainDataModule, build_datasets, check_channels, check_data, resolve_data, seed_all
    from .module import ClassifierModule, evaluate_balanced_accuracy

    if not isinstance(config, TrainConfig):
        raise ValueError(f"config must be a TrainConfig, got {type(config).__name__}")
    t_start = time.perf_counter()
    out = Path(out)
    run = RunDir(out)
    ckpt = run.checkpoint_file
    if init_from is not None:
        config = config.replace(init_from=str(init_from))
    if config.normalize is None and data_normalization(config) != "zscore":
        # recorded in config.yaml: evaluate and explain prepare images the way the run was trained
        config = config.replace(normalize=data_normalization(config))
    _prepare_out(run, resume=resume, overwrite=overwrite)
    resume_from = ckpt if resume and ckpt.is_file() else None
    if resume and resume_from is None:
        logger.warning("nothing to resume in %s: starting a new run", out)
    if resume_from is not None:
        _check_resume_checkpoint(resume_from)
    if resume_from is not None:
        _check_resumable(config, run.config_file)
    previous_wall = 0.0
    if resume_from is not None and run.summary_file.is_file():
        done = json.loads(run.summary_file.read_text(encoding="utf-8"))
        previous_wall = float(done.get("wall_time_s") or 0.0)
        if int(done.get("epochs", 0)) >= config.max_epochs:
            logger.info("%s already finished %s epochs", out, done.get("epochs"))
            return out

    if datasets is None:
        root: Path | None = resolve_data(config)
        report = check_data(config, root) if config.check_data else None
        datasets = build_datasets(config, root=root)
        if report is not None:
            check_channels(dict(datasets), report)
    else:
        root = getattr(datasets.get("train"), "root", None) if hasattr(datasets, "get") else None
    record = data_record(config.dataset, root, out)
    if resume_from is not None:
        _check_same_data(run, record)
    seed_all(config.seed)  # weight initialisation
    train_ds = datasets["train"]
    names = getattr(train_ds, "class_names", None)
    class_names = [str(n) for n in names] if names else None
    recipe = resolve_recipe(config)
    if model is None:
        model = build_model(
            config,
            in_channels=int(train_ds.in_channels),
            num_classes=int(train_ds.num_classes),
            spatial_dims=int(train_ds.spatial_dims),
            img_size=tuple(train_ds[0]["image"].shape[1:]),
        )
    source = config.init_from
    if source in ("", "scratch"):
        source = None
    if source is not None and resume_from is None:
        _init_from(model, str(source), freeze=recipe["freeze_backbone"])
    elif source is None and recipe["init"] != "scratch" and config.init_from is None:
        logger.warning(
            "the %r recipe starts from a trained %s, but no init_from was given: training from scratch",
            config.variant, "baseline" if recipe["init"] == "baseline" else "gated run (exact, multilevel or dual)",
        )
    if recipe["freeze_backbone"] and (source is None or resume_from is not None):
        freezer = getattr(model, "freeze_backbone", None)
        if callable(freezer):
            freezer(True)
    if _is_launch_primary():
        run.write_config(config)  # on resume: the new max_epochs etc.

    module_cls = ClassifierModule
    if config.variant == "select_predict":  # two phases: predictor on random masks, then the selector
        from .select_predict import SelectPredictModule as module_cls
    module = module_cls(model, config=config)
    data = TrainDataModule(dict(datasets), config=config)
    n_params, n_trainable = _count(model)
    metadata: dict[str, Any] = {
        "dataset": str(config.dataset),
        "seed": str(config.seed),
        "model": str(config.model),
        "variant": str(config.variant),
        "class_names": class_names,
        "data": record,
    }
    recorder = RunRecorder(run, metadata=metadata, select_by=config.select_by)
    callbacks: list[pl.Callback] = [recorder]
    if config.early_stopping_patience is not None:
        callbacks.append(
            pl.callbacks.EarlyStopping(
                monitor=config.select_by, mode=SELECT_BY[config.select_by], patience=config.early_stopping_patience
            )
        )
    accelerator = config.accelerator
    if accelerator == "auto":
        accelerator = "gpu" if torch.cuda.is_available() else "cpu"
    show = config.progress if progress is None else progress
    with _restore_global_torch_state():
        trainer = pl.Trainer(
            accelerator=accelerator,
            devices=_devices(config.devices),
            strategy=config.strategy,
            num_nodes=config.num_nodes,
            precision=config.precision,  # type: ignore[arg-type]
            max_epochs=config.max_epochs,
            deterministic=_deterministic(config, accelerator),
            benchmark=False,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=bool(show),
            enable_model_summary=False,
            num_sanity_val_steps=0,
            gradient_clip_val=config.gradient_clip_val,
            use_distributed_sampler=False,
            default_root_dir=str(out),
            callbacks=callbacks,
        )
        with quiet_lightning():  # Lightning's lines once, no litlogger tip, no LeafSpec warning (library callers too)
            trainer.fit(
                module,
                datamodule=data,
                ckpt_path=str(resume_from) if resume_from is not None else None,
                weights_only=True,
            )
    if not trainer.is_global_zero:
        return out

    rows = read_metrics(run.metrics_file)
    best_row = select_best_row(rows, config.select_by)  # the rule that wrote best.safetensors
    test_bal, n_test = math.nan, 0
    test_ds = datasets.get("test") if hasattr(datasets, "get") else None
    if test_ds is not None and len(test_ds) > 0 and run.weights_path("best").is_file():
        device = torch.device("cuda" if accelerator == "gpu" and torch.cuda.is_available() else "cpu")
        best_model = run.load_model("best").to(device)
        loader = data.loader("test", train=False, shard=False)
        test_bal, n_test = evaluate_balanced_accuracy(best_model, loader, device=device)
    design: dict[str, Any] = {}
    if config.variant == "select_predict" and run.weights_path("best").is_file():
        from .select_predict import select_predict_summary

        design["select_predict"] = select_predict_summary(
            run.load_model("best"), {k: datasets[k] for k in ("val", "test") if k in datasets}, config=config
        )
    summary = {
        "run": out.name,
        "model": config.model,
        "variant": config.variant,
        "dataset": config.dataset,
        "class_names": class_names,
        "data": record,
        "seed": config.seed,
        "alpha": recipe["alpha"] if config.variant in PENALTY_VARIANTS else None,
        "init_from": str(source) if source is not None else None,
        "freeze_backbone": recipe["freeze_backbone"],
        "model_config": dict(getattr(model, "config", {}) or {}),
        "val_balanced_accuracy": best_row["val_balanced_accuracy"] if best_row else math.nan,
        "test_balanced_accuracy": test_bal,
        "best_epoch": best_row["epoch"] if best_row else None,
        "select_by": config.select_by,
        "selected_value": best_row[config.select_by] if best_row else math.nan,
        "epochs": len(rows),
        "num_train": len(train_ds),
        "num_val": len(datasets["val"]),
        "num_test": n_test,
        "parameters": n_params,
        "trainable_parameters": n_trainable,
        "wall_time_s": previous_wall + time.perf_counter() - t_start,
        "train_time_s": sum(r["epoch_time_s"] for r in rows),
        "device": _device_name(accelerator),
        "accelerator": accelerator,
        "world_size": trainer.world_size,
        "precision": config.precision,
        "resumed": resume_from is not None,
        "versions": versions(("torch", "lightning", "dualattn")),
        **design,
    }
    run.write_summary(summary)
    write_model_card(run)  # what the run is for and guaranteed to do; the demo adds the measured numbers
    logger.info(
        "%s: val balanced accuracy %.4f (epoch %s, selected by %s = %.4f), test %.4f, %.1fs",
        out,
        summary["val_balanced_accuracy"],
        summary["best_epoch"],
        config.select_by,
        summary["selected_value"],
        test_bal,
        summary["wall_time_s"],
    )
    return out


def _device_name(accelerator: str) -> str:
    if accelerator == "gpu" and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


AGGREGATED = ("val_balanced_accuracy", "test_balanced_accuracy", "epochs", "wall_time_s", "parameters")


def fit_seeds(
    config: TrainConfig,
    seeds: Iterable[int],
    out: str | os.PathLike[str],
    *,
    resume: bool = False,
    **fit_kwargs: Any,
) -> Path:
    """One run per seed (``out/seed0``, ``out/seed1``, ...) and an aggregate ``out/summary.json``.

    The aggregate holds, per metric, the mean, the sample standard deviation (ddof=1; 0 for one
    seed) and the per-seed values: ``{"seeds": [...], "runs": [...], "metrics": {name: {...}}}``.

    Args:
        config: the shared configuration (its ``seed`` is replaced per run).
        seeds: the seeds, e.g. ``range(5)`` (the paper reports 5 runs).
        out: the parent folder.
        resume: resume unfinished seeds; finished ones are kept.
        **fit_kwargs: passed to :func:`fit` (``init_from``, ``progress``, ``overwrite``, ...).

    Returns:
        ``out``.
    """
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("seeds must name at least one seed")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds={seeds} has duplicates")
    out = Path(out)
    if not (resume and (out / "config.yaml").is_file()) and _is_launch_primary():
        save_config(config, out / "config.yaml")
    summaries = []
    for seed in seeds:
        run = RunDir(fit(config.replace(seed=seed), out=out / f"seed{seed}", resume=resume, **fit_kwargs))
        if not run.summary_file.is_file():  # a non-zero DDP rank
            return out
        summaries.append(run.summary)
    aggregate = {
        "model": config.model,
        "variant": config.variant,
        "dataset": config.dataset,
        "seeds": seeds,
        "runs": [f"seed{s}" for s in seeds],
        "std_ddof": 1,
        "metrics": {key: mean_std([s.get(key, math.nan) for s in summaries]) for key in AGGREGATED},
    }
    atomic_write_json(out / "summary.json", aggregate)
    m = aggregate["metrics"]
    logger.info(
        "%d seeds: val balanced accuracy %.4f ± %.4f, test %.4f ± %.4f",
        len(seeds),
        m["val_balanced_accuracy"]["mean"],
        m["val_balanced_accuracy"]["std"],
        m["test_balanced_accuracy"]["mean"],
        m["test_balanced_accuracy"]["std"],
    )
    return out
