"""``dualattn evaluate --examples N`` writes the overlay examples beside results.json, and ``dualattn report``
draws the scan grid from them, as it does for the demo."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from dualattn.cli import app

SIZE = 16


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory) -> tuple[Path, Path]:
    """A blob dataset (positives carry a mask) and a baseline + exact run trained for one epoch."""
    from dualattn.data import FolderWriter
    from dualattn.train import fit, load_config

    root = tmp_path_factory.mktemp("ex")
    rng = np.random.default_rng(0)
    with FolderWriter(root / "data", class_names=["no", "yes"]) as w:
        for i in range(40):
            img = rng.normal(0.0, 1.0, (1, SIZE, SIZE)).astype(np.float32)
            mask = np.zeros((SIZE, SIZE), np.uint8)
            if i % 2:
                r, c = rng.integers(1, SIZE - 6, 2)
                img[0, r:r + 5, c:c + 5] += 3.0
                mask[r:r + 5, c:c + 5] = 1
            w.add(f"img{i:03d}", image=img, label=i % 2, patient=f"p{i:03d}", mask=mask)
    for variant in ("baseline", "exact"):
        cfg = load_config(overrides=[f"dataset={root / 'data'}", f"variant={variant}", "accelerator=cpu", "devices=1",
                                     "batch_size=8", "max_epochs=1", "model_kwargs.features=4", "progress=false"])
        fit(cfg, out=root / "runs" / variant)
    return root / "data", root / "runs"


def _evaluate(runs: Path, out: Path, *extra: str):
    return CliRunner().invoke(app, [
        "evaluate", "--runs", str(runs), "--out", str(out), "--methods", "exact,gradcam", "--max-images", "8",
        "--steps", "2", "--sanity-images", "0", "--fills", "mean", "--no-progress", *extra])


def test_evaluate_examples_then_report_draws_the_grid(tiny_runs, tmp_path):
    from dualattn.data import FolderDataset
    from dualattn.explain import explain
    from dualattn.pipelines.examples import load_examples
    from dualattn.runs import RunDir

    data, runs = tiny_runs
    res = _evaluate(runs, tmp_path / "ev", "--examples", "2")
    assert res.exit_code == 0, res.output
    npz = tmp_path / "ev" / "examples.npz"
    assert npz.is_file(), res.output
    rows = load_examples(npz)
    assert len(rows) == 2
    assert all(r["label"] == 1 and r["mask"].sum() > 0 for r in rows)
    assert all(set(r["maps"]) == {"exact", "gradcam"} for r in rows)
    # the maps are the runs' own: recompute them independently from the scans' ids
    test = FolderDataset(data, split="test", size=SIZE, seed=0)
    by_id = {Path(str(test[i]["id"])).name.split(".")[0]: test[i] for i in range(len(test))}
    images = torch.stack([by_id[r["id"]]["image"] for r in rows])
    np.testing.assert_array_equal(images.numpy(), np.stack([r["image"] for r in rows]))
    target = torch.ones(2, dtype=torch.long)
    exact = explain(RunDir(runs / "exact").load_model("best"), images, method="exact", block="block3", target=target)
    np.testing.assert_allclose(np.stack([r["maps"]["exact"] for r in rows]), exact[:, 0].numpy(), rtol=1e-5, atol=1e-7)
    baseline = RunDir(runs / "baseline").load_model("best")
    gradcam = explain(baseline, images, method="gradcam", block="block3", target=target)
    np.testing.assert_allclose(np.stack([r["maps"]["gradcam"] for r in rows]), gradcam[:, 0].numpy(),
                               rtol=1e-4, atol=1e-6)
    with torch.no_grad():
        assert [r["pred"] for r in rows] == baseline(images).argmax(1).tolist()

    # `dualattn report RESULTS` finds examples.npz beside results.json and draws the grid
    html = tmp_path / "ev" / "report.html"
    res = CliRunner().invoke(app, ["report", str(tmp_path / "ev" / "results.json"), "--out", str(html)])
    assert res.exit_code == 0, res.output
    text = html.read_text(encoding="utf-8")
    assert "Example scans" in text and 'alt="example heatmaps 1"' in text


def test_evaluate_examples_zero_writes_none_and_report_has_no_grid(tiny_runs, tmp_path):
    _data, runs = tiny_runs
    res = _evaluate(runs, tmp_path / "ev", "--examples", "0")
    assert res.exit_code == 0, res.output
    assert not (tmp_path / "ev" / "examples.npz").exists()
    html = tmp_path / "ev" / "report.html"
    res = CliRunner().invoke(app, ["report", str(tmp_path / "ev" / "results.json"), "--out", str(html)])
    assert res.exit_code == 0, res.output
    assert "Example scans" not in html.read_text(encoding="utf-8")


def test_examples_for_results_refuses_results_without_runs(tmp_path):
    from dualattn.pipelines.examples import examples_for_results

    (tmp_path / "results.json").write_text(json.dumps({"meta": {}}))
    with pytest.raises(ValueError, match="no runs"):
        examples_for_results(tmp_path / "results.json")
