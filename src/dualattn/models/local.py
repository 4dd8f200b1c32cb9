r"""Local evidence with additive consistent pooling: the "what contributed" model (issue #22, design 2).

``create_model("unet_encoder", variant="additive")`` builds :class:`AdditiveEvidenceClassifier`: a U-Net
encoder whose receptive field is bounded, a class-evidence layer and an attention gate at each gated scale,
and a decision that is a sum over scales and cells (BagNet, Brendel & Bethge ICLR 2019; additive MIL,
Javed et al. NeurIPS 2022):

.. math::

    \mathrm{logit}[c] = \sum_{\text{scales } m} \sum_{p} \mu_m[p]\, s_m[p, c] + b[c]

* ``s_m[p, c]`` (``evidence``): a 1x1 convolution of the block's features at cell ``p``, one value per class;
* ``tau_m = softmax(phi_m)``: the block's attention gate (:class:`~dualattn.attention.AttentionGate`, every
  gate option of the other variants), its potential ``phi_m[p]`` a function of the features at ``p`` alone;
* ``mu_m``: the exact consistent maps of the ``tau_m`` (:func:`~dualattn.consistency.project_exact_log`, or the
  chain for three scales): each coarse cell's ``mu`` is the sum of its fine cells' ``mu``;
* ``b``: one bias per class.

Bounded receptive field. Stage ``k`` is the U-Net encoder's (a 2x max-pool before stages 2.., two
convolutions + BatchNorm + ReLU), with 3x3 convolutions in the first ``conv3_stages`` stages and 1x1
convolutions after them. :func:`receptive_field` computes what one cell of a block sees by walking the
network's layers (every kernel, stride, padding and dilation; :meth:`LocalUNetEncoder.receptive_fields`);
with the default ``conv3_stages=2`` a block3 cell sees a 16-pixel window (stride 4: its own 4x4 footprint and
6 pixels of margin on each side) and a block4 cell 20 pixels (stride 8), per axis, in 2-D and 3-D -- against 32
and 68 pixels for the plain U-Net encoder's block3 and block4. The tests check the bound against the
gradients of every cell with respect to the input in float64, and that changing one pixel changes ``s``
and the potentials ``phi`` only in the cells whose window covers it (the softmax then rescales every ``tau``
by one common factor).

What is guaranteed: the decomposition is exact. ``mu_m[p] * s_m[p, c]`` summed over cells and scales is the
logit minus the bias (float rounding only); :func:`contribution_map` puts every scale's terms on one grid
(a fine cell's share of a coarse cell's evidence is its share of the coarse cell's ``mu``, which the exact
consistency makes exact). What is not: the model can still use what its map hides -- ``mu`` is a softmax, so
every cell keeps a positive weight, and a change anywhere moves every ``mu`` through the normalizer; a hiding
test may flip. The map is the exact account of how the logit was formed, not a mask.

Normalization. Only ``norm="batch"``: in eval mode BatchNorm is a per-channel affine map, local like the
convolutions. GroupNorm and InstanceNorm normalize with statistics over every position of the image and
would make every cell depend on every pixel (``ValueError``). In training mode BatchNorm uses batch
statistics; the guarantees are about the trained model in eval mode.

Example:
    >>> import torch
    >>> from dualattn.models import create_model
    >>> model = create_model("unet_encoder", variant="additive", features=4).eval()
    >>> out = model.forward_with_evidence(torch.randn(2, 1, 32, 32))
    >>> out.mu["block3"].shape, out.evidence["block3"].shape
    (torch.Size([2, 8, 8]), torch.Size([2, 2, 8, 8]))
    >>> model.receptive_fields["block3"].size, model.receptive_fields["block4"].size
    (16, 20)
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from typing import Any, Iterable, Iterator, NamedTuple, Sequence

import torch
from torch import Tensor, nn

from dualattn._checks import check_choice, check_number, check_positive_int, check_spatial_dims
from dualattn.attention import GATE_FORMS, AttentionGate
from dualattn.consistency import project_exact_chain_log, project_exact_log
from dualattn.grids import block_factors, block_sum, upsample_blocks

from ._layers import batch_norm, init_weights, max_pool, relu
from ._registry import register_variant
from ._parts import BackboneSplit
from .base import AttentionOutput, CNNBackbone, FeatureWeighting, LogitSum, normalized_entropy

logger = logging.getLogger(__name__)

__all__ = [
    "ADDITIVE_VARIANT",
    "AdditiveEvidenceClassifier",
    "EvidenceOutput",
    "LocalUNetEncoder",
    "ReceptiveField",
    "class_weights",
    "contribution_map",
    "receptive_field",
    "scale_contributions",
]

#: The variant name: ``create_model("unet_encoder", variant=ADDITIVE_VARIANT)``.
ADDITIVE_VARIANT = "additive"
#: Gated blocks it accepts (finest first): two scales (the paper's pair) or three.
BLOCK_CHOICES: tuple[tuple[str, ...], ...] = (("block3", "block4"), ("block2", "block3", "block4"))
#: Normalizations that keep the receptive field bounded (module docstring).
LOCAL_NORMS: tuple[str, ...] = ("batch",)
_GATE_EMBED_CAP = 64


# ---------------------------------------------------------------------------- receptive field
@dataclasses.dataclass(frozen=True)
class ReceptiveField:
    """What one cell of a feature map sees of the input, per spatial axis (every layer is isotropic).

    Cell ``i`` of the map depends on input pixels ``i * stride + offset`` ... ``i * stride + offset + size - 1``
    (clipped to the image: pixels outside it are the convolutions' zero padding).

    Attributes:
        size: width of the window in input pixels.
        stride: distance in input pixels between the windows of neighbouring cells.
        offset: first pixel of cell 0's window (negative: it starts in the padding).

    Example:
        >>> rf = ReceptiveField(size=16, stride=4, offset=-6)
        >>> rf.window(2), list(rf.cells_covering(9, n_cells=8))
        ((2, 17), [0, 1, 2, 3])
    """

    size: int
    stride: int
    offset: int

    def window(self, cell: int) -> tuple[int, int]:
        """First and last input pixel (inclusive, before clipping) of cell ``cell``'s window."""
        lo = cell * self.stride + self.offset
        return lo, lo + self.size - 1

    def cells_covering(self, pixel: int, *, n_cells: int) -> range:
        """Indices of the cells (of ``n_cells`` along the axis) whose window contains input pixel ``pixel``."""
        first = -((self.offset + self.size - 1 - pixel) // self.stride)  # ceil((pixel - offset - size + 1) / stride)
        last = (pixel - self.offset) // self.stride
        return range(max(first, 0), min(last, n_cells - 1) + 1)

    def then(self, *, kernel: int, stride: int = 1, padding: int = 0, dilation: int = 1) -> "ReceptiveField":
        """The field after one more layer (output ``o`` reads inputs ``o * stride - padding + dilation * t``)."""
        return ReceptiveField(
            size=self.size + dilation * (kernel - 1) * self.stride,
            stride=self.stride * stride,
            offset=self.offset - padding * self.stride,
        )


#: Layers that keep every position's value a function of that position alone (in eval mode).
_POINTWISE = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.ReLU, nn.Identity)
_SPATIAL = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d,
            nn.AvgPool2d, nn.AvgPool3d)


