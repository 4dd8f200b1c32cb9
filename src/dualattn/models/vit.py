"""Vision Transformers (MONAI's ``ViT``) as the attention-only baseline, with extractable attention.

The maps a ViT offers are over its patch grid (``img_size // patch_size`` per dim):

* ``"last"``: the class token's attention to the patches in the last layer, averaged over heads;
* ``"rollout"``: attention rollout (Abnar & Zuidema, 2020): per layer ``A = 0.5 * mean_heads(att) + 0.5 * I``
  with rows renormalised, multiplied from the first layer to the last; the class token's row.

Both are renormalised per sample over the patches (the class token's self-attention is dropped).
"""

from __future__ import annotations

import copy
import logging
from typing import Any, Iterator, Sequence

import torch
from torch import Tensor, nn

from dualattn._checks import check_positive_int, check_spatial_dims

from ._registry import register_model
from .base import AttentionOutput

logger = logging.getLogger(__name__)

__all__ = ["ViTClassifier", "vit_b16", "vit_small", "vit_tiny"]


class ViTClassifier(nn.Module):
    """MONAI ``ViT`` with a class token and a linear head; ``forward`` returns logits only.

    Args:
        in_channels: input channels.
        num_classes: logits.
        spatial_dims: 2 or 3.
        img_size: input size (int or one per dim); must be divisible by ``patch_size``.
        patch_size: patch edge length.
        hidden_size, mlp_dim, num_layers, num_heads: transformer sizes.
        dropout_rate: dropout in the transformer.
        config: ``create_model`` arguments (``model.config``).
    """

    variant = "baseline"
    attention_blocks: tuple[str, ...] = ()
    map_blocks: tuple[str, ...] = ("last", "rollout")

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        spatial_dims: int,
        img_size: int | Sequence[int],
        patch_size: int,
        hidden_size: int,
        mlp_dim: int,
        num_layers: int,
        num_heads: int,
        dropout_rate: float = 0.0,
        config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        from monai.networks.nets import ViT

        check_positive_int("in_channels", in_channels)
        check_positive_int("num_classes", num_classes)
        check_positive_int("patch_size", patch_size)
        self.spatial_dims = check_spatial_dims(spatial_dims)
        size = (img_size,) * spatial_dims if isinstance(img_size, int) else tuple(img_size)
        if len(size) != spatial_dims or any((not isinstance(s, int)) or s < patch_size or s % patch_size for s in size):
            raise ValueError(
                f"img_size must be {spatial_dims} positive multiples of patch_size={patch_size}, got {img_size!r}"
            )
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size={hidden_size} is not divisible by num_heads={num_heads}")
        self.img_size = size
        self.grid = tuple(s // patch_size for s in size)
        self.num_classes = num_classes
        self._config = copy.deepcopy(config or {})
        self._backbone_frozen = False
        self.vit = ViT(
            in_channels=in_channels,
            img_size=size,
            patch_size=patch_size,
            hidden_size=hidden_size,
            mlp_dim=mlp_dim,
            num_layers=num_layers,
            num_heads=num_heads,
            classification=True,
            num_classes=num_classes,
            dropout_rate=dropout_rate,
            spatial_dims=spatial_dims,
            post_activation="none",
            qkv_bias=True,
            save_attn=True,
        )

    @property
    def config(self) -> dict[str, Any]:
        """JSON-serializable ``create_model`` arguments rebuilding this architecture."""
        return copy.deepcopy(self._config)

    def _check(self, x: Tensor) -> None:
        if x.dim() != self.spatial_dims + 2 or tuple(x.shape[2:]) != self.img_size:
            raise ValueError(f"expected input (B, C, {self.img_size}), got {tuple(x.shape)}")

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, num_classes)`` for ``x`` of shape ``(B, C, *img_size)``."""
        self._check(x)
        return self.vit(x)[0]

    def _attention_matrices(self) -> list[Tensor]:
        mats = [blk.attn.att_mat for blk in self.vit.blocks]
        if any(not isinstance(m, Tensor) or m.dim() != 4 for m in mats):
            raise RuntimeError("no attention recorded; run a forward pass first")
        return mats

    def _maps_from_recorded(self, batch: int) -> dict[str, Tensor]:
        mats = self._attention_matrices()
        if mats[-1].shape[0] != batch:
            raise RuntimeError("recorded attention does not match the batch")
        last = mats[-1].mean(dim=1)[:, 0, 1:]
        tokens = mats[0].shape[-1]
        eye = torch.eye(tokens, dtype=mats[0].dtype, device=mats[0].device)
        rollout = eye.expand(batch, tokens, tokens)
        for att in mats:
            a = 0.5 * att.mean(dim=1) + 0.5 * eye
            a = a / a.sum(dim=-1, keepdim=True)
            rollout = a @ rollout
        roll = rollout[:, 0, 1:]
        out = {}
        for name, m in (("last", last), ("rollout", roll)):
            m = m.float()
            out[name] = (m / m.sum(dim=1, keepdim=True).clamp_min(torch.finfo(m.dtype).tiny)).reshape(batch, *self.grid)
        return out

    def forward_with_attention(self, x: Tensor) -> AttentionOutput:
        """Logits and the ViT maps ``tau = {"last": ..., "rollout": ...}`` (``(B, *patch_grid)``, no grad)."""
        logits = self.forward(x)
        return AttentionOutput(logits, self._maps_from_recorded(x.shape[0]), {}, x.new_zeros(()))

    def vit_attention_maps(self, x: Tensor) -> dict[str, Tensor]:
        """``{"last": (B, *grid), "rollout": (B, *grid)}`` per-sample distributions over the patch grid.

        Example:
            >>> m = ViTClassifier(in_channels=1, num_classes=2, spatial_dims=2, img_size=32, patch_size=8,
            ...                   hidden_size=32, mlp_dim=64, num_layers=2, num_heads=2)
            >>> m.vit_attention_maps(torch.randn(2, 1, 32, 32))["rollout"].shape
            torch.Size([2, 4, 4])
        """
        with torch.no_grad():
            return self.forward_with_attention(x).tau

    def feature_layers(self) -> dict[str, nn.Module]:
        """Transformer blocks ``"layer1" ..`` (outputs are token sequences ``(B, 1 + N, hidden)``)."""
        return {f"layer{i + 1}": blk for i, blk in enumerate(self.vit.blocks)}

    def backbone_parameters(self) -> Iterator[nn.Parameter]:
        """Every parameter except the classification head."""
        for name, p in self.named_parameters():
            if not name.startswith("vit.classification_head."):
                yield p

    def gate_parameters(self) -> Iterator[nn.Parameter]:
        """A ViT has no gates: nothing."""
        return iter(())

    def freeze_backbone(self, frozen: bool = True) -> None:
        """Freeze (or unfreeze) everything but the classification head."""
        self._backbone_frozen = bool(frozen)
        for p in self.backbone_parameters():
            p.requires_grad_(not frozen)

    @property
    def backbone_frozen(self) -> bool:
        """Whether :meth:`freeze_backbone` is in effect."""
        return self._backbone_frozen

    def load_backbone_state(self, state_dict: dict[str, Tensor]) -> None:
        """Load another ViT's weights of the same shape (strict).

        Raises:
            ValueError: keys or shapes differ.
        """
        sd = dict(state_dict)
        if sd and all(k.startswith("model.") for k in sd):
            sd = {k[len("model.") :]: v for k, v in sd.items()}
        own = self.state_dict()
        missing = sorted(set(own) - set(sd))
        unexpected = sorted(set(sd) - set(own))
        bad = [k for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
        if missing or unexpected or bad:
            raise ValueError(f"state dict does not match this ViT: missing {missing[:8]}, unexpected {unexpected[:8]}, shape mismatch {bad[:8]}")
        self.load_state_dict(sd)


_VIT_SIZES = {
    "vit_b16": {"hidden_size": 768, "mlp_dim": 3072, "num_layers": 12, "num_heads": 12},
    "vit_small": {"hidden_size": 384, "mlp_dim": 1536, "num_layers": 12, "num_heads": 6},
    "vit_tiny": {"hidden_size": 192, "mlp_dim": 768, "num_layers": 12, "num_heads": 3},
}


def _make_vit(
    name: str,
    *,
    variant: str,
    in_channels: int,
    num_classes: int,
    spatial_dims: int,
    img_size: int | Sequence[int] | None,
    patch_size: int,
    config: dict[str, Any] | None,
    **kw: Any,
) -> ViTClassifier:
    if variant != "baseline":
        raise ValueError(f"{name} supports only variant 'baseline' (attention-only baseline), got {variant!r}")
    sizes = dict(_VIT_SIZES[name])
    unknown = set(kw) - set(sizes) - {"dropout_rate"}
    if unknown:
        raise ValueError(f"unknown arguments for {name}: {sorted(unknown)}")
    sizes.update(kw)
    if img_size is None:
        img_size = 224 if spatial_dims == 2 else 96
    return ViTClassifier(
        in_channels=in_channels, num_classes=num_classes, spatial_dims=spatial_dims, img_size=img_size,
        patch_size=patch_size, config=config, **sizes,
    )


def _register(name: str, description: str) -> None:
    def factory(
        *,
        variant: str = "baseline",
        in_channels: int = 1,
        num_classes: int = 2,
        spatial_dims: int = 2,
        img_size: int | Sequence[int] | None = None,
        patch_size: int = 16,
        config: dict[str, Any] | None = None,
        **kw: Any,
    ) -> ViTClassifier:
        return _make_vit(
            name, variant=variant, in_channels=in_channels, num_classes=num_classes, spatial_dims=spatial_dims,
            img_size=img_size, patch_size=patch_size, config=config, **kw,
        )

    factory.__name__ = name
    factory.__doc__ = f"{description} (MONAI ViT; img_size default 224 in 2D, 96 in 3D; patch_size 16)."
    register_model(
        name, variants=("baseline",), description=description, defaults={"patch_size": 16, **_VIT_SIZES[name]}
    )(factory)
    globals()[name] = factory


_register("vit_b16", "ViT-B/16: 12 layers, hidden 768, 12 heads")
_register("vit_small", "ViT-S/16: 12 layers, hidden 384, 6 heads")
_register("vit_tiny", "ViT-Ti/16: 12 layers, hidden 192, 3 heads")
vit_b16: Any
vit_small: Any
vit_tiny: Any
