"""Method registry: every explanation method is one typed :class:`MethodSpec`.

``register_method`` adds an entry; :func:`get_method` finds it by name, alias or -- for a
per-channel entry such as ``raw_channel_<k>`` -- by pattern. The entry says which family the
method belongs to, which options :func:`dualattn.explain.explain` accepts for it, which trained
runs it explains (``source_variant``) and the function that computes its maps. The built-in
methods are registered in :mod:`dualattn.explain._builtin`.

Which runs a method explains (the paper's protocol), read from ``source_variant``:

* a variant's own name (``tau_k``, ``dual``, ``exact`` ...): the runs of that variant;
  ``cvx`` has ``"unconstrained"`` (Eq. 4 solved post hoc on that model's maps); the controls
  ``prior`` and ``dual_tau`` have ``"dual"``;
* ``"baseline"``: post-hoc methods and the other controls (``center``, ``raw_channel_<k>``,
  ``random``) explain the baseline classifier;
* :data:`VIT_SOURCE`: ViT maps explain the ViT runs (whose variant is ``"baseline"``);
* ``None``: ``attention`` (any gated variant's own map; used by the scan command, not by the
  evaluation or the demo).
"""

from __future__ import annotations

import dataclasses
import logging
import re
from typing import Any, Callable, Mapping, Protocol, Sequence, TypeVar

from torch import Tensor, nn

from .attention import model_variant

__all__ = [
    "FAMILIES",
    "METHOD_ALIASES",
    "METHOD_FAMILIES",
    "MethodSpec",
    "VIT_SOURCE",
    "get_method",
    "list_methods",
    "method_family",
    "method_sources",
    "methods_in_family",
    "register_method",
    "select_sources",
]

logger = logging.getLogger(__name__)

#: Method families, in the order :func:`list_methods` shows them. ``control``: maps that a method
#: must beat to mean anything (a dual model's image-independent prior and its raw gate map, a centered
#: Gaussian, each input channel, random values); scored like the methods.
FAMILIES: tuple[str, ...] = ("attention", "cvx", "posthoc", "vit", "control")

#: ``source_variant`` of the ViT maps: they explain the ViT runs, whatever their variant.
VIT_SOURCE = "vit"

#: Placeholder that ends the name of a per-channel entry (``raw_channel_<k>``).
_CHANNEL = "<k>"

#: Signature of :attr:`MethodSpec.compute`.
ComputeFn = Callable[..., Tensor]


@dataclasses.dataclass(frozen=True)
class MethodSpec:
    """One registered explanation method.

    Attributes:
        name: the method's name, e.g. ``"gradcam"``; for a per-channel entry the template
            ``"<prefix><k>"`` (``"raw_channel_<k>"``: one method per input channel ``k``).
        family: one of :data:`FAMILIES`.
        source_variant: the variant of the runs the method explains (see the module docstring);
            ``None`` for ``attention``, which explains any gated variant.
        options: keyword options :func:`dualattn.explain.explain` accepts for this method.
        compute: ``compute(model, images, *, method, block, target, **options) -> (B, 1, *grid)``;
            ``method`` is the canonical name (``raw_channel_2`` for a per-channel entry).
        aliases: short names accepted for ``name`` (``ig`` for ``integrated_gradients``).
        per_channel: ``name`` is a template standing for one method per input channel.
        pixel_level: the method attributes pixels and sum-pools the attribution to the block's
            grid, so one attribution serves every block (:func:`dualattn.explain.explain_blocks`).
        uses_target: the map depends on the explained class (post-hoc methods, a contribution map).
        description: one line for listings.
    """

    name: str
    family: str
    source_variant: str | None
    options: tuple[str, ...]
    compute: ComputeFn
    aliases: tuple[str, ...] = ()
    per_channel: bool = False
    pixel_level: bool = False
    description: str = ""
    uses_target: bool = False

    @property
    def prefix(self) -> str:
        """The name without the channel placeholder (``raw_channel_``); the name itself otherwise."""
        return self.name[: -len(_CHANNEL)] if self.per_channel else self.name

    def matches(self, method: str) -> bool:
        """Whether ``method`` (a canonical name, not an alias) names this entry."""
        if not self.per_channel:
            return method == self.name
        return re.fullmatch(re.escape(self.prefix) + r"\d+", method) is not None

    def channel(self, method: str) -> int:
        """The input channel of a per-channel method name (``raw_channel_2`` -> 2).

        Raises:
            ValueError: for an entry that is not per-channel, or a name it does not match.
        """
        if not self.per_channel or not self.matches(method):
            raise ValueError(f"{method!r} is not a name of the per-channel method {self.name!r}")
        return int(method[len(self.prefix) :])

    def names(self, in_channels: int = 1) -> list[str]:
        """The method names this entry stands for: ``[name]``, or one per input channel."""
        if self.per_channel:
            return [f"{self.prefix}{k}" for k in range(in_channels)]
        return [self.name]

    def check_options(self, method: str, options: Mapping[str, Any]) -> None:
        """Refuse options this method does not accept.

        Raises:
            ValueError: naming the bad options and the accepted ones.
        """
        bad = sorted(set(options) - set(self.options))
        if bad:
            raise ValueError(
                f"method {method!r} takes no option(s) {bad}; it accepts {list(self.options) or 'none'}"
            )


