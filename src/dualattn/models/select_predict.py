"""Select, then predict: a hard consistent mask chosen by a gated selector; a predictor that sees only it.

The design of issue 22 expected to make "the model cannot use what its map hides" true by construction.

* **Selector** -- today's pass 1 of a gated network: the backbone's stages up to the coarsest gated block, an
  :class:`~dualattn.attention.AttentionGate` on every gated block (``block3``, ``block4``; ``selector=
  "multilevel"`` adds ``block2``) and the exact consistency layer
  (:func:`dualattn.consistency.project_exact_log` / ``project_exact_chain_log``), so its maps ``mu`` agree
  across the scales exactly. It reads the whole image, z-scored per sample and channel (it may: what it reads
  can only move the mask). Its modules carry a gated classifier's names (``backbone.stages.blockK``,
  ``gates.blockK``), so a trained ``exact``, ``multilevel`` or ``dual`` run's weights load into it
  (:meth:`SelectPredictClassifier.load_backbone_state`).
* **Hard consistent mask** -- on the finest gated grid, the foreground cells (at least half their pixels above
  the image's 1st percentile by 5 % of its 1st-99th percentile range, the hiding test's rule) are the
  candidates; the top ``k = max(1, ceil(budget * candidates))`` of them by ``mu`` are visible (ties: the lower
  flat index first). A coarser cell is visible iff one of its fine cells is (a max-pool): the masks of all
  scales are consistent by construction.
* **Predictor** -- a separate network of the same backbone family (no module shared with the selector), run
  from its own stem on ``C + 1`` channels: the image's channels z-scored with the mean and standard deviation
  of the *visible* pixels only, every hidden pixel set to the constant ``hidden_value``, and the pixel mask
  itself (1 visible, 0 hidden). No pass-1 feature, skip connection or pooled head reaches it; the logits are
  the predictor's.

**The guarantee** (what is proven, ``tests/test_select_predict.py``): with the mask fixed, the logits are a
function of the visible pixels alone, bit for bit -- every hidden pixel enters the predictor through
``torch.where(visible, x, 0)`` before any arithmetic, so its value (even NaN or inf) never reaches a sum. With
the mask recomputed the same holds for any change of hidden pixels that leaves the selector's mask unchanged.
What is *not* proven, and is measured instead: the selector reads hidden pixels, so such a change may move the
mask (mask IoU before/after), and a mask's shape may itself encode the class (the EVAL-X gap,
:mod:`dualattn.train.select_predict`).

**Normalization.** No normalization in front of the model may read a hidden pixel, or the visible inputs
change with the hidden ones. The model therefore takes *raw* intensities (the data pipeline's
``normalize="none"``, which ``dualattn train`` sets for this variant) and normalizes inside: the selector per
image (it may read everything), the predictor on the visible pixels only. Both are invariant to a positive
per-channel affine map of the input, so an image z-scored per sample upstream gives the same outputs up to
float rounding -- but not bit for bit, which is why the deployed preprocessing is ``none``.

**The threshold form** (``selector="patch"``, ``selector_norm="dataset"``, ``mask_rule="threshold"``): the selector
is the U-Net encoder with no 3x3 convolution (:mod:`dualattn.models.local` with ``conv3_stages=0``: 1x1 convolutions
and 2x max-pools, or 2x2 strided convolutions with ``selector_downsample="conv"``), so a cell of every gated grid
reads exactly its own pixels; a finest cell is shown iff its own potential exceeds :attr:`threshold` (at most
``budget`` of all cells, the highest first); no cell shown calls ``empty_class``. Then the mask of an image whose
cells are each either image ``a``'s or image ``b``'s (the hiding test's composite) is ``M(a)`` on ``a``'s cells and
``M(b)`` on ``b``'s: if the kept cells hold ``M(a)`` and ``b`` shows no cell elsewhere, the prediction is ``a``'s bit
for bit -- proven, not sampled (``tests/test_select_predict_threshold.py``). Training calibrates the threshold so
that at most ``healthy_fpr`` of the healthy training images show a cell
(:meth:`SelectPredictClassifier.calibrate_threshold`), which bounds how often a healthy partner can change the
prediction. The price is context: a cell is judged on its 4 px alone.

**Training** (:mod:`dualattn.train.select_predict`: the predictor on random masks, then the selector against
it): in training mode :meth:`forward_with_attention` passes a straight-through relaxation of the top-k (the value
is the hard mask; the gradient flows through ``sigmoid((log mu - threshold) / (temperature * spread))``), so the
selector can learn against the predictor. In eval mode the mask is hard and has no gradient.
:meth:`SelectPredictClassifier.load_backbone_state` starts both parts from a trained run.

Example:
    >>> import torch
    >>> from dualattn.models import create_model
    >>> m = create_model("unet_encoder", variant="select_predict", features=4, budget=0.25).eval()
    >>> out = m.forward_with_attention(torch.randn(2, 1, 32, 32))
    >>> out.logits.shape, out.mask["block3"].shape, out.mu["block4"].shape
    (torch.Size([2, 2]), torch.Size([2, 8, 8]), torch.Size([2, 4, 4]))
    >>> int(out.mask["block3"][0].sum())  # 25 % of the 64 foreground cells
    16
"""

from __future__ import annotations

import copy
import logging
import math
from typing import Any, Iterable, Iterator, NamedTuple, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from dualattn._checks import check_choice, check_number
from dualattn.consistency import project_exact_chain_log, project_exact_log
from dualattn.grids import block_factors

from ._registry import get_entry, register_variant
from .base import normalized_entropy

logger = logging.getLogger(__name__)

__all__ = [
    "SELECTORS",
    "SelectPredictClassifier",
    "Selection",
    "SelectionOutput",
    "cell_fraction",
    "cells_to_pixels",
    "coarsen_mask",
    "foreground_cells",
    "foreground_pixels",
    "masked_zscore",
    "top_cells",
]

#: The variant name of this design (a variant of every CNN backbone).
VARIANT = "select_predict"
#: Selector designs: the gated variant whose pass 1 it is, and its gated blocks (finest first).
SELECTORS: dict[str, tuple[str, ...]] = {"exact": ("block3", "block4"), "multilevel": ("block2", "block3", "block4"),
                                          "local": ("block3", "block4"), "patch": ("block3", "block4")}
