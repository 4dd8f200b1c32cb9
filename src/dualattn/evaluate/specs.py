"""The one table of what every reported metric means: label, description, better direction, format.

``results.json`` (its ``metrics`` section and every table's ``column_labels`` / ``higher_is_better``), the
Markdown/CSV tables and the HTML report all read :data:`METRICS`; nothing else keeps its own list.

Example:
    >>> from dualattn.evaluate.specs import METRICS, higher_is_better
    >>> METRICS["ap"].label, higher_is_better("auc_most_first")
    ('AP ×100', False)
"""

from __future__ import annotations

import dataclasses
import enum

__all__ = [
    "Direction",
    "MetricSpec",
    "METRICS",
    "metric_spec",
    "higher_is_better",
    "section_columns",
    "SECTIONS",
    "FILL_NAMES",
]


class Direction(str, enum.Enum):
    """Which way a metric is better."""

    HIGHER = "higher"
    LOWER = "lower"
    NONE = "none"  # descriptive only (e.g. sharpness)


@dataclasses.dataclass(frozen=True)
class MetricSpec:
    """One reported metric.

    Attributes:
        name: key in ``results.json`` (e.g. ``"ap"``).
        label: column header (with its unit or scale, e.g. ``"AP ×100"``).
        description: one sentence: what is measured, on which images, on which scale.
        direction: which way is better (:class:`Direction`).
        section: the results table it belongs to (``"segmentation"``, ``"perturbation"`` (the paper's fill),
            ``"perturbation_fills"`` (every fill), ``"diagnostics"`` or ``"classification"``).
        fmt: how a table prints it: ``"pct"`` one decimal (×100 metrics, milliseconds), ``"int"``
            an integer with thousands separators, ``"sig3"`` three significant digits.
    """

    name: str
    label: str
    description: str
    direction: Direction
    section: str
    fmt: str = "sig3"

    @property
    def higher_is_better(self) -> bool | None:
        """``True`` / ``False`` for ranked metrics, ``None`` for descriptive ones."""
        return {Direction.HIGHER: True, Direction.LOWER: False}.get(self.direction)


#: results.json table sections, in the order the tables are written.
SECTIONS: tuple[str, ...] = ("segmentation", "perturbation", "perturbation_fills", "hiding", "classification",
                             "diagnostics")

_H, _L, _N = Direction.HIGHER, Direction.LOWER, Direction.NONE

#: Every metric this package reports, in column order within each section.
METRICS: dict[str, MetricSpec] = {
    s.name: s
    for s in (
        MetricSpec("iou@97.5", "IoU@97.5 ×100",
                   "IoU of the map's top 2.5 % pixels with the mask, positive images, x100", _H, "segmentation", "pct"),
        MetricSpec("iou@95", "IoU@95 ×100",
                   "IoU of the map's top 5 % pixels with the mask, positive images, x100", _H, "segmentation", "pct"),
        MetricSpec("iou@90", "IoU@90 ×100",
                   "IoU of the map's top 10 % pixels with the mask, positive images, x100", _H, "segmentation", "pct"),
        MetricSpec("activation_precision", "activation precision ×100",
                   "share of the map's top 5 % pixels (voxels) inside the mask, positive images, x100",
                   _H, "segmentation", "pct"),
        MetricSpec("ap", "AP ×100",
                   "average precision of the map's pixel scores vs the mask (sklearn's), positive images, x100",
                   _H, "segmentation", "pct"),
        MetricSpec("pointing_game", "pointing game ×100",
                   "share of positive images whose map maximum lies in the mask, x100", _H, "diagnostics", "pct"),
        MetricSpec("auc_least_first", "AUC least-first ×100",
                   "area under balanced accuracy vs fraction removed, least important first (paper), x100",
                   _H, "perturbation", "pct"),
        MetricSpec("auc_most_first", "AUC most-first ×100",
                   "area under balanced accuracy vs fraction removed, most important first, x100",
                   _L, "perturbation", "pct"),
        MetricSpec("srg", "SRG ×100",
                   "symmetric relevance gain: AUC least-first minus AUC most-first (Blücher et al. 2024), x100",
                   _H, "perturbation", "pct"),
        MetricSpec("consistency_kl", "KL(marg fine ‖ coarse)",
                   "KL(marginalize(fine map) || coarse map), mean over images", _L, "diagnostics"),
        MetricSpec("randomization_spearman", "|Spearman| after weight randomization",
                   "absolute Spearman rank correlation of maps before/after randomizing all weights "
                   "(0: the map depends on the weights, as it should)", _L, "diagnostics"),
        MetricSpec("sharpness", "sharpness exp(H)/N",
                   "exp(entropy)/N of the map: 1 uniform, 1/N a single cell (descriptive; n/a for pixel-level "
                   "explainers, whose min-max scaled maps are not distributions)", _N, "diagnostics"),
        MetricSpec("sharpness_fg", "sharpness in the foreground",
                   "exp(entropy)/n of the map restricted to its foreground cells (at least half tissue; n of them): "
                   "1 flat on the tissue, however much background it leaves out (descriptive; n/a for pixel-level "
                   "explainers)", _N, "diagnostics"),
        MetricSpec("cost_ms", "ms / image",
                   "milliseconds per image to compute the map on this machine", _L, "diagnostics", "pct"),
        MetricSpec("balanced_accuracy", "balanced accuracy ×100",
                   "balanced accuracy on the test split, x100", _H, "classification", "pct"),
        MetricSpec("params", "#params", "number of parameters", _N, "classification", "int"),
    )
}

