"""What ``results.json`` may claim: primary claims named in advance, Holm-adjusted, on intervals that hold
patients and seeds; everything else secondary, with its interval and no claim.

The first edition picked the best attention variant and the best post-hoc explainer on the test data and
bootstrapped only that pair, images resampled per seed (the audit: "holds" came out 11-23 % under a null at a
nominal 2.5 %). Here:

* **Primary claims** (:data:`DEFAULT_CLAIMS`, at most 6) are fixed before the test split is read: the
  featured map and the post-hoc explainer it is compared with were chosen on a validation split by the rule
  of ``benchmarks/select_claims.py`` (its JSON is ``benchmarks/results/claims_selection.json``; a test checks
  that the constants here are what it chose). Each is a :class:`ClaimSpec`: protocol, metric, block, the two
  methods, ratio or difference, direction.
* Every comparison's interval is :func:`dualattn.evaluate.intervals.crossed_comparison` (patients and seeds
  crossed, the pairing kept, ``n_boot`` patient replicates). The primary claims' p-values are Holm-adjusted
  (``p_adjusted``) and their intervals are reported at Holm's level for each (``level``): a primary claim
  *holds* only where that adjusted interval excludes 1 (a ratio) or 0 (a difference) in the claim's direction.
* **Secondary comparisons** -- the same pairs on the other metrics and blocks, every consistent-attention
  variant against the same explainer, classifier accuracy of every gated variant against the baseline as
  non-inferiority (margin -3 points) -- carry their unadjusted interval, ``primary: false`` and no claim
  (``holds`` is ``None``).
* A comparison is blocked (``claim_blocked``) when a classifier behind it is within :data:`CHANCE_MARGIN`
  points of chance or, for segmentation metrics, fewer than :data:`MIN_POSITIVES` positive images were scored.

Every record has the keys of :data:`RECORD_KEYS`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

import numpy as np

from ..models import CONSISTENT_VARIANTS
from .comparisons import BalancedAccuracy, Curves, PerImage, Srg
from .intervals import crossed_comparison, holm, holm_levels
from .results import RunNumbers
from .specs import METRICS

__all__ = [
    "CHANCE_MARGIN",
    "MIN_POSITIVES",
    "NONINFERIORITY_MARGIN",
    "SEGMENTATION_METRICS",
    "PROTOCOL_TEXT",
    "ClaimSpec",
    "DEFAULT_CLAIMS",
    "SELECTION",
    "RECORD_KEYS",
    "protocol_descriptions",
    "build_evidence",
    "build_comparisons",
]

#: a classifier within this many balanced-accuracy points (x100) of chance supports no claim
CHANCE_MARGIN = 10.0
#: fewer positive test images than this support no implicit-segmentation claim
MIN_POSITIVES = 30
#: a gated classifier is non-inferior when the interval of its accuracy minus the baseline's is above this
NONINFERIORITY_MARGIN = -3.0
SEGMENTATION_METRICS: tuple[str, ...] = ("iou@97.5", "iou@95", "iou@90", "activation_precision", "ap",
                                         "pointing_game")

PROTOCOL_TEXT: dict[str, str] = {
    "common_classifier": "every map is scored on the baseline classifier; post-hoc explainers explain the "
                         "baseline (the paper's protocol: a map of a gated model is scored on a model it does not "
                         "come from)",
    "own_model": "every map is scored on the model it comes from; post-hoc explainers also explain every gated "
                 "model (a faithfulness claim about a map is made here)",
}

#: where the primary claims' pairs were chosen (recorded in every record's ``selection``)
SELECTION = "val"
SELECTION_SOURCE = "benchmarks/results/claims_selection.json (benchmarks/select_claims.py: validation split of a " \
                   "draw other than the sealed one)"


@dataclasses.dataclass(frozen=True)
class ClaimSpec:
    """One claim named in advance.

    Attributes:
        name: short id, e.g. ``"own_model:ap@block3"``.
        protocol: ``"common_classifier"`` or ``"own_model"``.
        metric: a metric key of :data:`dualattn.evaluate.specs.METRICS` (or a segmentation metric).
        block: the block both maps are at.
        ours: the featured map (a consistent-attention method, which names its variant).
        other: the method it is compared with (a post-hoc explainer; under ``own_model`` explaining ``ours``'
            model, under ``common_classifier`` the baseline).
        kind: ``"ratio"`` (ours / other) or ``"difference"`` (ours - other).
        direction: ``"higher"`` or ``"lower"``: which side of the null the claim says ours is on.
    """

    name: str
    protocol: str
    metric: str
    block: str
    ours: str
    other: str
    kind: str = "ratio"
    direction: str = "higher"

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOL_TEXT:
            raise ValueError(f"claim {self.name}: protocol must be one of {list(PROTOCOL_TEXT)}, got {self.protocol!r}")
        if self.kind not in ("ratio", "difference"):
            raise ValueError(f"claim {self.name}: kind must be 'ratio' or 'difference', got {self.kind!r}")
        if self.direction not in ("higher", "lower"):
            raise ValueError(f"claim {self.name}: direction must be 'higher' or 'lower', got {self.direction!r}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ClaimSpec":
        fields = {f.name for f in dataclasses.fields(cls)}
        bad = sorted(set(d) - fields)
        if bad:
            raise ValueError(f"unknown claim field(s) {bad}; valid: {sorted(fields)}")
        return cls(**dict(d))


def _claim(protocol: str, metric: str, block: str, ours: str, other: str, kind: str = "ratio") -> ClaimSpec:
    return ClaimSpec(f"{protocol}:{metric}@{block}", protocol, metric, block, ours, other, kind)


#: The primary claims, named before the sealed test draw was read (see the module docstring). SRG on
#: probabilities can be negative, so it is compared as a ratio only where defined (the difference decides
#: otherwise; the record says which).
DEFAULT_CLAIMS: tuple[ClaimSpec, ...] = (
    _claim("own_model", "ap", "block3", "dual", "lrp"),
    _claim("own_model", "ap", "block4", "dual", "lrp"),
    _claim("own_model", "srg_prob@road", "block3", "dual", "lrp"),
    _claim("own_model", "srg_prob@road", "block4", "dual", "lrp"),
    _claim("common_classifier", "ap", "block3", "dual", "lrp"),
    _claim("common_classifier", "srg_prob@road", "block3", "dual", "gradcam_norelu"),
)

#: Keys of every comparison record, in order.
RECORD_KEYS: tuple[str, ...] = (
    "metric", "block", "protocol", "ours", "ours_variant", "ours_value", "other", "best_other", "other_variant",
    "other_value", "kind", "ratio", "ci_low", "ci_high", "difference", "diff_ci_low", "diff_ci_high", "null",
    "direction", "p_value", "p_adjusted", "level", "holds", "primary", "name", "selection", "resampled",
    "n_images", "n_patients", "n_seeds", "n_boot", "df", "noninferior", "claim_blocked", "note",
)

#: secondary metrics compared for every consistent-attention variant (fills are added per evaluation)
_SECONDARY = ("ap", "iou@90", "activation_precision")
_SECONDARY_PER_FILL = ("srg_prob", "auc_least_first_prob")


def protocol_descriptions(protocols: Sequence[str]) -> dict[str, dict[str, str]]:
    """``results.json``'s ``protocols`` section: what each evaluated protocol means and where its numbers are."""
    where = {"common_classifier": "methods (and the tables)", "own_model": "own_model/<variant>/methods"}
    return {p: {"description": PROTOCOL_TEXT[p], "results": where[p]} for p in protocols}