_REGISTRY: dict[str, MethodSpec] = {}

#: Short names accepted by :func:`dualattn.explain.explain` (and :func:`method_family`) for the
#: long ones; filled from the registered entries' ``aliases``.
METHOD_ALIASES: dict[str, str] = {}

#: family -> method names (``raw_channel_<k>`` stands for every input channel k); filled by
#: :func:`register_method`.
METHOD_FAMILIES: dict[str, tuple[str, ...]] = {family: () for family in FAMILIES}


def register_method(
    name: str,
    *,
    family: str,
    source_variant: str | None,
    compute: ComputeFn,
    options: Sequence[str] = (),
    aliases: Sequence[str] = (),
    pixel_level: bool = False,
    description: str = "",
    uses_target: bool | None = None,
) -> MethodSpec:
    """Register an explanation method.

    Args:
        name: the new method's name; ending in ``<k>`` (e.g. ``"raw_channel_<k>"``) registers a
            per-channel entry matching ``raw_channel_0``, ``raw_channel_1``, ...
        family: one of :data:`FAMILIES`.
        source_variant: variant of the runs it explains (see the module docstring).
        compute: the function computing the maps (signature in :class:`MethodSpec`).
        options: keyword options it accepts.
        aliases: short names for it.
        pixel_level: one pixel attribution serves every block (see :class:`MethodSpec`).
        description: one line for listings.
        uses_target: the map depends on the explained class (default: post-hoc methods do, others do not);
            the evaluation gives such a method the true class, ``dualattn explain`` says when ``--target``
            changes nothing.

    Returns:
        The registered :class:`MethodSpec`.

    Raises:
        ValueError: unknown family, or a name or alias already taken.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown method family {family!r}; valid: {', '.join(FAMILIES)}")
    per_channel = name.endswith(_CHANNEL)
    taken = set(_REGISTRY) | set(METHOD_ALIASES)
    for new in (name, *aliases):
        if new in taken or any(spec.matches(new) for spec in _REGISTRY.values()):
            raise ValueError(f"method name {new!r} is already registered")
    spec = MethodSpec(
        name=name,
        family=family,
        source_variant=source_variant,
        options=tuple(options),
        compute=compute,
        aliases=tuple(aliases),
        per_channel=per_channel,
        pixel_level=pixel_level,
        description=description,
        uses_target=(family == "posthoc") if uses_target is None else bool(uses_target),
    )
    _REGISTRY[name] = spec
    METHOD_ALIASES.update({alias: name for alias in spec.aliases})
    METHOD_FAMILIES[family] = (*METHOD_FAMILIES[family], name)
    return spec


def _find(method: str) -> MethodSpec | None:
    if not isinstance(method, str):
        return None
    method = METHOD_ALIASES.get(method, method)
    spec = _REGISTRY.get(method)
    if spec is not None and not spec.per_channel:
        return spec
    return next((s for s in _REGISTRY.values() if s.per_channel and s.matches(method)), None)


def get_method(method: str) -> MethodSpec:
    """The registry entry of ``method`` (a name, an alias or a per-channel name like ``raw_channel_2``).

    Raises:
        ValueError: for an unknown method (the message lists the valid ones).
    """
    spec = _find(method)
    if spec is None:
        raise ValueError(f"unknown method {method!r}; valid: {', '.join(list_methods())}")
    return spec


def method_family(method: str) -> str:
    """``"attention"``, ``"cvx"``, ``"posthoc"``, ``"vit"`` or ``"control"``.

    Raises:
        ValueError: for an unknown method.
    """
    return get_method(method).family


def methods_in_family(family: str) -> tuple[str, ...]:
    """The registered names of ``family``, in registration order (per-channel entries as their template).

    Raises:
        ValueError: for an unknown family (the message lists the valid ones).
    """
    if family not in METHOD_FAMILIES:
        raise ValueError(f"unknown method family {family!r}; valid: {', '.join(FAMILIES)}")
    return METHOD_FAMILIES[family]


def _expand(names: Sequence[str], in_channels: int) -> list[str]:
    return [n for name in names for n in _REGISTRY[name].names(in_channels)]


def list_methods(model: nn.Module | None = None, *, in_channels: int | None = None) -> list[str]:
    """Names accepted by :func:`dualattn.explain.explain`.

    Args:
        model: when given, only the methods that apply to it (its variant's attention map,
            ``attention`` and -- with 2+ gates -- ``cvx``; post-hoc methods when it has feature
            layers; ViT maps and the pixel-level post-hoc methods for a ViT; the controls: those
            of its variant (``prior``, ``dual_tau`` for a ``dual`` model) and those explaining a
            baseline (``center``, one ``raw_channel_<k>`` per input channel, ``random``)).
        in_channels: number of ``raw_channel_<k>`` entries (default: the model's ``in_channels``, else 1).

    Returns:
        Method names.
    """
    if model is None:
        return _expand(list(_REGISTRY), in_channels or 1)
    cfg = getattr(model, "config", {}) or {}
    n = in_channels or int(cfg.get("in_channels", 1) or 1)
    posthoc = METHOD_FAMILIES["posthoc"]
    out: list[str] = []
    if hasattr(model, "vit_attention_maps"):
        # a ViT's feature layers emit tokens: no GradCAM; pixel methods pool to the patch grid
        out += [*METHOD_FAMILIES["vit"], *(m for m in posthoc if _REGISTRY[m].pixel_level)]
    else:
        variant = model_variant(model)
        gates = tuple(getattr(model, "attention_blocks", ()) or ())
        if gates:
            # the variant's own maps (its name; the additive model's contribution map too)
            out += [m for m in METHOD_FAMILIES["attention"] if variant and _REGISTRY[m].source_variant == variant]
            out.append("attention")
            if len(gates) >= 2:
                out += list(METHOD_FAMILIES["cvx"])
        if hasattr(model, "feature_layers"):
            out += list(posthoc)
    variant = model_variant(model)
    controls = [c for c in METHOD_FAMILIES["control"] if _REGISTRY[c].source_variant in ("baseline", variant)]
    return out + _expand(controls, n)


class _Run(Protocol):
    """What :func:`select_sources` reads from a run."""

    @property
    def variant(self) -> str: ...

    @property
    def is_vit(self) -> bool: ...


R = TypeVar("R", bound=_Run)


def select_sources(method: str, runs: Sequence[R], baselines: Sequence[R]) -> list[R]:
    """The runs that ``method`` explains (the evaluation's protocol).

    Args:
        method: a method name or alias.
        runs: every run, objects with ``.variant`` (str) and ``.is_vit`` (bool).
        baselines: the baseline classifiers that post-hoc maps and most controls explain.

    Returns:
        A variant-named attention method: the non-ViT runs of that variant; ``cvx``: the non-ViT
        ``unconstrained`` runs; ``prior`` and ``dual_tau``: the non-ViT ``dual`` runs; ViT maps:
        the ViT runs; post-hoc maps and the other controls: ``baselines``; ``attention``: none.

    Raises:
        ValueError: for an unknown method.
    """
    source = get_method(method).source_variant
    if source is None:
        return []
    if source == VIT_SOURCE:
        return [r for r in runs if r.is_vit]
    if source == "baseline":
        return list(baselines)
    return [r for r in runs if not r.is_vit and r.variant == source]


def method_sources(methods: Sequence[str], variants: Sequence[str]) -> dict[str, str]:
    """Which trained variant each method explains (the demo's protocol: one model per variant).

    Variant-named methods (``tau_k``, ``dual``, ``exact`` ...) explain the model of that variant;
    ``cvx`` the ``unconstrained`` model; ``prior`` and ``dual_tau`` the ``dual`` model;
    ``attention`` is left out; every other method (post-hoc, the other controls, ViT maps -- a
    ViT's variant is ``baseline`` -- and names the registry does not know) explains the
    ``baseline``. Methods whose model is not among ``variants`` are left out.

    Example:
        >>> method_sources(["gradcam", "exact", "cvx", "prior", "center"],
        ...                ["baseline", "exact", "unconstrained", "dual"])
        {'gradcam': 'baseline', 'exact': 'exact', 'cvx': 'unconstrained', 'prior': 'dual', 'center': 'baseline'}
    """
    out: dict[str, str] = {}
    have = set(variants)
    for method in methods:
        spec = _find(method)
        source = "baseline" if spec is None else spec.source_variant
        if source is None:
            continue
        if source == VIT_SOURCE:
            source = "baseline"
        if source in have:
            out[method] = source
    return out