def _one(value: Any, what: str, layer: nn.Module) -> int:
    values = tuple(value) if isinstance(value, (tuple, list)) else (value,)
    if len(set(values)) != 1 or not isinstance(values[0], int):
        raise ValueError(f"receptive_field: {type(layer).__name__} has an anisotropic {what} {value!r}")
    return int(values[0])


def receptive_field(layers: Iterable[nn.Module], start: ReceptiveField | None = None) -> ReceptiveField:
    """The receptive field after ``layers`` (leaf modules in the order the forward runs them).

    Convolutions and pooling layers grow it (kernel, stride, padding, dilation); BatchNorm, ReLU and
    identities leave it. Any other layer is refused, so the bound cannot silently miss one.

    Args:
        layers: leaf modules in forward order (e.g. the leaves of the stages up to a block).
        start: the field of the layers' input (default: the input itself, one pixel).

    Raises:
        ValueError: a layer that is neither (its type named), or an anisotropic kernel.

    Example:
        >>> layers = [nn.Conv2d(1, 1, 3, padding=1), nn.MaxPool2d(2, 2), nn.Conv2d(1, 1, 1)]
        >>> receptive_field(layers)
        ReceptiveField(size=4, stride=2, offset=-1)
    """
    rf = start or ReceptiveField(size=1, stride=1, offset=0)
    for layer in layers:
        if isinstance(layer, _POINTWISE):
            continue
        if not isinstance(layer, _SPATIAL):
            raise ValueError(f"receptive_field: no rule for a {type(layer).__name__} layer")
        kernel = _one(layer.kernel_size, "kernel", layer)
        stride = _one(layer.stride if layer.stride is not None else kernel, "stride", layer)
        padding = _one(layer.padding, "padding", layer)
        dilation = _one(getattr(layer, "dilation", 1), "dilation", layer)
        rf = rf.then(kernel=kernel, stride=stride, padding=padding, dilation=dilation)
    return rf


