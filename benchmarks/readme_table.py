"""README's "what holds" tables, generated from a demo summary (``benchmarks/demo_summary.py``), never typed.

README.md carries the output between the markers ``<!-- results:start -->`` and ``<!-- results:end -->``;
``tests/test_docs_commands.py`` checks that it equals this script's output for the committed
``benchmarks/results/demo_default.json``.

Usage::

    python benchmarks/readme_table.py benchmarks/results/demo_default.json            # print
    python benchmarks/readme_table.py benchmarks/results/demo_default.json --write README.md
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

START, END = "<!-- results:start -->", "<!-- results:end -->"
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


def tables(summary: dict[str, Any]) -> str:
    """The markdown block between the README markers."""
    comps = summary.get("comparisons") or []
    commands = " then ".join(f"`{c.strip()}`" for c in str(summary.get("command", "")).split(";") if c.strip())
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("summary", type=Path)
    p.add_argument("--write", type=Path, default=None, help="replace the block between the markers in this file")
    args = p.parse_args(argv)
    block = tables(json.loads(args.summary.read_text(encoding="utf-8")))
    if args.write is None:
        sys.stdout.write(block + "\n")
        return 0
    text = args.write.read_text(encoding="utf-8")
    if START not in text or END not in text:
        raise SystemExit(f"{args.write} has no {START} ... {END} markers")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    args.write.write_text(f"{head}{START}\n{block}\n{END}{tail}", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
