"""Model registry: ``@register_model`` adds a factory; ``create_model`` builds by name.

A factory is a function ``fn(*, variant, in_channels, num_classes, spatial_dims, **kw) -> nn.Module``.
The registry records which variants and spatial dimensions each backbone supports so that
``create_model`` can reject bad requests with a message listing the valid choices.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable

logger = logging.getLogger(__name__)

#: Every variant a CNN backbone offers (DESIGN.md section 1; ``cvx`` is post-hoc, see dualattn.explain).
CNN_VARIANTS: tuple[str, ...] = (
    "baseline",
    "tau_k",
    "tau_l",
    "unconstrained",
    "dual",
    "kl",
    "kl_reverse",
    "exact",
    "multilevel",
)
#: The consistent-attention variants: maps that agree across blocks by construction or by the paper's dual
#: witness (the methods the paper proposes, and ours); the report's claims compare the best of them with the
#: best post-hoc explainer.
CONSISTENT_VARIANTS: tuple[str, ...] = ("dual", "exact", "multilevel")


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    """One registered backbone.

    Attributes:
        name: registry name, e.g. ``"unet_encoder"``.
        factory: callable building the model (keyword-only arguments).
        variants: the variants this backbone supports.
        spatial_dims: the spatial dimensionalities it supports.
        description: one line for ``dualattn models``.
        defaults: default keyword arguments (shown in the CLI table, recorded in ``model.config``).
    """

    name: str
    factory: Callable[..., Any]
    variants: tuple[str, ...]
    spatial_dims: tuple[int, ...]
    description: str
    defaults: dict[str, Any]


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(
    name: str,
    *,
    variants: tuple[str, ...] = CNN_VARIANTS,
    spatial_dims: tuple[int, ...] = (2, 3),
    description: str = "",
    defaults: dict[str, Any] | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator registering a model factory under ``name``.

    Args:
        name: registry name; must be new.
        variants: supported variants.
        spatial_dims: supported spatial dimensionalities (2 and/or 3).
        description: one line shown by ``dualattn models``.
        defaults: default keyword arguments of the factory.

    Raises:
        ValueError: ``name`` is already registered.
    """

    def decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
        if name in _REGISTRY:
            raise ValueError(f"model name {name!r} is already registered")
        _REGISTRY[name] = ModelEntry(
            name=name,
            factory=fn,
            variants=tuple(variants),
            spatial_dims=tuple(spatial_dims),
            description=description or (fn.__doc__ or "").strip().splitlines()[0],
            defaults=dict(defaults or {}),
        )
        return fn

    return decorator


#: ``(backbone, variant) -> factory`` for the variants added by :func:`register_variant`.
_VARIANT_FACTORIES: dict[tuple[str, str], Callable[..., Any]] = {}


def register_variant(name: str, variant: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator adding ``variant`` to the registered backbone ``name``, built by the decorated factory.

    A model design that is not a :class:`~dualattn.models.base.GatedClassifier` variant lives in a file of its
    own and offers itself as a variant of an existing backbone (``create_model("unet_encoder",
    variant="additive")``, :mod:`dualattn.models.local`). The factory has the signature of a
    :func:`register_model` factory and gets the backbone's ``defaults``.

    Raises:
        ValueError: unknown backbone, or a variant it already has.
    """

    def decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
        entry = get_entry(name)
        if variant in entry.variants:
            raise ValueError(f"model {name!r} already has a variant {variant!r}")
        _VARIANT_FACTORIES[(name, variant)] = fn
        _REGISTRY[name] = dataclasses.replace(entry, variants=(*entry.variants, variant))
        return fn

    return decorator


def get_factory(name: str, variant: str) -> Callable[..., Any]:
    """The factory building ``variant`` of backbone ``name``: its own (:func:`register_variant`) or the backbone's."""
    return _VARIANT_FACTORIES.get((name, variant)) or get_entry(name).factory


def get_entry(name: str) -> ModelEntry:
    """Return the registry entry of ``name``.

    Raises:
        ValueError: unknown name (the message lists the registered ones).
    """
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; valid models: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def list_models() -> list[str]:
    """Names of all registered backbones, sorted."""
    return sorted(_REGISTRY)


def list_variants(name: str | None = None) -> list[str]:
    """Variants of backbone ``name``, or of all CNN backbones when ``name`` is None."""
    if name is None:
        return list(CNN_VARIANTS)
    return list(get_entry(name).variants)