def _expand(values: Sequence[float], index: np.ndarray, n: int) -> np.ndarray:
    out = np.full(n, np.nan)
    out[index] = np.asarray(values, dtype=np.float64)
    return out


def build_evidence(numbers: RunNumbers, *, labels: np.ndarray, fractions: Sequence[float], positives: np.ndarray
                   ) -> dict[str, Any]:
    """``evidence[method][block][metric]`` over all ``N`` test images (segmentation metrics, scored on the
    positive images, are NaN elsewhere): per-image values (:class:`PerImage`), and per fill the accuracy curves
    and their SRG."""
    n = int(labels.shape[0])
    evidence: dict[str, Any] = {}
    for method, by_block in numbers.per_image.items():
        for block, by_metric in by_block.items():
            for metric, by_run in by_metric.items():
                rows = [np.asarray(by_run[k], dtype=np.float64) for k in sorted(by_run)]
                rows = [r if r.shape[0] == n else _expand(r, positives, n) for r in rows]
                evidence.setdefault(method, {}).setdefault(block, {})[metric] = PerImage(np.stack(rows))
    for method, by_block in numbers.predictions.items():
        for block, by_fill in by_block.items():
            for fill, orders in by_fill.items():
                curves = {order: Curves(np.asarray([by_run[k] for k in sorted(by_run)], dtype=np.int64), labels,
                                        tuple(fractions), order)
                          for order, by_run in orders.items()}
                slot = evidence.setdefault(method, {}).setdefault(block, {})
                for order, curve in curves.items():
                    slot[f"auc_{order}@{fill}"] = curve
                if {"least_first", "most_first"} <= set(curves):
                    slot[f"srg@{fill}"] = Srg(curves["least_first"], curves["most_first"])
    return evidence


