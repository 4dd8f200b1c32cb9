"""What an evaluation computes: one frozen, validated settings object (as ``TrainConfig`` and ``DemoPreset``).

Example:
    >>> from dualattn.evaluate.settings import EvalSettings
    >>> s = EvalSettings(methods=("exact", "gradcam"), perturbation_steps=4)
    >>> s.fractions
    (0.0, 0.25, 0.5, 0.75, 1.0)
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Sequence

import torch

from ..explain import METHOD_ALIASES, list_methods
from .perturbation import FILLS

__all__ = ["EvalSettings", "FILLS"]


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    """Everything that decides an evaluation's numbers (and where it runs).

    Attributes:
        data: dataset folder or embedded name; ``None``: the first run's ``config.yaml`` dataset.
        methods: ``"all"`` or method names (:func:`dualattn.explain.list_methods`);
            ``raw_channel_<k>`` are added for every data channel under ``"all"``.
        blocks: blocks to explain (ViT maps use their patch grid, recorded as block ``"patches"``).
        split: data split to evaluate on.
        size: evaluation image size; ``None``: the runs' common training size (``image_size``).
        max_images: evaluate at most this many images (the first ones, in split order).
        batch_size: images per explain call.
        fills: what replaces the removed pixels of the perturbation protocol, each scored
            (:data:`dualattn.evaluate.perturbation.FILLS`: ``mean``, ``background``, ``blur``, ``road``; ``zero``
            too); the first is the one behind the un-suffixed keys (``auc_least_first``: the paper's protocol).
        perturbation_steps: fractions 0, 1/steps, ..., 1.
        sanity_images: images used for the randomization check (0 disables it).
        ig_steps: integrated-gradients steps.
        seed: seed of the ``random`` reference and of the weight randomization.
        cache_dir: cache for embedded datasets.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or ``"auto"``; models and batches go there,
            metrics are computed on the CPU.
        resume: reuse finished (method, run) units recorded under ``out/.partial/`` whose fingerprint
            matches; ``False`` recomputes every unit and overwrites the records.
        n_boot: patient replicates of the bootstrap behind ``comparisons`` (>= 10,000 lets Holm's smallest
            adjusted p-value pass; :mod:`dualattn.evaluate.intervals`).
        protocols: ``common_classifier`` (the paper's: every map scored on the baseline) and/or ``own_model``
            (every map scored on the model it comes from; :mod:`dualattn.evaluate.units`).
        own_model_methods: the post-hoc explainers and controls that also explain every gated variant's runs
            under ``own_model`` (``"all"``: every one evaluated); attention maps are always scored on their own
            model.
        own_model_variants: the variants whose runs those explainers and controls also explain (``"all"``; the
            baseline's are the common protocol's units and always included).
        hiding_ks: kept shares (percent of the foreground cells) of the hiding test; ``()`` turns it off.
        hiding_blocks: the blocks whose maps the hiding test runs on (``"all"``: every evaluated block).
        map_only_methods: methods scored without a classifier (segmentation and sharpness only): names, or
            prefixes ending in ``_`` (``"raw_channel_"``: every raw-channel control).
        hiding_fills: what replaces the swapped pixels: ``partner`` (matched healthy test images of other
            patients) and/or ``road`` (ROAD's imputation, for data without registered partners).
        hiding_partners: matched partners per image.
        claims: the primary claims (:mod:`dualattn.evaluate.claims`): ``"default"`` (the ones named in advance
            for the embedded data) or ``()`` for none; everything else is reported as secondary.

    Raises:
        ValueError: on construction, for an invalid value (the message names the field).
    """

    data: str | os.PathLike[str] | None = None
    methods: str | tuple[str, ...] = "all"
    blocks: tuple[str, ...] = ("block3", "block4")
    split: str = "test"
    size: int | tuple[int, ...] | None = None
    max_images: int | None = None
    batch_size: int = 16
    fills: tuple[str, ...] = FILLS
    perturbation_steps: int = 10
    sanity_images: int = 8
    ig_steps: int = 32
    seed: int = 0
    cache_dir: str | os.PathLike[str] | None = None
    device: str = "cpu"
    resume: bool = True
    n_boot: int = 10_000
    protocols: tuple[str, ...] = ("common_classifier", "own_model")
    own_model_methods: str | tuple[str, ...] = "all"
    own_model_variants: str | tuple[str, ...] = "all"
    hiding_ks: tuple[int, ...] = (10, 20, 35)
    hiding_fills: tuple[str, ...] = ("partner",)
    hiding_partners: int = 5
    hiding_blocks: str | tuple[str, ...] = "all"
    map_only_methods: tuple[str, ...] = ()
    claims: str | tuple[Any, ...] = "default"

    def __post_init__(self) -> None:
        # normalize sequences to tuples so that the object stays hashable and comparable
        if not isinstance(self.methods, str):
            object.__setattr__(self, "methods", tuple(self.methods))
            if self.methods == ("all",):
                object.__setattr__(self, "methods", "all")
        object.__setattr__(self, "blocks", tuple(self.blocks))
        for key in ("protocols", "hiding_fills", "map_only_methods"):
            v = getattr(self, key)
            object.__setattr__(self, key, (v,) if isinstance(v, str) else tuple(v))
        object.__setattr__(self, "hiding_ks", tuple(int(k) for k in self.hiding_ks))
        for key in ("own_model_methods", "own_model_variants", "hiding_blocks"):
            v = getattr(self, key)
            if not isinstance(v, str):
                object.__setattr__(self, key, tuple(v))
            elif v != "all":
                raise ValueError(f"{key} must be 'all' or a sequence of names, got {v!r}")
        if not isinstance(self.claims, str):
            object.__setattr__(self, "claims", tuple(self.claims))
        object.__setattr__(self, "fills", (self.fills,) if isinstance(self.fills, str) else tuple(self.fills))
        if self.size is not None and not isinstance(self.size, int):
            object.__setattr__(self, "size", tuple(int(s) for s in self.size))
        object.__setattr__(self, "device", str(self.device))
        if self.perturbation_steps < 1:
            raise ValueError(f"perturbation_steps must be >= 1, got {self.perturbation_steps}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not self.blocks:
            raise ValueError("blocks must name at least one block")
        bad_blocks = [b for b in self.blocks if not re.fullmatch(r"block\d+|patches", str(b))]
        if bad_blocks:
            raise ValueError(f"unknown block(s) {bad_blocks}; blocks are named block1 ... block5 (or patches)")
        if self.methods != "all":
            # refused here, before any image is read (raw_channel_<k> is checked against the data later)
            names = (self.methods,) if isinstance(self.methods, str) else self.methods
            known = set(list_methods(in_channels=1)) | set(METHOD_ALIASES)
            unknown = [m for m in names if m not in known and not re.fullmatch(r"raw_channel_\d+", m)]
            if unknown:
                raise ValueError(f"unknown method(s) {unknown}; valid: {sorted(set(list_methods(in_channels=1)))}")
        known = (*FILLS, "zero")
        bad = [f for f in self.fills if f not in known]
        if bad or not self.fills or len(set(self.fills)) != len(self.fills):
            raise ValueError(f"fills must be distinct names among {', '.join(known)}, got {list(self.fills)}")
        if self.n_boot < 100:
            raise ValueError(f"n_boot must be >= 100, got {self.n_boot}")
        bad = [p for p in self.protocols if p not in ("common_classifier", "own_model")]
        if bad or not self.protocols:
            raise ValueError(f"protocols must be among common_classifier, own_model, got {list(self.protocols)}")
        if any(not 0 < k <= 100 for k in self.hiding_ks):
            raise ValueError(f"hiding_ks must be percentages in (0, 100], got {list(self.hiding_ks)}")
        bad = [f for f in self.hiding_fills if f not in ("partner", "road")]
        if bad:
            raise ValueError(f"hiding_fills must be among partner, road, got {list(self.hiding_fills)}")
        if self.hiding_partners < 1:
            raise ValueError(f"hiding_partners must be >= 1, got {self.hiding_partners}")
        if isinstance(self.claims, str) and self.claims != "default":
            raise ValueError(f"claims must be 'default' or a sequence of claim specs, got {self.claims!r}")

        if self.sanity_images < 0:
            raise ValueError(f"sanity_images must be >= 0, got {self.sanity_images}")
        if self.max_images is not None and self.max_images < 1:
            raise ValueError(f"max_images must be >= 1 or None, got {self.max_images}")

    @property
    def fractions(self) -> tuple[float, ...]:
        """The perturbation curve's removed fractions ``0, 1/steps, ..., 1``."""
        return tuple(round(i / self.perturbation_steps, 6) for i in range(self.perturbation_steps + 1))

    def replace(self, **changes: Any) -> "EvalSettings":
        """A copy with ``changes`` applied (validated)."""
        return dataclasses.replace(self, **changes)

    def torch_device(self) -> torch.device:
        """The device models and batches run on.

        Raises:
            ValueError: an invalid device, or CUDA asked for where there is none.
        """
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        try:
            dev = torch.device(self.device)
        except RuntimeError as exc:
            raise ValueError(f"invalid device {self.device!r}: {exc}") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {self.device!r} requested but CUDA is not available")
        return dev
