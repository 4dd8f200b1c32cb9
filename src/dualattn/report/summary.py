"""The report's opening: a plain-language summary computed from ``results.json``, and a glossary.

Every sentence of :func:`plain_summary` is built from numbers in the results (the claims' verdicts and intervals,
the classification rows, the hiding test), so a reader can check each against the tables and figures below it;
nothing is typed by hand. When a number is missing the sentence is left out rather than guessed.

Example:
    >>> plain_summary({"meta": {"variants": ["baseline", "dual"], "seeds": [0, 1, 2], "dataset": "synthetic-brain",
    ...                         "n_images": 128, "n_patients": 64, "sealed": True}})[0][:60]
    'Trained: baseline and dual (3 seeds each) on synthetic-brain'
"""

from __future__ import annotations

import math
from typing import Any, Mapping

__all__ = ["plain_summary", "GLOSSARY"]

#: term -> definition (the report prints them in this order)
GLOSSARY: dict[str, str] = {
    "map": "a heatmap over the scan saying where the decision rests; block3 is a finer grid (e.g. 16×16 for a 64×64 "
           "scan), block4 a coarser one (8×8).",
    "attention map": "the map a gated model computes itself and multiplies its features by; consistent maps agree "
                     "between block3 and block4 (the coarse map is the fine one summed over each block).",
    "post-hoc map": "a map computed afterwards from a trained model's gradients or relevance: GradCAM, Input×Gradient, "
                    "Integrated Gradients, DeepLIFT, LRP.",
    "control": "a map every method must beat to mean anything: random, a centred blob, a raw input channel, a dual "
               "model's image-independent prior, the lesion itself (oracle).",
    "AP": "average precision of the map's pixel ranking against the lesion mask (100: every lesion pixel ranked above "
          "every other pixel); on scans with a lesion.",
    "IoU@90": "overlap (intersection over union) of the map's top 10 % of pixels with the lesion mask, ×100.",
    "activation precision": "share of the map's top 5 % of pixels that lie inside the lesion, ×100.",
    "LeRF / MoRF": "remove pixels least-relevant-first / most-relevant-first according to the map and watch the model's "
                   "output: a faithful map keeps the output under LeRF and destroys it under MoRF.",
    "SRG": "symmetric relevance gain: the area under the LeRF curve minus the area under the MoRF curve (higher: more "
           "faithful); p marks the curves of each scan's probability of its true class, the others balanced accuracy.",
    "ROAD": "what replaces removed pixels: a smooth imputation from their neighbours plus a little noise, so the shape "
            "of the removed region leaks as little as possible.",
    "hiding test": "keep the top k % of a map's cells, replace everything else with the same region of a healthy scan "
                   "of another patient, and count how often the prediction flips: a model that uses only what its map "
                   "shows flips almost never; the healthy scans' own flips are the floor.",
    "protocols": "a map scored on the baseline's classifier (the paper's protocol) or on its own model (the only fair "
                 "way to compare two maps of one model).",
    "interval": "a 95 % interval that resamples test patients and training seeds together; claims named in advance "
                "are widened by Holm's procedure for testing six at once. A ratio's interval is compared with 1, a "
                "difference's with 0.",
    "non-inferior": "a gated classifier's balanced accuracy minus the baseline's has its whole interval above -3 "
                    "points.",
    "sharpness": "exp(entropy)/N of a map: 1 for a flat map, small for a map concentrated on few cells.",
}