def _direction(metric: str) -> str:
    if metric in SEGMENTATION_METRICS:
        return "higher"
    spec = METRICS.get(metric)
    return "higher" if spec is None else spec.direction.value


def _record(spec: ClaimSpec, a: Any, b: Any, groups: np.ndarray, *, ours_variant: str, other_variant: str,
            n_boot: int, seed: int, level: float = 0.95) -> dict[str, Any]:
    """One comparison record (not yet adjusted)."""
    diff = crossed_comparison(a, b, groups=groups, kind="difference", n_boot=n_boot, seed=seed, level=level)
    main = diff
    ratio = None
    if spec.kind == "ratio":
        ratio = crossed_comparison(a, b, groups=groups, kind="ratio", n_boot=n_boot, seed=seed, level=level)
        if ratio.kind == "ratio":
            main = ratio
    notes = [n for n in (main.note, None if main is diff else diff.note) if n]
    return {
        "metric": spec.metric, "block": spec.block, "protocol": spec.protocol, "ours": spec.ours,
        "ours_variant": ours_variant, "ours_value": main.a, "other": spec.other, "best_other": spec.other,
        "other_variant": other_variant, "other_value": main.b, "kind": main.kind,
        "ratio": main.estimate if main.kind == "ratio" else None,
        "ci_low": main.ci_low if main.kind == "ratio" else None,
        "ci_high": main.ci_high if main.kind == "ratio" else None,
        "difference": diff.estimate, "diff_ci_low": diff.ci_low, "diff_ci_high": diff.ci_high,
        "null": main.null, "direction": spec.direction, "p_value": main.p_value, "p_adjusted": None,
        "level": level, "holds": None, "primary": False, "name": spec.name, "selection": SELECTION,
        "resampled": list(main.resampled), "n_images": int(np.sum(np.any(np.isfinite(_values(a)), axis=0))),
        "n_patients": main.n_patients, "n_seeds": main.n_seeds, "n_boot": main.n_boot, "df": main.df,
        "claim_blocked": None, "note": "; ".join(dict.fromkeys(notes)) or None, "_se": main.se,
        "_estimate_w": None,
    }


def _values(ev: Any) -> np.ndarray:
    if isinstance(ev, PerImage):
        return ev.values
    return np.ones((1, ev.n_images))


def _evidence_pair(spec: ClaimSpec, common: Mapping[str, Any], own: Mapping[str, Mapping[str, Any]],
                   sources: Mapping[str, Mapping[str, Any]]) -> tuple[Any, Any, str, str] | None:
    """The two pieces of evidence a claim compares, and the variants whose models they explain."""
    variant = str(sources.get(spec.ours, {}).get("variant", spec.ours))
    if spec.protocol == "own_model":
        ev = own.get(variant, {})
        a = ev.get(spec.ours, {}).get(spec.block, {}).get(spec.metric)
        b = ev.get(spec.other, {}).get(spec.block, {}).get(spec.metric)
        return None if a is None or b is None else (a, b, variant, variant)
    a = common.get(spec.ours, {}).get(spec.block, {}).get(spec.metric)
    b = common.get(spec.other, {}).get(spec.block, {}).get(spec.metric)
    other_variant = str(sources.get(spec.other, {}).get("variant", "baseline"))
    return None if a is None or b is None else (a, b, variant, other_variant)


