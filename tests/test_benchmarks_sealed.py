"""Every study in benchmarks/ that generates embedded data refuses the sealed draw and writes its data seed.

The default demo's test draw (``dualattn.data.sealed.SEALED_DATA_SEED``) is read by no study: each study
checks its data seed(s) before generating anything, and its JSON says which draw it read (``data_seed``,
``confirm_data_seed``). The refusals must come before any data is generated or any model trained: these tests
run them with arguments that would otherwise take minutes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from dualattn.data.sealed import SEALED_DATA_SEED

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
SEALED = str(SEALED_DATA_SEED)


@pytest.fixture(autouse=True)
def _bench_path(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))


def _no_data(monkeypatch):
    """Make generating data an error: a refusal must come first."""
    import dualattn.data._registry as registry

    def boom(*args, **kwargs):
        raise AssertionError("data generated before the sealed seed was refused")

    import dualattn.data as data

    for module in (data, registry):  # the package first: reading its lazy export caches the real function
        monkeypatch.setattr(module, "make_dataset", boom)
        monkeypatch.setattr(module, "resolve_dataset", boom)


def test_method_study_refuses_the_sealed_draw(tmp_path, monkeypatch):
    import method_study as ms

    _no_data(monkeypatch)
    with pytest.raises(ValueError, match="sealed test draw"):
        ms.main(["--out", str(tmp_path / "m.json"), "--work", str(tmp_path), "--data-seed", SEALED])
    assert not (tmp_path / "m.json").exists()
    # the finer-block phase reads data too
    (tmp_path / "m.json").write_text(json.dumps({"data_seed": SEALED_DATA_SEED, "val": {}}))
    with pytest.raises(ValueError, match="sealed test draw"):
        ms.main(["--out", str(tmp_path / "m.json"), "--work", str(tmp_path), "--data-seed", SEALED,
                 "--candidates", "multilevel recipe", "--finer-block", "block2"])


def test_method_study_writes_its_data_seed(tmp_path, monkeypatch):
    import method_study as ms

    monkeypatch.setattr(ms, "_machine", lambda args: "test")
    args = ms.argparse.Namespace(data_seed=7, trained_on="", out="x.json", work=str(tmp_path))
    header = ms._header(args, [])
    assert header["data_seed"] == 7 and header["settings"]["data_seed"] == 7 and "out" not in header["settings"]
    assert header["selection"]["rule"] == ms.SELECTION_RULE


def test_finer_phase_refuses_a_different_draw(tmp_path):
    import method_study as ms

    (tmp_path / "m.json").write_text(json.dumps({"data_seed": 3, "val": {}}))
    with pytest.raises(SystemExit, match="differs from the data seed 3"):
        ms.main(["--out", str(tmp_path / "m.json"), "--work", str(tmp_path), "--data-seed", "4",
                 "--candidates", "multilevel recipe", "--finer-block", "block2"])


@pytest.mark.parametrize("flag", ["--data-seed", "--confirm-data-seed"])
def test_recipe_study_refuses_the_sealed_draw(tmp_path, monkeypatch, flag):
    import recipe_study as rs

    _no_data(monkeypatch)
    with pytest.raises(ValueError, match="sealed test draw"):
        rs.main(["--out", str(tmp_path / "r.json"), "--data-dir", str(tmp_path / "d"), "--work-dir",
                 str(tmp_path / "w"), flag, SEALED])
    assert not (tmp_path / "r.json").exists()


def test_pixel_classifier_refuses_the_sealed_draw(tmp_path, monkeypatch):
    import pixel_classifier

    _no_data(monkeypatch)
    with pytest.raises(ValueError, match="sealed test draw"):
        pixel_classifier.main(["--out", str(tmp_path / "p.json"), "--data-dir", str(tmp_path), "--data-seed", SEALED])


def test_learnability_3d_refuses_the_sealed_draw_and_writes_its_seed(tmp_path, monkeypatch):
    import learnability_3d

    _no_data(monkeypatch)
    with pytest.raises(ValueError, match="sealed test draw"):
        learnability_3d.main(["--out", str(tmp_path / "l.json"), "--work", str(tmp_path), "--data-seed", SEALED])
    args = argparse.Namespace(out=str(tmp_path / "l.json"), work=str(tmp_path), workers=1, threads=1, data_seed=5,
                              confirm=False)  # fmt: skip
    learnability_3d._write(args, {})
    assert json.loads((tmp_path / "l.json").read_text())["data_seed"] == 5


def test_gate_width_check_refuses_the_sealed_draw_and_merges_one_draw(tmp_path, monkeypatch):
    import gate_width_check

    _no_data(monkeypatch)
    with pytest.raises(ValueError, match="sealed test draw"):
        gate_width_check.main(["--out", str(tmp_path / "g.json"), "--data-dir", str(tmp_path), "--data-seed", SEALED])
    run = {"cap": 64, "seed": 0, "embed": {}, **{k: 1.0 for k in ("bal_acc", "ap_block3", "ap_block4",
                                                                  "sharpness_block3", "sharpness_block4", "step_ms")}}
    for name, seed in (("a", 2), ("b", 2), ("c", 3)):
        (tmp_path / f"{name}.json").write_text(json.dumps({"data_seed": seed, "runs": [run, {**run, "seed": 1}]}))
    gate_width_check.main(["--merge", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--out", str(tmp_path / "m.json")])
    assert json.loads((tmp_path / "m.json").read_text())["data_seed"] == 2
    with pytest.raises(SystemExit, match="different data draws"):
        gate_width_check.main(["--merge", str(tmp_path / "a.json"), str(tmp_path / "c.json"), "--out",
                               str(tmp_path / "m.json")])


@pytest.mark.parametrize("script", ["select_claims", "design_study", "selector_study", "cell_oracle",
                                    "threshold_curve"])
def test_claim_and_design_selection_refuse_the_sealed_draw(tmp_path, monkeypatch, script):
    import importlib

    module = importlib.import_module(script)
    _no_data(monkeypatch)
    with pytest.raises(ValueError, match="sealed test draw"):
        module.main(["--work", str(tmp_path), "--out", str(tmp_path / "o.json"), "--data-seed", SEALED])
    assert not (tmp_path / "o.json").exists()


def test_design_study_rule_by_hand():
    """Admissible = accuracy within 3 points of the baseline on every dataset; featured = lowest mean hidden flips,
    ties within 1 point broken by the AP ratio against LRP; nothing admissible keeps dual."""
    import design_study as ds

    def row(base, **designs):
        return {"baseline_accuracy": base, "designs": {
            d: {"balanced_accuracy": acc, "hidden_flips@20": flips, "ap_ratio": ratio}
            for d, (acc, flips, ratio) in designs.items()}}

    rows = {
        "a": row(90.0, dual=(89.0, 15.0, 1.2), select_predict=(88.0, 1.0, 0.9), additive=(87.5, 1.5, 1.4),
                 exact=(80.0, 0.5, 2.0), multilevel=(90.0, 20.0, 1.0)),
        "br35h": row(80.0, dual=(80.0, 13.0, float("nan")), select_predict=(79.0, 2.0, float("nan")),
                     additive=(78.0, 1.8, float("nan")), exact=(79.0, 0.1, float("nan")),
                     multilevel=(81.0, 9.0, float("nan"))),
    }
    got = ds.choose(rows)
    assert "exact" not in got["admissible"] and "exact" in got["why"]  # 10 points below on "a"
    # select_predict 1.5 and additive 1.65 are tied within 1 point: the AP ratio (only "a" has masks) decides
    assert set(got["tied"]) == {"select_predict", "additive"} and got["featured"] == "additive"
    rows["a"]["designs"] = {d: {**v, "balanced_accuracy": 50.0} for d, v in rows["a"]["designs"].items()}
    assert ds.choose(rows)["featured"] == "dual"


def test_seed_split_3d_refuses_the_sealed_draw_and_parses_its_cases(tmp_path, monkeypatch):
    import doctest

    import seed_split_3d

    _no_data(monkeypatch)
    with pytest.raises(ValueError, match="sealed test draw"):
        seed_split_3d.main(["--out", str(tmp_path / "s.json"), "--work", str(tmp_path), "--data-seed", SEALED,
                            "--case", "dual,2,0,0.001"])
    assert not (tmp_path / "s.json").exists()
    with pytest.raises(SystemExit, match="variant,init_seed,run_seed,lr"):
        seed_split_3d.parse_case("dual,2,0")
    assert doctest.testmod(seed_split_3d).failed == 0


def test_selector_study_sets_one_option_per_variant_and_keeps_its_runs_apart(tmp_path):
    import selector_study

    from dualattn.train import TrainConfig

    cfg = TrainConfig(model_kwargs={"features": 8}, select_predict={"healthy_fpr": 0.02})
    selector_study.apply_overrides(cfg, ["select_predict.healthy_fpr=null", "model_kwargs.selector_features=16",
                                         "max_epochs=20"])
    assert cfg.select_predict == {"healthy_fpr": None}
    assert cfg.model_kwargs == {"features": 8, "selector_features": 16} and cfg.max_epochs == 20
    with pytest.raises(SystemExit, match="no option 'nonsense'"):
        selector_study.apply_overrides(cfg, ["nonsense=1"])
    with pytest.raises(SystemExit, match="expected KEY=VALUE"):
        selector_study.apply_overrides(cfg, ["max_epochs"])
    with pytest.raises(SystemExit):  # --set without --tag: argparse's error
        selector_study.main(["--work", str(tmp_path), "--out", str(tmp_path / "o.json"), "--set", "max_epochs=2"])
    assert not (tmp_path / "o.json").exists()


def test_selector_study_reads_its_rows_from_the_evaluation():
    """The --intervals extras: the claim records of the selector's map against LRP, both maps on the baseline's
    classifier, and the random control's region on the select_predict model (ROAD tags for data without masks)."""
    import selector_study

    def cell(**values):
        return {"blocks": {"block3": {k: {"mean": v} for k, v in values.items()}}}

    results = {
        "comparisons": [
            {"primary": True, "protocol": "own_model", "metric": "ap", "block": "block3", "ours": "select_predict",
             "ratio": 2.0, "ci_low": 1.5, "ci_high": 2.5, "ours_value": 40.0, "other_value": 20.0},
            {"primary": False, "protocol": "own_model", "metric": "ap", "block": "block3", "ours": "select_predict",
             "ratio": 9.0},
            {"primary": True, "protocol": "own_model", "metric": "ap", "block": "block3", "ours": "dual", "ratio": 7.0},
        ],
        "methods": {"select_predict": cell(ap=40.0, **{"srg_prob@road": 5.0}), "lrp": cell(ap=30.0)},
        "own_model": {"select_predict": {"methods": {"random": cell(**{"hidden_road_flips@20": 3.0,
                                                                        "kept_road_flips@20": 9.0,
                                                                        "hidden_swap_flips@20": 1.0})}}},
    }
    rows = selector_study.claim_rows(results)
    assert list(rows) == ["own_model:ap@block3"] and rows["own_model:ap@block3"]["ratio"] == 2.0
    common = selector_study.common_row(results)
    assert common["select_predict"]["srg_prob@road"] == 5.0 and common["lrp (baseline)"]["ap"] == 30.0
    assert selector_study.random_row(results, "br35h") == {"hidden_flips@20": 3.0, "kept_flips@20": 9.0}
    assert selector_study.random_row(results, "synthetic-brain")["hidden_flips@20"] == 1.0