#: how the selector's input is normalized (:class:`SelectPredictClassifier`'s ``selector_norm``)
SELECTOR_NORMS = ("image", "dataset")
#: selectors whose stages are the bounded-receptive-field encoder of :mod:`dualattn.models.local` (U-Net encoder
#: only), and how many of its leading stages keep 3x3 convolutions: ``"patch"`` has none, so a cell of every gated
#: grid reads exactly its own pixels (1x1 convolutions and 2x max-pools: its receptive field is the cell)
LOCAL_SELECTORS: dict[str, int] = {"local": 2, "patch": 0}
#: how the predictor's image channels are normalized (:class:`SelectPredictClassifier`'s ``predictor_norm``)
PREDICTOR_NORMS = ("visible", "dataset")
#: how the hard mask is chosen (:class:`SelectPredictClassifier`'s ``mask_rule``)
MASK_RULES = ("budget", "threshold")
#: the probability of the empty-mask class when the threshold rule shows no cell (``mask_rule="threshold"``)
EMPTY_CONFIDENCE = 0.99
#: ``create_model`` options that configure only the selector (its gates, their sharpness term).
_SELECTOR_OPTIONS = (
    "gate_embed", "gate_scale", "gate_learn_scale", "gate_zero_init", "gate_form", "gate_bias", "entropy_weight",
    "attention_area",
)
#: options of the paper's variants that mean nothing here (accepted so a recipe's kwargs pass through)
_IGNORED_OPTIONS = ("alpha", "witness", "exact_mode", "exact_proposal")


class Selection(NamedTuple):
    """What :meth:`SelectPredictClassifier.select` returns.

    Attributes:
        tau: the selector's gate maps, block -> ``(B, *grid)``.
        mu: its exactly consistent maps, block -> ``(B, *grid)``.
        log_mu: ``log mu`` of every block.
        mask: the hard consistent mask, block -> ``(B, *grid)`` bool (a coarse cell visible iff one of its fine
            cells is).
        pixels: ``(B, 1, *S)`` bool, the finest mask on the input grid.
        kept: ``(B,)`` int64, the number of visible cells of the finest grid.
        candidates: ``(B, *grid)`` bool, the finest grid's foreground cells (the budget's denominator).
        soft: ``(B, 1, *S)`` the straight-through mask (value: ``pixels``; gradient: the relaxation), or None.
        penalty: scalar, ``entropy_weight`` x the selector's sharpness term (0 when off).
        features: the selector's feature maps of the gated blocks, block -> ``(B, C_b, *grid)`` (for a training
            loss of the selector's own; never an input of the predictor).
        potentials: the gates' unnormalized potentials ``phi`` (``tau = softmax(phi)``), block -> ``(B, *grid)``;
            the threshold rule shows the finest cells with ``phi > threshold``.
    """

    tau: dict[str, Tensor]
    mu: dict[str, Tensor]
    log_mu: dict[str, Tensor]
    mask: dict[str, Tensor]
    pixels: Tensor
    kept: Tensor
    candidates: Tensor
    soft: Tensor | None
    penalty: Tensor
    features: dict[str, Tensor]
    potentials: dict[str, Tensor]


class SelectionOutput(NamedTuple):
    """What :meth:`SelectPredictClassifier.forward_with_attention` returns: an ``AttentionOutput`` (the same
    first four fields) plus the hard mask.

    Attributes:
        logits: ``(B, num_classes)``, the predictor's on the masked input.
        tau: the selector's gate maps, block -> ``(B, *grid)``.
        mu: the selector's consistent maps, block -> ``(B, *grid)``.
        penalty: scalar: the selector's sharpness term (0 unless ``entropy_weight > 0``).
        mask: the hard consistent mask, block -> ``(B, *grid)`` bool.
    """

    logits: Tensor
    tau: dict[str, Tensor]
    mu: dict[str, Tensor]
    penalty: Tensor
    mask: dict[str, Tensor]


# ----------------------------------------------------------------------------------------- grid helpers
def _axis_index(size: int, cells: int, device: torch.device) -> Tensor:
    """Cell of every pixel along one axis: pixel ``i`` of ``size`` lies in cell ``floor(i * cells / size)``."""
    return torch.div(torch.arange(size, device=device) * cells, size, rounding_mode="floor")


def cells_to_pixels(cells: Tensor, size: Sequence[int]) -> Tensor:
    """``(B, *grid)`` -> ``(B, *size)``: every pixel takes its cell's value (nearest; exact blocks when the grid
    divides the size, the hiding test's :func:`~dualattn.evaluate.hiding.cell_index` rule otherwise)."""
    out = cells
    for axis, s in enumerate(size):
        out = out.index_select(axis + 1, _axis_index(int(s), cells.shape[axis + 1], cells.device))
    return out


def cell_fraction(pixels: Tensor, grid: Sequence[int]) -> Tensor:
    """``(B, *S)`` 0/1 -> ``(B, *grid)``: the share of every cell's pixels that are set (float64)."""
    out = pixels.double()
    count = torch.ones(pixels.shape[1:], dtype=torch.float64, device=pixels.device)[None]
    for axis, g in enumerate(grid):
        idx = _axis_index(pixels.shape[axis + 1], int(g), pixels.device)
        shape = list(out.shape)
        shape[axis + 1] = int(g)
        out = out.new_zeros(shape).index_add_(axis + 1, idx, out)
        cshape = list(count.shape)
        cshape[axis + 1] = int(g)
        count = count.new_zeros(cshape).index_add_(axis + 1, idx, count)
    return out / count.clamp_min(1.0)


def foreground_pixels(x: Tensor, *, rel_threshold: float = 0.05) -> Tensor:
    """``(B, C, *S)`` -> ``(B, *S)`` bool: where some channel exceeds its 1st percentile by ``rel_threshold`` of
    its 1st-99th percentile range (per image and channel; the hiding test's foreground)."""
    flat = x.detach().float().flatten(2)
    lo = torch.quantile(flat, 0.01, dim=2, keepdim=True)
    hi = torch.quantile(flat, 0.99, dim=2, keepdim=True)
    fg = (flat > lo + rel_threshold * (hi - lo)) & (hi > lo)
    return fg.any(dim=1).reshape(x.shape[0], *x.shape[2:])


