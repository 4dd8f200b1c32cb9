"""Training ``select_predict`` (select, then predict): two phases in one resumable run, and the EVAL-X leak.

Against a mask that encodes the class by its shape (Jethani et al., AISTATS 2021, "Have We Learned to Explain?":
REAL-X / EVAL-X), the predictor never learns on the selector's masks:

* **phase 1** (epochs ``0 .. predictor_epochs - 1``): the predictor on *random* masks only: blob-like (the top
  cells of a Gaussian-smoothed noise field, :func:`random_blob_masks`), cell-aligned on the selector's finest grid,
  covering a budget drawn uniformly in ``[budget_low, budget_high]`` (5-35 %) of the foreground cells. A random
  mask carries no class, so the predictor learns ``p(y | what is visible)`` and cannot learn to read a class from
  a mask's shape. Beside it, independently, the selector learns to find what decides by its own objective
  (``selector_aux``: a training-only linear head on its ``mu``-pooled features; ``selector_pretrain``); neither
  sees the other.
* **phase 2** (the remaining epochs): the selector against the frozen predictor (eval mode, no gradient to its
  weights), by the straight-through top-k of :meth:`~dualattn.models.select_predict.SelectPredictClassifier.select`
  (the value is the hard mask, the gradient a sigmoid relaxation around the budget's threshold) whose temperature
  is annealed geometrically from ``temperature_start`` to ``temperature_end`` over the phase, plus its own
  objective (and, with ``swap_weight``, both on hiding-test composites).

The run starts from a trained one (``init_from``; the recipe: a baseline): the selector takes its stages (and a
gated run's gates), the predictor its stages and head
(:meth:`~dualattn.models.select_predict.SelectPredictClassifier.load_backbone_state`). Trained from scratch by the
straight-through signal alone, a prototype's selector did not learn to find lesions (DESIGN.md §2); the pooled
head's direct signal does, and a predictor started from a whole-image classifier learns on random masks in a
few epochs where one from scratch learned nothing in eight (docs/models.md, "Select, then predict").

Validation measures the deployed model (the selector's hard mask, the predictor on it) after every epoch, so
``best.safetensors`` is the best deployed model of either phase. After training, ``summary.json`` gets
``select_predict`` (:func:`evalx_report` on val and test): balanced accuracy with the selector's masks, with
random blob masks of the same per-image size (the EVAL-X comparison; the gap is the first minus the second), with
the mask alone (every pixel hidden, the mask channel kept: a class read from the mask's shape; chance when there
is no leak), the kept share of the foreground cells, and the share of lesion pixels the mask shows.

Example:
    >>> from dualattn.train import load_config
    >>> cfg = load_config(overrides=["variant=select_predict", "max_epochs=8", "select_predict.predictor_epochs=5"])
    >>> opts = SelectPredictOptions.from_config(cfg)
    >>> opts.predictor_epochs, opts.phase(4), opts.phase(5)
    (5, 1, 2)
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..evaluate.metrics import balanced_accuracy
from ..models import pool_features
from ..models.select_predict import foreground_cells, foreground_pixels, top_cells
from .config import TrainConfig
from .module import ClassifierModule

__all__ = [
    "SelectPredictModule", "SelectPredictOptions", "evalx_report", "item_batches", "random_blob_masks",
    "random_masks_for", "select_predict_summary", "threshold_mil_loss",
]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class SelectPredictOptions:
    """The ``select_predict`` training options (``TrainConfig.select_predict``; ``--set select_predict.NAME=V``).

    Attributes:
        predictor_epochs: phase 1's length (the predictor on random masks); None: half of ``max_epochs`` (at least
            1). ``max_epochs - predictor_epochs`` epochs train the selector.
        budget_low, budget_high: the random masks' budgets, shares of the foreground cells (uniform per image).
        blob_sigma: the range of the noise field's smoothing, in cells (uniform per image): small values give
            many small blobs, large values one or two big ones.
        selector_lr: the selector's learning rate in phase 2 (None: ``lr``).
        temperature_start, temperature_end: the straight-through relaxation's temperature at the first and the
            last selector epoch (geometric in between), in units of the candidates' spread of ``log mu``.
        evalx_draws: random masks per image in :func:`evalx_report`.
        selector_aux: weight of the selector's own training loss: the cross-entropy of a linear head on its
            ``mu``-pooled features (attention pooling, Jetley et al. 2018), a direct discriminative signal for its
            gates besides the straight-through one; the head belongs to the training module, never to the model
            (nothing of it reaches the predictor). 0 turns it off.
        selector_pretrain: in phase 1 train the selector too, by that loss alone (independently of the
            predictor, which sees only random masks), so that it finds lesions before it meets the predictor.
        swap_weight: in phase 2, weight of the same objective on the hiding test's composites (each image's
            hidden pixels replaced by a healthy image's of the batch, the label kept): it trains the selector to
            keep its mask where the decision is when hidden content changes (the mask-stability gap the guarantee
            leaves open). 0 turns it off.
        healthy_fpr: with ``mask_rule="threshold"``, before every validation the threshold is set so that at
            most this share of the training split's healthy images (un-augmented, ``CALIBRATION_IMAGES`` of them,
            evenly spaced) shows any cell
            (:meth:`~dualattn.models.select_predict.SelectPredictClassifier.calibrate_threshold`): the rate at which a
            healthy partner of the hiding test can add a cell. None: the threshold stays where training put it (0).
        area_weight: in phase 2, weight of the share of pixels the selector shows (straight-through: the value is
            the hard mask's share, the gradient the relaxation's), a sparsity pressure for ``mask_rule=
            "threshold"``, whose masks have no fixed size. 0 turns it off.
    """

    predictor_epochs: int | None = None
    budget_low: float = 0.05
    budget_high: float = 0.35
    blob_sigma: tuple[float, float] = (0.5, 2.0)
    selector_lr: float | None = None
    temperature_start: float = 1.0
    temperature_end: float = 0.1
    evalx_draws: int = 4
    selector_aux: float = 1.0
    selector_pretrain: bool = True
    swap_weight: float = 0.0
    area_weight: float = 0.0
    healthy_fpr: float | None = None
    max_epochs: int = 30

    def __post_init__(self) -> None:
        def bad(key: str, why: str) -> ValueError:
            return ValueError(f"config: select_predict.{key}={getattr(self, key)!r} {why}")

        if self.predictor_epochs is not None and not (isinstance(self.predictor_epochs, int)
                                                      and 0 <= self.predictor_epochs <= self.max_epochs):
            raise bad("predictor_epochs", f"must be an integer in [0, max_epochs={self.max_epochs}] or null")
        if not 0 < self.budget_low <= self.budget_high <= 1:
            raise bad("budget_low", f"and budget_high={self.budget_high!r} must satisfy 0 < low <= high <= 1")
        if len(self.blob_sigma) != 2 or not 0 < self.blob_sigma[0] <= self.blob_sigma[1]:
            raise bad("blob_sigma", "must be two numbers 0 < low <= high (cells)")
        if self.selector_lr is not None and not self.selector_lr > 0:
            raise bad("selector_lr", "must be > 0 or null")
        if not (self.temperature_start > 0 and self.temperature_end > 0):
            raise bad("temperature_start", f"and temperature_end={self.temperature_end!r} must be > 0")
        if not (isinstance(self.evalx_draws, int) and self.evalx_draws >= 1):
            raise bad("evalx_draws", "must be an integer >= 1")
        if not self.selector_aux >= 0:
            raise bad("selector_aux", "must be >= 0")
        if not self.swap_weight >= 0:
            raise bad("swap_weight", "must be >= 0")
        if not self.area_weight >= 0:
            raise bad("area_weight", "must be >= 0")
        if self.healthy_fpr is not None and not 0 <= self.healthy_fpr < 1:
            raise bad("healthy_fpr", "must be in [0, 1) or null")
        if not isinstance(self.selector_pretrain, bool):
            raise bad("selector_pretrain", "must be true or false")

    @classmethod
    def from_config(cls, config: TrainConfig) -> "SelectPredictOptions":
        """Read ``config.select_predict`` (unknown keys raise ``ValueError`` listing the valid ones)."""
        data: dict[str, Any] = dict(config.select_predict or {})
        valid = [f.name for f in dataclasses.fields(cls) if f.name != "max_epochs"]
        unknown = sorted(set(data) - set(valid))
        if unknown:
            raise ValueError(f"unknown select_predict option {unknown[0]!r}; valid: {', '.join(valid)}")
        if "blob_sigma" in data:
            data["blob_sigma"] = tuple(float(v) for v in data["blob_sigma"])
        for key in ("budget_low", "budget_high", "temperature_start", "temperature_end", "selector_lr",
                    "selector_aux", "swap_weight", "area_weight", "healthy_fpr"):
            if data.get(key) is not None:
                if isinstance(data[key], bool) or not isinstance(data[key], (int, float)):
                    raise ValueError(f"config: select_predict.{key}={data[key]!r} must be a number")
                data[key] = float(data[key])
        return cls(**data, max_epochs=int(config.max_epochs))

    @property
    def phase1_epochs(self) -> int:
        """Epochs of phase 1."""
        if self.predictor_epochs is not None:
            return int(self.predictor_epochs)
        return max(1, self.max_epochs // 2)

    def phase(self, epoch: int) -> int:
        """1 (predictor on random masks) or 2 (selector against the frozen predictor) for a 0-based epoch."""
        return 1 if epoch < self.phase1_epochs else 2

    def temperature(self, epoch: int) -> float:
        """The relaxation's temperature in a phase-2 epoch (geometric from start to end)."""
        n = self.max_epochs - self.phase1_epochs
        i = min(max(epoch - self.phase1_epochs, 0), max(n - 1, 0))
        if n <= 1:
            return float(self.temperature_start)
        return float(self.temperature_start * (self.temperature_end / self.temperature_start) ** (i / (n - 1)))


