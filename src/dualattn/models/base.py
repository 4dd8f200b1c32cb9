"""The gated classifier shared by every CNN backbone, and its typed attention output.

A CNN backbone (:mod:`.unet`, :mod:`.resnet`) is a :class:`CNNBackbone`: an optional stem and
stages ``"block1" .. "blockK"``. :class:`GatedClassifier` runs the stages, puts attention gates
(:class:`dualattn.attention.AttentionGate`) after some of them according to the *variant*, and ends
with global average pooling and a linear layer.

Feature weighting. A gate gives a distribution ``tau`` over the ``N`` positions of its stage's grid.
Multiplying the features by ``tau`` shrinks them by about ``1/N`` (a prototype measured BatchNorm
inputs collapsing), so every variant multiplies by ``N * tau`` (or ``N * mu``): a uniform map is the
identity, and a gated model initialised from a baseline starts close to it. Every product of features
and a map (``N * w`` weighting in every variant and ``exact_mode``, and the attention-pooling head's
``sum_i mu_i v_i``) is a :class:`FeatureWeighting` module without parameters, so explainers find every gate
by module type (LRP gives it its gate rule, :mod:`dualattn.explain.lrp`).

Variants (DESIGN.md section 1):

==============  ==========================  ==================================================
variant         gated blocks                what weights the features / extra loss
==============  ==========================  ==================================================
baseline        none                        --
tau_k           block3                      N*tau_k
tau_l           block4                      N*tau_l
unconstrained   block3, block4              N*tau (no consistency term)
dual            block3, block4              N*mu from the witness lambda (Thm. 3.1); penalty
                                            alpha * KL(mu_l || marg(mu_k)) (Eq. 6)
kl, kl_reverse  block3, block4              N*tau; penalty alpha * KL(tau_l || marg(tau_k))
                                            (reverse: KL(marg(tau_k) || tau_l))
exact           block3, block4              N*mu with mu the exact solution of Eq. 4
multilevel      block2, block3, block4      N*mu, exact consistency over the 3-level chain
==============  ==========================  ==================================================

Why ``dual`` has no circularity: with a witness lambda that does not depend on the coarse map, the
reparameterised fine map ``mu_k[j] ∝ tau_k[j] exp(-lambda_i)`` needs only ``tau_k`` and lambda, and the
coarse one ``mu_l[i] ∝ tau_l[i] exp(lambda_i)`` only ``tau_l`` and lambda. The global witness is one
learned lambda per coarse cell; the amortized witness predicts lambda from the fine block's features
average-pooled to the coarse grid (available before the fine weighting).

The ``exact`` circularity (the fine weighting feeds the layers that produce the coarse map, but
``mu_k`` needs the coarse map) is resolved by one of two designs, ``exact_mode``:

* ``"two_pass"`` (default): pass 1 runs the stages up to the coarsest gated block *unweighted* and
  computes every gate's ``tau``; ``mu`` is the exact projection; pass 2 restarts from the finest
  gated block's features weighted by ``N*mu`` and runs the rest of the network with every gated
  block weighted by its ``N*mu``. The decision depends only on attended features (every path to the
  logits passes through all the weightings). The stages between the finest and the coarsest gate
  (block4 for ``exact``; block3 and block4 for ``multilevel``) run twice. With
  ``exact_proposal="detached"`` (default) their first run is, in training, a *proposal*: no gradient
  (the coarse gate's own parameters still learn from it) and BatchNorm on its running statistics,
  which pass 2 alone updates, so train and eval compute the proposal alike and the statistics are
  those of the weighted features the classifier sees. The repeat then costs a forward pass only
  (``"grad"`` back-propagates through both runs and costs more; step times measured by
  ``benchmarks/train_overhead.py`` are in docs/training.md). In eval mode nothing is
  detached: gradients w.r.t. the input (every gradient explainer) follow the whole function.
* ``"pool"``: attention pooling after Jetley et al. ("Learn to Pay Attention", ICLR 2018): the
  stages run unweighted; each gated stage contributes ``g = sum_i mu_i v_i`` (a ``mu``-weighted
  average of its features) and the linear head sees only the concatenated ``g`` vectors. Stages
  after the coarsest gate are dropped.
* ``"hybrid"``: both: the ``two_pass`` network and the ``pool`` head side by side, their logits summed. The
  full-depth weighted path keeps the classifier's accuracy; the pooled head gives every gate a direct,
  discriminative gradient (the method study's round 3-4: pooling alone sharpened the maps but lost accuracy).
  The pooled head reads pass 1's unweighted features, so with ``exact_proposal="detached"`` its gradient in
  training reaches the gates and the finest gated stage's backbone, not the proposal's later stages.

``two_pass`` is the default; the runs it was first chosen on scored the test split and were withdrawn, so
the choice is not yet backed by a validation-only study (docs/models.md, "Recipes: measured defaults", says
what is and what is not measured); ``pool`` stays available.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
from typing import Any, Iterator, NamedTuple, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from dualattn._checks import check_number, check_positive_int
from dualattn.attention import GATE_FORMS, AttentionGate
from dualattn.consistency import (
    AmortizedWitness,
    GlobalWitness,
    dual_penalty,
    kl_consistency,
    project_exact_chain_log,
    project_exact_log,
)
from dualattn.grids import block_factors, upsample_blocks

from ._parts import BackboneSplit

logger = logging.getLogger(__name__)

__all__ = [
    "AttentionOutput",
    "CNNBackbone",
    "FeatureWeighting",
    "GatedClassifier",
    "GATED_BLOCKS",
    "LogitSum",
    "PAPER_ALPHA",
    "PENALTY_VARIANTS",
    "normalized_entropy",
    "pool_features",
    "weight_features",
]

#: The paper's weight of the consistency penalty (``dual``, ``kl``, ``kl_reverse``): the default of
#: :class:`GatedClassifier` and of ``create_model``. Training recipes may choose another
#: (``dualattn.train.recipes``).
PAPER_ALPHA = 10.0


class AttentionOutput(NamedTuple):
    """What :meth:`GatedClassifier.forward_with_attention` returns.

    Attributes:
        logits: ``(B, num_classes)``.
        tau: gate maps, block name -> ``(B, *grid)``, each sample a distribution.
        mu: consistent maps (``dual``, ``exact``, ``multilevel``), block name -> ``(B, *grid)``;
            empty when the variant has none.
        penalty: scalar added to the cross-entropy: the consistency term times ``alpha`` plus, when
            ``entropy_weight > 0``, ``entropy_weight`` times the mean normalised entropy of the
            feature-weighting maps (zero when neither applies).
    """

    logits: Tensor
    tau: dict[str, Tensor]
    mu: dict[str, Tensor]
    penalty: Tensor


#: Gated blocks of every variant, finest first.
GATED_BLOCKS: dict[str, tuple[str, ...]] = {
    "baseline": (),
    "tau_k": ("block3",),
    "tau_l": ("block4",),
    "unconstrained": ("block3", "block4"),
    "dual": ("block3", "block4"),
    "kl": ("block3", "block4"),
    "kl_reverse": ("block3", "block4"),
    "exact": ("block3", "block4"),
    "multilevel": ("block2", "block3", "block4"),
}

#: Variants whose loss has a consistency penalty weighted by ``alpha``.
PENALTY_VARIANTS: tuple[str, ...] = ("dual", "kl", "kl_reverse")

_WITNESSES = ("global", "amortized")
_EXACT_MODES = ("two_pass", "pool", "hybrid")
_PROPOSALS = ("detached", "grad")
#: Default gate width: ``E = min(C, 64)``. The gate's 1x1 convs and channel normalisation scale with
#: ``E`` and were most of the gated variants' step-time overhead at E = C (measurements and the quality
#: check ``benchmarks/gate_width_check.py``: docs/models.md, "Variants").
_GATE_EMBED_CAP = 64
_BACKBONE_PREFIXES = ("backbone.", "fc.")


def weight_features(features: Tensor, log_weights: Tensor) -> Tensor:
    """Multiply features by ``N * w`` where ``w = exp(log_weights)`` is a per-sample distribution.

    Args:
        features: ``(B, C, *grid)``.
        log_weights: ``(B, *grid)``, log of a distribution over the ``N`` grid positions.

    Returns:
        ``(B, C, *grid)``: ``features * N * w`` (broadcast over channels); a uniform ``w`` is the identity.
    """
    n = math.prod(log_weights.shape[1:])
    return features * (log_weights + math.log(n)).exp().unsqueeze(1)


def pool_features(features: Tensor, log_weights: Tensor) -> Tensor:
    """The attention-pooled vector ``g = sum_i w_i v_i`` (Jetley et al. 2018) of features ``v`` and a map ``w``.

    Args:
        features: ``(B, C, *grid)``.
        log_weights: ``(B, *grid)``, log of a distribution ``w`` over the grid positions.

    Returns:
        ``(B, C)``: the ``w``-weighted average of the features over the grid.
    """
    return (features * log_weights.exp().unsqueeze(1)).flatten(2).sum(-1)


class FeatureWeighting(nn.Module):
    """A gated model's product of its features and an attention map, as a module (no parameters).

    Every place a :class:`GatedClassifier` multiplies features by a map goes through one of these, so an
    explainer finds every gate by module type: LRP's private copy gives it the signal-take-all rule (the map
    a constant weighting, :mod:`dualattn.explain.lrp`). The forward is exactly the function it wraps.

    Args:
        pool: False: ``features * N * w`` (:func:`weight_features`, ``(B, C, *grid)``); True: the
            attention-pooled vector ``sum_i w_i v_i`` (:func:`pool_features`, ``(B, C)``).

    Example:
        >>> v = torch.randn(2, 3, 4, 4)
        >>> uniform = torch.full((2, 4, 4), -math.log(16))
        >>> torch.allclose(FeatureWeighting()(v, uniform), v)
        True
        >>> torch.allclose(FeatureWeighting(pool=True)(v, uniform), v.mean((2, 3)))
        True
    """

    def __init__(self, *, pool: bool = False) -> None:
        super().__init__()
        self.pool = bool(pool)

    def extra_repr(self) -> str:
        return "pool=True" if self.pool else ""

    def forward(self, features: Tensor, log_weights: Tensor) -> Tensor:
        """``features (B, C, *grid)`` and ``log_weights (B, *grid)`` -> ``(B, C, *grid)``, or ``(B, C)`` pooled."""
        return pool_features(features, log_weights) if self.pool else weight_features(features, log_weights)


class LogitSum(nn.Module):
    """``a + b``: the ``hybrid`` model's two heads' logits summed, as a module (no parameters).

    A plain ``+`` in the classifier's forward is invisible to LRP, which would hand the whole relevance of
    the logit to both heads; as a module it takes LRP-0, which splits it in proportion to ``a`` and ``b``.
    """

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        """``a + b``."""
        return a + b


def _log_normalize(logits: Tensor) -> Tensor:
    """Per-sample log-softmax over all positions of ``(B, *grid)``."""
    return logits.flatten(1).log_softmax(dim=1).view_as(logits)


def normalized_entropy(log_maps: Sequence[Tensor], area: float | None = None) -> Tensor:
    """Mean over maps and samples of the normalised entropy ``H(p) / log N`` of ``(B, *grid)`` log-maps.

    1 for uniform maps, 0 for maps on one position (a map with ``N = 1`` counts as 0).

    With ``area`` (a fraction ``rho`` in (0, 1]) it is the hinge ``max(0, H(p) - log(rho N)) / log N``:
    zero once the map's effective area ``exp(H) / N`` is at most ``rho`` (a map spread evenly over a
    region of that fraction of the image), whatever the resolution.

    Example:
        >>> four_of_16 = torch.full((1, 4, 4), -torch.inf)
        >>> four_of_16[0, 0] = math.log(0.25)  # uniform on the 4 cells of the first row
        >>> round(float(normalized_entropy([four_of_16])), 4)
        0.5
        >>> float(normalized_entropy([four_of_16], area=0.25)), float(normalized_entropy([four_of_16], area=0.125))
        (0.0, 0.25)
    """
    terms = []
    for log_p in log_maps:
        flat = log_p.float().flatten(1)
        n = flat.shape[1]
        if n < 2:
            terms.append(flat.new_zeros(()))
            continue
        ent = -(flat.exp() * flat.clamp_min(-1e4)).sum(1)
        if area is not None:
            ent = (ent - math.log(area * n)).clamp_min(0.0)
        terms.append(ent.mean() / math.log(n))
    return torch.stack(terms).mean()


def _gate_factors(fine: Sequence[int], coarse: Sequence[int]) -> tuple[int, ...]:
    """:func:`dualattn.grids.block_factors` of two gated blocks' grids, with a hint about the input size."""
    try:
        return block_factors(fine, coarse)
    except ValueError as exc:
        raise ValueError(
            f"the attention grids do not nest: {exc}; choose an input size divisible by the backbone's "
            "total downsampling"
        ) from exc


