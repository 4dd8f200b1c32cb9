"""Report: figures (heatmap overlays with the lesion contour, perturbation curves) and one
self-contained HTML file.

Public API:
    write_report(results, out_html, *, examples=None) -> Path
    render_report(results, *, examples=None) -> str
    figures.overlay_png / figures.example_grid_png / figures.curves_png -> PNG bytes

matplotlib is imported only when a figure is drawn.
"""

from __future__ import annotations

from .html import best_per_column, cell_value, paper_ordering_notes, render_report, write_report

__all__ = ["write_report", "render_report", "best_per_column", "cell_value", "paper_ordering_notes"]
