"""Run-folder bookkeeping as a Lightning callback: metrics.csv, best/last weights, resume checkpoint.

At the end of every epoch (after validation) the :class:`RunRecorder`
  1. reduces the epoch's training sums over ranks and reads the validation balanced accuracy,
  2. appends a row to ``metrics.csv`` (rewritten atomically: a reader never sees half a file),
  3. writes ``last.safetensors`` and, when the epoch is the best so far by the config's ``select_by``
     metric (:func:`select_best_row`: the highest validation balanced accuracy or the lowest validation
     objective; ties keep the earlier epoch), ``best.safetensors`` (through
     :meth:`dualattn.runs.RunDir.save_weights`),
  4. writes the resume state ``checkpoints/last.ckpt``.

Resume state: Lightning's own checkpoint (model, optimizer, loop progress, callback state, our
scheduler state), written to a temporary name and renamed. It holds only tensors and plain Python
containers, and is read back with ``torch.load(weights_only=True)`` (``Trainer.fit(weights_only=True)``),
so a checkpoint can never run code when loaded.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

import lightning.pytorch as pl
import torch

from dualattn._io import atomic_write_json, atomic_write_text
from dualattn.runs import RunDir

from .config import SELECT_BY

__all__ = ["RunRecorder", "METRIC_COLUMNS", "read_metrics", "select_best_row", "state_digest"]

logger = logging.getLogger(__name__)

METRIC_COLUMNS = (
    "epoch",
    "train_loss",
    "train_ce",
    "train_penalty",
    "val_balanced_accuracy",
    "val_loss",
    "val_objective",
    "lr",
    "epoch_time_s",
)


def read_metrics(path: str | os.PathLike[str]) -> list[dict[str, float]]:
    """Read a run's ``metrics.csv`` into a list of rows (numbers as float, ``epoch`` as int)."""
    rows: list[dict[str, float]] = []
    with open(path, newline="", encoding="utf-8") as fh:
        for raw in csv.DictReader(fh):
            row: dict[str, Any] = {k: (float(v) if v not in ("", "nan") else math.nan) for k, v in raw.items()}
            row["epoch"] = int(row["epoch"])
            rows.append(row)
    return rows


