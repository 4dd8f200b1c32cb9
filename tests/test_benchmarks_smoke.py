"""The benchmark scripts still run (tiny settings) and their JSON has the fields the docs quote.

Timings are not checked (benchmarks are not timed tests); the merge of parallel recipe-study runs is.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(autouse=True)
def _bench_path(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    torch.set_num_threads(1)


def test_train_overhead_runs_and_reports_ratios(tmp_path):
    import train_overhead

    out = tmp_path / "overhead.json"
    train_overhead.main(["--steps", "2", "--warmup", "1", "--size", "32", "--batch", "2", "--features", "2",
                         "--variants", "baseline,dual,exact,exact-grad-paper", "--out", str(out)])  # fmt: skip
    rep = json.loads(out.read_text())
    assert set(rep["raw"]["ratio_to_baseline"]) == {"baseline", "dual", "exact", "exact-grad-paper"}
    assert rep["raw"]["ratio_to_baseline"]["baseline"] == 1.0
    assert set(rep["lightning"]["steps"]) == set(rep["raw"]["steps"])
    assert all(s["n"] == 2 for s in rep["lightning"]["steps"].values())
    assert set(rep["meets_target"]) == {"dual", "exact", "exact-grad-paper"}
    variant, kw = train_overhead._spec("exact-grad-paper")
    assert variant == "exact" and kw["exact_proposal"] == "grad" and kw["gate_scale"] == 1.0
    with pytest.raises(SystemExit, match="unknown variant suffix"):
        train_overhead._spec("exact-fast")


def test_recipe_study_runs_in_parts_and_merges(tmp_path):
    import recipe_study

    data = tmp_path / "data"
    common = ["--study", "confirm", "--n", "48", "--size", "32", "--features", "2", "--epochs", "1", "--batch", "8",
              "--threads", "1", "--data-dir", str(data), "--only", "baseline", "exact s16 area0.25"]  # fmt: skip
    recipe_study.main([*common, "--seeds", "0", "--out", str(tmp_path / "a.json")])
    recipe_study.main([*common, "--seeds", "1", "--out", str(tmp_path / "b.json")])
    merged = tmp_path / "m.json"
    recipe_study.main(["--merge", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--out", str(merged)])
    res = json.loads(merged.read_text())
    assert res["setup"]["seeds"] == [0, 1]
    rows = {s["label"]: s for s in res["summary"]}
    assert rows["exact s16 area0.25"]["n_seeds"] == 2 and "ap_block3" in rows["exact s16 area0.25"]
    run = next(r for r in res["runs"] if r["label"] == "exact s16 area0.25")
    assert run["learned_gate_scale"] == {"block3": 16.0, "block4": 16.0} and run["attention_area"] == 0.25
    # parts run with different settings are not merged
    recipe_study.main([*common[:-3], "--epochs", "2", "--only", "baseline", "--seeds", "2", "--out",
                       str(tmp_path / "c.json")])  # fmt: skip
    with pytest.raises(SystemExit, match="different setups"):
        recipe_study.main(["--merge", str(tmp_path / "a.json"), str(tmp_path / "c.json"), "--out", str(merged)])
