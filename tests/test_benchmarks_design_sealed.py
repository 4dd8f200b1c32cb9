"""benchmarks/design_sealed_test.py --common: the common-classifier row is read from the evaluation's results
(block3, per featured map), each ratio is to LRP of the baseline, and the own-model read already in --out is kept."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(autouse=True)
def _bench_path(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))


def _cells(ap, srg):
    return {"ap": {"mean": ap}, "srg_prob@road": {"mean": srg}, "srg@road": {"mean": srg + 1}}


def test_common_row_ratios_and_the_kept_own_model_read(tmp_path, monkeypatch):
    import design_sealed_test as dst
    import design_study as ds

    import dualattn.evaluate as evaluate

    values = {"dual": (30.0, 10.0), "exact": (20.0, 5.0), "multilevel": (40.0, 20.0),
              "additive_contribution": (10.0, 2.5), "select_predict": (60.0, 40.0), "lrp": (40.0, 20.0)}
    seen = {}

    def fake_evaluate_runs(runs, *, out, settings):
        seen["settings"] = settings
        out.mkdir(parents=True)
        results = {"methods": {m: {"blocks": {"block3": _cells(*v)}} for m, v in values.items()}}
        (out / "results.json").write_text(json.dumps(results), encoding="utf-8")
        return out / "results.json"

    monkeypatch.setattr(evaluate, "evaluate_runs", fake_evaluate_runs)
    out = tmp_path / "dst.json"
    out.write_text(json.dumps({"row": {"designs": {"dual": {"ap": 1.0}}}}), encoding="utf-8")
    args = argparse.Namespace(demo=tmp_path / "demo", out=out, threads=None, common=True)
    preset = SimpleNamespace(image_size=16, perturbation_steps=2)
    assert dst._common(args, tmp_path / "data", preset, ds, ["DEMO", "--common"]) == 0

    payload = json.loads(out.read_text(encoding="utf-8"))
    assert payload["row"] == {"designs": {"dual": {"ap": 1.0}}}  # the own-model read is untouched
    row = payload["row_common"]
    assert set(row) == set(ds.FEATURED_MAP) | {"lrp (baseline)"}
    assert row["dual"]["ap_ratio_to_lrp_of_baseline"] == pytest.approx(0.75)
    assert row["additive"]["srg_prob@road_ratio_to_lrp_of_baseline"] == pytest.approx(0.125)
    assert row["select_predict"]["ap_ratio_to_lrp_of_baseline"] == pytest.approx(1.5)
    assert settings_only_common(seen["settings"])


def settings_only_common(settings) -> bool:
    return tuple(settings.protocols) == ("common_classifier",) and tuple(settings.hiding_ks) == () \
        and "lrp" in settings.methods and settings.split == "test"
