"""``dualattn explain`` without ``--method``: the run's own map.

The variant-named attention method (e.g. ``tau_l``; ``gradcam`` for a baseline), so runs of every
variant work without ``--method`` (the old default ``exact`` failed on other variants); a ``tau_l``
run's map is taken from its gated ``block4``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from _reliability_helpers import make_run, small_png as _png


@pytest.mark.parametrize("variant,expected", [("baseline", "gradcam"), ("unconstrained", "unconstrained"),
                                              ("tau_l", "tau_l"), ("exact", "exact")])
def test_default_method_is_the_runs_own_map(tmp_path, variant, expected):
    from typer.testing import CliRunner

    from dualattn.cli import app
    from dualattn.pipelines.scan import explain_scan

    run = make_run(tmp_path / "runs", variant=variant, size=16)
    scan = _png(tmp_path / "scan.png")
    res = CliRunner().invoke(app, ["explain", str(scan), "--run", str(run), "--out", str(tmp_path / "o"), "--keep-name"])
    assert res.exit_code == 0, res.output
    pred = json.loads((tmp_path / "o" / "scan.prediction.json").read_text())
    assert pred["method"] == expected
    # the same map as asking for that method explicitly
    explicit = explain_scan(scan, run=run, method=expected)
    np.testing.assert_array_equal(np.load(tmp_path / "o" / "scan.heatmap.npy"), explicit.heatmap)
    if variant != "baseline":  # the variant's map is the generic "attention" one (mu where the variant has it)
        generic = explain_scan(scan, run=run, method="attention")
        assert generic.block == explicit.block == ("block4" if variant == "tau_l" else "block3")
        np.testing.assert_allclose(explicit.heatmap_model, generic.heatmap_model, atol=1e-7)
