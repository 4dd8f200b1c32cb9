"""Run-folder bookkeeping as a Lightning callback: metrics.csv, best/last weights, resume checkpoint.

At the end of every epoch (after validation) the :class:`RunRecorder`
  1. reduces the epoch's training sums over ranks and reads the validation balanced accuracy,
  2. appends a row to ``metrics.csv`` (rewritten atomically: a reader never sees half a file),
  3. writes ``last.safetensors`` and, when the validation balanced accuracy strictly improves,
     ``best.safetensors`` (through :meth:`dualattn.runs.RunDir.save_weights`),
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
from typing import Any

import lightning.pytorch as pl
import torch

from dualattn._io import atomic_write_json, atomic_write_text
from dualattn.runs import RunDir

__all__ = ["RunRecorder", "METRIC_COLUMNS", "read_metrics", "state_digest"]

logger = logging.getLogger(__name__)

METRIC_COLUMNS = (
    "epoch",
    "train_loss",
    "train_ce",
    "train_penalty",
    "val_balanced_accuracy",
    "val_loss",
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
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(METRIC_COLUMNS), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (repr(float(row[k])) if k != "epoch" else int(row[k])) for k in METRIC_COLUMNS})
    return buf.getvalue()


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
    """

    def __init__(
        self,
        run_dir: RunDir | str | os.PathLike[str],
        *,
        metadata: dict[str, Any] | None = None,
        checkpoint: bool = True,
    ) -> None:
        self.run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
        self.run_dir = self.run.path
        self.metadata = dict(metadata or {})
        self.checkpoint = checkpoint
        self.rows: list[dict[str, Any]] = []
        self.best = -math.inf
        self.best_epoch = -1
        self._t0 = 0.0
        self._lr = math.nan

    @property
    def checkpoint_path(self) -> Path:
        return self.run.checkpoint_file

    def state_dict(self) -> dict[str, Any]:
        return {"rows": [dict(r) for r in self.rows], "best": self.best, "best_epoch": self.best_epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rows = [dict(r) for r in state_dict.get("rows", [])]
        self.best = float(state_dict.get("best", -math.inf))
        self.best_epoch = int(state_dict.get("best_epoch", -1))

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
            "lr": self._lr,
            "epoch_time_s": time.perf_counter() - self._t0,
        }
        self.rows.append(row)
        score = row["val_balanced_accuracy"]
        improved = not math.isnan(score) and score > self.best
        if improved:
            self.best, self.best_epoch = float(score), epoch + 1
        model = pl_module.model  # the bare model (not the DDP wrapper)
        if trainer.is_global_zero:
            atomic_write_text(self.run.metrics_file, _metrics_text(self.rows))
            meta = {**self.metadata, "epoch": str(epoch + 1), "val_balanced_accuracy": repr(float(score))}
            self.run.save_weights(model, "last", meta)
            if improved:
                self.run.save_weights(model, "best", meta)
        if trainer.is_global_zero:
            logger.info(
            "epoch %d: loss %.4f (ce %.4f, penalty %.4f), val balanced accuracy %.4f, lr %.2e, %.1fs",
            epoch + 1,
            row["train_loss"],
            row["train_ce"],
            row["train_penalty"],
            score,
            row["lr"],
            row["epoch_time_s"],
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