def _mean(cell: Any) -> float | None:
    if isinstance(cell, Mapping):
        cell = cell.get("mean")
    try:
        v = float(cell)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _join(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def plain_summary(results: Mapping[str, Any]) -> list[str]:
    """Sentences a physician can check against the report's tables (see the module docstring)."""
    meta = results.get("meta") or {}
    out: list[str] = []
    variants = [str(v) for v in meta.get("variants") or []]
    seeds = meta.get("seeds") or []
    if variants:
        sealed = " (the sealed test draw, which no study chose anything on)" if meta.get("sealed") else ""
        out.append(f"Trained: {_join(variants)} ({len(seeds)} seed{'s' if len(seeds) != 1 else ''} each) on "
                   f"{meta.get('dataset', 'the data')}; tested on {meta.get('n_images', '?')} scans of "
                   f"{meta.get('n_patients', '?')} patients{sealed}.")
    rows = (results.get("classification") or {}).get("rows") or {}
    base = _mean((rows.get("baseline") or {}).get("balanced_accuracy"))
    if base is not None:
        comps = [c for c in results.get("comparisons") or [] if c.get("metric") == "balanced_accuracy"
                 and not c.get("claim_blocked")]
        ni = [c["ours"] for c in comps if c.get("noninferior")]
        not_ni = [c["ours"] for c in comps if not c.get("noninferior")]
        text = f"The baseline classifies {base:.1f} % of the test scans right (balanced accuracy)."
        chance = 100.0 / max(1, len(meta.get("class_names") or [0, 1]))
        if base <= chance + 10.0:
            text += " That is near chance: no map of these models can be read as an explanation."
        if ni:
            text += f" Gated models shown not to cost more than 3 points: {_join(ni)}."
        if not_ni:
            text += f" Not shown (interval reaches below -3 points): {_join(not_ni)}."
        out.append(text)
    primary = [c for c in results.get("comparisons") or [] if c.get("primary")]
    for family, question in (("ap", "Does the {ours} map find the lesion better (AP) than the post-hoc map it was "
                                    "compared with?"),
                             ("srg_prob", "Is the {ours} map more faithful (SRG) than the post-hoc map it was "
                                          "compared with?")):
        claims = [c for c in primary if str(c.get("metric", "")).startswith(family)]
        if not claims:
            continue
        held = [c for c in claims if c.get("holds")]
        blocked = [c for c in claims if c.get("claim_blocked")]
        ours = claims[0].get("ours")
        parts = []
        for c in claims:
            who = c.get("other") if c.get("protocol") == "common_classifier" else f"{c.get('other')} of {ours}"
            verdict = "no claim" if c.get("claim_blocked") else ("holds" if c.get("holds") else "does not hold")
            parts.append(f"vs {who} at {c.get('block')} ({'baseline' if c.get('protocol') == 'common_classifier' else 'own model'}): "
                         f"{verdict}")
        out.append(question.format(ours=ours) + f" {len(held)} of {len(claims)} claims hold"
                   + (f", {len(blocked)} cannot be made" if blocked else "")
                   + " — " + "; ".join(parts) + ".")
    featured = primary[0].get("ours") if primary else None
    own = (((results.get("own_model") or {}).get(featured or "") or {}).get("methods") or {})
    cells = ((own.get(featured or "") or {}).get("blocks") or {}).get("block3") or {}
    flips = _mean(cells.get("hidden_swap_flips@20"))
    floor = _mean(cells.get("hidden_swap_flips_healthy@20"))
    kept = _mean(cells.get("kept_swap_flips@20"))
    if flips is not None:
        text = (f"Does the {featured} model use only what its map shows? Keeping the top 20 % of its block3 map and "
                f"swapping the rest with a healthy scan flips {flips:.1f} % of its predictions")
        if floor is not None:
            text += f" (healthy scans patched the same way: {floor:.1f} %)"
        if kept is not None:
            text += f"; swapping the kept cells instead flips {kept:.1f} % of lesion scans"
        if flips > 2.0:
            verdict = "so the model also uses what the map hides"
        elif kept is not None and kept >= 50.0:
            verdict = "so, at this share, the model barely uses what the map hides and does use what it shows"
        else:
            verdict = ("the predictions hardly change either way, so this says little about the map (a model that "
                       "ignores its input flips nothing)")
        out.append(f"{text}: {verdict}.")
    uniform = [w for w in results.get("warnings") or [] if "nearly uniform" in str(w)]
    if uniform:
        out.append(f"{len(uniform)} attention map(s) are nearly flat (see Warnings): such a map shows no place at all.")
    return out
