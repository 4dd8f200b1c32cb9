"""Layer-wise relevance propagation as its practitioners use it: a composite rule set, through Captum.

With the epsilon rule everywhere (epsilon -> 0) on a ReLU network, LRP is Gradient x Input: the
table would list one method twice. ``lrp`` therefore uses the composite of Montavon et al.,
"Layer-Wise Relevance Propagation: An Overview" (2019, section 10.2.2), by depth thirds of the
network's weight layers (convolutions and linear layers, 1-D to 3-D), counted in the order a
forward pass runs them (:data:`LRP_RULES`):

======  =============================  ====================================================
role    rule                           why
======  =============================  ====================================================
input   epsilon, ``epsilon = 0.25``    the first layer sees signed (z-scored) pixels, where
                                       gamma is undefined; Captum has no z^B rule
lower   gamma, ``gamma = 0.25``        favours positive contributions: stable, less noisy
middle  epsilon, ``epsilon = 0.25``    absorbs weak, contradictory relevance
upper   LRP-0 (epsilon ``1e-9``)       faithful to the decision near the output
======  =============================  ====================================================

Layer ``i`` of ``n`` (0 = nearest the input) is *lower* when ``3 i < n - 1``, *middle* when
``3 i < 2 (n - 1)``, *upper* otherwise (:func:`depth_third`); the first layer then takes the *input*
rule and the last (the classifier head) is always upper; a single-layer model is upper (LRP-0, which
is ``x * W`` for a linear model). The gamma rule assumes that relevance reaches only positive
pre-activations, which holds when the layer's output goes straight into a ReLU (after folded
BatchNorm); a lower-third layer whose output goes elsewhere -- into a residual sum, where a negative
pre-activation can carry relevance and make the gamma denominator vanish -- takes the middle rule
instead (its row in :func:`describe_lrp_rules` says so). Captum's epsilon is absolute
(``z + epsilon * sign(z)``); after BatchNorm folding the activations are roughly unit scale, so
``0.25`` is about a quarter of their spread.

Every other leaf: ReLU, dropout and tanh pass relevance unchanged (Captum's own handling), as do other
elementwise activations (identity rule); max-pooling sends it to the maximum, average pooling,
residual sums and any other layer use LRP-0.

Canonization (on the private copy, never on the caller's model; :func:`prepare_lrp_model`):

* **BatchNorm is folded** into the convolution that feeds it (``W' = W s``, ``b' = (b - mean) s +
  beta`` with ``s = gamma / sqrt(var + eps)``, eval-mode statistics) and replaced by an identity, so
  the conv + BN pair is one linear layer with a rule of its own (the U-Net encoder and the ResNets, 2-D
  and 3-D). A BatchNorm that no convolution feeds directly keeps its place and passes relevance
  unchanged (identity rule).
* **Per-sample normalizations** (GroupNorm, and InstanceNorm on instance statistics: the backbones'
  ``norm="group"`` / ``"instance"``) cannot be folded: their mean and scale change with the image. Each
  is replaced by :class:`DetachedScaleNorm`, the same function with its scale ``1 / sigma`` held constant
  in the backward pass (the centering stays: a linear, bias-free map), as Ali et al., "XAI for
  Transformers: Better Explanations through Conservative Propagation" (ICML 2022) do for LayerNorm. It
  takes LRP-0, so ``conv -> norm`` acts as one per-sample linear layer and relevance is conserved
  through it up to the norm's own bias. The convolution before it divides by its own (unnormalized)
  output, whose sign is not that of the ReLU's input: a lower-third convolution there takes the middle
  rule instead of gamma (its row's note says so).
* **Residual sums** ``a + b`` written as a plain ``+`` inside a submodule's ``forward`` (the ResNet
  blocks) are replaced, through ``torch.fx``, by Captum's ``Addition_Module``, which splits the
  relevance of the sum in proportion to ``a`` and ``b``; a plain ``+`` would hand the whole relevance
  to both branches. Only submodules whose ``forward`` takes one argument and traces are rewritten.
* Reused modules are split (one copy per call) and in-place activations made out-of-place.

The gates (a rule, applied in both the canonized and the fallback copy): every product of a gated model's
features and its attention map is a :class:`~dualattn.models.FeatureWeighting` (``v * N w`` in every
variant and ``exact_mode``, and the attention-pooling head's ``sum_i w_i v_i``), replaced by
:class:`ConstantMapWeighting` (:func:`hold_maps_constant`): the same values with the map detached, so the
product is a bias-free linear layer of the features, and LRP-0 on it gives all relevance of the product to
the features, in proportion to their contributions, and none to the map (:data:`GATE_RULE`). This is the
signal-take-all rule for multiplicative gates of Arras et al., "Explaining Recurrent Neural Network
Predictions in Sentiment Analysis" (2017): the map is a per-sample constant weighting; the gates'
convolutions, the dual witness and the exact projection that compute it get no relevance. Why: relevance
is then conserved through the gates (``tests/test_explain_lrp_reference.py`` writes the alternatives out;
passing relevance through the product as a gradient, as Captum and zennit do for an op they have no rule
for, does not conserve it). The ``hybrid`` head's sum of two logits is a :class:`~dualattn.models.base.LogitSum`
module and takes LRP-0 like a residual sum. Gradient explainers are not affected: they differentiate the
model itself, gates included.

The canonized copy must compute the same logits as the model (checked on the first image, relative
tolerance ``1e-4``); otherwise LRP runs on the uncanonized copy (BatchNorm with the identity rule,
plain sums) and a warning says so.

Conservation: the sum of the input relevance equals the target logit when the network has no biases
and the epsilons are ~0 (gamma rules conserve too; the tests check it on the U-Net encoder and the
ResNets, 2-D and 3-D). Folded BatchNorm creates biases, which take their share, and the input and
middle epsilons absorb weak relevance by design, so for the default composite on a trained model the
sum differs from the logit -- the epsilon rule's purpose, not an error. Gated models conserve it too
(every variant and ``exact_mode``, 2-D and 3-D, tested): the gate rule passes relevance through the
products of features and maps. On a ViT the attention products and layer norms have no LRP rule:
relevance flows through them as gradients do (no transformer-specific rules).

Example:
    >>> import torch
    >>> from dualattn.models import create_model
    >>> model = create_model("unet_encoder", features=4).eval()
    >>> x = torch.randn(2, 1, 32, 32)
    >>> lrp_attribution(model, x, target=torch.tensor([0, 1])).shape
    torch.Size([2, 1, 32, 32])
    >>> [row["role"] for row in describe_lrp_rules(model, x)["layers"]][:5]
    ['input', 'lower', 'lower', 'lower', 'middle']
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import inspect
import logging
import operator
import types
import warnings
from typing import Any, Iterator, Mapping

import torch
from torch import Tensor, nn

from .._optional import optional_import
from ..models import FeatureWeighting, pool_features, weight_features
from ._modules import LeafCall, leaf_calls, leaves, make_out_of_place, replace_module, split_reused_modules
from ._state import isolated_copy

__all__ = [
    "LRP_DESCRIPTION",
    "LRP_RULES",
    "LRPPlan",
    "LRPRule",
    "attach_rules",
    "composite_description",
    "ConstantMapWeighting",
    "DetachedScaleNorm",
    "GATE_RULE",
    "depth_third",
    "describe_lrp_rules",
    "detach_norm_scales",
    "fold_batchnorm",
    "hold_maps_constant",
    "lrp_attribution",
    "prepare_lrp_model",
    "split_residual_sums",
]

logger = logging.getLogger(__name__)

_RULE_KINDS = ("gamma", "epsilon", "zero", "identity", "alpha1beta0")
_ROLES = ("input", "lower", "middle", "upper")
#: Leaf types that LRP treats as weight layers (split into depth thirds).
_WEIGHT_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
#: Normalizations with per-sample statistics (never folded; see :class:`DetachedScaleNorm`).
_SAMPLE_NORMS = (nn.GroupNorm, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)
#: Elementwise activations (same shape in and out) that Captum does not know: identity rule.
_ELEMENTWISE = (
    nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Sigmoid, nn.Softplus, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Identity,
    nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.Softmax,
)
#: Captum handles these itself (relevance passes unchanged); no rule is set on them.
_CAPTUM_NONLINEAR = (nn.ReLU, nn.Dropout, nn.Tanh)
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


@dataclasses.dataclass(frozen=True)
class LRPRule:
    """One LRP rule of the composite.

    Attributes:
        kind: ``"gamma"`` (Captum ``GammaRule(gamma=value)``), ``"epsilon"`` (``EpsilonRule(value)``),
            ``"zero"`` (LRP-0: ``EpsilonRule(1e-9)``, ``value`` ignored), ``"identity"``
            (``IdentityRule``: relevance passes unchanged) or ``"alpha1beta0"``
            (``Alpha1_Beta0_Rule``: positive contributions only).
        value: gamma or epsilon.
    """

    kind: str
    value: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in _RULE_KINDS:
            raise ValueError(f"unknown LRP rule kind {self.kind!r}; valid: {', '.join(_RULE_KINDS)}")
        if self.kind in ("gamma", "epsilon") and (self.value is None or not self.value >= 0):
            raise ValueError(f"LRP rule {self.kind!r} needs a value >= 0, got {self.value!r}")

    @property
    def label(self) -> str:
        """Human-readable name, e.g. ``"gamma (gamma=0.25)"``."""
        if self.kind == "gamma":
            return f"gamma (gamma={self.value:g})"
        if self.kind == "epsilon":
            return f"epsilon (epsilon={self.value:g})"
        return {"zero": "LRP-0 (epsilon=1e-9)", "identity": "identity", "alpha1beta0": "alpha1-beta0"}[self.kind]

    def build(self) -> Any:
        """A fresh Captum ``PropagationRule`` (Captum keeps per-call state on it: one per layer)."""
        rules = _captum_rules()
        if self.kind == "gamma":
            return rules.GammaRule(gamma=float(self.value))
        if self.kind == "epsilon":
            return rules.EpsilonRule(epsilon=float(self.value))
        if self.kind == "zero":
            return rules.EpsilonRule(epsilon=1e-9)
        if self.kind == "identity":
            return _pass_rule_class()()
        return rules.Alpha1_Beta0_Rule()


#: The composite: the rule of each role of a weight layer (module docstring). Read-only.
LRP_RULES: Mapping[str, LRPRule] = types.MappingProxyType({
    "input": LRPRule("epsilon", 0.25),
    "lower": LRPRule("gamma", 0.25),
    "middle": LRPRule("epsilon", 0.25),
    "upper": LRPRule("zero"),
})

#: The rule of every product of features and an attention map (:class:`ConstantMapWeighting`), for reports.
GATE_RULE = (
    "signal-take-all (the map a constant per-sample weighting: all relevance of features x map to the "
    "features, none to the map or what computes it; Arras et al. 2017)"
)


def composite_description(rules: Mapping[str, LRPRule] | None = None) -> str:
    """One sentence for reports: what ``lrp`` computes with ``rules`` (default :data:`LRP_RULES`)."""
    rules = LRP_RULES if rules is None else rules
    _check_rules(rules)
    return (
        "composite LRP (Montavon et al. 2019) through Captum, by depth thirds of the conv/linear layers: "
        f"{rules['input'].label} on the input layer, {rules['lower'].label} on the rest of the lower "
        f"third (the middle rule where a layer's output is not followed by a ReLU), {rules['middle'].label} "
        f"on the middle third, {rules['upper'].label} on the upper third (the classifier head included); "
        "BatchNorm folded into the preceding convolution; residual sums split in proportion to their inputs; "
        f"attention-gated features: {GATE_RULE}"
    )


def _captum_rules() -> Any:
    return optional_import("captum.attr._utils.lrp_rules", extra="dev", purpose="LRP")


@functools.cache
def _pass_rule_class() -> type:
    """Captum's ``IdentityRule``, also for a layer that returns its input tensor itself (``nn.Identity``).

    Captum hooks the input and the output tensor of a layer; when they are one tensor, the input hook
    runs before the output hook and fails. Such a layer does not need hooks: its output is cloned and
    relevance passes through the clone unchanged.
    """

    class PassRule(_captum_rules().IdentityRule):
        def forward_hook(self, module: nn.Module, inputs: Any, outputs: Any) -> Any:
            ins = inputs if isinstance(inputs, tuple) else (inputs,)
            if any(t is outputs for t in ins):
                return outputs.clone()
            return super().forward_hook(module, inputs, outputs)

    return PassRule


def _check_rules(rules: Mapping[str, LRPRule]) -> None:
    if set(rules) != set(_ROLES) or not all(isinstance(r, LRPRule) for r in rules.values()):
        raise ValueError(f"rules must map each of {list(_ROLES)} to an LRPRule, got {dict(rules)!r}")


#: :func:`composite_description` of :data:`LRP_RULES`.
LRP_DESCRIPTION = composite_description()


def depth_third(index: int, n: int) -> str:
    """``"lower"``, ``"middle"`` or ``"upper"`` for weight layer ``index`` of ``n`` (0 = nearest the input).

    Example:
        >>> [depth_third(i, 5) for i in range(5)]
        ['lower', 'lower', 'middle', 'upper', 'upper']
        >>> depth_third(0, 1), depth_third(0, 2), depth_third(1, 2)
        ('upper', 'lower', 'upper')
    """
    if n < 1 or not 0 <= index < n:
        raise ValueError(f"layer index {index} out of range for {n} weight layers")
    if 3 * index < n - 1:
        return "lower"
    if 3 * index < 2 * (n - 1):
        return "middle"
    return "upper"


# ---------------------------------------------------------------------------- canonization
def fold_batchnorm(model: nn.Module, example: Tensor) -> list[tuple[str, str]]:
    """Fold every eval-mode BatchNorm fed directly by a convolution into it; the BatchNorm becomes an identity.

    Modifies ``model`` in place: call it on a private copy. A pair is folded when, in one no-grad
    forward of ``example``, every call of the BatchNorm takes the output of the same convolution and
    nothing else (no other leaf module) reads that convolution's output; the BatchNorm uses running
    statistics (eval mode, ``track_running_stats``). The convolution then computes
    ``conv(x) * s + (b - mean) * s + beta`` with ``s = gamma / sqrt(var + eps)``: the same function.

    Args:
        model: the (copied) model, in eval mode.
        example: an input batch (``(1, C, *S)`` suffices).

    Returns:
        The folded ``(conv name, batchnorm name)`` pairs, in forward order.
    """
    calls, _ = leaf_calls(model, example)
    producer: dict[int, LeafCall] = {id(c.output): c for c in calls if isinstance(c.output, Tensor)}
    readers: dict[int, set[str]] = {}
    for c in calls:
        for t in c.inputs:
            if isinstance(t, Tensor):
                readers.setdefault(id(t), set()).add(c.name)
    sources: dict[str, set[str]] = {}
    for c in calls:
        if not isinstance(c.module, _BATCHNORMS):
            continue
        src = producer.get(id(c.inputs[0])) if c.inputs and isinstance(c.inputs[0], Tensor) else None
        ok = src is not None and isinstance(src.module, _CONVS) and readers.get(id(src.output)) == {c.name}
        sources.setdefault(c.name, set()).add(src.name if ok and src is not None else "")
    conv_calls: dict[str, list[LeafCall]] = {}
    for c in calls:
        if isinstance(c.module, _CONVS):
            conv_calls.setdefault(c.name, []).append(c)
    folded: list[tuple[str, str]] = []
    named = dict(model.named_modules())
    for bn_name, convs in sources.items():
        bn = named[bn_name]
        if len(convs) != 1 or "" in convs or bn.training or bn.running_mean is None or bn.running_var is None:
            continue
        (conv_name,) = convs
        # every call of that convolution must feed this BatchNorm alone
        if any(readers.get(id(c.output)) != {bn_name} for c in conv_calls[conv_name]):
            continue
        if any(conv_name == c for c, _ in folded):
            continue
        _fold_pair(named[conv_name], bn)
        replace_module(model, bn_name, nn.Identity())
        folded.append((conv_name, bn_name))
    del calls, producer, readers
    return folded


def _fold_pair(conv: nn.Module, bn: nn.Module) -> None:
    with torch.no_grad():
        w = conv.weight.double()
        scale = (bn.running_var.double() + bn.eps).rsqrt()
        if bn.weight is not None:
            scale = scale * bn.weight.double()
        shift = bn.bias.double() if bn.bias is not None else torch.zeros_like(scale)
        bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
        new_w = w * scale.reshape(-1, *([1] * (w.dim() - 1)))
        new_b = (bias - bn.running_mean.double()) * scale + shift
        grad = conv.weight.requires_grad
        conv.weight = nn.Parameter(new_w.to(conv.weight.dtype), requires_grad=grad)
        conv.bias = nn.Parameter(new_b.to(conv.weight.dtype), requires_grad=grad)


class DetachedScaleNorm(nn.Module):
    """GroupNorm with its scale held constant in the backward pass: LRP's rule for a per-sample norm.

    The forward is the norm's: ``y = (x - mean_g(x)) / sqrt(var_g(x) + eps) * weight + bias`` over each
    group ``g`` of channels and all positions of one sample. The backward treats ``1 / sqrt(var + eps)`` as
    a constant (the centering keeps its gradient: it is linear and bias-free), so with LRP-0 the relevance
    of ``y`` reaches ``x`` conserved up to the share of ``bias`` (Ali et al. 2022's LayerNorm rule).

    Args:
        groups: number of groups (channels for InstanceNorm).
        weight / bias: per-channel affine (``None`` for none).
        eps: the variance floor.
        source: the name of the layer type it stands for (for reports).
    """

    def __init__(self, groups: int, weight: Tensor | None, bias: Tensor | None, eps: float,
                 source: str = "GroupNorm") -> None:
        super().__init__()
        self.groups = int(groups)
        self.eps = float(eps)
        self.source = source
        self.weight = None if weight is None else nn.Parameter(weight.detach().clone())
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())

    @classmethod
    def from_norm(cls, norm: nn.Module) -> "DetachedScaleNorm":
        """The :class:`DetachedScaleNorm` computing what ``norm`` (GroupNorm or InstanceNorm) computes."""
        groups = norm.num_groups if isinstance(norm, nn.GroupNorm) else norm.num_features
        weight = norm.weight if getattr(norm, "affine", True) else None
        bias = norm.bias if getattr(norm, "affine", True) else None
        return cls(groups, weight, bias, norm.eps, source=type(norm).__name__)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, *S) -> (B, C, *S)``."""
        b, c = x.shape[:2]
        xr = x.reshape(b, self.groups, -1)
        centered = xr - xr.mean(-1, keepdim=True)
        scale = torch.rsqrt(xr.detach().var(-1, unbiased=False, keepdim=True) + self.eps)
        y = (centered * scale).reshape(x.shape)
        shape = (1, c) + (1,) * (x.dim() - 2)
        if self.weight is not None:
            y = y * self.weight.reshape(shape)
        if self.bias is not None:
            y = y + self.bias.reshape(shape)
        return y


def detach_norm_scales(model: nn.Module) -> list[str]:
    """Replace every per-sample normalization leaf by its :class:`DetachedScaleNorm` (the same function).

    Modifies ``model`` in place: call it on a private copy. GroupNorm always; InstanceNorm when it
    normalizes with the instance's statistics (no running statistics, or in training mode).

    Returns:
        The names of the replaced modules.
    """
    replaced = []
    for name, m in leaves(model):
        if not isinstance(m, _SAMPLE_NORMS):
            continue
        if not isinstance(m, nn.GroupNorm) and m.track_running_stats and not m.training:
            continue  # running statistics: a fixed affine map, left as it is
        replace_module(model, name, DetachedScaleNorm.from_norm(m))
        replaced.append(name)
    return replaced


class ConstantMapWeighting(nn.Module):
    """A gated model's features x map with the map held constant: LRP's signal-take-all rule for a gate.

    The forward computes what the :class:`~dualattn.models.FeatureWeighting` it stands for computes (the same
    ops on the same values: ``features * N w``, or the attention-pooled ``sum_i w_i v_i``), with the map ``w``
    detached. The product is then, per sample, a linear layer of the features without bias, and LRP-0 on
    it hands all relevance of the product to the features in proportion to their contributions
    (``R_v = v w R_p / p = R_p`` elementwise; pooled: ``R_{v_i} = w_i v_i R_g / g``) and none to the map:
    the gate's convolutions, a witness and the exact projection that compute the map receive no relevance.
    This is the standard LRP treatment of a multiplicative gate (Arras et al., "Explaining Recurrent Neural
    Network Predictions in Sentiment Analysis", 2017: the gate is a constant, the signal takes all), and
    the one that conserves relevance through the gates.

    Args:
        pool: the :class:`~dualattn.models.FeatureWeighting`'s ``pool``.
    """

    def __init__(self, *, pool: bool = False) -> None:
        super().__init__()
        self.pool = bool(pool)

    @classmethod
    def from_weighting(cls, weighting: FeatureWeighting) -> "ConstantMapWeighting":
        """The stand-in for ``weighting``."""
        return cls(pool=weighting.pool)

    def extra_repr(self) -> str:
        return "pool=True" if self.pool else ""

    def forward(self, features: Tensor, log_weights: Tensor) -> Tensor:
        """``FeatureWeighting.forward`` with ``log_weights`` detached."""
        fn = pool_features if self.pool else weight_features
        return fn(features, log_weights.detach())


def hold_maps_constant(model: nn.Module) -> list[str]:
    """Replace every :class:`~dualattn.models.FeatureWeighting` by its :class:`ConstantMapWeighting`.

    Modifies ``model`` in place: call it on a private copy. The logits do not change (the same function);
    only the backward pass does: no gradient, hence no relevance, reaches the maps through the products.

    Returns:
        The names of the replaced modules.
    """
    replaced = [name for name, m in model.named_modules() if isinstance(m, FeatureWeighting)]
    named = dict(model.named_modules())
    for name in replaced:
        replace_module(model, name, ConstantMapWeighting.from_weighting(named[name]))
    return replaced


def split_residual_sums(model: nn.Module, example: Tensor) -> list[str]:
    """Replace each tensor sum ``a + b`` inside a submodule's ``forward`` by a Captum ``Addition_Module``.

    Modifies ``model`` in place: call it on a private copy. Each non-container submodule whose
    ``forward`` takes one tensor is traced by ``torch.fx`` with its children as opaque calls; every
    ``+`` of two tensors of the same shape (shapes from running the trace on the input the submodule
    got in a no-grad forward of ``example``) becomes a call of a new child ``lrp_sum<k>``, and the
    submodule's ``forward`` becomes the rewritten code (looking its children up on the submodule itself,
    so later replacements of a child are seen). Submodules that do not trace are left alone.

    Args:
        model: the (copied) model.
        example: an input batch.

    Returns:
        The names of the rewritten submodules.
    """
    fx = torch.fx
    from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata

    addition = optional_import("captum.attr._utils.custom_modules", extra="dev", purpose="LRP").Addition_Module

    class _Shallow(fx.Tracer):
        def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:  # noqa: ARG002
            return True

    candidates = {}
    for name, m in model.named_modules():
        if not name or not list(m.children()) or isinstance(m, _CONTAINERS):
            continue
        try:
            params = list(inspect.signature(m.forward).parameters.values())
        except (TypeError, ValueError):
            continue
        if len(params) == 1 and params[0].kind in (params[0].POSITIONAL_ONLY, params[0].POSITIONAL_OR_KEYWORD):
            candidates[name] = m
    seen: dict[str, Tensor] = {}

    def record(name: str) -> Any:
        def hook(_mod: nn.Module, inp: tuple[Any, ...]) -> None:
            if len(inp) == 1 and isinstance(inp[0], Tensor):
                seen.setdefault(name, inp[0])

        return hook

    handles = [m.register_forward_pre_hook(record(name)) for name, m in candidates.items()]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
    rewritten: list[str] = []
    for name, m in candidates.items():
        if name not in seen:
            continue
        try:
            graph = _Shallow().trace(m)
            traced = fx.GraphModule(m, graph)
            with torch.no_grad():
                ShapeProp(traced).propagate(seen[name])
        except Exception as exc:  # noqa: BLE001 - any tracing failure leaves the submodule as it is
            logger.debug("LRP: %s does not trace (%s); its sums are left as they are", name, exc)
            continue

        def is_tensor(node: Any) -> bool:
            return isinstance(node, fx.Node) and isinstance(node.meta.get("tensor_meta"), TensorMetadata)

        sums = [
            node for node in graph.nodes
            if node.op == "call_function" and node.target in (operator.add, torch.add) and not node.kwargs
            and len(node.args) == 2 and all(is_tensor(a) for a in node.args)
            and node.args[0].meta["tensor_meta"].shape == node.args[1].meta["tensor_meta"].shape
        ]
        if not sums:
            continue
        for k, node in enumerate(sums):
            child = f"lrp_sum{k}"
            while hasattr(m, child):
                child += "_"
            module = addition()
            m.add_module(child, module)
            traced.add_module(child, module)  # the graph's owning module checks its targets
            with graph.inserting_after(node):
                new = graph.call_module(child, args=tuple(node.args))
            node.replace_all_uses_with(new)
            graph.erase_node(node)
        graph.lint()
        code = fx.GraphModule(m, graph)
        m.forward = types.MethodType(type(code).forward, m)
        rewritten.append(name)
    return rewritten


def _not_relu_fed(out: Any, readers: dict[int, list[LeafCall]]) -> str:
    """Why ``out`` may carry relevance on negative values (``""`` when every path from ``out`` reaches a
    ReLU through identities and BatchNorms only, which the gamma rule needs).

    Uses of ``out`` outside leaf modules (a functional ``+``, a product) are not seen: a tensor that no
    leaf reads counts as not followed by a ReLU.
    """
    frontier, seen = [out], set()
    while frontier:
        t = frontier.pop()
        if id(t) in seen:
            continue
        seen.add(id(t))
        calls = readers.get(id(t), [])
        if not calls:
            return "output not followed by a ReLU (e.g. a residual sum): the middle rule"
        for c in calls:
            if isinstance(c.module, nn.ReLU):
                continue
            if isinstance(c.module, (DetachedScaleNorm, *_SAMPLE_NORMS)):
                kind = getattr(c.module, "source", type(c.module).__name__)
                return f"output normalized per sample ({kind}) before its ReLU: the middle rule"
            if not isinstance(c.module, (nn.Identity, *_BATCHNORMS)) or not isinstance(c.output, Tensor):
                return "output not followed by a ReLU (e.g. a residual sum): the middle rule"
            if c.output is not t:
                frontier.append(c.output)
    return ""


def _composite_rows(model: nn.Module, example: Tensor, rules: Mapping[str, LRPRule]) -> tuple[list[dict[str, str]],
                                                                                         dict[int, LRPRule]]:
    """The rule of every leaf (by ``id``) and the weight layers' rows, from the order one forward runs them."""
    calls, _ = leaf_calls(model, example)
    readers: dict[int, list[LeafCall]] = {}
    for c in calls:
        for t in c.inputs:
            if isinstance(t, Tensor):
                readers.setdefault(id(t), []).append(c)
    order: list[tuple[str, nn.Module]] = []
    outputs: dict[int, list[Any]] = {}
    for c in calls:
        if not isinstance(c.module, _WEIGHT_LAYERS):
            continue
        if all(c.module is not m for _, m in order):
            order.append((c.name, c.module))
        outputs.setdefault(id(c.module), []).append(c.output)
    # depth thirds count only the layers relevance reaches: the convolutions that compute a map the gate rule
    # holds constant (gates, witness) get none, so a gated model's backbone takes the baseline's composite
    reached = _layers_reaching_the_logits(model, example)
    if reached:
        idle = [(n, m) for n, m in order if n not in reached]
        order = [(n, m) for n, m in order if n in reached]
    else:
        idle = []
    chosen: dict[int, LRPRule] = {}
    rows = []
    for i, (name, m) in enumerate(order):
        role = depth_third(i, len(order))
        note = ""
        if i == 0 and len(order) > 1:
            role = "input"
        rule = rules[role]
        why = next((w for w in (_not_relu_fed(o, readers) for o in outputs[id(m)]) if w), "") if role == "lower" else ""
        if why:
            rule = rules["middle"]
            note = why
        chosen[id(m)] = rule
        rows.append({"layer": name, "type": type(m).__name__, "role": role, "rule": rule.label, "note": note})
    for name, m in idle:
        chosen[id(m)] = LRPRule("zero")
        rows.append({"layer": name, "type": type(m).__name__, "role": "none", "rule": LRPRule("zero").label,
                     "note": "computes only a map the gate rule holds constant: no relevance reaches it"})
    del calls, readers, outputs
    for _, m in leaves(model):
        if id(m) in chosen or isinstance(m, _CAPTUM_NONLINEAR):
            continue
        if isinstance(m, _WEIGHT_LAYERS):
            chosen[id(m)] = LRPRule("zero")  # never called in the forward
        elif isinstance(m, _ELEMENTWISE) or isinstance(m, _BATCHNORMS):
            chosen[id(m)] = LRPRule("identity")
        else:  # ConstantMapWeighting, DetachedScaleNorm, pooling, residual sums, anything else: LRP-0
            chosen[id(m)] = LRPRule("zero")
    return rows, chosen


@dataclasses.dataclass
class LRPPlan:
    """What :func:`prepare_lrp_model` did to the copy, and the rule of every weight layer.

    Attributes:
        layers: one row per weight layer in forward order: ``layer`` (name in the prepared copy),
            ``type``, ``role`` (``input``, ``lower``, ``middle``, ``upper``), ``rule`` (its label) and
            ``note`` (why a lower layer has the middle rule; empty otherwise).
        batchnorm_folded: ``(conv, batchnorm)`` name pairs folded.
        norms_detached: per-sample normalizations replaced by :class:`DetachedScaleNorm`.
        maps_held_constant: products of features and maps replaced by :class:`ConstantMapWeighting`.
        residual_sums: submodules whose sums became ``Addition_Module`` calls.
        canonized: False when the canonized copy did not reproduce the logits and LRP fell back to
            the uncanonized one.
        rules: leaf ``id`` -> rule (internal: attached before the Captum call).
    """

    layers: list[dict[str, str]]
    batchnorm_folded: list[tuple[str, str]]
    residual_sums: list[str]
    canonized: bool
    norms_detached: list[str] = dataclasses.field(default_factory=list)
    maps_held_constant: list[str] = dataclasses.field(default_factory=list)
    rules: dict[int, LRPRule] = dataclasses.field(repr=False, default_factory=dict)


def prepare_lrp_model(
    model: nn.Module, example: Tensor, rules: Mapping[str, LRPRule] = LRP_RULES
) -> tuple[nn.Module, LRPPlan]:
    """Canonize a private copy for LRP and choose every layer's rule (module docstring).

    Args:
        model: a private copy in eval mode (e.g. from :func:`~dualattn.explain.isolated_copy`); it is
            not modified: the canonized model is a deep copy of it.
        example: ``(1, C, *S)``: the forward that finds the BatchNorm pairs, the sums, the depth order
            and checks the logits.
        rules: the composite (:data:`LRP_RULES`).

    Returns:
        The model to give Captum's ``LRP`` and the :class:`LRPPlan` (rules are attached by
        :func:`attach_rules`, right before each Captum call).
    """
    _check_rules(rules)
    example = example.detach()
    with torch.no_grad():
        reference = model(example)
    prepared = copy.deepcopy(model)
    make_out_of_place(prepared)
    gates = hold_maps_constant(prepared)
    folded = fold_batchnorm(prepared, example)
    norms = detach_norm_scales(prepared)
    sums = split_residual_sums(prepared, example)
    split_reused_modules(prepared, example)
    with torch.no_grad():
        got = prepared(example)
    tol = 1e-4 * float(reference.abs().max().clamp_min(1.0))
    canonized = bool(got.shape == reference.shape and torch.allclose(got, reference, rtol=1e-4, atol=tol))
    if not canonized:
        warnings.warn(
            "LRP: the canonized copy (BatchNorm folded, sums split) does not reproduce the model's logits; "
            "LRP runs on the uncanonized model (BatchNorm passes relevance unchanged, sums are not split)",
            RuntimeWarning, stacklevel=3,
        )
        prepared = copy.deepcopy(model)
        make_out_of_place(prepared)
        gates = hold_maps_constant(prepared)  # a rule, not a canonization: the same function
        split_reused_modules(prepared, example)
        folded, sums, norms = [], [], []
    rows, chosen = _composite_rows(prepared, example, rules)
    return prepared, LRPPlan(rows, folded, sums, canonized, norms_detached=norms, maps_held_constant=gates,
                             rules=chosen)


def attach_rules(model: nn.Module, plan: LRPPlan) -> None:
    """Set a fresh Captum rule (``.rule``) on every leaf the plan names (Captum deletes them after each call)."""
    for _, m in leaves(model):
        rule = plan.rules.get(id(m))
        if rule is not None:
            m.rule = rule.build()


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*hooks and attributes on non-linear", category=UserWarning)
        warnings.filterwarnings("ignore", message=".*Setting forward, backward hooks", category=UserWarning)
        yield


def lrp_attribution(
    model: nn.Module, images: Tensor, *, target: Tensor, rules: Mapping[str, LRPRule] = LRP_RULES
) -> Tensor:
    """Composite-rule LRP relevance of every input pixel, ``(B, C, *S)`` (Captum ``LRP``).

    Runs on a private canonized copy (:func:`prepare_lrp_model`); the caller's model is untouched.

    Args:
        model: the classifier.
        images: ``(B, C, *S)``.
        target: ``(B,)`` class per sample.
        rules: the composite by role (default :data:`LRP_RULES`).

    Returns:
        ``(B, C, *S)`` float relevance (Captum's: it sums to the target logit where relevance is
        conserved).
    """
    lrp_cls = optional_import("captum.attr", extra="dev", purpose="LRP").LRP
    x = images.detach().clone().requires_grad_(True)
    # LRP hooks every leaf's output: parameters must require grad so that outputs depending only on
    # parameters (e.g. a global witness) can take hooks; gradients are only taken w.r.t. the input.
    with isolated_copy(model, requires_grad=True) as clone, _quiet():
        prepared, plan = prepare_lrp_model(clone, x[:1], rules)
        attach_rules(prepared, plan)
        out = lrp_cls(prepared).attribute(x, target=target)
    return out.detach().float()


def describe_lrp_rules(
    model: nn.Module, images: Tensor, rules: Mapping[str, LRPRule] = LRP_RULES
) -> dict[str, Any]:
    """Which rule ``lrp`` applies to each layer of ``model`` (JSON-serializable, for reports).

    Args:
        model: the classifier (not modified).
        images: ``(B, C, *S)``; the first image is used.
        rules: the composite (default :data:`LRP_RULES`).

    Returns:
        ``{"description", "rules": {role: label}, "layers": [{"layer", "type", "role", "rule", "note",
        "gets_relevance"}, ...], "batchnorm_folded": [[conv, bn], ...], "norms_detached": [...],
        "residual_sums": [...], "maps_held_constant": [...], "gate_rule", "canonized": bool}``. A layer with
        ``gets_relevance`` False only computes an attention map that the gate rule holds constant (a gate's
        convolutions, a witness, the first pass of ``two_pass`` after the finest gate): its rule is listed
        but never applied. ``maps_held_constant`` names the products of features and map
        (:class:`~dualattn.models.FeatureWeighting`) that take ``gate_rule``.
    """
    example = images[:1].detach()
    with isolated_copy(model, requires_grad=True) as clone, _quiet():
        prepared, plan = prepare_lrp_model(clone, example, rules)
        reached = _layers_reaching_the_logits(prepared, example)
    return {
        "description": composite_description(rules),
        "rules": {role: rules[role].label for role in _ROLES},
        "layers": [{**row, "gets_relevance": row["layer"] in reached} for row in plan.layers],
        "batchnorm_folded": [list(p) for p in plan.batchnorm_folded],
        "norms_detached": list(plan.norms_detached),
        "residual_sums": list(plan.residual_sums),
        "maps_held_constant": list(plan.maps_held_constant),
        "gate_rule": GATE_RULE,
        "canonized": plan.canonized,
    }


def _layers_reaching_the_logits(model: nn.Module, example: Tensor) -> set[str]:
    """Names of the weight layers of the prepared ``model`` whose output the logits depend on through autograd:
    the layers relevance reaches (not those computing only a map held constant, e.g. the gates' convolutions)."""
    outs: dict[str, Tensor] = {}
    handles = [
        m.register_forward_hook(lambda _m, _i, out, name=name: outs.setdefault(name, out))
        for name, m in leaves(model) if isinstance(m, _WEIGHT_LAYERS)
    ]
    try:
        with torch.enable_grad():
            logits = model(example)
    finally:
        for h in handles:
            h.remove()
    names = [n for n, t in outs.items() if isinstance(t, Tensor) and t.requires_grad]
    if not names or not logits.requires_grad:
        return set()
    grads = torch.autograd.grad(logits.sum(), [outs[n] for n in names], allow_unused=True)
    return {n for n, g in zip(names, grads) if g is not None}
