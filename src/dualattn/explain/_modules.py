"""Module surgery on private copies of a model (never on the caller's): what Captum's DeepLIFT and LRP need.

* :func:`make_out_of_place`: in-place activations become out-of-place (backward hooks on in-place ops
  fail);
* :func:`split_reused_modules`: a leaf module called more than once per forward gets one copy per call
  (DeepLIFT and LRP keep per-module state and refuse reused modules);
* :func:`leaf_calls`: every leaf module's calls of one forward, in order;
* :func:`replace_module`: put a module in place of a named submodule.
"""

from __future__ import annotations

import copy
import logging
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

__all__ = ["LeafCall", "leaf_calls", "leaves", "make_out_of_place", "replace_module", "split_reused_modules"]

logger = logging.getLogger(__name__)


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


class LeafCall(NamedTuple):
    """One call of a leaf module during :func:`leaf_calls`' forward."""

    name: str
    module: nn.Module
    inputs: tuple[Any, ...]
    output: Any


def leaves(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every leaf submodule (no children), in registration order."""
    return [(n, m) for n, m in model.named_modules() if n and not list(m.children())]


def leaf_calls(model: nn.Module, example: Tensor) -> tuple[list[LeafCall], Any]:
    """Every leaf call of one no-grad forward of ``example``, in execution order, and the model's output.

    The recorded tensors stay referenced by the result, so ``id()`` of a tensor identifies it while the
    result lives (e.g. "this BatchNorm's input is that convolution's output"). Hooks are removed on exit.
    """
    calls: list[LeafCall] = []
    handles = []
    for name, m in leaves(model):
        handles.append(m.register_forward_hook(
            lambda mod, inp, out, name=name: calls.append(LeafCall(name, mod, tuple(inp), out))
        ))
    try:
        with torch.no_grad():
            out = model(example)
    finally:
        for h in handles:
            h.remove()
    return calls, out


def make_out_of_place(model: nn.Module) -> None:
    """Set ``inplace = False`` on every submodule that has it (modifies ``model``)."""
    for m in model.modules():
        if getattr(m, "inplace", False) is True:
            m.inplace = False


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` where the submodule ``name`` (dotted, as in ``named_modules``) is (modifies ``model``)."""
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    if isinstance(parent, (nn.Sequential, nn.ModuleList)) and attr.isdigit():
        parent[int(attr)] = new
    elif isinstance(parent, nn.ModuleDict):
        parent[attr] = new
    else:
        setattr(parent, attr, new)


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
    calls, _ = leaf_calls(model, example)
    counts: dict[int, int] = {}
    for call in calls:
        counts[id(call.module)] = counts.get(id(call.module), 0) + 1
    del calls
    dispatchers: list[_PerCall] = []
    for name, m in leaves(model):
        n = counts.get(id(m), 0)
        if n <= 1 or (only is not None and not isinstance(m, only)):
            continue
        wrapper = _PerCall(m, n)
        replace_module(model, name, wrapper)
        dispatchers.append(wrapper)
        logger.debug("split module %s used %d times per forward", name, n)
    if dispatchers:

        def reset(_mod: nn.Module, _inputs: object) -> None:
            for d in dispatchers:
                d.calls = 0

        model.register_forward_pre_hook(reset)
    return model
