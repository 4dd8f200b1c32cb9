"""The built-in methods: one :func:`~dualattn.explain._registry.register_method` call each.

Registration order is the order of :func:`dualattn.explain.list_methods`. The names come from
where the methods live: the gated variants from :data:`dualattn.models.CNN_VARIANTS` (through
:data:`~dualattn.explain.attention.VARIANT_METHODS`), the post-hoc methods from
:data:`~dualattn.explain.posthoc.POSTHOC_METHODS`, the ViT maps from
:data:`~dualattn.explain.vit.VIT_METHODS`.
"""

from __future__ import annotations

from typing import Any, Sequence

from torch import Tensor, nn

from ._pool import block_grid
from ._registry import VIT_SOURCE, get_method, register_method
from .attention import VARIANT_METHODS, attention_map, cvx_map
from .controls import DEFAULT_LESION_FRACTION, center_map, dual_tau_map, prior_map
from .evidence import EVIDENCE_METHODS, additive_attention_map, additive_contribution_map
from .posthoc import PIXEL_METHODS, POSTHOC_METHODS, posthoc_map
from .reference import random_map, raw_channel_map
from .selection import SELECTION_METHODS, selection_map, selection_mask_map
from .vit import VIT_METHODS, vit_map

__all__: list[str] = []

# Adapters to the registry's signature compute(model, images, *, method, block, target, **options);
# attention, ViT and control maps do not depend on the target class.


def _attention(model: nn.Module, images: Tensor, *, method: str, block: str, target: Any) -> Tensor:
    return attention_map(model, images, method=method, block=block)


def _cvx(
    model: nn.Module, images: Tensor, *, method: str, block: str, target: Any, solver: str = "closed_form"
) -> Tensor:
    return cvx_map(model, images, block=block, solver=solver)


def _additive(model: nn.Module, images: Tensor, *, method: str, block: str, target: Any) -> Tensor:
    return additive_attention_map(model, images, block=block)


def _contribution(
    model: nn.Module, images: Tensor, *, method: str, block: str, target: Any, contrast: bool = True,
    scales: str = "all",
) -> Tensor:
    return additive_contribution_map(model, images, block=block, target=target, contrast=contrast, scales=scales)


def _selection(model: nn.Module, images: Tensor, *, method: str, block: str, target: Any) -> Tensor:
    return selection_map(model, images, block=block)


def _selection_mask(model: nn.Module, images: Tensor, *, method: str, block: str, target: Any) -> Tensor:
    return selection_mask_map(model, images, block=block)


def _vit(model: nn.Module, images: Tensor, *, method: str, block: str, target: Any) -> Tensor:
    return vit_map(model, images, method=method)


def _grid(model: nn.Module, images: Tensor, block: str, grid: Sequence[int] | None) -> tuple[int, ...]:
    return tuple(grid) if grid is not None else block_grid(model, images, block)


def _random(
    model: nn.Module, images: Tensor, *, method: str, block: str, target: Any, seed: int = 0,
    grid: Sequence[int] | None = None,
) -> Tensor:
    return random_map(images, grid=_grid(model, images, block, grid), seed=int(seed))


def _prior(
    model: nn.Module, images: Tensor, *, method: str, block: str, target: Any, population: Tensor | None = None,
) -> Tensor:
    return prior_map(model, images, block=block, population=population)


def _dual_tau(model: nn.Module, images: Tensor, *, method: str, block: str, target: Any) -> Tensor:
    return dual_tau_map(model, images, block=block)


def _center(
    model: nn.Module, images: Tensor, *, method: str, block: str, target: Any,
    lesion_fraction: float = DEFAULT_LESION_FRACTION, grid: Sequence[int] | None = None,
) -> Tensor:
    return center_map(images, grid=_grid(model, images, block, grid), lesion_fraction=lesion_fraction)


def _raw_channel(
    model: nn.Module, images: Tensor, *, method: str, block: str, target: Any, seed: int = 0,
    grid: Sequence[int] | None = None,
) -> Tensor:
    channel = get_method(method).channel(method)
    return raw_channel_map(images, channel=channel, grid=_grid(model, images, block, grid))


