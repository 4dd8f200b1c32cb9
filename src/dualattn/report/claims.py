"""The report's claims: sentences and tables computed from ``results["comparisons"]`` only (never typed).

* :func:`claim_sentence` -- one primary claim as ``(status, sentence)``: ``"holds"`` when its Holm-adjusted
  interval excludes the null (1 for a ratio, 0 for a difference) in the claim's direction, ``"no claim"`` when the
  evaluation recorded why none can be made (a classifier near chance, too few positive images), else
  ``"does not hold"`` with the reason (the interval reaches the null, or the other map scores better);
* :func:`secondary_rows` -- the secondary comparisons as table rows (their 95 % intervals, unadjusted: reported,
  not claimed);
* :func:`noninferiority_rows` -- every gated classifier's balanced accuracy against the baseline's.

Intervals are worded for what they are: a ratio's interval is compared with 1, a difference's with 0 (a
non-inferiority margin where the record says so).

Example:
    >>> rec = {"metric": "ap", "block": "block3", "protocol": "own_model", "ours": "dual", "ours_variant": "dual",
    ...        "ours_value": 60.0, "other": "lrp", "other_variant": "dual", "other_value": 50.0, "kind": "ratio",
    ...        "ratio": 1.2, "ci_low": 1.05, "ci_high": 1.37, "difference": 10.0, "null": 1.0,
    ...        "direction": "higher", "p_adjusted": 0.01, "level": 0.9875, "holds": True, "claim_blocked": None}
    >>> claim_sentence(rec)[0]
    'holds'
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from ..evaluate.specs import METRICS

__all__ = ["PROTOCOL_NAMES", "claim_sentence", "secondary_rows", "noninferiority_rows", "metric_label"]

#: how the report names the two protocols
PROTOCOL_NAMES: dict[str, str] = {
    "common_classifier": "scored on the baseline classifier",
    "own_model": "scored on its own model",
}


def metric_label(metric: str) -> str:
    """The metric's label without the ×100 suffix (``METRICS``' label; the key itself when unknown)."""
    spec = METRICS.get(metric)
    if spec is None:
        return {"ap": "AP", "iou@90": "IoU@90", "activation_precision": "activation precision",
                "balanced_accuracy": "balanced accuracy"}.get(metric, metric)
    return spec.label.replace(" ×100", "").replace(" %", "")


def _who(method: Any, variant: Any) -> str:
    if method == variant or variant in (None, "baseline") and method in (None, "baseline"):
        return str(method)
    return f"{method} of {variant}"


def _num(x: Any, fmt: str = ".2f") -> str:
    return "n/a" if not isinstance(x, (int, float)) or not math.isfinite(float(x)) else format(float(x), fmt)


def _interval(rec: Mapping[str, Any]) -> tuple[str, float | None, float | None]:
    if rec.get("kind") == "ratio" and rec.get("ratio") is not None:
        return "ratio", rec.get("ci_low"), rec.get("ci_high")
    return "difference", rec.get("diff_ci_low"), rec.get("diff_ci_high")


def claim_sentence(rec: Mapping[str, Any]) -> tuple[str, str]:
    """A primary claim as ``(status, sentence)`` (see the module docstring)."""
    kind, lo, hi = _interval(rec)
    null = rec.get("null", 1.0 if kind == "ratio" else 0.0)
    level = rec.get("level") or 0.95
    est = rec.get("ratio") if kind == "ratio" else rec.get("difference")
    ours = _who(rec.get("ours"), rec.get("ours_variant"))
    other = _who(rec.get("other"), rec.get("other_variant"))
    head = (f"{metric_label(str(rec.get('metric')))} at {rec.get('block')}, {PROTOCOL_NAMES.get(rec.get('protocol'), rec.get('protocol'))}: "
            f"{ours} {_num(rec.get('ours_value'), '.1f')} vs {other} {_num(rec.get('other_value'), '.1f')}; {kind} "
            f"{_num(est, '.2f' if kind == 'ratio' else '+.1f')}, Holm-adjusted {100 * level:.1f} % interval "
            f"{_num(lo, '.2f' if kind == 'ratio' else '+.1f')} to {_num(hi, '.2f' if kind == 'ratio' else '+.1f')}"
            f" (p adjusted {_num(rec.get('p_adjusted'), '.3g')})")
    if rec.get("claim_blocked"):
        return "no claim", f"{head}. No claim: {rec['claim_blocked']}."
    if rec.get("holds"):
        side = "above" if rec.get("direction") == "higher" else "below"
        return "holds", f"{head}. Holds: the interval lies {side} {_num(null, 'g')}."
    if lo is None or hi is None:
        return "does not hold", f"{head}. Does not hold: no interval could be computed."
    better = (est is not None) and ((est > null) if rec.get("direction") == "higher" else (est < null))
    why = f"the interval reaches {_num(null, 'g')}" if better else f"{other} scores better"
    return "does not hold", f"{head}. Does not hold: {why}."


def secondary_rows(results: Mapping[str, Any]) -> list[dict[str, str]]:
    """The secondary comparisons (and the primary ones' companions): one row each, 95 % intervals, no claim."""
    rows = []
    for rec in results.get("comparisons") or []:
        if rec.get("primary") or rec.get("metric") == "balanced_accuracy":
            continue
        kind, lo, hi = _interval(rec)
        est = rec.get("ratio") if kind == "ratio" else rec.get("difference")
        f = ".2f" if kind == "ratio" else "+.1f"
        rows.append({
            "protocol": PROTOCOL_NAMES.get(rec.get("protocol"), str(rec.get("protocol"))),
            "comparison": f"{metric_label(str(rec.get('metric')))} at {rec.get('block')}: "
                          f"{_who(rec.get('ours'), rec.get('ours_variant'))} vs "
                          f"{_who(rec.get('other'), rec.get('other_variant'))}",
            "values": f"{_num(rec.get('ours_value'), '.1f')} vs {_num(rec.get('other_value'), '.1f')}",
            "estimate": f"{kind} {_num(est, f)} [{_num(lo, f)}, {_num(hi, f)}]",
            "note": rec.get("claim_blocked") or "",
        })
    return rows


def noninferiority_rows(results: Mapping[str, Any]) -> list[dict[str, str]]:
    """Balanced accuracy of every gated classifier minus the baseline's, with the non-inferiority verdict."""
    rows = []
    for rec in results.get("comparisons") or []:
        if rec.get("metric") != "balanced_accuracy":
            continue
        lo, hi = rec.get("diff_ci_low"), rec.get("diff_ci_high")
        margin = rec.get("null", -3.0)
        verdict = ("no verdict: " + str(rec["claim_blocked"]) if rec.get("claim_blocked") else
                   "non-inferior" if rec.get("noninferior") else
                   "not shown non-inferior" if lo is not None else "no interval")
        rows.append({
            "variant": str(rec.get("ours")),
            "accuracy": f"{_num(rec.get('ours_value'), '.1f')} vs baseline {_num(rec.get('other_value'), '.1f')}",
            "difference": f"{_num(rec.get('difference'), '+.1f')} [{_num(lo, '+.1f')}, {_num(hi, '+.1f')}]",
            "verdict": f"{verdict} (margin {_num(margin, '+g')} points)",
        })
    return rows