def build_comparisons(
    *, common: RunNumbers, own: Mapping[str, RunNumbers], test: Any, fractions: Sequence[float],
    run_rows: Sequence[Mapping[str, Any]], sources: Mapping[str, Mapping[str, Any]], settings: Any,
    classification: Mapping[str, Sequence[Sequence[int]]],
) -> list[dict[str, Any]]:
    """The ``comparisons`` list of ``results.json`` (see the module docstring)."""
    labels = test.labels.numpy()
    positives = test.positives.numpy()
    groups = np.asarray(test.patients)
    ev_common = build_evidence(common, labels=labels, fractions=fractions, positives=positives)
    ev_own = {v: build_evidence(nums, labels=labels, fractions=fractions, positives=positives)
              for v, nums in own.items()}
    specs = _claims(settings)
    fills = tuple(settings.fills)
    n_boot, seed = int(settings.n_boot), int(settings.seed)
    records: list[dict[str, Any]] = []
    done: set[tuple[str, str, str, str, str]] = set()
    for spec in specs:
        pair = _evidence_pair(spec, ev_common, ev_own, sources)
        if pair is None:
            continue
        a, b, va, vb = pair
        rec = _record(spec, a, b, groups, ours_variant=va, other_variant=vb, n_boot=n_boot, seed=seed)
        rec["primary"] = True
        records.append(rec)
        done.add((spec.protocol, spec.metric, spec.block, spec.ours, spec.other))
    # secondary: every consistent-attention variant against the same explainer, on more metrics
    comparator = {(s.protocol, s.block, _family_of(s.metric)): s.other for s in specs}
    secondary_metrics = list(_SECONDARY) + [f"{m}@{f}" for m in _SECONDARY_PER_FILL for f in fills] \
        + ([f"srg@{fills[0]}"] if fills else [])
    for protocol in settings.protocols:
        for method in CONSISTENT_VARIANTS:
            for block in settings.blocks:
                for metric in secondary_metrics:
                    other = comparator.get((protocol, block, _family_of(metric))) \
                        or comparator.get((protocol, "block3", _family_of(metric)))
                    if other is None or (protocol, metric, block, method, other) in done:
                        continue
                    spec = ClaimSpec(f"{protocol}:{metric}@{block}:{method}", protocol, metric, block, method, other,
                                     "ratio" if _family_of(metric) == "segmentation" else "difference",
                                     _direction(metric))
                    pair = _evidence_pair(spec, ev_common, ev_own, sources)
                    if pair is None:
                        continue
                    a, b, va, vb = pair
                    try:
                        records.append(_record(spec, a, b, groups, ours_variant=va, other_variant=vb, n_boot=n_boot,
                                               seed=seed))
                    except ValueError:  # no defined value (e.g. an empty hiding subset): nothing to compare
                        continue
                    done.add((protocol, metric, block, method, other))
    records += _accuracy_records(classification, labels, groups, n_boot=n_boot, seed=seed)
    _adjust(records, n_boot=n_boot, seed=seed, ev_common=ev_common, ev_own=ev_own, specs=specs, sources=sources,
            groups=groups)
    _block(records, run_rows=run_rows, sources=sources, n_positives=len(positives), num_classes=len(test.class_names))
    for rec in records:
        rec.pop("_se", None)
        rec.pop("_estimate_w", None)
    return [{k: rec.get(k) for k in RECORD_KEYS} for rec in records]


def _family_of(metric: str) -> str:
    return "segmentation" if metric in SEGMENTATION_METRICS else "faithfulness"


def _claims(settings: Any) -> tuple[ClaimSpec, ...]:
    if settings.claims == "default":
        return DEFAULT_CLAIMS
    return tuple(c if isinstance(c, ClaimSpec) else ClaimSpec.from_dict(c) for c in settings.claims)


