"""evaluate_runs resumes per (method, run) unit: records in OUT/.partial/, fingerprinted, reused or recomputed."""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path

import pytest
import torch
from test_evaluate_runner import _dataset, _run

METHODS = ["exact", "gradcam", "random"]
SETTINGS = dict(methods=METHODS, perturbation_steps=2, sanity_images=2, batch_size=4,
                protocols=("common_classifier",), hiding_ks=(20,))
# exact: one run; gradcam and random: the two baseline runs (the own-model protocol adds units: its own test)
UNITS = [
    "exact__exact__block3+block4__0.json",
    "gradcam__baseline__block3+block4__0.json",
    "gradcam__baseline__block3+block4__1.json",
    "random__baseline__block3+block4__0.json",
    "random__baseline__block3+block4__1.json",
]


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Tiny runs and an uninterrupted evaluation with resume off (it still writes every record)."""
    torch.set_num_threads(1)
    from dualattn.evaluate import EvalSettings, evaluate_runs

    tmp = tmp_path_factory.mktemp("resume")
    data = _dataset(tmp / "data", n=8)
    runs = tmp / "runs"
    for variant, seeds in (("baseline", (0, 1)), ("exact", (0,))):
        for s in seeds:
            _run(runs, variant, s, dataset=str(data))
    path = evaluate_runs(runs, out=tmp / "ref", settings=EvalSettings(data=data, resume=False, **SETTINGS))
    return data, runs, tmp / "ref", json.loads(path.read_text())


def _strip(obj):
    """results.json without what legitimately differs between calls: times, reuse count, table paths."""
    if isinstance(obj, dict):
        out = {k: _strip(v) for k, v in obj.items() if k not in ("cost_ms", "tables")}
        if "meta" in out:
            out["meta"] = {k: v for k, v in out["meta"].items() if k not in ("created", "wall_time_s", "reused_units")}
        return out
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def _copy_out(ref_out: Path, dest: Path) -> Path:
    shutil.copytree(ref_out, dest)
    (dest / "results.json").unlink()
    return dest


@pytest.fixture
def count_units(monkeypatch):
    """Count (and optionally fail) the computed units."""
    from dualattn.evaluate import units

    real = units.evaluate_unit
    state = {"calls": [], "fail_at": None}

    def counted(unit, ctx, **kw):
        state["calls"].append((unit.method, unit.k))
        if state["fail_at"] is not None and len(state["calls"]) >= state["fail_at"]:
            raise RuntimeError("killed")
        return real(unit, ctx, **kw)

    monkeypatch.setattr(units, "evaluate_unit", counted)
    return state


def test_reference_writes_every_unit_record(reference):
    _, _, ref_out, res = reference
    assert sorted(p.name for p in (ref_out / ".partial").iterdir()) == UNITS
    assert res["meta"]["reused_units"] == 0
    rec = json.loads((ref_out / ".partial" / UNITS[1]).read_text())
    assert rec["method"] == "gradcam" and rec["k"] == 0 and len(rec["fingerprint"]) == 64
    assert set(rec["metrics"]) == {"block3", "block4"} and set(rec["scores"]) == {"baseline"}
    scored = rec["scores"]["baseline"]
    assert scored["classifier"].endswith("seed0") and set(scored["curves"]["block3"]) == {"mean", "background",
                                                                                           "blur", "road"}
    assert all(set(orders) == {"least_first", "most_first", "least_first_prob", "most_first_prob"}
               for orders in scored["curves"]["block3"].values())
    # what the bootstrap resamples: per-image values and per-image predictions at every fraction
    n_pos, n = res["meta"]["n_positive_with_mask"], res["meta"]["n_images"]
    assert all(len(v) == n_pos for v in rec["per_image"]["block3"].values())
    assert all(len(v) == n for v in scored["per_image"]["block3"].values())
    assert {"srg_prob@road", "hidden_swap_flips@20"} <= set(scored["per_image"]["block3"])
    table = scored["predictions"]["block3"]["road"]["most_first"]
    assert len(table) == n and all(len(row) == 3 for row in table)


def test_second_call_reuses_every_unit(reference, tmp_path, monkeypatch, caplog):
    from dualattn.evaluate import EvalSettings, evaluate_runs, units

    data, runs, ref_out, ref = reference
    out = _copy_out(ref_out, tmp_path / "out")

    def no_explain(*a, **k):
        raise AssertionError("a finished unit was recomputed")

    monkeypatch.setattr(units, "explain_blocks", no_explain)
    with caplog.at_level(logging.INFO, logger="dualattn.evaluate"):
        res = json.loads(evaluate_runs(runs, out=out, settings=EvalSettings(data=data, **SETTINGS)).read_text())
    assert res["meta"]["reused_units"] == len(UNITS)
    assert _strip(res) == _strip(ref)
    # reused units keep their recorded cost
    assert res["methods"]["gradcam"]["blocks"]["block3"]["cost_ms"] == ref["methods"]["gradcam"]["blocks"]["block3"]["cost_ms"]
    assert sum("reusing" in r.getMessage() for r in caplog.records) == len(UNITS)
    assert any(f"reused {len(UNITS)} of {len(UNITS)}" in r.getMessage() for r in caplog.records)
    # a setting outside the fingerprint (batch size) still reuses
    res = json.loads(evaluate_runs(runs, out=out, settings=EvalSettings(data=data, **{**SETTINGS, "batch_size": 3})).read_text())
    assert res["meta"]["reused_units"] == len(UNITS)


def test_killed_run_resumes_with_only_the_missing_units(reference, tmp_path, count_units):
    from dualattn.evaluate import EvalSettings, evaluate_runs

    data, runs, _, ref = reference
    out = tmp_path / "out"
    count_units["fail_at"] = 2
    with pytest.raises(RuntimeError, match="killed"):
        evaluate_runs(runs, out=out, settings=EvalSettings(data=data, **SETTINGS))
    assert not (out / "results.json").exists()
    assert sorted(p.name for p in (out / ".partial").iterdir()) == UNITS[:1]  # no temporary file left either
    count_units["fail_at"] = None
    count_units["calls"].clear()
    res = json.loads(evaluate_runs(runs, out=out, settings=EvalSettings(data=data, **SETTINGS)).read_text())
    assert count_units["calls"] == [("gradcam", 0), ("gradcam", 1), ("random", 0), ("random", 1)]
    assert res["meta"]["reused_units"] == 1
    assert _strip(res) == _strip(ref)
    assert sorted(p.name for p in (out / ".partial").iterdir()) == UNITS


@pytest.mark.parametrize("change", [{"perturbation_steps": 3}, {"seed": 1}])
def test_changed_setting_recomputes(reference, tmp_path, count_units, caplog, change):
    from dualattn.evaluate import EvalSettings, evaluate_runs

    data, runs, ref_out, _ = reference
    out = _copy_out(ref_out, tmp_path / "out")
    with caplog.at_level(logging.WARNING, logger="dualattn.evaluate"):
        res = json.loads(evaluate_runs(runs, out=out, settings=EvalSettings(data=data, **{**SETTINGS, **change})).read_text())
    assert len(count_units["calls"]) == len(UNITS) and res["meta"]["reused_units"] == 0
    warned = [r.getMessage() for r in caplog.records if "other settings" in r.getMessage()]
    assert len(warned) == len(UNITS) and any(UNITS[0] in w for w in warned)
    # the records now hold the new settings: a repeat reuses them
    count_units["calls"].clear()
    res = json.loads(evaluate_runs(runs, out=out, settings=EvalSettings(data=data, **{**SETTINGS, **change})).read_text())
    assert count_units["calls"] == [] and res["meta"]["reused_units"] == len(UNITS)


def test_changed_weights_recompute_that_run(reference, tmp_path, count_units):
    import os

    from dualattn.evaluate import EvalSettings, evaluate_runs

    data, runs, ref_out, _ = reference
    runs_copy = tmp_path / "runs"
    shutil.copytree(runs, runs_copy)
    out = tmp_path / "out"
    evaluate_runs(runs_copy, out=out, settings=EvalSettings(data=data, **SETTINGS))
    weights = runs_copy / "exact" / "seed0" / "best.safetensors"
    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    count_units["calls"].clear()
    evaluate_runs(runs_copy, out=out, settings=EvalSettings(data=data, **SETTINGS))
    assert count_units["calls"] == [("exact", 0)]


def test_corrupt_record_is_ignored_with_a_warning(reference, tmp_path, count_units, caplog):
    from dualattn.evaluate import EvalSettings, evaluate_runs

    data, runs, ref_out, ref = reference
    out = _copy_out(ref_out, tmp_path / "out")
    bad = out / ".partial" / UNITS[2]
    bad.write_text('{"format": 1, "fingerprint": ')
    with caplog.at_level(logging.WARNING, logger="dualattn.evaluate"):
        res = json.loads(evaluate_runs(runs, out=out, settings=EvalSettings(data=data, **SETTINGS)).read_text())
    assert any("unreadable" in r.getMessage() and str(bad) in r.getMessage() for r in caplog.records)
    assert count_units["calls"] == [("gradcam", 1)] and res["meta"]["reused_units"] == len(UNITS) - 1
    assert _strip(res) == _strip(ref)
    assert json.loads(bad.read_text())["k"] == 1  # rewritten


def test_cli_no_resume_recomputes(reference, tmp_path, count_units):
    from typer.testing import CliRunner

    from dualattn.cli import app

    data, runs, ref_out, ref = reference
    out = _copy_out(ref_out, tmp_path / "out")
    args = ["evaluate", "--runs", str(runs), "--data", str(data), "--out", str(out), "--methods", ",".join(METHODS),
            "--steps", "2", "--sanity-images", "2", "--batch-size", "4", "--no-progress",
            "--protocols", "common_classifier", "--hiding-ks", "20"]
    result = CliRunner().invoke(app, [*args, "--no-resume"])
    assert result.exit_code == 0, result.output
    assert len(count_units["calls"]) == len(UNITS)
    res = json.loads((out / "results.json").read_text())
    assert res["meta"]["reused_units"] == 0 and _strip(res) == _strip(ref)
    count_units["calls"].clear()
    result = CliRunner().invoke(app, args)  # --resume is the default
    assert result.exit_code == 0, result.output
    assert count_units["calls"] == []
    assert json.loads((out / "results.json").read_text())["meta"]["reused_units"] == len(UNITS)
    assert "--no-resume" in CliRunner().invoke(app, ["evaluate", "--help"]).output


def test_own_model_units_resume_too(reference, tmp_path, count_units):
    """With both protocols the post-hoc and control methods also explain the exact run; a baseline unit scores
    once for both roles; a second call reuses every unit."""
    from dualattn.evaluate import EvalSettings, evaluate_runs

    data, runs, _, _ = reference
    both = {**SETTINGS, "protocols": ("common_classifier", "own_model")}
    out = tmp_path / "out"
    evaluate_runs(runs, out=out, settings=EvalSettings(data=data, **both))
    names = sorted(p.name for p in (out / ".partial").iterdir())
    assert names == sorted(UNITS + ["gradcam__exact__block3+block4__0.json", "random__exact__block3+block4__0.json"])
    rec = json.loads((out / ".partial" / "gradcam__baseline__block3+block4__1.json").read_text())
    assert set(rec["scores"]) == {"baseline", "self"} and rec["scores"]["baseline"] == rec["scores"]["self"]
    rec = json.loads((out / ".partial" / "exact__exact__block3+block4__0.json").read_text())
    assert rec["scores"]["self"]["classifier"].endswith("exact/seed0")
    assert rec["scores"]["baseline"]["classifier"].endswith("baseline/seed0")
    count_units["calls"].clear()
    res = json.loads(evaluate_runs(runs, out=out, settings=EvalSettings(data=data, **both)).read_text())
    assert count_units["calls"] == [] and res["meta"]["reused_units"] == len(names)


def test_record_round_trips_nan_and_padding(tmp_path):
    from dualattn.evaluate import resume
    from dualattn.evaluate.results import RunNumbers
    from dualattn.evaluate.units import role_view

    rec = {"format": resume.RESUME_FORMAT, "fingerprint": "f" * 64, "method": "m", "k": 1,
           "metrics": {"block3": {"cost_ms": 1.5, "ap": math.nan, "sharpness": math.inf}},
           "per_image": {"block3": {"ap": [12.5, math.nan]}},
           "scores": {"baseline": {
               "classifier": "runs/baseline/seed1", "metrics": {"block3": {"srg@mean": -1.0}},
               "curves": {"block3": {"mean": {"least_first": [50.0, math.nan], "most_first": [1.0, 2.0]}}},
               "per_image": {"block3": {"srg_prob@mean": [math.nan, 3.0]}},
               "predictions": {"block3": {"mean": {"least_first": [[1, 0], [1, 1]], "most_first": [[0, 0], [1, 0]]}}},
           }},
           "consistency": {"pair": "block3+block4", "value": math.nan}, "errors": ["m at block4 on x: not computed"]}
    path = tmp_path / "r.json"
    resume.save_unit(path, rec)
    got = resume.load_unit(path, "f" * 64)
    sc = got["scores"]["baseline"]
    assert math.isnan(got["metrics"]["block3"]["ap"]) and got["metrics"]["block3"]["sharpness"] == math.inf
    assert math.isnan(sc["curves"]["block3"]["mean"]["least_first"][1]) and math.isnan(got["consistency"]["value"])
    assert math.isnan(got["per_image"]["block3"]["ap"][1]) and sc["predictions"] == rec["scores"]["baseline"]["predictions"]
    assert math.isnan(sc["per_image"]["block3"]["srg_prob@mean"][0])
    assert resume.load_unit(path, "0" * 64) is None
    got = role_view(got, "baseline")
    assert got["metrics"]["block3"]["srg@mean"] == -1.0 and set(got["per_image"]["block3"]) == {"ap", "srg_prob@mean"}
    numbers = RunNumbers()
    numbers.add(got, method="m", k=1)
    per_run, curves, notes = numbers.per_run, numbers.curves, numbers.notes
    cost = per_run["m"]["block3"]["cost_ms"]
    assert math.isnan(cost[0]) and cost[1] == 1.5  # run 0 without a value: NaN-padded, as before
    assert math.isnan(per_run["m"]["block3+block4"]["consistency_kl"][0])
    assert curves["m"]["block3"]["mean"]["most_first"] == [[1.0, 2.0]] and notes == rec["errors"]
    assert numbers.per_image["m"]["block3"]["ap"][1][0] == 12.5 and 0 not in numbers.per_image["m"]["block3"]["ap"]
    assert numbers.predictions["m"]["block3"]["mean"]["least_first"] == {1: [[1, 0], [1, 1]]}
