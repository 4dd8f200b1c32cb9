"""Post-hoc explainers through Captum, on a private copy of the model.

* ``gradcam``: :class:`captum.attr.LayerGradCam` on ``model.feature_layers()[block]`` with the
  usual ReLU; ``gradcam_norelu`` without it (the sign matters: where the class evidence of a
  layer is negative, the ReLU version sits at chance). Returned on the layer's own grid.
* ``input_x_gradient``, ``deeplift`` (baseline 0), ``lrp`` (epsilon rules), ``integrated_gradients``
  (baseline 0, ``n_steps``): pixel attributions ``(B, C, *S)``, then per-channel min-max per
  sample, sum over channels, sum-pool to the block's grid (DESIGN.md §2).

Every method works on :func:`~dualattn.explain._state.isolated_copy` of the model, so nothing
Captum does (hooks, ``.rule`` attributes, temporary weights, ``requires_grad``) can reach the
caller's model. On that copy:

* in-place activations are made out-of-place (backward hooks on in-place ops fail);
* DeepLIFT needs one activation module per use: an activation module called more than once per
  forward is replaced by a dispatcher holding one copy per call (:func:`split_reused_modules`);
  LRP likewise refuses reused layers, so every reused leaf module is split for LRP;
* LRP: Captum knows rules only for a few 2-D layer types and deletes every ``.rule`` after each
  call, so rules are set on every leaf module of unknown type before *every* call
  (:func:`attach_lrp_rules`).
"""

from __future__ import annotations

import copy
import logging
import warnings
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from .._optional import optional_import
from ._pool import block_grid, normalize_and_pool, resolve_target
from ._state import isolated_copy

__all__ = [
    "POSTHOC_METHODS",
    "gradcam_map",
    "pixel_attribution",
    "posthoc_map",
    "split_reused_modules",
    "attach_lrp_rules",
]

logger = logging.getLogger(__name__)

PIXEL_METHODS: tuple[str, ...] = ("input_x_gradient", "deeplift", "lrp", "integrated_gradients")
POSTHOC_METHODS: tuple[str, ...] = ("gradcam", "gradcam_norelu", *PIXEL_METHODS)

#: Elementwise activations (same shape in and out): LRP passes relevance through unchanged.
_ELEMENTWISE = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Sigmoid, nn.Tanh, nn.Softplus, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Identity,
    nn.Dropout, nn.Dropout2d, nn.Dropout3d, nn.Softmax,
)


def _captum_attr() -> Any:
    return optional_import("captum.attr", extra="dev", purpose="post-hoc explainers (GradCAM, IG, LRP, DeepLIFT)")


class _PerCall(nn.Module):
    """Calls its ``k``-th copy on the ``k``-th call of a forward pass (counter reset by a root pre-hook)."""

    def __init__(self, module: nn.Module, n: int) -> None:
        super().__init__()
        self.copies = nn.ModuleList([copy.deepcopy(module) for _ in range(n)])
        self.calls = 0

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        k = min(self.calls, len(self.copies) - 1)
        self.calls += 1
        return self.copies[k](*args, **kwargs)


def _make_out_of_place(model: nn.Module) -> None:
    for m in model.modules():
        if getattr(m, "inplace", False) is True:
            m.inplace = False


def split_reused_modules(
    model: nn.Module, example: Tensor, *, only: tuple[type, ...] | None = None
) -> nn.Module:
    """Give every leaf module that runs more than once per forward one copy per call.

    Modifies ``model`` in place (call it on a copy). Calls are counted on one no-grad forward of
    ``example``; a root forward pre-hook resets the dispatch counters at every forward, so the
    ``k``-th use always goes to the ``k``-th copy.

    Args:
        model: the (copied) model.
        example: an input batch (``(1, C, *S)`` suffices).
        only: split only leaves of these types (e.g. the activations DeepLIFT hooks); all when None.

    Returns:
        ``model``.
    """
    counts: dict[int, int] = {}
    handles = []
    leaves = [(n, m) for n, m in model.named_modules() if n and not list(m.children())]
    for _, m in leaves:
        handles.append(m.register_forward_pre_hook(lambda mod, _i: counts.__setitem__(id(mod), counts.get(id(mod), 0) + 1)))
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
    dispatchers: list[_PerCall] = []
    named = dict(model.named_modules())
    for name, m in leaves:
        n = counts.get(id(m), 0)
        if n <= 1 or (only is not None and not isinstance(m, only)):
            continue
        parent_name, _, attr = name.rpartition(".")
        parent = named[parent_name] if parent_name else model
        wrapper = _PerCall(m, n)
        if isinstance(parent, (nn.ModuleList, nn.Sequential)) and attr.isdigit():
            parent[int(attr)] = wrapper
        elif isinstance(parent, nn.ModuleDict):
            parent[attr] = wrapper
        else:
            setattr(parent, attr, wrapper)
        dispatchers.append(wrapper)
        logger.debug("split module %s used %d times per forward", name, n)
    if dispatchers:

        def reset(_mod: nn.Module, _inputs: object) -> None:
            for d in dispatchers:
                d.calls = 0

        model.register_forward_pre_hook(reset)
    return model


