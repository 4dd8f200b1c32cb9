"""The LightningModule: cross-entropy + the model's consistency penalty, balanced accuracy on validation.

Validation measures the balanced accuracy, the cross-entropy (``val_loss``) and the training objective
itself (``val_objective`` = cross-entropy + the model's penalty), either of which can select the best
epoch (``TrainConfig.select_by``).

Per-step work is kept to the forward, backward and optimizer step: training sums are accumulated on
the device and read once per epoch (no ``self.log`` per step, no host sync per step), which keeps the
loop fast for small models on a CPU.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn

from ..evaluate.metrics import balanced_accuracy
from .config import TrainConfig
from .datamodule import epoch_seed, seed_all

__all__ = ["ClassifierModule", "evaluate_balanced_accuracy"]

logger = logging.getLogger(__name__)


def evaluate_balanced_accuracy(
    model: nn.Module,
    loader: Any,
    *,
    device: torch.device | str = "cpu",
) -> tuple[float, int]:
    """Balanced accuracy of ``model`` over a data loader of ``{"image", "label"}`` batches.

    The model's train/eval mode is restored afterwards.

    Returns:
        (balanced accuracy, number of samples).
    """
    was_training = model.training
    model.eval()
    preds, labels = [], []
    try:
        for batch in loader:
            logits = model(batch["image"].to(device))
            preds.append(logits.argmax(dim=1).cpu())
            labels.append(batch["label"].reshape(-1).cpu())
    finally:
        model.train(was_training)
    if not preds:
        return float("nan"), 0
    p, y = torch.cat(preds), torch.cat(labels)
    return balanced_accuracy(y, p), int(y.numel())


class ClassifierModule(pl.LightningModule):
    """Trains ``model`` with ``CE(y, logits) + penalty`` (the penalty already carries alpha).

    Args:
        model: a ``dualattn`` model (``forward_with_attention`` returns ``AttentionOutput``); any
            ``nn.Module`` mapping (B, C, *S) -> (B, K) logits also works (penalty 0).
        config: optimiser, scheduler and seed settings.

    Attributes:
        epoch_metrics: after each validation, ``val_balanced_accuracy``, ``val_loss`` (the mean
            cross-entropy) and ``val_objective`` (the mean of cross-entropy + penalty, the training
            objective; batch penalties weighted by batch size), identical on every rank.
    """

    def __init__(self, model: nn.Module, *, config: TrainConfig) -> None:
        super().__init__()
        self.model = model
        self.config = config
        self.epoch_metrics: dict[str, float] = {}
        self._plateau: torch.optim.lr_scheduler.ReduceLROnPlateau | None = None
        self._pending_plateau: dict[str, Any] | None = None
        self._train_sums: torch.Tensor | None = None
        self._val_preds: list[torch.Tensor] = []
        self._val_labels: list[torch.Tensor] = []
        self._val_loss: torch.Tensor | None = None
        self._val_penalty: torch.Tensor | None = None
        self._buffer_copy: list[torch.Tensor] | None = None
        #: ``precise_bn``'s training images, read on first use
        self._calibration: list[torch.Tensor] | None = None
        #: optimizer steps skipped because their gradients were not finite
        self.skipped_steps = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    # -- training ------------------------------------------------------------------------------

    def epoch_index(self) -> int:
        """The 0-based index of the epoch being trained (survives a resume)."""
        return int(self.trainer.fit_loop.epoch_progress.current.processed)

    def on_train_epoch_start(self) -> None:
        # every epoch's random stream (dropout, in-process augmentation) depends only on (seed, epoch)
        seed_all(epoch_seed(self.config.seed, self.epoch_index(), 0, 1 + self.global_rank))
        self._train_sums = torch.zeros(4, device=self.device)

    def _logits_and_penalty(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fwa = getattr(self.model, "forward_with_attention", None)
        if fwa is None:
            logits = self.model(x)
            return logits, logits.new_zeros(())
        out = fwa(x)
        penalty = out.penalty
        if not torch.is_tensor(penalty):
            penalty = out.logits.new_tensor(float(penalty))
        return out.logits, penalty.float()

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch["image"], batch["label"]
        logits, penalty = self._logits_and_penalty(x)
        ce = F.cross_entropy(logits.float(), y)
        loss = ce + self.penalty_factor() * penalty
        n = float(y.shape[0])
        if self._train_sums is None:
            self._train_sums = torch.zeros(4, device=self.device)
        with torch.no_grad():
            # a non-finite step is skipped (see on_before_optimizer_step): keep it out of the epoch means
            # too, without a host sync per step
            terms = torch.stack([loss.detach() * n, ce.detach() * n, penalty.detach() * n, ce.new_tensor(n)])
            self._train_sums += torch.where(torch.isfinite(terms).all(), terms, torch.zeros_like(terms))
        return loss

    def penalty_factor(self) -> float:
        """The weight of the model's penalty in this epoch's training loss: ``epoch / penalty_warmup_epochs`` during
        the warm-up (0 in the first epoch: cross-entropy alone), then 1 (``TrainConfig.penalty_warmup_epochs``)."""
        warmup = int(self.config.penalty_warmup_epochs)
        if warmup <= 0:
            return 1.0
        return min(1.0, self.epoch_index() / warmup)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # buffers (BatchNorm running statistics) change in the forward pass, before the loss is known
        # to be finite: keep a copy (small) to restore if the step turns out non-finite
        self._buffer_copy = [b.detach().clone() for b in self.model.buffers()]

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Skip a step whose gradients (or updated buffers) are not finite: NaN never reaches the weights.

        Runs after the gradients are reduced across DDP ranks, so every rank takes the same decision.
        The gradients are dropped (``None``: the optimizer leaves those parameters and their state
        untouched) and the buffers are restored to their values before the batch.
        """
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        buffers = [b for b in self.model.buffers() if b.is_floating_point()]
        checks = [torch.isfinite(p.grad).all() for p in params] + [torch.isfinite(b).all() for b in buffers]
        if not checks or bool(torch.stack(checks).all()):
            return
        for p in params:
            p.grad = None
        copy = getattr(self, "_buffer_copy", None)
        if copy is not None:
            with torch.no_grad():
                for b, saved in zip(self.model.buffers(), copy):
                    b.copy_(saved)
        self.skipped_steps += 1
        logger.warning(
            "epoch %d, step %d: non-finite gradients or statistics; the step was skipped (%d so far)",
            self.epoch_index() + 1, int(self.global_step), self.skipped_steps,
        )

    def reduce_train_metrics(self) -> dict[str, float]:
        """Sample-weighted means of the epoch's loss, CE and penalty over all ranks (a collective)."""
        sums = self._train_sums if self._train_sums is not None else torch.zeros(4, device=self.device)
        if self.trainer.world_size > 1:
            sums = self.trainer.strategy.reduce(sums.clone(), reduce_op="sum")
        total = float(sums[3])
        if total == 0:
            return {"train_loss": float("nan"), "train_ce": float("nan"), "train_penalty": float("nan")}
        return {
            "train_loss": float(sums[0]) / total,
            "train_ce": float(sums[1]) / total,
            "train_penalty": float(sums[2]) / total,
        }

    # -- validation ----------------------------------------------------------------------------

    def on_validation_epoch_start(self) -> None:
        if self.config.precise_bn > 0 and not self.trainer.sanity_checking and self.trainer.state.fn == "fit":
            self.recompute_batchnorm()
        self._val_preds, self._val_labels = [], []
        self._val_loss = torch.zeros((), device=self.device)
        self._val_penalty = torch.zeros((), device=self.device)

    @torch.no_grad()
    def recompute_batchnorm(self, batches: list[torch.Tensor] | None = None) -> int:
        """Replace every BatchNorm layer's running statistics by their cumulative average over ``batches``
        (default: ``config.precise_bn`` training images without augmentation, from the data module), the
        weights fixed ("precise BN"). The random streams are left as they were.

        Returns:
            the number of BatchNorm layers recomputed (0: the model has none; nothing is read).
        """
        return self._recompute_bn([self.model], self.model, batches)

    @torch.no_grad()
    def _recompute_bn(self, parts: list[nn.Module], forward: Any, batches: list[torch.Tensor] | None) -> int:
        """Recompute the BatchNorm statistics of ``parts`` (put in training mode; every other module keeps its
        mode) by running ``forward`` on each batch; see :meth:`recompute_batchnorm`."""
        bns = [m for part in parts for m in part.modules()
               if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
        if not bns:
            return 0
        if batches is None:
            if self._calibration is None:  # read once per fit, then reused every epoch (and by every part)
                self._calibration = self.trainer.datamodule.calibration_batches(self.config.precise_bn)
            batches = self._calibration
        modes = {m: m.training for m in self.model.modules()}
        momenta = [m.momentum for m in bns]
        devices = [self.device] if self.device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=devices):
                for m in bns:
                    m.reset_running_stats()
                    m.momentum = None  # cumulative moving average over the calibration batches
                for part in parts:
                    part.train()
                for x in batches:
                    forward(x.to(self.device))
        finally:
            for m, momentum in zip(bns, momenta):
                m.momentum = momentum
            for m, mode in modes.items():
                m.training = mode
        return len(bns)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        x, y = batch["image"], batch["label"]
        logits, penalty = self._logits_and_penalty(x)
        logits = logits.float()
        if self._val_loss is None or self._val_penalty is None:
            self.on_validation_epoch_start()
        self._val_loss = self._val_loss + F.cross_entropy(logits, y, reduction="sum")
        # the penalty is a batch mean (like the cross-entropy in training): weight it by the batch size
        self._val_penalty = self._val_penalty + penalty.detach() * y.shape[0]
        self._val_preds.append(logits.argmax(dim=1))
        self._val_labels.append(y)

    def _gather_cat(self, t: torch.Tensor) -> torch.Tensor:
        """Concatenate a (n_r,) tensor over ranks (n_r may differ per rank)."""
        world = self.trainer.world_size
        if world == 1:
            return t
        size = torch.tensor([t.shape[0]], device=self.device)
        sizes = self.all_gather(size).reshape(-1)
        padded = t.new_zeros((int(sizes.max()),))
        padded[: t.shape[0]] = t
        gathered = self.all_gather(padded).reshape(world, -1)
        return torch.cat([gathered[r, : int(sizes[r])] for r in range(world)])

    def on_validation_epoch_end(self) -> None:
        empty = torch.zeros(0, dtype=torch.long, device=self.device)
        preds = torch.cat(self._val_preds) if self._val_preds else empty
        labels = torch.cat(self._val_labels) if self._val_labels else empty
        preds, labels = self._gather_cat(preds), self._gather_cat(labels)
        zero = torch.zeros((), device=self.device)
        sums = torch.stack([
            self._val_loss if self._val_loss is not None else zero,
            self._val_penalty if self._val_penalty is not None else zero,
        ])  # fmt: skip
        if self.trainer.world_size > 1:
            sums = self.trainer.strategy.reduce(sums.clone(), reduce_op="sum")
        n = int(labels.numel())
        bal = balanced_accuracy(labels.cpu(), preds.cpu())
        ce_sum, penalty_sum = (float(v) for v in sums)
        self.epoch_metrics = {
            "val_balanced_accuracy": bal,
            "val_loss": ce_sum / max(n, 1),
            "val_objective": (ce_sum + penalty_sum) / max(n, 1),
        }
        self._val_preds, self._val_labels = [], []
        if self.trainer.sanity_checking:
            return
        if self._plateau is not None:
            self._plateau.step(bal)
        # for EarlyStopping and the progress bar (identical on every rank; the sync is one scalar per epoch)
        self.log("val_balanced_accuracy", bal, on_epoch=True, prog_bar=True, logger=False, sync_dist=True)
        self.log("val_objective", self.epoch_metrics["val_objective"], on_epoch=True, logger=False, sync_dist=True)

    # -- optimisation --------------------------------------------------------------------------

    def configure_optimizers(self) -> torch.optim.Optimizer:
        cfg = self.config
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise ValueError(
                f"model {cfg.model!r} variant {cfg.variant!r} has no trainable parameters "
                f"(freeze_backbone={cfg.freeze_backbone!r})"
            )
        return self._optimizer(params)

    def _optimizer(self, params: Any) -> torch.optim.Optimizer:
        """The config's optimizer over ``params`` (parameters or parameter groups) and, with
        ``scheduler="plateau"``, its ReduceLROnPlateau (restored from a checkpoint when one is pending)."""
        cfg = self.config
        if cfg.optimizer == "adam":
            opt: torch.optim.Optimizer = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        elif cfg.optimizer == "adamw":
            opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        else:
            opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        self._plateau = None
        if cfg.scheduler == "plateau":
            # stepped by hand after validation so its state is in the checkpoint written at epoch end
            self._plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
                opt, mode="max", factor=cfg.plateau_factor, patience=cfg.plateau_patience
            )
            if self._pending_plateau is not None:
                self._plateau.load_state_dict(self._pending_plateau)
                self._pending_plateau = None
        return opt

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["dualattn"] = {
            "plateau": self._plateau.state_dict() if self._plateau is not None else None,
            "config": self.config.to_dict(),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("dualattn") or {}
        self._pending_plateau = state.get("plateau")
        if self._plateau is not None and self._pending_plateau is not None:
            self._plateau.load_state_dict(self._pending_plateau)
            self._pending_plateau = None