def foreground_cells(x: Tensor, grid: Sequence[int], *, rel_threshold: float = 0.05) -> Tensor:
    """``(B, *grid)`` bool: cells at least half of whose pixels are foreground (:func:`foreground_pixels`); every
    cell of an image without any."""
    cand = cell_fraction(foreground_pixels(x, rel_threshold=rel_threshold), grid) >= 0.5
    none = ~cand.flatten(1).any(1)
    return cand | none.reshape(-1, *([1] * len(grid)))


def budget_count(candidates: Tensor, budget: float) -> Tensor:
    """``(B,)`` int64: ``max(1, ceil(budget * n))`` for ``n`` candidate cells per sample (a hair below the
    product, so ``0.2 * 50`` is 10, not 11 by rounding)."""
    n = candidates.flatten(1).sum(1).double()
    return torch.ceil(n * float(budget) - 1e-9).clamp_min(1).long()


def top_cells(scores: Tensor, candidates: Tensor, k: Tensor) -> Tensor:
    """``(B, *grid)`` bool: the ``k[b]`` candidate cells of highest score per sample (ties: lower flat index first).

    Args:
        scores: ``(B, *grid)`` finite scores.
        candidates: ``(B, *grid)`` bool; only these may be chosen.
        k: ``(B,)`` cells to keep (at most the number of candidates is kept).
    """
    b = scores.shape[0]
    flat = scores.detach().flatten(1).double()
    cand = candidates.flatten(1)
    flat = torch.where(cand, flat, torch.full_like(flat, -math.inf))
    order = torch.argsort(-flat, dim=1, stable=True)
    n = flat.shape[1]
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(n, device=order.device).expand(b, n).contiguous())
    return ((rank < k.to(rank.device)[:, None]) & cand).reshape(scores.shape)


def coarsen_mask(mask: Tensor, coarse: Sequence[int]) -> Tensor:
    """``(B, *fine)`` bool -> ``(B, *coarse)`` bool: a coarse cell is set iff one of its fine cells is."""
    factors = block_factors(tuple(mask.shape[1:]), tuple(coarse))
    pool = F.max_pool2d if mask.dim() == 3 else F.max_pool3d
    return pool(mask[:, None].float(), kernel_size=factors, stride=factors)[:, 0] > 0.5


def masked_zscore(x: Tensor, visible: Tensor | None = None, *, eps: float = 1e-6) -> Tensor:
    """Per-sample, per-channel z-score of ``(B, C, *S)`` over the ``visible`` pixels only (all when None).

    Hidden pixels are replaced by 0 with ``torch.where`` before any arithmetic and are 0 in the output: their
    values (NaN and inf included) cannot change a visible output bit. Channels are divided by a power of two
    first (exact) so that values near the dtype's maximum do not overflow; a constant channel gives zeros.

    Args:
        x: ``(B, C, *S)``.
        visible: ``(B, 1, *S)`` or ``(B, *S)`` bool, or None (every pixel).
        eps: standard deviations below it count as zero.

    Returns:
        ``(B, C, *S)``, the input's dtype.
    """
    b, c = x.shape[:2]
    flat = x.reshape(b, c, -1)
    if visible is None:
        vis = None
        xv = flat
        n = flat.new_tensor(float(flat.shape[-1]))
    else:
        vis = visible.reshape(b, 1, -1).expand(b, c, -1)
        xv = torch.where(vis, flat, torch.zeros((), dtype=flat.dtype, device=flat.device))
        n = vis.sum(-1, keepdim=True).clamp_min(1).to(flat.dtype)
    amax = xv.detach().abs().amax(-1, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)
    scale = torch.exp2(torch.floor(torch.log2(amax)))
    xs = xv / scale
    mean = xs.sum(-1, keepdim=True) / n
    dev = xs - mean
    if vis is not None:
        dev = torch.where(vis, dev, torch.zeros((), dtype=dev.dtype, device=dev.device))
    std = ((dev * dev).sum(-1, keepdim=True) / n).sqrt()
    out = dev / std.clamp_min(eps / scale) * (std > eps / scale)
    return out.reshape(x.shape)


def _first_conv(module: nn.Module) -> nn.Module:
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv3d)):
            return m
    raise ValueError(f"{type(module).__name__} has no convolution")


def _channels_last(x: Tensor) -> Tensor:
    """Channels-last for float32 CPU inputs (the layout the gated classifiers use: faster oneDNN convolutions)."""
    if x.device.type == "cpu" and x.dtype == torch.float32 and x.dim() in (4, 5):
        return x.contiguous(memory_format=torch.channels_last if x.dim() == 4 else torch.channels_last_3d)
    return x


