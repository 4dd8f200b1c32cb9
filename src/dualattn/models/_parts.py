"""The backbone / gate split shared by the gated models: which parameters a baseline also has, freezing them.

A model class names its backbone parameters by prefix (:attr:`BackboneSplit.BACKBONE_PREFIXES`); everything else
(gates, witness, pooling heads) is "gate". Freezing keeps the backbone's parameters fixed and its ``backbone``
module in eval mode (BatchNorm statistics frozen too), whatever ``train()`` is called with.
"""

from __future__ import annotations

from typing import Iterator

from torch import nn

__all__ = ["BackboneSplit"]


class BackboneSplit:
    """Mixin for an ``nn.Module`` with a ``backbone`` child (put it before ``nn.Module`` in the bases)."""

    #: parameter-name prefixes of the backbone (what a baseline also has)
    BACKBONE_PREFIXES: tuple[str, ...] = ("backbone.", "fc.")
    _backbone_frozen: bool = False

    def backbone_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters whose names start with one of :attr:`BACKBONE_PREFIXES`."""
        for name, p in self.named_parameters():  # type: ignore[attr-defined]
            if name.startswith(self.BACKBONE_PREFIXES):
                yield p

    def gate_parameters(self) -> Iterator[nn.Parameter]:
        """Every other parameter (gates, witness, pooling heads)."""
        for name, p in self.named_parameters():  # type: ignore[attr-defined]
            if not name.startswith(self.BACKBONE_PREFIXES):
                yield p

    def freeze_backbone(self, frozen: bool = True) -> None:
        """Freeze (or unfreeze) the backbone parameters; frozen BatchNorm layers stay in eval mode (GroupNorm and
        InstanceNorm, ``norm="group"`` / ``"instance"``, use each sample's statistics in either mode).

        Args:
            frozen: True freezes (the paper's gate fine-tuning on a trained baseline).
        """
        self._backbone_frozen = bool(frozen)
        for p in self.backbone_parameters():
            p.requires_grad_(not frozen)
        self.train(self.training)  # type: ignore[attr-defined]

    @property
    def backbone_frozen(self) -> bool:
        """Whether :meth:`freeze_backbone` is in effect."""
        return self._backbone_frozen

    def train(self, mode: bool = True):  # noqa: ANN201 - returns self, as nn.Module.train does
        super().train(mode)  # type: ignore[misc]
        if self._backbone_frozen:
            self.backbone.eval()  # type: ignore[attr-defined]
        return self
