r"""Attention gates (paper Eq. 1-3) for 2D and 3D convolutional feature maps.

For a feature map ``v`` of shape ``(B, C, *grid)`` an :class:`AttentionGate` computes one potential per
position. The default form (``form="single"``, ``bias=False``) is one potential gate

.. math::

    \phi_i = \langle u, \mathrm{ReLU}(\mathrm{normalize}(U v_i)) \rangle,

where ``U`` is a 1x1 conv ``C -> E``, ``normalize`` is the L2 normalization over the ``E`` channels at each
position (``x / max(||x||_2, eps)``, our reading of the paper's Eq. 2 "normalize"), and ``u`` a 1x1 conv
``E -> 1`` (no bias: the softmax is shift-invariant). ``form="cascaded"`` is the paper's Sec. 4.1 "two
cascaded potential gates" as we read it: ``z1 = ReLU(normalize(U v + b1))`` (``C -> E``),
``z2 = ReLU(normalize(U2 z1 + b2))`` (``E -> E``), ``phi = <u, z2> + c``; ``bias=True`` adds the biases
(the authors' code gives its 1x1 convs biases). The attention map is the softmax of ``phi`` over **all**
positions of each sample, ``tau = softmax(phi)`` (sums to 1 per image), and the gate returns ``v * tau``
(broadcast over channels): the layers after it only see attended positions.

Example:
    >>> import torch
    >>> gate = AttentionGate(8, 4)
    >>> v_hat, tau = gate(torch.randn(2, 8, 6, 5))
    >>> tuple(v_hat.shape), tuple(tau.shape), [round(s, 5) for s in tau.sum((1, 2)).tolist()]
    ((2, 8, 6, 5), (2, 6, 5), [1.0, 1.0])
    >>> paper = AttentionGate(8, 4, form="cascaded", bias=True)
    >>> [round(s, 5) for s in paper(torch.randn(2, 8, 6, 5))[1].sum((1, 2)).tolist()]
    [1.0, 1.0]
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dualattn._checks import check_feature_map, check_positive_int, check_spatial_dims

logger = logging.getLogger(__name__)

__all__ = ["AttentionGate", "GATE_FORMS", "log_softmax_grid"]

#: Forms of :class:`AttentionGate`: one potential gate (the default) or two in cascade (the paper's
#: Sec. 4.1, as we read it).
GATE_FORMS: tuple[str, ...] = ("single", "cascaded")


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
        embed_channels: embedding width ``E`` of the 1x1 conv ``U`` (and of ``U2`` in the cascaded form).
        spatial_dims: 2 (maps ``(B, H, W)``) or 3 (maps ``(B, D, H, W)``).
        eps: floor of the L2 norm in the channel normalization.
        scale: gain ``s`` of the potentials, ``phi = s <u, z>`` (1: the paper's gate). Because ``z`` has
            unit norm, ``|phi| <= s ||u||``: with ``s = 1`` and PyTorch's initialisation (``||u|| ~ 0.6``)
            the softmax over ``N`` positions can hardly leave uniform (the largest ratio of two weights
            is ``exp(2 s ||u||)``), and Adam moves ``u`` only about ``lr`` per step. A gain lets the map
            concentrate and multiplies the speed at which the potentials learn.
        learn_scale: learn ``log s`` as a parameter (initialised at ``log scale``).
        zero_init: start ``u`` (and its bias ``c``) at zero, so every map starts exactly uniform (the gate
            is the identity weighting) whatever the gain and form; ``u`` leaves zero at the first step.
        form: ``"single"`` (default): one potential layer, ``z = ReLU(normalize(U v + b))``,
            ``phi = s (<u, z> + c)``. ``"cascaded"``: two potential layers in cascade,
            ``z1 = ReLU(normalize(U v + b1))`` (``U``: ``C -> E``), ``z2 = ReLU(normalize(U2 z1 + b2))``
            (``U2``: ``E -> E``), ``phi = s (<u, z2> + c)``. The paper (Sec. 4.1) says each attention unit
            is "two cascaded potential gates"; the text admits more than one construction, and this is our
            reading of it. The authors' published layer is one gate with biases (``"single"``,
            ``bias=True``). The single form without bias stays the default until the forms are measured.
        bias: give ``U`` (``b``/``b1``), ``U2`` (``b2``) and ``u`` (``c``) a bias. ``c`` adds the same
            constant to every position's potential and so does not change the softmax; it is kept for
            fidelity to the authors' layer (a 1x1 conv with a bias), and a state dict of theirs has it.

    Attributes:
        U: the first potential layer (``U1`` of the cascaded form), a 1x1 conv ``C -> E``.
        U2: the second potential layer (``E -> E``) of the cascaded form; ``None`` for ``"single"``.
        u: the 1x1 conv ``E -> 1`` giving the potentials; every form runs it as a module (float inputs
            of the module's dtype), so forward hooks on ``gate.u`` see the unscaled potentials.

    Shapes:
        ``v``: ``(B, C, *grid)``; ``tau``: ``(B, *grid)`` with ``tau.sum() == 1`` per sample.

    Half-precision inputs run the convs in the module's dtype, the normalizations and softmax in float32,
    and return the input dtype.

    Raises:
        ValueError: a non-positive width, bad ``spatial_dims``/``eps``/``scale``, an unknown ``form`` (the
            message lists :data:`GATE_FORMS`), or a ``bias`` that is not a bool.
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
        form: str = "single",
        bias: bool = False,
    ) -> None:
        super().__init__()
        check_positive_int("in_channels", in_channels)
        check_positive_int("embed_channels", embed_channels)
        check_spatial_dims(spatial_dims)
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps!r}")
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
            raise ValueError(f"scale must be a finite number > 0, got {scale!r}")
        if form not in GATE_FORMS:
            raise ValueError(f"unknown gate form {form!r}; valid forms: {', '.join(GATE_FORMS)}")
        if not isinstance(bias, bool):
            raise ValueError(f"bias must be a bool, got {bias!r}")
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        self.in_channels = in_channels
        self.embed_channels = embed_channels
        self.spatial_dims = spatial_dims
        self.eps = float(eps)
        self.form = form
        self.use_bias = bias
        self.U = conv(in_channels, embed_channels, kernel_size=1, bias=bias)
        self.U2: nn.Module | None = (
            conv(embed_channels, embed_channels, kernel_size=1, bias=bias) if form == "cascaded" else None
        )
        self.u = conv(embed_channels, 1, kernel_size=1, bias=bias)
        if zero_init:
            nn.init.zeros_(self.u.weight)
            if self.u.bias is not None:
                nn.init.zeros_(self.u.bias)
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
            f"spatial_dims={self.spatial_dims}, form={self.form}, bias={self.use_bias}, "
            f"scale={self.scale:.4g}, learn_scale={self.learn_scale}"
        )

    def _check(self, v: Tensor) -> None:
        check_feature_map("v", v, spatial_dims=self.spatial_dims, channels=self.in_channels)

    def _potential_layer(self, layer: nn.Module, x: Tensor) -> Tensor:
        """``ReLU(normalize(layer(x)))``: the conv in the module's dtype, the normalization in float32 for
        half-precision outputs."""
        z = layer(x)
        if z.dtype in (torch.float16, torch.bfloat16):
            z = z.float()
        return F.relu(F.normalize(z, p=2.0, dim=1, eps=self.eps))

    def potentials(self, v: Tensor) -> Tensor:
        """Unnormalized log-attention ``phi``: ``(B, C, *grid) -> (B, *grid)`` (float32 for half inputs)."""
        self._check(v)
        z = self._potential_layer(self.U, v)
        if self.U2 is not None:
            # a half-precision module gave a float32 z1: back to the module's dtype for the conv (z1 has
            # unit norm, nothing overflows), so the module itself runs and hooks on ``gate.U2`` see it
            z = self._potential_layer(self.U2, z.to(self.U2.weight.dtype))
        if z.dtype == self.u.weight.dtype:
            phi = self.u(z).squeeze(1)  # the module itself, so hooks on ``gate.u`` see it
        else:
            # half-precision module with float32 z: the same 1x1 conv (with its bias c) as a channel
            # contraction in float32
            phi = torch.einsum("bc...,c->b...", z, self.u.weight.reshape(-1).to(z.dtype))
            if self.u.bias is not None:
                phi = phi + self.u.bias.to(z.dtype)
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
