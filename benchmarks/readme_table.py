"""README's "what holds" tables, generated from a demo summary (``benchmarks/demo_summary.py``), never typed.

README.md carries the output between the markers ``<!-- results:start -->`` and ``<!-- results:end -->``;
``tests/test_readme.py`` checks that it equals this script's output for the committed
``benchmarks/results/demo_default.json``.

Usage::

    python benchmarks/readme_table.py benchmarks/results/demo_default.json            # print
    python benchmarks/readme_table.py benchmarks/results/demo_default.json --write README.md
    python benchmarks/readme_table.py benchmarks/results/demo_3d.json --three-d --write README.md
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

START, END = "<!-- results:start -->", "<!-- results:end -->"
#: the 3-D block's markers (``--three-d``: from ``benchmarks/results/demo_3d.json``)
START_3D, END_3D = "<!-- results3d:start -->", "<!-- results3d:end -->"
#: the 3-D targets the block judges: balanced accuracy mean / std, activation precision, hidden flips at k = 20
TARGETS_3D = {"accuracy_mean": 88.0, "accuracy_std": 5.0, "activation_precision": 50.0, "hidden_flips": 2.0}
#: synthetic-brain-3d's channel order is BraTS's (T1, T1ce, T2, FLAIR)
RAW_3D = {"raw_channel_0": "raw T1", "raw_channel_1": "raw T1ce", "raw_channel_2": "raw T2", "raw_channel_3": "raw FLAIR"}
PROTOCOL = {"common_classifier": "baseline's classifier", "own_model": "own model"}
LABEL = {"ap": "lesion AP", "srg_prob@road": "SRG (ROAD, p)"}


def _n(x: Any, fmt: str) -> str:
    return "n/a" if not isinstance(x, (int, float)) or not math.isfinite(float(x)) else format(float(x), fmt)


def _who(method: str, variant: str | None) -> str:
    return method if variant in (None, method, "baseline") else f"{method} of {variant}"


def _verdict(c: dict[str, Any]) -> str:
    if c.get("claim_blocked"):
        return "no claim"
    return "**holds**" if c.get("holds") else "does not hold"


def _commands(summary: dict[str, Any]) -> str:
    """The summary's commands, each in its own backticks (docs tests parse every backticked command)."""
    return " then ".join(f"`{c.strip()}`" for c in str(summary.get("command", "")).split(";") if c.strip())


