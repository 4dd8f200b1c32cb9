"""Assembling ``results.json``: per-run numbers -> mean ± std per method, block and metric, and the tables.

The per-run numbers arrive one (method, run) unit record at a time (:meth:`RunNumbers.add`); :func:`assemble`
turns them into the schema of ``docs/evaluation.md``. Labels, descriptions and directions come from
:data:`dualattn.evaluate.specs.METRICS` only.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch

from .specs import METRICS, section_columns
from .statistics import mean_std

__all__ = ["SCHEMA_VERSION", "RunNumbers", "assemble", "section"]

SCHEMA_VERSION = 3


class RunNumbers:
    """Per-run numbers gathered from unit records: method -> block -> metric -> one value per run.

    A run without a value for a metric gets NaN at its index, so ``values[k]`` is always run ``k``'s.
    ``notes`` gathers the evaluation's notes in the order they arise (the units' own among them).
    """

    def __init__(self) -> None:
        self.per_run: dict[str, dict[str, dict[str, list[float]]]] = {}
        #: method -> block -> fill -> order -> one curve per run
        self.curves: dict[str, dict[str, dict[str, dict[str, list[list[float]]]]]] = {}
        #: method -> block -> metric -> one list of per-image values per run (index k)
        self.per_image: dict[str, dict[str, dict[str, dict[int, list[float]]]]] = {}
        #: method -> block -> fill -> order -> one (N, F) prediction table per run (index k)
        self.predictions: dict[str, dict[str, dict[str, dict[str, dict[int, list[list[int]]]]]]] = {}
        self.notes: list[str] = []

    def _append(self, method: str, block: str, name: str, value: float, k: int) -> None:
        lst = self.per_run.setdefault(method, {}).setdefault(block, {}).setdefault(name, [])
        while len(lst) < k:
            lst.append(math.nan)
        lst.append(value)

    def add(self, record: Mapping[str, Any], *, method: str, k: int) -> None:
        """Add run ``k``'s unit record of ``method`` (metrics, curves, per-image values, predictions,
        consistency and notes)."""
        self.notes.extend(record["errors"])
        for block, vals in record["metrics"].items():
            self.per_run.setdefault(method, {}).setdefault(block, {})
            for name, value in vals.items():
                self._append(method, block, name, value, k)
            for fill, orders in record["curves"].get(block, {}).items():
                crv = self.curves.setdefault(method, {}).setdefault(block, {}).setdefault(fill, {})
                for order, acc in orders.items():
                    crv.setdefault(order, []).append(acc)
            for metric, values in record.get("per_image", {}).get(block, {}).items():
                self.per_image.setdefault(method, {}).setdefault(block, {}).setdefault(metric, {})[k] = values
            for fill, orders in record.get("predictions", {}).get(block, {}).items():
                for order, table in orders.items():
                    (self.predictions.setdefault(method, {}).setdefault(block, {}).setdefault(fill, {})
                     .setdefault(order, {}))[k] = table
        cons = record.get("consistency")
        if cons is not None:
            self._append(method, cons["pair"], "consistency_kl", cons["value"], k)


def section(rows: dict[str, dict[str, Any]], name: str) -> dict[str, Any]:
    """One table section: its columns, their labels and directions, and the rows."""
    columns = section_columns(name)
    return {
        "columns": list(columns),
        "column_labels": {c: METRICS[c].label for c in columns},
        "higher_is_better": {c: METRICS[c].higher_is_better for c in columns},
        "rows": rows,
    }


def _curve_stats(runs: list[list[float]]) -> tuple[list[float], list[float]]:
    t = torch.tensor(runs, dtype=torch.float64)
    std = t.std(0, unbiased=True) if t.shape[0] > 1 else torch.zeros(t.shape[1])
    return t.mean(0).tolist(), std.tolist()


def assemble(
    numbers: RunNumbers, *, fractions: Sequence[float], sources: Mapping[str, Any], run_rows: Sequence[Mapping[str, Any]],
    blocks: Sequence[str],
) -> dict[str, Any]:
    """Every section of ``results.json`` but ``meta`` and ``tables``.

    Args:
        numbers: the per-run numbers of every unit.
        fractions: the perturbation curve's removed fractions.
        sources: method -> ``{"variant", "runs"}`` it explained.
        run_rows: one row per run: run, variant, model, seed, balanced_accuracy, params.
        blocks: the evaluated blocks (the report's curves are those of the first).
    """
    seg_cols, pert_cols, fill_cols, diag_cols, hide_cols = (
        section_columns(s) for s in ("segmentation", "perturbation", "perturbation_fills", "diagnostics", "hiding"))
    methods_out: dict[str, Any] = {}
    seg_rows: dict[str, dict[str, Any]] = {}
    pert_rows: dict[str, dict[str, Any]] = {}
    fill_rows: dict[str, dict[str, Any]] = {}
    diag_rows: dict[str, dict[str, Any]] = {}
    hide_rows: dict[str, dict[str, Any]] = {}
    for method, by_block in numbers.per_run.items():
        entry: dict[str, Any] = {"source": sources.get(method, {}), "blocks": {}}
        pair_kl = None
        for block, vals in by_block.items():
            stats = {name: mean_std(v) for name, v in vals.items()}
            if "+" in block:
                entry["consistency"] = {"blocks": block.split("+"), **stats}
                pair_kl = stats.get("consistency_kl")
                continue
            entry["blocks"][block] = stats
            row = f"{method} [{block}]"
            if any(c in stats for c in seg_cols):
                seg_rows[row] = {c: stats[c] for c in seg_cols if c in stats}
            if any(c in stats for c in pert_cols):
                pert_rows[row] = {c: stats[c] for c in pert_cols if c in stats}
            if any(c in stats for c in fill_cols):
                fill_rows[row] = {c: stats[c] for c in fill_cols if c in stats}
            if any(c in stats for c in hide_cols):
                hide_rows[row] = {c: stats[c] for c in hide_cols if c in stats}
            diag_rows[row] = {c: stats[c] for c in diag_cols if c in stats}
        if pair_kl is not None:
            for block in entry["blocks"]:
                diag_rows[f"{method} [{block}]"]["consistency_kl"] = pair_kl
        methods_out[method] = entry

    curves: dict[str, Any] = {}
    report_curves: dict[str, Any] = {}
    for method, by_block in numbers.curves.items():
        for block, by_fill in by_block.items():
            c: dict[str, Any] = {"fractions": list(fractions), "fills": {}}
            for i, (fill, orders) in enumerate(by_fill.items()):
                entry_fill: dict[str, Any] = {}
                for order, runs in orders.items():
                    if not runs:
                        continue
                    mean, std = _curve_stats(runs)
                    key = f"auc_{order}" if i == 0 and not order.endswith("_prob") else f"auc_{order}@{fill}"
                    entry_fill[order] = {"mean": mean, "std": std, "runs": runs,
                                         "auc": methods_out[method]["blocks"][block].get(key)}
                c["fills"][fill] = entry_fill
                if i == 0:  # the paper's fill also under the un-suffixed keys
                    c.update(entry_fill)
            curves.setdefault(method, {})[block] = c
            if block == blocks[0] or block == "patches":
                lf = c.get("least_first")
                if lf:
                    report_curves[method] = {"fractions": list(fractions), "mean": lf["mean"], "std": lf["std"],
                                             "auc": lf["auc"]}

    cls_rows: dict[str, dict[str, Any]] = {}
    multi_model = len({r["model"] for r in run_rows}) > 1
    grouped: dict[str, list[Mapping[str, Any]]] = {}
    for r in run_rows:
        grouped.setdefault(f"{r['model']}:{r['variant']}" if multi_model else r["variant"], []).append(r)
    for key, rows in grouped.items():
        params = sorted({r["params"] for r in rows})
        cls_rows[key] = {
            "balanced_accuracy": mean_std([r["balanced_accuracy"] for r in rows]),
            "params": params[0] if len(params) == 1 else mean_std(params),
        }

    return {
        "schema_version": SCHEMA_VERSION,
        "notes": numbers.notes,
        "metrics": {name: {"direction": s.direction.value, "label": s.label, "description": s.description}
                    for name, s in METRICS.items()},
        "methods": methods_out,
        "curves": curves,
        "segmentation": section(seg_rows, "segmentation"),
        "perturbation": {**section(pert_rows, "perturbation"), "curves": report_curves},
        "perturbation_fills": section(fill_rows, "perturbation_fills"),
        "hiding": section(hide_rows, "hiding"),
        "classification": section(cls_rows, "classification"),
        "diagnostics": section(diag_rows, "diagnostics"),
        "runs": list(run_rows),
    }
