r"""Attention gates (paper Eq. 1-3) for 2D and 3D convolutional feature maps.

For a feature map ``v`` of shape ``(B, C, *grid)`` an :class:`AttentionGate` computes one potential per
position

.. math::

    \phi_i = \langle u, \mathrm{ReLU}(\mathrm{normalize}(U v_i)) \rangle,

where ``U`` is a 1x1 conv ``C -> E``, ``normalize`` is the L2 normalization over the ``E`` channels at each
position (``x / max(||x||_2, eps)``, our reading of the paper's Eq. 2 "normalize"), and ``u`` a 1x1 conv
``E -> 1`` (no bias: the softmax is shift-invariant). The attention map is the softmax of ``phi`` over
**all** positions of each sample, ``tau = softmax(phi)`` (sums to 1 per image), and the gate returns
``v * tau`` (broadcast over channels): the layers after it only see attended positions.

Example:
    >>> import torch
    >>> gate = AttentionGate(8, 4)
    >>> v_hat, tau = gate(torch.randn(2, 8, 6, 5))
    >>> tuple(v_hat.shape), tuple(tau.shape), [round(s, 5) for s in tau.sum((1, 2)).tolist()]
    ((2, 8, 6, 5), (2, 6, 5), [1.0, 1.0])
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dualattn._checks import check_feature_map, check_positive_int, check_spatial_dims

logger = logging.getLogger(__name__)

__all__ = ["AttentionGate", "log_softmax_grid"]


def log_softmax_grid(phi: Tensor) -> Tensor:
    """Log-softmax over all grid positions per sample: ``(B, *grid) -> (B, *grid)``.

    Computed in float32 for float16/bfloat16 inputs and returned in the input dtype.

    Example:
        >>> log_softmax_grid(torch.zeros(1, 2, 2)).exp().tolist()
        [[[0.25, 0.25], [0.25, 0.25]]]
    """
    if phi.ndim < 2:
        raise ValueError(f"phi must be (B, *grid), got shape {tuple(phi.shape)}")
    work = phi.float() if phi.dtype in (torch.float16, torch.bfloat16) else phi
    out = torch.log_softmax(work.flatten(1), dim=1).reshape(phi.shape)
    return out.to(phi.dtype)


class AttentionGate(nn.Module):
    """Soft attention gate over all positions of a 2D or 3D feature map (paper Eq. 1-3).

    Args:
        in_channels: channels ``C`` of the gated feature map.
        embed_channels: embedding width ``E`` of the 1x1 conv ``U``.
        spatial_dims: 2 (maps ``(B, H, W)``) or 3 (maps ``(B, D, H, W)``).
        eps: floor of the L2 norm in the channel normalization.
        scale: gain ``s`` of the potentials, ``phi = s <u, z>`` (1: the paper's gate). Because ``z`` has
            unit norm, ``|phi| <= s ||u||``: with ``s = 1`` and PyTorch's initialisation (``||u|| ~ 0.6``)
            the softmax over ``N`` positions can hardly leave uniform (the largest ratio of two weights
            is ``exp(2 s ||u||)``), and Adam moves ``u`` only about ``lr`` per step. A gain lets the map
            concentrate and multiplies the speed at which the potentials learn.
        learn_scale: learn ``log s`` as a parameter (initialised at ``log scale``).
        zero_init: start ``u`` at zero, so every map starts exactly uniform (the gate is the identity
            weighting) whatever the gain; ``u`` leaves zero at the first step.

    Shapes:
        ``v``: ``(B, C, *grid)``; ``tau``: ``(B, *grid)`` with ``tau.sum() == 1`` per sample.

    Half-precision inputs run the convs in the module's dtype, the normalization and softmax in float32,
    and return the input dtype.
    """

    def __init__(
        self,
        in_channels: int,
        embed_channels: int,
        *,
        spatial_dims: int = 2,
        eps: float = 1e-6,
        scale: float = 1.0,
        learn_scale: bool = False,
        zero_init: bool = False,
    ) -> None:
        super().__init__()
        check_positive_int("in_channels", in_channels)
        check_positive_int("embed_channels", embed_channels)
        check_spatial_dims(spatial_dims)
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps!r}")
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
            raise ValueError(f"scale must be a finite number > 0, got {scale!r}")
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        self.in_channels = in_channels
        self.embed_channels = embed_channels
        self.spatial_dims = spatial_dims
        self.eps = float(eps)
        self.U = conv(in_channels, embed_channels, kernel_size=1, bias=False)
        self.u = conv(embed_channels, 1, kernel_size=1, bias=False)
        if zero_init:
            nn.init.zeros_(self.u.weight)
        self.learn_scale = bool(learn_scale)
        self._fixed_scale = float(scale)
        self.log_scale: nn.Parameter | None = (
            nn.Parameter(torch.tensor(math.log(float(scale)))) if self.learn_scale else None
        )

    @property
    def scale(self) -> float:
        """Current multiplier ``s`` of the potentials (``phi = s <u, z>``)."""
        if self.log_scale is None:
            return self._fixed_scale
        return float(self.log_scale.detach().exp())

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, embed_channels={self.embed_channels}, "
            f"spatial_dims={self.spatial_dims}, scale={self.scale:.4g}, learn_scale={self.learn_scale}"
        )

    def _check(self, v: Tensor) -> None:
        check_feature_map("v", v, spatial_dims=self.spatial_dims, channels=self.in_channels)

    def potentials(self, v: Tensor) -> Tensor:
        """Unnormalized log-attention ``phi``: ``(B, C, *grid) -> (B, *grid)`` (float32 for half inputs)."""
        self._check(v)
        z = self.U(v)
        if z.dtype in (torch.float16, torch.bfloat16):
            z = z.float()
        z = F.relu(F.normalize(z, p=2.0, dim=1, eps=self.eps))
        if z.dtype == self.u.weight.dtype:
            phi = self.u(z).squeeze(1)  # the module itself, so hooks on ``gate.u`` see it
        else:
            # half-precision module with float32 z: the same 1x1 conv as a channel contraction in float32
            phi = torch.einsum("bc...,c->b...", z, self.u.weight.reshape(-1).to(z.dtype))
        if self.log_scale is not None:
            return phi * self.log_scale.to(phi.dtype).exp()
        return phi if self._fixed_scale == 1.0 else phi * self._fixed_scale

    def log_attention(self, v: Tensor) -> Tensor:
        """Log-softmax of the potentials over all positions per sample: ``(B, C, *grid) -> (B, *grid)``."""
        phi = self.potentials(v)
        return torch.log_softmax(phi.flatten(1), dim=1).reshape(phi.shape).to(v.dtype)

    def forward(self, v: Tensor) -> tuple[Tensor, Tensor]:
        """Gate ``v``: returns ``(v * tau[:, None], tau)``, shapes ``(B, C, *grid)`` and ``(B, *grid)``."""
        phi = self.potentials(v)
        tau32 = torch.softmax(phi.flatten(1), dim=1).reshape(phi.shape)
        tau = tau32.to(v.dtype)
        return v * tau.unsqueeze(1), tau