for _name in VARIANT_METHODS:
    register_method(
        _name, family="attention", source_variant=_name, compute=_attention,
        description=f"the attention map of a {_name!r} model (mu where it has one, else tau)",
    )
register_method(
    "attention", family="attention", source_variant=None, compute=_attention,
    description="the map any gated model weights its features by (mu where it has one, else tau)",
)
# the additive local-evidence model (dualattn.models.local, dualattn.explain.evidence)
register_method(
    EVIDENCE_METHODS[0], family="attention", source_variant=EVIDENCE_METHODS[0], compute=_additive,
    description="where an additive model looks: mu, the exact consistent map pooling its per-cell evidence",
)
register_method(
    EVIDENCE_METHODS[1], family="attention", source_variant=EVIDENCE_METHODS[0], compute=_contribution,
    options=("contrast", "scales"), uses_target=True,
    description="what each place contributed to an additive model's logit (target minus the others' mean): "
    "mu * s, signed, summing exactly to the logit less the bias",
)
# the select-then-predict model (dualattn.models.select_predict, dualattn.explain.selection)
register_method(
    SELECTION_METHODS[0], family="attention", source_variant=SELECTION_METHODS[0], compute=_selection,
    description="where a select-then-predict model looks: its selector's consistent map mu, every cell of the "
    "hard mask ranked above every hidden one",
)
register_method(
    SELECTION_METHODS[1], family="attention", source_variant=SELECTION_METHODS[0], compute=_selection_mask,
    description="what a select-then-predict model's predictor is shown: the hard consistent mask (uniform on it)",
)
register_method(
    "cvx", family="cvx", source_variant="unconstrained", compute=_cvx, options=("solver",),
    description="Eq. 4 solved post hoc on the model's own tau maps",
)

_POSTHOC_OPTIONS: dict[str, tuple[str, ...]] = {"gradcam": (), "gradcam_norelu": (),
                                                "integrated_gradients": ("n_steps", "internal_batch_size", "grid")}
_POSTHOC_ALIASES: dict[str, tuple[str, ...]] = {"gradcam": ("grad_cam",), "input_x_gradient": ("ixg",),
                                                "integrated_gradients": ("ig",)}
for _name in POSTHOC_METHODS:
    register_method(
        _name, family="posthoc", source_variant="baseline", compute=posthoc_map,
        options=_POSTHOC_OPTIONS.get(_name, ("grid",)), aliases=_POSTHOC_ALIASES.get(_name, ()),
        pixel_level=_name in PIXEL_METHODS, description=f"{_name} through Captum",
    )

_VIT_ALIASES: dict[str, tuple[str, ...]] = {"vit_attention": ("vit_last",), "vit_rollout": ("rollout",)}
for _name in VIT_METHODS:
    register_method(
        _name, family="vit", source_variant=VIT_SOURCE, compute=_vit, aliases=_VIT_ALIASES.get(_name, ()),
        description=f"a ViT's {VIT_METHODS[_name]} attention to the patches",
    )

# controls (dualattn.explain.controls, dualattn.explain.reference)
register_method(
    "prior", family="control", source_variant="dual", compute=_prior, options=("population",),
    description="the dual witness's image-independent factor exp(-/+lambda), normalized (a fixed spatial prior)",
)
register_method(
    "dual_tau", family="control", source_variant="dual", compute=_dual_tau,
    description="the dual model's gate map tau, before the reparameterization by lambda",
)
register_method(
    "center", family="control", source_variant="baseline", compute=_center, options=("lesion_fraction", "grid"),
    description="a centered isotropic Gaussian whose one-sigma disk/ball has the lesions' mean area",
)
register_method(
    "raw_channel_<k>", family="control", source_variant="baseline", compute=_raw_channel,
    options=("seed", "grid"), description="input channel k as the map (does the data do the work?)",
)
register_method(
    "random", family="control", source_variant="baseline", compute=_random, options=("seed", "grid"),
    description="uniform random values (chance level)",
)
del _name
