"""One self-contained HTML report from a results dict (``results.json``).

The page needs nothing but itself: CSS is inline, figures are base64 PNGs, there is no script. It is
laid out for a laptop screen (a centred column at most ~1100 px wide; wide figures are split and
scaled, wide tables wrap their header text) so nobody has to scroll sideways.

Results layout read here (the one :mod:`dualattn.evaluate` writes; missing sections are skipped)::

    {
      "meta": {"dataset": ..., "model": ..., "seeds": [...], "versions": {...}, "wall_time_s": ...},
      "segmentation": {"columns": [...], "higher_is_better": {col: bool},
                       "rows": {method: {col: {"mean": m, "std": s, "n": k} | number}}},
      "perturbation": {"columns": [...], "rows": {...},
                       "curves": {method: {"fractions": [...], "mean": [...], "std": [...]}}},
      "classification": {"columns": [...], "rows": {variant: {"params": n, "balanced_accuracy": {...}}}},
      "notes": ["free text", ...]
    }

A cell is a number or ``{"mean", "std"}``; ``None``/NaN prints as an em dash. Each table marks the best
value per column (higher is better unless ``higher_is_better`` says otherwise; ``params`` is not ranked).
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import logging
import math
import os
import re
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from ..evaluate.specs import METRICS
from ..evaluate.units import EVAL_REFERENCES
from .claims import PROTOCOL_NAMES, claim_sentence, noninferiority_rows, secondary_rows
from .summary import GLOSSARY, plain_summary
from ..explain import LRP_DESCRIPTION, METHOD_ALIASES, method_family, methods_in_family
from ..models import CONSISTENT_VARIANTS

logger = logging.getLogger(__name__)

__all__ = ["render_report", "write_report", "paper_ordering_notes", "cell_value", "best_per_column", "pivot_blocks"]

#: Columns that are counts: descriptive, never ranked.
UNRANKED_COLUMNS = frozenset({"params", "parameters", "n", "n_images", "count", "seeds"})
#: Columns that are not metrics of dualattn.evaluate where lower is better (results from elsewhere).
LOWER_IS_BETTER = frozenset({"loss", "ece", "penalty", "kl", "time_s", "wall_time_s"})

#: The methods the paper proposes (consistent attention), used for the honest-ordering note.
PROPOSED_METHODS = CONSISTENT_VARIANTS
#: Post-hoc explainers the paper compares against (row names start with one of these): the explain registry's
#: post-hoc family, their short aliases, and ``cvx`` (Eq. 4 solved after training).
POSTHOC_METHODS = (
    *methods_in_family("posthoc"),
    *(alias for alias, name in METHOD_ALIASES.items() if method_family(name) == "posthoc"),
    "cvx",
)

#: Headings and legends of the optional sections ``dualattn.evaluate`` may add.
_EXTRA_SECTIONS = {
    "perturbation_fills": ("Input perturbation under every fill",
                           "The perturbation protocol with four values for the removed pixels: the image's mean (the "
                           "paper's on z-scored scans), its background (1st percentile), a blurred copy, and ROAD's "
                           "noisy linear imputation from the neighbours (which leaks the least shape information). "
                           "AUC least-first (higher: the map keeps what the classifier needs), most-first (lower) "
                           "and SRG = their difference (higher), ×100, mean ± std over seeds."),
    "diagnostics": ("Diagnostics", "Further checks per method: pointing game (the map's peak inside the lesion), "
                    "sharpness, sanity check against randomized weights, consistency between the fine and coarse "
                    "maps, and cost. Arrows give the better direction; unmarked columns are informative only."),
}

_CSS = """
:root { --fg:#1d2330; --muted:#5b6474; --line:#d8dde6; --best:#e3f4e1; --bestfg:#125d12; --accent:#1f5fa8; }
* { box-sizing: border-box; }
body { margin:0; font: 15px/1.5 -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif;
       color: var(--fg); background:#f6f7f9; }
main { max-width: 1100px; margin: 0 auto; padding: 18px 22px 60px; background:#fff; }
h1 { font-size: 1.6em; margin: .2em 0 .1em; }
h2 { font-size: 1.2em; margin: 1.6em 0 .4em; border-bottom: 2px solid var(--line); padding-bottom: .2em; }
p.lead { color: var(--muted); margin-top: 0; }
.note { background:#fff6e0; border-left: 4px solid #e0a100; padding: .6em .9em; margin: .8em 0; }
.ok { background:#e9f6ec; border-left: 4px solid #2e9d47; padding: .6em .9em; margin: .8em 0; }
.note ul, .ok ul { margin: .3em 0; padding-left: 1.3em; }
table { border-collapse: collapse; width: 100%; table-layout: auto; margin: .4em 0 1em; font-size: .9em; }
th, td { border-bottom: 1px solid var(--line); padding: 4px 6px; text-align: right; overflow-wrap: anywhere; }
th { background:#eef1f5; font-weight: 600; }
th:first-child, td:first-child { text-align: left; }
th.group { text-align: center; border-bottom: 2px solid var(--line); }
td.best { background: var(--best); color: var(--bestfg); font-weight: 700; }
td .sd { color: var(--muted); font-weight: 400; font-size: .85em; }
dl.meta { display: grid; grid-template-columns: max-content 1fr; gap: 2px 14px; margin: .5em 0; }
dl.meta dt { font-weight: 600; color: var(--muted); }
dl.meta dd { margin: 0; overflow-wrap: anywhere; }
ul.summary { background:#f3f6fb; border-left: 4px solid var(--accent); padding: .6em 1em .6em 2em; margin: .4em 0; }
ul.summary li { margin: .25em 0; }
dl.glossary { display: grid; grid-template-columns: max-content 1fr; gap: 4px 16px; margin: .5em 0; }
dl.glossary dt { font-weight: 600; }
dl.glossary dd { margin: 0; color: var(--muted); }
pre.card { white-space: pre-wrap; font-size: .85em; background:#f6f7f9; padding: .6em; }
figure { margin: .6em 0 1.2em; }
figure img { max-width: 100%; height: auto; display: block; }
figcaption { color: var(--muted); font-size: .85em; margin-top: .3em; }
.legend { color: var(--muted); font-size: .85em; }
footer { color: var(--muted); font-size: .8em; margin-top: 3em; }
"""


def cell_value(cell: Any) -> tuple[float, float | None]:
    """Split a table cell into ``(mean, std)``; missing or non-numeric -> ``(nan, None)``.

    Example:
        >>> cell_value({"mean": 61.5, "std": 2.0})
        (61.5, 2.0)
        >>> cell_value(3)
        (3.0, None)
    """
    if isinstance(cell, Mapping):
        mean = cell.get("mean", cell.get("value"))
        std = cell.get("std")
    else:
        mean, std = cell, None
    try:
        m = float(mean) if mean is not None else math.nan
    except (TypeError, ValueError):
        m = math.nan
    try:
        s = float(std) if std is not None else None
    except (TypeError, ValueError):
        s = None
    if s is not None and not math.isfinite(s):
        s = None
    return m, s


def _higher_is_better(column: str, overrides: Mapping[str, Any] | None) -> bool | None:
    """True/False for ranked columns, None for descriptive ones: the results' own word, else the metric's
    spec (:data:`dualattn.evaluate.specs.METRICS`), else guessed from the column's name."""
    if overrides and column in overrides:
        value = overrides[column]
        return None if value is None else bool(value)
    if column in METRICS:
        return METRICS[column].higher_is_better
    key = column.lower()
    if key in UNRANKED_COLUMNS:
        return None
    return key not in LOWER_IS_BETTER


def best_per_column(rows: Mapping[str, Mapping[str, Any]], columns: Sequence[str],
                    *, higher_is_better: Mapping[str, Any] | None = None,
                    tol: float = 1e-9) -> dict[str, set[str]]:
    """Row names holding the best mean of each ranked column (ties all marked; NaN never best).

    Args:
        rows: row -> column -> cell.
        columns: the columns to rank.
        higher_is_better: column -> bool (or None: not ranked); defaults by column name.
        tol: absolute tolerance for ties.

    Returns:
        column -> set of best row names (empty for unranked columns, all-NaN columns, and columns where the
        best value is shared: a tie singles nothing out).

    Example:
        >>> best_per_column({"a": {"x": 1}, "b": {"x": 2}}, ["x"])
        {'x': {'b'}}
    """
    out: dict[str, set[str]] = {}
    for col in columns:
        hib = _higher_is_better(col, higher_is_better)
        values = {name: cell_value(r.get(col))[0] for name, r in rows.items()}
        finite = {k: v for k, v in values.items() if math.isfinite(v)}
        if hib is None or not finite:
            out[col] = set()
            continue
        target = max(finite.values()) if hib else min(finite.values())
        winners = {k for k, v in finite.items() if abs(v - target) <= tol}
        out[col] = winners if len(winners) == 1 else set()  # a shared best singles nothing out
    return out


def _fmt_number(value: float, *, column: str) -> str:
    if not math.isfinite(value):
        return "—"
    if column.lower() in UNRANKED_COLUMNS or (float(value).is_integer() and abs(value) >= 1000):
        if abs(value) >= 1e6:
            return f"{value / 1e6:.2f} M"
        if abs(value) >= 1e4:
            return f"{value / 1e3:.1f} k"
        return f"{value:.0f}"
    return f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}" if abs(value) >= 1 else f"{value:.3f}"


def _columns_of(section: Mapping[str, Any]) -> list[str]:
    cols = section.get("columns")
    if cols:
        return [str(c) for c in cols]
    seen: dict[str, None] = {}
    for row in (section.get("rows") or {}).values():
        for key in row:
            seen.setdefault(str(key), None)
    return list(seen)


_ROW_BLOCK = re.compile(r"^(?P<method>.+?) \[(?P<block>[^\]]+)\]$")


def pivot_blocks(section: Mapping[str, Any], *, max_columns: int = 10) -> dict[str, Any] | None:
    """Turn rows ``"method [block]"`` into one row per method with a column group per block.

    That is the paper's layout (one row per method, metrics side by side) and halves the table's length.
    Returns ``None`` (keep the section as is) when a row has no ``[block]`` suffix, there is a single
    block, or the pivoted table would exceed ``max_columns`` numeric columns.

    Example:
        >>> sec = {"columns": ["ap"], "rows": {"a [b3]": {"ap": 1}, "a [b4]": {"ap": 2}}}
        >>> pivot_blocks(sec)["rows"]
        {'a': {'ap [b3]': 1, 'ap [b4]': 2}}
    """
    rows: Mapping[str, Mapping[str, Any]] = section.get("rows") or {}
    parsed = {name: _ROW_BLOCK.match(str(name)) for name in rows}
    if not rows or not all(parsed.values()):
        return None
    blocks = list(dict.fromkeys(m.group("block") for m in parsed.values() if m))
    columns = _columns_of(section)
    if len(blocks) < 2 or len(columns) * len(blocks) > max_columns:
        return None
    labels = section.get("column_labels") or {}
    hib = section.get("higher_is_better") or {}
    new_rows: dict[str, dict[str, Any]] = {}
    for name, row in rows.items():
        m = parsed[name]
        if m is None:  # excluded above; keeps type checkers content
            continue
        target = new_rows.setdefault(m.group("method"), {})
        for col in columns:
            target[f"{col} [{m.group('block')}]"] = row.get(col)
    new_cols = [f"{c} [{b}]" for b in blocks for c in columns]
    return {
        "columns": new_cols,
        "column_labels": {f"{c} [{b}]": labels.get(c, c) for b in blocks for c in columns},
        "higher_is_better": {f"{c} [{b}]": hib[c] for b in blocks for c in columns if c in hib},
        "rows": new_rows,
        "groups": [(b, len(columns)) for b in blocks],
    }


def _table_html(section: Mapping[str, Any], *, row_header: str, caption: str | None = None,
                pivot: bool = False) -> str:
    if pivot:
        section = pivot_blocks(section) or section
    rows: Mapping[str, Mapping[str, Any]] = section.get("rows") or {}
    if not rows:
        return '<p class="legend">No rows.</p>'
    columns = _columns_of(section)
    labels: Mapping[str, str] = section.get("column_labels") or {}
    hib = section.get("higher_is_better") or {}
    # controls are scored like the methods but are never "best": they are what a method must beat
    ranked = {name: row for name, row in rows.items() if _family(str(name)) != "control"}
    best = best_per_column(ranked, columns, higher_is_better=hib)
    parts = ["<table>"]
    if caption:
        parts.append(f"<caption class=\"legend\" style=\"caption-side:bottom;text-align:left\">{html.escape(caption)}</caption>")
    head = "".join(
        f"<th>{html.escape(str(labels.get(c, c)))}"
        f"{'' if _higher_is_better(c, hib) is None else (' ↑' if _higher_is_better(c, hib) else ' ↓')}</th>"
        for c in columns
    )
    groups = section.get("groups")
    group_row = ""
    if groups:
        group_row = "<tr><th></th>" + "".join(
            f'<th colspan="{int(n)}" class="group">{html.escape(str(g))}</th>' for g, n in groups) + "</tr>"
    parts.append(f"<thead>{group_row}<tr><th>{html.escape(row_header)}</th>{head}</tr></thead><tbody>")
    for name, row in rows.items():
        cells = []
        for col in columns:
            cell = row.get(col)
            mean, std = cell_value(cell)
            if isinstance(cell, Mapping) and cell.get("n") is not None and int(cell.get("n") or 0) <= 1:
                std = None  # one run: no spread to show
            text = html.escape(_fmt_number(mean, column=col))
            if std is not None and math.isfinite(mean):
                text += f' <span class="sd">± {html.escape(_fmt_number(std, column=col))}</span>'
            cls = ' class="best"' if name in best.get(col, set()) else ""
            cells.append(f"<td{cls}>{text}</td>")
        parts.append(f"<tr><td>{html.escape(str(name))}</td>{''.join(cells)}</tr>")
    parts.append("</tbody></table>")
    return "".join(parts)


def _img_tag(png: bytes, *, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _meta_html(meta: Mapping[str, Any]) -> str:
    items = []
    for key, value in meta.items():
        if isinstance(value, Mapping):
            text = ", ".join(f"{k} {v}" for k, v in value.items())
        elif isinstance(value, (list, tuple)):
            text = ", ".join(str(v) for v in value)
        elif key.endswith("wall_time_s") and isinstance(value, (int, float)):
            text = f"{float(value):.0f} s ({float(value) / 60:.1f} min)"
        else:
            text = str(value)
        label = str(key).removesuffix("_s").replace("_", " ")
        items.append(f"<dt>{html.escape(label)}</dt><dd>{html.escape(text)}</dd>")
    return f'<dl class="meta">{"".join(items)}</dl>'


def _rank(rows: Mapping[str, Mapping[str, Any]], column: str, *, higher: bool = True) -> list[str]:
    scored = [(cell_value(r.get(column))[0], name) for name, r in rows.items()]
    scored = [(v, n) for v, n in scored if math.isfinite(v)]
    scored.sort(key=lambda t: -t[0] if higher else t[0])
    return [n for _, n in scored]


def _family(name: str) -> str:
    key = name.lower()
    base = key.split("/")[0].split("@")[0].split(":")[0].split(" [")[0].strip()
    if base in EVAL_REFERENCES:
        return "control"
    try:
        if method_family(base) == "control":
            return "control"
    except ValueError:
        pass
    if any(base.startswith(p) for p in PROPOSED_METHODS):
        return "proposed"
    if any(base.startswith(p) for p in POSTHOC_METHODS):
        return "posthoc"
    return "other"


def _report_curves(results: Mapping[str, Any]) -> dict[str, Any]:
    """``perturbation.curves`` (one per method, the first block), completed from the per-block ``curves``
    section for methods that have no map at that block (e.g. ``tau_l``, whose only gate is coarse)."""
    curves: dict[str, Any] = dict((results.get("perturbation") or {}).get("curves") or {})
    for method, by_block in (results.get("curves") or {}).items():
        if method in curves or not isinstance(by_block, Mapping):
            continue
        for block, entry in by_block.items():
            least = entry.get("least_first") if isinstance(entry, Mapping) else None
            if isinstance(least, Mapping) and least.get("mean"):
                curves[f"{method} [{block}]"] = {"fractions": entry.get("fractions", []), "mean": least["mean"],
                                                 "std": least.get("std"), "auc": least.get("auc")}
                break
    return curves


def _fmt_ratio(rec: Mapping[str, Any]) -> str:
    if rec.get("ratio") is None:
        lo, hi = rec.get("diff_ci_low"), rec.get("diff_ci_high")
        return (f"difference {rec.get('difference', float('nan')):+.1f} (95 % CI {lo:+.1f} to {hi:+.1f})"
                if lo is not None and hi is not None else "no interval")
    return f"ratio {rec['ratio']:.2f} (95 % CI {rec['ci_low']:.2f}–{rec['ci_high']:.2f})"


def paper_ordering_notes(results: Mapping[str, Any]) -> list[tuple[bool, str]]:
    """The primary claims (named in advance) as ``(holds, sentence)`` pairs, from ``results["comparisons"]`` only
    (:func:`dualattn.report.claims.claim_sentence`). Results of the first edition, whose records have no
    ``primary`` key, are read as before."""
    records = results.get("comparisons") or []
    if any("primary" in rec for rec in records):
        return [(status == "holds", text) for status, text in
                (claim_sentence(rec) for rec in records if rec.get("primary"))]
    notes: list[tuple[bool, str]] = []
    for rec in records:
        metric, block = rec.get("metric"), rec.get("block")
        label = METRICS[metric].label if metric in METRICS else str(metric)
        head = (f"{label} at {block}: {rec.get('ours')} {rec.get('ours_value', float('nan')):.1f} vs "
                f"{rec.get('best_other')} {rec.get('other_value', float('nan')):.1f}, {_fmt_ratio(rec)}")
        p = rec.get("p_value")
        head += f", p = {p:.3g}" if isinstance(p, (int, float)) else ""
        if rec.get("claim_blocked"):
            notes.append((False, f"{head}. No claim: {rec['claim_blocked']}."))
        elif rec.get("holds"):
            notes.append((True, f"{head}. Holds: the interval excludes 1 in favour of {rec.get('ours')}."))
        else:
            ours_better = rec.get("ours_value", 0) > rec.get("other_value", 0)
            if rec.get("direction") == "lower":
                ours_better = not ours_better
            why = ("the interval includes 1" if ours_better else
                   f"{rec.get('best_other')} scores better")
            notes.append((False, f"{head}. Does not hold: {why}."))
    return notes


def _claims_html(results: Mapping[str, Any]) -> list[str]:
    """The claims section: the primary claims (Holm-adjusted, per protocol), one line for the ones no claim can
    be made on, the secondary comparisons and the classifiers' non-inferiority (all from ``comparisons``)."""
    out = ["<h2>What the evidence supports</h2>"]
    protocols = results.get("protocols") or {}
    records = results.get("comparisons") or []
    if protocols:
        out.append('<p class="legend">Two protocols, each named: ' + "; ".join(
            f"<b>{html.escape(PROTOCOL_NAMES.get(p, p))}</b> (<code>{html.escape(p)}</code>): "
            f"{html.escape(str(d.get('description', '')))}" for p, d in protocols.items()) + ".</p>")
    primary = [r for r in records if r.get("primary")]
    if not any("primary" in r for r in records):  # a first-edition results.json (best of each side on test)
        notes = paper_ordering_notes(results)
        holding = [t for ok, t in notes if ok]
        failing = [t for ok, t in notes if not ok]
        if notes:
            out.append('<p class="legend">A results.json of the first edition: the best of each side picked on the '
                       "test data, images resampled per seed; its intervals are too narrow (re-run the evaluation).</p>")
        if holding:
            out.append('<div class="ok"><b>Holds</b><ul>' + "".join(f"<li>{html.escape(t)}</li>" for t in holding)
                       + "</ul></div>")
        if failing:
            out.append('<div class="note"><b>Does not hold, or no claim</b><ul>' + "".join(
                f"<li>{html.escape(t)}</li>" for t in failing) + "</ul></div>")
        return out
    if primary:
        out.append('<p class="legend">Claims named before the test data were read (the pair compared in each was '
                   "chosen on a validation split). Each interval resamples test patients and training seeds together "
                   "(a t over the seeds' estimates combined with a patient bootstrap) and is widened by Holm's "
                   "procedure over the claims; a claim holds only where that interval lies on its side of 1 (a "
                   "ratio) or 0 (a difference).</p>")
        sentences = [claim_sentence(r) for r in primary]
        holding = [t for st, t in sentences if st == "holds"]
        failing = [t for st, t in sentences if st == "does not hold"]
        blocked = [r for r, (st, _) in zip(primary, sentences) if st == "no claim"]
        if holding:
            out.append('<div class="ok"><b>Holds</b><ul>' + "".join(f"<li>{html.escape(t)}</li>" for t in holding)
                       + "</ul></div>")
        if failing:
            out.append('<div class="note"><b>Does not hold</b><ul>' + "".join(
                f"<li>{html.escape(t)}</li>" for t in failing) + "</ul></div>")
        if blocked:
            reasons = sorted({part for r in blocked for part in str(r.get("claim_blocked")).split("; ")})
            out.append(f'<p class="legend"><b>No claim</b> for {len(blocked)} of {len(primary)} primary claims: '
                       f"{html.escape('; '.join(reasons))}.</p>")
    else:
        out.append('<p class="legend">No primary claim applies to these runs (the claims named in advance compare '
                   "methods this evaluation has not): only the secondary comparisons below, which claim nothing.</p>")
    rows = secondary_rows(results)
    if rows:
        blocked = sum(1 for r in rows if r["note"])
        out.append(f"<details><summary>Secondary comparisons ({len(rows)}; 95 % intervals, not adjusted: reported, "
                   "not claimed)</summary><table><thead><tr><th>protocol</th><th>comparison</th><th>values</th>"
                   "<th>estimate [95 % interval]</th></tr></thead><tbody>" + "".join(
                       f"<tr><td>{html.escape(r['protocol'])}</td><td>{html.escape(r['comparison'])}</td>"
                       f"<td>{html.escape(r['values'])}</td><td>{html.escape(r['estimate'])}</td></tr>" for r in rows)
                   + "</tbody></table>"
                   + (f'<p class="legend">{blocked} of them could support no claim even if they were primary '
                      "(see <code>claim_blocked</code> in results.json).</p>" if blocked else "")
                   + "</details>")
    acc = noninferiority_rows(results)
    if acc:
        out.append('<p class="legend"><b>Does attention cost accuracy?</b> Balanced accuracy of each gated classifier '
                   "minus the baseline's, with its 95 % interval (patients and seeds); non-inferior when the whole "
                   "interval lies above the margin.</p><table><thead><tr><th>variant</th><th>balanced accuracy</th>"
                   "<th>difference [95 % interval]</th><th>verdict</th></tr></thead><tbody>" + "".join(
                       f"<tr><td>{html.escape(r['variant'])}</td><td>{html.escape(r['accuracy'])}</td>"
                       f"<td>{html.escape(r['difference'])}</td><td>{html.escape(r['verdict'])}</td></tr>"
                       for r in acc) + "</tbody></table>")
    return out


def own_model_section(results: Mapping[str, Any], variant: str, *, block: str | None = None) -> dict[str, Any] | None:
    """A table section of ``own_model[variant]`` (every map of that model scored on that model): AP, the
    probability SRG under each fill, and the hiding test at k = 20, one row per map and block."""
    entry = ((results.get("own_model") or {}).get(variant) or {}).get("methods") or {}
    if not entry:
        return None
    cols = ["ap"] + sorted({c for m in entry.values() for cells in (m.get("blocks") or {}).values() for c in cells
                            if c.startswith("srg_prob@")}) + ["hidden_swap_flips@20", "hidden_swap_flips_healthy@20",
                                                              "kept_swap_flips@20"]
    rows = {}
    for method, m in entry.items():
        for b, cells in (m.get("blocks") or {}).items():
            if block is None or b == block:
                rows[f"{method} [{b}]"] = {c: cells.get(c) for c in cols if c in cells}
    cols = [c for c in cols if any(c in r for r in rows.values())]
    if not rows or not cols:
        return None
    return {"columns": cols, "column_labels": {c: METRICS[c].label if c in METRICS else c for c in cols},
            "higher_is_better": {c: METRICS[c].higher_is_better if c in METRICS else True for c in cols},
            "rows": rows}


def hiding_section(results: Mapping[str, Any]) -> dict[str, Any] | None:
    """The hiding table in a width a page can hold: hidden-swap flips at every k, the healthy floor and the
    kept-swap flips at 20 (or the middle k), one row per map and block (``common_classifier``)."""
    sec = results.get("hiding") or {}
    rows = sec.get("rows") or {}
    if not rows:
        return None
    ks = sorted({int(c.split("@")[1]) for r in rows.values() for c in r if c.startswith("hidden_swap_flips@")})
    if not ks:
        return None
    mid = 20 if 20 in ks else ks[len(ks) // 2]
    cols = [f"hidden_swap_flips@{k}" for k in ks] + [f"hidden_swap_flips_healthy@{mid}", f"kept_swap_flips@{mid}"]
    return {"columns": cols, "column_labels": {c: METRICS[c].label for c in cols},
            "higher_is_better": {c: METRICS[c].higher_is_better for c in cols},
            "rows": {name: {c: r.get(c) for c in cols} for name, r in rows.items()}}


def fill_winners(results: Mapping[str, Any]) -> list[str]:
    """Per perturbation fill: which method (and block) has the best LeRF AUC and the best SRG."""
    rows = (results.get("perturbation_fills") or {}).get("rows") or {}
    fills = dict.fromkeys(c.split("@", 1)[1] for row in rows.values() for c in row if "@" in c)
    out = []
    for fill in fills:
        parts = []
        for metric in (f"auc_least_first@{fill}", f"srg@{fill}"):
            order = _rank(rows, metric, higher=True)
            if order:
                parts.append(f"{METRICS[metric].label.split(' [')[0]}: {order[0]} "
                             f"({cell_value(rows[order[0]][metric])[0]:.1f})")
        if parts:
            out.append(f"{fill}: " + "; ".join(parts))
    return out


def render_report(results: Mapping[str, Any], *, examples: Sequence[Mapping[str, Any]] | None = None,
                  title: str = "dualattn report", cards: Mapping[str, str] | None = None) -> str:
    """Render the report as one HTML string (see the module docstring for the results layout).

    Args:
        results: the results dict.
        examples: optional example scans for the overlay grid; each ``{"image": (C, H, W), "mask":
            (1, H, W), "maps": {method: (h, w)}, "id": str, "label": int, "pred": int}``.
        title: page title.
        cards: variant -> its model card (markdown, :func:`dualattn.cards.model_card`), shown folded.

    Returns:
        The HTML document.

    Raises:
        ValueError: if ``results`` is not a mapping.
    """
    if not isinstance(results, Mapping):
        raise ValueError(f"results must be a mapping (the parsed results.json), got {type(results).__name__}")
    from . import figures, triplanar

    meta = dict(results.get("meta") or {})
    body: list[str] = [f"<h1>{html.escape(title)}</h1>"]
    dataset = meta.get("dataset", "")
    model = meta.get("model", "")
    body.append(
        '<p class="lead">The attention maps of gated classifiers next to post-hoc explainers: how well each map '
        "outlines the lesion (implicit segmentation), how faithful it is to the model it comes from (input "
        "perturbation), and whether the model can get around what the map hides (the hiding test)."
        + (f" Data: <b>{html.escape(str(dataset))}</b>." if dataset else "")
        + (f" Model: <b>{html.escape(str(model))}</b>." if model else "")
        + "</p>"
    )

    summary = plain_summary(results)
    if summary:
        body.append('<section id="summary"><h2>In short</h2><ul class="summary">'
                    + "".join(f"<li>{html.escape(s)}</li>" for s in summary) + "</ul></section>")
    body.append("<h2>What was run</h2>")
    body.append(_meta_html(meta) if meta else '<p class="legend">No run information recorded.</p>')

    free_notes = [str(n) for n in results.get("notes") or []]
    warnings = [str(w) for w in results.get("warnings") or []]
    body.extend(_claims_html(results))
    winners = fill_winners(results)
    if winners:
        body.append('<p class="legend"><b>Which map wins depends on what replaces the removed pixels</b> '
                    "(best LeRF AUC and best SRG per fill):</p><ul>"
                    + "".join(f"<li>{html.escape(w)}</li>" for w in winners) + "</ul>")
    if warnings:
        body.append('<div class="note"><b>Warnings</b><ul>' + "".join(
            f"<li>{html.escape(w)}</li>" for w in warnings) + "</ul></div>")
    for note in free_notes:
        body.append(f'<p class="legend">{html.escape(note)}</p>')

    seg = results.get("segmentation") or {}
    if seg.get("rows"):
        body.append("<h2>Implicit segmentation (paper Table 2 layout)</h2>")
        body.append('<p class="legend">Positive test scans only. Each map is compared with the lesion mask: '
                    "IoU of the top 2.5 / 5 / 10 % of the map's pixels with the mask, and average precision; "
                    "mean ± std over seeds, ×100. Best per column highlighted.</p>")
        body.append(_table_html(seg, row_header="method", pivot=True))
        if any(_family(r) == "control" for r in seg["rows"]):
            body.append('<p class="legend">Controls, scored like the methods: <i>prior</i> is the dual model\'s '
                        "image-independent map (its witness alone, the same for every scan); <i>dual_tau</i> the dual "
                        "model's gate map before the reparameterization; <i>center</i> a centered Gaussian of the "
                        "lesions' mean size (measured on the training masks); <i>raw_channel_k</i> the k-th input "
                        "channel itself (a lesion bright in that channel is found by intensity alone); "
                        "<i>random</i> a random map. A method worth showing a physician beats every one.</p>")

    pert = results.get("perturbation") or {}
    if pert.get("rows"):
        body.append("<h2>Input perturbation (paper Table 1 layout)</h2>")
        body.append('<p class="legend">Pixels are removed from the least to the most important according to '
                    "each map; the baseline classifier's balanced accuracy is measured at each fraction. The "
                    "area under that curve (×100) is higher when the map keeps what the classifier needs. "
                    "Best per column highlighted.</p>")
        body.append(_table_html(pert, row_header="method", pivot=True))
        if any(str(r).startswith("lrp") for r in pert["rows"]):
            body.append(f'<p class="legend">LRP rules: {html.escape(LRP_DESCRIPTION)}</p>')
    curves = _report_curves(results)
    if curves:
        try:
            png = figures.curves_png(curves)
            body.append(f"<figure>{_img_tag(png, alt='perturbation curves')}<figcaption>Perturbation curves "
                        "(paper Figure 3): balanced accuracy against the fraction of least-important pixels "
                        "removed; band: ± one std over seeds.</figcaption></figure>")
        except ValueError as exc:
            logger.warning("perturbation curves not drawn: %s", exc)
            body.append(f'<p class="note">Perturbation curves not drawn: {html.escape(str(exc))}</p>')

    if examples:
        names = list(meta.get("class_names") or []) or None
        body.append("<h2>Example scans (paper Figures 4-5)</h2>")
        body.append('<p class="legend">Each row is one test scan; the first column shows the scan with the '
                    "ground-truth lesion contour (cyan), the others each method's heatmap (bright = important) "
                    "over the scan.</p>")
        flat = [ex for ex in examples if not triplanar.is_volume_example(ex)]
        volumes = [ex for ex in examples if triplanar.is_volume_example(ex)]
        for k, png in enumerate(figures.example_grid_png(flat, class_names=names) if flat else []):
            body.append(f"<figure>{_img_tag(png, alt=f'example heatmaps {k + 1}')}</figure>")
        if volumes:
            body.append('<p class="legend">3-D scans: three orthogonal planes through the lesion\'s centroid (and, '
                        "where a method's map peaks elsewhere, through its peak), the lesion contour on each, one "
                        "row per method; radiological convention (the patient's right on the image's left).</p>")
        for k, (caption, png) in enumerate(triplanar.example_pngs(volumes, class_names=names)):
            body.append(f"<figure>{_img_tag(png, alt=f'tri-planar example {k + 1}')}"
                        f"<figcaption>{html.escape(caption)}</figcaption></figure>")

    cls = results.get("classification") or {}
    if cls.get("rows"):
        body.append("<h2>Classifiers (paper Table 3 layout)</h2>")
        body.append('<p class="legend">Parameters and balanced accuracy on the test split, per variant. '
                    "Attention must not cost accuracy.</p>")
        body.append(_table_html(cls, row_header="variant"))

    hide = hiding_section(results)
    if hide:
        body.append("<h2>Can the model get around what its map hides? (the hiding test)</h2>")
        body.append('<p class="legend">Keep the top k % of a map\'s foreground cells, replace every other pixel with '
                    "the same pixels of a healthy test scan of another patient whose anatomy overlaps most (5 such "
                    "partners), and ask the baseline classifier again: the share of predictions that flip (lower: the "
                    "model could not use what the map hides). The healthy column is the floor (a healthy scan patched "
                    "with another healthy scan); the kept column swaps the kept cells instead on lesion scans "
                    "(higher: the model does use what the map shows). <i>lesion_oracle</i> keeps the lesion itself "
                    "and its surroundings; <i>random</i> a random region of the same size.</p>")
        body.append(_table_html(hide, row_header="map"))
    for variant in (results.get("own_model") or {}):
        if variant == "baseline":
            continue
        sec = own_model_section(results, variant)
        if sec is None or len(sec["rows"]) < 2:
            continue
        body.append(f"<h2>Every map of the {html.escape(variant)} model, scored on the {html.escape(variant)} "
                    "model</h2>")
        body.append('<p class="legend">The <code>own_model</code> protocol: the attention map and the post-hoc '
                    f"explainers of the same {html.escape(variant)} classifier, its probability of the true class under "
                    "input perturbation (SRG: least-important-first minus most-important-first area, ×100) and the "
                    "hiding test on the same model. A comparison between two maps of one model is a comparison "
                    "between maps, not between models.</p>")
        body.append(_table_html(sec, row_header="map"))

    extra = [k for k in results if k not in {"meta", "segmentation", "perturbation", "classification", "notes",
                                              "examples", "schema", "schema_version", "comparisons", "warnings",
                                              "hiding", "own_model", "protocols"}]
    for key in extra:
        section = results[key]
        if isinstance(section, Mapping) and isinstance(section.get("rows"), Mapping) and section["rows"]:
            heading, legend = _EXTRA_SECTIONS.get(key, (str(key).replace("_", " ").capitalize(), ""))
            body.append(f"<h2>{html.escape(heading)}</h2>")
            if legend:
                body.append(f'<p class="legend">{html.escape(legend)}</p>')
            body.append(_table_html(section, row_header="method"))

    if cards:
        body.append('<h2>Model cards</h2><p class="legend">For each variant: intended use, data, what its maps are '
                    "guaranteed to do (by a test) and measured to do (with the protocol), known failure modes, how to "
                    "reproduce it. The same card is MODEL_CARD.md in each run folder.</p>")
        for variant, text in cards.items():
            body.append(f"<details><summary>{html.escape(str(variant))}</summary><pre class=\"card\">"
                        f"{html.escape(text)}</pre></details>")
    body.append('<section id="glossary"><h2>Glossary</h2><dl class="glossary">' + "".join(
        f"<dt>{html.escape(term)}</dt><dd>{html.escape(text)}</dd>" for term, text in GLOSSARY.items())
        + "</dl></section>")
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    body.append(f"<footer>Written by dualattn on {stamp}. Self-contained: no network access needed.</footer>")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>"
        f"<body><main>{''.join(body)}</main></body></html>\n"
    )


def write_report(results: Mapping[str, Any], out_html: str | os.PathLike[str], *,
                 examples: Sequence[Mapping[str, Any]] | None = None, title: str = "dualattn report",
                 cards: Mapping[str, str] | None = None) -> Path:
    """Write the self-contained HTML report atomically.

    Args:
        results: the results dict (parsed ``results.json``).
        out_html: destination file.
        examples: optional example scans (see :func:`render_report`).
        title: page title.
        cards: variant -> model card markdown (see :func:`render_report`).

    Returns:
        The path written.

    Example:
        >>> write_report({"meta": {"dataset": "synthetic-brain"}}, "report.html")  # doctest: +SKIP
    """
    from .._io import atomic_write_text

    out = Path(out_html)
    atomic_write_text(out, render_report(results, examples=examples, title=title, cards=cards))
    logger.info("wrote %s", out)
    return out


def _iter_numbers(obj: Any) -> Iterable[float]:  # used by tests and the demo's finiteness check
    if isinstance(obj, bool):
        return
    if isinstance(obj, (int, float)):
        yield float(obj)
    elif isinstance(obj, Mapping):
        for v in obj.values():
            yield from _iter_numbers(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _iter_numbers(v)