# ----------------------------------------------------------------------------------------------- the model
class SelectPredictClassifier(nn.Module):
    """A gated selector's hard consistent mask, and a predictor that sees only the masked input.

    Build it with ``create_model(backbone, variant="select_predict", ...)`` (module docstring). The selector's
    modules are ``backbone`` (the stages up to the coarsest gated block) and ``gates``; the predictor is the
    module ``predictor`` (a baseline classifier of the same family on ``in_channels + 1`` channels).

    Args:
        backbone: the selector's :class:`~dualattn.models.base.CNNBackbone` (stages after the coarsest gate
            removed).
        gates: ``nn.ModuleDict`` block -> :class:`~dualattn.attention.AttentionGate`.
        predictor: the predictor (``forward(x) -> logits`` on ``in_channels + 1`` channels).
        num_classes: number of logits.
        budget: the share of the finest grid's foreground cells kept visible, in (0, 1].
        hidden_value: the constant every hidden pixel takes in the predictor's normalized space.
        foreground_threshold: the foreground rule's relative threshold (:func:`foreground_pixels`).
        entropy_weight, attention_area: the selector's sharpness term (``normalized_entropy`` of its ``mu`` maps;
            in the training objective only).
        img_size: the input size (recorded; the evaluation fits images to it).
        selector_norm: how the selector's input is normalized: ``"image"`` (z-scored per image and channel: every
            pixel moves every cell's potential a little) or ``"dataset"`` (one per-channel shift and scale for all
            images, the training split's mean and standard deviation, set once by training:
            :meth:`set_input_statistics`): with a bounded-receptive-field selector (``selector="local"``) a
            cell's potential then reads its window of the input and nothing else.
        mask_rule: ``"budget"`` (the top ``budget`` share of the foreground cells by ``mu``) or ``"threshold"``
            (every finest cell whose own potential exceeds :attr:`threshold`, at most ``budget`` of all cells, the
            highest first; needs ``selector_norm="dataset"``; module docstring, "The threshold form").
        empty_class: with ``mask_rule="threshold"``, the class called when no cell is shown (logits
            :meth:`empty_logits`).
        predictor_norm: ``"visible"`` (the visible pixels z-scored on themselves) or ``"dataset"`` (the training
            split's per-channel statistics: a lesion shown alone keeps its brightness).
        config: the ``create_model`` arguments (``model.config``).
    """

    variant = VARIANT
    #: the selector design (:data:`SELECTORS`), set by the factory
    selector_kind = "exact"
    #: the preprocessing this model takes (``dualattn.runs.RunDir.input_normalization``): raw intensities
    input_normalization = "none"

    def __init__(
        self,
        *,
        backbone: nn.Module,
        gates: nn.ModuleDict,
        predictor: nn.Module,
        num_classes: int,
        budget: float = 0.2,
        hidden_value: float = 0.0,
        foreground_threshold: float = 0.05,
        entropy_weight: float = 0.0,
        attention_area: float | None = None,
        img_size: Sequence[int] | None = None,
        selector_norm: str = "image",
        mask_rule: str = "budget",
        empty_class: int = 0,
        predictor_norm: str = "visible",
        config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        check_number("budget", budget, low=0.0, high=1.0, low_inclusive=False)
        check_choice("selector_norm", selector_norm, SELECTOR_NORMS)
        check_choice("predictor_norm", predictor_norm, PREDICTOR_NORMS)
        check_choice("mask_rule", mask_rule, MASK_RULES)
        if mask_rule == "threshold" and selector_norm != "dataset":
            raise ValueError("mask_rule='threshold' needs selector_norm='dataset': a per-image z-score lets every "
                             "pixel move every cell's potential, so a hidden pixel could move a visible cell")
        if isinstance(empty_class, bool) or not isinstance(empty_class, int) or not 0 <= empty_class < num_classes:
            raise ValueError(f"empty_class must be a class index in [0, {num_classes}), got {empty_class!r}")
        check_number("hidden_value", hidden_value, low=-math.inf)
        check_number("foreground_threshold", foreground_threshold, low=0.0, high=1.0)
        self.backbone = backbone
        self.gates = gates
        self.predictor = predictor
        self.num_classes = int(num_classes)
        self.spatial_dims = int(backbone.spatial_dims)
        self.budget = float(budget)
        self.hidden_value = float(hidden_value)
        self.foreground_threshold = float(foreground_threshold)
        self.entropy_weight = float(entropy_weight)
        self.attention_area = None if attention_area is None else float(attention_area)
        self.img_size = None if img_size is None else tuple(int(s) for s in img_size)
        self.attention_blocks: tuple[str, ...] = tuple(gates)
        self.map_blocks: tuple[str, ...] = self.attention_blocks
        #: temperature of the straight-through relaxation used in training mode (set by the training loop)
        self.relax_temperature = 1.0
        self._config = copy.deepcopy(config or {})
        self.selector_norm = selector_norm
        self.mask_rule = mask_rule
        self.empty_class = int(empty_class)
        self.predictor_norm = predictor_norm
        if mask_rule == "threshold":  # the potential a cell must exceed to be shown (calibrate_threshold sets it)
            self.register_buffer("threshold", torch.zeros(()))
        if "dataset" in (selector_norm, predictor_norm):  # the statistics: identity until set, saved with the weights
            channels = int(_first_conv(backbone).in_channels)
            self.register_buffer("input_shift", torch.zeros(channels))
            self.register_buffer("input_scale", torch.ones(channels))
            self.register_buffer("input_stats_set", torch.zeros((), dtype=torch.bool))

    # ------------------------------------------------------------------ public API
    @property
    def config(self) -> dict[str, Any]:
        """JSON-serializable ``create_model`` arguments rebuilding this architecture."""
        return copy.deepcopy(self._config)

    @property
    def finest_block(self) -> str:
        """The gated block whose grid the mask is chosen on."""
        return self.attention_blocks[0]

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, num_classes)`` of the predictor on the input masked by the selector's mask."""
        return self.forward_with_attention(x).logits

    def forward_with_attention(self, x: Tensor) -> SelectionOutput:
        """Logits, the selector's maps and the hard consistent mask.

        In training mode the predictor's input carries the straight-through relaxation (:meth:`select` with
        ``relaxed=True``; the same values), so a loss on the logits reaches the selector.
        """
        sel = self.select(x, relaxed=self.training and torch.is_grad_enabled())
        logits = self._predict(x, sel.pixels, sel.soft)
        return SelectionOutput(logits, sel.tau, sel.mu, sel.penalty, sel.mask)

    def selector_input(self, x: Tensor) -> Tensor:
        """What the selector reads: ``x`` normalized as :attr:`selector_norm` says (class docstring)."""
        if self.selector_norm == "image":
            return masked_zscore(x)
        return self._dataset_normalized(x)

    @property
    def uses_input_statistics(self) -> bool:
        """Whether a part of the model reads the training split's per-channel statistics
        (:meth:`set_input_statistics`)."""
        return "dataset" in (self.selector_norm, self.predictor_norm)

    def _dataset_normalized(self, x: Tensor) -> Tensor:
        shape = (1, -1) + (1,) * self.spatial_dims
        return (x - self.input_shift.to(x.dtype).view(shape)) / self.input_scale.to(x.dtype).view(shape)

    @torch.no_grad()
    def set_input_statistics(self, batches: Iterable[Tensor]) -> None:
        """Set the selector's per-channel shift and scale (``selector_norm="dataset"``) to the mean and standard
        deviation of every pixel of ``batches`` (raw training images ``(B, C, *S)``), accumulated in float64.

        Raises:
            ValueError: ``selector_norm`` is not ``"dataset"``; no pixel, a channel count other than the model's, or
                a non-finite or zero deviation.
        """
        if not self.uses_input_statistics:
            raise ValueError("set_input_statistics is for selector_norm='dataset' or predictor_norm='dataset' "
                             f"(this model's: {self.selector_norm!r}, {self.predictor_norm!r})")
        total = None
        n = 0
        for x in batches:
            x = x.detach().to(torch.float64)
            if x.dim() != self.spatial_dims + 2 or x.shape[1] != self.input_shift.numel():
                raise ValueError(f"expected images (B, {self.input_shift.numel()}, *S), got {tuple(x.shape)}")
            flat = x.transpose(0, 1).reshape(x.shape[1], -1)
            part = torch.stack([flat.sum(1), (flat * flat).sum(1)])
            total = part if total is None else total + part
            n += flat.shape[1]
        if total is None or n < 2:
            raise ValueError("set_input_statistics needs at least two pixels")
        mean = total[0] / n
        std = (total[1] / n - mean * mean).clamp_min(0.0).sqrt()
        if not bool(torch.isfinite(std).all()) or bool((std <= 0).any()):
            raise ValueError(f"the training images have a constant or non-finite channel (std {std.tolist()})")
        self.input_shift.copy_(mean.to(self.input_shift.dtype))
        self.input_scale.copy_(std.to(self.input_scale.dtype))
        self.input_stats_set.fill_(True)

    @torch.no_grad()
    def calibrate_threshold(self, batches: Iterable[tuple[Tensor, Tensor]], *, false_positive_rate: float) -> float:
        """Set :attr:`threshold` (``mask_rule="threshold"``) so that at most ``false_positive_rate`` of the
        ``empty_class`` images of ``batches`` show any cell: the ``1 - false_positive_rate`` quantile (the next
        value up) of their largest finest-grid potential, the selector in eval mode.

        A composite of the hiding test (an image's visible cells kept, every other cell another image's) shows
        the union of the two images' own visible cells (cell-local potentials), so a healthy partner that shows
        no cell outside the kept ones cannot change the prediction: the calibrated rate bounds how often a
        healthy partner can.

        Args:
            batches: ``(images, labels)`` pairs, raw intensities as the model takes them.
            false_positive_rate: in [0, 1).

        Returns:
            the new threshold.

        Raises:
            ValueError: not the threshold rule, a rate outside [0, 1), or no ``empty_class`` image.
        """
        if self.mask_rule != "threshold":
            raise ValueError(f"calibrate_threshold is for mask_rule='threshold' (this model's: {self.mask_rule!r})")
        if check_number("false_positive_rate", false_positive_rate, low=0.0, high=1.0) >= 1.0:
            raise ValueError(f"false_positive_rate must be below 1, got {false_positive_rate!r}")
        modes = [m.training for m in self.selector_modules()]
        tops = []
        try:
            for m in self.selector_modules():
                m.eval()
            for x, y in batches:
                x = x.to(self.threshold.device)
                keep = y.reshape(-1).to(x.device) == self.empty_class
                if bool(keep.any()):
                    _, phis = self._pass_one(self.selector_input(x[keep]))
                    tops.append(phis[self.finest_block].flatten(1).amax(1).double())
        finally:
            for m, mode in zip(self.selector_modules(), modes):
                m.train(mode)
        if not tops:
            raise ValueError(f"calibrate_threshold needs images of class {self.empty_class} (the empty-mask class)")
        top = torch.cat(tops)
        value = torch.quantile(top, 1.0 - float(false_positive_rate), interpolation="higher")
        self.threshold.fill_(float(value))
        return float(value)

    def mask(self, x: Tensor) -> dict[str, Tensor]:
        """The hard consistent mask, block -> ``(B, *grid)`` bool."""
        return self.select(x).mask

    def select(self, x: Tensor, *, relaxed: bool = False, temperature: float | None = None) -> Selection:
        """Run the selector: maps, the hard consistent mask, and (``relaxed``) the straight-through mask.

        Args:
            x: ``(B, C, *S)`` raw intensities (module docstring, "Normalization").
            relaxed: also return ``soft``: value the hard pixel mask, gradient that of
                ``sigmoid((log mu - t) / (temperature * spread))`` with ``t`` midway between the last kept and the
                first dropped candidate's ``log mu`` and ``spread`` the candidates' standard deviation of it.
            temperature: of the relaxation (default :attr:`relax_temperature`).
        """
        self._check_input(x)
        size = tuple(x.shape[2:])
        feats, phis = self._pass_one(self.selector_input(x))
        log_taus = {b: torch.log_softmax(phi.flatten(1), dim=1).reshape(phi.shape).to(feats[b].dtype)
                    for b, phi in phis.items()}
        blocks = self.attention_blocks
        for fine, coarse in zip(blocks[:-1], blocks[1:]):
            block_factors(tuple(log_taus[fine].shape[1:]), tuple(log_taus[coarse].shape[1:]))
        if len(blocks) == 2:
            log_mu_list = list(project_exact_log(log_taus[blocks[0]], log_taus[blocks[1]]))
        else:
            log_mu_list = list(project_exact_chain_log([log_taus[b] for b in blocks]))
        log_mu = dict(zip(blocks, log_mu_list))
        fine = log_mu[blocks[0]]
        grid = tuple(fine.shape[1:])
        if self.mask_rule == "threshold":
            # each cell by its own potential (no per-image foreground rule: it reads every pixel); at most the
            # budget's share of all cells, the highest potentials first
            phi = phis[blocks[0]]
            cand = torch.ones(phi.shape, dtype=torch.bool, device=phi.device)
            cells = top_cells(phi, phi.detach() > self.threshold, budget_count(cand, self.budget))
            kept = cells.flatten(1).sum(1)
        else:
            cand = foreground_cells(x, grid, rel_threshold=self.foreground_threshold)
            kept = budget_count(cand, self.budget)
            cells = top_cells(fine, cand, kept)
        mask = {blocks[0]: cells}
        for b in blocks[1:]:
            mask[b] = coarsen_mask(cells, tuple(log_mu[b].shape[1:]))
        pixels = cells_to_pixels(cells, size)[:, None]
        soft = None
        if relaxed and self.mask_rule == "threshold":
            soft = self._relaxed_threshold(phis[blocks[0]], size, pixels, temperature)
        elif relaxed:
            soft = self._relaxed(fine, cand, kept, size, pixels, temperature)
        penalty = x.new_zeros(())
        if self.entropy_weight > 0:
            penalty = self.entropy_weight * normalized_entropy(log_mu_list, self.attention_area)
        return Selection(
            tau={b: t.exp() for b, t in log_taus.items()},
            mu={b: m.exp() for b, m in log_mu.items()},
            log_mu=log_mu,
            mask=mask,
            pixels=pixels,
            kept=kept,
            candidates=cand,
            soft=soft,
            penalty=penalty,
            features=feats,
            potentials=phis,
        )

    def predict_masked(self, x: Tensor, mask: Tensor) -> Tensor:
        """The predictor's logits on ``x`` under a GIVEN mask (the hiding test "with the mask held fixed").

        Args:
            x: ``(B, C, *S)`` raw intensities.
            mask: the finest gated grid's cells ``(B, *grid)`` or a pixel mask ``(B, 1, *S)`` / ``(B, *S)``;
                bool or 0/1.

        Returns:
            ``(B, num_classes)``.
        """
        self._check_input(x)
        size = tuple(x.shape[2:])
        m = mask.bool() if mask.dtype != torch.bool else mask
        if m.dim() == x.dim() and m.shape[1] == 1 and tuple(m.shape[2:]) == size:
            pixels = m
        elif tuple(m.shape[1:]) == size:
            pixels = m[:, None]
        elif m.dim() == x.dim() - 1:
            pixels = cells_to_pixels(m, size)[:, None]
        else:
            raise ValueError(
                f"mask must be (B, *grid) cells or a (B, 1, *S) pixel mask for input {tuple(x.shape)}, got "
                f"{tuple(mask.shape)}"
            )
        if pixels.shape[0] != x.shape[0]:
            raise ValueError(f"mask has {pixels.shape[0]} samples for {x.shape[0]} images")
        return self._predict(x, pixels, None)

    def predictor_input(self, x: Tensor, pixels: Tensor, soft: Tensor | None = None) -> Tensor:
        """The predictor's ``(B, C + 1, *S)`` input: the visible pixels z-scored on themselves
        (``predictor_norm="visible"``) or with the training split's statistics (``"dataset"``), hidden pixels
        ``hidden_value``, and the mask channel. With ``soft`` (straight-through, value equal to ``pixels``) the
        image channels are ``xn * soft + hidden_value * (1 - soft)`` and the mask channel is ``soft``."""
        if self.predictor_norm == "dataset":
            # hidden pixels become 0 before any arithmetic (their values, NaN included, reach no sum), and 0 after
            zero = torch.zeros((), dtype=x.dtype, device=x.device)
            xn = torch.where(pixels, self._dataset_normalized(torch.where(pixels, x, zero)), zero)
        else:
            xn = masked_zscore(x, pixels)
        if soft is None:
            hidden = torch.full((), self.hidden_value, dtype=xn.dtype, device=xn.device)
            return torch.cat([torch.where(pixels, xn, hidden), pixels.to(xn.dtype)], dim=1)
        img = xn * soft if self.hidden_value == 0.0 else xn * soft + self.hidden_value * (1 - soft)
        return torch.cat([img, soft.to(xn.dtype)], dim=1)

    def feature_layers(self) -> dict[str, nn.Module]:
        """Block name -> the predictor's stage (the decision path; GradCAM's target)."""
        layers = getattr(self.predictor, "feature_layers", None)
        return dict(layers()) if callable(layers) else {}

    def selector_parameters(self) -> Iterator[nn.Parameter]:
        """The selector's parameters (its stages and gates)."""
        for name, p in self.named_parameters():
            if not name.startswith("predictor."):
                yield p

    def predictor_parameters(self) -> Iterator[nn.Parameter]:
        """The predictor's parameters."""
        return self.predictor.parameters()

    def selector_modules(self) -> list[nn.Module]:
        """The selector's modules (``backbone``, ``gates``)."""
        return [self.backbone, self.gates]

    def load_backbone_state(self, state_dict: dict[str, Tensor], *, predictor: bool = True) -> None:
        """Start from a trained run: the selector from a gated run (``exact``, ``multilevel``, ``dual``; or a
        baseline's stages, the gates keeping their initialisation), the predictor from the same run's backbone.

        The selector's stages and gates have a gated classifier's names, so the run's ``backbone.stages.*`` and
        ``gates.*`` load as they are; its head, later stages and witness are not used. With ``predictor`` the
        predictor (same family and width) takes the run's stages and linear head, its first convolution the run's
        weights for the image channels and zeros for the mask channel: a classifier of whole images, which the
        training's phase 1 then fine-tunes on random masks only (it never learns on the selector's masks). Left
        as it is when the widths differ (``predictor_features``) or the run has no full backbone (a ``pool`` run).

        Raises:
            ValueError: a stage of the selector missing from the state dict, gates of another form or width
                (the message names the options to set), or a normalization mismatch.
        """
        sd = dict(state_dict)
        if sd and all(k.startswith("model.") for k in sd):
            sd = {k[len("model."):]: v for k, v in sd.items()}
        if LOCAL_SELECTORS.get(self.selector_kind, 1) == 0:
            # no 3x3 stage a plain run could give: the selector learns from its initialisation
            logger.info("%s selector: nothing of the run fits it; it starts at its initialisation", self.selector_kind)
            if predictor:
                self._load_predictor(sd)
            return
        own = {k: v for k, v in self.state_dict().items() if not k.startswith("predictor.")}
        stats = [any(k.startswith("backbone.") and k.endswith(".running_mean") for k in d) for d in (sd, own)]
        if stats[0] != stats[1]:
            raise ValueError(
                f"the state dict's backbone {'has' if stats[0] else 'has no'} BatchNorm statistics and this "
                f"selector's {'has' if stats[1] else 'has no'}: train the source run with the same norm "
                "(model_kwargs.norm)"
            )
        missing = [k for k in own if k.startswith("backbone.") and k not in sd]
        if missing:
            raise ValueError(
                f"the state dict lacks the selector's stages {missing[:6]}{'...' if len(missing) > 6 else ''}: "
                "start from a run of the same backbone and width (model_kwargs.features)"
            )
        has_gates = [k for k in sd if k.startswith("gates.") and k.split(".")[1] in self.gates]
        gate_keys = [k for k in own if k.startswith("gates.")]
        if has_gates:
            extra = sorted(set(has_gates) - set(gate_keys))
            lacking = sorted(k for k in gate_keys if k not in sd and not k.endswith("log_scale"))
            if extra or lacking:
                raise ValueError(
                    f"the run's gates differ from this selector's (unexpected {extra[:4]}, missing {lacking[:4]}): "
                    "set the selector's gate_form / gate_bias / gate_learn_scale to the run's "
                    "(--set model_kwargs.gate_form=... model_kwargs.gate_bias=...)"
                )
        loadable = {k: v for k, v in sd.items() if k in own}
        bad = [k for k, v in loadable.items() if tuple(v.shape) != tuple(own[k].shape)]
        if bad and self.selector_kind in LOCAL_SELECTORS:
            # a bounded-receptive-field selector from a plain run: the stages whose 3x3 convolutions it keeps load,
            # the 1x1 ones start at their initialisation (and learn by the selector's own objective)
            # (every tensor of such a stage: its BatchNorm belongs to the convolution that did not load)
            stages = {".".join(k.split(".")[:3]) + "." for k in bad}
            logger.info("%s selector: %d stages of the run do not fit (1x1 convolutions), left at initialisation",
                        self.selector_kind, len(stages))
            loadable = {k: v for k, v in loadable.items() if not any(k.startswith(p) for p in stages)}
            bad = []
        if bad:
            raise ValueError(
                "shape mismatch (set model_kwargs.features / gate_embed to the run's): "
                + ", ".join(f"{k}: {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in bad[:6])
            )
        self.load_state_dict(loadable, strict=False)
        logger.info("selector started from %d tensors (%s gates)", len(loadable), "with" if has_gates else "without")
        if predictor:
            self._load_predictor(sd)

    def _load_predictor(self, sd: dict[str, Tensor]) -> bool:
        """The predictor from a run's backbone and head (see :meth:`load_backbone_state`); False when they do not
        fit (nothing is loaded then)."""
        own = self.predictor.state_dict()
        take: dict[str, Tensor] = {}
        for key, value in own.items():
            src = sd.get(key)
            if src is None:
                break
            if tuple(src.shape) == tuple(value.shape):
                take[key] = src
            elif (src.dim() == value.dim() >= 3 and src.shape[0] == value.shape[0]
                  and src.shape[1] + 1 == value.shape[1] and src.shape[2:] == value.shape[2:]):
                first = torch.zeros_like(value)  # the first convolution: the mask channel starts at zero
                first[:, : src.shape[1]] = src
                take[key] = first
            else:
                break
        if len(take) != len(own):
            logger.info("predictor left at its initialisation: the run's backbone does not fit it")
            return False
        self.predictor.load_state_dict(take)
        logger.info("predictor started from the run's backbone and head (mask channel at zero)")
        return True

    # ------------------------------------------------------------------ internals
    def _check_input(self, x: Tensor) -> None:
        if not isinstance(x, Tensor) or x.dim() != self.spatial_dims + 2:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(
                f"expected input of shape (B, C, {'D, ' if self.spatial_dims == 3 else ''}H, W) for "
                f"spatial_dims={self.spatial_dims}, got {shape}"
            )

    def _pass_one(self, x: Tensor) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """The selector's stages to the coarsest gated block: (features, potentials ``phi``) of every gated block
        (``log tau`` is the log-softmax of ``phi`` over the grid)."""
        h = _channels_last(x)
        if getattr(self.backbone, "stem", None) is not None:
            h = self.backbone.stem(h)
        last = self.attention_blocks[-1]
        feats: dict[str, Tensor] = {}
        phis: dict[str, Tensor] = {}
        for name, stage in self.backbone.stages.items():
            h = stage(h)
            if name in self.gates:
                feats[name] = h
                phis[name] = self.gates[name].potentials(h)
            if name == last:
                break
        return feats, phis

    def _relaxed_threshold(self, phi: Tensor, size: tuple[int, ...], pixels: Tensor,
                           temperature: float | None) -> Tensor:
        """Straight-through threshold mask: value ``pixels``, gradient that of
        ``sigmoid((phi - threshold) / (t * spread))``
        (``spread``: the sample's standard deviation of ``phi``, detached)."""
        t = float(self.relax_temperature if temperature is None else temperature)
        if not t > 0:
            raise ValueError(f"temperature must be > 0, got {t!r}")
        with torch.no_grad():
            spread = phi.flatten(1).std(1).clamp_min(1e-6).reshape(-1, *([1] * (phi.dim() - 1)))
        relax = torch.sigmoid((phi - self.threshold) / (t * spread))
        relax_pix = cells_to_pixels(relax, size)[:, None]
        return pixels.to(relax_pix.dtype) + (relax_pix - relax_pix.detach())

    def _relaxed(self, fine: Tensor, cand: Tensor, kept: Tensor, size: tuple[int, ...], pixels: Tensor,
                 temperature: float | None) -> Tensor:
        t = float(self.relax_temperature if temperature is None else temperature)
        if not t > 0:
            raise ValueError(f"temperature must be > 0, got {t!r}")
        b = fine.shape[0]
        flat = fine.flatten(1)
        c = cand.flatten(1)
        with torch.no_grad():
            masked = torch.where(c, flat, torch.full_like(flat, -math.inf))
            ordered = masked.sort(dim=1, descending=True).values
            n_c = c.sum(1)
            i_last = (kept - 1).clamp_min(0).clamp_max(flat.shape[1] - 1)
            i_next = kept.clamp_max(flat.shape[1] - 1)
            last = ordered.gather(1, i_last[:, None])
            nxt = ordered.gather(1, i_next[:, None])
            nxt = torch.where((kept < n_c)[:, None], nxt, last - 1.0)
            thr = (last + nxt) / 2
            mean = (torch.where(c, flat, 0).sum(1, keepdim=True) / n_c.clamp_min(1)[:, None])
            var = torch.where(c, (flat - mean) ** 2, 0).sum(1, keepdim=True) / n_c.clamp_min(1)[:, None]
            spread = var.sqrt().clamp_min(1e-6)
        relax = torch.sigmoid((flat - thr) / (t * spread)) * c
        relax_pix = cells_to_pixels(relax.reshape(b, *fine.shape[1:]), size)[:, None]
        hard = pixels.to(relax_pix.dtype)
        return hard + (relax_pix - relax_pix.detach())

    def _predict(self, x: Tensor, pixels: Tensor, soft: Tensor | None) -> Tensor:
        logits = self.predictor(self.predictor_input(x, pixels, soft))
        if self.mask_rule == "threshold":
            # no cell shown: no finding -- the empty-mask class with probability EMPTY_CONFIDENCE, a constant
            empty = ~pixels.flatten(1).any(1)
            logits = torch.where(empty[:, None], self.empty_logits(logits.dtype, logits.device), logits)
        return logits

    def empty_logits(self, dtype: torch.dtype = torch.float32, device: Any = None) -> Tensor:
        """The logits of an image whose threshold mask is empty: ``empty_class`` at probability
        :data:`EMPTY_CONFIDENCE`, the other classes sharing the rest."""
        out = torch.zeros(self.num_classes, dtype=dtype, device=device)
        if self.num_classes > 1:
            out[self.empty_class] = math.log(EMPTY_CONFIDENCE * (self.num_classes - 1) / (1 - EMPTY_CONFIDENCE))
        return out


# ------------------------------------------------------------------------------------------ the factories
def _build(
    backbone_name: str,
    *,
    in_channels: int,
    num_classes: int,
    spatial_dims: int,
    config: dict[str, Any] | None,
    budget: float = 0.2,
    selector: str = "exact",
    predictor_features: int | None = None,
    hidden_value: float = 0.0,
    foreground_threshold: float = 0.05,
    img_size: int | Sequence[int] | None = None,
    selector_norm: str = "image",
    mask_rule: str = "budget",
    empty_class: int = 0,
    predictor_norm: str = "visible",
    selector_features: int | None = None,
    selector_downsample: str = "max",
    **kw: Any,
) -> SelectPredictClassifier:
    if selector not in SELECTORS:
        raise ValueError(f"unknown selector {selector!r}; valid: {', '.join(SELECTORS)}")
    if selector in LOCAL_SELECTORS and backbone_name != "unet_encoder":
        raise ValueError(f"selector {selector!r} is the U-Net encoder with a bounded receptive field "
                         f"(dualattn.models.local); backbone {backbone_name!r} has none: use selector='exact'")
    conv3_stages = kw.pop("conv3_stages", LOCAL_SELECTORS.get(selector, 2))
    if selector == "patch" and conv3_stages != 0:
        raise ValueError(f"selector 'patch' has no 3x3 stage (conv3_stages=0), got conv3_stages={conv3_stages!r}; "
                         "use selector='local' for 3x3 stages")
    for key, value in (("predictor_features", predictor_features), ("selector_features", selector_features)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{key} must be a positive int or None, got {value!r}")
    if selector_downsample != "max" and selector not in LOCAL_SELECTORS:
        raise ValueError(f"selector_downsample is an option of the bounded-receptive-field selectors "
                         f"({', '.join(LOCAL_SELECTORS)}), not of selector {selector!r}")
    if selector_features is not None and selector not in LOCAL_SELECTORS:
        raise ValueError(f"selector_features sets the width of a bounded-receptive-field selector "
                         f"({', '.join(LOCAL_SELECTORS)}); selector {selector!r} takes the run's width (features)")
    factory = get_entry(backbone_name).factory
    for key in _IGNORED_OPTIONS:
        kw.pop(key, None)
    gate_kw = {k: kw.pop(k) for k in _SELECTOR_OPTIONS if k in kw}
    if mask_rule == "threshold":
        # the threshold is the potential's zero: the gate's bias c moves it (softmax maps ignore c)
        if gate_kw.setdefault("gate_bias", True) is not True:
            raise ValueError("mask_rule='threshold' needs gate_bias=True (the bias places the threshold)")
    entropy_weight = float(gate_kw.pop("entropy_weight", 0.0))
    attention_area = gate_kw.pop("attention_area", None)
    if isinstance(img_size, int):
        img_size = (img_size,) * spatial_dims
    sized = {"img_size": list(img_size)} if img_size is not None else {}
    # the selector: a gated classifier's pass 1 (pool mode drops the stages after the coarsest gate); its head is
    # not kept
    if selector in LOCAL_SELECTORS:
        # the additive model's encoder and gates: each cell's potential reads a bounded window of the input
        from .local import additive_unet

        gated = additive_unet(
            in_channels=in_channels, num_classes=num_classes, spatial_dims=spatial_dims,
            features=selector_features or kw.get("features", 32), norm=kw.get("norm", "batch"),
            conv3_stages=conv3_stages, blocks=SELECTORS[selector], downsample=selector_downsample, **gate_kw,
            **sized,
        )
    else:
        gated = factory(
            variant=selector, in_channels=in_channels, num_classes=num_classes, spatial_dims=spatial_dims,
            exact_mode="pool", **gate_kw, **sized, **kw,
        )
    pred_kw = dict(kw)
    if predictor_features is not None:
        pred_kw["features"] = predictor_features
    predictor = factory(
        variant="baseline", in_channels=in_channels + 1, num_classes=num_classes, spatial_dims=spatial_dims,
        **sized, **pred_kw,
    )
    model = SelectPredictClassifier(
        backbone=gated.backbone, gates=gated.gates, predictor=predictor, num_classes=num_classes, budget=budget,
        hidden_value=hidden_value, foreground_threshold=foreground_threshold, entropy_weight=entropy_weight,
        attention_area=attention_area, img_size=img_size, selector_norm=selector_norm, mask_rule=mask_rule,
        empty_class=empty_class, predictor_norm=predictor_norm, config=config,
    )
    model.selector_kind = selector
    return model


def _factory_for(backbone_name: str):  # noqa: ANN202 - a registry factory
    def factory(
        *, variant: str = VARIANT, in_channels: int = 1, num_classes: int = 2, spatial_dims: int = 2,
        config: dict[str, Any] | None = None, **kw: Any,
    ) -> SelectPredictClassifier:
        """Select, then predict (:mod:`dualattn.models.select_predict`)."""
        return _build(backbone_name, in_channels=in_channels, num_classes=num_classes, spatial_dims=spatial_dims,
                      config=config, **kw)

    return factory


for _name in ("unet_encoder", "resnet18", "resnet50"):
    register_variant(_name, VARIANT)(_factory_for(_name))
del _name