def attach_lrp_rules(model: nn.Module) -> None:
    """Set a Captum LRP rule on every leaf module whose type Captum has no default rule for.

    Captum deletes the ``.rule`` attributes after each ``attribute`` call: call this before every call.
    Elementwise activations, dropout, identity and softmax get the identity rule (relevance
    passes through); every other unknown leaf (3-D convolutions and pooling, norms, ...) the
    epsilon rule.
    """
    lrp_mod = optional_import("captum.attr._core.lrp", extra="dev", purpose="LRP")
    rules = optional_import("captum.attr._utils.lrp_rules", extra="dev", purpose="LRP")
    known = set(lrp_mod.SUPPORTED_LAYERS_WITH_RULES) | set(lrp_mod.SUPPORTED_NON_LINEAR_LAYERS)
    for m in model.modules():
        if list(m.children()) or type(m) in known:
            continue
        m.rule = rules.IdentityRule() if isinstance(m, _ELEMENTWISE) else rules.EpsilonRule()


def _feature_layer(model: nn.Module, block: str) -> nn.Module:
    if not hasattr(model, "feature_layers"):
        raise ValueError(f"{type(model).__name__} has no feature_layers(); GradCAM needs one")
    layers = model.feature_layers()
    if block not in layers:
        raise ValueError(f"unknown block {block!r}; feature layers: {sorted(layers)}")
    return layers[block]


def gradcam_map(model: nn.Module, images: Tensor, *, block: str, target: Tensor, relu: bool = True) -> Tensor:
    """LayerGradCam on ``feature_layers()[block]`` (on a private copy of ``model``).

    Args:
        model: any model with ``feature_layers()``.
        images: ``(B, C, *S)``.
        block: the block whose layer is explained.
        target: ``(B,)`` class per sample.
        relu: the usual ReLU on the weighted sum (``False``: ``gradcam_norelu``).

    Returns:
        ``(B, 1, *grid)`` on the layer's grid.
    """
    attr_mod = _captum_attr()
    with isolated_copy(model) as clone:
        layer = _feature_layer(clone, block)
        cam = attr_mod.LayerGradCam(clone, layer)
        x = images.detach().clone().requires_grad_(True)
        out = cam.attribute(x, target=target, relu_attributions=relu)
    return out.detach().float()


def pixel_attribution(
    model: nn.Module, images: Tensor, *, method: str, target: Tensor, n_steps: int = 32,
    internal_batch_size: int | None = None,
) -> Tensor:
    """Raw pixel attributions ``(B, C, *S)`` of one of :data:`PIXEL_METHODS` (baseline 0).

    Runs on a private copy of ``model`` prepared as the module docstring says.
    """
    if method not in PIXEL_METHODS:
        raise ValueError(f"unknown pixel method {method!r}; valid: {', '.join(PIXEL_METHODS)}")
    if n_steps < 2:
        raise ValueError(f"n_steps must be >= 2, got {n_steps}")
    attr_mod = _captum_attr()
    x = images.detach().clone().requires_grad_(True)
    # LRP hooks every leaf's output: parameters must require grad so that outputs depending only on
    # parameters (e.g. a global witness) can take hooks; gradients are only taken w.r.t. the input.
    with isolated_copy(model, requires_grad=(method == "lrp")) as clone, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*hooks and attributes on non-linear", category=UserWarning)
        _make_out_of_place(clone)
        if method == "input_x_gradient":
            out = attr_mod.InputXGradient(clone).attribute(x, target=target)
        elif method == "integrated_gradients":
            out = attr_mod.IntegratedGradients(clone).attribute(
                x, baselines=torch.zeros_like(x), target=target, n_steps=n_steps,
                internal_batch_size=internal_batch_size,
            )
        elif method == "deeplift":
            from captum.attr._core.deep_lift import SUPPORTED_NON_LINEAR

            split_reused_modules(clone, x[:1], only=tuple(SUPPORTED_NON_LINEAR))
            out = attr_mod.DeepLift(clone).attribute(x, baselines=torch.zeros_like(x), target=target)
        else:  # lrp
            split_reused_modules(clone, x[:1])
            attach_lrp_rules(clone)
            out = attr_mod.LRP(clone).attribute(x, target=target)
    return out.detach().float()


def posthoc_map(
    model: nn.Module,
    images: Tensor,
    *,
    method: str,
    block: str = "block3",
    target: int | Sequence[int] | Tensor | None = None,
    grid: Sequence[int] | None = None,
    **kw: Any,
) -> Tensor:
    """One of :data:`POSTHOC_METHODS` as a ``(B, 1, *grid)`` map on ``block``'s grid.

    Args:
        model: the classifier (the paper: the baseline).
        images: ``(B, C, *S)``.
        method: ``gradcam``, ``gradcam_norelu``, ``input_x_gradient``, ``deeplift``, ``lrp`` or
            ``integrated_gradients``.
        block: block whose grid (and, for GradCAM, layer) is used.
        target: class to explain (int or ``(B,)``); the predicted class when ``None``.
        grid: override the block's grid (pixel methods only).
        **kw: ``n_steps``/``internal_batch_size`` for integrated gradients.
    """
    if method not in POSTHOC_METHODS:
        raise ValueError(f"unknown post-hoc method {method!r}; valid: {', '.join(POSTHOC_METHODS)}")
    t = resolve_target(model, images, target)
    if method in ("gradcam", "gradcam_norelu"):
        return gradcam_map(model, images, block=block, target=t, relu=(method == "gradcam"))
    g = tuple(grid) if grid is not None else block_grid(model, images, block)
    attr = pixel_attribution(model, images, method=method, target=t, **kw)
    return normalize_and_pool(attr, g)
