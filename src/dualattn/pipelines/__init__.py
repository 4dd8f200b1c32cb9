"""Pipelines: jobs that compose the layers below (data, models, train, explain, evaluate, report).

* :mod:`dualattn.pipelines.demo` -- ``run_demo``: data -> train every variant -> explain with every
  method -> both protocols -> ``results.json`` + ``report.html``;
* :mod:`dualattn.pipelines.scan` -- ``explain_scan`` / ``write_scan_explanation``: one scan file ->
  prediction + heatmap in the scan's own geometry.

The submodules import torch and the explainers; they load when imported, not with this package.
"""

from __future__ import annotations

from .._lazy import lazy_exports

__all__ = ["demo", "scan"]

__getattr__, __dir__ = lazy_exports(__name__, submodules=__all__)
