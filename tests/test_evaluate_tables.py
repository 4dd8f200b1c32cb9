"""Tables: Markdown/CSV rendering of a hand-made results section; randomized copies; run discovery."""

from __future__ import annotations

import csv
import io
import json

import pytest
import torch

from dualattn.evaluate.tables import format_cell, table_csv, table_markdown, write_tables

SECTION = {
    "columns": ["iou@90", "consistency_kl", "params"],
    "column_labels": {"iou@90": "IoU@90 ×100"},
    "higher_is_better": {"iou@90": True, "consistency_kl": False, "params": None},
    "rows": {
        "exact [block3]": {"iou@90": {"mean": 41.26, "std": 3.04, "n": 3}, "consistency_kl": {"mean": 1.5e-7, "std": 0.0, "n": 3},
                           "params": 75682},
        "gradcam [block3]": {"iou@90": {"mean": None, "std": None, "n": 0}, "consistency_kl": 0.25},
    },
}


def test_format_cell():
    assert format_cell({"mean": 41.26, "std": 3.04, "n": 3}, column="iou@90") == "41.3 ± 3.0"
    assert format_cell({"mean": 41.26, "std": 0.0, "n": 1}, column="iou@90") == "41.3"
    assert format_cell(None) == "—" and format_cell({"mean": float("nan")}) == "—"
    assert format_cell(1234567, column="params") == "1,234,567"


def test_markdown_and_csv():
    md = table_markdown(SECTION, title="T")
    lines = md.splitlines()
    assert lines[0] == "### T"
    assert lines[2] == "| method | IoU@90 ×100 ↑ | consistency_kl ↓ | params |"
    assert lines[4] == "| exact [block3] | 41.3 ± 3.0 | 1.5e-07 ± 0 | 75,682 |"
    assert lines[5] == "| gradcam [block3] | — | 0.25 | — |"
    rows = list(csv.reader(io.StringIO(table_csv(SECTION))))
    assert rows[0] == ["method", "iou@90 [higher] mean", "iou@90 [higher] std", "consistency_kl [lower] mean",
                       "consistency_kl [lower] std", "params [info] mean", "params [info] std"]
    assert rows[1][:3] == ["exact [block3]", "41.26", "3.04"]
    assert rows[2][1] == "" and rows[2][3] == "0.25"


def test_write_tables(tmp_path):
    written = write_tables({"segmentation": SECTION, "classification": {"rows": {}}}, tmp_path)
    assert written == {"segmentation": {"markdown": "table2_segmentation.md", "csv": "table2_segmentation.csv"}}
    assert "Table 2" in (tmp_path / "tables.md").read_text()


def test_randomized_copy_changes_every_weight_and_not_the_original():
    from dualattn.evaluate.scoring import randomized_copy
    from dualattn.models import create_model

    torch.manual_seed(0)
    model = create_model("unet_encoder", variant="dual", features=4, img_size=32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rnd = randomized_copy(model, seed=3)
    pairs = zip(model.named_modules(), rnd.modules())
    n_checked = 0
    for (name, m), r in pairs:
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):  # BatchNorm re-initializes to 1/0 by design
            assert not torch.equal(m.weight, r.weight), name
            n_checked += 1
    assert n_checked > 10
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    again = randomized_copy(model, seed=3)
    for p, q in zip(rnd.parameters(), again.parameters()):
        assert torch.equal(p, q)  # seeded


def test_discover_runs_errors(tmp_path):
    from dualattn.runs import RunDir

    discover_runs = RunDir.discover

    with pytest.raises(ValueError, match="does not exist"):
        discover_runs(tmp_path / "nope")
    with pytest.raises(ValueError, match="no run"):
        discover_runs(tmp_path)