#: Fills of the perturbation protocol that get their own metric keys (``auc_least_first@road`` ...).
FILL_NAMES: tuple[str, ...] = ("mean", "background", "blur", "road")
_FILL_WORDS = {
    "mean": "removed pixels set to the image's own mean (the paper's protocol on z-scored scans)",
    "background": "removed pixels set to the image's own background intensity (1st percentile)",
    "blur": "removed pixels taken from a Gaussian-blurred copy of the image",
    "road": "removed pixels imputed from their neighbours plus noise (ROAD, Rong et al. 2022)",
}
for _fill in FILL_NAMES:
    for _base in ("auc_least_first", "auc_most_first", "srg"):
        _b = METRICS[_base]
        METRICS[f"{_base}@{_fill}"] = dataclasses.replace(
            _b, name=f"{_base}@{_fill}", label=f"{_b.label} [{_fill}]",
            description=f"{_b.description}; {_FILL_WORDS[_fill]}", section="perturbation_fills",
        )

_PROB = {
    "auc_least_first": ("AUC least-first, p(true) ×100",
                        "mean over images of the area under the true class's probability vs fraction removed, least "
                        "important first (ROAD / SRG follow the model's output), x100", _H),
    "auc_most_first": ("AUC most-first, p(true) ×100",
                       "mean over images of the area under the true class's probability vs fraction removed, most "
                       "important first, x100", _L),
    "srg": ("SRG, p(true) ×100",
            "per image AUC least-first minus AUC most-first of the true class's probability, mean over images, x100",
            _H),
}
for _fill in FILL_NAMES:
    for _base, (_label, _desc, _dir) in _PROB.items():
        METRICS[f"{_base}_prob@{_fill}"] = MetricSpec(
            f"{_base}_prob@{_fill}", f"{_label} [{_fill}]", f"{_desc}; {_FILL_WORDS[_fill]}", _dir,
            "perturbation_fills", "pct")

#: kept shares of the hiding test that get metric keys (``dualattn.evaluate.hiding.HIDING_KS``)
HIDING_KEYS: tuple[int, ...] = (10, 20, 35)
_HIDING_FILL_WORDS = {
    "swap": "every other pixel replaced by a matched healthy test image of another patient (5 partners)",
    "road": "every other pixel imputed by ROAD's noisy linear imputation",
}
for _tag, _words in _HIDING_FILL_WORDS.items():
    for _k in HIDING_KEYS:
        for _name, _label, _desc, _dir in (
            (f"hidden_{_tag}_flips@{_k}", f"hidden {_tag} flips@{_k} %",
             f"keep the top {_k} % of the map's foreground cells, {_words}: share of predictions that flip, all "
             "images (lower: the model cannot get around what the map hides)", _L),
            (f"hidden_{_tag}_flips_lesion@{_k}", f"… lesion images@{_k} %",
             f"as hidden_{_tag}_flips@{_k}, on the images of a non-healthy class", _L),
            (f"hidden_{_tag}_flips_healthy@{_k}", f"… healthy images@{_k} % (floor)",
             f"as hidden_{_tag}_flips@{_k}, on healthy images: the seam's own effect (the floor)", _L),
            (f"hidden_{_tag}_dlogp@{_k}", f"Δ log p hidden {_tag}@{_k}",
             f"mean change of log p(predicted class) under that swap (0: unchanged)", _N),
            (f"kept_{_tag}_flips@{_k}", f"kept {_tag} flips@{_k} %",
             f"swap the kept {_k} % cells instead ({_words.split(' replaced')[0].replace('every other pixel', 'same source')}), "
             "lesion images: share of predictions that flip (higher: the model uses what the map shows)", _H),
        ):
            METRICS[_name] = MetricSpec(_name, _label, _desc, _dir, "hiding", "pct")

#: Column order of the diagnostics table (the pointing game first, then the map's own properties).
_DIAGNOSTIC_ORDER = ("pointing_game", "sharpness", "sharpness_fg", "randomization_spearman", "consistency_kl",
                     "cost_ms")


def metric_spec(name: str) -> MetricSpec:
    """The spec of metric ``name``.

    Raises:
        ValueError: an unknown metric (the message lists the valid ones).
    """
    try:
        return METRICS[name]
    except KeyError:
        raise ValueError(f"unknown metric {name!r}; valid: {', '.join(METRICS)}") from None


def higher_is_better(name: str) -> bool | None:
    """``True`` / ``False`` for a ranked metric, ``None`` for a descriptive one."""
    return metric_spec(name).higher_is_better


def section_columns(section: str) -> tuple[str, ...]:
    """The metrics (columns) of a results table section, in order.

    Raises:
        ValueError: an unknown section.
    """
    if section not in SECTIONS:
        raise ValueError(f"unknown section {section!r}; valid: {', '.join(SECTIONS)}")
    if section == "diagnostics":
        return _DIAGNOSTIC_ORDER
    return tuple(name for name, s in METRICS.items() if s.section == section)