# ---------------------------------------------------------------------------- backbone
#: how a stage halves the grid: a 2x max-pool, or a 2x2 convolution of stride 2 (each coarse cell a learned linear
#: function of its four fine cells: what a patch embedding computes, where a max-pool keeps one of them)
DOWNSAMPLES: tuple[str, ...] = ("max", "conv")


def _stage(spatial_dims: int, cin: int, cout: int, *, pool: bool, kernel: int, downsample: str = "max"
           ) -> nn.Sequential:
    conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
    layers: list[nn.Module] = []
    if pool and downsample == "max":
        layers.append(max_pool(spatial_dims, 2, stride=2))
    elif pool:
        layers += [conv(cin, cin, 2, stride=2, bias=False), batch_norm(spatial_dims, cin), relu()]
    for a, b in ((cin, cout), (cout, cout)):
        layers += [conv(a, b, kernel, padding=kernel // 2, bias=False), batch_norm(spatial_dims, b), relu()]
    return nn.Sequential(*layers)


class LocalUNetEncoder(CNNBackbone):
    """The U-Net encoder with a bounded receptive field: 3x3 convolutions in the first ``conv3_stages`` stages,
    1x1 after them.

    Stages ``block1 .. block{depth}``, widths ``f, 2f, 4f, ...``, a 2x max-pool before every stage but the
    first, each stage two convolutions + BatchNorm + ReLU. Block ``k`` has a grid of ``floor(S / 2**(k-1))``.

    Args:
        in_channels: input channels.
        features: width ``f`` of block 1.
        spatial_dims: 2 or 3.
        conv3_stages: how many leading stages keep 3x3 convolutions (0 .. depth).
        depth: number of stages.
        downsample: ``"max"`` (a 2x max-pool before a stage) or ``"conv"`` (a 2x2 convolution of stride 2 with
            BatchNorm and ReLU): :data:`DOWNSAMPLES`. Either keeps a cell's window on its own pixels when
            ``conv3_stages`` is 0.
    """

    def __init__(self, *, in_channels: int, features: int = 32, spatial_dims: int = 2, conv3_stages: int = 2,
                 depth: int = 4, downsample: str = "max") -> None:
        super().__init__()
        check_positive_int("in_channels", in_channels)
        check_positive_int("features", features)
        check_positive_int("depth", depth)
        if isinstance(conv3_stages, bool) or not isinstance(conv3_stages, int) or not 0 <= conv3_stages <= depth:
            raise ValueError(f"conv3_stages must be an int in [0, {depth}], got {conv3_stages!r}")
        check_choice("downsample", downsample, DOWNSAMPLES)
        self.spatial_dims = check_spatial_dims(spatial_dims)
        self.downsample = downsample
        self.conv3_stages = conv3_stages
        self.stem = None
        widths = [features * 2**i for i in range(depth)]
        self.channels = {f"block{i + 1}": w for i, w in enumerate(widths)}
        cins = [in_channels, *widths[:-1]]
        self.stages = nn.ModuleDict({
            f"block{i + 1}": _stage(spatial_dims, cin, cout, pool=i > 0, kernel=3 if i < conv3_stages else 1,
                                    downsample=downsample)
            for i, (cin, cout) in enumerate(zip(cins, widths))
        })
        init_weights(self)

    def grid_shapes(self, spatial: Sequence[int]) -> dict[str, tuple[int, ...]]:
        """Grid of every block: ``floor(S / 2**(k-1))`` for block ``k``."""
        return {name: tuple(int(s) // 2**k for s in spatial) for k, name in enumerate(self.stages)}

    def receptive_fields(self) -> dict[str, ReceptiveField]:
        """The receptive field of one cell of every block, computed from the layers (:func:`receptive_field`)."""
        out: dict[str, ReceptiveField] = {}
        rf = None
        for name, stage in self.stages.items():
            rf = receptive_field(stage, rf)
            out[name] = rf
        return out


# ---------------------------------------------------------------------------- the classifier
class EvidenceOutput(NamedTuple):
    """What :meth:`AdditiveEvidenceClassifier.forward_with_evidence` returns.

    Attributes:
        logits: ``(B, K)``: ``sum over scales and cells of mu * evidence + bias``.
        tau: gate maps, block -> ``(B, *grid)``.
        mu: the exact consistent maps, block -> ``(B, *grid)`` (finest block first).
        penalty: the sharpness term (scalar; 0 without ``entropy_weight``).
        evidence: the class evidence ``s``, block -> ``(B, K, *grid)``.
        potentials: the gates' potentials ``phi`` (``tau = softmax(phi)``), block -> ``(B, *grid)``.
        bias: ``(K,)``.
    """

    logits: Tensor
    tau: dict[str, Tensor]
    mu: dict[str, Tensor]
    penalty: Tensor
    evidence: dict[str, Tensor]
    potentials: dict[str, Tensor]
    bias: Tensor

    @property
    def attention(self) -> AttentionOutput:
        """The :class:`~dualattn.models.AttentionOutput` part."""
        return AttentionOutput(self.logits, self.tau, self.mu, self.penalty)


class AdditiveEvidenceClassifier(BackboneSplit, nn.Module):
    """Per-cell class evidence pooled by exact consistent attention maps (module docstring).

    Args:
        backbone: a :class:`LocalUNetEncoder`.
        num_classes: number of logits ``K``.
        blocks: the gated scales, finest first: ``("block3", "block4")`` or ``("block2", "block3", "block4")``.
        gate_embed, gate_scale, gate_learn_scale, gate_zero_init, gate_form, gate_bias: the gates' options, as
            for :class:`~dualattn.models.GatedClassifier`.
        entropy_weight, attention_area: the sharpness hinge on the ``mu`` maps (:func:`normalized_entropy`),
            as for :class:`~dualattn.models.GatedClassifier`.
        img_size: the training images' size (recorded only; any size whose grids nest works).
        config: the ``create_model`` arguments (``model.config``).
    """

    #: the stages, the evidence layers and the bias make the evidence (what freezing keeps fixed)
    BACKBONE_PREFIXES = ("backbone.", "evidence.", "bias")

    variant = ADDITIVE_VARIANT

    def __init__(
        self,
        *,
        backbone: LocalUNetEncoder,
        num_classes: int,
        blocks: Sequence[str] = BLOCK_CHOICES[0],
        gate_embed: int | None = None,
        gate_scale: float = 1.0,
        gate_learn_scale: bool = False,
        gate_zero_init: bool = False,
        gate_form: str = "single",
        gate_bias: bool = False,
        entropy_weight: float = 0.0,
        attention_area: float | None = None,
        img_size: int | Sequence[int] | None = None,
        config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        check_positive_int("num_classes", num_classes)
        blocks = tuple(blocks) if isinstance(blocks, (list, tuple)) else blocks
        if blocks not in BLOCK_CHOICES:
            raise ValueError(f"blocks must be one of {[list(b) for b in BLOCK_CHOICES]}, got {blocks!r}")
        missing = [b for b in blocks if b not in backbone.stages]
        if missing:
            raise ValueError(f"blocks {missing} are not stages of the backbone ({list(backbone.stages)})")
        check_number("entropy_weight", entropy_weight, low=0.0)
        if attention_area is not None:
            check_number("attention_area", attention_area, low=0.0, high=1.0, low_inclusive=False)
        if gate_embed is not None and (isinstance(gate_embed, bool) or not isinstance(gate_embed, int) or gate_embed < 1):
            raise ValueError(f"gate_embed must be a positive int or None, got {gate_embed!r}")
        if gate_form not in GATE_FORMS:
            raise ValueError(f"unknown gate_form {gate_form!r}; valid: {', '.join(GATE_FORMS)}")
        if not isinstance(gate_bias, bool):
            raise ValueError(f"gate_bias must be a bool (true or false), got {gate_bias!r}")
        self.num_classes = num_classes
        self.spatial_dims = backbone.spatial_dims
        self.entropy_weight = float(entropy_weight)
        self.attention_area = None if attention_area is None else float(attention_area)
        self.img_size = _size_tuple(img_size, backbone.spatial_dims)
        self._config = copy.deepcopy(config or {})
        self._backbone_frozen = False
        self.attention_blocks: tuple[str, ...] = blocks
        self.map_blocks: tuple[str, ...] = blocks
        self.backbone = backbone
        conv = nn.Conv2d if self.spatial_dims == 2 else nn.Conv3d
        self.gates = nn.ModuleDict({
            b: AttentionGate(
                backbone.channels[b], gate_embed or min(backbone.channels[b], _GATE_EMBED_CAP),
                spatial_dims=self.spatial_dims, scale=gate_scale, learn_scale=gate_learn_scale,
                zero_init=gate_zero_init, form=gate_form, bias=gate_bias,
            )
            for b in blocks
        })
        #: the class evidence ``s``: a 1x1 convolution per scale (no bias: with ``mu`` a distribution a per-scale
        #: bias would be one more global bias)
        self.evidence = nn.ModuleDict({b: conv(backbone.channels[b], num_classes, 1, bias=False) for b in blocks})
        #: ``sum_p mu[p] s[p, :]`` per scale, as modules (LRP holds the map constant: the signal-take-all rule)
        self.attn_pool = nn.ModuleDict({b: FeatureWeighting(pool=True) for b in blocks})
        #: the sum over scales, as modules (LRP splits it in proportion to the terms)
        self.scale_sum = nn.ModuleList([LogitSum() for _ in blocks[1:]])
        self.bias = nn.Parameter(torch.zeros(num_classes))
        # the stages after the coarsest gated block are never used
        names = list(backbone.stages)
        for name in names[names.index(blocks[-1]) + 1 :]:
            del backbone.stages[name]

    # ------------------------------------------------------------------ public API
    @property
    def config(self) -> dict[str, Any]:
        """JSON-serializable ``create_model`` arguments rebuilding this architecture."""
        return copy.deepcopy(self._config)

    @property
    def receptive_fields(self) -> dict[str, ReceptiveField]:
        """Block -> what one of its cells sees of the input (:meth:`LocalUNetEncoder.receptive_fields`)."""
        return self.backbone.receptive_fields()

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, K)`` for input ``(B, C, *spatial)``."""
        return self.forward_with_evidence(x).logits

    def forward_with_attention(self, x: Tensor) -> AttentionOutput:
        """Logits, ``tau`` and ``mu`` of every gated block, and the penalty (:class:`AttentionOutput`)."""
        return self.forward_with_evidence(x).attention

    def forward_with_evidence(self, x: Tensor) -> EvidenceOutput:
        """Everything the decision is made of (:class:`EvidenceOutput`).

        Args:
            x: ``(B, C, *spatial)`` with ``len(spatial) == spatial_dims``; the gated grids must nest (an
                input size divisible by ``2 ** (depth - 1)``).
        """
        if x.dim() != self.spatial_dims + 2:
            raise ValueError(
                f"expected input of shape (B, C, {'D, ' if self.spatial_dims == 3 else ''}H, W) for "
                f"spatial_dims={self.spatial_dims}, got {tuple(x.shape)}"
            )
        feats: dict[str, Tensor] = {}
        h = _layout(x)
        for name, stage in self.backbone.stages.items():
            h = stage(h)
            if name in self.gates:
                feats[name] = h
        blocks = self.attention_blocks
        phis = {b: self.gates[b].potentials(feats[b]) for b in blocks}
        log_taus = [phis[b].flatten(1).log_softmax(dim=1).view_as(phis[b]).to(feats[b].dtype) for b in blocks]
        for fine, coarse in zip(log_taus[:-1], log_taus[1:]):
            try:
                block_factors(fine.shape[1:], coarse.shape[1:])
            except ValueError as exc:
                raise ValueError(f"the attention grids do not nest: {exc}; choose an input size divisible by "
                                 f"{2 ** (len(self.backbone.stages) - 1)}") from exc
        if len(blocks) == 2:
            log_mus = list(project_exact_log(log_taus[0], log_taus[1]))
        else:
            log_mus = project_exact_chain_log(log_taus)
        evidence = {b: self.evidence[b](feats[b]) for b in blocks}
        pooled = [self.attn_pool[b](evidence[b], log_mu) for b, log_mu in zip(blocks, log_mus)]
        total = pooled[0]
        for add, term in zip(self.scale_sum, pooled[1:]):
            total = add(total, term)
        logits = total + self.bias
        penalty = logits.new_zeros(())
        if self.entropy_weight > 0:
            penalty = self.entropy_weight * normalized_entropy(log_mus, self.attention_area)
        return EvidenceOutput(
            logits=logits,
            tau={b: lt.exp() for b, lt in zip(blocks, log_taus)},
            mu={b: lm.exp() for b, lm in zip(blocks, log_mus)},
            penalty=penalty,
            evidence=evidence,
            potentials=phis,
            bias=self.bias,
        )

    def feature_layers(self) -> dict[str, nn.Module]:
        """Block name -> module whose output is that stage's feature map (GradCAM target)."""
        return dict(self.backbone.stages.items())

    def load_backbone_state(self, state_dict: dict[str, Tensor]) -> None:
        """Load the stages, evidence layers and bias of another ``additive`` model of the same architecture.

        A ``"model."`` prefix on every key is stripped; the gates keep their initialisation.

        Raises:
            ValueError: keys missing or unknown, or shapes that differ (a plain U-Net encoder's block3 and
                block4 convolutions are 3x3 where this backbone's are 1x1).
        """
        sd = dict(state_dict)
        if sd and all(k.startswith("model.") for k in sd):
            sd = {k[len("model.") :]: v for k, v in sd.items()}
        own = {k: v for k, v in self.state_dict().items() if k.startswith(self.BACKBONE_PREFIXES)}
        theirs = {k: v for k, v in sd.items() if k.startswith(self.BACKBONE_PREFIXES)}
        missing = sorted(set(own) - set(theirs))
        unexpected = sorted(set(theirs) - set(own))
        bad = [k for k in set(own) & set(theirs) if tuple(own[k].shape) != tuple(theirs[k].shape)]
        if missing or unexpected or bad:
            raise ValueError(
                "state dict does not match this additive model's backbone (train it from scratch, or load an "
                f"additive model of the same width and conv3_stages): missing {missing[:6]}, unexpected "
                f"{unexpected[:6]}, shape mismatch {sorted(bad)[:6]}"
            )
        self.load_state_dict(theirs, strict=False)


# ---------------------------------------------------------------------------- contributions
def class_weights(num_classes: int, target: Tensor, *, contrast: bool = True) -> Tensor:
    """Per-sample weights ``w (B, K)`` of the classes whose logit combination is explained.

    ``contrast=True``: ``w[t] = 1`` and ``-1 / (K - 1)`` for every other class, i.e. the target's logit minus the
    mean of the others' -- for two classes the logit difference (the log-odds), which a softmax classifier's
    decision depends on (a logit alone does not: adding a constant to every logit changes nothing).
    ``contrast=False``: the one-hot ``w[t] = 1`` (the target's logit itself).

    Example:
        >>> class_weights(3, torch.tensor([0, 2])).tolist()
        [[1.0, -0.5, -0.5], [-0.5, -0.5, 1.0]]
    """
    t = torch.as_tensor(target, dtype=torch.long).flatten()
    one_hot = torch.nn.functional.one_hot(t, num_classes).double()
    if not contrast or num_classes < 2:
        return one_hot
    return one_hot - (1.0 - one_hot) / (num_classes - 1)


def scale_contributions(out: EvidenceOutput, weights: Tensor) -> dict[str, Tensor]:
    """Every cell's contribution at every scale: ``mu_m[p] * sum_c w[c] s_m[p, c]``, block -> ``(B, *grid)``.

    Summed over all cells and scales: ``sum_c w[c] (logit[c] - bias[c])``, exactly (float rounding).
    """
    w = weights.to(out.logits.dtype).to(out.logits.device)
    return {b: out.mu[b] * torch.einsum("bk...,bk->b...", out.evidence[b], w) for b in out.mu}


def contribution_map(out: EvidenceOutput, weights: Tensor, block: str, *, scales: str = "all") -> Tensor:
    """The contributions on ``block``'s grid: ``(B, *grid)``.

    ``scales="own"``: that block's terms only. ``scales="all"`` (the whole decision on one grid): finer scales'
    terms sum-pooled onto the block's cells, and coarser scales' terms shared among the block's cells in
    proportion to their ``mu``: cell ``j`` gets ``mu_block[j] * e_coarse[parent(j)]`` (``e = sum_c w[c] s[., c]``).
    Because the maps are exactly consistent (a coarse cell's ``mu`` is the sum of its fine cells'), these
    shares add up to the coarse cell's own term, and the map sums to ``sum_c w[c] (logit[c] - bias[c])``.

    Raises:
        ValueError: a block without a map, or an unknown ``scales``.
    """
    if scales not in ("all", "own"):
        raise ValueError(f"scales must be 'all' or 'own', got {scales!r}")
    blocks = list(out.mu)
    if block not in out.mu:
        raise ValueError(f"block {block!r} has no map in this model; blocks with maps: {blocks}")
    terms = scale_contributions(out, weights)
    if scales == "own":
        return terms[block]
    w = weights.to(out.logits.dtype).to(out.logits.device)
    i = blocks.index(block)
    grid = tuple(out.mu[block].shape[1:])
    total = terms[block]
    for finer in blocks[:i]:
        total = total + block_sum(terms[finer], block_factors(terms[finer].shape[1:], grid))
    for coarser in blocks[i + 1 :]:
        e = torch.einsum("bk...,bk->b...", out.evidence[coarser], w)
        total = total + out.mu[block] * upsample_blocks(e, block_factors(grid, e.shape[1:]))
    return total


# ---------------------------------------------------------------------------- factory
@register_variant("unet_encoder", ADDITIVE_VARIANT)
def additive_unet(
    *,
    variant: str = ADDITIVE_VARIANT,
    in_channels: int = 1,
    num_classes: int = 2,
    spatial_dims: int = 2,
    features: int = 32,
    norm: str = "batch",
    conv3_stages: int = 2,
    blocks: Sequence[str] = BLOCK_CHOICES[0],
    downsample: str = "max",
    config: dict[str, Any] | None = None,
    **kw: Any,
) -> AdditiveEvidenceClassifier:
    """Build the additive local-evidence model on the U-Net encoder (module docstring).

    ``norm`` must be ``"batch"`` (the other normalizations read every position); ``conv3_stages`` (default 2)
    sets the receptive field, ``downsample`` how a stage halves the grid (:data:`DOWNSAMPLES`); other options (``gate_*``, ``entropy_weight``, ``attention_area``, ``img_size``)
    go to :class:`AdditiveEvidenceClassifier`.
    """
    if variant != ADDITIVE_VARIANT:  # pragma: no cover - the registry dispatches by variant
        raise ValueError(f"additive_unet builds variant {ADDITIVE_VARIANT!r}, not {variant!r}")
    if norm not in LOCAL_NORMS:
        raise ValueError(
            f"variant 'additive' needs norm='batch', got {norm!r}: GroupNorm and InstanceNorm normalize with "
            "statistics over the whole image, so every cell would see every pixel"
        )
    blocks = tuple(blocks) if isinstance(blocks, (list, tuple)) else blocks
    depth = int(str(blocks[-1])[len("block"):]) if blocks in BLOCK_CHOICES else 4
    backbone = LocalUNetEncoder(in_channels=in_channels, features=features, spatial_dims=spatial_dims,
                                conv3_stages=conv3_stages, depth=depth, downsample=downsample)
    return AdditiveEvidenceClassifier(backbone=backbone, num_classes=num_classes, blocks=blocks, config=config, **kw)


def _size_tuple(size: int | Sequence[int] | None, spatial_dims: int) -> tuple[int, ...] | None:
    if size is None:
        return None
    size = (size,) * spatial_dims if isinstance(size, int) else tuple(size)
    if len(size) != spatial_dims or not all(isinstance(s, int) and s > 0 for s in size):
        raise ValueError(f"img_size must be a positive int or {spatial_dims} positive ints, got {size!r}")
    return size


def _layout(x: Tensor) -> Tensor:
    """Channels-last for float32 CPU inputs (faster convolutions there; the same function)."""
    if x.device.type != "cpu" or x.dtype != torch.float32 or x.dim() not in (4, 5):
        return x
    return x.contiguous(memory_format=torch.channels_last if x.dim() == 4 else torch.channels_last_3d)