class CNNBackbone(nn.Module):
    """A convolutional feature extractor split into named stages.

    Subclasses set ``stem`` (an ``nn.Module`` run before the stages, or ``None``), ``stages``
    (``nn.ModuleDict`` ``"block1" .. "blockK"`` in order), ``channels`` (block -> output channels)
    and implement :meth:`grid_shapes`.
    """

    stem: nn.Module | None
    stages: nn.ModuleDict
    channels: dict[str, int]
    spatial_dims: int

    def grid_shapes(self, spatial: Sequence[int]) -> dict[str, tuple[int, ...]]:
        """Spatial shape of every stage's output for an input of spatial shape ``spatial``."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:  # pragma: no cover - the classifier drives the stages
        h = self.stem(x) if self.stem is not None else x
        for stage in self.stages.values():
            h = stage(h)
        return h


class GatedClassifier(BackboneSplit, nn.Module):
    """A CNN backbone with attention gates, global average pooling and a linear head.

    Args:
        backbone: the :class:`CNNBackbone`.
        variant: one of :data:`GATED_BLOCKS`.
        num_classes: number of output logits.
        alpha: weight of the consistency penalty (``dual``, ``kl``, ``kl_reverse``); default
            :data:`PAPER_ALPHA`, the paper's value.
        witness: ``"global"`` (one learned lambda per coarse cell; needs ``img_size``) or
            ``"amortized"`` (lambda predicted from the fine block's features), for ``dual``.
        exact_mode: ``"two_pass"``, ``"pool"`` or ``"hybrid"``, how ``exact``/``multilevel`` break the
            circularity (module docstring).
        exact_proposal: how ``two_pass`` runs the stages of its first pass after the finest gated
            block (the "proposal" that only feeds the coarser gates): ``"detached"`` (default) without
            gradient and with BatchNorm on its running statistics, ``"grad"`` like the second pass
            (train-mode BatchNorm, gradient through both passes). See the module docstring.
        gate_embed: embedding channels ``E`` of every gate (default: the gated block's channels, at
            most 64: the cost of a gate grows with ``E``; see ``_GATE_EMBED_CAP``).
        gate_scale: multiplier ``s`` of every gate's potentials, ``phi = s <u, z>`` (see
            :class:`~dualattn.attention.AttentionGate`); 1 is the paper's gate.
        gate_learn_scale: learn ``log s`` (initialised at ``log gate_scale``).
        gate_zero_init: start every gate's ``u`` at zero (uniform maps at initialisation).
        gate_form: ``"single"`` (default: one potential layer, ``phi = s <u, ReLU(normalize(U v))>``) or
            ``"cascaded"`` (the paper's "two cascaded potential gates", as we read Sec. 4.1: a second
            ``E -> E`` potential layer before ``u``); see :class:`~dualattn.attention.AttentionGate`.
        gate_bias: give every gate's 1x1 convs a bias, as the authors' code does (default False).
        entropy_weight: ``beta``, weight of the sharpness term added to the penalty: the mean over
            the gated blocks of the normalised entropy ``H(w) / log N`` of the map ``w`` that weights
            the features (``mu`` where the variant has it, else ``tau``); 0 (the paper) turns it off.
        attention_area: with ``entropy_weight``, penalise the entropy only above that of a map spread
            over this fraction of the image (:func:`normalized_entropy`'s hinge); None: always.
        img_size: input spatial size (int or one per dim); needed by the global witness.
        config: the ``create_model`` arguments that rebuild this model (``model.config``).

    Example:
        >>> from dualattn.models import create_model
        >>> m = create_model("unet_encoder", variant="exact", features=4)
        >>> out = m.forward_with_attention(torch.randn(2, 1, 32, 32))
        >>> out.logits.shape, out.mu["block3"].shape
        (torch.Size([2, 2]), torch.Size([2, 8, 8]))
    """

    #: memory layout of the activations (not part of the architecture: the maths is the same). ``None``
    #: (default): channels-last for float32 inputs on the CPU, where oneDNN's convolutions run 1.2-1.8x
    #: faster (``benchmarks/memory_format.py``, ``benchmarks/results/memory_format.json``), and the input's
    #: own layout elsewhere (on an H200 channels-last was 0.88-0.95x for 2-D and 1.1-1.5x for 3-D training
    #: steps, ``memory_format_cuda*.json``: no uniform gain); True / False force channels-last on / off.
    channels_last: bool | None = None

    def __init__(
        self,
        *,
        backbone: CNNBackbone,
        variant: str,
        num_classes: int,
        alpha: float = PAPER_ALPHA,
        witness: str = "global",
        exact_mode: str = "two_pass",
        exact_proposal: str = "detached",
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
        if variant not in GATED_BLOCKS:
            raise ValueError(f"unknown variant {variant!r}; valid variants: {', '.join(GATED_BLOCKS)}")
        check_positive_int("num_classes", num_classes)
        check_number("alpha", alpha, low=0.0)
        check_number("entropy_weight", entropy_weight, low=0.0)
        if attention_area is not None:
            check_number("attention_area", attention_area, low=0.0, high=1.0, low_inclusive=False)
        if witness not in _WITNESSES:
            raise ValueError(f"unknown witness {witness!r}; valid: {', '.join(_WITNESSES)}")
        if exact_mode not in _EXACT_MODES:
            raise ValueError(f"unknown exact_mode {exact_mode!r}; valid: {', '.join(_EXACT_MODES)}")
        if exact_proposal not in _PROPOSALS:
            raise ValueError(f"unknown exact_proposal {exact_proposal!r}; valid: {', '.join(_PROPOSALS)}")
        if gate_embed is not None and (not isinstance(gate_embed, int) or gate_embed < 1):
            raise ValueError(f"gate_embed must be a positive int or None, got {gate_embed!r}")
        if gate_form not in GATE_FORMS:
            raise ValueError(f"unknown gate_form {gate_form!r}; valid: {', '.join(GATE_FORMS)}")
        if not isinstance(gate_bias, bool):
            raise ValueError(f"gate_bias must be a bool (true or false), got {gate_bias!r}")
        self.variant = variant
        self.num_classes = num_classes
        self.alpha = float(alpha)
        self.entropy_weight = float(entropy_weight)
        self.attention_area = None if attention_area is None else float(attention_area)
        self.witness_kind = witness
        self.exact_mode = exact_mode
        self.exact_proposal = exact_proposal
        self.spatial_dims = backbone.spatial_dims
        self._config = copy.deepcopy(config or {})
        self._backbone_frozen = False
        self.img_size = _normalize_size(img_size, backbone.spatial_dims)

        blocks = GATED_BLOCKS[variant]
        missing = [b for b in blocks if b not in backbone.stages]
        if missing:
            raise ValueError(f"variant {variant!r} gates {missing} but the backbone has only {list(backbone.stages)}")
        self.attention_blocks: tuple[str, ...] = blocks
        self._pooled = variant in ("exact", "multilevel") and exact_mode == "pool"
        #: the attention-pooling head (``pool``: the only head; ``hybrid``: beside the two-pass network)
        self._pool_head = variant in ("exact", "multilevel") and exact_mode in ("pool", "hybrid")
        if self._pooled:
            # attention pooling: the stages after the coarsest gate are never used.
            names = list(backbone.stages)
            for name in names[names.index(blocks[-1]) + 1 :]:
                del backbone.stages[name]
        self.backbone = backbone
        self.gates = nn.ModuleDict(
            {
                b: AttentionGate(
                    backbone.channels[b],
                    gate_embed or min(backbone.channels[b], _GATE_EMBED_CAP),
                    spatial_dims=backbone.spatial_dims,
                    scale=gate_scale,
                    learn_scale=gate_learn_scale,
                    zero_init=gate_zero_init,
                    form=gate_form,
                    bias=gate_bias,
                )
                for b in blocks
            }
        )
        self.witness: nn.Module | None = None
        if variant == "dual":
            fine, coarse = blocks
            if witness == "global":
                if self.img_size is None:
                    raise ValueError(
                        "variant 'dual' with witness='global' needs img_size (the input spatial size) to "
                        "size its one-lambda-per-coarse-cell witness; pass img_size=... or witness='amortized'"
                    )
                grids = backbone.grid_shapes(self.img_size)
                _gate_factors(grids[fine], grids[coarse])
                self.witness = GlobalWitness(tuple(grids[coarse]))
            else:
                self.witness = AmortizedWitness(backbone.channels[fine], spatial_dims=backbone.spatial_dims)
        #: one :class:`FeatureWeighting` per product of features and map (no parameters: the state dict
        #: is unchanged): ``weighting`` multiplies a gated block's features by ``N * w`` (None for the baseline
        #: and ``pool``), ``attn_pool`` is the attention-pooling head's ``sum_i mu_i v_i``.
        self.weighting: nn.ModuleDict | None = (
            nn.ModuleDict({b: FeatureWeighting() for b in blocks}) if blocks and not self._pooled else None
        )
        pool_cls = nn.AdaptiveAvgPool2d if backbone.spatial_dims == 2 else nn.AdaptiveAvgPool3d
        if self._pool_head:
            self.attn_pool = nn.ModuleDict({b: FeatureWeighting(pool=True) for b in blocks})
            self.attn_fc = nn.Linear(sum(backbone.channels[b] for b in blocks), num_classes)
            if not self._pooled:
                self.logit_sum = LogitSum()
        if not self._pooled:
            self.pool = pool_cls(1)
            last = list(backbone.stages)[-1]
            self.fc = nn.Linear(backbone.channels[last], num_classes)
        stage_order = list(backbone.stages)
        wanted = set(blocks) | {b for b in ("block3", "block4") if b in backbone.stages}
        self.map_blocks: tuple[str, ...] = tuple(b for b in stage_order if b in wanted)

    # ------------------------------------------------------------------ public API
    @property
    def config(self) -> dict[str, Any]:
        """JSON-serializable ``create_model`` arguments rebuilding this architecture."""
        return copy.deepcopy(self._config)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, num_classes)`` for input ``(B, C, *spatial)``."""
        if not self.attention_blocks:
            return self._head(self._run_stages(self._stem(x)))
        return self.forward_with_attention(x).logits

    def forward_with_attention(self, x: Tensor) -> AttentionOutput:
        """Logits and the attention maps of every gated block.

        Args:
            x: ``(B, C, *spatial)`` with ``len(spatial) == spatial_dims``.

        Returns:
            :class:`AttentionOutput` (``tau``/``mu`` keyed by block name, maps ``(B, *grid)``).
        """
        if x.dim() != self.spatial_dims + 2:
            raise ValueError(
                f"expected input of shape (B, C, {'D, ' if self.spatial_dims == 3 else ''}H, W) for "
                f"spatial_dims={self.spatial_dims}, got {tuple(x.shape)}"
            )
        zero = x.new_zeros(())
        if not self.attention_blocks:
            return AttentionOutput(self._head(self._run_stages(self._stem(x))), {}, {}, zero)
        if self.variant in ("exact", "multilevel"):
            return self._forward_exact(x, zero)
        return self._forward_sequential(x, zero)

    def feature_layers(self) -> dict[str, nn.Module]:
        """Block name -> module whose output is that stage's (unweighted) feature map (GradCAM target)."""
        return dict(self.backbone.stages.items())

    def load_backbone_state(self, state_dict: dict[str, Tensor]) -> None:
        """Load a baseline's weights (of the same backbone and width) into this model's backbone.

        Gate, witness and attention-pooling parameters keep their initialisation. A ``"model."``
        prefix on every key (Lightning modules) is stripped.

        Args:
            state_dict: a baseline model's ``state_dict()``.

        Raises:
            ValueError: keys missing from / unknown to this backbone, or shapes that differ.
        """
        sd = dict(state_dict)
        if sd and all(k.startswith("model.") for k in sd):
            sd = {k[len("model.") :]: v for k, v in sd.items()}
        own = self.state_dict()
        has_stats = [any(k.startswith("backbone.") and k.endswith(".running_mean") for k in d) for d in (sd, own)]
        if has_stats[0] != has_stats[1]:
            norm = self._config.get("norm", "batch")
            raise ValueError(
                f"state dict does not match this {self._config.get('name', 'model')} backbone's normalization: this "
                f"model has norm={norm!r}, the state dict's backbone "
                f"{'has' if has_stats[0] else 'has no'} BatchNorm running statistics; train the baseline with the "
                f"same norm (model_kwargs.norm)"
            )
        ignorable = ("fc.", "backbone.stages.") if self._pooled else ()
        unexpected = [k for k in sd if k not in own and not k.startswith(ignorable)]
        missing = [k for k in own if k.startswith(_BACKBONE_PREFIXES) and k not in sd]
        if unexpected or missing:
            raise ValueError(
                f"state dict does not match this {self._config.get('name', 'model')} backbone: "
                f"missing {missing[:8]}{'...' if len(missing) > 8 else ''}, "
                f"unexpected {unexpected[:8]}{'...' if len(unexpected) > 8 else ''}"
            )
        loadable = {k: v for k, v in sd.items() if k in own}
        bad = [k for k, v in loadable.items() if tuple(v.shape) != tuple(own[k].shape)]
        if bad:
            raise ValueError(
                "shape mismatch for " + ", ".join(f"{k}: {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in bad[:8])
            )
        self.load_state_dict(loadable, strict=False)

    # ------------------------------------------------------------------ internals
    def _stem(self, x: Tensor) -> Tensor:
        x = self._layout(x)
        return self.backbone.stem(x) if self.backbone.stem is not None else x

    def _layout(self, x: Tensor) -> Tensor:
        """``x`` in the memory layout the convolutions run fastest in (see :attr:`channels_last`)."""
        on = self.channels_last
        if on is None:
            on = x.device.type == "cpu" and x.dtype == torch.float32
        if not on or x.dim() not in (4, 5):
            return x
        return x.contiguous(memory_format=torch.channels_last if x.dim() == 4 else torch.channels_last_3d)

    def _run_stages(self, h: Tensor) -> Tensor:
        for stage in self.backbone.stages.values():
            h = stage(h)
        return h

    def _head(self, h: Tensor) -> Tensor:
        return self.fc(torch.flatten(self.pool(h), 1))

    def _witness_lambda(self, fine_features: Tensor, coarse_shape: tuple[int, ...]) -> Tensor:
        if self.witness is None:  # pragma: no cover - internal invariant, set in __init__
            raise RuntimeError("the dual witness is missing")
        if self.witness_kind == "global":
            lam = self.witness(fine_features)
            if tuple(lam.shape[1:]) != tuple(coarse_shape):
                raise ValueError(
                    f"the global witness was sized for img_size={self.img_size} (coarse grid "
                    f"{tuple(lam.shape[1:])}) but this input gives a coarse grid {tuple(coarse_shape)}"
                )
            return lam
        pooled = F.adaptive_avg_pool2d if self.spatial_dims == 2 else F.adaptive_avg_pool3d
        return self.witness(pooled(fine_features, coarse_shape))

    def _forward_sequential(self, x: Tensor, zero: Tensor) -> AttentionOutput:
        """Gates weight the features in order (tau_k, tau_l, unconstrained, kl*, dual)."""
        taus: dict[str, Tensor] = {}
        mus: dict[str, Tensor] = {}
        grids = self.backbone.grid_shapes(tuple(x.shape[2:]))
        lam: Tensor | None = None
        weight_logs: list[Tensor] = []
        h = self._stem(x)
        for name, stage in self.backbone.stages.items():
            h = stage(h)
            if name not in self.gates:
                continue
            log_tau = self.gates[name].log_attention(h)
            taus[name] = log_tau.exp()
            log_w = log_tau
            if self.variant == "dual":
                fine, coarse = self.attention_blocks
                if name == fine:
                    factors = _gate_factors(h.shape[2:], grids[coarse])
                    lam = self._witness_lambda(h, tuple(grids[coarse]))
                    log_w = _log_normalize(log_tau - upsample_blocks(lam, factors))
                else:
                    if lam is None:  # pragma: no cover - the fine block precedes the coarse one
                        raise RuntimeError("dual: coarse gate reached before the fine gate")
                    if tuple(lam.shape[1:]) != tuple(h.shape[2:]):
                        raise ValueError(f"coarse grid {tuple(h.shape[2:])} != witness grid {tuple(lam.shape[1:])}")
                    log_w = _log_normalize(log_tau + lam)
                mus[name] = log_w.exp()
            weight_logs.append(log_w)
            h = self.weighting[name](h, log_w)
        logits = self._head(h)
        penalty = zero
        if self.variant in PENALTY_VARIANTS:
            fine, coarse = self.attention_blocks
            if self.variant == "dual":
                term = dual_penalty(taus[fine], taus[coarse], lam)
            else:
                term = kl_consistency(taus[fine], taus[coarse], reverse=self.variant == "kl_reverse")
            penalty = self.alpha * term
        if self.entropy_weight > 0:
            penalty = penalty + self.entropy_weight * normalized_entropy(weight_logs, self.attention_area)
        return AttentionOutput(logits, taus, mus, penalty)

    def _forward_exact(self, x: Tensor, zero: Tensor) -> AttentionOutput:
        """Exact consistent maps weight the features (module docstring: two_pass / pool)."""
        blocks = self.attention_blocks
        names = list(self.backbone.stages)
        last = names.index(blocks[-1])
        feats: dict[str, Tensor] = {}
        log_taus: dict[str, Tensor] = {}
        first = names.index(blocks[0])
        # only while training: in eval mode the proposal already uses running statistics, and gradients
        # w.r.t. the input (every gradient explainer) must follow the model's whole function
        detach = self.exact_proposal == "detached" and self.training and not self._pooled
        h = self._stem(x)
        for i, name in enumerate(names[: last + 1]):
            if detach and i > first:
                with _proposal_mode(self.backbone.stages[name]):
                    h = self.backbone.stages[name](h)
            else:
                h = self.backbone.stages[name](h)
            if name in self.gates:
                feats[name] = h
                log_taus[name] = self.gates[name].log_attention(h)
        for fine, coarse in zip(blocks[:-1], blocks[1:]):
            _gate_factors(log_taus[fine].shape[1:], log_taus[coarse].shape[1:])
        if len(blocks) == 2:
            log_mu_list = list(project_exact_log(log_taus[blocks[0]], log_taus[blocks[1]]))
        else:
            log_mu_list = list(project_exact_chain_log([log_taus[b] for b in blocks]))
        log_mus = dict(zip(blocks, log_mu_list))
        taus = {b: log_taus[b].exp() for b in blocks}
        mus = {b: log_mus[b].exp() for b in blocks}
        penalty = zero
        if self.entropy_weight > 0:
            penalty = self.entropy_weight * normalized_entropy(log_mu_list, self.attention_area)
        pooled_logits = None
        if self._pool_head:
            pooled = [self.attn_pool[b](feats[b], log_mus[b]) for b in blocks]
            pooled_logits = self.attn_fc(torch.cat(pooled, dim=1))
            if self._pooled:
                return AttentionOutput(pooled_logits, taus, mus, penalty)
        h = self.weighting[blocks[0]](feats[blocks[0]], log_mus[blocks[0]])
        for name in names[first + 1 :]:
            h = self.backbone.stages[name](h)
            if name in log_mus:
                h = self.weighting[name](h, log_mus[name])
        logits = self._head(h)
        if pooled_logits is not None:
            logits = self.logit_sum(logits, pooled_logits)
        return AttentionOutput(logits, taus, mus, penalty)


@contextlib.contextmanager
def _proposal_mode(stage: nn.Module) -> Iterator[None]:
    """Run ``stage`` without gradient, its BatchNorm layers on their running statistics (then restore)."""
    switched = [m for m in stage.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
    for m in switched:
        m.train(False)
    try:
        with torch.no_grad():
            yield
    finally:
        for m in switched:
            m.train(True)


def _normalize_size(size: int | Sequence[int] | None, spatial_dims: int) -> tuple[int, ...] | None:
    """``img_size`` as a tuple of ``spatial_dims`` positive ints (or None)."""
    if size is None:
        return None
    if isinstance(size, int):
        size = (size,) * spatial_dims
    size = tuple(size)
    if len(size) != spatial_dims or not all(isinstance(s, int) and s > 0 for s in size):
        raise ValueError(f"img_size must be a positive int or {spatial_dims} positive ints, got {size!r}")
    return size