def _metrics_text(rows: list[dict[str, Any]]) -> str:
    """CSV text of the rows; a column a row lacks (a row from an older run) is written as ``nan``."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(METRIC_COLUMNS), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(
            {k: (repr(float(row.get(k, math.nan))) if k != "epoch" else int(row[k])) for k in METRIC_COLUMNS}
        )
    return buf.getvalue()


def select_best_row(rows: Iterable[Mapping[str, Any]], select_by: str) -> Mapping[str, Any] | None:
    """The row of the best epoch by ``select_by``: the rule behind ``best.safetensors`` and ``best_epoch``.

    ``val_balanced_accuracy`` selects the highest value, ``val_objective`` the lowest
    (:data:`dualattn.train.config.SELECT_BY`). Ties keep the earliest epoch; a NaN (or missing) value is
    never selected.

    Args:
        rows: metrics rows (``metrics.csv``, :func:`read_metrics`), each with ``epoch`` and the metric.
        select_by: a key of :data:`~dualattn.train.config.SELECT_BY`.

    Returns:
        The selected row, or None when no row has a value.

    Raises:
        ValueError: ``select_by`` is not one of the known metrics.

    Example:
        >>> rows = [{"epoch": 1, "val_objective": 0.5}, {"epoch": 2, "val_objective": 0.4},
        ...         {"epoch": 3, "val_objective": 0.4}]
        >>> select_best_row(rows, "val_objective")["epoch"]
        2
    """
    if select_by not in SELECT_BY:
        raise ValueError(f"select_by={select_by!r} must be one of {tuple(SELECT_BY)}")
    sign = 1.0 if SELECT_BY[select_by] == "max" else -1.0
    best: Mapping[str, Any] | None = None
    for row in sorted(rows, key=lambda r: r["epoch"]):
        value = float(row.get(select_by, math.nan))
        if math.isnan(value):
            continue
        if best is None or sign * value > sign * float(best[select_by]):
            best = row
    return best


def state_digest(module: torch.nn.Module) -> str:
    """SHA-256 of a module's state (names, dtypes, shapes and bytes), to compare models exactly."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class RunRecorder(pl.Callback):
    """Writes the run folder at every epoch end; its state rides in the Lightning checkpoint.

    Args:
        run_dir: the run folder.
        metadata: extra metadata stored with the weights (JSON-serializable values).
        checkpoint: write ``checkpoints/last.ckpt`` every epoch (the resume state).
        select_by: the metric that picks the best epoch (:func:`select_best_row`).
    """

    def __init__(
        self,
        run_dir: RunDir | str | os.PathLike[str],
        *,
        metadata: dict[str, Any] | None = None,
        checkpoint: bool = True,
        select_by: str = "val_balanced_accuracy",
    ) -> None:
        if select_by not in SELECT_BY:
            raise ValueError(f"select_by={select_by!r} must be one of {tuple(SELECT_BY)}")
        self.run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
        self.run_dir = self.run.path
        self.metadata = dict(metadata or {})
        self.checkpoint = checkpoint
        self.select_by = select_by
        self.rows: list[dict[str, Any]] = []
        #: the selected epoch's ``select_by`` value (NaN before any) and its 1-based epoch (-1 before any)
        self.best = math.nan
        self.best_epoch = -1
        self._t0 = 0.0
        self._lr = math.nan

    @property
    def checkpoint_path(self) -> Path:
        return self.run.checkpoint_file

    def state_dict(self) -> dict[str, Any]:
        return {
            "rows": [dict(r) for r in self.rows],
            "best": self.best,
            "best_epoch": self.best_epoch,
            "select_by": self.select_by,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rows = [dict(r) for r in state_dict.get("rows", [])]
        # the rows are the record: the best epoch follows from them by this run's rule (a checkpoint
        # written before select_by existed selected by val_balanced_accuracy, the default)
        self._update_best()

    def _update_best(self) -> bool:
        """Set ``best``/``best_epoch`` from the rows; True when the last row is the selected one."""
        row = select_best_row(self.rows, self.select_by)
        if row is None:
            self.best, self.best_epoch = math.nan, -1
            return False
        self.best, self.best_epoch = float(row[self.select_by]), int(row["epoch"])
        return bool(self.rows) and self.best_epoch == int(self.rows[-1]["epoch"])

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._t0 = time.perf_counter()
        opt = trainer.optimizers[0] if trainer.optimizers else None
        self._lr = float(opt.param_groups[0]["lr"]) if opt is not None else math.nan

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        train = pl_module.reduce_train_metrics()  # collective: every rank calls it
        val = dict(getattr(pl_module, "epoch_metrics", {}))
        epoch = len(self.rows)  # 0-based index of the epoch just finished
        row: dict[str, Any] = {
            "epoch": epoch + 1,
            **train,
            "val_balanced_accuracy": val.get("val_balanced_accuracy", math.nan),
            "val_loss": val.get("val_loss", math.nan),
            "val_objective": val.get("val_objective", math.nan),
            "lr": self._lr,
            "epoch_time_s": time.perf_counter() - self._t0,
        }
        self.rows.append(row)
        improved = self._update_best()
        score = row["val_balanced_accuracy"]
        model = pl_module.model  # the bare model (not the DDP wrapper)
        if trainer.is_global_zero:
            atomic_write_text(self.run.metrics_file, _metrics_text(self.rows))
            meta = {
                **self.metadata,
                "epoch": str(epoch + 1),
                "val_balanced_accuracy": repr(float(score)),
                "val_objective": repr(float(row["val_objective"])),
            }
            self.run.save_weights(model, "last", meta)
            if improved:
                self.run.save_weights(model, "best", {**meta, "select_by": self.select_by})
        if trainer.is_global_zero:
            logger.info(
                "epoch %d: loss %.4f (ce %.4f, penalty %.4f), val balanced accuracy %.4f, val objective %.4f, "
                "lr %.2e, %.1fs%s",
                epoch + 1,
                row["train_loss"],
                row["train_ce"],
                row["train_penalty"],
                score,
                row["val_objective"],
                row["lr"],
                row["epoch_time_s"],
                " (best)" if improved else "",
            )
        if self.checkpoint:
            self._save_checkpoint(trainer)

    def _save_checkpoint(self, trainer: pl.Trainer) -> None:
        path = self.checkpoint_path
        tmp = path.with_name(".last.ckpt.tmp")
        if trainer.is_global_zero:
            path.parent.mkdir(parents=True, exist_ok=True)
        trainer.strategy.barrier("dualattn.mkdir")
        trainer.save_checkpoint(tmp, weights_only=False)  # every rank calls; rank 0 writes, then all wait
        if trainer.is_global_zero:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        trainer.strategy.barrier("dualattn.checkpoint")

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.world_size > 1:
            # each rank states what it ended with, so agreement across ranks can be checked
            atomic_write_json(
                self.run_dir / "checkpoints" / f"rank{trainer.global_rank}.json",
                {
                    "rank": trainer.global_rank,
                    "world_size": trainer.world_size,
                    "state_sha256": state_digest(pl_module.model),
                    "last_row": self.rows[-1] if self.rows else None,
                    "best": self.best,
                    "best_epoch": self.best_epoch,
                },
            )
