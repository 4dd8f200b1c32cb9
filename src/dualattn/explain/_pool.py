"""Shared helpers: normalize pixel attributions and pool them to a block's grid; find that grid."""

from __future__ import annotations

import contextlib
import logging
from typing import Iterator, Sequence

import torch
from torch import Tensor, nn

from ..grids import resize_mass
from ._state import eval_mode

__all__ = ["normalize_and_pool", "minmax_per_channel", "block_grid", "hooked_output", "resolve_target"]

logger = logging.getLogger(__name__)


def minmax_per_channel(attr: Tensor) -> Tensor:
    """Min-max normalize every channel of every sample to ``[0, 1]`` (constant channel -> 0).

    Args:
        attr: ``(B, C, *S)``.

    Returns:
        ``(B, C, *S)`` float tensor.
    """
    if attr.dim() < 3:
        raise ValueError(f"attr must be (B, C, *S), got shape {tuple(attr.shape)}")
    flat = attr.detach().float().reshape(attr.shape[0], attr.shape[1], -1)
    lo = flat.min(dim=2, keepdim=True).values
    hi = flat.max(dim=2, keepdim=True).values
    span = hi - lo
    out = torch.where(span > 0, (flat - lo) / span.clamp_min(torch.finfo(flat.dtype).tiny), torch.zeros_like(flat))
    return out.reshape(attr.shape)


def normalize_and_pool(attr: Tensor, grid: Sequence[int]) -> Tensor:
    """DESIGN.md §2 for pixel-level explainers: per-channel min-max per sample, sum over
    channels, sum-pool (mass-preserving, :func:`dualattn.grids.resize_mass`) to ``grid``.

    Args:
        attr: ``(B, C, *S)`` pixel attributions.
        grid: the block's grid, e.g. ``(8, 8)``.

    Returns:
        ``(B, 1, *grid)`` float tensor.
    """
    summed = minmax_per_channel(attr).sum(dim=1, keepdim=True)
    return resize_mass(summed, tuple(grid))


@contextlib.contextmanager
def hooked_output(module: nn.Module) -> Iterator[dict[str, Tensor]]:
    """Record the (last) output of ``module`` in the yielded dict under ``"out"``; the hook is
    removed on exit, whatever happens."""
    store: dict[str, Tensor] = {}

    def hook(_m: nn.Module, _i: object, out: object) -> None:
        if isinstance(out, Tensor):
            store["out"] = out.detach()

    handle = module.register_forward_hook(hook)
    try:
        yield store
    finally:
        handle.remove()


def block_grid(model: nn.Module, images: Tensor, block: str) -> tuple[int, ...]:
    """Spatial grid of ``block`` for inputs shaped like ``images``.

    For a ViT, its patch grid (``model.grid``) whatever the block. Otherwise looks at the output of ``model.feature_layers()[block]`` (one no-grad forward of the first
    image in eval mode; mode and hooks restored), falling back to the attention map of that
    block from ``forward_with_attention``.

    Raises:
        ValueError: if the model has no such block.
    """
    spatial = images.dim() - 2
    if hasattr(model, "vit_attention_maps") and isinstance(getattr(model, "grid", None), tuple):
        return tuple(int(s) for s in model.grid)  # a ViT has one grid: its patches
    x = images[:1].detach()
    layers = model.feature_layers() if hasattr(model, "feature_layers") else {}
    with torch.no_grad(), eval_mode(model):
        if block in layers:
            with hooked_output(layers[block]) as store:
                model(x)
            out = store.get("out")
            if out is not None and out.dim() == spatial + 2:
                return tuple(int(s) for s in out.shape[2:])
        if hasattr(model, "forward_with_attention"):
            att = model.forward_with_attention(x)
            for maps in (att.mu, att.tau):
                if block in maps:
                    return tuple(int(s) for s in maps[block].shape[1:])
    available = sorted(set(layers) | set(getattr(model, "map_blocks", ()) or ()))
    raise ValueError(f"model has no block {block!r} with a spatial grid; available: {available}")


def resolve_target(model: nn.Module, images: Tensor, target: int | Sequence[int] | Tensor | None) -> Tensor:
    """Class index per sample: ``target`` broadcast to ``(B,)``, or the predicted class when ``None``.

    Raises:
        ValueError: for a target of the wrong length or outside ``[0, num_classes)``.
    """
    b = images.shape[0]
    if target is None:
        with torch.no_grad(), eval_mode(model):
            return model(images.detach()).argmax(dim=1)
    t = torch.as_tensor(target, dtype=torch.long).flatten()
    if t.numel() == 1:
        t = t.expand(b).clone()
    if t.numel() != b:
        raise ValueError(f"target must be an int or have one entry per image ({b}), got {t.numel()} entries")
    n_classes = getattr(model, "num_classes", None)
    if (t < 0).any() or (n_classes is not None and (t >= n_classes).any()):
        raise ValueError(f"target {t.tolist()} outside [0, {n_classes})")
    return t.to(images.device)
