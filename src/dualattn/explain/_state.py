"""Context managers that leave a caller's model exactly as they found it."""

from __future__ import annotations

import contextlib
import copy
from typing import Iterator

from torch import nn

__all__ = ["eval_mode", "isolated_copy"]


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule in eval mode; restore each one's own ``training`` flag on exit.

    Restores per module (not ``model.train()``), so a model with, e.g., frozen BatchNorm in
    eval inside a training model comes back unchanged.
    """
    flags = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        yield model
    finally:
        for m, flag in flags:
            m.training = flag


@contextlib.contextmanager
def isolated_copy(model: nn.Module, *, requires_grad: bool = False) -> Iterator[nn.Module]:
    """Yield a deep copy of ``model`` in eval mode, parameters' ``requires_grad`` set to ``requires_grad``.

    Attribution methods that attach rules, hooks or replace modules (LRP, DeepLIFT) work on
    this copy, so nothing they do can leak into the caller's model (mode, ``requires_grad``,
    hooks, ``.grad``, attributes).
    """
    clone = copy.deepcopy(model)
    clone.eval()
    for p in clone.parameters():
        p.requires_grad_(requires_grad)
        p.grad = None
    try:
        yield clone
    finally:
        del clone