def tables(summary: dict[str, Any]) -> str:
    """The markdown block between the README markers."""
    comps = summary.get("comparisons") or []
    commands = _commands(summary)
    lines = [
        f"Default demo ({commands}), test split of the sealed draw: "
        f"{summary.get('n_images')} scans of {summary.get('n_patients')} patients, seeds "
        f"{', '.join(str(s) for s in summary.get('seeds') or [])}; intervals resample patients and seeds, "
        "Holm-adjusted over the six claims named in advance.",
        "",
        "| claim | protocol | featured map | compared map | estimate [adjusted interval] | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for c in comps:
        if not c.get("primary"):
            continue
        ratio = c.get("kind") == "ratio" and c.get("ratio") is not None
        est, lo, hi = (c["ratio"], c.get("ci_low"), c.get("ci_high")) if ratio else (
            c.get("difference"), c.get("diff_ci_low"), c.get("diff_ci_high"))
        f = ".2f" if ratio else "+.1f"
        lines.append(
            f"| {LABEL.get(c['metric'], c['metric'])} at {c['block']} | {PROTOCOL.get(c['protocol'], c['protocol'])} | "
            f"{_who(c['ours'], c.get('ours_variant'))} {_n(c.get('ours_value'), '.1f')} | "
            f"{_who(c['other'], c.get('other_variant'))} {_n(c.get('other_value'), '.1f')} | "
            f"{'ratio' if ratio else 'difference'} {_n(est, f)} [{_n(lo, f)}, {_n(hi, f)}] | {_verdict(c)} |")
    acc = [c for c in comps if c.get("metric") == "balanced_accuracy"]
    if acc:
        lines += ["", "| classifier | balanced accuracy | minus the baseline's [95 % interval] | non-inferior (margin -3) |",
                  "|---|---|---|---|"]
        base = acc[0].get("other_value")
        lines.append(f"| baseline | {_n(base, '.1f')} | | |")
        for c in acc:
            lines.append(f"| {c['ours']} | {_n(c.get('ours_value'), '.1f')} | {_n(c.get('difference'), '+.1f')} "
                         f"[{_n(c.get('diff_ci_low'), '+.1f')}, {_n(c.get('diff_ci_high'), '+.1f')}] | "
                         f"{'yes' if c.get('noninferior') else 'no'} |")
    own = summary.get("own_model") or {}
    rows = []
    names = {"random": "a random region", "lesion_oracle": "the lesion itself (oracle)"}
    for variant, by_row in own.items():
        for name, cells in by_row.items():
            method, block = name.split(" [")[0], name.split(" [")[1].rstrip("]")
            if block != "block3" or "hidden_swap_flips@20" not in cells:
                continue
            if method != variant and method not in ("lrp", "random", "lesion_oracle"):
                continue
            rows.append((variant, "its attention map" if method == variant else names.get(method, method), cells))
    if rows:
        lines += ["", "Can a model get around what its map hides? Keep the top 20 % of a map's block3 cells, swap the "
                  "rest with a matched healthy scan of another patient (5 partners), and count flipped predictions, "
                  "each map on its own model (mean ± std over seeds):",
                  "", "| model | map kept | flips, all scans % | flips, healthy scans % (floor) | "
                  "kept cells swapped instead: flips % |", "|---|---|---|---|---|"]
        for variant, what, cells in rows:
            def cell(k: str) -> str:
                c = cells.get(k)
                return "n/a" if not c else f"{c['mean']:.1f} ± {c['std'] or 0:.1f}"
            lines.append(f"| {variant} | {what} | {cell('hidden_swap_flips@20')} | "
                         f"{cell('hidden_swap_flips_healthy@20')} | {cell('kept_swap_flips@20')} |")
    return "\n".join(lines)


def _ms(stat: Any) -> str:
    if not isinstance(stat, dict) or not isinstance(stat.get("mean"), (int, float)):
        return "n/a"
    std = stat.get("std")
    return f"{stat['mean']:.1f}" + (f" ± {std:.1f}" if isinstance(std, (int, float)) and math.isfinite(std) else "")


def tables_3d(summary: dict[str, Any], *, block: str = "block3") -> str:
    """The 3-D block: per variant balanced accuracy, the map's lesion AP and activation precision at ``block``, and
    its hidden-swap flips at k = 20 on its own model, beside LRP of the baseline, the raw channels and the centred
    control; then each target judged from these numbers."""
    maps = summary.get("maps") or {}
    own = summary.get("own_model") or {}
    acc = summary.get("balanced_accuracy") or {}
    t = TARGETS_3D

    def mean(stat: Any) -> float:
        return float(stat["mean"]) if isinstance(stat, dict) and isinstance(stat.get("mean"), (int, float)) \
            else math.nan

    lines = [
        f"3-D demo ({_commands(summary)}), test split of "
        f"{'the sealed draw' if summary.get('sealed') else 'data seed ' + str(summary.get('data_seed'))}: "
        f"{summary.get('n_images')} volumes "
        f"({summary.get('n_positive_with_mask')} with a lesion mask), seeds "
        f"{', '.join(str(x) for x in summary.get('seeds') or [])}; mean ± std over seeds, maps at {block}, "
        f"{_n(summary.get('wall_time_s'), '.0f')} s on {summary.get('machine', 'this machine')}.",
        "",
        "| model or map | balanced accuracy | lesion AP | activation precision | hidden-swap flips @20 (own model) |",
        "|---|---|---|---|---|",
    ]
    variants = [v for v in acc if v != "baseline"]
    raw_aps = [mean(maps.get(f"{k} [{block}]", {}).get("ap")) for k in RAW_3D]
    raw_best = max((x for x in raw_aps if not math.isnan(x)), default=math.nan)
    lines.append(f"| baseline | {_ms(acc.get('baseline'))} | | | |")
    got: dict[str, dict[str, float]] = {}
    for v in variants:
        m = maps.get(f"{v} [{block}]", {})
        flips = (own.get(v) or {}).get(f"{v} [{block}]", {}).get("hidden_swap_flips@20")
        got[v] = {"ap": mean(m.get("ap")), "ap_prec": mean(m.get("activation_precision")), "flips": mean(flips)}
        lines.append(f"| {v} | {_ms(acc.get(v))} | {_ms(m.get('ap'))} | {_ms(m.get('activation_precision'))} | "
                     f"{_ms(flips)} |")
    for k, label in [("lrp", "LRP of the baseline"), *RAW_3D.items(), ("center", "center (control)")]:
        m = maps.get(f"{k} [{block}]")
        if m:
            fixed = k != "lrp"  # the raw channels and the centred map do not depend on a seed
            cells = [_n(mean(m.get(x)), ".1f") if fixed else _ms(m.get(x)) for x in ("ap", "activation_precision")]
            lines.append(f"| {label} | | {cells[0]} | {cells[1]} | |")

    def judged(name: str, ok: dict[str, bool | None]) -> str:
        missed = [v for v, good in ok.items() if good is False]
        unmeasured = [v for v, good in ok.items() if good is None]
        parts = (["missed by " + ", ".join(missed)] if missed else []) + \
                (["not measured for " + ", ".join(unmeasured)] if unmeasured else [])
        return f"{name}: " + ("; ".join(parts) if parts else "met by every variant")

    def at_most(x: float, limit: float) -> bool | None:
        return None if math.isnan(x) else x <= limit

    def at_least(x: float, limit: float) -> bool | None:
        return None if math.isnan(x) or math.isnan(limit) else x >= limit

    accuracy = {v: mean(acc.get(v)) >= t["accuracy_mean"] and float((acc.get(v) or {}).get("std", math.inf))
                <= t["accuracy_std"] for v in ["baseline", *variants]}
    verdicts = [
        judged(f"balanced accuracy >= {t['accuracy_mean']:g} with std <= {t['accuracy_std']:g}", accuracy),
        judged(f"activation precision >= {t['activation_precision']:g}",
               {v: at_least(g["ap_prec"], t["activation_precision"]) for v, g in got.items()}),
        judged(f"AP >= every raw channel ({_n(raw_best, '.1f')})", {v: at_least(g["ap"], raw_best) for v, g in got.items()}),
        judged(f"hidden-swap flips @20 <= {t['hidden_flips']:g} %", {v: at_most(g["flips"], t["hidden_flips"])
                                                                   for v, g in got.items()}),
    ]
    lines += [""] + [f"- {x}" for x in verdicts]
    return "\n".join(lines)


def _replace(text: str, start: str, end: str, block: str, path: Path) -> str:
    if start not in text or end not in text:
        raise SystemExit(f"{path} has no {start} ... {end} markers")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{block}\n{end}{tail}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("summary", type=Path)
    p.add_argument("--write", type=Path, default=None, help="replace the block between the markers in this file")
    p.add_argument("--three-d", action="store_true", help="the 3-D block (a 3d demo's summary, its own markers)")
    args = p.parse_args(argv)
    summary = json.loads(args.summary.read_text(encoding="utf-8"))
    block = tables_3d(summary) if args.three_d else tables(summary)
    if args.write is None:
        sys.stdout.write(block + "\n")
        return 0
    start, end = (START_3D, END_3D) if args.three_d else (START, END)
    text = args.write.read_text(encoding="utf-8")
    args.write.write_text(_replace(text, start, end, block, args.write), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