def _accuracy_records(classification: Mapping[str, Sequence[Sequence[int]]], labels: np.ndarray,
                      groups: np.ndarray, *, n_boot: int, seed: int) -> list[dict[str, Any]]:
    """Balanced accuracy of every gated variant against the baseline's, as non-inferiority (secondary)."""
    base = classification.get("baseline")
    if not base:
        return []
    b = BalancedAccuracy(np.asarray(base, dtype=np.int64), labels)
    out = []
    for variant, preds in classification.items():
        if variant == "baseline":
            continue
        a = BalancedAccuracy(np.asarray(preds, dtype=np.int64), labels)
        r = crossed_comparison(a, b, groups=groups, kind="difference", null=NONINFERIORITY_MARGIN, n_boot=n_boot,
                               seed=seed)
        out.append({
            "metric": "balanced_accuracy", "block": None, "protocol": "own_model", "ours": variant,
            "ours_variant": variant, "ours_value": r.a, "other": "baseline", "best_other": "baseline",
            "other_variant": "baseline", "other_value": r.b, "kind": "difference", "ratio": None, "ci_low": None,
            "ci_high": None, "difference": r.estimate, "diff_ci_low": r.ci_low, "diff_ci_high": r.ci_high,
            "null": r.null, "direction": "higher", "p_value": r.p_value, "p_adjusted": None, "level": r.level,
            "holds": None, "primary": False, "name": f"noninferiority:{variant}", "selection": "named",
            "resampled": list(r.resampled), "n_images": int(labels.shape[0]), "n_patients": r.n_patients,
            "n_seeds": r.n_seeds, "n_boot": r.n_boot, "df": r.df, "claim_blocked": None,
            "note": f"non-inferiority: holds when the interval of the difference lies above "
                    f"{NONINFERIORITY_MARGIN:g} points" + (f"; {r.note}" if r.note else ""),
            "noninferior": bool(r.ci_low is not None and r.ci_low > NONINFERIORITY_MARGIN),
        })
    return out


def _adjust(records: list[dict[str, Any]], *, n_boot: int, seed: int, ev_common: Any, ev_own: Any,
            specs: Sequence[ClaimSpec], sources: Any, groups: np.ndarray) -> None:
    """Holm over the primary records: ``p_adjusted``, the interval at Holm's level, ``holds``."""
    primary = [r for r in records if r["primary"]]
    if not primary:
        return
    p_adj = holm([r["p_value"] for r in primary])
    levels = holm_levels([r["p_value"] for r in primary])
    by_name = {s.name: s for s in specs}
    for rec, p, level in zip(primary, p_adj, levels):
        rec["p_adjusted"] = p
        if level is None:
            continue
        spec = by_name[rec["name"]]
        a, b, va, vb = _evidence_pair(spec, ev_common, ev_own, sources)  # type: ignore[misc]
        adjusted = _record(spec, a, b, groups, ours_variant=va, other_variant=vb, n_boot=n_boot, seed=seed,
                           level=float(level))
        for key in ("ratio", "ci_low", "ci_high", "diff_ci_low", "diff_ci_high", "level"):
            rec[key] = adjusted[key]
        lo, hi = (rec["ci_low"], rec["ci_high"]) if rec["kind"] == "ratio" else (rec["diff_ci_low"], rec["diff_ci_high"])
        null = rec["null"]
        if lo is None or hi is None:
            rec["holds"] = False
        else:
            rec["holds"] = bool(lo > null) if rec["direction"] == "higher" else bool(hi < null)


def _block(records: list[dict[str, Any]], *, run_rows: Sequence[Mapping[str, Any]],
           sources: Mapping[str, Mapping[str, Any]], n_positives: int, num_classes: int) -> None:
    accuracy: dict[str, list[float]] = {}
    for row in run_rows:
        accuracy.setdefault(str(row["variant"]), []).append(float(row["balanced_accuracy"]))
    chance = 100.0 / max(int(num_classes), 1)
    for rec in records:
        blocked = []
        for variant in {rec["ours_variant"], rec["other_variant"]}:
            acc = float(np.mean(accuracy[variant])) if accuracy.get(variant) else math.nan
            if not acc > chance + CHANCE_MARGIN:
                blocked.append(f"the {variant} classifier ({acc:.1f}) is within {CHANCE_MARGIN:.0f} points of "
                               f"chance ({chance:.1f})")
        if rec["metric"] in SEGMENTATION_METRICS and n_positives < MIN_POSITIVES:
            blocked.append(f"only {n_positives} positive images (< {MIN_POSITIVES})")
        rec["claim_blocked"] = "; ".join(sorted(blocked)) or None
        if blocked and rec["primary"]:
            rec["holds"] = False
        if blocked and rec.get("noninferior") is not None:
            rec["noninferior"] = None  # a classifier near chance: no verdict either way

