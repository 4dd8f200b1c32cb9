"""Warnings a reader of ``results.json`` must see next to the numbers, computed from the numbers.

* an attention map that is nearly uniform (sharpness exp(H)/N above :data:`NEAR_UNIFORM`): the model
  barely attends, whatever its AP says;
* a method that scores below the ``random`` control (its map points away from the lesion, or the classifier
  depends on what it hides);
* a control (``prior``: the dual witness's image-independent map; ``center``: a centered Gaussian) that rivals a
  consistent-attention method: part of that method's score is a fixed spatial prior.

Example:
    >>> result_warnings({"methods": {"exact": {"source": {}, "blocks": {"block3": {"sharpness": {"mean": 0.97}}}}}})
    ['exact [block3]: the attention map is nearly uniform (sharpness 0.97 > 0.9): the model barely attends']
"""

from __future__ import annotations

from typing import Any, Mapping

from ..explain import method_family
from ..models import CONSISTENT_VARIANTS

__all__ = ["NEAR_UNIFORM", "RIVAL_SHARE", "near_uniform_maps", "below_random", "rival_controls", "result_warnings"]

#: sharpness above this: a nearly uniform map
NEAR_UNIFORM = 0.9
#: a control whose score reaches this share of a method's rivals it
RIVAL_SHARE = 0.9
#: metrics compared with the random control (higher is better for both)
_AGAINST_RANDOM = ("ap", "auc_least_first", "srg@road")
_ATTENTION_FAMILIES = ("attention", "cvx")


def _mean(cell: Any) -> float | None:
    value = cell.get("mean") if isinstance(cell, Mapping) else cell
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def _family(method: str) -> str:
    try:
        return method_family(method)
    except ValueError:
        return "other"


def near_uniform_maps(results: Mapping[str, Any]) -> list[str]:
    """One warning per attention map (method, block) whose mean sharpness exceeds :data:`NEAR_UNIFORM`."""
    out = []
    for method, entry in (results.get("methods") or {}).items():
        if _family(method) not in _ATTENTION_FAMILIES:
            continue
        for block, cells in (entry.get("blocks") or {}).items():
            sharp = _mean(cells.get("sharpness"))
            if sharp is not None and sharp > NEAR_UNIFORM:
                out.append(f"{method} [{block}]: the attention map is nearly uniform (sharpness {sharp:.2f} > "
                           f"{NEAR_UNIFORM:g}): the model barely attends")
    return out


def below_random(results: Mapping[str, Any]) -> list[str]:
    """One note per (method, block, metric) scoring below the ``random`` control at that block."""
    methods = results.get("methods") or {}
    rnd = (methods.get("random") or {}).get("blocks") or {}
    out = []
    for method, entry in methods.items():
        if method == "random":
            continue
        for block, cells in (entry.get("blocks") or {}).items():
            for metric in _AGAINST_RANDOM:
                mine, ref = _mean(cells.get(metric)), _mean((rnd.get(block) or {}).get(metric))
                if mine is not None and ref is not None and mine < ref:
                    out.append(f"{method} [{block}]: {metric} {mine:.1f} is below the random control's {ref:.1f}")
    return out


def rival_controls(results: Mapping[str, Any], *, metric: str = "ap") -> list[str]:
    """One note per consistent-attention method and block whose ``metric`` a control (``prior``, ``center``)
    reaches to within :data:`RIVAL_SHARE`."""
    methods = results.get("methods") or {}
    out = []
    for method in CONSISTENT_VARIANTS:
        for block, cells in ((methods.get(method) or {}).get("blocks") or {}).items():
            mine = _mean(cells.get(metric))
            if mine is None or mine <= 0:
                continue
            for control in ("prior", "center"):
                ref = _mean((((methods.get(control) or {}).get("blocks") or {}).get(block) or {}).get(metric))
                if ref is not None and ref >= RIVAL_SHARE * mine:
                    out.append(f"{method} [{block}]: the {control} control reaches {metric} {ref:.1f} against "
                               f"{mine:.1f}: much of the map's score is a fixed spatial prior")
    return out


def result_warnings(results: Mapping[str, Any]) -> list[str]:
    """Every warning above, in that order."""
    return [*near_uniform_maps(results), *below_random(results), *rival_controls(results)]
