"""The paper's Tables 1-3 (and a diagnostics table) as Markdown and CSV from a results dict.

Every table section of ``results.json`` has the layout the report reads::

    {"columns": [metric, ...], "column_labels": {metric: label}, "higher_is_better": {metric: bool|None},
     "rows": {row_name: {metric: {"mean": m, "std": s, "n": k, "values": [...]} | number}}}

Markdown cells print ``mean ± std`` (the std is left out when only one run contributed); each
header carries the better direction (``↑`` higher, ``↓`` lower). CSV files have one ``_mean``
and one ``_std`` column per metric and the direction in the header name.
"""

from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path
from typing import Any, Mapping

from .._io import atomic_write_text
from .specs import METRICS

__all__ = ["format_cell", "table_markdown", "table_csv", "write_tables", "TABLES"]

#: results.json section -> (file stem, title)
TABLES: dict[str, tuple[str, str]] = {
    "perturbation": ("table1_perturbation", "Table 1: input perturbation, AUC of balanced accuracy x100"),
    "perturbation_fills": ("table1b_perturbation_fills",
                           "Table 1b: input perturbation under every fill: AUC least-/most-first and SRG x100"),
    "segmentation": ("table2_segmentation", "Table 2: implicit segmentation, IoU at quantiles and AP x100"),
    "hiding": ("table5_hiding", "Hiding test: keep the top k % of the map's foreground cells, swap the rest "
                                "(common classifier: the baseline)"),
    "classification": ("table3_classification", "Table 3: classification, balanced accuracy x100 and parameters"),
    "diagnostics": ("table4_diagnostics", "Diagnostics: pointing game, sharpness, sanity check, consistency, cost"),
}


def _arrow(hib: bool | None) -> str:
    return " ↑" if hib is True else (" ↓" if hib is False else "")


def _word(hib: bool | None) -> str:
    return "higher" if hib is True else ("lower" if hib is False else "info")


def _split(cell: Any) -> tuple[float, float | None, int]:
    if isinstance(cell, Mapping):
        mean = cell.get("mean")
        std = cell.get("std")
        n = int(cell.get("n") or 0)
    else:
        mean, std, n = cell, None, 1
    try:
        m = float(mean) if mean is not None else math.nan
    except (TypeError, ValueError):
        m = math.nan
    s = float(std) if isinstance(std, (int, float)) and math.isfinite(float(std)) else None
    return m, s, n


def format_cell(cell: Any, *, column: str | None = None) -> str:
    """``"mean ± std"``; ``"—"`` when missing; the std only when more than one run contributed.

    The column's :class:`~dualattn.evaluate.specs.MetricSpec` decides the format: ×100 metrics (and ms) one
    decimal, ``params`` an integer with thousands separators, other metrics (KL, sharpness, correlations) and
    unknown columns three significant digits.

    Example:
        >>> format_cell({"mean": 71.234, "std": 2.0, "n": 3}, column="ap")
        '71.2 ± 2.0'
        >>> format_cell({"mean": 0.012345, "std": 0.001, "n": 2}, column="consistency_kl")
        '0.0123 ± 0.001'
    """
    m, s, n = _split(cell)
    if not math.isfinite(m):
        return "—"

    style = METRICS[column].fmt if column in METRICS else "sig3"

    def fmt(v: float) -> str:
        if style == "int":
            return f"{int(round(v)):,}"
        if style == "pct":
            return f"{v:.1f}"
        return f"{v:.3g}"

    text = fmt(m)
    if s is not None and n > 1:
        text += f" ± {fmt(s)}"
    return text


def table_markdown(section: Mapping[str, Any], *, row_header: str = "method", title: str | None = None) -> str:
    """One Markdown table from a section (see the module docstring)."""
    cols = list(section.get("columns") or [])
    labels = section.get("column_labels") or {}
    hib = section.get("higher_is_better") or {}
    lines = []
    if title:
        lines += [f"### {title}", ""]
    head = [row_header] + [f"{labels.get(c, c)}{_arrow(hib.get(c))}" for c in cols]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "|".join([":--"] + ["--:"] * len(cols)) + "|")
    for name, row in (section.get("rows") or {}).items():
        lines.append("| " + " | ".join([str(name)] + [format_cell(row.get(c), column=c) for c in cols]) + " |")
    return "\n".join(lines) + "\n"


def table_csv(section: Mapping[str, Any], *, row_header: str = "method") -> str:
    """One CSV table: ``row, <metric> [dir] mean, <metric> [dir] std, ...``."""
    cols = list(section.get("columns") or [])
    hib = section.get("higher_is_better") or {}
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    header = [row_header]
    for c in cols:
        header += [f"{c} [{_word(hib.get(c))}] mean", f"{c} [{_word(hib.get(c))}] std"]
    w.writerow(header)
    for name, row in (section.get("rows") or {}).items():
        out = [name]
        for c in cols:
            m, s, _ = _split(row.get(c))
            out += ["" if not math.isfinite(m) else repr(round(m, 6)), "" if s is None else repr(round(s, 6))]
        w.writerow(out)
    return buf.getvalue()


def write_tables(results: Mapping[str, Any], out: str | os.PathLike[str]) -> dict[str, dict[str, str]]:
    """Write every table section of ``results`` as ``<stem>.md`` and ``<stem>.csv`` plus ``tables.md``.

    Returns:
        section -> ``{"markdown": file name, "csv": file name}`` (relative to ``out``).
    """
    out = Path(out)
    written: dict[str, dict[str, str]] = {}
    parts = []
    for key, (stem, title) in TABLES.items():
        section = results.get(key)
        if not isinstance(section, Mapping) or not section.get("rows"):
            continue
        rh = "variant" if key == "classification" else "method [block]"
        md = table_markdown(section, row_header=rh, title=title)
        atomic_write_text(out / f"{stem}.md", md)
        atomic_write_text(out / f"{stem}.csv", table_csv(section, row_header=rh))
        written[key] = {"markdown": f"{stem}.md", "csv": f"{stem}.csv"}
        parts.append(md)
    if parts:
        atomic_write_text(out / "tables.md", "\n".join(parts))
    return written