# ----------------------------------------------------------------------------------------- random masks
def _gaussian_kernel(sigma: float, dims: int) -> Tensor:
    radius = max(1, int(math.ceil(2.5 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k1 = torch.exp(-0.5 * (t / sigma) ** 2)
    k1 = k1 / k1.sum()
    kernel = k1
    for _ in range(dims - 1):
        kernel = kernel[..., None] * k1
    return kernel


def random_blob_masks(
    candidates: Tensor,
    kept: Tensor,
    *,
    sigma: tuple[float, float] = (0.5, 2.0),
    generator: torch.Generator | None = None,
) -> Tensor:
    """Blob-like random masks on a cell grid: the ``kept[b]`` candidate cells of highest value of a white-noise
    field smoothed by a Gaussian of a random width (uniform in ``sigma``, in cells; edges replicated).

    Args:
        candidates: ``(B, *grid)`` bool, the cells that may be chosen (the foreground cells).
        kept: ``(B,)`` cells per mask (e.g. :func:`~dualattn.models.select_predict.budget_count`).
        sigma: range of the smoothing widths.
        generator: the random stream (default: torch's global one).

    Returns:
        ``(B, *grid)`` bool with ``min(kept[b], candidates in b)`` cells set.

    Example:
        >>> cand = torch.ones(2, 8, 8, dtype=torch.bool)
        >>> m = random_blob_masks(cand, torch.tensor([5, 20]), generator=torch.Generator().manual_seed(0))
        >>> m.flatten(1).sum(1).tolist()
        [5, 20]
    """
    b = candidates.shape[0]
    grid = tuple(candidates.shape[1:])
    dims = len(grid)
    conv = F.conv2d if dims == 2 else F.conv3d
    noise = torch.randn((b, 1, *grid), generator=generator)
    widths = torch.rand(b, generator=generator) * (sigma[1] - sigma[0]) + sigma[0]
    fields = []
    for i in range(b):
        k = _gaussian_kernel(float(widths[i]), dims)
        r = k.shape[0] // 2
        padded = F.pad(noise[i:i + 1], (r,) * (2 * dims), mode="replicate")
        fields.append(conv(padded, k[None, None]))
    field = torch.cat(fields)[:, 0].to(candidates.device)
    return top_cells(field, candidates, kept)


def _finest_grid(model: nn.Module, size: Sequence[int]) -> tuple[int, ...]:
    return tuple(model.backbone.grid_shapes(tuple(size))[model.finest_block])


def random_masks_for(model: nn.Module, x: Tensor, kept: Tensor | None = None, *, budgets: Tensor | None = None,
                     sigma: tuple[float, float] = (0.5, 2.0), generator: torch.Generator | None = None) -> Tensor:
    """Random blob masks on ``model``'s finest grid for images ``x``: ``kept`` cells each, or ``budgets`` shares
    ``(B,)`` of each image's foreground cells (:func:`random_blob_masks`)."""
    grid = _finest_grid(model, x.shape[2:])
    cand = foreground_cells(x, grid, rel_threshold=model.foreground_threshold)
    if kept is None:
        if budgets is None:
            raise ValueError("give kept or budgets")
        n = cand.flatten(1).sum(1).double()
        kept = torch.ceil(n * budgets.double().cpu().to(n.device) - 1e-9).clamp_min(1).long()
    return random_blob_masks(cand, kept, sigma=sigma, generator=generator)


def threshold_mil_loss(phi: Tensor, y: Tensor, empty_class: int = 0) -> Tensor:
    """Multiple-instance loss of the threshold rule's cells: binary cross-entropy of the largest potential of each
    image against "a finding" (class other than ``empty_class``): an image with a finding should show at least one
    cell (``max phi > 0``), one without none (every ``phi < 0``).

    Args:
        phi: ``(B, *grid)`` the finest gate's potentials.
        y: ``(B,)`` classes.
        empty_class: the class of "no finding".

    Example:
        >>> phi = torch.tensor([[[-2.0, 0.0], [0.0, 3.0]]])
        >>> round(float(threshold_mil_loss(phi, torch.tensor([1]))), 4)  # softplus(-3)
        0.0486
    """
    top = phi.flatten(1).amax(1).float()
    return F.binary_cross_entropy_with_logits(top, (y != empty_class).float())


# ------------------------------------------------------------------------------------------- the module
class SelectPredictModule(ClassifierModule):
    """The Lightning module of a ``select_predict`` run: phase 1 then phase 2 (module docstring).

    The optimizer has two parameter groups, the predictor's and the selector's; a frozen part gets no gradient
    (``requires_grad`` off) and runs in eval mode (its BatchNorm statistics do not move). At the first selector
    epoch the learning rates return to their initial values and the plateau scheduler starts afresh.
    """

    def __init__(self, model: nn.Module, *, config: TrainConfig) -> None:
        super().__init__(model, config=config)
        if not hasattr(model, "select") or not hasattr(model, "predict_masked"):
            raise ValueError(f"variant select_predict needs a SelectPredictClassifier, got {type(model).__name__}")
        self.options = SelectPredictOptions.from_config(config)
        #: the selector's training-only head (``selector_aux``): linear on the concatenated ``mu``-pooled features
        self.selector_head: nn.Linear | None = None
        self._threshold_images: list[tuple[Tensor, Tensor]] | None = None
        if self.options.selector_aux > 0:
            width = sum(int(model.backbone.channels[b]) for b in model.attention_blocks)
            self.selector_head = nn.Linear(width, int(model.num_classes))

    #: training images whose pixels give ``selector_norm="dataset"`` its statistics (evenly spaced, un-augmented)
    STATISTICS_IMAGES = 512

    def on_fit_start(self) -> None:
        """A selector normalized by dataset statistics gets them once, from the training split (a resumed or
        warm-started model that has them keeps them)."""
        model = self.model
        if getattr(model, "uses_input_statistics", False) and not bool(model.input_stats_set):
            batches = self.trainer.datamodule.calibration_batches(self.STATISTICS_IMAGES)
            model.set_input_statistics(batches)
            logger.info("selector input statistics from %d training images: shift %s, scale %s",
                        sum(int(b.shape[0]) for b in batches), model.input_shift.tolist(), model.input_scale.tolist())

    @torch.no_grad()
    def recompute_batchnorm(self, batches: list[Tensor] | None = None) -> int:
        """Precise BN (``TrainConfig.precise_bn``) for the part(s) that learn in this epoch's phase, each on the
        inputs it trains on: the selector on the images; in phase 1 the predictor on random blob masks (seeded by
        the run's seed, the same every epoch). The predictor's statistics never come from the selector's masks
        (the EVAL-X separation), and a frozen part keeps its statistics."""
        model = self.model
        phase = self._phase()
        count = 0
        if self._selector_learns(phase):
            count += self._recompute_bn(model.selector_modules(),
                                        lambda x: model._pass_one(model.selector_input(x)), batches)
        if phase == 1:
            opts = self.options
            gen = torch.Generator().manual_seed(int(self.config.seed))

            def masked(x: Tensor) -> Tensor:
                span = opts.budget_high - opts.budget_low
                budgets = torch.rand(x.shape[0], generator=gen) * span + opts.budget_low
                cells = random_masks_for(model, x, budgets=budgets, sigma=opts.blob_sigma, generator=gen)
                return model.predict_masked(x, cells)

            count += self._recompute_bn([model.predictor], masked, batches)
        return count

    #: training images the threshold is calibrated on (``healthy_fpr``; the healthy ones among them count)
    CALIBRATION_IMAGES = 512

    def on_validation_epoch_start(self) -> None:
        """Precise BN (the base class), then the threshold's calibration (``healthy_fpr``), so that validation
        and the saved weights measure the calibrated model."""
        super().on_validation_epoch_start()
        fpr = self.options.healthy_fpr
        if (fpr is not None and getattr(self.model, "mask_rule", "budget") == "threshold"
                and not self.trainer.sanity_checking and self.trainer.state.fn == "fit"):
            if self._threshold_images is None:  # read once per fit
                self._threshold_images = self.trainer.datamodule.calibration_batches(self.CALIBRATION_IMAGES,
                                                                                     labels=True)
            value = self.model.calibrate_threshold(self._threshold_images, false_positive_rate=fpr)
            logger.info("threshold calibrated to %.4g (healthy false-positive rate %.3g)", value, fpr)

    def _phase(self) -> int:
        return self.options.phase(self.epoch_index())

    def _selector_learns(self, phase: int) -> bool:
        return phase == 2 or (self.selector_head is not None and self.options.selector_pretrain)

    def _set_phase(self) -> None:
        phase = self._phase()
        model = self.model
        selector = self._selector_learns(phase)
        for p in model.predictor_parameters():
            p.requires_grad_(phase == 1)
        for p in model.selector_parameters():
            p.requires_grad_(selector)
        model.predictor.train(phase == 1)
        for m in model.selector_modules():
            m.train(selector)
        if phase == 2:
            model.relax_temperature = self.options.temperature(self.epoch_index())

    def _selector_loss(self, sel: Any, y: Tensor) -> Tensor:
        """The selector's own objective: ``selector_aux`` x CE of its pooled head, plus its sharpness term; with
        ``mask_rule="threshold"`` also ``selector_aux`` x :func:`threshold_mil_loss` (what places the threshold:
        the pooled head's softmax cannot see the potentials' level)."""
        loss = sel.penalty.float()
        if self.selector_head is not None:
            pooled = torch.cat([pool_features(sel.features[b], sel.log_mu[b]) for b in self.model.attention_blocks],
                               dim=1)
            loss = loss + self.options.selector_aux * F.cross_entropy(self.selector_head(pooled).float(), y)
            if getattr(self.model, "mask_rule", "budget") == "threshold":
                phi = sel.potentials[self.model.finest_block]
                loss = loss + self.options.selector_aux * threshold_mil_loss(phi, y, self.model.empty_class)
        return loss

    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        epoch = self.epoch_index()
        if epoch == self.options.phase1_epochs and epoch > 0:
            self._restart_schedule()
        phase = self._phase()
        self._set_phase()
        if phase == 2:
            logger.info("epoch %d: selector against the frozen predictor (temperature %.3g)", epoch + 1,
                        self.model.relax_temperature)
        else:
            logger.info("epoch %d: predictor on random masks", epoch + 1)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        super().on_train_batch_start(batch, batch_idx)
        self._set_phase()  # Lightning puts the whole module in train mode after validation

    def _restart_schedule(self) -> None:
        opt = self.optimizers()
        opt = getattr(opt, "optimizer", opt)
        for group in opt.param_groups:
            group["lr"] = group["initial_lr"]
        if self._plateau is not None:
            self._plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
                opt, mode="max", factor=self.config.plateau_factor, patience=self.config.plateau_patience
            )

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        x, y = batch["image"], batch["label"]
        model = self.model
        if self._phase() == 1:
            opts = self.options
            with torch.no_grad():
                budgets = torch.rand(x.shape[0]) * (opts.budget_high - opts.budget_low) + opts.budget_low
                cells = random_masks_for(model, x, budgets=budgets, sigma=opts.blob_sigma)
            logits = model.predict_masked(x, cells)
            penalty = self._selector_loss(model.select(x), y) if self._selector_learns(1) else logits.new_zeros(())
        else:
            sel = model.select(x, relaxed=True)
            logits = model.predictor(model.predictor_input(x, sel.pixels, sel.soft))
            penalty = self._selector_loss(sel, y)
            if self.options.area_weight > 0:
                penalty = penalty + self.options.area_weight * sel.soft.flatten(1).mean(1).mean().float()
            if self.options.swap_weight > 0:
                penalty = penalty + self.options.swap_weight * self._swap_loss(x, y, sel.pixels.detach())
        ce = F.cross_entropy(logits.float(), y)
        loss = ce + penalty
        n = float(y.shape[0])
        if self._train_sums is None:
            self._train_sums = torch.zeros(4, device=self.device)
        with torch.no_grad():
            terms = torch.stack([loss.detach() * n, ce.detach() * n, penalty.detach() * n, ce.new_tensor(n)])
            self._train_sums += torch.where(torch.isfinite(terms).all(), terms, torch.zeros_like(terms))
        return loss

    def _swap_loss(self, x: Tensor, y: Tensor, pixels: Tensor) -> Tensor:
        """The selector's objective on the hiding test's composites: every image's hidden pixels replaced by those
        of the batch's healthy (class 0) image of another index whose foreground overlaps it most; the label kept.
        A selector that moves its mask away from what decided when the hidden content changes pays for it."""
        healthy = y == 0
        b = x.shape[0]
        if not bool(healthy.any()) or b < 2:
            return x.new_zeros(())
        with torch.no_grad():
            fg = foreground_pixels(x).flatten(1).float()
            inter = fg @ fg.T
            area = fg.sum(1)
            iou = inter / (area[:, None] + area[None, :] - inter).clamp_min(1.0)
            ok = healthy[None, :].expand(b, b) & ~torch.eye(b, dtype=torch.bool, device=x.device)
            score = torch.where(ok, iou, torch.full_like(iou, -1.0))
            partner = score.argmax(1)
            has = ok.any(1)
        if not bool(has.any()):
            return x.new_zeros(())
        rows = torch.nonzero(has)[:, 0]
        composite = torch.where(pixels[rows], x[rows], x[partner[rows]])
        sel = self.model.select(composite, relaxed=True)
        logits = self.model.predictor(self.model.predictor_input(composite, sel.pixels, sel.soft))
        return F.cross_entropy(logits.float(), y[rows]) + self._selector_loss(sel, y[rows])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        cfg = self.config
        selector_lr = self.options.selector_lr if self.options.selector_lr is not None else cfg.lr
        groups = [
            {"params": list(self.model.predictor_parameters()), "lr": cfg.lr, "initial_lr": cfg.lr},
            {"params": list(self.model.selector_parameters())
             + (list(self.selector_head.parameters()) if self.selector_head is not None else []),
             "lr": selector_lr, "initial_lr": selector_lr},
        ]
        return self._optimizer(groups)


# --------------------------------------------------------------------------------------------- EVAL-X
@torch.no_grad()
def evalx_report(
    model: nn.Module,
    loader: Any,
    *,
    draws: int = 4,
    sigma: tuple[float, float] = (0.5, 2.0),
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """The deployed model against random masks of the same size: the EVAL-X comparison, and the mask-shape leak.

    Per image: the selector's mask ``M`` (``k`` finest cells); the predictor on ``M``; on ``draws`` random blob
    masks of ``k`` foreground cells each (:func:`random_blob_masks`); and on ``M`` with every pixel hidden (the
    image's channels all ``hidden_value``, only the mask channel left: what the mask's shape alone says).

    Args:
        model: a trained ``select_predict`` model.
        loader: batches ``{"image", "label"}`` (and ``"mask"`` for the lesion coverage) as the model takes them.
        draws: random masks per image.
        sigma: their smoothing range (cells).
        seed: their random stream.
        device: where the model runs.

    Returns:
        ``balanced_accuracy_selector``, ``balanced_accuracy_random`` (pooled over the draws), ``evalx_gap`` (the
        first minus the second), ``balanced_accuracy_mask_only`` (0.5 for two balanced classes when the shape says
        nothing), ``kept_foreground_share`` (mean ``k`` / foreground cells), ``kept_share`` (mean ``k`` / all
        cells), ``lesion_pixels_shown`` (mean over images with a lesion of the share of its pixels the mask shows;
        NaN without masks), ``n``.
    """
    was_training = model.training
    model.eval()
    gen = torch.Generator().manual_seed(int(seed))
    ys, p_sel, p_rand, y_rand, p_shape = [], [], [], [], []
    fg_share, share, shown = [], [], []
    try:
        for batch in loader:
            x = batch["image"].to(device)
            y = batch["label"].reshape(-1).cpu()
            sel = model.select(x)
            cells = sel.mask[model.finest_block]
            ys.append(y)
            p_sel.append(model.predict_masked(x, cells).argmax(1).cpu())
            p_shape.append(model.predict_masked(torch.zeros_like(x), cells).argmax(1).cpu())
            for _ in range(int(draws)):
                rand = random_blob_masks(sel.candidates.cpu(), sel.kept.cpu(), sigma=sigma, generator=gen)
                p_rand.append(model.predict_masked(x, rand.to(x.device)).argmax(1).cpu())
                y_rand.append(y)
            n_cand = sel.candidates.flatten(1).sum(1).double().cpu()
            k = sel.kept.double().cpu()
            fg_share.append(k / n_cand.clamp_min(1))
            share.append(k / cells[0].numel())
            if "mask" in batch:
                lesion = batch["mask"].to(x.device).flatten(1) > 0.5
                vis = sel.pixels.flatten(1)
                has = lesion.sum(1) > 0
                frac = (lesion & vis).sum(1).double() / lesion.sum(1).clamp_min(1).double()
                shown.append(frac[has].cpu())
    finally:
        model.train(was_training)
    if not ys:
        return {"n": 0}
    y = torch.cat(ys)
    bal_sel = balanced_accuracy(y, torch.cat(p_sel))
    bal_rand = balanced_accuracy(torch.cat(y_rand), torch.cat(p_rand))
    shown_all = torch.cat(shown) if shown else torch.zeros(0)
    return {
        "balanced_accuracy_selector": bal_sel,
        "balanced_accuracy_random": bal_rand,
        "evalx_gap": bal_sel - bal_rand,
        "balanced_accuracy_mask_only": balanced_accuracy(y, torch.cat(p_shape)),
        "kept_foreground_share": float(torch.cat(fg_share).mean()),
        "kept_share": float(torch.cat(share).mean()),
        "lesion_pixels_shown": float(shown_all.mean()) if shown_all.numel() else math.nan,
        "n": int(y.numel()),
    }


def item_batches(dataset: Any, batch_size: int) -> Iterator[dict[str, Tensor]]:
    """Batches ``{"image", "label", "mask"}`` of a dataset of items (a ``FolderDataset``), in order."""
    n = len(dataset)
    for start in range(0, n, batch_size):
        items = [dataset[i] for i in range(start, min(n, start + batch_size))]
        yield {
            "image": torch.stack([torch.as_tensor(it["image"]) for it in items]),
            "label": torch.stack([torch.as_tensor(it["label"]).reshape(()) for it in items]).long(),
            **({"mask": torch.stack([torch.as_tensor(it["mask"]) for it in items])} if "mask" in items[0] else {}),
        }


def select_predict_summary(model: nn.Module, datasets: Mapping[str, Any], *, config: TrainConfig,
                           device: torch.device | str = "cpu") -> dict[str, Any]:
    """``summary.json``'s ``select_predict`` entry: the phases, and :func:`evalx_report` per split (splits without
    items are left out)."""
    opts = SelectPredictOptions.from_config(config)
    out: dict[str, Any] = {
        "predictor_epochs": opts.phase1_epochs,
        "selector_epochs": max(0, config.max_epochs - opts.phase1_epochs),
        "budget": float(getattr(model, "budget", math.nan)),
        "random_budgets": [opts.budget_low, opts.budget_high],
    }
    batch = config.eval_batch_size or 2 * config.batch_size
    for split, ds in datasets.items():
        if ds is None or len(ds) == 0:
            continue
        out[split] = evalx_report(model, item_batches(ds, batch), draws=opts.evalx_draws, sigma=opts.blob_sigma,
                                  seed=config.seed, device=device)
    return out
